"""Reference vectors made at export time: per-graph inputs/outputs and per-step trajectories.

``RecordingRunner`` wraps the PyTorch reference and keeps every call's inputs and
outputs; the capture picks graph inputs from real trajectories (uniform random
inputs hide real failures) and stores them as npz (no pickle).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .sampling import call_plan, sample, spec_noise
from .spec import Spec
from .spec_builder import every_step


class RecordingRunner:
    """Pass-through runner that records every graph call's inputs and outputs as numpy, by name."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.calls: dict[str, list[dict[str, np.ndarray]]] = {"encoder": [], "denoiser": [], "decoder": []}

    def _host(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        return {k: v.copy() if isinstance(v, np.ndarray) else self.inner.to_numpy(v) for k, v in feeds.items()}

    def encode(self, feeds):
        feats = self.inner.encode(feeds)
        self.calls["encoder"].append({**self._host(feeds), **{f"out.{k}": v for k, v in
                                                              self.inner.features_to_numpy(feats).items()}})
        return feats

    def denoise(self, feeds):
        out = self.inner.denoise(feeds)
        self.calls["denoiser"].append({**self._host(feeds), "out.prediction": out.copy()})
        return out

    def decode(self, feeds):
        out = self.inner.decode(feeds)
        self.calls["decoder"].append({**self._host(feeds), "out.decoded": out.copy()})
        return out

    def features_to_numpy(self, features: Any) -> dict[str, np.ndarray]:
        return self.inner.features_to_numpy(features)


def example_conditioning(spec: Spec, seed: int, batch: int, nulls: dict[str, np.ndarray] | None = None,
                         given: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Conditioning of the golden trajectory for ``seed``: the caller's examples (``given``, rows
    cycled to ``batch``) where there are any; else consecutive class ids (different per seed),
    standard-normal floats (seeded), ones for other integer inputs (masks)."""
    from .conditioning import check_rows, np_dtype

    rng = np.random.default_rng(seed)
    given = check_rows(spec, given) if given else None     # names, shapes, dtypes, class ranges; rows cycled below
    out = {}
    for c in spec.model.conditioning:
        if given and c.name in given:
            rows = given[c.name]
            out[c.name] = rows[(np.arange(batch) + seed * batch) % len(rows)]
        elif c.num_classes is not None:
            out[c.name] = ((np.arange(batch) + seed * batch) % c.num_classes).astype(np_dtype(c.dtype))
        elif np_dtype(c.dtype) in (np.float32, np.float16, np.float64):
            out[c.name] = rng.standard_normal((batch, *c.shape)).astype(np_dtype(c.dtype))
        else:
            out[c.name] = np.ones((batch, *c.shape), np_dtype(c.dtype))
    return out


def capture(runner: Any, spec: Spec, seeds: tuple[int, ...], batch: int,
            nulls: dict[str, np.ndarray] | None = None, conditioning: dict[int, dict[str, np.ndarray]] | None = None,
            examples: dict[str, np.ndarray] | None = None, max_graph_calls: int = 8,
            on_step: Callable[[int], None] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Reference vectors: a trajectory per seed (the first with every graph call's output for
    teacher forcing), the single-rate (refresh every step) trajectory of the first seed, and
    graph I/O sampled from the first seed's calls. ``conditioning`` (by seed) replays recorded
    conditioning; otherwise ``example_conditioning`` makes it. ``on_step`` is called after every
    sampler step of every trajectory (``(len(seeds) + 1) * num_steps`` calls: progress).
    (The reduced-precision gate calibration is not made here: ``precision_calibration``.)"""
    out: dict[str, dict[str, np.ndarray]] = {}
    conds = {seed: (conditioning or {}).get(seed) or example_conditioning(spec, seed, batch, nulls, examples)
             for seed in seeds}
    for k, seed in enumerate(seeds):
        rec = RecordingRunner(runner) if k == 0 else runner      # only the first seed's calls are kept
        traj = _trajectory(rec, spec, seed, batch, conds[seed], nulls, on_step)
        if k == 0:
            traj.update(_teacher(spec, rec))
            for graph, calls in rec.calls.items():
                if not calls:
                    continue
                picks = np.unique(np.linspace(0, len(calls) - 1, min(max_graph_calls, len(calls))).round().astype(int))
                out[f"{graph}_io"] = {f"call{i}.{key}": val for i, c in enumerate(calls[j] for j in picks)
                                      for key, val in c.items()}
        out[f"trajectory_seed{seed}"] = traj
    out[f"every_step_seed{seeds[0]}"] = _trajectory(runner, every_step(spec), seeds[0], batch, conds[seeds[0]], nulls,
                                                    on_step)
    return out


def _trajectory(runner: Any, spec: Spec, seed: int, batch: int, cond: dict[str, np.ndarray],
                nulls: dict[str, np.ndarray] | None, on_step: Callable[[int], None] | None = None
                ) -> dict[str, np.ndarray]:
    noise = spec_noise(spec, batch, seed)
    res = sample(runner, spec, cond, noise, nulls=nulls, record=True, on_step=on_step)
    shape = tuple(spec.model.sample_shape)
    out = {"seed": np.array(seed, np.uint64), **{f"cond.{k}": v for k, v in cond.items()},
           "noise": np.stack([noise.draw(i, shape) for i in range(spec.sampler.num_steps + 1)]),  # [N+1, B, C, H, W]
           "z": np.stack(res.trajectory), "x0": np.stack(res.x0_estimates), "final": res.x,
           "refresh_cond": np.array(res.refresh_log["cond"], np.int64),
           "refresh_uncond": np.array(res.refresh_log["uncond"], np.int64)}
    if res.decoded is not None:
        out["decoded"] = res.decoded
    return out


def trajectory_conditioning(traj: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The conditioning a recorded trajectory was sampled with (``cond.<name>`` entries)."""
    return {k[len("cond."):]: v for k, v in traj.items() if k.startswith("cond.")}


def teacher_key(kind: str, step: int, branches: tuple[str, ...], output: str) -> str:
    """Key of one recorded graph output in a trajectory file (teacher forcing)."""
    return f"teacher.{kind}.s{step}.{'+'.join(branches)}.{output}"


def _teacher(spec: Spec, rec: RecordingRunner) -> dict[str, np.ndarray]:
    """Every encoder/denoiser output of the run, keyed by step and branch group (walks the call plan)."""
    enc, den = iter(rec.calls["encoder"]), iter(rec.calls["denoiser"])
    out = {}
    for i, calls in enumerate(call_plan(spec)):
        for call in calls:
            if call.refresh:
                for key, val in next(enc).items():
                    if key.startswith("out."):
                        out[teacher_key("encoder", i, call.branches, key[4:])] = val
            out[teacher_key("denoiser", i, call.branches, "prediction")] = next(den)["out.prediction"]
    return out


def write_golden(root: Path, vectors: dict[str, dict[str, np.ndarray]]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, arrays in vectors.items():
        write_npz(root / f"{name}.npz", arrays)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An ``.npz`` that ``np.load(allow_pickle=False)`` reads, with reproducible bytes.

    ``np.savez`` stamps each member with the current time; fixed timestamps and
    sorted members make the same vectors give the same file.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            arr = np.asarray(arrays[name])      # (np.ascontiguousarray would turn a 0-d scalar into 1-d)
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, arr if arr.flags.c_contiguous else arr.copy(order="C"),
                                          allow_pickle=False)


def graph_calls(data: dict[str, np.ndarray]) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """Split a ``<graph>_io`` npz into per-call (inputs, outputs) dicts."""
    calls: dict[int, tuple[dict, dict]] = {}
    for key, val in data.items():
        head, _, name = key.partition(".")
        ins, outs = calls.setdefault(int(head[4:]), ({}, {}))
        if name.startswith("out."):
            outs[name[4:]] = val
        else:
            ins[name] = val
    return [calls[i] for i in sorted(calls)]
