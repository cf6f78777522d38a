"""Export with a parity gate: build a bundle beside the target, check it on ONNX Runtime, rename into place.

The bundle is written to a temporary directory next to the output; the graphs must
pass the ONNX checks (in the exporter) and ORT-vs-PyTorch parity on inputs from real
reference trajectories (fp32 gates) before the directory is renamed. A failure leaves
nothing at the output path (and an existing bundle untouched).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dualrate.exporter.atomic import atomic_directory
from dualrate.exporter.bundle import Bundle, open_bundle
from dualrate.exporter.errors import ParityError
from dualrate.exporter.export import ExportOptions, build_bundle
from dualrate.exporter.model_pair import DualRateModel

from .gates import gate_for
from .graph_parity import CheckResult, graph_level


@dataclass
class ExportResult:
    bundle: Bundle
    parity: list[CheckResult]


def model_source(model: DualRateModel) -> dict[str, Any]:
    """The manifest's ``source`` for a model handed over in Python: its classes and weights' sha256."""
    return {"kind": "python", "name": "+".join(type(m).__name__ for m in model.modules().values()),
            "sha256": model.weights_sha256()}


def export_bundle(model: DualRateModel | str | Path, out: str | Path, opts: ExportOptions, force: bool = False,
                  allow_factory: bool = False, progress: Callable[[str], None] = lambda _: None,
                  examples: dict[str, np.ndarray] | None = None) -> ExportResult:
    """Export ``model`` (a ``DualRateModel`` or a checkpoint path) to a verified bundle at ``out``."""
    from dualrate.exporter.checkpoint import load_checkpoint
    from dualrate.targets.base import get_target

    if isinstance(model, DualRateModel):
        source = model_source(model)
    else:
        ckpt = load_checkpoint(model, allow_factory=allow_factory)
        model, source = ckpt.pair, ckpt.source()
    with atomic_directory(Path(out), force=force) as tmp:
        build_bundle(model, tmp, opts, source, progress, examples)
        staged = open_bundle(tmp)
        progress("checking ONNX Runtime vs PyTorch on recorded reference inputs")
        target = get_target("onnxruntime")
        target.require()
        runner = target.open_runner(staged, _uncompiled(staged))
        results = graph_level(runner, {g: staged.golden(g) for g in staged.golden_names()}, gate_for("fp32"))
        failed = [r for r in results if not r.passed]
        if failed:
            r = failed[0]
            raise ParityError(f"export parity failed: {r.graph} output {r.output} on ONNX Runtime vs PyTorch: "
                              f"{'; '.join(r.reasons)} (worst call {r.detail['worst_call']}, "
                              f"min atol at rtol {r.metrics.rtol:g}: {r.metrics.min_atol_at_rtol:.3g}); "
                              "nothing was written")
    return ExportResult(open_bundle(out), results)


def _uncompiled(bundle: Bundle):
    """Run the exported graphs directly (no compile cache inside a staging directory)."""
    from dualrate.targets.base import Compiled
    return Compiled(bundle.path, {"effective_precision": "fp32"})
