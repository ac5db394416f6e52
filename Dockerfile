# syntax=docker/dockerfile:1
# fleetward's operator and Rust workloads, one image per target:
#
#   docker build --target operator  -t ghcr.io/fleetward/operator:0.1.0 .
#   docker build --target gateway   -t ghcr.io/fleetward/gateway:0.1.0 .
#   docker build --target ingestor  -t ghcr.io/fleetward/ingestor:0.1.0 .
#   docker build --target encryptor -t ghcr.io/fleetward/encryptor:0.1.0 .
#   docker build --target billing   -t ghcr.io/fleetward/billing:0.1.0 .
#
# One build stage compiles the whole workspace once (with cache mounts for
# the crate registry and target/), and each image copies its binaries onto
# a slim Debian base: same glibc as the build, CA certificates, a non-root
# user, nothing else. Every program runs with a read-only root filesystem.
#
# BINARIES=prebuilt takes the binaries from out/ in the build context
# instead, compiled beforehand on a Debian bookworm host (the base's glibc,
# 2.36): devenv/images.sh does so, so that the tests and the images share
# one release build of the workspace. The build stage is then skipped.
#
#   docker build --build-arg BINARIES=prebuilt --target gateway -f Dockerfile <dir holding out/>
ARG RUST_IMAGE=docker.io/library/rust:1.95-slim-bookworm
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
ARG BINARIES=build

FROM ${RUST_IMAGE} AS build
# librdkafka is compiled from source by rdkafka-sys (cmake, a C++ compiler).
RUN apt-get update && apt-get install -y --no-install-recommends \
      cmake g++ make perl pkg-config libcurl4-openssl-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,id=fleetward-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=fleetward-target,target=/src/target \
    cargo build --release --locked --bins \
      -p fleetward-operator -p fleetward-gateway -p fleetward-ingestor -p fleetward-encryptor \
      -p fleetward-billing \
 && mkdir -p /out \
 && cp target/release/fleetward-operator target/release/crdgen target/release/fleetward-gateway \
       target/release/fleetward-ingestor target/release/fleetward-encryptor target/release/fleetward-stations \
       target/release/fleetward-billing /out/

# The same files, built elsewhere: out/ holds exactly what /out holds above.
FROM scratch AS prebuilt
COPY out/ /out/

FROM ${BINARIES} AS binaries

FROM ${BASE_IMAGE} AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
USER 65532:65532

FROM runtime AS operator
COPY --from=binaries /out/fleetward-operator /out/crdgen /usr/local/bin/
EXPOSE 8080
ENTRYPOINT ["fleetward-operator"]

FROM runtime AS gateway
COPY --from=binaries /out/fleetward-gateway /usr/local/bin/
EXPOSE 8443 9090
ENTRYPOINT ["fleetward-gateway"]

FROM runtime AS ingestor
COPY --from=binaries /out/fleetward-ingestor /usr/local/bin/
EXPOSE 9090
ENTRYPOINT ["fleetward-ingestor"]

# The export CLI ships beside the encryptor: same keyring, same table.
FROM runtime AS encryptor
COPY --from=binaries /out/fleetward-encryptor /out/fleetward-stations /usr/local/bin/
EXPOSE 9090
ENTRYPOINT ["fleetward-encryptor"]

# A Tariff's billing workload: the API on 8080, /health and /metrics on 9090.
FROM runtime AS billing
COPY --from=binaries /out/fleetward-billing /usr/local/bin/
EXPOSE 8080 9090
ENTRYPOINT ["fleetward-billing"]
