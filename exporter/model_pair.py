"""The model protocol: what any dual-rate pair must provide to be exported.

A pair is two ``torch.nn.Module``s plus a little metadata:

* ``encoder(z, logsnr, class_id) -> tuple[Tensor, ...]`` — the heavy context
  encoder; returns the feature maps the denoiser reuses;
* ``denoiser(z, logsnr, logsnr_ctx, class_id, *features) -> Tensor`` — the light
  net; returns the prediction (v, eps or x0 as ``info.prediction`` says).

``z`` is ``[B, C, H, W]`` float32, ``logsnr``/``logsnr_ctx`` are ``[B]`` float32,
``class_id`` is ``[B]`` int64 with ``info.num_classes`` as the null (unconditional) id.

The reference family (DR-UViT) is one implementation. A custom pair plugs in
through a factory ``"package.module:function"`` returning a ``DualRatePair``;
checkpoints name it in ``config.json``. Importing a factory runs code, so it is
only done when the caller opts in (``allow_factory=True`` / ``--allow-factory``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from .errors import BadInputError, CheckpointError
from .model_config import PREDICTIONS, ModelConfig


@dataclass(frozen=True)
class PairInfo:
    """What the sampler and exporter need to know about a pair."""

    image_size: int
    in_channels: int
    num_classes: int
    prediction: str = "v"
    logsnr_clamp: tuple[float, float] = (-15.0, 15.0)

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.image_size, self.image_size)


@dataclass
class DualRatePair:
    """An encoder/denoiser pair and its metadata."""

    encoder: nn.Module
    denoiser: nn.Module
    info: PairInfo

    def eval(self) -> "DualRatePair":
        self.encoder.eval()
        self.denoiser.eval()
        return self

    def state_dict(self) -> dict[str, Any]:
        """One flat state dict, keys prefixed ``encoder.`` / ``denoiser.``."""
        out = {f"encoder.{k}": v for k, v in self.encoder.state_dict().items()}
        out.update({f"denoiser.{k}": v for k, v in self.denoiser.state_dict().items()})
        return out


def info_from_config(cfg: ModelConfig) -> PairInfo:
    return PairInfo(cfg.image_size, cfg.in_channels, cfg.num_classes, cfg.prediction, cfg.logsnr_clamp)


def build_pair(model: Mapping[str, Any], allow_factory: bool = False, where: str = "config") -> DualRatePair:
    """Build a randomly initialised pair from the ``model`` section of a config."""
    model = dict(model)
    family = model.pop("family", "dr-uvit")
    if family == "dr-uvit":
        from .dr_uvit import build_dr_uvit
        from .model_config import preset

        # {"size": "digits"} alone names a preset; a full config spells every field out
        cfg = preset(model["size"]) if set(model) == {"size"} else ModelConfig.from_dict(model, where)
        enc, den = build_dr_uvit(cfg)
        return DualRatePair(enc, den, info_from_config(cfg))
    if family == "custom":
        factory = model.get("factory")
        if not isinstance(factory, str) or ":" not in factory:
            raise CheckpointError(f"{where}: model.factory must be 'package.module:function', found {factory!r}")
        if not allow_factory:
            raise CheckpointError(
                f"{where}: this checkpoint is built by the custom factory {factory!r}, which would import and run "
                "that code. Pass --allow-factory (allow_factory=True) if you trust it.")
        pair = load_factory(factory)(**dict(model.get("kwargs", {})))
        if not isinstance(pair, DualRatePair):
            raise CheckpointError(f"{where}: factory {factory!r} returned {type(pair).__name__}; expected DualRatePair")
        if pair.info.prediction not in PREDICTIONS:
            raise CheckpointError(f"{where}: factory pair predicts {pair.info.prediction!r}; expected one of {PREDICTIONS}")
        return pair
    raise CheckpointError(f"{where}: model.family is {family!r}; expected 'dr-uvit' or 'custom'")


def load_factory(spec: str) -> Any:
    """Resolve ``package.module:function``; a clear error if it does not exist."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInputError(f"cannot import factory module {module_name!r} ({exc}); is it installed / on PYTHONPATH?") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise BadInputError(f"factory {spec!r}: module {module_name!r} has no callable {attr!r}")
    return fn
