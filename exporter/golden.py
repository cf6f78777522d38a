"""Reference vectors made at export time: per-graph inputs/outputs and per-step trajectories.

``RecordingRunner`` wraps the PyTorch reference and keeps every call's inputs and
outputs; the capture picks graph inputs from real trajectories (uniform random
inputs hide real failures) and stores them as npz (no pickle).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .sampling import call_plan, sample, spec_noise
from .spec import Spec
from .spec_builder import every_step
from .torch_runner import TorchReferenceRunner


class RecordingRunner:
    """Pass-through runner that records every encoder and denoiser call as numpy."""

    def __init__(self, inner: TorchReferenceRunner):
        self.inner = inner
        self.encoder_calls: list[dict[str, np.ndarray]] = []
        self.denoiser_calls: list[dict[str, np.ndarray]] = []

    def encode(self, z, logsnr, class_id):
        feats = self.inner.encode(z, logsnr, class_id)
        self.encoder_calls.append({"z": z.copy(), "logsnr": logsnr.copy(), "class_id": class_id.copy(),
                                   **{f"out.feat{k}": f for k, f in enumerate(self.inner.features_to_numpy(feats))}})
        return feats

    def denoise(self, z, logsnr, logsnr_ctx, class_id, features):
        out = self.inner.denoise(z, logsnr, logsnr_ctx, class_id, features)
        feats = self.inner.features_to_numpy(features)
        self.denoiser_calls.append({"z": z.copy(), "logsnr": logsnr.copy(), "logsnr_ctx": logsnr_ctx.copy(),
                                    "class_id": class_id.copy(), **{f"feat{k}": f for k, f in enumerate(feats)},
                                    "out.prediction": out.copy()})
        return out

    def features_to_numpy(self, features: Any) -> list[np.ndarray]:
        return self.inner.features_to_numpy(features)


def golden_labels(seed: int, batch: int, num_classes: int) -> np.ndarray:
    """Classes of the golden trajectory for ``seed``: consecutive ids, different per seed."""
    return (np.arange(batch) + seed * batch) % num_classes


def capture(runner: TorchReferenceRunner, spec: Spec, seeds: tuple[int, ...], batch: int,
            max_graph_calls: int = 8) -> dict[str, dict[str, np.ndarray]]:
    """Reference vectors: a trajectory per seed (the first with every graph call's output for
    teacher forcing), the single-rate (refresh every step) trajectory of the first seed, and
    graph I/O sampled from the first seed's calls."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for k, seed in enumerate(seeds):
        rec = RecordingRunner(runner)
        traj = _trajectory(rec, spec, seed, batch)
        if k == 0:
            traj.update(_teacher(spec, rec))
            for graph, calls in (("encoder", rec.encoder_calls), ("denoiser", rec.denoiser_calls)):
                picks = np.unique(np.linspace(0, len(calls) - 1, min(max_graph_calls, len(calls))).round().astype(int))
                out[f"{graph}_io"] = {f"call{i}.{key}": val for i, c in enumerate(calls[j] for j in picks)
                                      for key, val in c.items()}
        out[f"trajectory_seed{seed}"] = traj
    out[f"every_step_seed{seeds[0]}"] = _trajectory(runner, every_step(spec), seeds[0], batch)
    out["calibration"] = calibration(runner, out)
    return out


LOW_PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16}


def calibration(runner: TorchReferenceRunner, vectors: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The reference's own spread at reduced precision: PyTorch autocast vs float32 on the recorded
    graph inputs, per output, worst call: ``[rel_l2, 1 - cosine]`` under ``<precision>/<graph>/<output>``.

    VALIDATION.md asks for low-precision gates calibrated against this spread: a step
    where the reference itself moves 7% in bf16 cannot be held to a 3% per-call gate.
    """
    out: dict[str, np.ndarray] = {}
    for pname, dtype in LOW_PRECISIONS.items():
        for graph in ("encoder", "denoiser"):
            worst: dict[str, list[float]] = {}
            for inputs, outputs in graph_calls(vectors[f"{graph}_io"]):
                t = {k: torch.from_numpy(v) for k, v in inputs.items()}
                with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
                    if graph == "encoder":
                        got = dict(zip(sorted(outputs, key=lambda n: int(n[4:])),
                                       runner.encoder(t["z"], t["logsnr"], t["class_id"])))
                    else:
                        feats = [t[f"feat{k}"] for k in range(sum(1 for n in t if n.startswith("feat")))]
                        got = {"prediction": runner.denoiser(t["z"], t["logsnr"], t["logsnr_ctx"], t["class_id"], *feats)}
                for name, ref in outputs.items():
                    a = got[name].float().numpy().astype(np.float64).ravel()
                    r = ref.astype(np.float64).ravel()
                    rel = float(np.linalg.norm(a - r) / max(np.linalg.norm(r), 1e-30))
                    cos = float(a @ r / max(np.linalg.norm(a) * np.linalg.norm(r), 1e-30))
                    w = worst.setdefault(name, [0.0, 0.0])
                    w[0], w[1] = max(w[0], rel), max(w[1], 1.0 - cos)
            for name, (rel, one_minus_cos) in worst.items():
                out[f"{pname}/{graph}/{name}"] = np.array([rel, one_minus_cos], np.float64)
    return out


def _trajectory(runner: Any, spec: Spec, seed: int, batch: int) -> dict[str, np.ndarray]:
    labels = golden_labels(seed, batch, spec.model.num_classes)
    noise = spec_noise(spec, batch, seed)
    res = sample(runner, spec, labels, noise, record=True)
    shape = tuple(spec.model.sample_shape)
    return {"seed": np.array(seed, np.uint64), "class_id": labels,
            "noise": np.stack([noise.draw(i, shape) for i in range(spec.sampler.num_steps + 1)]),  # [N+1, B, C, H, W]
            "z": np.stack(res.trajectory), "x0": np.stack(res.x0_estimates), "final": res.x,
            "refresh_cond": np.array(res.refresh_log["cond"], np.int64),
            "refresh_uncond": np.array(res.refresh_log["uncond"], np.int64)}


def teacher_key(kind: str, step: int, branches: tuple[str, ...], output: str) -> str:
    """Key of one recorded graph output in a trajectory file (teacher forcing)."""
    return f"teacher.{kind}.s{step}.{'+'.join(branches)}.{output}"


def _teacher(spec: Spec, rec: RecordingRunner) -> dict[str, np.ndarray]:
    """Every encoder/denoiser output of the run, keyed by step and branch group (walks the call plan)."""
    enc, den = iter(rec.encoder_calls), iter(rec.denoiser_calls)
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
