"""Conformance of the diffusers import + affine tables with diffusers' own schedulers.

Owns the check that ``exporter.diffusers_import`` reproduces DDPMScheduler and
DDIMScheduler: the float32 ``alphas_cumprod`` table bit for bit, timestep
selection, landing points, final step and clipping, and that the tables built
from the import step like diffusers' ``step()`` along whole trajectories over the
matrix of importable configurations; plus the SpecError contract for configs that
cannot be represented. diffusers is a dev dependency: the module is skipped without it.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import platform
import subprocess
import sys
from unittest import mock

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402
from diffusers.schedulers import scheduling_ddpm  # noqa: E402

from dualrate.exporter.diffusers_import import DEFAULTS, import_scheduler_config, load_scheduler_config  # noqa: E402
from dualrate.exporter.errors import SpecError  # noqa: E402
from dualrate.exporter.sampler_tables import build_tables, to_x0  # noqa: E402
from dualrate.exporter.schedules import BETA_SCHEDULES, alphabar_logsnr, alphas_cumprod, beta_table  # noqa: E402

F64 = torch.float64
SHAPE = (2, 3, 4, 4)
TOL = 1e-9
CLASSES = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler}
PRED_TYPES = ("epsilon", "v_prediction", "sample")
SCHEDULES = BETA_SCHEDULES + ("trained_betas",)


def _torch_linspace_kernel() -> str:
    """Which rounding this torch build's CPU linspace uses ('fma' on AVX2/AVX-512, 'separate' on the baseline)."""
    got = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32).numpy()
    for name, fused in (("fma", True), ("separate", False)):
        if np.array_equal(got, beta_table("linear", 1000, fused=fused)):
            return name
    return "unknown"


LINSPACE = _torch_linspace_kernel()
# The import reproduces the fused kernel; on a baseline build diffusers' linear and
# scaled_linear tables differ from it by 1 float32 ulp, and exact comparisons cannot hold.
FMA_REASON = f"torch's CPU linspace here rounds {LINSPACE!r}; the import reproduces the fused-multiply-add kernels"
needs_fma = pytest.mark.skipif(LINSPACE != "fma", reason=FMA_REASON)


def trained_betas(T: int) -> list[float]:
    return (np.linspace(2e-4, 0.03, T) ** 1.1).tolist()


def make_config(cls: str, **over) -> dict:
    cfg = {"_class_name": cls, "_diffusers_version": diffusers.__version__, "num_train_timesteps": 1000,
           "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear", "clip_sample": False,
           "prediction_type": "epsilon", "timestep_spacing": "leading", "steps_offset": 0}
    if cls == "DDPMScheduler":
        cfg["variance_type"] = "fixed_small"
    else:
        cfg["set_alpha_to_one"] = True
    cfg.update(over)
    return cfg


def reference(cfg: dict, num_steps: int | None, custom=None, *, float32_math: bool = False):
    """diffusers' scheduler for ``cfg`` with its OWN alphas_cumprod.

    diffusers forms each step's coefficients (1 - alphabar, square roots, ratios)
    from 0-d float32 tensors of that table, which rounds them to ~1e-7 whatever
    the sample's dtype. Unless ``float32_math``, the table (and ``one`` /
    ``final_alpha_cumprod``) is cast to float64 -- the same values exactly -- so
    diffusers evaluates its own formulas in float64.
    """
    sched = CLASSES[cfg["_class_name"]].from_config(cfg)
    if custom is not None:
        sched.set_timesteps(timesteps=list(custom))
    else:
        sched.set_timesteps(num_steps)
    if not float32_math:
        sched.alphas_cumprod = sched.alphas_cumprod.to(F64)
        if isinstance(sched, DDPMScheduler):
            sched.one = sched.one.to(F64)
        else:
            sched.final_alpha_cumprod = sched.final_alpha_cumprod.to(F64)
    return sched


def mock_model(scale: float = 1.0):
    """An analytic network output of (z, timestep): nonlinear in z so both paths must agree on z."""
    base = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=F64)

    def model(z: torch.Tensor, k: int) -> torch.Tensor:
        s = k / 1000.0
        return scale * (0.7 * torch.tanh(z) + 0.5 * base * (1.0 - s) + 0.2 * torch.sin(3.0 * z + s))
    return model


