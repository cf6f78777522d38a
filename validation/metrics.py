"""Comparison metrics of a backend tensor against a reference tensor.

max abs, max rel (vs |ref|), relative L2 ||a-b||/||b||, cosine similarity, PSNR
(peak = max|ref|), the count of non-finite values, and the smallest atol that
would have passed ``|a-b| <= atol + rtol |ref|`` at the given rtol (Polygraphy's
"minimum tolerance" idea), all computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

TINY = 1e-30


@dataclass(frozen=True)
class Metrics:
    max_abs: float
    max_rel: float
    rel_l2: float
    cosine: float
    psnr_db: float
    non_finite: int
    min_atol_at_rtol: float
    rtol: float
    shape: tuple[int, ...]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        # JSON has no infinity: a perfect match has PSNR = inf, written as null
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def compare(actual: np.ndarray, reference: np.ndarray, rtol: float = 1e-3) -> Metrics:
    """Metrics of ``actual`` vs ``reference`` (same shape)."""
    a = np.asarray(actual, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    if a.shape != r.shape:
        raise ValueError(f"shape mismatch: actual {a.shape} vs reference {r.shape}")
    non_finite = int(np.count_nonzero(~np.isfinite(a))) + int(np.count_nonzero(~np.isfinite(r)))
    if non_finite:
        nan = float("nan")
        return Metrics(nan, nan, nan, nan, nan, non_finite, nan, rtol, a.shape)
    diff = np.abs(a - r)
    ref_abs = np.abs(r)
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(ref_abs, TINY)).max()) if diff.size else 0.0
    norm_r = float(np.linalg.norm(r))
    norm_d = float(np.linalg.norm(a - r))
    rel_l2 = norm_d / max(norm_r, TINY) if norm_r > 0 else (0.0 if norm_d == 0 else math.inf)
    norm_a = float(np.linalg.norm(a))
    if norm_a == 0 and norm_r == 0:
        cosine = 1.0
    else:
        cosine = float(np.dot(a.ravel(), r.ravel()) / max(norm_a * norm_r, TINY))
    mse = float(np.mean((a - r) ** 2)) if diff.size else 0.0
    peak = float(ref_abs.max()) if diff.size else 0.0
    psnr = math.inf if mse == 0 else (10 * math.log10(peak ** 2 / mse) if peak > 0 else -math.inf)
    min_atol = float(np.maximum(diff - rtol * ref_abs, 0.0).max()) if diff.size else 0.0
    return Metrics(max_abs, max_rel, rel_l2, cosine, psnr, 0, min_atol, rtol, tuple(a.shape))
