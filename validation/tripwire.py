"""The tripwire: degenerate outputs fail whatever the gates say.

A quantized graph can fail in ways a loose gate lets through: a saturated activation makes an
output constant, a collapsed scale makes the samples black, an overflow makes them NaN. Each of
these fails its check with its own reason at every precision, independent of the gates (and of
``--gate`` overrides):

* non-finite: any NaN or Inf in the backend's output;
* constant: one sample (the first axis) has zero variance: every value equal;
* black: one sample has every value at the data range's minimum (final or decoded samples).

"Constant" and "black" are degenerate only where the reference is not: an untrained model whose
zero-initialised head outputs a constant is the model's own behaviour, not the backend's fault.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

PREFIX = "tripwire: "
SHOWN = 4          # sample indices named in a reason


def _per_sample(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    return x.reshape(len(x), -1) if x.ndim >= 2 else x.reshape(1, -1)


def _constant(rows: np.ndarray) -> np.ndarray:
    return np.array([r.size > 0 and bool(np.all(r == r[0])) for r in rows])


def _black(rows: np.ndarray, low: float, high: float) -> np.ndarray:
    # "at the minimum": within a millionth of the range (a quantized output may miss it by rounding)
    tol = 1e-6 * (high - low)
    return np.array([r.size > 0 and bool(np.all(r <= low + tol)) for r in rows])


def _which(mask: np.ndarray) -> str:
    idx = [int(i) for i in np.flatnonzero(mask)]
    shown = ", ".join(str(i) for i in idx[:SHOWN]) + (", ..." if len(idx) > SHOWN else "")
    return f"sample{'s' if len(idx) > 1 else ''} {shown}"


def tripwire(actual: np.ndarray, reference: np.ndarray | None = None,
             data_range: Sequence[float] | None = None) -> list[str]:
    """Why the backend's ``actual`` output is degenerate (empty when it is not); each reason
    starts with ``tripwire:``. ``reference`` (same shape) excuses a sample the reference computes
    constant or black too; ``data_range`` (low, high) enables the black check (samples only)."""
    a = np.asarray(actual)
    if a.dtype.kind not in "fc":
        return []                                   # integer outputs (ids, masks) cannot be non-finite
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        return [f"{PREFIX}{bad} non-finite values in the backend's output"]
    rows = _per_sample(a)
    ref = None if reference is None else _per_sample(np.asarray(reference, np.float64))
    if ref is not None and ref.shape != rows.shape:
        ref = None
    why = []
    if data_range is not None:
        low, high = float(data_range[0]), float(data_range[1])
        black = _black(rows, low, high) & (~_black(ref, low, high) if ref is not None else True)
        if black.any():
            why.append(f"{PREFIX}{_which(black)} black (every value at the data-range minimum {low:g})")
    constant = _constant(rows) & (~_constant(ref) if ref is not None else True)
    if data_range is not None and why:
        constant &= ~_black(rows, float(data_range[0]), float(data_range[1]))     # black already says it
    if constant.any():
        first = int(np.flatnonzero(constant)[0])
        why.append(f"{PREFIX}{_which(constant)} constant (zero variance; sample {first} is all "
                   f"{float(rows[first][0]):.6g})")
    return why


__all__ = ["PREFIX", "tripwire"]