def check_import_matches(imp, sched) -> None:
    """The imported grid is exactly diffusers' timesteps and its log-SNR is that of diffusers' own table."""
    ref_ts = [int(k) for k in sched.timesteps]
    if list(imp.timesteps) != ref_ts:
        # diffusers' identity last step 0 -> alphabar[0] is the one thing the import may drop
        assert list(imp.timesteps) == ref_ts[:-1] and ref_ts[-1] == 0, (imp.timesteps, ref_ts)
        assert any("identity" in n for n in imp.notes)
    abar = sched.alphas_cumprod.numpy()       # float32 values (maybe held in float64, see reference)
    T = len(abar)
    want = alphabar_logsnr(abar[[round(t * T) for t in imp.t[:-1]]])
    assert np.array_equal(imp.logsnr[:-1], want), np.max(np.abs(imp.logsnr[:-1] - want))
    if imp.final_step == "step":
        assert imp.logsnr[-1] == alphabar_logsnr(abar[round(imp.t[-1] * T)])
    assert imp.process["alphas_cumprod_dtype"] == "float32"


def compare(cfg: dict, num_steps: int | None = 50, eta=None, *, custom=None, model_scale: float = 1.0,
            use_clipped_model_output: bool = False, float32_math: bool = False) -> dict:
    """Run diffusers and the imported tables side by side over a whole trajectory.

    Each path steps its own state; the network is the same analytic function and
    both paths get the same noise xi (DDPM: injected in place of diffusers'
    randn_tensor; DDIM: as variance_noise). Returns the max abs differences of z
    after every step and of x0.
    """
    if cfg.get("trained_betas") is None and cfg.get("beta_schedule") != "squaredcos_cap_v2" and LINSPACE != "fma":
        pytest.skip(FMA_REASON)
    imp = import_scheduler_config(cfg, num_steps, eta, timesteps=custom)
    sched = reference(cfg, num_steps, custom, float32_math=float32_math)
    check_import_matches(imp, sched)
    ddpm = isinstance(sched, DDPMScheduler)
    ref_ts = [int(k) for k in sched.timesteps]
    tab = build_tables(imp.t, imp.logsnr, imp.sampler, imp.eta, imp.final_step)
    model = mock_model(model_scale)
    gen = torch.Generator().manual_seed(1234)
    noise = {}

    def injected_randn(shape, generator=None, device=None, dtype=None, layout=None):
        assert tuple(shape) == SHAPE and dtype == F64
        noise["drawn"] = noise.get("drawn", 0) + 1
        return noise["xi"]

    z_ref = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=F64)
    z = z_ref.clone()
    err_z = err_x0 = 0.0
    clipped = False
    with mock.patch.object(scheduling_ddpm, "randn_tensor", injected_randn):
        for i, k in enumerate(ref_ts):
            if i == len(imp.timesteps):
                # diffusers' extra step timestep 0 -> alphabar[0] is the identity the import omits
                res = sched.step(model(z_ref, k), k, z_ref, eta=imp.eta, variance_noise=torch.zeros(SHAPE, dtype=F64),
                                 use_clipped_model_output=use_clipped_model_output)
                err_z = max(err_z, float((res.prev_sample - z).abs().max()))
                break
            xi = noise["xi"] = torch.randn(SHAPE, generator=gen, dtype=F64)
            if ddpm:
                res = sched.step(model(z_ref, k), k, z_ref)
            else:
                res = sched.step(model(z_ref, k), k, z_ref, eta=imp.eta, variance_noise=xi,
                                 use_clipped_model_output=use_clipped_model_output)
            x0 = to_x0(imp.prediction, model(z, k), z, float(tab["alpha"][i]), float(tab["sigma"][i]))
            if imp.clip_x0 is not None:
                clipped |= bool((x0.abs() > imp.clip_x0).any())
                x0 = x0.clamp(-imp.clip_x0, imp.clip_x0)      # clip before forming the step
            z = float(tab["coef_z"][i]) * z + float(tab["coef_x0"][i]) * x0 + float(tab["coef_noise"][i]) * xi
            if ddpm and i == len(ref_ts) - 1 and k > 0:
                # diffusers clamps this step's variance (exactly 0) at 1e-20 and adds
                # sqrt(1e-20) * noise; the spec's return_x0 step omits it (noted by the import).
                assert any("variance floor" in n for n in imp.notes)
                z = z + 1e-10 * xi
            err_z = max(err_z, float((z - res.prev_sample).abs().max()))
            err_x0 = max(err_x0, float((x0 - res.pred_original_sample).abs().max()))
            z_ref = res.prev_sample
    if ddpm:    # diffusers draws noise exactly where the timestep is > 0
        assert noise.get("drawn", 0) == sum(k > 0 for k in ref_ts)
    return {"z": err_z, "x0": err_x0, "clipped": clipped, "imp": imp}


