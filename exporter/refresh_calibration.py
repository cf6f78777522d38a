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
from .sampling import time_values
from .spec import FEATURE_PREFIX, ROLE_TIME_CTX, Spec

CALIBRATION_DEFAULTS = {"batch": 4, "seed": 0}


@dataclass
class _Cache:
    features: Any
    step: int                   # the step the features were computed at (the denoiser's time_ctx)


class _DriftRunner:
    """Wraps a runner under an every-step plan and turns it into the calibrated dual-rate sampler.

    Under the every-step plan each group calls encode then denoise, in the same order at every
    step, so a group is known by its slot in the step (slot 0 holds the conditional branch).
    """

    def __init__(self, inner: Any, spec: Spec, threshold: float):
        self.inner = inner
        self.threshold = threshold
        self.step = 0
        self.slot = -1
        self.refresh_steps: list[int] = []
        self.drift: list[float | None] = [None] * spec.sampler.num_steps
        self._caches: dict[int, _Cache] = {}
        den = spec.model.denoiser.inputs
        self._times = time_values(spec)
        self._ctx = next((i.name for i in den if i.feeds == ROLE_TIME_CTX), None)
        self._feature_inputs = {i.name: i.feeds[len(FEATURE_PREFIX):] for i in den if i.feeds.startswith(FEATURE_PREFIX)}

    def encode(self, feeds: dict[str, Any]) -> Any:
        self.slot += 1
        key, i = self.slot, self.step
        fresh = self.inner.encode(feeds)
        cache = self._caches.get(key)
        if cache is None or (self.refresh_steps and cache.step < self.refresh_steps[-1]):
            adopt = True                                    # the cache rule: no cache, or older than a refresh
        else:
            drift = _relative_drift(self.inner.features_to_numpy(fresh), self.inner.features_to_numpy(cache.features))
            if key == 0:
                self.drift[i] = drift
            adopt = key == 0 and drift > self.threshold
        if adopt:
            if key == 0 and (not self.refresh_steps or self.refresh_steps[-1] != i):
                self.refresh_steps.append(i)
            self._caches[key] = _Cache(fresh, i)
        return self._caches[key].features

    def denoise(self, feeds: dict[str, Any]) -> np.ndarray:
        cache = self._caches[self.slot]
        feeds = dict(feeds)
        for name, feature in self._feature_inputs.items():
            feeds[name] = cache.features[feature]
        if self._ctx is not None:
            feeds[self._ctx] = np.full(len(feeds[self._ctx]), self._times[cache.step]).astype(feeds[self._ctx].dtype)
        return self.inner.denoise(feeds)

    def features_to_numpy(self, features: Any) -> dict[str, np.ndarray]:
        return self.inner.features_to_numpy(features)

    def next_step(self, i: int) -> None:
        self.step, self.slot = i + 1, -1


def _relative_drift(fresh: dict[str, np.ndarray], cached: dict[str, np.ndarray]) -> float:
    num = sum(float(np.sum((fresh[k].astype(np.float64) - cached[k]) ** 2)) for k in cached)
    den = sum(float(np.sum(b.astype(np.float64) ** 2)) for b in cached.values())
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


def calibrate(runner: Any, spec: Spec, params: dict[str, Any], nulls: dict[str, np.ndarray] | None = None) -> Spec:
    """``spec`` with the refresh steps measured on ``runner`` (see the module docstring)."""
    from .golden import example_conditioning
    from .sampling import sample, spec_noise
    from .spec_builder import every_step, with_refresh_steps

    p = check_calibration_params(params)
    drifting = _DriftRunner(runner, spec, p["threshold"])
    sample(drifting, every_step(spec), example_conditioning(spec, p["seed"], p["batch"], nulls),
           spec_noise(spec, p["batch"], p["seed"]), nulls=nulls, decode_final=False, on_step=drifting.next_step)
    recorded = {**p, "measured_drift": [None if d is None else round(d, 6) for d in drifting.drift]}
    return with_refresh_steps(spec, drifting.refresh_steps, "calibrated", recorded)
