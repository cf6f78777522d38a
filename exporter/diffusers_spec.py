"""A diffusers DDPM/DDIM scheduler config as a dualrate sampler: the grid, and ``spec from-diffusers``.

The sampler part (timesteps, grid, tables, final step, clipping, prediction type) comes
from ``diffusers_import``. A model trained on diffusers timesteps is fed exactly the
values ``set_timesteps`` produces (``tables.model_time``); one trained on log-SNR or t
gets those columns. ``spec from-diffusers`` without a model binds a declared placeholder
(one feature map of the sample's shape) that ``dualrate export`` re-binds to the real model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .diffusers_import import import_scheduler_config
from .spec import ROLE_SAMPLE, ROLE_TIME, ROLE_TIME_CTX, GraphIO, ModelSpec, Spec, TensorIO
from .spec_builder import Grid, SamplerOptions, assemble_spec

PLACEHOLDER_NOTE = ("the model binding is a placeholder (sample and time in, one feature map of the sample's "
                    "shape); `dualrate export` binds the real model")


def diffusers_grid(config: Mapping[str, Any] | str | Path, opts: SamplerOptions, time_input: str
                   ) -> tuple[Grid, SamplerOptions, Any]:
    """The grid of ``config`` sampled with ``opts.num_steps`` steps, and the options it implies
    (sampler, eta, final step, clipping come from the scheduler; refresh and guidance from ``opts``),
    and the import itself (prediction type, notes).
    DDIM's eta is ``opts.eta`` when the caller chose the ddim sampler, else diffusers' default 0."""
    eta = opts.eta if opts.sampler == "ddim" else None
    imp = import_scheduler_config(config, opts.num_steps, eta)
    model_time = {"timestep": np.asarray(imp.timesteps, np.float64), "logsnr": imp.logsnr[:-1], "t": imp.t[:-1]}
    schedule: dict[str, Any] = {**imp.process, "family": "discrete", "timesteps": list(imp.timesteps),
                                "imported_from": imp.scheduler_class}
    grid = Grid(imp.t, imp.logsnr, model_time[time_input], schedule, "discrete")
    opts = dataclasses.replace(opts, num_steps=imp.num_steps, sampler=imp.sampler, eta=imp.eta,
                               final_step=imp.final_step, clip_x0=imp.clip_x0)
    return grid, opts, imp


def spec_from_diffusers(config: str | Path | dict, num_steps: int, eta: float | None = None, *,
                        image_size: int = 64, channels: int = 4, refresh_every: int = 1,
                        time_input: str = "timestep") -> tuple[Spec, list[str]]:
    """Import the scheduler with a placeholder model binding; returns the spec and human-readable notes."""
    opts = SamplerOptions(num_steps=num_steps, sampler="ddim" if eta is not None else "ancestral",
                          eta=1.0 if eta is None else eta, refresh="every_k",
                          refresh_params={"k": refresh_every, "phase": 0})
    grid, opts, imp = diffusers_grid(config, opts, time_input)
    shape = (channels, image_size, image_size)
    tdtype = "int64" if time_input == "timestep" else "float32"
    sample = TensorIO("sample", ("batch", *shape), "float32", ROLE_SAMPLE)
    feat = TensorIO("feat0", ("batch", *shape), "float32")
    model = ModelSpec(
        sample_shape=shape, prediction=imp.prediction, time_input=time_input,
        encoder=GraphIO((sample, TensorIO("timestep", ("batch",), tdtype, ROLE_TIME)), (feat,)),
        denoiser=GraphIO((sample, TensorIO("timestep", ("batch",), tdtype, ROLE_TIME),
                          TensorIO("timestep_ctx", ("batch",), tdtype, ROLE_TIME_CTX),
                          TensorIO("feat0", feat.shape, "float32", "feature:feat0")),
                         (TensorIO("prediction", ("batch", *shape), "float32"),)))
    spec = assemble_spec(model, opts, grid, {"source": f"diffusers {imp.scheduler_class}"})
    return spec, [*imp.notes, PLACEHOLDER_NOTE]
