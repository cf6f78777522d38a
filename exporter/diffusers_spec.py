"""``spec from-diffusers``: a diffusers DDPM/DDIM scheduler config as a dualrate spec.

The sampler part (grid, tables, final step, clipping, prediction type) comes from
``diffusers_import``. The model binding comes from a checkpoint when one is given;
otherwise it is a declared placeholder (sample shape and classes from options, one
feature map) that ``dualrate export`` re-binds to the real model.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

from .diffusers_import import import_scheduler_config
from .model_pair import PairInfo
from .spec import Spec
from .spec_builder import SamplerOptions, assemble_spec

PLACEHOLDER_NOTE = ("the model binding is a placeholder (one feature map of the sample's shape); "
                    "pass --checkpoint to bind a real model, or let `dualrate export` re-bind it")


def spec_from_diffusers(config: str | Path | dict, num_steps: int, eta: float | None = None, *,
                        info: PairInfo | None = None, feature_shapes: Sequence[Sequence[int]] | None = None,
                        image_size: int = 64, channels: int = 4, num_classes: int = 1,
                        refresh_every: int = 1, guidance: float = 1.0) -> tuple[Spec, list[str]]:
    """Import the scheduler and bind it to a model; returns the spec and human-readable notes."""
    imp = import_scheduler_config(config, num_steps, eta)
    notes = list(imp.notes)
    notes.append("dualrate networks take log-SNR as their time input; the discrete training timesteps are kept "
                 "in process.schedule.timesteps for networks that take those instead")
    if info is None:
        info = PairInfo(image_size=image_size, in_channels=channels, num_classes=num_classes, prediction=imp.prediction)
        feature_shapes = [(channels, image_size, image_size)]
        notes.append(PLACEHOLDER_NOTE)
    else:
        info = dataclasses.replace(info, prediction=imp.prediction)
        if imp.prediction != info.prediction:
            notes.append(f"the scheduler's prediction type {imp.prediction!r} overrides the model's")
    opts = SamplerOptions(num_steps=imp.num_steps, sampler=imp.sampler, eta=imp.eta, refresh="every_k",
                          refresh_params={"k": refresh_every, "phase": 0}, guidance=guidance,
                          final_step=imp.final_step, clip_x0=imp.clip_x0)
    schedule: dict[str, Any] = {**imp.process, "family": "discrete", "timesteps": list(imp.timesteps),
                                "imported_from": imp.scheduler_class}
    spec = assemble_spec(info, feature_shapes, opts, imp.t, imp.logsnr, schedule, "discrete",
                         {"source": f"diffusers {imp.scheduler_class}"})
    return spec, notes
