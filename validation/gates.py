"""Tolerance policy: gates keyed on the *effective* precision a backend reports.

Defaults follow VALIDATION.md. ``rel_l2`` and ``cosine`` gate every tensor;
``psnr_db`` gates final samples. Every gate also requires zero non-finite values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from dualrate.exporter.errors import BadInputError

from .metrics import Metrics


@dataclass(frozen=True)
class Gate:
    rel_l2: float
    cosine: float
    psnr_db: float

    def check(self, m: Metrics, final_sample: bool = False) -> list[str]:
        """The reasons ``m`` fails this gate (empty if it passes)."""
        if m.non_finite:
            return [f"{m.non_finite} non-finite values"]
        why = []
        if not m.rel_l2 <= self.rel_l2:
            why.append(f"rel-L2 {m.rel_l2:.3g} > {self.rel_l2:g}")
        if not m.cosine >= self.cosine:
            why.append(f"cosine {m.cosine:.7f} < {self.cosine:g}")
        if final_sample and not m.psnr_db >= self.psnr_db:
            why.append(f"PSNR {m.psnr_db:.1f} dB < {self.psnr_db:g} dB")
        return why


DEFAULT_GATES: dict[str, Gate] = {
    "fp32": Gate(rel_l2=1e-4, cosine=0.99999, psnr_db=60.0),
    "tf32": Gate(rel_l2=3e-3, cosine=0.9999, psnr_db=45.0),
    "fp16": Gate(rel_l2=1e-2, cosine=0.999, psnr_db=35.0),
    "bf16": Gate(rel_l2=3e-2, cosine=0.995, psnr_db=28.0),
}


def gate_for(precision: str, **overrides: float) -> Gate:
    if precision not in DEFAULT_GATES:
        raise BadInputError(f"no gate for precision {precision!r}; known: {', '.join(DEFAULT_GATES)}")
    return replace(DEFAULT_GATES[precision], **{k: v for k, v in overrides.items() if v is not None})


CALIBRATION_FACTOR = 2.0


def call_gates(gate: Gate, precision: str, calibration: Mapping[str, Sequence[float]] | None) -> dict[tuple[str, str], Gate]:
    """Per-call gates per (graph, output) for reduced precisions: never stricter than twice the
    PyTorch reference's own worst-call spread at that precision (VALIDATION.md: calibrate the
    defaults), never looser than the default. fp32/tf32 use the default gate unchanged."""
    out: dict[tuple[str, str], Gate] = {}
    if precision not in ("bf16", "fp16") or not calibration:
        return out
    for key, (rel, one_minus_cos) in calibration.items():
        pname, graph, name = key.split("/")
        if pname == precision:
            out[(graph, name)] = replace(gate, rel_l2=max(gate.rel_l2, CALIBRATION_FACTOR * float(rel)),
                                         cosine=min(gate.cosine, 1.0 - CALIBRATION_FACTOR * float(one_minus_cos)))
    return out
