"""Write ``dualrate tune``'s chosen plan as a new bundle, and validate it.

The new bundle is a re-export of the same model (the checkpoint the manifest records, verified by
sha256, or the ``DualRateModel`` handed over in Python) through the public ``dualrate.export``,
with the source bundle's export options except the refresh steps — the chosen schedule, stored as
an explicit list so the bundle samples exactly what was measured (a calibrated threshold re-measured
on PyTorch could land a step elsewhere) — and ``precision_plan`` = {target: chosen plan}, which
makes the plan the bundle's default precision on that target (``exporter.precision_default``).
It then goes through ``dualrate.validate`` at that plan, under the bundle's own gates.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from dualrate.exporter.bundle import Bundle, load_source_checkpoint, recorded_checkpoint
from dualrate.exporter.errors import BadInputError

PURPOSE = "tune writes its choice as a bundle re-exported from the PyTorch model"


def export_source(bundle: Bundle, opts: Any) -> Any:
    """What the new bundle is exported from: the verified checkpoint path, or ``opts.model``
    (checked by its weights' sha256). Checked before the search, so a missing model costs nothing."""
    from dualrate.exporter.optional import require

    require("torch", "tune (re-exporting the chosen plan from the PyTorch model)")
    if opts.model is not None:
        from dualrate.exporter.precision_calibration import model_from

        return model_from(bundle, opts.model)[0]         # checks the weights' sha256 against the manifest
    if not bundle.manifest.get("source_checkpoint"):
        raise BadInputError(f"bundle {bundle.path} was exported from a model handed over in Python, so there is no "
                            "checkpoint to re-export from; use the Python API: dualrate.tune(..., model=MODEL)")
    load_source_checkpoint(bundle, opts.checkpoint, PURPOSE)        # verifies the sha256
    return recorded_checkpoint(bundle, opts.checkpoint)


def export_options(bundle: Bundle, steps: list[int], target: str, plan: str):
    """The source bundle's export options with ``steps`` as explicit refresh steps and ``plan`` recorded."""
    from dualrate.exporter.export_options import ExportOptions
    from dualrate.exporter.spec_builder import SamplerOptions

    recorded = dict(bundle.manifest.get("export_options") or {})
    sampler = dict(recorded.get("sampler") or {})
    if sampler.get("guidance_interval") is not None:
        sampler["guidance_interval"] = tuple(sampler["guidance_interval"])
    sampler.update(refresh="explicit", refresh_params={"steps": [int(s) for s in steps]})
    known = {f.name for f in dataclasses.fields(ExportOptions)}
    rest = {k: v for k, v in recorded.items() if k in known and k not in ("sampler", "precision_plan")}
    if "golden_seeds" in rest:
        rest["golden_seeds"] = tuple(rest["golden_seeds"])
    plans = dict(recorded.get("precision_plan") or {})
    plans[target] = plan
    return ExportOptions(sampler=SamplerOptions(**sampler), precision_plan=plans, **rest)


def write_bundle(search: Any, chosen: dict[str, Any], source: Any, output: Path, force: bool, stages: Any
                 ) -> tuple[Bundle, Any]:
    """Export the chosen plan to ``output``; validate it (unless ``opts.validate`` is off).
    Returns (bundle, ValidationReport or None)."""
    from dualrate.api import export, validate

    target = search.target.name
    options = export_options(search.bundle, chosen["schedule"]["steps"], target, chosen["plan"])
    with stages("export", f"exporting the chosen plan to {output}"):
        exported = export(source, output, options=options, force=force, progress=stages.progress)
    bundle = exported.bundle
    if tuple(bundle.spec.dual_rate.resolved_refresh_steps) != tuple(chosen["schedule"]["steps"]):
        raise BadInputError(f"the re-exported bundle {output} refreshes at "
                            f"{list(bundle.spec.dual_rate.resolved_refresh_steps)}, not the chosen "
                            f"{chosen['schedule']['steps']}")
    if not search.opts.validate:
        return bundle, None
    reference = search.opts.model if search.opts.model is not None else "auto"
    with stages("validate", f"validating {output} on {target} {chosen['plan']}"):
        report = validate(bundle, target=target, precision=chosen["plan"], reference=reference,
                          checkpoint=search.opts.checkpoint, threads=search.opts.threads, progress=stages.progress)
    return bundle, report


def write_validated(search: Any, source: Any, output: Path, force: bool, stages: Any
                    ) -> tuple[dict[str, Any] | None, Bundle | None, Any, list[dict[str, Any]]]:
    """The fastest point within the budget whose bundle passes ``dualrate validate``:
    (point, bundle, report, failed attempts). The fidelity budget is measured on final samples,
    which a graph the sampler barely uses can pass while failing its own per-call gates (an int8
    encoder of a model whose denoiser ignores it), so a written bundle that FAILS is removed and
    the next-fastest point is tried — skipping its plan when the failure was at the graph layer,
    which no schedule changes — up to ``opts.validate_tries`` bundles. A validation that could not
    run here (NOT RUN) keeps its bundle: it is not a failure of the plan."""
    import shutil

    within = sorted((p for p in search.points if p["meets_budget"]), key=lambda p: p["time_s"])
    attempts: list[dict[str, Any]] = []
    bad_plans: set[str] = set()
    for point in within:
        if point["plan"] in bad_plans:
            continue
        if len(attempts) >= search.opts.validate_tries:
            break
        bundle, report = write_bundle(search, point, source, output, force, stages)
        if report is None or report.verdict != "FAILED":
            return point, bundle, report, attempts
        failure = report.doc.get("first_failure") or {}
        attempts.append({"plan": point["plan"], "schedule": point["schedule"]["name"], "verdict": report.verdict,
                         "first_failure": failure})
        if failure.get("layer") == "graph":
            bad_plans.add(point["plan"])
        shutil.rmtree(output)                # a bundle that fails its own gates is not left behind
    return None, None, None, attempts


__all__ = ["export_options", "export_source", "write_bundle", "write_validated"]
