"""Final fidelity against the fp32 reference, and which reduced graph costs it (swap runs).

The free-running layer already gates the run's final samples (PSNR >= the sampler precision's
``psnr_db``: 30 dB for int8). This module summarises that fidelity for the report and, for a plan
that reduces more than one graph, replays the same trajectories with *one* reduced graph at a time
(its precision from the plan, every other graph fp32): e.g. for ``int8`` the runs
``encoder=int8,denoiser=fp32`` and ``encoder=fp32,denoiser=int8``. Each is compiled and opened
through the target's public ``compile`` / ``open_runner`` (cached in the bundle like any plan). A
plan that reduces a single graph is its own attribution, so it needs no extra run.

The swap runs are a diagnosis, not a verdict: they never change PASSED/FAILED (a swap that cannot
run here is listed with its reason). Degenerate swap outputs are named (``tripwire``) all the same.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dualrate.exporter.errors import DualrateError
from dualrate.exporter.golden import trajectory_conditioning
from dualrate.exporter.sampling import ArrayNoise, sample

from .metrics import compare
from .tripwire import tripwire

FP32 = "fp32"


def _summary(finals: list[Any], decoded: list[Any]) -> dict[str, Any]:
    """Worst over the trajectories: PSNR (lowest), rel-L2 (highest), cosine (lowest)."""
    def worst(ms: list[Any]) -> dict[str, Any]:
        if any(m.non_finite for m in ms):
            return {"psnr_db": None, "rel_l2": None, "cosine": None, "non_finite": sum(m.non_finite for m in ms)}
        return {"psnr_db": min(m.psnr_db for m in ms), "rel_l2": max(m.rel_l2 for m in ms),
                "cosine": min(m.cosine for m in ms), "non_finite": 0}
    out = {"final": worst(finals)}
    if decoded:
        out["decoded"] = worst(decoded)
    return out


def _replay_all(runner: Any, spec: Any, trajectories: dict[str, dict[str, np.ndarray]],
                nulls: dict[str, np.ndarray] | None) -> tuple[dict[str, Any], list[str]]:
    """Every trajectory's noise and conditioning on ``runner``: the worst final metrics and tripwires."""
    finals, decoded, trips = [], [], []
    for name, traj in sorted(trajectories.items()):
        noise = ArrayNoise(traj["noise"][0], traj["noise"][1:])
        res = sample(runner, spec, trajectory_conditioning(traj), noise, nulls=nulls)
        finals.append(compare(res.x, traj["final"]))
        trips += [f"{name}: {w}" for w in tripwire(res.x, traj["final"], spec.model.data_range)]
        if res.decoded is not None and "decoded" in traj:
            decoded.append(compare(res.decoded, traj["decoded"]))
    return _summary(finals, decoded), trips


def only(graph_precisions: dict[str, str], graph: str) -> dict[str, str]:
    """The plan with ``graph`` at its precision and every other graph fp32."""
    return {g: (p if g == graph else FP32) for g, p in graph_precisions.items()}


def plan_text(plan: dict[str, str]) -> str:
    return ",".join(f"{g}={p}" for g, p in plan.items())


def fidelity(bundle: Any, target: Any, compiled: Any, free_running_checks: list[Any],
             trajectories: dict[str, dict[str, np.ndarray]], opts: Any,
             nulls: dict[str, np.ndarray] | None) -> dict[str, Any]:
    """``doc["fidelity"]``: the run's final fidelity vs the fp32 reference (worst trajectory) and,
    per reduced graph, that of the plan reducing only it (``runs``)."""
    finals = [c.metrics for c in free_running_checks if c.graph == "sampler" and c.metrics is not None]
    decoded = [c.metrics for c in free_running_checks if c.graph == "decoder" and c.metrics is not None]
    requested = target.plan(bundle, opts.precision).as_dict() if hasattr(target, "plan") else {}
    given = dict(getattr(compiled, "graph_precisions", None) or {})
    effective = {g: given[g] for g in bundle.graph_names() if g in given}          # the bundle's graph order
    reduced = [g for g, p in effective.items() if p != FP32]
    doc: dict[str, Any] = {"reference": "fp32 reference", "graph_precisions": effective,
                           "reduced_graphs": reduced, **(_summary(finals, decoded) if finals else {}), "runs": []}
    if len(reduced) < 2:
        if reduced:       # the run itself reduces just this graph: it is its own attribution
            doc["runs"].append({"reduced": reduced[0], "plan": plan_text(effective), "status": "this run",
                                **{k: doc[k] for k in ("final", "decoded") if k in doc}})
        return doc
    if not getattr(opts, "swap_runs", True):
        doc["runs"] = [{"reduced": g, "plan": plan_text(only(requested or effective, g)), "status": "not_run",
                        "reason": "swap runs were switched off"} for g in reduced]
        return doc
    spec = opts.backend_spec or bundle.spec
    for graph in reduced:
        plan = only(requested or effective, graph)
        row: dict[str, Any] = {"reduced": graph, "plan": plan_text(plan)}
        try:
            extra = {"model": opts.model} if opts.model is not None and target.converts_from_model else {}
            swapped = target.compile(bundle, plan, **extra)
            runner = target.open_runner(bundle, swapped, threads=opts.threads)
            summary, trips = _replay_all(runner, spec, trajectories, nulls)
        except DualrateError as exc:              # a swap is a diagnosis: one that cannot run says why
            row.update(status="not_run", reason=str(exc).splitlines()[0])
        else:
            row.update(status="measured", graph_precisions=dict(getattr(swapped, "graph_precisions", {}) or {}),
                       **summary)
            if trips:
                row["tripwire"] = trips
        doc["runs"].append(row)
    return doc


__all__ = ["fidelity", "only", "plan_text"]
