"""Schedules (cosine, discrete betas), sampler tables and refresh generators."""

from __future__ import annotations

import numpy as np
import pytest

from dualrate.exporter.errors import SpecError
from dualrate.exporter.refresh import resolve_refresh
from dualrate.exporter.sampler_tables import affine_coefficients, build_tables
from dualrate.exporter.schedules import (alpha_sigma, alphabar_logsnr, alphas_cumprod, beta_table, cosine_logsnr,
                                         resolution_shift, time_grid)


def test_cosine_endpoints_hit_the_clamp_and_decrease():
    lam = cosine_logsnr(time_grid(64), -15.0, 15.0)
    assert lam[0] == pytest.approx(-15.0, abs=1e-9) and lam[-1] == pytest.approx(15.0, abs=1e-9)
    assert np.all(np.diff(lam) > 0)
    assert cosine_logsnr(np.array([0.5])) == pytest.approx(0.0, abs=1e-12)   # symmetric clamp: t=0.5 -> 0
    assert resolution_shift(32, 64) == pytest.approx(2 * np.log(2))


def test_alpha_sigma_stable_in_float64():
    a, s = alpha_sigma(np.array([-40.0, 0.0, 40.0]))
    np.testing.assert_allclose(a ** 2 + s ** 2, 1.0, rtol=1e-15)
    assert s[2] == pytest.approx(np.exp(-20.0), rel=1e-12)        # no 1 - alphabar cancellation


def test_discrete_alphabar_is_float32_with_a_float64_running_product():
    # bit-exactness against torch/diffusers lives in test_diffusers_conformance.py
    betas = beta_table("linear", 1000)
    assert betas.dtype == np.float32 and betas[0] == np.float32(1e-4) and betas[-1] == np.float32(0.02)
    abar = alphas_cumprod(betas)
    alphas = np.float32(1.0) - betas
    assert abar.dtype == np.float32
    assert np.array_equal(abar, np.cumprod(alphas.astype(np.float64)).astype(np.float32))
    assert not np.array_equal(abar, np.cumprod(alphas))        # a float32 running product drifts
    lam = alphabar_logsnr(abar)
    a64 = abar.astype(np.float64)
    np.testing.assert_allclose(lam, np.log(a64 / (1 - a64)), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(alpha_sigma(lam)[0] ** 2, a64, rtol=1e-14)
    with pytest.raises(SpecError, match="process.beta_schedule is 'cosine'"):
        beta_table("cosine")


def test_ddim_eta_one_equals_ancestral_and_eta_zero_is_deterministic():
    lt = np.linspace(-8, 6, 20)
    ls = lt + 0.4
    anc = np.array(affine_coefficients("ancestral", lt, ls))
    ddim1 = np.array(affine_coefficients("ddim", lt, ls, 1.0))
    np.testing.assert_allclose(anc, ddim1, rtol=1e-13, atol=1e-15)
    a, b, c = affine_coefficients("ddim", lt, ls, 0.0)
    assert np.all(c == 0)
    # DDIM(0) maps a noiseless trajectory x0 -> z_s exactly: A alpha_t + B = alpha_s, A sigma_t = sigma_s
    at, st = alpha_sigma(lt)
    as_, ss = alpha_sigma(ls)
    np.testing.assert_allclose(a * st, ss, rtol=1e-13)
    np.testing.assert_allclose(a * at + b, as_, rtol=1e-13)


def test_ancestral_step_preserves_the_marginal_variance():
    # If z_t ~ N(alpha_t x, sigma_t^2) and x0 is exact, z_s must be N(alpha_s x, sigma_s^2).
    lt, ls = np.array([-2.0]), np.array([1.0])
    a, b, c = affine_coefficients("ancestral", lt, ls)
    at, st = alpha_sigma(lt)
    as_, ss = alpha_sigma(ls)
    np.testing.assert_allclose(a * at + b, as_, rtol=1e-13)
    np.testing.assert_allclose((a * st) ** 2 + c ** 2, ss ** 2, rtol=1e-13)


def test_build_tables_lengths():
    t = time_grid(5)
    tabs = build_tables(t, cosine_logsnr(t), "ddim", 0.5, "step")
    assert [len(tabs[k]) for k in ("t", "logsnr", "coef_z", "coef_noise")] == [6, 6, 5, 5]
    assert tabs["coef_noise"][-1] > 0


@pytest.mark.parametrize("kind,params,n,want", [
    ("every_k", {"k": 4}, 16, (0, 4, 8, 12)),
    ("every_k", {"k": 4, "phase": 2}, 10, (0, 2, 6)),
    ("every_k", {"k": 1}, 3, (0, 1, 2)),
    ("explicit", {"steps": [5, 0, 9]}, 10, (0, 5, 9)),
    ("front_loaded", {"count": 4, "power": 2.0}, 16, (0, 1, 4, 9)),
])
def test_refresh_generators(kind, params, n, want):
    assert resolve_refresh(kind, params, n) == want


def test_uniform_logsnr_refreshes_where_logsnr_moves_fast():
    lam = cosine_logsnr(time_grid(32))
    steps = resolve_refresh("uniform_logsnr", {"count": 6}, 32, lam)
    # the clamped cosine schedule moves fast at both ends, so refreshes bunch there
    assert steps == (0, 1, 6, 25, 31)
    level = (lam[31] - lam[0]) / 5
    for k in range(6):      # the first step at or past each log-SNR level is a refresh step
        first = next(i for i in range(32) if lam[i] >= lam[0] + k * level - 1e-9)
        assert first in steps


@pytest.mark.parametrize("kind,params,message", [
    ("explicit", {"steps": [1, 4]}, "must start with step 0"),
    ("explicit", {"steps": [0, 10]}, "out of range for 10 steps"),
    ("every_k", {"k": 0}, "dual_rate.refresh.k is 0"),
    ("front_loaded", {"count": 20}, "dual_rate.refresh.count is 20"),
    ("calibrated", {"threshold": 0.1}, "calibrated refresh steps are measured on the model"),
    ("every_second", {}, "dual_rate.refresh.kind is 'every_second'"),
])
def test_refresh_errors(kind, params, message):
    with pytest.raises(SpecError, match=message):
        resolve_refresh(kind, params, 10, cosine_logsnr(time_grid(10)))
