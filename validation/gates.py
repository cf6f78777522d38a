"""Tolerance policy: gates keyed on the *effective* precision a backend reports.

Defaults follow docs/validation.md (fp32 calibrated on the model's own error where the bundle
recorded it: ``gate_set``). ``rel_l2`` and ``cosine`` gate every tensor;
``psnr_db`` gates final samples. Every gate also requires zero non-finite values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np

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


# --------------------------------------------------------------------------- fp32 gates from the model's own error

# The default fp32 gate of each check is FLOOR_FACTOR times the PyTorch reference's own fp32 error on
# that check (float32 vs float64 on the recorded inputs, ``golden/fp32_floor.npz``), never under
# FLOOR_MIN_REL_L2 and never looser than the fixed fp32 default. On the shipped digits bundle honest
# ONNX Runtime / OpenVINO sit at 0.6-1.6x the floor and one encoder weight tensor off by
# (1 + 1e-3 N(0,1)) at ~67x, so 10x leaves a margin of ~6x on either side.
FLOOR_FACTOR = 10.0
FLOOR_MIN_REL_L2 = 1e-6
FLOOR_KIND, DEFAULT_KIND = "floor-calibrated", "default"


@dataclass(frozen=True)
class GateSet:
    """The gates of one run: ``base`` (the precision's default, after ``*`` overrides), and for a
    floor-calibrated fp32 run the gate of each check: ``totals`` (graph level, all calls together),
    ``calls`` (graph level worst call and teacher-forced steps), ``final`` (free-running finals, the
    per-step drift and cache == no-cache) and ``decoded`` (decoded final samples)."""

    kind: str
    base: Gate
    totals: dict[tuple[str, str], Gate]
    calls: dict[tuple[str, str], Gate]
    final: Gate
    decoded: Gate
    floors: dict[str, float]

    def describe(self) -> dict:
        """What the results document records under ``gates``."""
        out: dict = {"kind": self.kind}
        if self.kind == FLOOR_KIND:
            out.update(floor_factor=FLOOR_FACTOR, floor_min_rel_l2=FLOOR_MIN_REL_L2,
                       per_check={**{f"graph/{g}/{o}": _entry(v, self.floors.get(f"{g}/{o}/rel_l2"))
                                     for (g, o), v in self.totals.items()},
                                  **{f"call/{g}/{o}": _entry(v, self.floors.get(f"{g}/{o}/call_rel_l2"))
                                     for (g, o), v in self.calls.items()},
                                  "final": _entry(self.final, max((self.floors[k] for k in (
                                      "sampler/final/rel_l2", "sampler/drift/rel_l2") if k in self.floors),
                                      default=None))})
            if "decoder/decoded_final/rel_l2" in self.floors:
                out["per_check"]["decoded"] = _entry(self.decoded, self.floors["decoder/decoded_final/rel_l2"])
        return out


def _entry(gate: Gate, floor: float | None) -> dict:
    return {"rel_l2": gate.rel_l2, "cosine": gate.cosine, "psnr_db": gate.psnr_db, "floor_rel_l2": floor}


def _floored(default: float, floor: float | None) -> float:
    if floor is None or not (floor >= 0) or floor == float("inf"):
        return default                       # nothing usable measured: the fixed default
    return min(default, max(FLOOR_MIN_REL_L2, FLOOR_FACTOR * floor))


def gate_set(precision: str, overrides: Mapping[str, Mapping[str, float]] | None = None,
             floor: Mapping[str, Any] | None = None) -> GateSet:
    """The gates of a run at ``precision``. With the bundle's fp32 floor and an fp32 gate, each
    check's rel-L2 gate is ``FLOOR_FACTOR`` x its floor (at least ``FLOOR_MIN_REL_L2``, at most the
    default); cosine and PSNR keep their defaults. Overrides always win: ``*`` on every check,
    ``<graph>/<output>`` on that output, ``final`` on the free-running and cache finals (and the
    decoded samples). Without a floor (bundles exported before it) every check gets the default."""
    overrides = overrides or {}
    star = {k: v for k, v in overrides.get("*", {}).items() if v is not None}
    base = gate_for(precision, **star)
    final_over = {**star, **overrides.get("final", {})}
    floors = {k: float(np.asarray(v)) for k, v in (floor or {}).items()
              if np.asarray(v).dtype.kind == "f" and np.asarray(v).ndim == 0}
    if precision != "fp32" or not floors:
        return GateSet(DEFAULT_KIND, base, {}, {}, replace(base, **final_over), replace(base, **final_over), {})
    default = DEFAULT_GATES["fp32"]
    totals: dict[tuple[str, str], Gate] = {}
    calls: dict[tuple[str, str], Gate] = {}
    for key in floors:
        graph, _, rest = key.partition("/")
        output, _, metric = rest.rpartition("/")
        if graph in ("sampler",) or output == "decoded_final" or metric != "rel_l2":
            continue
        per_output = {**star, **overrides.get(f"{graph}/{output}", {})}
        call_floor = floors.get(f"{graph}/{output}/call_rel_l2", floors[key])
        totals[(graph, output)] = replace(default, **{"rel_l2": _floored(default.rel_l2, floors[key]), **per_output})
        calls[(graph, output)] = replace(default, **{"rel_l2": _floored(default.rel_l2, call_floor), **per_output})
    sampler = max((floors[k] for k in ("sampler/final/rel_l2", "sampler/drift/rel_l2") if k in floors), default=None)
    final = replace(default, **{"rel_l2": _floored(default.rel_l2, sampler), **final_over})
    decoded = replace(default, **{"rel_l2": _floored(default.rel_l2, floors.get("decoder/decoded_final/rel_l2")),
                                  **final_over})
    return GateSet(FLOOR_KIND, base, totals, calls, final, decoded, floors)
