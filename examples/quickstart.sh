#!/usr/bin/env bash
# Fresh machine -> the main job on the shipped default checkpoint:
# install into .venv (CPU build of torch, OpenVINO extra), export the checkpoint to a verified
# bundle (ONNX Runtime parity gated at export), compile it for ONNX Runtime and OpenVINO, validate
# each against the PyTorch reference with reports (JSON, JUnit XML, HTML), and sample a grid.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" -e ".[export,openvino]"
dr=.venv/bin/dualrate
out=out/quickstart
mkdir -p "$out"
$dr export examples/checkpoints/dr-uvit-digits -o "$out/bundle" --force --steps 64 --refresh-every 8 --guidance 2
for target in onnxruntime openvino; do
    $dr compile "$out/bundle" --target "$target" --precision fp32
    $dr validate "$out/bundle" --target "$target" --precision fp32 \
        --report "$out/report-$target" --junit "$out/junit-$target.xml"
done
$dr sample "$out/bundle" --target onnxruntime -n 8 --seed 0 -o "$out/samples.png" --force
echo "main job PASSED: bundle $out/bundle, reports $out/report-*/report.html, samples $out/samples.png"
