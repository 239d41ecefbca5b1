# syntax=docker/dockerfile:1
# Zen's container image: a release build of the `zen` binary on a distroless runtime (glibc and
# libgcc only, no shell, no package manager), running as a non-root user.
#
#   docker build -t zen:0.1.0 --build-arg VERSION=0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# The runtime needs exactly what `ldd target/release/zen` lists: libc, libm, libgcc_s and the
# loader (TLS is rustls with ring: no OpenSSL). tests/conformance/test_dockerfile.py checks
# this file and that list on every test run.

# The toolchain the lockfile was resolved and tested with (several dependencies need it).
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Dependencies first, so that source changes reuse the cached dependency layer.
COPY Cargo.toml Cargo.lock build.rs ./
COPY crates ./crates
COPY gateway ./gateway
COPY proto ./proto
COPY vendor ./vendor
COPY migrations ./migrations
COPY src ./src
# The console's pages and the webhook presets are embedded in the binary.
COPY console ./console
COPY mappings ./mappings
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin zen \
    && install -D -m 0755 target/release/zen /out/zen

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
LABEL org.opencontainers.image.title="zen" \
      org.opencontainers.image.description="Contract-first platform for ingesting security events and driving their remediation" \
      org.opencontainers.image.source="https://github.com/zen-platform/zen" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=build /out/zen /usr/local/bin/zen
# distroless's nonroot user; the Helm chart runs as the same ids.
USER 65532:65532
WORKDIR /var/lib/zen
ENV ZEN_DATA_DIR=/var/lib/zen \
    ZEN_GRPC_ADDR=0.0.0.0:7443 \
    ZEN_HTTP_ADDR=0.0.0.0:8080 \
    ZEN_ADMIN_ADDR=0.0.0.0:9464
EXPOSE 7443 8080 9464
ENTRYPOINT ["/usr/local/bin/zen"]
CMD ["serve"]
