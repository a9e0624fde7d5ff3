# syntax=docker/dockerfile:1
#
# One image for the KCL worker and every other command (producer, replays, manifests, scoring) but `demo` and
# `emulator`, which need the embedded AWS endpoint left out below (emulator/, moto): run those from a source
# checkout (`make setup`). The entry point is `clickstream`, the default command `clickstream worker`. Run another
# command by passing it, e.g. `docker run IMAGE produce --events 1000`. Give the worker 30 s to stop
# (`docker run --stop-timeout 30`, or `docker stop -t 30`): Docker's default 10 s would kill it during the flush its
# SIGTERM starts (nothing is lost, the records are read again, but the stop is not clean).
#
#   builder  - a venv with the exact pins of deploy/constraints.txt plus the application, built from this tree
#   runtime  - slim Python + Debian's headless JRE 17 (the KCL MultiLangDaemon is Java) + that venv; non-root
#
# Base image: pinned by tag. For reproducible production builds also pin the digest, e.g.
#   docker build --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ----------------------------------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src

# Build tools first, pinned, in their own layer: localstack-client (below) and the application are built with
# them, not with whatever setuptools an isolated build would fetch. setuptools stays in the image (a pin of
# deploy/constraints.txt: pytensor imports it); wheel is removed once the builds are done.
RUN pip install --no-deps --only-binary=:all: setuptools==80.9.0 wheel==0.45.1

# Dependencies next, in their own layer: exact versions, wheels only (localstack-client ships no wheel; it is
# pure Python and builds without a compiler), no resolver (--no-deps), so nothing floats.
COPY deploy/constraints.txt deploy/constraints.txt
RUN pip install --no-deps --no-build-isolation --only-binary=:all: --no-binary=localstack-client \
        -r deploy/constraints.txt

# The application, built from this tree as a regular (non-editable) install with pinned build tools. The embedded
# AWS emulator (emulator/, moto) is for development and demos and stays out of the image.
COPY pyproject.toml README.md ./
COPY aggregators aggregators
COPY clickstream clickstream
COPY runtime runtime
COPY consumer consumer
COPY producer producer
COPY schemas schemas
COPY scoring scoring
RUN pip install --no-deps --no-build-isolation . \
    && pip uninstall --yes wheel \
    && pip check \
    && pip uninstall --yes pip

# ----------------------------------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

# openjdk-17-jre-headless: the KCL MultiLangDaemon (its jars come with the kclpy-ext wheel in the venv).
# tini: PID 1 that forwards SIGTERM to `clickstream` and reaps orphans of the JVM's child processes.
# The man1 directory must exist for the JRE's postinst on slim images. Debian package versions are not pinned on
# purpose: a rebuild picks up bookworm's security updates (the base image tag and the Python pins do not move).
# hadolint ignore=DL3008
RUN set -eux; \
    mkdir -p /usr/share/man/man1; \
    apt-get update; \
    apt-get install -y --no-install-recommends openjdk-17-jre-headless tini; \
    rm -rf /var/lib/apt/lists/*; \
    java -version

# Non-root user owning the state directory (each shard's local state journal, shard status files, kcl.properties).
RUN groupadd --system --gid 10001 clickstream \
    && useradd --system --uid 10001 --gid clickstream --home-dir /var/lib/clickstream --no-create-home \
        --shell /usr/sbin/nologin clickstream \
    && install -d -o clickstream -g clickstream -m 0750 /var/lib/clickstream

# Declared volumes get the image's ownership and modes: the state directory for the non-root user, and a
# writable /tmp, so the container also runs with a read-only root file system (ECS readonlyRootFilesystem).
VOLUME ["/var/lib/clickstream", "/tmp"]

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CLICKSTREAM_STATE_DIR=/var/lib/clickstream \
    CLICKSTREAM_LOG_FORMAT=json

WORKDIR /var/lib/clickstream
USER 10001:10001

# Liveness: `clickstream health` reads the worker heartbeat and the shard status files under CLICKSTREAM_STATE_DIR
# (exit 0 = healthy). The heartbeat starts with the worker; shards are judged once they are processing.
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 CMD ["clickstream", "health"]

# SIGTERM: the worker flushes and checkpoints every shard (--stop-deadline 25 s), a second signal forces exit.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tini", "--", "clickstream"]
CMD ["worker"]
