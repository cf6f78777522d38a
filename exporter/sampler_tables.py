"""Every first-order sampler as one affine step, and the normative float64 tables.

Step i goes from (t, s) = (t_i, t_{i+1}), lambda_s > lambda_t, with
c = -expm1(lambda_t - lambda_s) and

    z_{i+1} = A_i z_i + B_i x0_i + C_i xi_i

| sampler                    | A_i                      | B_i          | C_i           |
| ancestral (DDPM posterior) | alpha_s (1 - c) / alpha_t | alpha_s c    | sigma_s sqrt(c) |
| DDIM(eta), g = eta sigma_s sqrt(c) | sqrt(sigma_s^2 - g^2) / sigma_t | alpha_s - A alpha_t | g |
| final step under return_x0 | 0                        | 1            | 0             |

DDIM with eta = 1 equals ancestral; eta = 0 is DPM-Solver++ (1st order).
"""

from __future__ import annotations

import numpy as np

from .errors import SpecError
from .schedules import alpha_sigma

SAMPLERS = ("ancestral", "ddim")
FINAL_STEPS = ("return_x0", "step")


def affine_coefficients(sampler: str, logsnr_t: np.ndarray, logsnr_s: np.ndarray,
                        eta: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A, B, C) of the step from log-SNR ``logsnr_t`` to the less noisy ``logsnr_s``."""
    lt = np.asarray(logsnr_t, dtype=np.float64)
    ls = np.asarray(logsnr_s, dtype=np.float64)
    a_t, s_t = alpha_sigma(lt)
    a_s, s_s = alpha_sigma(ls)
    one_minus_c = np.exp(lt - ls)          # e^{lt - ls} = 1 - c, exact for tiny gaps
    c = -np.expm1(lt - ls)
    if sampler == "ancestral":
        return a_s * one_minus_c / a_t, a_s * c, s_s * np.sqrt(c)
    if sampler == "ddim":
        if not 0.0 <= eta <= 1.0:
            raise SpecError(f"sampler.eta is {eta}; expected 0 <= eta <= 1")
        # sigma_s^2 - gamma^2 = sigma_s^2 (1 - eta^2 c), kept in product form
        gamma = eta * s_s * np.sqrt(c)
        a = s_s * np.sqrt(1.0 - eta * eta * c) / s_t
        return a, a_s - a * a_t, gamma
    raise SpecError(f"sampler.type is {sampler!r}; supported: {', '.join(SAMPLERS)}")


def build_tables(t: np.ndarray, logsnr: np.ndarray, sampler: str, eta: float,
                 final_step: str) -> dict[str, np.ndarray]:
    """All normative tables for a grid: t, logsnr, alpha, sigma (N+1) and coef_* (N)."""
    t = np.asarray(t, dtype=np.float64)
    lam = np.asarray(logsnr, dtype=np.float64)
    if final_step not in FINAL_STEPS:
        raise SpecError(f"sampler.final_step is {final_step!r}; expected one of {FINAL_STEPS}")
    a, b, c = affine_coefficients(sampler, lam[:-1], lam[1:], eta)
    if final_step == "return_x0":
        a[-1], b[-1], c[-1] = 0.0, 1.0, 0.0
    alpha, sigma = alpha_sigma(lam)
    return {"t": t, "logsnr": lam, "alpha": alpha, "sigma": sigma, "coef_z": a, "coef_x0": b, "coef_noise": c}


def to_x0(pred: str, out, z, alpha, sigma):
    """Convert a model output to the clean-sample estimate (works on numpy and torch)."""
    if pred == "v":
        return alpha * z - sigma * out
    if pred == "eps":
        return (z - sigma * out) / alpha
    if pred == "x0":
        return out
    raise SpecError(f"model.prediction is {pred!r}; expected v, eps or x0")
