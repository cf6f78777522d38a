"""Refresh schedules: at which sampler steps the context encoder runs.

Schedules are generated here and stored *resolved* in the spec (an explicit
sorted list that always contains step 0), so a runtime never re-implements a
generator. Generators:

* ``every_k`` (k, phase): the paper's schedule, steps where (i - phase) % k == 0;
* ``explicit``: a given list;
* ``front_loaded`` (count, power): denser at high noise (early steps), i = floor(N (j/count)^power);
* ``uniform_logsnr`` (count): the first step at or past each of ``count`` log-SNR levels
  evenly spaced between the first and the last step's (at most ``count`` refreshes);
* ``calibrated`` (threshold): measured on the model, see ``refresh_calibration``; it
  cannot be resolved from numbers alone, so ``resolve_refresh`` refuses it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .errors import SpecError

REFRESH_KINDS = ("every_k", "explicit", "front_loaded", "uniform_logsnr", "calibrated")


def check_refresh_steps(steps: Sequence[int], num_steps: int, field: str = "dual_rate.resolved_refresh_steps") -> tuple[int, ...]:
    """Validate a resolved list: integers, strictly increasing, starting at 0, below ``num_steps``."""
    out = []
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, (int, np.integer)):
            raise SpecError(f"{field} must hold integers; found {s!r}")
        out.append(int(s))
    if not out or out[0] != 0:
        raise SpecError(f"{field} is {out}; it must start with step 0 (the first step always runs the encoder)")
    if any(b <= a for a, b in zip(out, out[1:])):
        raise SpecError(f"{field} is {out}; it must be strictly increasing with no repeats")
    if out[-1] >= num_steps:
        raise SpecError(f"{field} contains step {out[-1]}, out of range for {num_steps} steps (valid: 0..{num_steps - 1})")
    return tuple(out)


def resolve_refresh(kind: str, params: Mapping[str, Any], num_steps: int,
                    logsnr: np.ndarray | None = None) -> tuple[int, ...]:
    """Resolve a generator and its parameters to the explicit list of refresh steps."""
    n = int(num_steps)
    p = dict(params)
    if kind == "every_k":
        k, phase = int(p.get("k", 1)), int(p.get("phase", 0))
        if k < 1:
            raise SpecError(f"dual_rate.refresh.k is {k}; expected k >= 1")
        steps = {i for i in range(n) if (i - phase) % k == 0} | {0}
    elif kind == "explicit":
        return check_refresh_steps(sorted(set(int(s) for s in p.get("steps", []))), n, "dual_rate.refresh.steps")
    elif kind == "front_loaded":
        count, power = _count(p, n), float(p.get("power", 2.0))
        if power < 1.0:
            raise SpecError(f"dual_rate.refresh.power is {power}; expected >= 1 (1 is uniform)")
        steps = {int(np.floor(n * (j / count) ** power)) for j in range(count)}
    elif kind == "uniform_logsnr":
        if logsnr is None:
            raise SpecError("uniform_logsnr refresh needs the log-SNR table of the grid")
        count = _count(p, n)
        lam = np.asarray(logsnr, dtype=np.float64)[:n]
        # the first step at or past each of `count` evenly spaced log-SNR levels:
        # refresh whenever log-SNR has moved by a fixed amount since the last one
        targets = np.linspace(lam[0], lam[-1], count)
        steps = {int(np.searchsorted(lam, x, side="left")) for x in targets} | {0}
    elif kind == "calibrated":
        raise SpecError("calibrated refresh steps are measured on the model (exporter.refresh_calibration), "
                        "not resolved from parameters; build the spec with a reference runner")
    else:
        raise SpecError(f"dual_rate.refresh.kind is {kind!r}; supported: {', '.join(REFRESH_KINDS)}")
    return check_refresh_steps(sorted(steps), n)


def _count(p: Mapping[str, Any], n: int) -> int:
    count = int(p.get("count", 0))
    if not 1 <= count <= n:
        raise SpecError(f"dual_rate.refresh.count is {count}; expected 1..{n} for {n} steps")
    return count
