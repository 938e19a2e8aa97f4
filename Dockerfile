# RaftMetrics: one image for every role (control, worker, dev, healthcheck).
#
#   docker build -t raftmetrics .
#       compiles inside the image (the bundled DuckDB C++ library makes the first build slow)
#   cargo build --release --bin raftmetrics-server && mkdir -p dist \
#     && cp target/release/raftmetrics-server dist/ && docker build --target prebuilt -t raftmetrics .
#       packages a binary built on a Debian 12 (bookworm) x86_64 host instead
#
# Base images are build arguments, so a machine without registry access can use a local
# Debian 12 base instead (docker/local-base.sh makes one).
ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# Everything but the binary: an unprivileged user, the data volume, the health check.
FROM ${RUNTIME_IMAGE} AS runtime-base
RUN groupadd --system --gid 10001 raftmetrics \
 && useradd --system --uid 10001 --gid raftmetrics --home-dir /data --no-create-home \
      --shell /usr/sbin/nologin raftmetrics \
 && mkdir -p /data \
 && chown raftmetrics:raftmetrics /data
# The role comes from NODE_ROLE (control, worker, dev) unless a subcommand is given.
ENV NODE_ROLE=control \
    DATA_DIR=/data \
    BIND_HOST=0.0.0.0 \
    RUST_LOG=info
VOLUME ["/data"]
WORKDIR /data
USER raftmetrics:raftmetrics
# HTTP API of the control node and of a worker; node-to-node TCP is the HTTP port + 1000.
EXPOSE 8080 8081 9080 9081
HEALTHCHECK --interval=5s --timeout=5s --start-period=20s --retries=3 \
  CMD ["/usr/local/bin/raftmetrics-server", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/raftmetrics-server"]

# A binary built outside the image, from dist/raftmetrics-server.
FROM runtime-base AS prebuilt
COPY dist/raftmetrics-server /usr/local/bin/raftmetrics-server

# The binary built from source.
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin raftmetrics-server \
 && cp target/release/raftmetrics-server /usr/local/bin/raftmetrics-server

# The default target: the runtime with the binary built from source.
FROM runtime-base AS runtime
COPY --from=build /usr/local/bin/raftmetrics-server /usr/local/bin/raftmetrics-server
