#!/usr/bin/env bash
# The benchmark of docs/benchmarks.md, from a fresh machine: a random small-32 checkpoint
# (weights do not change the arithmetic), exported with 64 steps, a refresh every 8, guidance 1.5,
# then `dualrate bench` (batch 4, medians of 3 interleaved repeats) for each TARGET:PRECISION of RUNS:
# ONNX Runtime fp32, OpenVINO fp32, OpenVINO bf16 and OpenVINO int8. Each run times, side by side,
# the backend's dual-rate sampler, PyTorch eager and torch.compile at the same precision (bf16:
# autocast), at fp32 also the same backend refreshing at every step; int8 is timed against the
# same backend at fp32 (PyTorch has no int8 peer). Every run reports the size on disk of each
# compiled graph, and on OpenVINO the per-graph latency of OpenVINO's benchmark_app on the same IR.
# Results: $OUT/bench-<target>-<precision>.json and .txt (the console tables). About an hour on a
# busy 2-core machine (the export's reference captures and torch.compile's C++ builds dominate).
#   OUT=dir    where the checkpoint, bundle and results go (default out/bench)
#   RUNS="openvino:int8 ..."   only these runs
#   COMPILE_CONFIGS=1          also rerun the torch.compile configuration sweep that chose the peer's
#                              configuration (examples/torch_compile_configs.py; ~15 minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/dualrate ]; then
    python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "torch==2.13.0" -e ".[export,openvino]"
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"     # as the CLI sets it (examples/ scripts do not)
dr=.venv/bin/dualrate
out="${OUT:-out/bench}"
mkdir -p "$out"
[ -d "$out/small-32" ] || $dr init --config small-32 --seed 0 -o "$out/small-32"
[ -d "$out/bundle" ] || $dr export "$out/small-32" -o "$out/bundle" --steps 64 --refresh-every 8 --guidance 1.5
if [ "${COMPILE_CONFIGS:-0}" = 1 ]; then
    .venv/bin/python examples/torch_compile_configs.py "$out/bundle" --batch 4 --repeats 5 \
        --json "$out/torch-compile-configs-fp32.json" | tee "$out/torch-compile-configs-fp32.txt"
fi
for run in ${RUNS:-onnxruntime:fp32 openvino:fp32 openvino:bf16 openvino:int8}; do
    t="${run%%:*}" p="${run#*:}"
    # The fp32 runs hold the single-rate rows (the FLOP bound's check) and the fp32 PyTorch peers; the
    # reduced-precision runs skip single rate, and int8 (which PyTorch has no peer for) times int8
    # against the same backend at fp32 only.
    case "$p" in
        fp32) flags=() ;;
        bf16|fp16) flags=(--no-single-rate) ;;
        *) flags=(--no-single-rate --no-torch) ;;
    esac
    $dr compile "$out/bundle" --target "$t" --precision "$p"
    $dr bench "$out/bundle" --target "$t" --precision "$p" --batch 4 --repeats 3 "${flags[@]}" \
        --json "$out/bench-$t-$p.json" | tee "$out/bench-$t-$p.txt"
done
