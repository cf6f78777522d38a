"""Planted faults: the validator proves it can fail.

Each fault is applied to a copy of the bundle or as a wrapper around the
backend runner, and ``self_test`` runs the full validation once per fault; every
one must end FAILED. The faults:

* ``weight_perturbed``: every encoder weight tensor multiplied by (1 + 1e-3 * random sign) in
  a re-hashed copy of the bundle — a silently wrong export;
* ``one_weight_perturbed``: the largest encoder weight tensor alone multiplied elementwise by
  (1 + 1e-3 * N(0, 1)), re-hashed — an error the fixed 1e-4 fp32 gate passes and the
  floor-calibrated gates catch (applicable where the run's gates are floor-calibrated);
* ``refresh_shifted``: the backend loop refreshes one step late (every refresh after step 0 + 1);
* ``features_swapped``: two feature outputs trade places (same-shaped outputs), or, when every
  output has its own shape, the feature rows of two samples are exchanged;
* ``context_time_current``: the denoiser's time_ctx gets the current step's time instead of the
  refresh step's;
* ``guidance_one_net``: the uncond branch's encoder call gets the conditional rows — guidance
  applied to the denoiser only;
* ``bf16_under_fp32_gate``: outputs rounded to bfloat16 (what a silent bf16 backend computes),
  judged with the fp32 gate.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dualrate.exporter.bundle import MANIFEST, open_bundle, write_manifest
from dualrate.exporter.spec_builder import with_refresh_steps

from .validate import ValidateOptions, validate


class _Wrapper:
    """Runner wrapper base: forwards everything by name, hooks override encode/denoise."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.spec = inner.spec

    def encode(self, feeds):
        return self.inner.encode(feeds)

    def denoise(self, feeds):
        return self.inner.denoise(feeds)

    def decode(self, feeds):
        return self.inner.decode(feeds)

    def features_to_numpy(self, features):
        if all(isinstance(v, np.ndarray) for v in features.values()):
            return dict(features)
        return self.inner.features_to_numpy(features)

    def inputs(self, graph: str, role: str) -> list[str]:
        """Names of ``graph``'s inputs fed ``role`` (a prefix such as ``cond:`` matches a family)."""
        gio = self.spec.model.graphs()[graph]
        return [i.name for i in gio.inputs if i.feeds == role or (role.endswith(":") and i.feeds.startswith(role))]


class SwapFeatures(_Wrapper):
    def encode(self, feeds):
        feats = self.inner.features_to_numpy(self.inner.encode(feeds))
        names = list(feats)
        shapes = [feats[n].shape for n in names]
        pair = next(((i, j) for i in range(len(names)) for j in range(i + 1, len(names)) if shapes[i] == shapes[j]), None)
        if pair:
            a, b = names[pair[0]], names[pair[1]]
            feats[a], feats[b] = feats[b], feats[a]
        else:
            feats = {n: np.ascontiguousarray(f[::-1]) for n, f in feats.items()}     # rows of two samples exchanged
        return feats


class CurrentTimeAsContext(_Wrapper):
    """The denoiser's time_ctx input gets the current step's time instead of the refresh step's."""

    def denoise(self, feeds):
        feeds = dict(feeds)
        for ctx, now in zip(self.inputs("denoiser", "time_ctx"), self.inputs("denoiser", "time")):
            feeds[ctx] = feeds[now].astype(feeds[ctx].dtype)
        return self.inner.denoise(feeds)


class GuidanceOnOneNet(_Wrapper):
    """The encoder never sees the null conditioning: uncond rows are encoded with the cond rows."""

    def __init__(self, inner: Any, nulls: dict[str, np.ndarray]):
        super().__init__(inner)
        from dualrate.exporter.conditioning import null_row

        self.null = {i.name: null_row(self.spec.model.condition(i.feeds[len("cond:"):]), nulls)
                     for i in self.spec.model.encoder.inputs if i.feeds.startswith("cond:")}
        self.last_cond: dict[str, np.ndarray] = {}

    def encode(self, feeds):
        feeds = dict(feeds)
        if not self.null:
            return self.inner.encode(feeds)
        first = next(iter(self.null))
        rows = feeds[first]
        null_rows = np.all((rows == self.null[first]).reshape(len(rows), -1), axis=1)
        for name in self.null:
            value = feeds[name].copy()
            if null_rows.all() and name in self.last_cond and len(self.last_cond[name]) == len(value):
                value = self.last_cond[name].copy()                          # per-branch calls
            elif null_rows.any() and not null_rows.all():
                value[null_rows] = value[~null_rows][: int(null_rows.sum())]   # batched [cond; uncond]
            if not null_rows.all():
                self.last_cond[name] = feeds[name][~null_rows].copy()
            feeds[name] = value
        return self.inner.encode(feeds)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), kept as float32."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


