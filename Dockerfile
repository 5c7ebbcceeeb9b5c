# syntax=docker/dockerfile:1
# mqttgate container image: a static binary in an empty filesystem.
#
#   docker build -t mqttgate .                      # builder stage + runtime (needs rust image)
#   docker build --target runtime-prebuilt \        # runtime only, from a binary built on the host:
#     --build-arg BINARY=target/x86_64-unknown-linux-gnu/release/mqttgate -t mqttgate .
#
# scripts/image-test.sh builds the runtime-prebuilt target with buildah and tests it.
# The image runs as 65532:65532, writes nothing, and works with a read-only root filesystem.

ARG RUST_VERSION=1.88

# ---- builder: a static glibc binary (-C target-feature=+crt-static; aws-lc-rs builds with gcc) ----
FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# A workspace member: cargo reads its manifest even when building only mqttgate.
COPY tools ./tools
RUN RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu --bin mqttgate \
 && cp target/x86_64-unknown-linux-gnu/release/mqttgate /mqttgate

# ---- the runtime stages share everything below through this base ----
FROM scratch AS runtime-base
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="mqttgate" \
      org.opencontainers.image.description="Azure Event Grid style MQTT client-certificate authentication in front of an unmodified MQTT broker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/mqttgate/mqttgate" \
      org.opencontainers.image.url="https://github.com/mqttgate/mqttgate"
USER 65532:65532
EXPOSE 8883 9090
ENTRYPOINT ["/mqttgate"]
CMD ["run", "--config", "/etc/mqttgate/mqttgate.toml"]

# ---- runtime from a binary built on the host (no registry needed: FROM scratch) ----
FROM runtime-base AS runtime-prebuilt
ARG BINARY=target/x86_64-unknown-linux-gnu/release/mqttgate
COPY --chmod=0555 ${BINARY} /mqttgate

# ---- default target: runtime from the builder stage ----
FROM runtime-base AS runtime
COPY --from=builder --chmod=0555 /mqttgate /mqttgate
