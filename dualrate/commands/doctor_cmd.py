"""``dualrate doctor``: which backends are usable here, their versions, one smoke run each."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def add_doctor_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="report which backends are usable here, with versions and a smoke run",
                       description="For every target: usable here or why not, runtime version, and a one-graph "
                                   "smoke run (the encoder of a tiny random model vs PyTorch) where possible.")
    p.add_argument("--no-smoke", action="store_true", help="skip the smoke runs (no export needed)")
    p.set_defaults(handler=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    import os
    import platform

    from dualrate.exporter.optional import have
    from dualrate.targets.base import BACKENDS, get_target

    if have("torch"):
        import torch
        torch_line = f"torch {torch.__version__}"
    else:
        torch_line = "torch not installed (export and --reference torch need pip install 'dualrate[export]')"
    print(f"python {platform.python_version()}, {torch_line}, {platform.machine()}, {os.cpu_count()} cores")
    rows = []
    for name in BACKENDS:
        target = get_target(name)
        reason = target.available()
        version = target.runtime_version() if reason is None else "-"
        rows.append((name, target, reason, version))
    bundle = None
    smoke: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="dualrate-doctor-") as tmp:
        if not args.no_smoke and not have("torch"):
            print("smoke runs skipped: they export a tiny model, which needs PyTorch", file=sys.stderr)
        elif not args.no_smoke and any(r[2] is None for r in rows):
            print("exporting a tiny random model for the smoke runs ...", file=sys.stderr)
            bundle = _tiny_bundle(Path(tmp))
        for name, target, reason, _ in rows:
            if reason is not None or bundle is None:
                continue
            smoke[name] = _smoke(target, bundle)
    width = max(len(r[0]) for r in rows)
    usable = 0
    for name, target, reason, version in rows:
        if reason is None:
            usable += 1
            numeric = target.numeric_unavailable()
            state = "usable" + (f" (compile only: {numeric})" if numeric else "")
            print(f"  {name:{width}s}  {state}, version {version}; smoke: {smoke.get(name, 'skipped')}")
        else:
            print(f"  {name:{width}s}  NOT usable here: {reason}")
    print(f"{usable} of {len(rows)} targets usable here")
    return 0


def _tiny_bundle(root: Path):
    import torch

    from dualrate.exporter.checkpoint import make_config, save_checkpoint
    from dualrate.exporter.export import ExportOptions
    from dualrate.exporter.model_config import preset
    from dualrate.exporter.model_pair import build_pair
    from dualrate.exporter.spec_builder import SamplerOptions
    from dualrate.validation.export_check import export_bundle

    torch.manual_seed(0)
    model = {"family": "dr-uvit", **preset("tiny").to_dict()}
    pair = build_pair(model)
    with torch.no_grad():     # a fresh pair's zero-initialised head outputs constants; perturb it
        for p in pair.denoiser.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    save_checkpoint(pair, make_config(model), root / "ckpt")
    opts = ExportOptions(sampler=SamplerOptions(num_steps=4))
    return export_bundle(root / "ckpt", root / "bundle", opts).bundle


def _smoke(target, bundle) -> str:
    """Compile, run the encoder once on recorded inputs, compare to the recorded PyTorch outputs."""
    from dualrate.exporter.errors import DualrateError
    from dualrate.exporter.golden import graph_calls
    from dualrate.validation.graph_parity import run_graph
    from dualrate.validation.metrics import compare

    try:
        compiled = target.compile(bundle, "fp32")
        if target.numeric_unavailable():
            return f"compiled (effective {compiled.effective_precision}); not executed: {target.numeric_unavailable()}"
        runner = target.open_runner(bundle, compiled)
        inputs, outputs = graph_calls(bundle.golden("encoder_io"))[0]
        names = [o.name for o in bundle.spec.model.encoder.outputs]
        got = run_graph(runner, "encoder", inputs)
        worst = max(compare(got[n], outputs[n]).rel_l2 for n in names)
        return f"encoder OK, rel-L2 {worst:.1e} vs PyTorch (effective {compiled.effective_precision})"
    except DualrateError as exc:
        return f"FAILED: {exc}"
