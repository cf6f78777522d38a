"""Planted faults: the validator proves it can fail.

Each fault is applied to a copy of the bundle or as a wrapper around the
backend runner, and ``self_test`` runs the full validation once per fault; every
one must end FAILED. The faults (VALIDATION.md):

* ``weight_perturbed``: every encoder weight tensor multiplied by (1 + 1e-3 * random sign) in
  a re-hashed copy of the bundle — a silently wrong export;
* ``refresh_shifted``: the backend loop refreshes one step late (every refresh after step 0 + 1);
* ``features_swapped``: two feature outputs trade places (same-shaped outputs), or, when every
  output has its own shape, the feature rows of two samples are exchanged;
* ``context_logsnr_current``: the denoiser gets lambda_i instead of the cached lambda_ctx;
* ``guidance_one_net``: the uncond branch's encoder call gets the conditional class — guidance
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
    """Runner wrapper base: forwards everything, hooks override encode/denoise."""

    def __init__(self, inner: Any):
        self.inner = inner

    def encode(self, z, logsnr, class_id):
        return self.inner.encode(z, logsnr, class_id)

    def denoise(self, z, logsnr, logsnr_ctx, class_id, features):
        return self.inner.denoise(z, logsnr, logsnr_ctx, class_id, features)

    def features_to_numpy(self, features):
        if isinstance(features, list) and features and isinstance(features[0], np.ndarray):
            return features
        return self.inner.features_to_numpy(features)


class SwapFeatures(_Wrapper):
    def encode(self, z, logsnr, class_id):
        feats = list(self.inner.features_to_numpy(self.inner.encode(z, logsnr, class_id)))
        shapes = [f.shape for f in feats]
        pair = next(((i, j) for i in range(len(feats)) for j in range(i + 1, len(feats)) if shapes[i] == shapes[j]), None)
        if pair:
            i, j = pair
            feats[i], feats[j] = feats[j], feats[i]
        else:
            feats = [np.ascontiguousarray(f[::-1]) for f in feats]     # rows of two samples exchanged
        return feats


class CurrentLogSnrAsContext(_Wrapper):
    def denoise(self, z, logsnr, logsnr_ctx, class_id, features):
        return self.inner.denoise(z, logsnr, logsnr, class_id, features)


class GuidanceOnOneNet(_Wrapper):
    """The encoder never sees the null class: uncond rows are encoded with the cond labels."""

    def __init__(self, inner: Any, null_class: int):
        super().__init__(inner)
        self.null = null_class
        self.last_cond: np.ndarray | None = None

    def encode(self, z, logsnr, class_id):
        cls = class_id.copy()
        null_rows = cls == self.null
        if null_rows.all() and self.last_cond is not None and len(self.last_cond) == len(cls):
            cls = self.last_cond.copy()                            # per-branch calls
        elif null_rows.any() and not null_rows.all():
            cls[null_rows] = cls[~null_rows][: int(null_rows.sum())]   # batched [cond; uncond]
        if not null_rows.all():
            self.last_cond = class_id[~null_rows].copy()
        return self.inner.encode(z, logsnr, cls)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """Round float32 to the nearest bfloat16 (ties to even), kept as float32."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32)


class Bf16Outputs(_Wrapper):
    def encode(self, z, logsnr, class_id):
        return [bf16_round(f) for f in self.inner.features_to_numpy(self.inner.encode(z, logsnr, class_id))]

    def denoise(self, z, logsnr, logsnr_ctx, class_id, features):
        return bf16_round(self.inner.denoise(z, logsnr, logsnr_ctx, class_id, features))


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


FAULTS = ("weight_perturbed", "refresh_shifted", "features_swapped", "context_logsnr_current",
          "guidance_one_net", "bf16_under_fp32_gate")


def self_test(bundle_path: str | Path, opts: ValidateOptions,
              progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Validate once clean, then once per planted fault; every fault must be caught."""
    bundle = open_bundle(bundle_path)
    spec = bundle.spec
    clean, _ = validate(bundle_path, opts)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dualrate-selftest-") as tmp:
        for fault in FAULTS:
            progress(f"planted fault: {fault}")
            fault_opts = dataclasses.replace(opts)
            path = Path(bundle_path)
            note = ""
            if fault == "weight_perturbed":
                path = Path(tmp) / "perturbed"
                shutil.copytree(bundle_path, path, ignore=shutil.ignore_patterns("targets"))
                note = f"{perturb_weights(path)} encoder weight tensors x (1 +/- 1e-3)"
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
            elif fault == "context_logsnr_current":
                fault_opts.runner_wrapper = CurrentLogSnrAsContext
            elif fault == "guidance_one_net":
                if spec.guidance.scale == 1.0:
                    rows.append(_row(fault, None, "not applicable: the bundle samples without guidance"))
                    continue
                fault_opts.runner_wrapper = lambda r: GuidanceOnOneNet(r, spec.model.null_class)
            elif fault == "bf16_under_fp32_gate":
                fault_opts.runner_wrapper = Bf16Outputs
                fault_opts.gate_precision = "fp32"
            doc, _ = validate(path, fault_opts)
            rows.append(_row(fault, doc, note))
    applicable = [r for r in rows if r["caught"] is not None]
    return {"clean_verdict": clean["verdict"], "faults": rows,
            "caught": sum(1 for r in applicable if r["caught"]), "applicable": len(applicable),
            "passed": clean["verdict"] == "PASSED" and all(r["caught"] for r in applicable)}


def _row(fault: str, doc: dict[str, Any] | None, note: str) -> dict[str, Any]:
    if doc is None:
        return {"fault": fault, "caught": None, "note": note, "first_failure": None}
    return {"fault": fault, "caught": doc["verdict"] == "FAILED", "note": note, "first_failure": doc["first_failure"]}
