# engram-store image: engramd + engramctl on Debian 12.
#
#   CPU (default):  docker build -t engram-store .
#   GPU tier:       docker build --build-arg ENGRAM_GPU=1 -t engram-store:gpu .
#
# The GPU build adds NVIDIA's CUDA 13 compiler from NVIDIA's Debian 12 apt
# repository to the build stage (network access to developer.download.nvidia.com
# needed). CUDA's runtime is linked statically, so the runtime stage stays
# Debian slim either way: the NVIDIA container runtime injects the driver
# (libcuda) when the pod asks for nvidia.com/gpu. RUNTIME_IMAGE selects
# another Debian 12 based runtime image if you need one.
ARG BUILD_IMAGE=debian:bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${BUILD_IMAGE} AS build
ARG ENGRAM_GPU=0
ARG JOBS=4
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config ca-certificates \
      libgrpc++-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev \
      libabsl-dev prometheus-cpp-dev libucx-dev libxxhash-dev grpc-proto nlohmann-json3-dev \
    && rm -rf /var/lib/apt/lists/*
RUN if [ "$ENGRAM_GPU" = "1" ]; then \
      apt-get update && apt-get install -y --no-install-recommends curl gnupg && \
      curl -fsSL https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb -o /tmp/keyring.deb && \
      dpkg -i /tmp/keyring.deb && apt-get update && \
      apt-get install -y --no-install-recommends cuda-nvcc-13-0 cuda-cudart-dev-13-0 && \
      rm -rf /var/lib/apt/lists/*; \
    fi
COPY . /src
RUN cuda=OFF; [ "$ENGRAM_GPU" = "1" ] && cuda=ON; \
    cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DENGRAM_BUILD_TESTS=OFF -DENGRAM_BUILD_BENCH=OFF \
      -DENGRAM_WITH_CUDA=$cuda -DENGRAM_WITH_UCX=ON \
    && cmake --build /build -j"$JOBS" --target engramd engramctl \
    && strip /build/server/engramd /build/client/engramctl

FROM ${RUNTIME_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update && apt-get install -y --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libabsl20220623 \
      libprometheus-cpp-core1.0 libprometheus-cpp-pull1.0 libucx0 libxxhash0 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin engram
COPY --from=build /build/server/engramd /build/client/engramctl /usr/local/bin/
# For the GPU image under the NVIDIA container runtime.
ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001
# 50051: gRPC (engram.v1.EngramStore, health, reflection); 9464: /metrics.
EXPOSE 50051 9464
# Pinned tables need a memlock limit at least their size (docker run
# --ulimit memlock=-1, or a Kubernetes node/runtime setting); without it
# engramd still serves, unpinned, and metrics say so.
#
# The HEALTHCHECK follows whatever flags engramd is given: engramd writes
# its ports to /tmp/engramd.ports, and a loopback-only plaintext health
# listener answers even when the gRPC port wants TLS. Arguments after the
# image name replace CMD; a later --health_listen replaces the one here.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
  CMD ["engramctl", "--port_file=/tmp/engramd.ports", "--timeout_s=4", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["engramd", "--port_file=/tmp/engramd.ports", "--health_listen=127.0.0.1:0"]
CMD ["--listen=0.0.0.0:50051", "--metrics_listen=0.0.0.0:9464"]
