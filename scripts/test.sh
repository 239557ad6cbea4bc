#!/usr/bin/env bash
# The project's one test command. It prepares what the tests need beyond Rust (the pinned
# official OpenAI Python SDK in .venv-sdk, and a redis-server binary, which the Redis tests
# start on a free port themselves) and runs the whole suite: unit tests, and integration
# tests that start the real proxy against an in-process mock.
# Extra arguments go to `cargo test` (e.g. scripts/test.sh --test streaming).
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-sdk
requirements=tests/sdk/requirements.txt
if ! cmp -s "$requirements" "$venv/.installed" 2>/dev/null; then
  echo "test.sh: installing the OpenAI SDK from $requirements into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
  cp "$requirements" "$venv/.installed"
fi
export OPENAI_SDK_PYTHON="$PWD/$venv/bin/python"

if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing redis-server" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "test.sh: the Redis tests need redis-server on PATH (e.g. apt-get install redis-server)" >&2
    exit 1
  fi
fi

exec cargo test --locked "$@"
