"""Code that both the agent and the coordinator import: messages, subjects, the bus,
the repository format, storage targets and configuration."""
