#!/usr/bin/env bash
# Builds engramd and runs it in the foreground with the demo layer, so a
# first lookup works at once. Installs missing Debian packages first.
# Extra arguments are passed to engramd, e.g.
#   bash scripts/run.sh --listen=127.0.0.1:50051 --memory_limit_bytes=8000000000
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}

bash scripts/install_deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
# The Python package's extension too, so `import engram_store` works at once.
cmake --build build -j"$JOBS" --target engramd engramctl _engram_store
echo "run.sh: engramctl: build/client/engramctl; Python: PYTHONPATH=$PWD/build/python /usr/bin/python3"
exec build/server/engramd --demo "$@"
