"""Export time per stage against ``torch.onnx.export(..., dynamo=True)`` of the same modules, in one run.

    python examples/export_time.py                       # tiny, digits, small-32; writes out/export_time/
    python examples/export_time.py --configs small-32 --steps 64 --refresh-every 8 --guidance 1.5

For each size: ``dualrate init`` (random weights, seed 0); then, each in a fresh process:
``torch.onnx.export(module, example, path, dynamo=True)`` of the encoder and the denoiser (the
modules ``dualrate export`` traces, with inputs of the rows it traces them at; first the plain call
with a static batch, then with the batch axis dynamic, as in the bundle), ``dualrate export`` as a
user runs it (its total and the per-stage seconds it prints), and ``torch.onnx.export`` again. The
ratio is the export's total over the mean of the two ``torch.onnx.export`` runs (background load
drifts; bracketing keeps the ratio honest). ``import torch`` is outside the baseline's timed region
and inside the export's (conservative). Prints the markdown table of docs/benchmarks.md and writes
``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

BASELINE = r"""
import json, logging, sys, time, warnings
import numpy as np
import torch
import dualrate
from dualrate.exporter.checkpoint import load_checkpoint
from dualrate.exporter.export import spec_for_model
from dualrate.exporter.sampling import graph_rows
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)   # as export does
args = json.loads(sys.argv[1])
pair = load_checkpoint(args["checkpoint"]).pair.eval()
opts = dualrate.sampler_options(steps=args["steps"], refresh_every=args["refresh_every"], guidance=args["guidance"])
spec = spec_for_model(pair, opts, {})
rows = graph_rows(spec, 2)            # the rows of the golden calls export traces with (2 samples, guided: 4)
modules = {"encoder": pair.bound_encoder(), "denoiser": pair.bound_denoiser([o.name for o in spec.model.encoder.outputs])}
out = {}
batch = torch.export.Dim("batch", min=1, max=65536)
for graph, module in modules.items():
    gio = spec.model.graphs()[graph]
    example = tuple(torch.zeros([rows if d == "batch" else d for d in i.shape],
                                dtype=getattr(torch, i.dtype)) for i in gio.inputs)
    for variant, dynamic in (("static", None), ("dynamic_batch", (tuple({0: batch} for _ in example),))):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), example, args["out"], dynamo=True, verbose=False, dynamic_shapes=dynamic)
        out[f"{graph}.{variant}"] = time.perf_counter() - start
print(json.dumps(out))
"""


def run(code: str, args: dict, env: dict) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def export(ckpt: Path, bundle: Path, sampler: dict, env: dict) -> dict:
    """``dualrate export`` as a user runs it; its total and per-stage seconds from what it prints."""
    proc = subprocess.run([sys.executable, "-m", "dualrate", "export", str(ckpt), "-o", str(bundle), "--force",
                           "--steps", str(sampler["steps"]), "--refresh-every", str(sampler["refresh_every"]),
                           "--guidance", str(sampler["guidance"])], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"dualrate export failed:\n{proc.stdout}\n{proc.stderr}")
    sys.stderr.write(proc.stderr)
    lines = proc.stdout.splitlines()
    timings = next(line for line in lines if line.startswith("  timings: "))[len("  timings: "):]
    total = next(line for line in lines if line.startswith("wrote "))
    return {"wall_s": float(re.search(r" in ([0-9.]+) s:", total).group(1)),
            "timings": {k: float(v) for k, v in (re.fullmatch(r"(\S+) ([0-9.]+) s", part).groups()
                                                 for part in timings.split(", "))}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "digits", "small-32"])
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--refresh-every", type=int, default=8)
    p.add_argument("--guidance", type=float, default=1.5)
    p.add_argument("--out", type=Path, default=REPO / "out" / "export_time")
    a = p.parse_args()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    a.out.mkdir(parents=True, exist_ok=True)
    results = {"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "sampler": {"steps": a.steps, "refresh_every": a.refresh_every, "guidance": a.guidance},
               "runs": {}}
    for config in a.configs:
        ckpt, bundle = a.out / config / "checkpoint", a.out / config / "bundle"
        if not ckpt.exists():
            subprocess.run([sys.executable, "-m", "dualrate", "init", "--config", config, "--seed", "0", "-o",
                            str(ckpt)], env=env, check=True)
        sampler = {"steps": a.steps, "refresh_every": a.refresh_every, "guidance": a.guidance}
        print(f"[{config}] load {os.getloadavg()[0]:.1f}: torch.onnx.export, dualrate export, torch.onnx.export",
              file=sys.stderr)
        load = [os.getloadavg()[0]]
        onnx_out = str(a.out / config / "baseline.onnx")
        base = [run(BASELINE, {"checkpoint": str(ckpt), "out": onnx_out, **sampler}, env)]
        load.append(os.getloadavg()[0])
        exported = export(ckpt, bundle, sampler, env)
        load.append(os.getloadavg()[0])
        base.append(run(BASELINE, {"checkpoint": str(ckpt), "out": onnx_out, **sampler}, env))
        load.append(os.getloadavg()[0])
        static = sum(v for b in base for k, v in b.items() if k.endswith(".static")) / len(base)
        dynamic = sum(v for b in base for k, v in b.items() if k.endswith(".dynamic_batch")) / len(base)
        results["runs"][config] = {"export": exported, "torch_onnx_export": base,
                                   "torch_onnx_export_static_s": static, "torch_onnx_export_dynamic_s": dynamic,
                                   "ratio": exported["wall_s"] / static, "ratio_dynamic": exported["wall_s"] / dynamic,
                                   "loadavg_1min": load}
        print(f"[{config}] export {exported['wall_s']:.1f} s, torch.onnx.export {static:.1f} s (dynamic batch "
              f"{dynamic:.1f} s): {exported['wall_s'] / static:.2f}x", file=sys.stderr)
        shutil.rmtree(bundle, ignore_errors=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


def table(results: dict) -> str:
    runs = results["runs"]
    stages = []
    for r in runs.values():
        for k in r["export"]["timings"]:
            if k not in stages:
                stages.append(k)
    head = "| stage | " + " | ".join(runs) + " |"
    lines = [head, "|---|" + "---:|" * len(runs)]
    for k in stages:
        lines.append(f"| {k} | " + " | ".join(f"{r['export']['timings'].get(k, 0.0):.1f}" for r in runs.values()) + " |")
    lines.append("| **`dualrate export` total (wall)** | " +
                 " | ".join(f"**{r['export']['wall_s']:.1f}**" for r in runs.values()) + " |")
    lines.append("| `torch.onnx.export(dynamo=True)` of both modules, mean of 2 | " +
                 " | ".join(f"{r['torch_onnx_export_static_s']:.1f}" for r in runs.values()) + " |")
    lines.append("| **ratio** | " + " | ".join(f"**{r['ratio']:.1f}×**" for r in runs.values()) + " |")
    lines.append("| the same with a dynamic batch axis (as the bundle) | " +
                 " | ".join(f"{r['torch_onnx_export_dynamic_s']:.1f} ({r['ratio_dynamic']:.1f}×)"
                            for r in runs.values()) + " |")
    lines.append("| 1-min load average during the run | " +
                 " | ".join("–".join(f"{x:.1f}" for x in (min(r['loadavg_1min']), max(r['loadavg_1min'])))
                            for r in runs.values()) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
