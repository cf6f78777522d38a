"""``dualrate export``: build a bundle beside the target, gate it on ONNX Runtime, rename into place.

The bundle is written to a temporary directory next to the output; the graphs
must pass the ONNX checks (in the exporter) and ORT-vs-PyTorch parity on inputs
from real reference trajectories (fp32 gates) before the directory is renamed.
A failure leaves nothing at the output path (and an existing bundle untouched).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from dualrate.exporter.atomic import atomic_directory
from dualrate.exporter.bundle import Bundle, open_bundle
from dualrate.exporter.checkpoint import load_checkpoint
from dualrate.exporter.errors import ParityError
from dualrate.exporter.export import ExportOptions, build_bundle

from .gates import gate_for
from .graph_parity import CheckResult, graph_level


@dataclass
class ExportResult:
    bundle: Bundle
    parity: list[CheckResult]


def export_bundle(checkpoint: str | Path, out: str | Path, opts: ExportOptions, force: bool = False,
                  allow_factory: bool = False, progress: Callable[[str], None] = lambda _: None) -> ExportResult:
    from dualrate.targets.base import get_target

    ckpt = load_checkpoint(checkpoint, allow_factory=allow_factory)
    with atomic_directory(Path(out), force=force) as tmp:
        build_bundle(ckpt, tmp, opts, progress)
        staged = open_bundle(tmp)
        progress("checking ONNX Runtime vs PyTorch on recorded reference inputs")
        target = get_target("onnxruntime")
        target.require()
        runner = target.open_runner(staged, _uncompiled(staged))
        names = [o.name for o in staged.spec.model.encoder.outputs]
        vectors = {g: staged.golden(g) for g in ("encoder_io", "denoiser_io")}
        results = graph_level(runner, vectors, names, gate_for("fp32"))
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
