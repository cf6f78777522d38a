"""The ``calibrated`` refresh generator: refresh when the cached features have drifted.

Every other generator is a formula of the step index or the log-SNR grid; this one is
measured on the model. It runs the dual-rate sampler on a reference runner for a small
calibration batch and, at every step, also runs the encoder on the current ``z`` to see
how far its fresh features have moved from the cached ones (relative L2 over all feature
tensors of the call). The step becomes a refresh step when that drift exceeds the
threshold. The trajectory follows those decisions, so the list found is the schedule the
sampler then runs: sampling the calibrated spec reproduces the calibration run exactly.

Under guidance with an interval the branches run as separate calls; the decision is made
on the conditional branch (it runs at every step) and the unconditional one follows the
spec's cache rule, as ``call_plan`` will. The result is stored resolved like every other
schedule, with the threshold, the calibration batch and the measured drift per step
recorded beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BadInputError
from .spec import Spec

CALIBRATION_DEFAULTS = {"batch": 4, "seed": 0}


@dataclass
class _Cache:
    features: Any
    logsnr: np.ndarray          # the logsnr the features were computed at (the denoiser's logsnr_ctx)
    step: int


class _DriftRunner:
    """Wraps a runner under an every-step plan and turns it into the calibrated dual-rate sampler."""

    def __init__(self, inner: Any, threshold: float, num_steps: int):
        self.inner = inner
        self.threshold = threshold
        self.step = 0
        self.refresh_steps: list[int] = []
        self.drift: list[float | None] = [None] * num_steps
        self._caches: dict[bytes, _Cache] = {}
        self._decides: bytes | None = None      # the group whose drift decides (the first one at step 0)

    def encode(self, z: np.ndarray, logsnr: np.ndarray, class_id: np.ndarray) -> Any:
        key, i = class_id.tobytes(), self.step
        fresh = self.inner.encode(z, logsnr, class_id)
        cache = self._caches.get(key)
        if self._decides is None:
            self._decides = key
        if cache is None or (self.refresh_steps and cache.step < self.refresh_steps[-1]):
            adopt = True                                    # the cache rule: no cache, or older than a refresh
        else:
            drift = _relative_drift(self.inner.features_to_numpy(fresh), self.inner.features_to_numpy(cache.features))
            if key == self._decides:
                self.drift[i] = drift
            adopt = key == self._decides and drift > self.threshold
        if adopt:
            if key == self._decides and (not self.refresh_steps or self.refresh_steps[-1] != i):
                self.refresh_steps.append(i)
            self._caches[key] = _Cache(fresh, np.asarray(logsnr, np.float32).copy(), i)
        return self._caches[key].features

    def denoise(self, z: np.ndarray, logsnr: np.ndarray, logsnr_ctx: np.ndarray, class_id: np.ndarray,
                features: Any) -> np.ndarray:
        cache = self._caches[class_id.tobytes()]
        return self.inner.denoise(z, logsnr, cache.logsnr, class_id, features)

    def features_to_numpy(self, features: Any) -> list[np.ndarray]:
        return self.inner.features_to_numpy(features)

    def next_step(self, i: int) -> None:
        self.step = i + 1


def _relative_drift(fresh: list[np.ndarray], cached: list[np.ndarray]) -> float:
    num = sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(fresh, cached))
    den = sum(float(np.sum(b.astype(np.float64) ** 2)) for b in cached)
    return float(np.sqrt(num / den)) if den > 0 else float("inf")


def check_calibration_params(params: dict[str, Any]) -> dict[str, Any]:
    """Threshold (> 0) plus the calibration batch and seed, defaults filled in."""
    out = {**CALIBRATION_DEFAULTS, **params}
    threshold = out.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not np.isfinite(threshold) \
            or threshold <= 0:
        raise BadInputError(f"calibrated refresh threshold is {threshold!r}; expected a positive number "
                            "(the relative feature drift that triggers a refresh, e.g. 0.1)")
    for name in ("batch", "seed"):
        value = out[name]
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "batch" else 0):
            raise BadInputError(f"calibrated refresh {name} is {value!r}; expected a "
                                f"{'positive' if name == 'batch' else 'non-negative'} integer")
    unknown = sorted(set(out) - {"threshold", *CALIBRATION_DEFAULTS})
    if unknown:
        raise BadInputError(f"calibrated refresh got unknown parameters {unknown}; known: threshold, batch, seed")
    out["threshold"] = float(threshold)
    return out


def calibrate(runner: Any, spec: Spec, params: dict[str, Any]) -> Spec:
    """``spec`` with the refresh steps measured on ``runner`` (see the module docstring)."""
    from .sampling import sample, spec_noise
    from .spec_builder import every_step, with_refresh_steps

    p = check_calibration_params(params)
    labels = np.arange(p["batch"], dtype=np.int64) % spec.model.num_classes
    drifting = _DriftRunner(runner, p["threshold"], spec.sampler.num_steps)
    sample(drifting, every_step(spec), labels, spec_noise(spec, p["batch"], p["seed"]), on_step=drifting.next_step)
    recorded = {**p, "measured_drift": [None if d is None else round(d, 6) for d in drifting.drift]}
    return with_refresh_steps(spec, drifting.refresh_steps, "calibrated", recorded)
