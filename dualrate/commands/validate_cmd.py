"""``dualrate validate``: layered parity of a compiled bundle, reports, and the planted-fault self-test."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_validate_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("validate", help="check a compiled bundle against the reference sampler, fail-closed",
                       description="Run the parity layers (graph, teacher-forced steps, free-running sampler, "
                                   "refresh audit, cache == no-cache) of BUNDLE on --target. Exit 0 PASSED, "
                                   "1 FAILED, 3 NOT RUN (a check could not run here; never counted as passed).")
    p.add_argument("bundle", type=Path)
    p.add_argument("--target", required=True, help="onnxruntime, openvino, coreml or tensorrt")
    p.add_argument("--precision", default=None,
                   help="a precision or per-graph plan (default: the plan `dualrate tune` recorded in the bundle "
                        "for the target, else fp32)")
    p.add_argument("--reference", choices=("auto", "torch", "golden"), default="auto",
                   help="torch: recompute from the checkpoint; golden: the bundle's vectors (no PyTorch model needed)")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint for --reference torch")
    p.add_argument("--conditioning", type=Path, default=None, metavar="FILE.npz",
                   help="--reference torch: sample the reference trajectories with these conditioning rows "
                        "(arrays by input name) instead of the ones the golden vectors recorded")
    p.add_argument("--report", type=Path, default=None, metavar="DIR", help="write report.json, report.html, PNGs")
    p.add_argument("--junit", type=Path, default=None, metavar="FILE", help="JUnit XML for CI")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="the results document")
    p.add_argument("--gates", type=Path, default=None, metavar="FILE",
                   help='JSON overrides: {"*": {"rel_l2": 2e-4}, "encoder/feat0": {...}, "final": {"psnr_db": 50}}')
    p.add_argument("--gate", action="append", default=[], metavar="KEY:FIELD=VALUE",
                   help="one override, e.g. denoiser/prediction:rel_l2=2e-4 (repeatable)")
    p.add_argument("--gate-precision", default=None,
                   help="judge with this precision's gates (or a per-graph plan's, e.g. encoder=int8,denoiser=fp32) "
                        "instead of the effective ones")
    p.add_argument("--baseline", type=Path, default=None, metavar="PREVIOUS.json",
                   help="an earlier report (--json) of this bundle on this target: exit 1 when any metric grew past "
                        "--baseline-factor x its baseline value + --baseline-epsilon, even if the gates pass")
    p.add_argument("--baseline-factor", type=float, default=2.0, metavar="F", help="default 2")
    p.add_argument("--baseline-epsilon", type=float, default=1e-8, metavar="E",
                   help="absolute slack, so 0 -> 1e-9 is no regression (default 1e-8)")
    p.add_argument("--self-test", action="store_true", help="plant each known fault and show that every one is caught")
    p.add_argument("--threads", type=int, default=0)
    p.set_defaults(handler=_validate)


def gate_overrides(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    from dualrate.exporter.errors import BadInputError

    out: dict[str, dict[str, float]] = {}
    if args.gates:
        from dualrate.exporter.jsonio import read_json

        data = read_json(args.gates, f"--gates {args.gates}", BadInputError)
        if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
            raise BadInputError(f"--gates {args.gates}: expected an object of objects, e.g. "
                                '{"*": {"rel_l2": 2e-4}}')
        out = {k: dict(v) for k, v in data.items()}
    for item in args.gate:
        key, _, rest = item.rpartition(":")
        field, _, value = rest.partition("=")
        try:
            out.setdefault(key or "*", {})[field] = float(value)
        except ValueError:
            raise BadInputError(f"--gate {item!r}: expected KEY:FIELD=NUMBER, e.g. encoder/feat0:rel_l2=2e-4") from None
    fields = {"rel_l2", "cosine", "psnr_db"}
    for key, vals in out.items():
        bad = sorted(set(vals) - fields)
        if bad:
            raise BadInputError(f"gate override {key!r} has unknown field(s) {bad}; fields are {sorted(fields)}")
    return out


def _validate(args: argparse.Namespace) -> int:
    from dualrate.validation.validate import ValidateOptions

    opts = ValidateOptions(target=args.target, precision=args.precision, reference=args.reference,
                           checkpoint=args.checkpoint, gate_precision=args.gate_precision,
                           gate_overrides=gate_overrides(args), threads=args.threads)
    if args.self_test:
        if args.baseline is not None:
            from dualrate.exporter.errors import BadInputError
            raise BadInputError("--baseline judges one run against an earlier report; it does not apply to --self-test")
        import dataclasses

        from dualrate.exporter.bundle import open_bundle
        from dualrate.exporter.precision_default import resolve_precision

        precision = resolve_precision(open_bundle(args.bundle), args.target, args.precision)
        return _self_test(args, dataclasses.replace(opts, precision=precision))
    from dualrate.api import validate
    from dualrate.exporter.progress import console
    from dualrate.validation.reports import write_json

    conditioning = None
    if args.conditioning is not None:
        from dualrate.exporter.jsonio import read_npz
        conditioning = read_npz(args.conditioning, "--conditioning")
    report = validate(args.bundle, target=opts.target, precision=opts.precision, reference=opts.reference,
                      checkpoint=opts.checkpoint, gate_overrides=opts.gate_overrides,
                      gate_precision=opts.gate_precision, threads=opts.threads, conditioning=conditioning,
                      baseline=args.baseline, baseline_factor=args.baseline_factor,
                      baseline_epsilon=args.baseline_epsilon, progress=console())
    if args.json:
        write_json(report.doc, args.json)
    if args.junit:
        report.save_junit(args.junit)
    if args.report:
        html = report.save(args.report, data_range=_data_range(args.bundle))
        print(f"report: {html}", file=sys.stderr)
    print(report.summary())
    return report.exit_code


def _data_range(bundle: Path) -> tuple[float, float]:
    from dualrate.exporter.bundle import open_bundle
    return tuple(open_bundle(bundle).spec.model.data_range)


def _self_test(args: argparse.Namespace, opts) -> int:
    from dualrate.validation.faults import self_test

    from dualrate.exporter.progress import console

    res = self_test(args.bundle, opts, progress=console())
    print(f"clean run: {res['clean_verdict']}")
    for row in res["faults"]:
        ff = row["first_failure"] or {}
        state = "not applicable" if row["caught"] is None else ("CAUGHT" if row["caught"] else "MISSED")
        where = f" at {ff.get('layer')} {ff.get('graph')}/{ff.get('output')}: {'; '.join(ff.get('reasons', []))}" if ff else ""
        print(f"  {row['fault']:24s} {state}{where}{' (' + row['note'] + ')' if row['note'] else ''}")
    if args.json:
        from dualrate.validation.reports import write_json
        write_json(res, args.json)
    verdict = "PASSED" if res["passed"] else "FAILED"
    print(f"{verdict}: self-test caught {res['caught']} of {res['applicable']} planted faults"
          + ("" if res["clean_verdict"] == "PASSED" else f"; the clean bundle itself is {res['clean_verdict']}"))
    return 0 if res["passed"] else 1
