#!/usr/bin/env bash
# Make the secrets deploy/compose.yaml and deploy/kubernetes/ use, in deploy/secrets/ (git-ignored):
#   namespace.key         the namespace owner's key: it signs the grants below. Keep it OFFLINE
#                         afterwards (not on the proxies): whoever holds it owns the namespace.
#   service.key           the key every proxy instance signs with (one service, N instances)
#   grant-*.grant         what the service key may do: C on its slots, P on its signals, C*P on !meta
#   postgres-password     the registry database's password
#   pgpass                the same, as libpq's/asyncpg's passfile (PGPASSFILE): never in a URL
#   s3-access-key, s3-secret-key   the S3 server's credentials
#   namespace             the namespace (the namespace key's public key), for --namespace
# Needs the `modelbus` command (pip install -e .) and openssl. Never overwrites a key.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
umask 077
mkdir -p secrets
cd secrets

[ -e namespace.key ] || modelbus keys new namespace.key --comment "modelbus namespace owner"
[ -e service.key ] || modelbus keys new service.key --comment "modelbus service (all instances)"
ns="$(modelbus keys show namespace.key | awk '/^public key:/ {print $3}')"
service="$(modelbus keys show service.key | awk '/^public key:/ {print $3}')"
printf '%s\n' "$ns" > namespace
uri="$ns/s.modelbus/_"
modelbus --entity namespace.key grant --to "$service" --uri "$uri/i.modelbus/slot/*" \
    --perms C --expires 365d -o grant-slots.grant
modelbus --entity namespace.key grant --to "$service" --uri "$uri/i.modelbus/signal/*" \
    --perms P --expires 365d -o grant-signals.grant
modelbus --entity namespace.key grant --to "$service" --uri "$uri/!meta/*" \
    --perms 'C*P' --expires 365d -o grant-meta.grant  # C*: each instance reads its siblings

[ -e postgres-password ] || openssl rand -hex 24 > postgres-password
printf '*:*:modelbus:modelbus:%s\n' "$(cat postgres-password)" > pgpass
[ -e s3-access-key ] || openssl rand -hex 10 > s3-access-key
[ -e s3-secret-key ] || openssl rand -hex 20 > s3-secret-key
# Compose bind-mounts secret files with their host modes, and the proxies run as uid 10001:
# the files they read are 0644 inside this 0700 directory, which guards them on the host.
chmod 0700 .
chmod 0644 service.key grant-*.grant pgpass
echo "namespace $ns; service key $service; secrets in $(pwd)"
echo "Move namespace.key offline once the grants are made (renew them with it before they expire)."
