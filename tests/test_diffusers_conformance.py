"""Conformance of the diffusers import + affine tables with diffusers' own schedulers.

Owns the check that ``exporter.diffusers_import`` reproduces DDPMScheduler and
DDIMScheduler (timestep selection, landing points, final step, clipping) and that
the tables built from the import step exactly like diffusers' ``step()`` along
whole trajectories, plus the SpecError contract for configs that cannot be
represented. diffusers is a dev dependency: the module is skipped without it.
"""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

from dualrate.exporter.diffusers_import import DEFAULTS, import_scheduler_config, load_scheduler_config  # noqa: E402
from dualrate.exporter.errors import SpecError  # noqa: E402
from dualrate.exporter.sampler_tables import build_tables, to_x0  # noqa: E402
from dualrate.exporter.schedules import alpha_sigma, beta_table, discrete_logsnr  # noqa: E402

F64 = torch.float64
SHAPE = (2, 3, 4, 4)
TOL = 1e-10
CLASSES = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler}
PRED_TYPES = ("epsilon", "v_prediction", "sample")


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


def train_alphabar(imp) -> np.ndarray:
    """alphabar per training timestep, exactly as our tables see it (sigmoid of the float64 log-SNR)."""
    p = imp.process
    if p["beta_schedule"] == "trained_betas":
        betas = np.asarray(p["trained_betas"], dtype=np.float64)
    else:
        betas = beta_table(p["beta_schedule"], p["num_train_timesteps"], p["beta_start"], p["beta_end"])
    return alpha_sigma(discrete_logsnr(betas))[0] ** 2


def reference(cfg: dict, imp, num_steps: int | None, custom=None):
    """diffusers' scheduler for ``cfg``, fed the SAME float64 alphabar table our tables use."""
    sched = CLASSES[cfg["_class_name"]].from_config(cfg)
    if custom is not None:
        sched.set_timesteps(timesteps=list(custom))
    else:
        sched.set_timesteps(num_steps)
    # diffusers keeps alphas_cumprod in float32; swap in float64 so the comparison
    # measures the step formulas, not float32 rounding of the schedule.
    sched.alphas_cumprod = torch.from_numpy(train_alphabar(imp))
    sched.one = torch.tensor(1.0, dtype=F64)
    if isinstance(sched, DDIMScheduler):
        sched.final_alpha_cumprod = (torch.tensor(1.0, dtype=F64) if cfg.get("set_alpha_to_one", True)
                                     else sched.alphas_cumprod[0])
    return sched


def mock_model(scale: float = 1.0):
    """An analytic network output of (z, timestep): nonlinear in z so both paths must agree on z."""
    base = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=F64)

    def model(z: torch.Tensor, k: int) -> torch.Tensor:
        s = k / 1000.0
        return scale * (0.7 * torch.tanh(z) + 0.5 * base * (1.0 - s) + 0.2 * torch.sin(3.0 * z + s))
    return model


def compare(cfg: dict, num_steps: int | None = 50, eta=None, *, custom=None, model_scale: float = 1.0,
            use_clipped_model_output: bool = False) -> dict:
    """Run diffusers and the imported tables side by side over a whole trajectory.

    Each path steps its own state; the network is the same analytic function.
    Returns the max abs differences of z after every step and of x0.
    """
    imp = import_scheduler_config(cfg, num_steps, eta, timesteps=custom)
    sched = reference(cfg, imp, num_steps, custom)
    ddpm = isinstance(sched, DDPMScheduler)
    ref_ts = [int(k) for k in sched.timesteps]
    # an identity last step of diffusers may be dropped by the import (checked below)
    assert ref_ts[:len(imp.timesteps)] == list(imp.timesteps)
    tab = build_tables(imp.t, imp.logsnr, imp.sampler, imp.eta, imp.final_step)
    model = mock_model(model_scale)
    z0 = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0), dtype=F64)
    # DDPM draws its own noise: an identically seeded generator, drawn the way
    # diffusers' randn_tensor does (torch.randn(shape, generator, dtype)), only when t > 0.
    g_ref, g_ours = torch.Generator().manual_seed(1234), torch.Generator().manual_seed(1234)
    z_ref, z = z0.clone(), z0.clone()
    err_z = err_x0 = 0.0
    clipped = False
    for i, k in enumerate(ref_ts):
        if i == len(imp.timesteps):
            # diffusers' extra step timestep 0 -> alphabar[0] is the identity the import omits
            res = sched.step(model(z_ref, k), k, z_ref, eta=imp.eta, variance_noise=torch.zeros(SHAPE, dtype=F64))
            err_z = max(err_z, float((res.prev_sample - z).abs().max()))
            break
        if ddpm:
            res = sched.step(model(z_ref, k), k, z_ref, generator=g_ref)
            xi = torch.randn(SHAPE, generator=g_ours, dtype=F64) if k > 0 else torch.zeros(SHAPE, dtype=F64)
        else:
            xi = torch.randn(SHAPE, generator=g_ours, dtype=F64)
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
    return {"z": err_z, "x0": err_x0, "clipped": clipped, "imp": imp}