class Bf16Outputs(_Wrapper):
    def encode(self, feeds):
        return {n: bf16_round(f) for n, f in self.inner.features_to_numpy(self.inner.encode(feeds)).items()}

    def denoise(self, feeds):
        return bf16_round(self.inner.denoise(feeds))


class CollapsedOutput(_Wrapper):
    """The denoiser's prediction collapses to one value per sample (a saturated int8 scale does this)."""

    def denoise(self, feeds):
        pred = np.asarray(self.inner.denoise(feeds))
        axes = tuple(range(1, pred.ndim))
        return np.ascontiguousarray(np.broadcast_to(pred.mean(axis=axes, keepdims=True), pred.shape), pred.dtype)


# every gate wide open: what still fails is the tripwire alone
OPEN_GATES = {"*": {"rel_l2": float("inf"), "cosine": -1.0, "psnr_db": float("-inf")}}


def perturb_weights(bundle_dir: Path, graph: str = "encoder", rel: float = 1e-3, seed: int = 0) -> int:
    """Multiply every weight matrix/kernel of ``graph`` elementwise by (1 + rel * random sign), then
    re-hash the bundle (a silently wrong export, not tampering). Returns how many tensors changed.

    Random signs, because a uniform scale of a tensor that feeds a normalisation is
    exactly undone by it; every tensor, because one tensor behind a GroupNorm can move
    the output by less than the fp32 gate and that would test the model, not the validator.
    """
    import onnx
    from onnx import numpy_helper

    path = bundle_dir / f"{graph}.onnx"
    model = onnx.load(str(path))
    rng = np.random.default_rng(seed)
    changed = 0
    for init in model.graph.initializer:
        w = numpy_helper.to_array(init)
        if w.dtype != np.float32 or w.ndim < 2:
            continue
        sign = np.where(rng.random(w.shape) < 0.5, -1.0, 1.0)
        init.CopyFrom(numpy_helper.from_array((w * (1 + rel * sign)).astype(w.dtype), init.name))
        changed += 1
    onnx.save(model, str(path))
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    write_manifest(bundle_dir, {k: v for k, v in manifest.items() if k not in ("files", "format", "format_version")})
    return changed


def perturb_one_weight(bundle_dir: Path, graph: str = "encoder", rel: float = 1e-3, seed: int = 0) -> str:
    """Multiply the largest float32 weight matrix/kernel of ``graph`` (the most elements among the
    initializers with at least two axes longer than 1) elementwise by (1 + rel * N(0, 1)), then
    re-hash the bundle. Returns the tensor's name."""
    import onnx
    from onnx import numpy_helper

    path = bundle_dir / f"{graph}.onnx"
    model = onnx.load(str(path))
    candidates = [(int(np.prod(init.dims)), -k, init) for k, init in enumerate(model.graph.initializer)
                  if init.data_type == onnx.TensorProto.FLOAT and sum(d > 1 for d in init.dims) >= 2]
    if not candidates:
        raise ValueError(f"{graph}.onnx has no float32 weight matrix to perturb")
    init = max(candidates, key=lambda c: c[:2])[2]
    w = numpy_helper.to_array(init)
    noise = np.random.default_rng(seed).standard_normal(w.shape)
    init.CopyFrom(numpy_helper.from_array((w * (1 + rel * noise)).astype(w.dtype), init.name))
    onnx.save(model, str(path))
    manifest = json.loads((bundle_dir / MANIFEST).read_text())
    write_manifest(bundle_dir, {k: v for k, v in manifest.items() if k not in ("files", "format", "format_version")})
    return init.name


FAULTS = ("weight_perturbed", "one_weight_perturbed", "refresh_shifted", "features_swapped", "context_time_current",
          "guidance_one_net", "bf16_under_fp32_gate", "output_collapsed_gates_open")