# ---- the float32 table ------------------------------------------------------------------------

@needs_fma
def test_tables_are_diffusers_float32_bit_for_bit():
    rng = np.random.default_rng(0)
    cases = [(kind, T, 1e-4, 0.02) for kind in BETA_SCHEDULES for T in (2, 3, 17, 1000, 1001, 4000)]
    cases += [("scaled_linear", 1000, 0.00085, 0.012)]
    cases += [(kind, int(rng.integers(2, 3000)), float(10 ** rng.uniform(-6, -2)), float(10 ** rng.uniform(-3, -0.5)))
              for kind in BETA_SCHEDULES for _ in range(8)]
    for kind, T, lo, hi in cases:
        sched = DDPMScheduler(num_train_timesteps=T, beta_start=lo, beta_end=hi, beta_schedule=kind)
        betas = beta_table(kind, T, lo, hi)
        assert betas.dtype == np.float32 and np.array_equal(betas, sched.betas.numpy()), (kind, T, lo, hi)
        assert np.array_equal(alphas_cumprod(betas), sched.alphas_cumprod.numpy()), (kind, T, lo, hi)
    betas = trained_betas(300)
    sched = DDIMScheduler(num_train_timesteps=300, trained_betas=betas)
    assert np.array_equal(alphas_cumprod(np.asarray(betas)), sched.alphas_cumprod.numpy())


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="ATEN_CPU_CAPABILITY is x86's")
def test_both_torch_linspace_kernels_are_modelled():
    """torch's baseline x86 kernel rounds twice: ``beta_table(fused=False)`` is that table."""
    assert LINSPACE in ("fma", "separate")
    code = ("import sys, torch; sys.stdout.write(torch.backends.cpu.get_cpu_capability() + ' ' + "
            "torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float32).numpy().tobytes().hex())")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    cap, hexed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True).stdout.split()
    assert cap == "DEFAULT"
    got = np.frombuffer(bytes.fromhex(hexed), dtype=np.float32)
    assert np.array_equal(got ** 2, beta_table("scaled_linear", 1000, 0.00085, 0.012, fused=False))
    assert not np.array_equal(got ** 2, beta_table("scaled_linear", 1000, 0.00085, 0.012))


# ---- step-by-step conformance: the matrix ---------------------------------------------------

MATRIX_STEPS = 20


def _matrix() -> list:
    """Every importable DDPM/DDIM configuration (cls, schedule, pred, spacing, offset, to_one, eta, clip)."""
    rows = []
    for schedule, pred, spacing, offset, clip in itertools.product(SCHEDULES, PRED_TYPES, ("leading", "trailing",
                                                                   "linspace"), (0, 1), (False, True)):
        rows.append(("DDPMScheduler", schedule, pred, spacing, offset, None, None, clip))
        for to_one, eta in itertools.product((True, False), (0.0, 0.5)):
            rows.append(("DDIMScheduler", schedule, pred, spacing, offset, to_one, eta, clip))
    return rows


def _row_config(cls, schedule, pred, spacing, offset, to_one, clip) -> tuple[dict, int]:
    # DDIM + linspace: steps of T//N must hit linspace(0, T-1, N).round(), true only for N = T
    T = MATRIX_STEPS if cls == "DDIMScheduler" and spacing == "linspace" else 1000
    over = {"num_train_timesteps": T, "prediction_type": pred, "timestep_spacing": spacing, "steps_offset": offset,
            "clip_sample": clip}
    if schedule == "trained_betas":
        over["trained_betas"] = trained_betas(T)
    else:
        over["beta_schedule"] = schedule
    if schedule == "scaled_linear":
        over.update(beta_start=0.00085, beta_end=0.012)
    if to_one is not None:
        over["set_alpha_to_one"] = to_one
    return make_config(cls, **over), MATRIX_STEPS


MATRIX = _matrix()


@pytest.mark.parametrize("cls,schedule,pred,spacing,offset,to_one,eta,clip", MATRIX,
                         ids=["-".join(map(str, row)) for row in MATRIX])
