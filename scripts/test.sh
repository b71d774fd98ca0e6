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

# The camera tests' pyzbar backend loads the OS's zbar library.
if ! ldconfig -p 2>/dev/null | grep -q libzbar.so.0; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq libzbar0 >/dev/null
fi

# The workbench's browser tests drive Debian's Chromium (Playwright uses it; no download).
if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq chromium >/dev/null
fi

# The power-cut tests mount a FUSE filesystem (simulators/powercut/) through libfuse 3.
if ! command -v fusermount3 >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q libfuse3.so.3; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq fuse3 libfuse3-3 >/dev/null
fi

python -m pip install -q -e '.[test]'
# epcpy 0.1.8 installs a console script `test` (entry point scripts:test, a module it does not
# ship) that shadows /usr/bin/test on PATH; remove that one file and nothing else.
stray="$(python -c 'import os, sys; print(os.path.join(os.path.dirname(sys.executable), "test"))')"
if [ -f "$stray" ] && grep -q "from scripts import test" "$stray"; then rm -f "$stray"; fi
python -m pytest "$@"
# Lint and types are part of "the tests pass".
ruff check .
mypy
