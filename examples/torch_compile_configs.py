"""Which ``torch.compile`` configuration is PyTorch's strongest on this CPU, for ``dualrate bench``'s peer.

For a bundle (its source checkpoint), compiles the encoder and the denoiser once per configuration of
``dualrate.validation.bench_peers.COMPILE_CONFIGS`` (``dynamic=False``, under ``inference_mode``, fp32
or ``--precision bf16`` autocast), reports each compile's wall time, then times every configuration and
eager interleaved per repeat (so load drifting hits all alike) at the rows per call of the bench loop,
and prints medians and the fastest configuration. ``BEST_COMPILE`` in bench_peers.py is set from it.

    python examples/torch_compile_configs.py /tmp/c_s32b --batch 4 --repeats 5 [--precision bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from dualrate.exporter.bundle import open_bundle
from dualrate.exporter.runner import graph_feeds
from dualrate.exporter.spec import FEATURE_PREFIX
from dualrate.validation.bench import BenchOptions, _flat, bench_model, loop_values, rows_per_call
from dualrate.validation.bench_peers import COMPILE_CONFIGS, TorchPeer, peer_runner


CALL = {"encoder": "encode", "denoiser": "denoise"}      # the runner contract's method per graph


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--configs", default=",".join(COMPILE_CONFIGS))
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    bundle = open_bundle(args.bundle)
    spec = bundle.spec
    model, why = bench_model(bundle, BenchOptions())
    if model is None:
        raise SystemExit(why)
    rows = rows_per_call(spec, args.batch)
    values = loop_values(spec, rows, args.batch, 0, bundle.nulls())
    peers = {"eager": TorchPeer(args.precision)}
    peers.update({c: TorchPeer(args.precision, c) for c in args.configs.split(",")})
    runners = {name: peer_runner(model, spec, p) for name, p in peers.items()}
    names = [o.name for o in spec.model.encoder.outputs]
    with torch.inference_mode():
        feats = model.bound_encoder()(*_flat(model.bound_encoder(), spec.model.encoder, values))
    values.update({FEATURE_PREFIX + n: f for n, f in zip(names, feats)})
    feeds = {g: graph_feeds(getattr(spec.model, g), values) for g in ("encoder", "denoiser")}
    compile_s: dict[str, dict[str, float]] = {}
    for name, runner in runners.items():          # first calls: compile (and one run)
        compile_s[name] = {}
        for g in ("encoder", "denoiser"):
            start = time.perf_counter()
            getattr(runner, CALL[g])(feeds[g])
            compile_s[name][g] = time.perf_counter() - start
            getattr(runner, CALL[g])(feeds[g])
        print(f"{name:<28} first calls: encoder {compile_s[name]['encoder']:.1f} s, "
              f"denoiser {compile_s[name]['denoiser']:.1f} s", flush=True)
    times: dict[str, dict[str, list[float]]] = {n: {"encoder": [], "denoiser": []} for n in runners}
    for _ in range(args.repeats):
        for name, runner in runners.items():
            for g in ("encoder", "denoiser"):
                start = time.perf_counter()
                getattr(runner, CALL[g])(feeds[g])
                times[name][g].append(time.perf_counter() - start)
    med = {n: {g: statistics.median(v) * 1e3 for g, v in t.items()} for n, t in times.items()}
    print(f"\n{rows} rows per call, {torch.get_num_threads()} threads, {args.precision}, medians of {args.repeats}")
    print(f"{'config':<28}{'encoder ms':>12}{'denoiser ms':>13}{'vs eager':>10}")
    for name, m in med.items():
        ratio = (med["eager"]["encoder"] + med["eager"]["denoiser"]) / (m["encoder"] + m["denoiser"])
        print(f"{name:<28}{m['encoder']:>12.1f}{m['denoiser']:>13.1f}{ratio:>9.2f}x")
    best = min((n for n in med if n != "eager"), key=lambda n: med[n]["encoder"] + med[n]["denoiser"])
    print(f"fastest compiled configuration: {best}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "precision": args.precision, "median_ms": med, "first_calls_s": compile_s,
                       "best": best, "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
