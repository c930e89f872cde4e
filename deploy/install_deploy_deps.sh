#!/usr/bin/env bash
# Installs what the deployment checks need (idempotent): buildah and
# debootstrap for the image test, a kubectl whose kustomize renders
# components (scripts/install_kubectl.sh), PyYAML for the manifest checks.
set -euo pipefail
need=()
for p in buildah debootstrap python3-yaml curl; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "install_deploy_deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
bash "$(dirname "$0")/../scripts/install_kubectl.sh"
