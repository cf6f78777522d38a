#!/usr/bin/env bash
# The benchmark of docs/benchmarks.md, from a fresh machine: a random small-32 checkpoint
# (weights do not change the arithmetic), exported with 64 steps, a refresh every 8, guidance 2,
# then `dualrate bench` on ONNX Runtime and OpenVINO at fp32, batch 4, medians of 5 repeats.
# Results: out/bench/bench-<target>.json and the console tables. About 20 minutes on 2 cores,
# most of it the export's reference captures. Pass a target name to bench only that one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/dualrate ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "torch==2.13.0" -e ".[export,openvino]"
fi
dr=.venv/bin/dualrate
out=out/bench
mkdir -p "$out"
[ -d "$out/small-32" ] || $dr init --config small-32 --seed 0 -o "$out/small-32"
[ -d "$out/bundle" ] || $dr export "$out/small-32" -o "$out/bundle" --steps 64 --refresh-every 8 --guidance 2
for target in "${@:-onnxruntime openvino}"; do
    for t in $target; do
        $dr compile "$out/bundle" --target "$t" --precision fp32
        $dr bench "$out/bundle" --target "$t" --precision fp32 --batch 4 --repeats 5 --json "$out/bench-$t.json"
    done
done
