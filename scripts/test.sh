#!/usr/bin/env bash
# Install what the test suite needs on a fresh machine (Mosquitto from the OS packages, the
# package with its test extras), then run the whole suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq mosquitto >/dev/null
fi

# The trace store's tests start a throwaway PostgreSQL server from these binaries.
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq postgresql >/dev/null
fi

python -m pip install -q -e '.[test]'
python -m pytest "$@"
# Lint and types are part of "the tests pass".
ruff check .
mypy
