# syntax=docker/dockerfile:1
#
# orderflow: one image, roles by subcommand.
#   docker build -t orderflow:dev .
#   docker run --rm -p 8080:8080 orderflow:dev                 # `all` on the baked-in config (embedded broker, SQLite)
#   docker run --rm orderflow:dev serve-api|run-worker|migrate|config
# Checked by hadolint in tests/deploy/check_deployment.py.

# The toolchain CI uses. Cargo.lock needs at least 1.90 (ordered-float,
# uuid); the builder and runtime share a Debian release, so the binary links
# against the glibc it runs with.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------------------
# Builder: Rust toolchain plus what rdkafka needs to build librdkafka from
# source (its own configure script and make; perl; zlib for compression),
# and OpenSSL headers for the AMQP 1.0 client's TLS (Service Bus on 5671).
# ---------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder

# DL3008 (pin apt package versions): the versions come from the pinned
# Debian release of the base image; exact pins break every time Debian ships a
# security update to these build tools, and nothing from them is in the
# runtime image except the statically linked librdkafka.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libssl-dev make perl pkg-config zlib1g-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build

# Dependency layer: build every dependency against a placeholder crate, so
# that a change under src/ does not rebuild librdkafka, sqlx and the rest.
# It is invalidated only by Cargo.toml or Cargo.lock. Cargo refuses a
# manifest with a declared target whose file is missing, so every target
# Cargo.toml declares gets a placeholder: the library, the binary and the
# [[bench]]. The bench's stays for the real build: the image never builds it
# and benches/ is not in the build context. tests/integration/image_build.rs
# replays this stage, so a target declared without a placeholder here fails
# `cargo test`.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/pipeline.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real crate. What it reads at compile time is under src/ (include_str!
# of the admin page) and migrations/ (sqlx::migrate!). COPY keeps the files'
# own mtimes, which may be older than the placeholder build: touch so that
# cargo rebuilds the crate itself. The binary stays in target/: the runtime
# stage takes it from there.
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin orderflow

# ---------------------------------------------------------------------------
# Runtime: Debian slim (glibc, libgcc_s, zlib and OpenSSL are what the binary
# links; distroless/cc ships no zlib). No compiler, no package manager cache.
# ---------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="orderflow" \
      org.opencontainers.image.description="Event-driven order pipeline: order API with a transactional outbox to Kafka, and Kafka workers; roles by subcommand" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="debian:${DEBIAN_RELEASE}-slim"

# An unprivileged user with a fixed uid/gid (the Helm chart's runAsUser), and
# a writable working directory for the default SQLite database.
# libssl3 and the CA roots: TLS to Kafka (SSL/SASL_SSL), PostgreSQL and Azure
# Service Bus (AMQP over 5671).
# DL3008 (pin apt package versions): as in the builder, the pinned Debian
# release fixes the versions; exact pins would break on each security update,
# which is exactly what these two packages receive.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 orderflow \
    && useradd --system --uid 10001 --gid orderflow --home-dir /var/lib/orderflow \
       --no-create-home --shell /usr/sbin/nologin orderflow \
    && install -d -o orderflow -g orderflow -m 0750 /var/lib/orderflow

COPY --from=builder /build/target/release/orderflow /usr/local/bin/orderflow
# The committed development config (embedded broker, SQLite) at a known path;
# Kubernetes mounts the chart's ConfigMap over /etc/orderflow, docker-compose
# overrides keys with environment variables (Database__Url, ...).
COPY config.toml /etc/orderflow/config.toml

ENV ORDERFLOW_CONFIG=/etc/orderflow/config.toml

WORKDIR /var/lib/orderflow
USER 10001:10001

# 8080: Api.Listen (order API, /healthz, /readyz).
# 9090: Worker.AdminListen (worker /healthz, /readyz).
EXPOSE 8080 9090

ENTRYPOINT ["orderflow"]
CMD ["all"]
