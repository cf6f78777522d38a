"""Noise schedules of the variance-preserving process, in log-SNR form.

lambda(t) is the log signal-to-noise ratio; alpha^2 = sigmoid(lambda) and
sigma^2 = sigmoid(-lambda). Tables are computed in float64; differences near
t -> 0 use log1p/expm1 forms rather than 1 - alphabar (SAMPLER.md).
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
               beta_end: float = 0.02) -> np.ndarray:
    """Discrete betas as diffusers builds them (float64 here)."""
    n = int(num_train_timesteps)
    if n < 2:
        raise SpecError(f"process.num_train_timesteps is {n}; expected at least 2")
    if kind == "linear":
        return np.linspace(beta_start, beta_end, n, dtype=np.float64)
    if kind == "scaled_linear":
        return np.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=np.float64) ** 2
    if kind == "squaredcos_cap_v2":
        def abar(x: float) -> float:
            return math.cos((x + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=np.float64)
    raise SpecError(f"process.beta_schedule is {kind!r}; supported: {', '.join(BETA_SCHEDULES)}")


def discrete_logsnr(betas: np.ndarray) -> np.ndarray:
    """log-SNR of each discrete timestep: ln(abar / (1 - abar)) with 1 - abar via expm1."""
    log_abar = np.cumsum(np.log1p(-np.asarray(betas, dtype=np.float64)))
    return log_abar - np.log(-np.expm1(log_abar))


def time_grid(num_steps: int) -> np.ndarray:
    """Uniform grid t_0 = 1 > ... > t_N = 0 (float64)."""
    if int(num_steps) < 1:
        raise SpecError(f"sampler.num_steps is {num_steps}; expected at least 1")
    return np.linspace(1.0, 0.0, int(num_steps) + 1, dtype=np.float64)
