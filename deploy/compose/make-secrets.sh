#!/usr/bin/env bash
# Makes the credentials compose.yaml mounts as Docker secrets, in
# deploy/compose/secrets/ (owner-only): a token per role and the secret the
# shards show each other. Keeps existing files (re-run is a no-op); delete
# a file and re-run to rotate it. See docs/security.md.
set -euo pipefail
cd "$(dirname "$0")"
umask 077
mkdir -p secrets
token() { openssl rand -hex 24; }
for role in read write admin; do
  [ -s "secrets/$role-token" ] || token > "secrets/$role-token"
done
[ -s secrets/cluster-token ] || token > secrets/cluster-token
{
  echo "# role name token (engramd --tokens_file)"
  for role in read write admin; do
    echo "$role compose-$role $(cat "secrets/$role-token")"
  done
} > secrets/tokens.new
mv secrets/tokens.new secrets/tokens
# Compose bind-mounts each file with its own mode, and engramd runs as uid
# 10001: the files are world-readable inside this owner-only folder (no
# other host user can reach them; in the containers only engramd runs).
chmod 0700 secrets
chmod 0644 secrets/tokens secrets/cluster-token
echo "make-secrets: deploy/compose/secrets/{tokens,cluster-token,read-token,write-token,admin-token}"
