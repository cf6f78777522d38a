"""Layer 1, graph level: each graph on a backend vs the reference outputs on recorded inputs.

Inputs are states captured from real reference trajectories (the bundle's golden
``encoder_io``/``denoiser_io``); each output is compared over all recorded calls
together, and the worst single call is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dualrate.exporter.golden import graph_calls

from .gates import Gate
from .metrics import Metrics, compare

GRAPH_ORDER = ("encoder", "denoiser", "decoder")


@dataclass
class CheckResult:
    layer: str
    graph: str
    output: str
    metrics: Metrics | None          # None for checks that are not numeric (refresh audit)
    reasons: list[str]
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "graph": self.graph, "output": self.output, "passed": self.passed,
                "reasons": self.reasons, "metrics": self.metrics.to_dict() if self.metrics else None,
                "step": self.detail.get("step"), "detail": {k: v for k, v in self.detail.items() if k != "step"}}


def run_graph(runner: Any, graph: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One recorded call on the backend, outputs as numpy keyed by graph output name."""
    if graph == "encoder":
        return dict(runner.features_to_numpy(runner.encode(inputs)))
    if graph == "denoiser":
        return {"prediction": np.asarray(runner.denoise(inputs))}
    return {"decoded": np.asarray(runner.decode(inputs))}


def graph_level(runner: Any, vectors: dict[str, dict[str, np.ndarray]], gate: Gate,
                overrides: dict[str, dict[str, float]] | None = None,
                call_gates: dict[tuple[str, str], Gate] | None = None,
                total_gates: dict[tuple[str, str], Gate] | None = None) -> list[CheckResult]:
    """Each graph output over all recorded calls (``gate``, or its ``total_gates`` entry: the
    floor-calibrated fp32 gate), and its worst single call (the calibrated per-call gate, see
    ``gates.call_gates`` and ``gates.gate_set``); ``overrides`` maps ``graph/output`` to gate fields. Every graph with recorded calls is checked (the decoder where there is one)."""
    from dataclasses import replace
    results = []
    for graph in GRAPH_ORDER:
        if f"{graph}_io" not in vectors:
            continue
        calls = graph_calls(vectors[f"{graph}_io"])
        got: dict[str, list[np.ndarray]] = {}
        want: dict[str, list[np.ndarray]] = {}
        for inputs, outputs in calls:
            actual = run_graph(runner, graph, inputs)
            for name, ref in outputs.items():
                got.setdefault(name, []).append(actual[name])
                want.setdefault(name, []).append(ref)
        for name in want:
            per_call = [compare(a, r) for a, r in zip(got[name], want[name])]
            worst = int(np.nanargmax([m.rel_l2 if not m.non_finite else np.inf for m in per_call]))
            total = compare(np.concatenate([g.ravel() for g in got[name]]), np.concatenate([w.ravel() for w in want[name]]))
            extra = (overrides or {}).get(f"{graph}/{name}", {})
            g = replace((total_gates or {}).get((graph, name), gate), **extra)
            per_call_gate = replace((call_gates or {}).get((graph, name), gate), **extra)
            reasons = g.check(total) or per_call_gate.check(per_call[worst])
            results.append(CheckResult("graph", graph, name, total, reasons,
                                       {"calls": len(calls), "worst_call": worst,
                                        "worst_call_rel_l2": per_call[worst].rel_l2,
                                        "gate_rel_l2": g.rel_l2, "call_gate_rel_l2": per_call_gate.rel_l2}))
    return results
