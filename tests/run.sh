#!/usr/bin/env bash
# Fresh machine -> the full test suite. Creates .venv, pins the CPU build of torch,
# installs dualrate with the test extras and the backends that install on Linux.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[dev]"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
