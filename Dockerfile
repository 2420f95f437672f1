# sdxl-worker image for RunPod serverless (linux/amd64). See README "Deploy on RunPod".
#
#   docker build --platform linux/amd64 -t sdxl-worker .
#
# Stages: chef (CUDA devel + Rust + cargo-chef) -> planner (dependency recipe) -> builder
# (dependencies in their own cached layer, then the worker) -> runtime (CUDA base image + the
# binary + only the CUDA libraries it links).
#
# Deliberately plain Dockerfile syntax (no BuildKit-only RUN --mount, no build-arg-selected
# stages): RunPod's GitHub integration builds this file and does not document which builder or
# build arguments it supports. Baking models into the image (which needs a build secret for the
# Civitai key) is the separate Dockerfile.bake, layered on top of this image.

# CUDA 12.4: its PTX and libraries run on every RunPod host with driver >= 550 (CUDA 12.4 - 13.x),
# which is most of the fleet. 13.0.1 also works (set both here and allowedCudaVersions) but
# limits the endpoint to hosts with driver >= 580.
ARG CUDA_VERSION=12.4.1
ARG UBUNTU_VERSION=22.04
# "" for the default build; "cudnn-" together with CARGO_FEATURES=cudnn for cuDNN convolutions.
ARG CUDNN_FLAVOR=""

FROM nvidia/cuda:${CUDA_VERSION}-${CUDNN_FLAVOR}devel-ubuntu${UBUNTU_VERSION} AS chef
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG RUST_VERSION=1.95.0
ARG CARGO_CHEF_VERSION=0.1.78
# Package versions follow the pinned CUDA/Ubuntu base image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gcc g++ libc6-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
      | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}" \
 && cargo install cargo-chef --locked --version "${CARGO_CHEF_VERSION}" \
 && rm -rf "${CARGO_HOME}/registry"
# cudarc links against the toolkit here (lib64/stubs/libcuda.so stands in for the driver).
ENV CUDA_ROOT=/usr/local/cuda
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
# One GPU architecture for candle's kernels, embedded as PTX that the driver JIT-compiles:
# compute_80 PTX runs on Ampere (8.0/8.6), Ada (8.9) and Hopper (9.0). "90" would produce
# Hopper-only sm_90a code. GEMMs and cuDNN convolutions pick per-GPU kernels regardless.
ARG CUDA_COMPUTE_CAP=80
ARG CARGO_FEATURES=cuda
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP}
COPY --from=planner /src/recipe.json recipe.json
# Dependencies (candle-kernels' nvcc build is most of the build time) in their own layer,
# rebuilt only when Cargo.toml/Cargo.lock change.
RUN CUDAFORGE_THREADS="$(nproc)" \
    cargo chef cook --release --locked --features "${CARGO_FEATURES}" --recipe-path recipe.json
COPY . .
# The same command scripts/build-cuda.sh runs on a machine without a GPU.
RUN CUDAFORGE_THREADS="$(nproc)" cargo build --release --locked --features "${CARGO_FEATURES}" \
 && install -m 0755 target/release/sdxl-worker /usr/local/bin/sdxl-worker \
 && scripts/collect-cuda-libs.sh /usr/local/bin/sdxl-worker /opt/sdxl-worker/lib

# The base image has libcudart and the driver hooks; the other libraries the binary links
# (cuBLAS/cuBLASLt, cuRAND, cuDNN with CARGO_FEATURES=cudnn) are copied from the builder.
FROM nvidia/cuda:${CUDA_VERSION}-base-ubuntu${UBUNTU_VERSION} AS runtime
COPY --from=builder /opt/sdxl-worker/lib /opt/sdxl-worker/lib
COPY --from=builder /usr/local/bin/sdxl-worker /usr/local/bin/sdxl-worker
COPY scripts/docker-entrypoint.sh /usr/local/bin/docker-entrypoint
# The worker runs as `sdxl`; the entrypoint starts as root only to give the model cache on the
# network volume to that user (see scripts/docker-entrypoint.sh).
# The build fails here if a library the binary needs is missing from the image
# (libcuda.so.1 is the driver's, mounted by the NVIDIA container runtime at run time).
RUN useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin sdxl \
 && mkdir -p /app \
 && chown sdxl:sdxl /app \
 && { LD_LIBRARY_PATH=/opt/sdxl-worker/lib ldd /usr/local/bin/sdxl-worker > /tmp/ldd.txt || true; } \
 && missing="$(awk '/not found/ && $1 != "libcuda.so.1" {print $1}' /tmp/ldd.txt)" \
 && rm /tmp/ldd.txt \
 && if [ -n "$missing" ]; then echo "missing libraries: $missing" >&2; exit 1; fi
WORKDIR /app
COPY --chown=sdxl:sdxl models.toml test_input.json .runpod/models-hub.toml /app/
ENV LD_LIBRARY_PATH=/opt/sdxl-worker/lib:/usr/local/nvidia/lib:/usr/local/nvidia/lib64 \
    MODELS_TOML=/app/models.toml \
    CUDA_CACHE_MAXSIZE=1073741824 \
    RUST_LOG=info
ENTRYPOINT ["/usr/local/bin/docker-entrypoint"]
CMD ["sdxl-worker"]