# ---- step-by-step conformance -------------------------------------------------------------

@pytest.mark.parametrize("pred", PRED_TYPES)
@pytest.mark.parametrize("spacing,offset", [("leading", 0), ("leading", 1), ("trailing", 0), ("linspace", 0)])
def test_ddpm_matches_diffusers(pred, spacing, offset):
    cfg = make_config("DDPMScheduler", prediction_type=pred, timestep_spacing=spacing, steps_offset=offset)
    r = compare(cfg, 50)
    assert r["imp"].sampler == "ancestral" and r["imp"].final_step == "return_x0"
    assert r["z"] <= TOL and r["x0"] <= TOL, r


@pytest.mark.parametrize("pred", PRED_TYPES)
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing,offset,to_one", [("leading", 1, True), ("trailing", 0, True),
                                                   ("leading", 1, False), ("leading", 0, False)])
def test_ddim_matches_diffusers(pred, eta, spacing, offset, to_one):
    cfg = make_config("DDIMScheduler", prediction_type=pred, timestep_spacing=spacing, steps_offset=offset,
                      set_alpha_to_one=to_one)
    r = compare(cfg, 50, eta)
    imp = r["imp"]
    assert imp.sampler == "ddim" and imp.eta == eta
    assert imp.final_step == ("return_x0" if to_one else "step")
    assert r["z"] <= TOL and r["x0"] <= TOL, r
    if not to_one and offset == 0:
        # 0 -> alphabar[0] is an identity step in diffusers; the import drops it
        assert len(imp.timesteps) == 49 and any("identity" in n for n in imp.notes)


@pytest.mark.parametrize("schedule", ["scaled_linear", "squaredcos_cap_v2"])
def test_other_beta_schedules(schedule):
    for cls, eta in (("DDPMScheduler", None), ("DDIMScheduler", 0.5)):
        cfg = make_config(cls, beta_schedule=schedule, beta_start=0.00085, beta_end=0.012,
                          prediction_type="v_prediction", timestep_spacing="trailing")
        r = compare(cfg, 20, eta)
        assert r["z"] <= TOL and r["x0"] <= TOL, (cls, r)


def test_trained_betas_custom_timesteps_and_fixed_small_log():
    betas = np.linspace(2e-4, 0.03, 200) ** 1.1
    cfg = make_config("DDPMScheduler", num_train_timesteps=200, trained_betas=betas.tolist(),
                      variance_type="fixed_small_log")
    r = compare(cfg, 17)
    assert r["z"] <= TOL and r["x0"] <= TOL, r
    assert r["imp"].process["beta_schedule"] == "trained_betas"
    custom = [190, 150, 120, 80, 41, 20, 7, 3]
    r = compare(cfg, None, custom=custom)
    assert r["imp"].timesteps == tuple(custom) and r["z"] <= TOL, r


def test_float64_alphabar_matches_diffusers_float32():
    for schedule in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        cfg = make_config("DDIMScheduler", beta_schedule=schedule)
        imp = import_scheduler_config(cfg, 10)
        ours = train_alphabar(imp)
        theirs = DDIMScheduler.from_config(cfg).alphas_cumprod.double().numpy()
        assert np.max(np.abs(ours / theirs - 1.0)) < 2e-5, schedule


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
    sched = reference(cfg, imp, 30)
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
    ("DDPMScheduler", {"trained_betas": [1e-9] * 1000}, {}, "logsnr_max"),
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
