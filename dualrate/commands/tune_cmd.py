"""``dualrate tune``: the fastest refresh schedule x precision plan within a fidelity budget."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _list(kind):
    """A comma-separated list of ``kind`` (argparse type); a bad item is one usage line (exit 2)."""
    def parse(text: str):
        try:
            return [kind(x) for x in text.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated {kind.__name__} values") from None
    return parse


def add_tune_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tune", help="search refresh schedules x precision plans under a fidelity budget",
                       description="Measure refresh schedules (every K, calibrated thresholds, the bundle's own) x "
                                   "per-graph precision plans of --target against the fp32 every-step sampler on "
                                   "the same backend (same noise and conditioning): fidelity of the final samples "
                                   "and median wall time. Writes the Pareto front (tune.json, tune.html) and the "
                                   "fastest plan within --budget as a new bundle (-o) that runs that plan by "
                                   "default on the target, validated under its own gates. Exit 0 chosen and "
                                   "validated, 1 no plan meets the budget (or none within it passes validation), "
                                   "2 bad input, 3 backend unavailable here.")
    p.add_argument("bundle", type=Path)
    p.add_argument("--target", required=True, help="onnxruntime, openvino, coreml or tensorrt")
    p.add_argument("--budget", required=True, metavar="METRIC=VALUE",
                   help="final_psnr=DB (at least), rel_l2=X (at most) or cosine=C, of the final samples against "
                        "the fp32 every-step reference")
    p.add_argument("-o", "--output", type=Path, required=True, help="the new bundle (the chosen plan)")
    p.add_argument("--report", type=Path, default=None, metavar="DIR",
                   help="where tune.json and tune.html go (default: OUTPUT.tune beside the new bundle)")
    p.add_argument("--plans", type=lambda s: [x for x in s.split(";") if x.strip()], default=None,
                   metavar="PLAN;PLAN", help="plans to try, ';'-separated, e.g. 'fp32;bf16;encoder=bf16,denoiser=fp32' "
                                             "(default: every per-graph plan of the target's precisions)")
    p.add_argument("--every", type=_list(int), default=None, metavar="K,K",
                   help="every-K refresh schedules to try (default: 1 and powers of two up to steps/4)")
    p.add_argument("--thresholds", type=_list(float), default=None, metavar="T,T",
                   help="calibrated refresh thresholds to try (default 0.05,0.1,0.2)")
    p.add_argument("--max-plans", type=int, default=24, help="candidates measured at most (default 24)")
    p.add_argument("--batch", type=int, default=2, help="samples per sampler run (default 2)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per candidate; the median counts (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="backend threads (default: every core)")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="the source checkpoint (default: the manifest's path, verified by sha256)")
    p.add_argument("--no-validate", action="store_true", help="do not validate the new bundle")
    p.add_argument("--validate-tries", type=int, default=3,
                   help="bundles written at most: one that fails validate is removed and the next-fastest plan "
                        "within the budget is tried (default 3)")
    p.add_argument("--force", action="store_true", help="replace an existing output and report")
    p.set_defaults(handler=_tune)


def _tune(args: argparse.Namespace) -> int:
    from dualrate.api import tune
    from dualrate.exporter.progress import console, format_timings
    from dualrate.validation.tune import failure_text, summary

    report = args.report or args.output.with_name(args.output.name + ".tune")
    result = tune(args.bundle, args.output, target=args.target, budget=args.budget, plans=args.plans,
                  every=args.every, thresholds=args.thresholds, batch=args.batch, repeats=args.repeats,
                  seed=args.seed, max_plans=args.max_plans, threads=args.threads, checkpoint=args.checkpoint,
                  validate=not args.no_validate, validate_tries=args.validate_tries, report=report,
                  force=args.force, progress=console())
    print(summary(result))
    print(f"  timings: {format_timings(result.doc['timings'])}")
    print(f"report: {report / 'tune.html'}", file=sys.stderr)
    doc = result.doc
    if not result.met:
        print(f"FAILED: {failure_text(doc)}")
        return 1
    c = doc["chosen"]
    v = doc.get("validation")
    verdict = "" if v is None else f"; dualrate validate {v['verdict']}"
    print(f"chose {c['plan']} with {c['schedule']['name']} refresh: {doc['budget']['metric']} "
          f"{'exact' if c['score'] in (None, float('inf')) else format(c['score'], '.4g')}, {c['speedup']:.2f}x the "
          f"fp32 every-step reference; wrote {args.output}{verdict}")
    return result.exit_code
