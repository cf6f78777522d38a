#!/usr/bin/env bash
# Fresh machine -> the main job on the shipped default checkpoint:
# install into .venv (CPU build of torch), export the checkpoint to a verified bundle
# (ONNX Runtime parity gated at export), compile for ONNX Runtime, sample a grid on it.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e .
out=out/quickstart
mkdir -p "$out"
.venv/bin/dualrate export examples/checkpoints/dr-uvit-digits -o "$out/bundle" --force \
    --steps 64 --refresh-every 8 --guidance 2
.venv/bin/dualrate compile "$out/bundle" --target onnxruntime
.venv/bin/dualrate sample "$out/bundle" --target onnxruntime -n 8 --seed 0 -o "$out/samples.png" --force
echo "main job PASSED: bundle in $out/bundle, samples in $out/samples.png"
