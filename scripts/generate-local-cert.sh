#!/usr/bin/env bash
# Creates a self-signed certificate for local HTTPS: certs/localhost.crt and
# certs/localhost.key, valid for a year, for localhost, 127.0.0.1 and ::1. The key is
# readable by its owner only. Existing files are kept unless you answer yes or pass --force.
#
# Usage: scripts/generate-local-cert.sh [--force] [--out DIR] [--days N]
set -euo pipefail

out="$(cd "$(dirname "$0")/.." && pwd)/certs"
force=0
days=365
while [ $# -gt 0 ]; do
  case "$1" in
    --force) force=1 ;;
    --out) out="${2:?--out needs a directory}"; shift ;;
    --days) days="${2:?--days needs a number}"; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "generate-local-cert: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

command -v openssl >/dev/null || { echo "generate-local-cert: openssl is required" >&2; exit 1; }

crt="$out/localhost.crt"
key="$out/localhost.key"
if [ -e "$crt" ] || [ -e "$key" ]; then
  if [ "$force" -ne 1 ]; then
    if [ -t 0 ]; then
      read -r -p "$crt or $key exists. Overwrite? [y/N] " answer
      case "$answer" in y|Y|yes|YES) ;; *) echo "kept the existing files"; exit 0 ;; esac
    else
      echo "generate-local-cert: $crt or $key exists; pass --force to overwrite" >&2
      exit 1
    fi
  fi
fi

mkdir -p "$out"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cat > "$tmp/openssl.cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
x509_extensions = ext
[dn]
CN = localhost
[ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1, IP:::1
subjectKeyIdentifier = hash
CNF

# Written under a private umask and moved into place, so the key is never world-readable.
(
  umask 077
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -days "$days" -config "$tmp/openssl.cnf" \
    -keyout "$tmp/localhost.key" -out "$tmp/localhost.crt" 2>/dev/null
)
chmod 600 "$tmp/localhost.key"
chmod 644 "$tmp/localhost.crt"
mv -f "$tmp/localhost.key" "$key"
mv -f "$tmp/localhost.crt" "$crt"

echo "wrote $crt and $key (valid $days days; localhost, 127.0.0.1, ::1)"
echo "serve HTTPS with: TLS_CERT_PATH=$crt TLS_KEY_PATH=$key"
