#!/usr/bin/env bash
# Installs the Debian 12 packages engram-store builds, tests and benchmarks
# with. Idempotent: packages already present are not touched, and apt is only
# consulted when something is missing.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  libabsl-dev prometheus-cpp-dev libucx-dev libxxhash-dev grpc-proto nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-grpcio python3-protobuf python3-numpy
  python3-dev pybind11-dev python3-pybind11 python3-pytest
  redis-server curl python3-yaml python3-torch
  libssl-dev openssl iproute2
  clang libclang-rt-14-dev
  prometheus  # promtool and a real Prometheus for the monitoring test
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

# The manifest tests render with kubectl kustomize (components: kubectl
# >= 1.21, newer than Debian 12's kubernetes-client).
kubectl_step() { bash "$(dirname "$0")/install_kubectl.sh"; }

if [ ${#missing[@]} -eq 0 ]; then
  echo "install_deps: all ${#packages[@]} packages present"
  kubectl_step
  exit 0
fi

echo "install_deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_deps: done"
kubectl_step
