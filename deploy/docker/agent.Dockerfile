# gpuattest agent image. Build from the repository root:
#   docker build -f deploy/docker/agent.Dockerfile -t REGISTRY/gpuattest-agent:VERSION .
# The runtime stage is Debian slim rather than distroless: the NVIDIA container runtime injects the
# driver's libnvidia-ml.so.1 and runs ldconfig inside the image, which needs a normal /etc/ld.so.conf.
# The agent runs as root in its container with every capability dropped but SYS_PTRACE and
# DAC_READ_SEARCH (see the Helm chart); it writes only to its state volume.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gpuattest-agent \
 && install -m 0755 target/release/gpuattest-agent /gpuattest-agent

FROM docker.io/library/debian:bookworm-slim
COPY --from=build /gpuattest-agent /usr/bin/gpuattest-agent
ENTRYPOINT ["/usr/bin/gpuattest-agent"]
CMD ["run", "--config", "/etc/gpuattest/config/agent.toml"]
