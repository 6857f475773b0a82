"""Wire types by family: jobs, events, the operator API, status, monitoring, sources."""
