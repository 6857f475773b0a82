"""The central service: dispatches jobs, keeps the catalog, answers operators."""
