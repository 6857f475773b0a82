# mosaic-backup container images. Two targets from one file:
#   docker build --target coordinator -t mosaic-backup:coordinator .
#   docker build --target agent       -t mosaic-backup:agent .        (the default)
# The agent image adds the dump tools its sources run (pg_dump/pg_basebackup,
# mariadb-dump/mariabackup, redis-cli, zstd). Both run as the unprivileged user
# `mosaic` (uid 10001) with `mosaic-backup` as the entrypoint; deploy/docker-compose.yml
# shows them with NATS, PostgreSQL, MinIO and Jaeger.
#
# Debian 12 (bookworm) like the machines the tests run on: its PostgreSQL 15 and
# MariaDB 10.11 client tools are the versions the sources are tested with.
FROM python:3.11-slim-bookworm AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/mosaic-backup/bin:$PATH
# The program in its own virtual environment (see the README: the three top-level
# packages are installed under their plain names).
RUN python -m venv /opt/mosaic-backup
WORKDIR /src
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY agent ./agent
COPY coordinator ./coordinator
COPY mosaic ./mosaic
RUN pip install . && cd / && rm -rf /src
# Key file and state live in /var/lib/mosaic-backup (mount a volume there), configs in
# /etc/mosaic-backup (mount them read-only).
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/mosaic-backup \
        --create-home --shell /usr/sbin/nologin mosaic \
    && mkdir -p /etc/mosaic-backup \
    && chmod 0700 /var/lib/mosaic-backup
WORKDIR /var/lib/mosaic-backup
ENTRYPOINT ["mosaic-backup"]
CMD ["--help"]

FROM base AS coordinator
USER mosaic
EXPOSE 8470

FROM base AS agent
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        postgresql-client mariadb-client mariadb-backup redis-tools zstd \
    && rm -rf /var/lib/apt/lists/*
USER mosaic
