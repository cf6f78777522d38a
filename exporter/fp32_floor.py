"""The reference's own fp32 error: the PyTorch model in float32 against the same model in float64.

Measured at export on the inputs the golden vectors recorded, this is the error floor of fp32
arithmetic *for this model*: an honest fp32 backend (another summation order, other kernels)
lands within a small multiple of it, while a silently wrong export (one weight tensor off by
1e-3) lands far above it. ``validation.gates.floor_gates`` turns it into the default fp32 gates.

It costs a float64 PyTorch pass (no fast CPU kernels: for small-32 more than the three float32
reference trajectories of the export), so it is computed when first needed, once per bundle, and
stored by ``precision_calibration`` as ``calibration/fp32.npz`` (kind ``fp32``; outside the hashed
payload, verified against its record). Bundles exported between issue 12 and that change hold it
in the hashed ``golden/fp32_floor.npz``, which is still read. Float64 scalars keyed
``<graph>/<output>/<metric>``:

* per graph output, over the recorded calls of ``<graph>_io``: ``rel_l2`` (all calls together,
  what the graph layer's total check measures), ``call_rel_l2`` (the worst single call) and
  ``one_minus_cos`` (the worst call);
* ``sampler/final/{rel_l2,one_minus_cos,psnr_db}``: the free-running final samples of the first
  golden trajectory, replayed with the networks in float64 (same noise, same conditioning);
  ``sampler/drift/rel_l2``: the largest per-step state difference of that replay;
* ``decoder/decoded_final/...``: the decoded final samples, where the model has a decoder.

A bundle without it (none computed yet, and no model here to compute it) keeps the default gates.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from .golden import graph_calls, trajectory_conditioning

FLOOR_NAME = "fp32_floor"
FORMAT = 1


def _rel(a: np.ndarray, r: np.ndarray) -> float:
    a, r = np.asarray(a, np.float64).ravel(), np.asarray(r, np.float64).ravel()
    nr = float(np.linalg.norm(r))
    nd = float(np.linalg.norm(a - r))
    return nd / nr if nr > 0 else (0.0 if nd == 0 else math.inf)


def _one_minus_cos(a: np.ndarray, r: np.ndarray) -> float:
    a, r = np.asarray(a, np.float64).ravel(), np.asarray(r, np.float64).ravel()
    na, nr = float(np.linalg.norm(a)), float(np.linalg.norm(r))
    if na == 0 and nr == 0:
        return 0.0
    return max(0.0, 1.0 - float(a @ r) / max(na * nr, 1e-300))


def _psnr(a: np.ndarray, r: np.ndarray) -> float:
    a, r = np.asarray(a, np.float64), np.asarray(r, np.float64)
    mse = float(np.mean((a - r) ** 2))
    peak = float(np.abs(r).max()) if r.size else 0.0
    return math.inf if mse == 0 else (10 * math.log10(peak ** 2 / mse) if peak > 0 else -math.inf)


def needed_vectors(bundle: Any) -> dict[str, dict[str, np.ndarray]]:
    """The golden vectors ``measure`` reads: every ``<graph>_io`` and the first trajectory."""
    names = bundle.golden_names()
    trajs = sorted(n for n in names if n.startswith("trajectory_seed"))
    return {n: bundle.golden(n) for n in names if n.endswith("_io") or n in trajs[:1]}


def check_values(spec: Any, values: dict[str, np.ndarray]) -> str | None:
    """What is wrong with stored floor ``values`` for ``spec`` (None when they are well formed):
    known keys only, finite non-negative scalars (a PSNR may be +inf)."""
    graphs = spec.model.graphs()
    known = {f"{g}/{o.name}/{m}" for g, gio in graphs.items() for o in gio.outputs
             for m in ("rel_l2", "call_rel_l2", "one_minus_cos")}
    known |= {f"{head}/{m}" for head in ("sampler/final", "decoder/decoded_final")
              for m in ("rel_l2", "one_minus_cos", "psnr_db")} | {"sampler/drift/rel_l2"}
    for key, val in values.items():
        if key in ("format", "trajectory"):
            continue
        arr = np.asarray(val)
        ok = key in known and arr.shape == () and arr.dtype.kind == "f" and not np.isnan(arr) and (
            arr >= 0 and (np.isfinite(arr) or key.endswith("psnr_db")))
        if not ok:
            return f"entry {key!r} is not a non-negative scalar error of one of the bundle's checks"
    return None


def measure(model: Any, spec: Any, vectors: dict[str, dict[str, np.ndarray]],
            nulls: dict[str, np.ndarray] | None = None, on_call: Callable[[], None] = lambda: None
            ) -> dict[str, np.ndarray]:
    """The fp32 floor of ``model`` on the recorded ``vectors`` (what ``golden.capture`` made with
    the float32 reference): one float64 pass over each graph's recorded calls and one float64
    replay of the first golden trajectory. ``on_call`` is called per recorded call and per replayed
    step (progress)."""
    import torch

    from .sampling import ArrayNoise, sample
    from .torch_runner import TorchReferenceRunner

    runner = TorchReferenceRunner(model, spec, dtype=torch.float64)
    out: dict[str, np.ndarray] = {"format": np.array(FORMAT, np.int64)}

    def t64(x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.to(torch.float64) if t.is_floating_point() else t

    for graph, bound in runner.bound.items():
        if f"{graph}_io" not in vectors:
            continue
        names = [o.name for o in runner.graphs[graph].outputs]
        got: dict[str, list[np.ndarray]] = {}
        want: dict[str, list[np.ndarray]] = {}
        for inputs, outputs in graph_calls(vectors[f"{graph}_io"]):
            with torch.inference_mode():
                res = dict(zip(names, bound(*(t64(inputs[name]) for name, _ in bound.inputs))))
            for name, ref in outputs.items():
                got.setdefault(name, []).append(res[name].double().numpy())
                want.setdefault(name, []).append(ref)
            on_call()
        for name in want:
            # here the float64 output is the truth and the recorded float32 output the approximation
            calls = [(_rel(r, a), _one_minus_cos(r, a)) for a, r in zip(got[name], want[name])]
            total = _rel(np.concatenate([w.ravel() for w in want[name]]), np.concatenate([g.ravel() for g in got[name]]))
            out[f"{graph}/{name}/rel_l2"] = np.array(total, np.float64)
            out[f"{graph}/{name}/call_rel_l2"] = np.array(max(c[0] for c in calls), np.float64)
            out[f"{graph}/{name}/one_minus_cos"] = np.array(max(c[1] for c in calls), np.float64)

    trajs = sorted(k for k in vectors if k.startswith("trajectory_seed"))
    if trajs:
        traj = vectors[trajs[0]]
        noise = ArrayNoise(traj["noise"][0], traj["noise"][1:])
        res = sample(runner, spec, trajectory_conditioning(traj), noise, nulls=nulls, record=True,
                     on_step=lambda _: on_call())
        out["sampler/final/rel_l2"] = np.array(_rel(traj["final"], res.x), np.float64)
        out["sampler/final/one_minus_cos"] = np.array(_one_minus_cos(traj["final"], res.x), np.float64)
        out["sampler/final/psnr_db"] = np.array(_psnr(traj["final"], res.x), np.float64)
        out["sampler/drift/rel_l2"] = np.array(max((_rel(z, r) for z, r in zip(traj["z"], res.trajectory)),
                                                   default=0.0), np.float64)
        if res.decoded is not None and "decoded" in traj:
            out["decoder/decoded_final/rel_l2"] = np.array(_rel(traj["decoded"], res.decoded), np.float64)
            out["decoder/decoded_final/one_minus_cos"] = np.array(_one_minus_cos(traj["decoded"], res.decoded),
                                                                  np.float64)
            out["decoder/decoded_final/psnr_db"] = np.array(_psnr(traj["decoded"], res.decoded), np.float64)
        out["trajectory"] = np.array(trajs[0])
    return out
