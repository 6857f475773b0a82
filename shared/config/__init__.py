"""Configuration: one module per role (agent, coordinator), the NATS connection both
use, storage targets, and the loader. See docs/configuration.md."""
