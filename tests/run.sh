#!/usr/bin/env bash
# Fresh machine -> the full test suite. Creates .venv, pins the CPU build of torch,
# installs dualrate with the test extras and the backends that install on Linux, and what the
# JavaScript runtime's tests need (npm packages from runtimes/js's lockfile, Debian's chromium).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[dev]"
if command -v npm >/dev/null; then
    # onnxruntime-node ships its CPU binaries; skip its optional CUDA download (also in runtimes/js/.npmrc)
    (cd runtimes/js && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error)
    if ! command -v chromium >/dev/null; then
        if [ "$(id -u)" = 0 ]; then
            (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
        else
            echo "tests/run.sh: chromium is missing and this is not root; install it (apt-get install -y chromium)" \
                 "or the browser tests of runtimes/js fail" >&2
        fi
    fi
else
    echo "tests/run.sh: npm not found; the JavaScript runtime tests (tests/test_js_runtime.py) will be skipped" >&2
fi
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
