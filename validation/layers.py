"""The numeric parity layers after the graph level (``graph_parity``).

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

from typing import Any

import numpy as np

from dualrate.exporter.conditioning import COND, UNCOND, group_conditioning
from dualrate.exporter.golden import teacher_key, trajectory_conditioning
from dualrate.exporter.runner import graph_feeds, role_values
from dualrate.exporter.sampling import ArrayNoise, call_plan, sample, tile_rows, time_values
from dualrate.exporter.spec import Spec
from dualrate.exporter.spec_builder import every_step

from .gates import Gate
from .graph_parity import CheckResult, run_graph
from .metrics import compare
from .tripwire import tripwire


def _worst(results: list[tuple[int, Any]]) -> tuple[int, Any]:
    return max(results, key=lambda r: np.inf if r[1].non_finite else r[1].rel_l2)


def teacher_forced(runner: Any, spec: Spec, traj: dict[str, np.ndarray], gate: Gate,
                   call_gates: dict[tuple[str, str], Gate] | None = None,
                   nulls: dict[str, np.ndarray] | None = None, plan: Any = None) -> list[CheckResult]:
    """Per step: reference z_i and reference features in, backend features/prediction out;
    each step is held to the (calibrated) per-call gate of its output (with ``plan``, a
    ``gates.PlanGates``: its graph's precision's gate for that step, by step band for int8) and
    passes the tripwire."""
    m = spec.model
    cond = trajectory_conditioning(traj)
    feature_names = [o.name for o in m.encoder.outputs]
    times = time_values(spec)
    per_output: dict[tuple[str, str], list[tuple[int, Any]]] = {}
    trips: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for i, calls in enumerate(call_plan(spec)):
        z = traj["noise"][0] if i == 0 else traj["z"][i - 1]                       # reference state [B, C, H, W]
        for call in calls:
            z_in = tile_rows(z, len(call.branches))
            rows = len(z_in)
            rows_cond = group_conditioning(spec, cond, nulls, call.branches)
            t_i, t_ctx = np.full(rows, times[i]), np.full(rows, times[call.ctx_step])
            if call.refresh:
                got = run_graph(runner, "encoder", graph_feeds(m.encoder, role_values(z_in, t_i, None, rows_cond)))
                for name in feature_names:
                    ref = traj[teacher_key("encoder", i, call.branches, name)]
                    per_output.setdefault(("encoder", name), []).append((i, compare(got[name], ref)))
                    trips.setdefault(("encoder", name), []).extend((i, w) for w in tripwire(got[name], ref))
            feats = {name: traj[teacher_key("encoder", call.ctx_step, call.branches, name)] for name in feature_names}
            feeds = graph_feeds(m.denoiser, role_values(z_in, t_i, t_ctx, rows_cond, feats))
            got = run_graph(runner, "denoiser", feeds)["prediction"]
            ref = traj[teacher_key("denoiser", i, call.branches, "prediction")]
            per_output.setdefault(("denoiser", "prediction"), []).append((i, compare(got, ref)))
            trips.setdefault(("denoiser", "prediction"), []).extend((i, w) for w in tripwire(got, ref))
    results = []
    n = spec.sampler.num_steps
    for (graph, name), steps in per_output.items():
        if plan is not None:
            gates = {i: plan.call(graph, name, i, n) for i, _ in steps}
        else:
            gates = {i: (call_gates or {}).get((graph, name), gate) for i, _ in steps}
        failing = [(i, m) for i, m in steps if gates[i].check(m)]
        worst_step, worst = _worst(steps)
        first = failing[0] if failing else None
        reasons = gates[first[0]].check(first[1]) if first else []
        tripped = trips.get((graph, name)) or []
        if tripped:
            reasons = reasons + [f"{w} (step {tripped[0][0]})" for i, w in tripped if i == tripped[0][0]]
        step = first[0] if first else (tripped[0][0] if tripped else None)
        results.append(CheckResult(
            "teacher_forced", graph, name, worst, reasons,
            {"step": step, "worst_step": worst_step, "gate_rel_l2": gates[step if step is not None else worst_step].rel_l2,
             "steps": [i for i, _ in steps],
             "per_step_rel_l2": [m.rel_l2 for _, m in steps],
             "per_step_one_minus_cos": [1.0 - m.cosine for _, m in steps],
             "per_step_gate_rel_l2": [gates[i].rel_l2 for i, _ in steps]}))
    return results


def _replay(runner: Any, spec: Spec, traj: dict[str, np.ndarray], nulls: dict[str, np.ndarray] | None):
    """The backend sampling ``spec`` with a recorded trajectory's conditioning and noise."""
    noise = ArrayNoise(traj["noise"][0], traj["noise"][1:])
    return sample(runner, spec, trajectory_conditioning(traj), noise, nulls=nulls, record=True)