def test_step_matches_diffusers(cls, schedule, pred, spacing, offset, to_one, eta, clip):
    cfg, n = _row_config(cls, schedule, pred, spacing, offset, to_one, clip)
    # DDIM clips x0 and then re-derives eps from it only with use_clipped_model_output
    # (the import's note); DDPM's posterior mean is affine in the clipped x0 anyway.
    r = compare(cfg, n, eta, use_clipped_model_output=clip, model_scale=2.0 if clip else 1.0)
    imp = r["imp"]
    print(f"max |dz| {r['z']:.3e}  max |dx0| {r['x0']:.3e}")
    assert r["z"] <= TOL and r["x0"] <= TOL, r
    assert imp.clip_x0 == (1.0 if clip else None) and r["clipped"] == clip
    if cls == "DDPMScheduler":
        assert imp.sampler == "ancestral" and imp.final_step == "return_x0"
    else:
        assert imp.sampler == "ddim" and imp.eta == eta
        assert imp.final_step == ("return_x0" if to_one else "step")


def test_ddim_trailing_offset_without_alpha_to_one():
    """trailing, steps_offset 1 (ignored by trailing), set_alpha_to_one false: lands on alphabar[0]."""
    cfg = make_config("DDIMScheduler", beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                      timestep_spacing="trailing", steps_offset=1, set_alpha_to_one=False,
                      prediction_type="v_prediction")
    for eta in (0.0, 0.5):
        r = compare(cfg, 50, eta)
        imp = r["imp"]
        assert imp.timesteps == tuple(range(999, 0, -20)) and imp.final_step == "step" and imp.t[-1] == 0.0
        assert r["z"] <= TOL and r["x0"] <= TOL, r
        assert any("steps_offset 1 has no effect" in n for n in imp.notes)


