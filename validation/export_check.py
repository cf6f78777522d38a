"""Export with a parity gate: build a bundle beside the target, check it on ONNX Runtime, rename into place.

The bundle is written to a temporary directory next to the output; the graphs must
pass the ONNX checks (in the exporter) and ORT-vs-PyTorch parity on inputs from real
reference trajectories (fp32 gates) before the directory is renamed. A failure leaves
nothing at the output path (and an existing bundle untouched).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dualrate.exporter.atomic import atomic_directory
from dualrate.exporter.bundle import Bundle, open_bundle
from dualrate.exporter.errors import ParityError
from dualrate.exporter.export import ExportOptions, build_bundle
from dualrate.exporter.model_pair import DualRateModel
from dualrate.exporter.progress import Progress, Stages

from .gates import gate_for
from .graph_parity import CheckResult, graph_level


@dataclass
class ExportResult:
    """``bundle`` (opened, verified), ``parity`` (ONNX Runtime vs PyTorch per graph output),
    ``timings`` (stage -> seconds), ``calibration`` (what ``calibrate_precisions`` stored)."""

    bundle: Bundle
    parity: list[CheckResult]
    timings: dict[str, float] = field(default_factory=dict)
    calibration: list[dict[str, Any]] = field(default_factory=list)


def model_source(model: DualRateModel) -> dict[str, Any]:
    """The manifest's ``source`` for a model handed over in Python: its classes and weights' sha256."""
    return {"kind": "python", "name": "+".join(type(m).__name__ for m in model.modules().values()),
            "sha256": model.weights_sha256()}


def export_bundle(model: DualRateModel | str | Path, out: str | Path, opts: ExportOptions, force: bool = False,
                  allow_factory: bool = False, progress: Progress | None = None,
                  examples: dict[str, np.ndarray] | None = None,
                  calibrate_precisions: bool | Sequence[str] = False) -> ExportResult:
    """Export ``model`` (a ``DualRateModel`` or a checkpoint path) to a verified bundle at ``out``.

    ``calibrate_precisions`` (True: fp32, bf16 and fp16, or a list of them) also stores the gate
    calibration now (``fp32``: the reference's own fp32 error, from which the fp32 gates are set;
    ``bf16``/``fp16``: the per-call gates) instead of when a validate or a reduced-precision compile
    first needs it where the model is at hand. It is outside the hashed payload: the bundle's fp32
    content is the same either way. A CI that validates without PyTorch exports with it.
    """
    from dualrate.exporter.checkpoint import load_checkpoint
    from dualrate.exporter.precision_calibration import CALIBRATED
    from dualrate.targets.base import get_target

    precisions = _precisions(calibrate_precisions, CALIBRATED)
    stages = Stages(progress)
    with stages("load", "loading the model"):
        if isinstance(model, DualRateModel):
            source = model_source(model)
        else:
            ckpt = load_checkpoint(model, allow_factory=allow_factory)
            model, source = ckpt.pair, ckpt.source()
    calibration: list[dict[str, Any]] = []
    with atomic_directory(Path(out), force=force) as tmp:
        build_bundle(model, tmp, opts, source, stages, examples)
        with stages("verify", "verifying the staged bundle (hashes, graph checks)"):
            staged = open_bundle(tmp)
        with stages("parity", "checking ONNX Runtime vs PyTorch on recorded reference inputs"):
            target = get_target("onnxruntime")
            target.require()
            runner = target.open_runner(staged, _uncompiled(staged), spin=False)
            results = graph_level(runner, {g: staged.golden(g) for g in staged.golden_names()}, gate_for("fp32"))
        failed = [r for r in results if not r.passed]
        if failed:
            r = failed[0]
            raise ParityError(f"export parity failed: {r.graph} output {r.output} on ONNX Runtime vs PyTorch: "
                              f"{'; '.join(r.reasons)} (worst call {r.detail['worst_call']}, "
                              f"min atol at rtol {r.metrics.rtol:g}: {r.metrics.min_atol_at_rtol:.3g}); "
                              "nothing was written")
        if precisions:
            from dualrate.exporter.precision_calibration import ensure
            from dualrate.exporter.torch_runner import machine_threads

            with machine_threads():
                for p in precisions:
                    calibration.append(ensure(staged, p, model=model, stages=stages)[1])
    # the directory verified above was renamed into place as a whole: no second pass over its files
    bundle = Bundle(Path(out), staged.manifest, staged.spec)
    for rec in calibration:
        rec["path"] = str(Path(out) / Path(rec["path"]).relative_to(tmp))
    return ExportResult(bundle, results, dict(stages.timings), calibration)


def _precisions(given: bool | Sequence[str], known: Sequence[str]) -> list[str]:
    from dualrate.exporter.errors import BadInputError

    if given is True:
        return list(known)
    if not given:
        return []
    names = [given] if isinstance(given, str) else list(given)
    bad = [p for p in names if p not in known]
    if bad:
        raise BadInputError(f"calibrate_precisions {bad}: the gate calibration exists for {', '.join(known)}")
    return list(dict.fromkeys(names))


def _uncompiled(bundle: Bundle):
    """Run the exported graphs directly (no compile cache inside a staging directory)."""
    from dualrate.targets.base import Compiled
    return Compiled(bundle.path, {"effective_precision": "fp32"})
