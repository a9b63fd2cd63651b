# gpuattest collector image. Build from the repository root:
#   docker build -f deploy/docker/collector.Dockerfile -t REGISTRY/gpuattest-collector:VERSION .
# Distroless (glibc, CA certificates, nothing else), as the unprivileged user 65532.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gpuattest-collector \
 && install -m 0755 target/release/gpuattest-collector /gpuattest-collector

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /gpuattest-collector /usr/bin/gpuattest-collector
USER 65532:65532
EXPOSE 7443 7080
ENTRYPOINT ["/usr/bin/gpuattest-collector"]
CMD ["serve", "--config", "/etc/gpuattest/config/collector.toml"]