def free_running(runner: Any, spec: Spec, trajectories: dict[str, dict[str, np.ndarray]], gate: Gate,
                 backend_spec: Spec | None = None, nulls: dict[str, np.ndarray] | None = None,
                 decoded_gate: Gate | None = None
                 ) -> tuple[list[CheckResult], dict[str, Any], dict[str, np.ndarray]]:
    """Backend sampling with the reference noise; returns checks, the drift curve and final arrays.
    With a decoder, the decoded outputs are compared too (``decoded_gate``, else ``gate``)."""
    results, drift, shown = [], None, {}
    run_spec = backend_spec or spec
    for name, traj in sorted(trajectories.items()):
        res = _replay(runner, run_spec, traj, nulls)
        per_step = [compare(z, ref) for z, ref in zip(res.trajectory, traj["z"])]
        final = compare(res.x, traj["final"])
        first_bad = next((i for i, m in enumerate(per_step) if gate.check(m)), None)
        results.append(CheckResult("free_running", "sampler", f"final[{name}]", final,
                                   gate.check(final, final_sample=True)
                                   + tripwire(res.x, traj["final"], spec.model.data_range),
                                   {"step": first_bad, "seed": int(traj["seed"]), "trajectory": name,
                                    "gate_rel_l2": gate.rel_l2, "refresh_log": res.refresh_log}))
        if res.decoded is not None and "decoded" in traj:
            decoded = compare(res.decoded, traj["decoded"])
            dgate = decoded_gate or gate
            results.append(CheckResult("free_running", "decoder", f"decoded[{name}]", decoded,
                                       dgate.check(decoded, final_sample=True)
                                       + tripwire(res.decoded, traj["decoded"], spec.model.decoder.data_range),
                                       {"seed": int(traj["seed"]), "trajectory": name, "gate_rel_l2": dgate.rel_l2}))
        if drift is None:
            drift = {"trajectory": name, "steps": list(range(len(per_step))),
                     "rel_l2": [m.rel_l2 for m in per_step],
                     "refresh_steps": list(spec.dual_rate.resolved_refresh_steps)}
        # the report shows the whole golden batch: every trajectory's samples, labelled by seed
        shown.setdefault("reference_final", []).append(traj["final"])
        shown.setdefault("backend_final", []).append(res.x)
        shown.setdefault("sample_labels", []).append(
            np.array([f"seed {int(traj['seed'])} #{k}" for k in range(len(res.x))]))
        if res.decoded is not None and "decoded" in traj:
            shown.setdefault("reference_decoded", []).append(traj["decoded"])
            shown.setdefault("backend_decoded", []).append(res.decoded)
    arrays = {k: np.concatenate(v) for k, v in shown.items()
              if len(v) == len(shown.get("reference_final", []))}        # decoded only where every trajectory has it
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
        if "refresh_log" not in r.detail:
            continue                       # decoded-output checks carry no refresh log
        got = r.detail["refresh_log"]
        for br in (COND, UNCOND):
            ok = got[br] == want[br]
            diff = sorted(set(got[br]) ^ set(want[br]))
            results.append(CheckResult("refresh_audit", "sampler", f"{br}[{r.detail['trajectory']}]", None,
                                       [] if ok else [f"encoder ran at {got[br]}; the spec says {want[br]}"],
                                       {"step": diff[0] if diff else None, "expected": want[br], "actual": got[br]}))
    return results


def cache_equivalence(runner: Any, spec: Spec, traj: dict[str, np.ndarray], gate: Gate,
                      backend_spec: Spec | None = None, nulls: dict[str, np.ndarray] | None = None
                      ) -> list[CheckResult]:
    """Refresh at every step on the backend == the heavy single-rate reference trajectory."""
    res = _replay(runner, every_step(backend_spec or spec), traj, nulls)
    per_step = [compare(z, ref) for z, ref in zip(res.trajectory, traj["z"])]
    first_bad = next((i for i, m in enumerate(per_step) if gate.check(m)), None)
    final = compare(res.x, traj["final"])
    return [CheckResult("cache_equivalence", "sampler", "final[every_step]", final,
                        gate.check(final, final_sample=True) + tripwire(res.x, traj["final"], spec.model.data_range),
                        {"step": first_bad, "gate_rel_l2": gate.rel_l2,
                         "per_step_rel_l2": [m.rel_l2 for m in per_step]})]

