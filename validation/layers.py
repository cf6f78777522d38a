"""The numeric parity layers 2-5 (layer 1, graph level, is ``graph_parity``).

All layers compare a backend runner against *reference vectors*: the dict that
``exporter.golden.capture`` produces (loaded from the bundle's golden files, or
recomputed live from the PyTorch checkpoint), so both references share one path.

* teacher-forced steps: at every step the backend gets the reference state and
  the reference features; features are compared at refresh steps, the model
  output at every step — localizes a bad step or a bad refresh;
* free-running: full dual-rate sampling on the backend with the same injected
  noise; drift (rel-L2 of z per step) and final samples;
* refresh audit: the steps at which the encoder ran, per guidance branch;
* cache == no-cache: with a refresh at every step the loop equals the heavy
  single-rate reference.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from dualrate.exporter.golden import teacher_key
from dualrate.exporter.sampling import COND, UNCOND, ArrayNoise, call_plan, group_labels, sample
from dualrate.exporter.spec import Spec
from dualrate.exporter.spec_builder import every_step

from .gates import Gate
from .graph_parity import CheckResult, run_graph
from .metrics import compare


def _worst(results: list[tuple[int, Any]]) -> tuple[int, Any]:
    return max(results, key=lambda r: np.inf if r[1].non_finite else r[1].rel_l2)


def teacher_forced(runner: Any, spec: Spec, traj: dict[str, np.ndarray], feature_names: list[str],
                   gate: Gate, call_gates: dict[tuple[str, str], Gate] | None = None) -> list[CheckResult]:
    """Per step: reference z_i and reference features in, backend features/prediction out;
    each step is held to the (calibrated) per-call gate of its output."""
    labels = traj["class_id"]
    b = len(labels)
    lam = np.asarray(spec.sampler.tables.logsnr, np.float32)
    per_output: dict[tuple[str, str], list[tuple[int, Any]]] = {}
    for i, calls in enumerate(call_plan(spec)):
        z = traj["noise"][0] if i == 0 else traj["z"][i - 1]                       # reference state [B, C, H, W]
        for call in calls:
            cls = group_labels(labels, spec.model.null_class, call.branches)
            rows = len(cls)
            z_in = z if rows == b else np.concatenate([z] * (rows // b))
            lam_i = np.full(rows, lam[i], np.float32)
            if call.refresh:
                got = run_graph(runner, "encoder", {"z": z_in, "logsnr": lam_i, "class_id": cls}, feature_names)
                for name in feature_names:
                    ref = traj[teacher_key("encoder", i, call.branches, name)]
                    per_output.setdefault(("encoder", name), []).append((i, compare(got[name], ref)))
            feats = {name: traj[teacher_key("encoder", call.ctx_step, call.branches, name)] for name in feature_names}
            inputs = {"z": z_in, "logsnr": lam_i, "logsnr_ctx": np.full(rows, lam[call.ctx_step], np.float32),
                      "class_id": cls, **feats}
            got = run_graph(runner, "denoiser", inputs, feature_names)["prediction"]
            ref = traj[teacher_key("denoiser", i, call.branches, "prediction")]
            per_output.setdefault(("denoiser", "prediction"), []).append((i, compare(got, ref)))
    results = []
    for (graph, name), steps in per_output.items():
        step_gate = (call_gates or {}).get((graph, name), gate)
        failing = [(i, m) for i, m in steps if step_gate.check(m)]
        worst_step, worst = _worst(steps)
        first = failing[0] if failing else None
        results.append(CheckResult(
            "teacher_forced", graph, name, worst, step_gate.check(first[1]) if first else [],
            {"step": first[0] if first else None, "worst_step": worst_step, "steps": [i for i, _ in steps],
             "per_step_rel_l2": [m.rel_l2 for _, m in steps]}))
    return results


def free_running(runner: Any, spec: Spec, trajectories: dict[str, dict[str, np.ndarray]], gate: Gate,
                 backend_spec: Spec | None = None) -> tuple[list[CheckResult], dict[str, Any], dict[str, np.ndarray]]:
    """Backend sampling with the reference noise; returns checks, the drift curve and final arrays."""
    results, drift, arrays = [], None, {}
    run_spec = backend_spec or spec
    for name, traj in sorted(trajectories.items()):
        noise = ArrayNoise(traj["noise"][0], traj["noise"][1:])
        res = sample(runner, run_spec, traj["class_id"], noise, record=True)
        per_step = [compare(z, ref) for z, ref in zip(res.trajectory, traj["z"])]
        final = compare(res.x, traj["final"])
        first_bad = next((i for i, m in enumerate(per_step) if gate.check(m)), None)
        results.append(CheckResult("free_running", "sampler", f"final[{name}]", final,
                                   gate.check(final, final_sample=True),
                                   {"step": first_bad, "seed": int(traj["seed"]), "trajectory": name,
                                    "refresh_log": res.refresh_log}))
        if drift is None:
            drift = {"trajectory": name, "steps": list(range(len(per_step))),
                     "rel_l2": [m.rel_l2 for m in per_step],
                     "refresh_steps": list(spec.dual_rate.resolved_refresh_steps)}
            arrays = {"reference_final": traj["final"], "backend_final": res.x}
    return results, drift, arrays


def refresh_audit(spec: Spec, free_running_results: list[CheckResult]) -> list[CheckResult]:
    """The encoder ran exactly at the steps the spec's plan says, per guidance branch."""
    want = {COND: [], UNCOND: []}
    for i, calls in enumerate(call_plan(spec)):
        for call in calls:
            if call.refresh:
                for br in call.branches:
                    want[br].append(i)
    results = []
    for r in free_running_results:
        got = r.detail["refresh_log"]
        for br in (COND, UNCOND):
            ok = got[br] == want[br]
            diff = sorted(set(got[br]) ^ set(want[br]))
            results.append(CheckResult("refresh_audit", "sampler", f"{br}[{r.detail['trajectory']}]", None,
                                       [] if ok else [f"encoder ran at {got[br]}; the spec says {want[br]}"],
                                       {"step": diff[0] if diff else None, "expected": want[br], "actual": got[br]}))
    return results


def cache_equivalence(runner: Any, spec: Spec, traj: dict[str, np.ndarray], gate: Gate,
                      backend_spec: Spec | None = None) -> list[CheckResult]:
    """Refresh at every step on the backend == the heavy single-rate reference trajectory."""
    run_spec = every_step(backend_spec or spec)
    res = sample(runner, run_spec, traj["class_id"], ArrayNoise(traj["noise"][0], traj["noise"][1:]), record=True)
    per_step = [compare(z, ref) for z, ref in zip(res.trajectory, traj["z"])]
    first_bad = next((i for i, m in enumerate(per_step) if gate.check(m)), None)
    final = compare(res.x, traj["final"])
    return [CheckResult("cache_equivalence", "sampler", "final[every_step]", final,
                        gate.check(final, final_sample=True),
                        {"step": first_bad, "per_step_rel_l2": [m.rel_l2 for m in per_step]})]


Layer = Callable[..., list[CheckResult]]
