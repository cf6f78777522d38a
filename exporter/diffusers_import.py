"""Import a diffusers ``scheduler_config.json`` (DDPMScheduler / DDIMScheduler) into spec data.

This module owns the translation of diffusers' discrete-time sampler conventions
(timestep selection per ``timestep_spacing``, each class's previous-timestep rule,
``final_alpha_cumprod``, prediction/clip flags) into what the portable spec needs:
the sampler type and eta, the grid ``t`` and its log-SNR, the final-step rule and
the process parameters. The step math itself lives in ``sampler_tables`` and the
beta/alphabar tables in ``schedules``; nothing here re-derives them. alphabar is
diffusers' own float32 ``alphas_cumprod`` (the values the model was trained on),
rebuilt bit for bit with numpy, and log-SNR is taken from it in float64.

It does not need diffusers or torch installed: the reproduced rules were read from
diffusers 0.42 (``scheduling_ddpm.py``, ``scheduling_ddim.py``) and torch 2.13's CPU kernels, and
``tests/test_diffusers_conformance.py`` checks them against the installed copy.
Anything the affine step cannot reproduce raises ``SpecError`` naming the field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .errors import SpecError
from .jsonio import parse_json
from .schedules import BETA_SCHEDULES, alphabar_logsnr, alphas_cumprod, beta_table

SCHEDULER_CLASSES = ("DDPMScheduler", "DDIMScheduler")
PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
SPACINGS = ("leading", "trailing", "linspace")
MAX_TRAIN_TIMESTEPS = 100_000

# diffusers 0.42 __init__ defaults: a hand-written config may omit keys, and
# diffusers then uses these (note clip_sample defaults to True in both classes).
_COMMON_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
    "trained_betas": None, "clip_sample": True, "prediction_type": "epsilon", "thresholding": False,
    "dynamic_thresholding_ratio": 0.995, "clip_sample_range": 1.0, "sample_max_value": 1.0,
    "timestep_spacing": "leading", "steps_offset": 0, "rescale_betas_zero_snr": False,
}
DEFAULTS: dict[str, dict[str, Any]] = {
    "DDPMScheduler": {**_COMMON_DEFAULTS, "variance_type": "fixed_small"},
    "DDIMScheduler": {**_COMMON_DEFAULTS, "set_alpha_to_one": True},
}
# fixed_small_log computes exp(0.5 log var) = sqrt(var), the same std as fixed_small.
_DDPM_VARIANCES_OK = ("fixed_small", "fixed_small_log")


@dataclass(frozen=True, eq=False)   # eq=False: numpy fields make a generated __eq__/__hash__ meaningless
class DiffusersSchedule:
    """What a diffusers scheduler config plus a step count means for the spec.

    ``timesteps`` are the integer training timesteps the network is evaluated at
    (sampling order); ``t = timesteps / num_train_timesteps`` plus one landing
    point. Landing on alphabar = 1 is diffusers' timestep -1, so ``t[-1] = -1/T``
    there (keeps ``t`` strictly decreasing and ``t * T`` integral) and
    ``logsnr[-1] = logsnr_max`` (informational: the last step is ``return_x0``).
    """

    scheduler_class: str
    sampler: str
    eta: float
    prediction: str
    clip_x0: float | None
    final_step: str
    timesteps: tuple[int, ...]
    t: np.ndarray
    logsnr: np.ndarray
    process: dict
    notes: tuple[str, ...]

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)


def load_scheduler_config(path_or_dict: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    """A scheduler config as a dict: a mapping is copied; a path is read as JSON.

    A directory is searched for ``scheduler_config.json`` and then
    ``scheduler/scheduler_config.json`` (the layout of a diffusers pipeline repo).
    """
    if isinstance(path_or_dict, Mapping):
        return dict(path_or_dict)
    if isinstance(getattr(path_or_dict, "config", None), Mapping):
        # a diffusers scheduler object: its config plus the class name save_config would write
        return {"_class_name": type(path_or_dict).__name__, **dict(path_or_dict.config)}
    if not isinstance(path_or_dict, (str, Path)):
        raise SpecError(f"scheduler config must be a mapping or a path to scheduler_config.json; "
                        f"got {type(path_or_dict).__name__}")
    path = Path(path_or_dict)
    if path.is_dir():
        for cand in (path / "scheduler_config.json", path / "scheduler" / "scheduler_config.json"):
            if cand.is_file():
                path = cand
                break
        else:
            raise SpecError(f"scheduler config: directory {path} has no scheduler_config.json "
                            "(nor scheduler/scheduler_config.json); pass the file itself")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"scheduler config file {path} does not exist; pass the path of a diffusers "
                        "scheduler_config.json") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"scheduler config file {path} cannot be read: {exc}") from None
    data = parse_json(text, f"scheduler config file {path}", SpecError)
    if not isinstance(data, dict):
        raise SpecError(f"scheduler config file {path} holds a JSON {type(data).__name__}; "
                        "expected an object with _class_name and the scheduler's parameters")
    return data


def import_scheduler_config(config: Mapping[str, Any] | str | Path, num_steps: int | None,
                            eta: float | None = None, logsnr_max: float = 15.0, *,
                            timesteps: Sequence[int] | None = None) -> DiffusersSchedule:
    """Translate a DDPM/DDIM scheduler config sampled with ``num_steps`` steps.

    ``eta``: DDIM's ``step(eta=...)`` (default 0.0 as in diffusers); must be None or 1
    for DDPM. ``timesteps``: DDPMScheduler's ``set_timesteps(timesteps=[...])`` custom
    list (then ``num_steps`` must be None or its length); DDIM has no such option.
    """
    cfg = load_scheduler_config(config)
    cls = cfg.get("_class_name")
    if cls is None:
        raise SpecError("scheduler config has no _class_name; a diffusers scheduler_config.json names its class "
                        f"there (one of {', '.join(SCHEDULER_CLASSES)})")
    if cls not in SCHEDULER_CLASSES:
        raise SpecError(f"scheduler config _class_name is {cls!r}; only {', '.join(SCHEDULER_CLASSES)} can be "
                        "imported. For a discrete-time (DDPM-trained) model, save the config of "
                        "DDIMScheduler.from_config(...) or DDPMScheduler.from_config(...) and import that")
    defaults = DEFAULTS[cls]
    bad_keys = [k for k in cfg if not isinstance(k, str)]
    if bad_keys:
        raise SpecError(f"scheduler config keys must be strings; found {bad_keys[0]!r}")
    notes: list[str] = []
    ignored = sorted(k for k in cfg if k not in defaults and not k.startswith("_") and k != "timesteps")
    if ignored:
        notes.append(f"ignored fields that {cls} does not take (diffusers ignores them too): {', '.join(ignored)}")
    if cfg.get("_diffusers_version") is not None:
        notes.append(f"config written by diffusers {cfg['_diffusers_version']}; rules reproduced from diffusers 0.42")
    if "timesteps" in cfg:
        raise SpecError("scheduler config has a timesteps field; custom timesteps are not part of a diffusers "
                        "scheduler config: remove it and pass import_scheduler_config(..., timesteps=[...])")
    c = {k: cfg.get(k, v) for k, v in defaults.items()}

    # --- what cannot be represented ---------------------------------------------------
    if _flag(c, "thresholding"):
        raise SpecError(f"{cls}.thresholding is true: dynamic thresholding rescales x0 by a per-sample "
                        "percentile, which the spec's x0 clip (a fixed +-clip_x0) cannot express; set "
                        "thresholding to false (optionally clip_sample true) to import")
    if _flag(c, "rescale_betas_zero_snr"):
        raise SpecError(f"{cls}.rescale_betas_zero_snr is true: it sets alphabar = 0 at the last training "
                        "timestep, i.e. log-SNR = -inf, and the spec's tables need finite log-SNR; import a "
                        "config without zero-terminal-SNR rescaling (or give explicit trained_betas, all < 1, "
                        "if that approximation is acceptable)")
    if cls == "DDPMScheduler":
        vt = c["variance_type"]
        if vt not in _DDPM_VARIANCES_OK:
            raise SpecError(f"DDPMScheduler.variance_type is {vt!r}; only 'fixed_small' (the posterior variance, "
                            "the spec's ancestral step) is representable: fixed_large uses beta_t and learned* "
                            "take the variance from the network. Set variance_type to fixed_small")
        if vt == "fixed_small_log":
            notes.append("variance_type fixed_small_log gives the same std as fixed_small (exp(0.5 log var))")
        if eta is not None and _number(eta, "eta") != 1.0:
            raise SpecError(f"eta is {eta}; DDPMScheduler is the ancestral sampler (eta = 1) and has no eta: "
                            "pass eta=None, or import a DDIMScheduler config to choose eta")
        sampler, eta_v = "ancestral", 1.0
    else:
        if eta is None:
            eta_v = 0.0
            notes.append("eta not given: 0.0, the default of DDIMScheduler.step and DDIMPipeline")
        else:
            eta_v = _number(eta, "eta")
        if not 0.0 <= eta_v <= 1.0:
            raise SpecError(f"eta is {eta_v}; DDIM's eta must lie in [0, 1] (above 1 diffusers' step takes "
                            "the square root of a negative number)")
        sampler = "ddim"
    pred_type = c["prediction_type"]
    if not isinstance(pred_type, str) or pred_type not in PREDICTIONS:
        raise SpecError(f"{cls}.prediction_type is {pred_type!r}; expected one of {', '.join(PREDICTIONS)}")
    spacing = c["timestep_spacing"]
    if spacing not in SPACINGS:
        raise SpecError(f"{cls}.timestep_spacing is {spacing!r}; expected one of {', '.join(SPACINGS)}")

    # --- process: betas -> log-SNR per training timestep -------------------------------
    T = _integer(c["num_train_timesteps"], f"{cls}.num_train_timesteps", minimum=2)
    if T > MAX_TRAIN_TIMESTEPS:       # tables are built per training timestep: bound the memory
        raise SpecError(f"{cls}.num_train_timesteps is {T}; at most {MAX_TRAIN_TIMESTEPS} is supported "
                        "(diffusers models use 1000)")
    steps_offset = _integer(c["steps_offset"], f"{cls}.steps_offset", minimum=0)
    if steps_offset >= T:
        raise SpecError(f"{cls}.steps_offset is {steps_offset}; it must be below num_train_timesteps ({T})")
    process: dict[str, Any] = {"family": "discrete", "beta_schedule": c["beta_schedule"], "num_train_timesteps": T,
                               "beta_start": _number(c["beta_start"], f"{cls}.beta_start"),
                               "beta_end": _number(c["beta_end"], f"{cls}.beta_end"),
                               "timestep_spacing": spacing, "steps_offset": steps_offset}
    if c["trained_betas"] is not None:
        betas = _trained_betas(c["trained_betas"], T, cls)
        beta_field = f"{cls}.trained_betas"
        process["beta_schedule"] = "trained_betas"
        process["trained_betas"] = [float(b) for b in betas]
        notes.append("trained_betas given: beta_schedule, beta_start and beta_end are ignored (as in diffusers)")
    else:
        if c["beta_schedule"] not in BETA_SCHEDULES:
            raise SpecError(f"{cls}.beta_schedule is {c['beta_schedule']!r}; importable: "
                            f"{', '.join(BETA_SCHEDULES)}; for another schedule give the betas explicitly "
                            "as trained_betas")
        beta_field = f"{cls}.beta_start/beta_end"
        if c["beta_schedule"] != "squaredcos_cap_v2":     # a torch.linspace from beta_start to beta_end
            ends = (process["beta_start"], process["beta_end"])
            if not all(0.0 < b < 1.0 for b in ends):
                # they are the first and last betas (scaled_linear: their squares)
                raise SpecError(f"{beta_field} are {ends[0]!r}, {ends[1]!r}; with beta_schedule "
                                f"{c['beta_schedule']!r} both must lie in (0, 1)")
            process["linspace_rounding"] = "fma"     # schedules.beta_table(fused=True)
        betas = beta_table(c["beta_schedule"], T, process["beta_start"], process["beta_end"])
    # diffusers keeps betas and alphas_cumprod in float32 and the model was trained
    # on exactly those values: reproduce the table, then take log-SNR in float64.
    process["alphas_cumprod_dtype"] = "float32"
    alphabar = alphas_cumprod(betas)
    lam_train = alphabar_logsnr(alphabar)
    if not np.all(np.isfinite(lam_train)):
        k = int(np.argmax(~np.isfinite(lam_train)))
        raise SpecError(f"{beta_field} give alphas_cumprod[{k}] = {float(alphabar[k])!r} in float32 (diffusers' "
                        "dtype), i.e. log-SNR +-inf; every 1 - beta must round to a float32 in (0, 1) (betas "
                        "below ~3e-8 vanish) and the product must not underflow")
    notes.append("alphabar is diffusers' float32 alphas_cumprod table, reproduced bit for bit (torch CPU: "
                 "fused multiply-add linspace, cumprod with a float64 accumulator); log-SNR is computed from "
                 "those values in float64")
    if cls == "DDIMScheduler":
        process["set_alpha_to_one"] = _flag(c, "set_alpha_to_one")

    # --- which timesteps, and where each step lands -------------------------------------
    if timesteps is not None:
        if cls != "DDPMScheduler":
            raise SpecError("timesteps (custom) were given for DDIMScheduler, whose set_timesteps has no custom "
                            "timesteps in diffusers; use a DDPMScheduler config or num_steps")
        ts = _custom_timesteps(timesteps, T)
        if num_steps is not None and int(num_steps) != len(ts):
            raise SpecError(f"num_steps is {num_steps} but {len(ts)} custom timesteps were given; pass num_steps=None")
        process["timestep_spacing"] = "custom"
        process["custom_timesteps"] = [int(k) for k in ts]
    else:
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
            raise SpecError(f"num_steps is {num_steps!r}; expected an integer number of sampling steps")
        n = int(num_steps)
        if not 1 <= n <= T:
            raise SpecError(f"num_steps is {n}; diffusers allows 1 <= num_steps <= num_train_timesteps ({T})")
        ts = _diffusers_timesteps(spacing, T, n, steps_offset)
        if steps_offset and spacing != "leading":
            notes.append(f"steps_offset {steps_offset} has no effect with timestep_spacing {spacing!r} (as in diffusers)")
        bad = [k for k in ts if not 0 <= k < T]
        if bad:
            raise SpecError(f"{cls}.steps_offset/timestep_spacing put timestep {bad[0]} outside [0, {T - 1}] "
                            f"for num_steps={n} (diffusers would index out of range); lower steps_offset or "
                            "num_steps")
        if any(b >= a for a, b in zip(ts, ts[1:])):
            raise SpecError(f"{cls}.timestep_spacing {spacing!r} gives timesteps that do not decrease strictly "
                            f"for num_steps={n}: {ts}; choose another num_steps or spacing")

    # land[i] is the training timestep step i lands on; -1 means alphabar = 1.
    if cls == "DDPMScheduler":
        # previous_timestep(): the next entry of the list, -1 after the last one.
        land = list(ts[1:]) + [-1]
        if ts[-1] > 0:
            # diffusers clamps the variance at 1e-20 and still adds sqrt(1e-20) * noise here.
            notes.append(f"diffusers' last step (timestep {ts[-1]} -> alphabar = 1) adds 1e-10 * noise from its "
                         "variance floor; the spec's return_x0 step omits it")
    else:
        # step(): prev = t - T // N, alphabar from final_alpha_cumprod when prev < 0,
        # which is 1 (set_alpha_to_one) or alphabar[0].
        ratio = T // len(ts)
        prev = [k - ratio for k in ts]
        for i in range(len(ts) - 1):
            if prev[i] != ts[i + 1]:
                raise SpecError(
                    f"DDIMScheduler.timestep_spacing {spacing!r} with num_steps={len(ts)} is not representable: "
                    f"diffusers steps from timestep {ts[i]} to {prev[i]} (t - {T}//{len(ts)}) but evaluates the "
                    f"next step at timestep {ts[i + 1]}, so the state and the network's time disagree; the spec "
                    "has one grid for both. Use timestep_spacing 'leading', or 'trailing' with num_steps "
                    f"dividing {T}")
        last = prev[-1]
        land = list(ts[1:]) + [last if last >= 0 else (-1 if process["set_alpha_to_one"] else 0)]
        if land[-1] == ts[-1]:
            # timestep 0 -> final_alpha_cumprod = alphabar[0]: the same noise level, an exact identity.
            if len(ts) == 1:
                raise SpecError("DDIMScheduler with set_alpha_to_one false and its only step at timestep 0 "
                                "lands where it starts (an identity); use num_steps > 1 or set_alpha_to_one true")
            notes.append(f"diffusers' last step (timestep 0 -> alphabar[0]) is the identity and is omitted: "
                         f"the spec has {len(ts) - 1} steps for num_steps={len(ts)}")
            ts, land = ts[:-1], land[:-1]
        if land[-1] >= 0:
            notes.append(f"the last step lands on alphabar at timestep {land[-1]} (set_alpha_to_one false), "
                         "not on clean data; its output keeps that noise level, as in diffusers")

    final_step = "return_x0" if land[-1] == -1 else "step"
    lam_eval = lam_train[np.asarray(ts, dtype=np.int64)]
    if final_step == "return_x0":
        lm = _number(logsnr_max, "logsnr_max")
        if not lm > lam_eval[-1]:
            raise SpecError(f"logsnr_max is {lm}; it stands for alphabar = 1 at the end of the grid and must exceed "
                            f"the log-SNR of the last timestep ({lam_eval[-1]!r})")
        lam_end = lm
        notes.append(f"the last step lands on alphabar = 1 (log-SNR +inf): logsnr[-1] = {lm} is informational, "
                     "the final step is return_x0 (coefficients 0, 1, 0)")
    else:
        lam_end = lam_train[land[-1]]
    t = np.asarray(list(ts) + [land[-1]], dtype=np.float64) / T
    logsnr = np.append(lam_eval, lam_end).astype(np.float64)
    if np.any(np.diff(logsnr) <= 0):
        # float32 alphabar can repeat where betas are tiny; the spec needs a strict grid
        i = int(np.argmax(np.diff(logsnr) <= 0))
        raise SpecError(f"{beta_field} give the same float32 alphas_cumprod at timesteps {ts[i]} and {land[i]} "
                        f"of the grid ({float(alphabar[ts[i]])!r}); the spec's log-SNR must increase strictly "
                        "along the grid: choose fewer steps or larger betas")

    clip_x0 = None
    if _flag(c, "clip_sample"):
        clip_x0 = _number(c["clip_sample_range"], f"{cls}.clip_sample_range")
        if not clip_x0 > 0:
            raise SpecError(f"{cls}.clip_sample_range is {clip_x0}; expected > 0 when clip_sample is true")
        if cls == "DDIMScheduler":
            # The affine step re-derives eps from the *clipped* x0; diffusers' default
            # keeps the unclipped eps in the direction term, which no (A, B, C) can express.
            notes.append("clip_sample on DDIMScheduler: the spec's step equals diffusers' "
                         "step(..., use_clipped_model_output=True); diffusers' default (False) keeps the "
                         "unclipped eps and differs wherever clipping is active")

    t.setflags(write=False)
    logsnr.setflags(write=False)
    return DiffusersSchedule(scheduler_class=cls, sampler=sampler, eta=eta_v, prediction=PREDICTIONS[pred_type],
                             clip_x0=clip_x0, final_step=final_step, timesteps=tuple(int(k) for k in ts),
                             t=t, logsnr=logsnr, process=process, notes=tuple(notes))


def _diffusers_timesteps(spacing: str, T: int, n: int, steps_offset: int) -> list[int]:
    """set_timesteps(n) of DDPMScheduler/DDIMScheduler (identical in diffusers 0.42), same numpy ops."""
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].copy().astype(np.int64)
    elif spacing == "leading":
        ratio = T // n
        ts = (np.arange(0, n) * ratio).round()[::-1].copy().astype(np.int64)
        ts += steps_offset
    else:  # trailing
        ratio = T / n
        ts = np.round(np.arange(T, 0, -ratio)).astype(np.int64)
        ts -= 1
    out = [int(k) for k in ts]
    if len(out) != n:
        # float arange can yield an extra point; diffusers would then sample a different count
        raise SpecError(f"timestep_spacing {spacing!r} gives {len(out)} timesteps for num_steps={n} "
                        "(a floating-point artefact of diffusers' arange); choose another num_steps")
    return out


def _custom_timesteps(timesteps: Sequence[int], T: int) -> list[int]:
    ts = []
    for k in timesteps:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise SpecError(f"timesteps must hold integers; found {k!r}")
        ts.append(int(k))
    if not ts:
        raise SpecError("timesteps is empty; give at least one training timestep")
    if any(b >= a for a, b in zip(ts, ts[1:])):
        raise SpecError(f"timesteps must decrease strictly (diffusers' rule for custom timesteps); got {ts}")
    if ts[0] >= T or ts[-1] < 0:
        raise SpecError(f"timesteps must lie in [0, {T - 1}] (num_train_timesteps {T}); got {ts[0]} .. {ts[-1]}")
    return ts


def _trained_betas(value: Any, T: int, cls: str) -> np.ndarray:
    try:
        betas = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise SpecError(f"{cls}.trained_betas must be a list of numbers") from None
    if betas.ndim != 1 or len(betas) != T:
        raise SpecError(f"{cls}.trained_betas has shape {betas.shape}; expected {T} values "
                        f"(num_train_timesteps); make the two agree")
    if not np.all(np.isfinite(betas) & (betas > 0.0) & (betas < 1.0)):
        i = int(np.argmax(~(np.isfinite(betas) & (betas > 0.0) & (betas < 1.0))))
        raise SpecError(f"{cls}.trained_betas[{i}] is {betas[i]!r}; every beta must lie in (0, 1) so that "
                        "log-SNR is finite and strictly decreasing")
    return betas


def _flag(c: Mapping[str, Any], key: str) -> bool:
    v = c[key]
    if not isinstance(v, bool):
        raise SpecError(f"scheduler config {key} is {v!r}; expected true or false")
    return v


def _number(v: Any, field: str) -> float:
    try:
        ok = not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(float(v))
    except OverflowError:            # an int beyond the float range
        ok = False
    if not ok:
        raise SpecError(f"{field} is {str(v)[:40]!r}; expected a finite number")
    return float(v)


def _integer(v: Any, field: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < minimum:
        raise SpecError(f"{field} is {v!r}; expected an integer >= {minimum}")
    return int(v)
