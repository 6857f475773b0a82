# Two entry points (see README): `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Debian packages the tests need: PostgreSQL server binaries (initdb, pg_ctl) and OpenSSH
# server (sshd for the SFTP target), Redis server and tools, zstd (export tests), docker.io
# and busybox-static (a private dockerd and an offline test image for the Docker sources);
# fuse3, libfuse3-dev and pkg-config: fusermount3, and what pyfuse3 builds against (`repo mount`).
APT_PACKAGES := postgresql-15 postgresql-client-15 openssh-server redis-server redis-tools zstd mariadb-server mariadb-backup mariadb-client systemd docker.io busybox-static fuse3 libfuse3-dev pkg-config chromium

.PHONY: demo test lint typecheck pytest system-deps venv test-venv clean

demo: venv
	$(BIN)/mosaic-backup quickstart

test: system-deps test-venv lint typecheck pytest

venv: $(BIN)/mosaic-backup
$(BIN)/mosaic-backup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	@touch $@

test-venv: venv
	$(BIN)/pip install -q -e '.[test]'

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

lint:
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

typecheck:
	$(BIN)/mypy

pytest:
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
