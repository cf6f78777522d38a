"""Build a spec from sampler options and a model's graph signatures: grid, tables, refresh list.

This is the only place that turns user-facing options (steps, sampler, refresh
every K, guidance, ...) into the normative spec; runtimes never re-derive it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from .errors import BadInputError
from .refresh import resolve_refresh
from .sampler_tables import build_tables
from .schedules import cosine_logsnr, time_grid
from .spec import (DualRateSpec, GuidanceSpec, ModelSpec, NoiseSpec, ProcessSpec, RefreshSpec, RngSpec, SamplerSpec,
                   Spec, Tables)

@dataclass(frozen=True)
class SamplerOptions:
    """What a user chooses at export time (CLI flags map 1:1)."""

    num_steps: int = 32
    sampler: str = "ancestral"
    eta: float = 1.0
    refresh: str = "every_k"
    refresh_params: dict[str, Any] = field(default_factory=lambda: {"k": 4, "phase": 0})
    guidance: float = 1.0
    guidance_interval: tuple[float, float] | None = None
    final_step: str = "return_x0"
    clip_x0: float | None = None
    logsnr_shift: float = 0.0
    rng: str = "philox4x32-10"
    seed: int = 0


@dataclass(frozen=True)
class Grid:
    """The time grid of a sampler: ``t`` and ``logsnr`` (N+1), what the networks are fed per
    step (``model_time``, N), and the schedule facts the spec records."""

    t: np.ndarray
    logsnr: np.ndarray
    model_time: np.ndarray
    schedule: dict[str, Any]
    kind: str                        # uniform_t | discrete


def cosine_grid(opts: SamplerOptions, time_input: str, logsnr_clamp: tuple[float, float]) -> Grid:
    """The continuous cosine schedule on a uniform t grid (the DR-UViT family's)."""
    if time_input == "timestep":
        raise BadInputError("the model takes diffusers timesteps, which need its scheduler config "
                            "(scheduler_config=...) to place the steps")
    lo, hi = logsnr_clamp
    t = time_grid(opts.num_steps)
    lam = cosine_logsnr(t, lo, hi, opts.logsnr_shift)
    schedule = {"family": "cosine", "logsnr_min": lo, "logsnr_max": hi, "shift": opts.logsnr_shift}
    return Grid(t, lam, (lam if time_input == "logsnr" else t)[:-1], schedule, "uniform_t")


def make_spec(model: ModelSpec, opts: SamplerOptions, provenance: dict[str, Any] | None = None,
              runner_for: Callable[[Spec], Any] | None = None) -> Spec:
    """Resolve options into a validated spec (continuous cosine schedule, uniform t grid)."""
    return assemble_spec(model, opts, cosine_grid(opts, model.time_input, model.logsnr_clamp), provenance, runner_for)


def assemble_spec(model: ModelSpec, opts: SamplerOptions, grid: Grid, provenance: dict[str, Any] | None = None,
                  runner_for: Callable[[Spec], Any] | None = None, nulls: dict[str, Any] | None = None) -> Spec:
    """Tables, refresh list and the model binding for a grid; validated before it is returned.

    The ``calibrated`` refresh generator is measured on the model: it needs ``runner_for`` (a
    reference runner of the model for a spec) and starts from the every-step schedule it then thins.
    """
    if opts.sampler == "ancestral" and opts.eta != 1.0:
        raise BadInputError(f"--eta {opts.eta} was given with the ancestral sampler, which has no eta; "
                            "use --sampler ddim to choose eta")
    tables = build_tables(grid.t, grid.logsnr, opts.sampler, opts.eta, opts.final_step)
    tables["model_time"] = np.asarray(grid.model_time, np.float64)
    calibrated = opts.refresh == "calibrated"
    if calibrated and runner_for is None:
        raise BadInputError("the calibrated refresh schedule is measured on the model, and none is at hand here; "
                            "use it where a checkpoint is loaded (dualrate export/sample --refresh-calibrated T)")
    refresh, refresh_params = ("every_k", {"k": 1, "phase": 0}) if calibrated else (opts.refresh, opts.refresh_params)
    refresh_steps = resolve_refresh(refresh, refresh_params, opts.num_steps, grid.logsnr)
    spec = Spec(
        model=model,
        process=ProcessSpec(schedule=dict(grid.schedule)),
        sampler=SamplerSpec(type=opts.sampler, eta=opts.eta, num_steps=opts.num_steps,
                            tables=Tables(**{k: tuple(float(x) for x in v) for k, v in tables.items()}),
                            clip_x0=opts.clip_x0, final_step=opts.final_step, time_grid=grid.kind),
        dual_rate=DualRateSpec(refresh=RefreshSpec(refresh, dict(refresh_params)),
                               resolved_refresh_steps=refresh_steps),
        noise=NoiseSpec(rng=RngSpec(kind=opts.rng, seed=None if opts.rng == "external" else opts.seed)),
        guidance=GuidanceSpec(scale=opts.guidance, interval_logsnr=opts.guidance_interval),
        provenance=dict(provenance or {}),
    )
    spec.validate()
    if calibrated:
        from .refresh_calibration import calibrate
        return calibrate(runner_for(spec), spec, opts.refresh_params, nulls)
    return spec


def with_refresh_steps(spec: Spec, steps: Sequence[int], kind: str = "explicit",
                       params: dict[str, Any] | None = None) -> Spec:
    """A copy of ``spec`` with another resolved refresh list (validated); ``params`` describe how it was made."""
    import dataclasses

    if params is None:
        params = {"steps": list(steps)} if kind == "explicit" else {"k": 1, "phase": 0}
    dual = dataclasses.replace(spec.dual_rate, refresh=RefreshSpec(kind, params), resolved_refresh_steps=tuple(steps))
    out = dataclasses.replace(spec, dual_rate=dual)
    out.validate()
    return out


def every_step(spec: Spec) -> Spec:
    """The same sampler with the encoder at every step: the heavy single-rate reference."""
    return with_refresh_steps(spec, range(spec.sampler.num_steps), kind="every_k")
