#!/usr/bin/env bash
# Fresh machine -> the main job on the shipped default checkpoint.
# Creates .venv, pins the CPU build of torch, installs dualrate, then samples a
# class grid with the dual-rate reference loop into out/quickstart/.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e .
mkdir -p out/quickstart
.venv/bin/dualrate sample examples/checkpoints/dr-uvit-digits --steps 64 --refresh-every 8 --guidance 2 \
    -n 8 --seed 0 -o out/quickstart/samples.png --force
