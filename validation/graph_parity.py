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
                total_gates: dict[tuple[str, str], Gate] | None = None,
                plan: Any = None, spec: Any = None) -> list[CheckResult]:
    """Each graph output over all recorded calls (``gate``, or its ``total_gates`` entry: the
    floor-calibrated fp32 gate), and its worst single call (the calibrated per-call gate, see
    ``gates.call_gates`` and ``gates.gate_set``); ``overrides`` maps ``graph/output`` to gate fields.
    With ``plan`` (a ``gates.PlanGates``) and the ``spec``, each graph is judged by its own
    precision's gates and every call by the gate of its step (int8: by step band), the step found
    from the call's recorded time input. Every call also passes the tripwire (``tripwire``).
    Every graph with recorded calls is checked (the decoder where there is one)."""
    from dataclasses import replace

    from .tripwire import tripwire
    results = []
    for graph in GRAPH_ORDER:
        if f"{graph}_io" not in vectors:
            continue
        calls = graph_calls(vectors[f"{graph}_io"])
        got: dict[str, list[np.ndarray]] = {}
        want: dict[str, list[np.ndarray]] = {}
        steps: list[int | None] = []
        for inputs, outputs in calls:
            actual = run_graph(runner, graph, inputs)
            steps.append(recorded_step(spec, graph, inputs) if spec is not None else None)
            for name, ref in outputs.items():
                got.setdefault(name, []).append(actual[name])
                want.setdefault(name, []).append(ref)
        num_steps = spec.sampler.num_steps if spec is not None else None
        for name in want:
            per_call = [compare(a, r) for a, r in zip(got[name], want[name])]
            worst = int(np.nanargmax([m.rel_l2 if not m.non_finite else np.inf for m in per_call]))
            total = compare(np.concatenate([g.ravel() for g in got[name]]), np.concatenate([w.ravel() for w in want[name]]))
            extra = (overrides or {}).get(f"{graph}/{name}", {})
            if plan is not None:
                g = plan.total(graph, name)
                gates = [plan.call(graph, name, s, num_steps) for s in steps]
            else:
                g = replace((total_gates or {}).get((graph, name), gate), **extra)
                gates = [replace((call_gates or {}).get((graph, name), gate), **extra)] * len(per_call)
            # every call against the gate of its own step: with int8 band gates the worst call may
            # pass its band while a smaller error fails a stricter one
            failing = next((k for k, m in enumerate(per_call) if gates[k].check(m)), None)
            judged = worst if failing is None else failing
            reasons = g.check(total)
            if not reasons:
                at = f" (call {judged}" + (f", step {steps[judged]}" if steps[judged] is not None else "") + ")"
                reasons = [w + at for w in gates[judged].check(per_call[judged])]
            tripped = next(((k, why) for k, (a, r) in enumerate(zip(got[name], want[name])) if (why := tripwire(a, r))),
                           None)
            if tripped is not None:
                reasons = reasons + [f"{w} (call {tripped[0]})" for w in tripped[1]]
            detail = {"calls": len(calls), "worst_call": worst, "worst_call_rel_l2": per_call[worst].rel_l2,
                      "gate_rel_l2": g.rel_l2, "call_gate_rel_l2": gates[judged].rel_l2}
            if steps[worst] is not None:
                detail["worst_call_step"] = steps[worst]
            if failing is not None:
                detail["failing_call"] = failing
            results.append(CheckResult("graph", graph, name, total, reasons, detail))
    return results


def recorded_step(spec: Any, graph: str, inputs: dict[str, np.ndarray]) -> int | None:
    """The sampler step of a recorded call: the step whose time the call's time input holds
    (None for a graph without one, such as the decoder, or a time no step has)."""
    from dualrate.exporter.spec import ROLE_TIME
    from dualrate.exporter.sampling import time_values

    gio = spec.model.graphs().get(graph)
    name = next((t.name for t in (gio.inputs if gio else ()) if t.feeds == ROLE_TIME), None)
    if name is None or name not in inputs or np.size(inputs[name]) == 0:
        return None
    times = time_values(spec)
    given = np.asarray(inputs[name])
    value = float(given.ravel()[0])
    step = int(np.argmin(np.abs(times - value)))
    # float time inputs hold the table's value (cast to float32); integer ones its rounding
    tol = 0.5 if given.dtype.kind in "iu" else 1e-5 * max(1.0, float(np.max(np.abs(times))))
    return step if abs(times[step] - value) <= tol else None
