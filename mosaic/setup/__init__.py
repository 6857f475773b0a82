"""What sets a deployment up: the nats-server config, the TLS certificate authority, the
systemd units, and the sample tree of ``quickstart``."""