def self_test(bundle_path: str | Path, opts: ValidateOptions,
              progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Validate once clean, then once per planted fault; every fault must be caught. The reference
    (PyTorch trajectories or golden vectors) is computed once and reused by every run."""
    from dualrate.exporter.progress import Stages

    stages = Stages(progress)
    # the planted faults are judged by the layers; the swap runs' diagnosis would only cost time
    opts = dataclasses.replace(opts, cache={} if opts.cache is None else opts.cache, swap_runs=False)
    bundle = open_bundle(bundle_path)
    spec = bundle.spec
    with stages("clean", "clean run"):
        clean, _ = validate(bundle_path, opts)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dualrate-selftest-") as tmp:
        for fault in FAULTS:
            fault_opts = dataclasses.replace(opts)
            path = Path(bundle_path)
            note = ""
            if fault == "weight_perturbed":
                path = Path(tmp) / "perturbed"
                shutil.copytree(bundle_path, path, ignore=shutil.ignore_patterns("targets"))
                note = f"{perturb_weights(path)} encoder weight tensors x (1 +/- 1e-3)"
            elif fault == "one_weight_perturbed":
                if (clean.get("gates") or {}).get("kind") != "floor-calibrated":
                    rows.append(_row(fault, None, "not applicable: the gates are not floor-calibrated (fp32 with "
                                                  "the bundle's golden/fp32_floor.npz); the fixed gates pass it"))
                    continue
                path = Path(tmp) / "one-perturbed"
                shutil.copytree(bundle_path, path, ignore=shutil.ignore_patterns("targets"))
                note = f"encoder tensor {perturb_one_weight(path)} x (1 + 1e-3 N(0,1))"
            elif fault == "refresh_shifted":
                steps = spec.dual_rate.resolved_refresh_steps
                shifted = [0] + sorted({min(s + 1, spec.sampler.num_steps - 1) for s in steps[1:]} - {0})
                if list(shifted) == list(steps):
                    rows.append(_row(fault, None, "not applicable: the spec refreshes at every step"))
                    continue
                fault_opts.backend_spec = with_refresh_steps(spec, shifted)
                note = f"backend refreshes at {shifted} instead of {list(steps)}"
            elif fault == "features_swapped":
                fault_opts.runner_wrapper = SwapFeatures
            elif fault == "context_time_current":
                if not any(i.feeds == "time_ctx" for i in spec.model.denoiser.inputs):
                    rows.append(_row(fault, None, "not applicable: the denoiser takes no time_ctx input"))
                    continue
                fault_opts.runner_wrapper = CurrentTimeAsContext
            elif fault == "guidance_one_net":
                if spec.guidance.scale == 1.0:
                    rows.append(_row(fault, None, "not applicable: the bundle samples without guidance"))
                    continue
                if not any(i.feeds.startswith("cond:") for i in spec.model.encoder.inputs):
                    rows.append(_row(fault, None, "not applicable: the encoder takes no conditioning"))
                    continue
                fault_opts.runner_wrapper = lambda r: GuidanceOnOneNet(r, bundle.nulls())
            elif fault == "bf16_under_fp32_gate":
                fault_opts.runner_wrapper = Bf16Outputs
                fault_opts.gate_precision = "fp32"
            elif fault == "output_collapsed_gates_open":
                fault_opts.runner_wrapper = CollapsedOutput
                fault_opts.gate_overrides = OPEN_GATES
                note = "every gate open: only the tripwire can catch it"
            with stages(fault, f"planted fault: {fault}"):
                doc, _ = validate(path, fault_opts)
            rows.append(_row(fault, doc, note))
    applicable = [r for r in rows if r["caught"] is not None]
    return {"clean_verdict": clean["verdict"], "faults": rows,
            "caught": sum(1 for r in applicable if r["caught"]), "applicable": len(applicable),
            "passed": clean["verdict"] == "PASSED" and all(r["caught"] for r in applicable),
            "timings": dict(stages.timings)}


def _row(fault: str, doc: dict[str, Any] | None, note: str) -> dict[str, Any]:
    if doc is None:
        return {"fault": fault, "caught": None, "note": note, "first_failure": None}
    return {"fault": fault, "caught": doc["verdict"] == "FAILED", "note": note, "first_failure": doc["first_failure"]}