def test_diffusers_float32_step_arithmetic_is_the_remaining_gap():
    """Untouched, diffusers forms its step coefficients in float32 (~1e-7 relative), so it is
    ~1e-6 away from the exact step here (far more where x0 = z / alpha is huge, e.g. squaredcos eps)."""
    gaps = []
    for cls, eta in (("DDPMScheduler", None), ("DDIMScheduler", 0.0), ("DDIMScheduler", 0.5)):
        cfg = make_config(cls, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")
        exact = compare(cfg, 50, eta)
        f32 = compare(cfg, 50, eta, float32_math=True)
        assert exact["z"] <= TOL
        gaps.append(f32["z"])
    print(f"diffusers with float32 step arithmetic: max |dz| {max(gaps):.3e}")
    assert 1e-9 < max(gaps) < 1e-4


def test_trained_betas_custom_timesteps_and_fixed_small_log():
    cfg = make_config("DDPMScheduler", num_train_timesteps=200, trained_betas=trained_betas(200),
                      variance_type="fixed_small_log")
    r = compare(cfg, 17)
    assert r["z"] <= TOL and r["x0"] <= TOL, r
    assert r["imp"].process["beta_schedule"] == "trained_betas"
    custom = [190, 150, 120, 80, 41, 20, 7, 3]
    r = compare(cfg, None, custom=custom)
    assert r["imp"].timesteps == tuple(custom) and r["z"] <= TOL, r


def test_ddim_identity_last_step_is_dropped():
    cfg = make_config("DDIMScheduler", set_alpha_to_one=False)
    r = compare(cfg, 50, 0.5)
    assert len(r["imp"].timesteps) == 49 and r["z"] <= TOL, r


# ---- timestep selection and the grid ------------------------------------------------------

@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timestep_selection_matches_set_timesteps(spacing):
    for n in list(range(1, 40)) + [50, 64, 100, 250, 333, 500, 999, 1000]:
        offset = 1 if spacing == "leading" and n < 1000 else 0
        for cls in CLASSES:
            cfg = make_config(cls, timestep_spacing=spacing, steps_offset=offset)
            sched = CLASSES[cls].from_config(cfg)
            sched.set_timesteps(n)
            ref = [int(k) for k in sched.timesteps]
            try:
                imp = import_scheduler_config(cfg, n)
            except SpecError as exc:
                # only DDIM's inconsistent landing (prev = t - T//N != next timestep) may refuse
                assert cls == "DDIMScheduler" and "timestep_spacing" in str(exc), (cls, n, exc)
                assert any(a - 1000 // n != b for a, b in zip(ref, ref[1:])), (n, ref)
                continue
            assert list(imp.timesteps) == ref, (cls, spacing, n)
            t = imp.t
            assert len(t) == len(ref) + 1 and np.all(np.diff(t) < 0)
            assert np.all(np.diff(imp.logsnr) > 0) and np.all(np.isfinite(imp.logsnr))
            assert np.array_equal(t[:-1] * 1000, np.asarray(ref, dtype=np.float64))
            if imp.final_step == "return_x0":
                assert t[-1] == -1 / 1000 and imp.logsnr[-1] == 15.0


def test_ddim_eta_default_and_tables_final_step():
    imp = import_scheduler_config(make_config("DDIMScheduler", steps_offset=1), 25)
    assert imp.eta == 0.0 and any("eta not given" in n for n in imp.notes)
    tab = build_tables(imp.t, imp.logsnr, imp.sampler, imp.eta, imp.final_step)
    assert (tab["coef_z"][-1], tab["coef_x0"][-1], tab["coef_noise"][-1]) == (0.0, 1.0, 0.0)


def test_defaults_match_installed_diffusers():
    for name, cls in CLASSES.items():
        params = inspect.signature(cls.__init__).parameters
        theirs = {k: p.default for k, p in params.items() if k != "self"}
        assert theirs == DEFAULTS[name], name


# ---- clipping ------------------------------------------------------------------------------

def test_clip_sample_is_applied_to_x0_before_the_step():
    # DDPM: the posterior mean is affine in (z, clipped x0), so the step matches exactly
    cfg = make_config("DDPMScheduler", prediction_type="sample", clip_sample=True, clip_sample_range=0.8)
    r = compare(cfg, 30, model_scale=2.0)
    assert r["imp"].clip_x0 == 0.8 and r["clipped"]
    assert r["z"] <= TOL and r["x0"] <= TOL, r
    # the step is formed from the clipped x0: one step from the unclipped x0 differs
    imp = r["imp"]
    sched = reference(cfg, 30)
    tab = build_tables(imp.t, imp.logsnr, imp.sampler, imp.eta, imp.final_step)
    z = torch.randn(SHAPE, generator=torch.Generator().manual_seed(3), dtype=F64)
    out = 2.5 * torch.tanh(2 * z)
    k, i = int(sched.timesteps[5]), 5
    res = sched.step(out, k, z, generator=torch.Generator().manual_seed(9))
    xi = torch.randn(SHAPE, generator=torch.Generator().manual_seed(9), dtype=F64)
    assert float(res.pred_original_sample.abs().max()) <= 0.8

    def step(x0):
        return float(tab["coef_z"][i]) * z + float(tab["coef_x0"][i]) * x0 + float(tab["coef_noise"][i]) * xi
    assert float((step(out.clamp(-0.8, 0.8)) - res.prev_sample).abs().max()) <= TOL
    assert float((step(out) - res.prev_sample).abs().max()) > 1e-3


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_clip_matches_use_clipped_model_output(eta):
    cfg = make_config("DDIMScheduler", prediction_type="epsilon", clip_sample=True, steps_offset=1)
    r = compare(cfg, 30, eta, use_clipped_model_output=True)
    assert r["clipped"] and r["z"] <= TOL and r["x0"] <= TOL, r
    assert any("use_clipped_model_output=True" in n for n in r["imp"].notes)
    # diffusers' default keeps the unclipped eps: not representable, and it shows
    assert compare(cfg, 30, eta)["z"] > 1e-3


# ---- what cannot be represented -------------------------------------------------------------

ERRORS = [
    ("DDPMScheduler", {"thresholding": True}, {}, "thresholding"),
    ("DDIMScheduler", {"thresholding": True}, {}, "thresholding"),
    ("DDPMScheduler", {"variance_type": "fixed_large"}, {}, "variance_type"),
    ("DDPMScheduler", {"variance_type": "learned_range"}, {}, "variance_type"),
    ("DDIMScheduler", {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}, {}, "rescale_betas_zero_snr"),
    ("PNDMScheduler", {}, {}, "_class_name"),
    (None, {}, {}, "_class_name"),
    ("DDPMScheduler", {"prediction_type": "flow"}, {}, "prediction_type"),
    ("DDIMScheduler", {"timestep_spacing": "karras"}, {}, "timestep_spacing"),
    ("DDPMScheduler", {}, {"num_steps": 0}, "num_steps"),
    ("DDIMScheduler", {}, {"num_steps": 1001}, "num_steps"),
    ("DDPMScheduler", {}, {"eta": 0.5}, "eta"),
    ("DDIMScheduler", {}, {"eta": 1.5}, "eta"),
    ("DDIMScheduler", {"timestep_spacing": "linspace"}, {}, "timestep_spacing"),
    ("DDIMScheduler", {"timestep_spacing": "trailing"}, {"num_steps": 30}, "timestep_spacing"),
    ("DDPMScheduler", {"beta_schedule": "sigmoid"}, {}, "beta_schedule"),
    ("DDPMScheduler", {"trained_betas": [0.01] * 10}, {}, "trained_betas"),
    ("DDPMScheduler", {"trained_betas": [0.0] * 1000}, {}, "trained_betas"),
    ("DDPMScheduler", {"steps_offset": 1}, {"num_steps": 1000}, "steps_offset"),
    ("DDPMScheduler", {"timesteps": [999, 500]}, {}, "timesteps"),
    ("DDIMScheduler", {}, {"num_steps": None, "timesteps": [999, 500]}, "timesteps"),
    ("DDPMScheduler", {}, {"num_steps": None, "timesteps": [500, 999]}, "timesteps"),
    ("DDPMScheduler", {"clip_sample": "yes"}, {}, "clip_sample"),
    ("DDPMScheduler", {"clip_sample": True, "clip_sample_range": 0}, {}, "clip_sample_range"),
    ("DDPMScheduler", {"trained_betas": [2e-7] * 1000}, {}, "logsnr_max"),
    # 1 - 1e-9 is 1.0 in float32: alphabar = 1, log-SNR +inf
    ("DDPMScheduler", {"trained_betas": [1e-9] * 1000}, {}, "trained_betas"),
    # alphabar stops moving in float32 from timestep 500 on: the grid repeats a log-SNR
    ("DDPMScheduler", {"trained_betas": [0.01] * 500 + [1e-8] * 500}, {}, "trained_betas"),
    ("DDPMScheduler", {"beta_start": 0.0}, {}, "beta_start"),
    ("DDIMScheduler", {"beta_schedule": "scaled_linear", "beta_end": -0.01}, {}, "beta_end"),
]


@pytest.mark.parametrize("cls,over,kwargs,field", ERRORS, ids=[f"{e[3]}-{i}" for i, e in enumerate(ERRORS)])
def test_unrepresentable_configs_raise(cls, over, kwargs, field):
    cfg = make_config(cls or "DDPMScheduler", **over)
    if cls is None:
        del cfg["_class_name"]
    elif cls not in CLASSES:
        cfg["_class_name"] = cls
    kwargs = {"num_steps": 50, **kwargs}
    with pytest.raises(SpecError) as exc:
        import_scheduler_config(cfg, **kwargs)
    assert field in str(exc.value), str(exc.value)


def test_unknown_fields_are_noted():
    cfg = make_config("DDIMScheduler", use_karras_sigmas=False, variance_type="fixed_small")
    imp = import_scheduler_config(cfg, 10)
    assert any("use_karras_sigmas" in n and "variance_type" in n for n in imp.notes)


# ---- files ---------------------------------------------------------------------------------

def test_round_trip_from_json_file(tmp_path):
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    sched.save_config(tmp_path)           # writes tmp_path/scheduler_config.json as diffusers does
    path = tmp_path / "scheduler_config.json"
    from_dir = import_scheduler_config(tmp_path, 50, 0.0)
    from_file = import_scheduler_config(str(path), 50, 0.0)
    from_dict = import_scheduler_config(json.loads(path.read_text()), 50, 0.0)
    for imp in (from_file, from_dict):
        assert imp.timesteps == from_dir.timesteps and imp.process == from_dir.process
        assert np.array_equal(imp.t, from_dir.t) and np.array_equal(imp.logsnr, from_dir.logsnr)
    imp = from_file
    assert (imp.prediction, imp.final_step, imp.clip_x0) == ("v", "step", None)
    assert imp.process["set_alpha_to_one"] is False and imp.t[-1] == 0.0
    assert json.loads(json.dumps(imp.process)) == imp.process
    assert any("diffusers" in n for n in imp.notes)
    r = compare(load_scheduler_config(path), 50, 0.0)
    assert r["z"] <= TOL and r["x0"] <= TOL, r


def test_load_errors(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_scheduler_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_scheduler_config(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(SpecError, match="expected an object"):
        load_scheduler_config(tmp_path / "list.json")
    with pytest.raises(SpecError, match="no scheduler_config.json"):
        load_scheduler_config(tmp_path)
