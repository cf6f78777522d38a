"""``dualrate export`` and ``dualrate compile``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .options import add_sampler_flags, sampler_options


def add_export_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="trace a checkpoint into a verified two-graph bundle",
                       description="Export CHECKPOINT to BUNDLE: encoder.onnx, denoiser.onnx, spec.json, golden "
                                   "vectors and a hashed manifest. Fails (exit 1) unless ONNX Runtime matches "
                                   "PyTorch on recorded reference inputs; nothing is written on failure.")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True, help="bundle directory to create")
    p.add_argument("--static-batch", type=int, default=None, metavar="B",
                   help="fix the batch axis to B samples (default: dynamic)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--external-data", choices=("auto", "always", "never"), default="auto",
                   help="store weights as ONNX external data (auto: when over ~1.8 GB)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle (only once the new one passed)")
    p.add_argument("--allow-factory", action="store_true", help="allow a checkpoint's custom model factory to run")
    p.add_argument("--calibrate-precisions", nargs="?", const="fp32,bf16,fp16", default="", metavar="LIST",
                   help="also store the gate calibration now (BUNDLE/calibration/, outside the hashed files): fp32 "
                        "(the model's own fp32 error, from which the fp32 gates are set), bf16, fp16; "
                        "comma-separated, all three when given alone. By default each is computed where the "
                        "model is at hand when first needed: fp32 by validate, bf16/fp16 by compile or validate. "
                        "A CI that validates without PyTorch exports with --calibrate-precisions fp32")
    add_sampler_flags(p)
    p.set_defaults(handler=_export)

    c = sub.add_parser("compile", help="compile a bundle for a backend (cached in BUNDLE/targets/)")
    c.add_argument("bundle", type=Path)
    c.add_argument("--target", required=True, help="onnxruntime, openvino, coreml or tensorrt")
    c.add_argument("--precision", default=None,
                   help="fp32, fp16, bf16, int8, int8-weights (per backend), or a per-graph plan such as "
                        "encoder=int8,denoiser=fp32 (graphs not named stay fp32); default: the plan `dualrate tune` recorded in the bundle for the target, else fp32")
    c.add_argument("--force", action="store_true", help="rebuild even if the cache is current")
    g = c.add_argument_group("backend options (passed to the target; part of the cache key)")
    g.add_argument("--checkpoint", type=Path, default=None,
                   help="coreml: the source checkpoint (default: the manifest's path, verified by sha256)")
    g.add_argument("--allow-factory", action="store_true", help="coreml: allow a custom model factory to run")
    g.add_argument("--allow-fp16-overflow", action="store_true",
                   help="coreml fp16: convert even when the pre-flight sees activations beyond the fp16 range")
    g.add_argument("--max-batch", type=int, default=None, help="tensorrt: largest batch of the optimization profile")
    g.add_argument("--opt-batch", type=int, default=None, help="tensorrt: batch the profile is tuned for")
    g.add_argument("--tf32", action="store_true", help="tensorrt: allow TF32 (effective precision becomes tf32)")
    g.add_argument("--workspace-gib", type=float, default=None, help="tensorrt: builder workspace limit")
    g.add_argument("--threads", type=int, default=None, help="openvino: inference threads")
    g.add_argument("--calibration-samples", type=int, default=None, metavar="N",
                   help="int8 (every target): sampler runs the calibration records (default 4)")
    g.add_argument("--calibration-seed", type=int, default=None, metavar="S",
                   help="int8 (every target): seed of the calibration runs (default 0)")
    g.add_argument("--int8-sensitive", choices=("int8-weights", "float"), default=None,
                   help="onnxruntime/openvino int8: the sensitive layers (time/FiLM embedding, first and last "
                        "conv/linear) keep float activations with int8 weights (default), or stay float")
    c.set_defaults(handler=_compile)


def _export(args: argparse.Namespace) -> int:
    from dualrate.api import export
    from dualrate.exporter.export_options import ExportOptions
    from dualrate.exporter.progress import console, format_timings

    opts = ExportOptions(sampler=sampler_options(args), static_batch=args.static_batch, opset=args.opset,
                         external_data={"auto": None, "always": True, "never": False}[args.external_data])
    start = time.perf_counter()
    res = export(args.checkpoint, args.output, options=opts, force=args.force, allow_factory=args.allow_factory,
                 progress=console(),
                 calibrate_precisions=[p.strip() for p in args.calibrate_precisions.split(",") if p.strip()])
    spec = res.bundle.spec
    for r in res.parity:
        m = r.metrics
        print(f"  parity {r.graph:8s} {r.output:10s} rel-L2 {m.rel_l2:.2e}  cosine {m.cosine:.8f}  "
              f"max abs {m.max_abs:.2e}  ({r.detail['calls']} recorded calls)")
    for rec in res.calibration:
        print(f"  calibration {rec['precision']}: {rec['status']} -> {rec['path']}")
    print(f"  timings: {format_timings(res.timings)}")
    print(f"wrote {args.output} in {time.perf_counter() - start:.1f} s: {spec.sampler.type}, "
          f"{spec.sampler.num_steps} steps, refresh at {list(spec.dual_rate.resolved_refresh_steps)}, "
          f"guidance {spec.guidance.scale}; ONNX Runtime parity PASSED")
    return 0


BACKEND_OPTIONS = {"coreml": ("checkpoint", "allow_factory", "allow_fp16_overflow", "calibration_samples",
                              "calibration_seed"),
                   "tensorrt": ("max_batch", "opt_batch", "tf32", "workspace_gib", "calibration_samples",
                                "calibration_seed"),
                   "openvino": ("threads", "calibration_samples", "calibration_seed", "int8_sensitive"),
                   "onnxruntime": ("calibration_samples", "calibration_seed", "int8_sensitive")}


def compile_options(args: argparse.Namespace) -> dict:
    """The backend options the user gave, refusing ones the chosen target does not take."""
    from dualrate.exporter.errors import BadInputError

    given = {k for opts in BACKEND_OPTIONS.values() for k in opts if getattr(args, k, None) not in (None, False)}
    allowed = set(BACKEND_OPTIONS.get(args.target, ()))
    wrong = sorted(given - allowed)
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise BadInputError(f"{flags} do(es) not apply to --target {args.target}")
    return {k: getattr(args, k) for k in given}


def _compile(args: argparse.Namespace) -> int:
    from dualrate.api import compile
    from dualrate.exporter.progress import console

    start = time.perf_counter()
    compiled = compile(args.bundle, target=args.target, precision=args.precision, force=args.force,
                       progress=console(), **compile_options(args))
    rec = compiled.record
    cal = compiled.calibration or {}
    if cal.get("status") in ("stored", "computed"):
        print(f"  calibration {cal['precision']}: {cal['status']} -> {cal['path']}")
    elif cal.get("status") == "uncalibrated":
        print(f"  calibration {cal['precision']}: not computed here ({cal['reason']}); validate uses the default "
              f"{cal['precision']} gates for every call unless it can calibrate")
    print(f"compiled {args.bundle} for {args.target} in {time.perf_counter() - start:.1f} s: requested "
          f"{rec['requested_precision']}, effective {rec['effective_precision']}, runtime {rec['runtime_version']} "
          f"-> {compiled.path}")
    return 0
