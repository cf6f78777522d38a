"""Noise schedules of the variance-preserving process, in log-SNR form.

lambda(t) is the log signal-to-noise ratio; alpha^2 = sigmoid(lambda) and
sigma^2 = sigmoid(-lambda). Tables are computed in float64; differences near
t -> 0 use log1p/expm1 forms rather than 1 - alphabar (cancellation near alphabar = 1). The discrete
(diffusers) betas and alphabar are the exception: float32 tables reproduced bit
for bit from torch's CPU arithmetic, because models were trained on those values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import SpecError

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")


def cosine_logsnr(t: Any, logsnr_min: float = -15.0, logsnr_max: float = 15.0, shift: float = 0.0) -> Any:
    """Cosine log-SNR: -2 ln tan(t_min + t (t_max - t_min)) + shift.

    ``t`` may be a numpy array or a torch tensor (the training loop uses the same
    formula). ``shift`` is 2 ln(noise_d / image_d) for resolution shifting.
    """
    t_min = math.atan(math.exp(-0.5 * logsnr_max))
    t_max = math.atan(math.exp(-0.5 * logsnr_min))
    angle = t_min + t * (t_max - t_min)
    if isinstance(t, np.ndarray) or np.isscalar(t):
        return -2.0 * np.log(np.tan(angle)) + shift
    return -2.0 * (angle.tan()).log() + shift   # torch tensor


def resolution_shift(image_size: int, base_size: int) -> float:
    """Log-SNR shift 2 ln(base/image) of simple diffusion's shifted cosine schedule."""
    return 2.0 * math.log(base_size / image_size)


def alpha_sigma(logsnr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """alpha = sqrt(sigmoid(lambda)), sigma = sqrt(sigmoid(-lambda)), stable in float64."""
    lam = np.asarray(logsnr, dtype=np.float64)
    return np.sqrt(_sigmoid(lam)), np.sqrt(_sigmoid(-lam))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    # exp of a non-positive argument only: no overflow for |x| large
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def beta_table(kind: str, num_train_timesteps: int = 1000, beta_start: float = 1e-4,
               beta_end: float = 0.02, *, fused: bool = True) -> np.ndarray:
    """diffusers' betas bit for bit: the float32 table its ``__init__`` builds with torch on CPU.

    ``fused``: torch's AVX2/AVX-512 linspace kernels round ``start + step * i`` once
    (the compiler emits a fused multiply-add); its baseline x86 kernel
    (``ATEN_CPU_CAPABILITY=default``) rounds product and sum separately, 1 ulp
    apart in ~20% of the entries. squaredcos_cap_v2 is evaluated in Python floats
    and rounded to float32, as diffusers does.
    """
    n = int(num_train_timesteps)
    if n < 2:
        raise SpecError(f"process.num_train_timesteps is {n}; expected at least 2")
    if kind == "linear":
        return _torch_linspace_f32(beta_start, beta_end, n, fused)
    if kind == "scaled_linear":
        root = _torch_linspace_f32(beta_start ** 0.5, beta_end ** 0.5, n, fused)
        return root * root             # torch's ** 2 is a float32 square
    if kind == "squaredcos_cap_v2":
        def abar(x: float) -> float:
            return math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=np.float32)
    raise SpecError(f"process.beta_schedule is {kind!r}; supported: {', '.join(BETA_SCHEDULES)}")


def alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """diffusers' ``torch.cumprod(1.0 - betas, dim=0)`` for float32 betas, bit for bit (float32).

    torch's CPU cumprod carries the running product of float32 input in float64
    (``at::acc_type``) and rounds each partial product to float32; a float32
    accumulator (numpy's float32 cumprod) differs in most entries.
    """
    alphas = np.float32(1.0) - np.asarray(betas, dtype=np.float32)
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def alphabar_logsnr(alphabar: np.ndarray) -> np.ndarray:
    """log-SNR ln(abar / (1 - abar)) in float64; log1p keeps 1 - abar exact near abar = 1."""
    ab = np.asarray(alphabar, dtype=np.float64)
    with np.errstate(divide="ignore"):       # abar 0 or 1 gives -inf/+inf, which callers reject
        return np.log(ab) - np.log1p(-ab)


def _torch_linspace_f32(start: float, end: float, n: int, fused: bool) -> np.ndarray:
    """torch.linspace(start, end, n, dtype=float32) on CPU: the first half counts up from
    ``start``, the second half down from ``end``, with a float32 step."""
    s, e = np.float32(start), np.float32(end)
    step = (e - s) / np.float32(n - 1)
    i = np.arange(n)
    up = i < n // 2
    k = np.where(up, i, n - 1 - i).astype(np.float32)
    base = np.where(up, s, e)
    signed_step = np.where(up, step, -step)
    if fused:
        return _fma_f32(signed_step, k, base)
    return base + signed_step * k


def _fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """a * b + c rounded once to float32, for float32 arrays, via float64.

    The product of two float32 is exact in float64; the sum is split into
    hi + lo exactly (TwoSum). Rounding hi to float32 is then correct unless hi
    is itself a float32 rounding midpoint and lo breaks the tie.
    """
    p = a.astype(np.float64) * b.astype(np.float64)
    c64 = c.astype(np.float64)
    hi = p + c64
    v = hi - p
    lo = (p - (hi - v)) + (c64 - v)
    r = hi.astype(np.float32)
    other = np.nextafter(r, np.where(hi > r, np.float32(np.inf), np.float32(-np.inf)))
    tie = (lo != 0) & ((r.astype(np.float64) + other.astype(np.float64)) / 2 == hi)
    toward = np.where(lo > 0, np.maximum(r, other), np.minimum(r, other))
    return np.where(tie, toward, r).astype(np.float32)


def time_grid(num_steps: int) -> np.ndarray:
    """Uniform grid t_0 = 1 > ... > t_N = 0 (float64)."""
    if int(num_steps) < 1:
        raise SpecError(f"sampler.num_steps is {num_steps}; expected at least 1")
    return np.linspace(1.0, 0.0, int(num_steps) + 1, dtype=np.float64)
