"""Shared test harness: real servers on free loopback ports, started once per session."""

pytest_plugins = [
    "tests.fixtures.servers",
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.redis",
    "tests.fixtures.mariadb",
    "tests.fixtures.sftp",
    "tests.fixtures.docker",
    "tests.fixtures.console",
    "tests.fixtures.nats_cluster",
    "tests.fleet.topology",
]
