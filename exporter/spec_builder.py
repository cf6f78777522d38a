"""Build a spec from sampler options and a model pair: grid, tables, refresh list, I/O binding.

This is the only place that turns user-facing options (steps, sampler, refresh
every K, guidance, ...) into the normative spec; runtimes never re-derive it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from .errors import BadInputError
from .model_pair import PairInfo
from .refresh import resolve_refresh
from .sampler_tables import build_tables
from .schedules import cosine_logsnr, time_grid
from .spec import (DualRateSpec, GraphIO, GuidanceSpec, ModelSpec, NoiseSpec, ProcessSpec, RefreshSpec, RngSpec,
                   SamplerSpec, Spec, Tables, TensorIO)

ENCODER_INPUTS = ("z", "logsnr", "class_id")
DENOISER_INPUTS = ("z", "logsnr", "logsnr_ctx", "class_id")
DENOISER_OUTPUT = "prediction"


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


def feature_names(count: int) -> list[str]:
    return [f"feat{i}" for i in range(count)]


def graph_io(info: PairInfo, feature_shapes: Sequence[Sequence[int]]) -> tuple[GraphIO, GraphIO]:
    """The I/O binding of both graphs; the batch axis is the symbol ``batch``."""
    c, h, w = info.sample_shape
    z = TensorIO("z", ("batch", c, h, w), "float32", "z")
    cls = TensorIO("class_id", ("batch",), "int64", "class_id")
    feats = [TensorIO(n, ("batch", *map(int, s)), "float32") for n, s in zip(feature_names(len(feature_shapes)), feature_shapes)]
    enc = GraphIO(inputs=(z, TensorIO("logsnr", ("batch",), "float32", "logsnr[i]"), cls), outputs=tuple(feats))
    den = GraphIO(
        inputs=(z, TensorIO("logsnr", ("batch",), "float32", "logsnr[i]"),
                TensorIO("logsnr_ctx", ("batch",), "float32", "logsnr[refresh]"), cls,
                *(TensorIO(f.name, f.shape, f.dtype, f"encoder.{f.name}") for f in feats)),
        outputs=(TensorIO(DENOISER_OUTPUT, ("batch", c, h, w), "float32"),))
    return enc, den


def make_spec(info: PairInfo, feature_shapes: Sequence[Sequence[int]], opts: SamplerOptions,
              provenance: dict[str, Any] | None = None, runner: Any = None) -> Spec:
    """Resolve options into a validated spec (continuous cosine schedule, uniform t grid)."""
    if opts.sampler == "ancestral" and opts.eta != 1.0:
        raise BadInputError(f"--eta {opts.eta} was given with the ancestral sampler, which has no eta; "
                            "use --sampler ddim to choose eta")
    lo, hi = info.logsnr_clamp
    t = time_grid(opts.num_steps)
    schedule = {"family": "cosine", "logsnr_min": lo, "logsnr_max": hi, "shift": opts.logsnr_shift}
    return assemble_spec(info, feature_shapes, opts, t, cosine_logsnr(t, lo, hi, opts.logsnr_shift),
                         schedule, "uniform_t", provenance, runner)


def assemble_spec(info: PairInfo, feature_shapes: Sequence[Sequence[int]], opts: SamplerOptions,
                  t: np.ndarray, logsnr: np.ndarray, schedule: dict[str, Any], grid: str,
                  provenance: dict[str, Any] | None = None, runner: Any = None) -> Spec:
    """Tables, refresh list and I/O binding for a given grid; validated before it is returned.

    The ``calibrated`` refresh generator is measured on the model: it needs ``runner`` (a
    reference runner of the pair) and starts from the every-step schedule it then thins.
    """
    tables = build_tables(t, logsnr, opts.sampler, opts.eta, opts.final_step)
    calibrated = opts.refresh == "calibrated"
    if calibrated and runner is None:
        raise BadInputError("the calibrated refresh schedule is measured on the model, and none is at hand here; "
                            "use it where a checkpoint is loaded (dualrate export/sample --refresh-calibrated T)")
    refresh, refresh_params = ("every_k", {"k": 1, "phase": 0}) if calibrated else (opts.refresh, opts.refresh_params)
    refresh_steps = resolve_refresh(refresh, refresh_params, opts.num_steps, logsnr)
    enc, den = graph_io(info, feature_shapes)
    spec = Spec(
        model=ModelSpec(sample_shape=info.sample_shape, num_classes=info.num_classes, null_class=info.null_class,
                        prediction=info.prediction, encoder=enc, denoiser=den,
                        logsnr_clamp=tuple(info.logsnr_clamp)),
        process=ProcessSpec(schedule=dict(schedule)),
        sampler=SamplerSpec(type=opts.sampler, eta=opts.eta, num_steps=opts.num_steps,
                            tables=Tables(**{k: tuple(float(x) for x in v) for k, v in tables.items()}),
                            clip_x0=opts.clip_x0, final_step=opts.final_step, time_grid=grid),
        dual_rate=DualRateSpec(refresh=RefreshSpec(refresh, dict(refresh_params)),
                               resolved_refresh_steps=refresh_steps),
        noise=NoiseSpec(rng=RngSpec(kind=opts.rng, seed=None if opts.rng == "external" else opts.seed)),
        guidance=GuidanceSpec(scale=opts.guidance, interval_logsnr=opts.guidance_interval),
        provenance=dict(provenance or {}),
    )
    spec.validate()
    if calibrated:
        from .refresh_calibration import calibrate
        return calibrate(runner, spec, opts.refresh_params)
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
