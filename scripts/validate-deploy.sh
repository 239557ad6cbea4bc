#!/usr/bin/env bash
# Validates the deployment files without a Docker engine or a cluster (none runs on CI):
#   - shellcheck on every shell script
#   - docker-compose.yml, both profiles, parsed by docker-compose's own `config`
#   - the systemd unit through `systemd-analyze verify`, any warning counts as a failure
#   - the Kubernetes manifests against the API schemas (kubernetes-validate, strict), and the
#     kustomization's resource list against the files present
# Installs what is missing (Debian packages; kubernetes-validate into .venv-deploy).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v shellcheck >/dev/null || need_apt+=(shellcheck)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "validate-deploy: installing ${need_apt[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
venv=.venv-deploy
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
fi

echo "== shellcheck"
shellcheck scripts/*.sh .ci/run

echo "== docker-compose config"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r docker-compose.yml Dockerfile deploy "$work/"
cp .env.example "$work/.env"
(cd "$work" && docker-compose config -q && docker-compose --profile scaled config -q)
echo "ok: default and scaled profiles"

echo "== systemd-analyze verify"
binary=target/debug/openai-auth-proxy
[ -x "$binary" ] || cargo build --locked -q
# verify checks that ExecStart exists: point it at the binary just built.
sed "s#/usr/local/bin/openai-auth-proxy#$PWD/$binary#" \
  deploy/systemd/openai-auth-proxy.service > "$work/openai-auth-proxy.service"
out=$(systemd-analyze verify "$work/openai-auth-proxy.service" 2>&1) || { echo "$out"; exit 1; }
if [ -n "$out" ]; then echo "$out"; echo "systemd-analyze reported problems" >&2; exit 1; fi
echo "ok: deploy/systemd/openai-auth-proxy.service"

echo "== kubernetes manifests"
manifests=()
for f in deploy/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
for version in 1.30.0 1.37.0; do
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$version" "${manifests[@]}"
done
python3 - <<'PY'
import pathlib, re, sys
k = pathlib.Path("deploy/kubernetes/kustomization.yaml").read_text()
listed = re.findall(r"^\s+-\s+(\S+\.yaml)\s*$", k, re.M)
missing = [f for f in listed if not pathlib.Path("deploy/kubernetes", f).exists()]
if not listed or missing:
    sys.exit(f"kustomization.yaml lists missing files: {missing}")
print(f"ok: {len(listed)} resources in kustomization.yaml")
PY
echo "deploy files: all checks passed"
