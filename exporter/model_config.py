"""Model configurations of the DR-UViT family: sizes are data, not code paths.

A ``ModelConfig`` describes both networks of a dual-rate pair. Named sizes
(``tiny``, ``digits``, ``small-32``, ``small-64``) are presets; a checkpoint's
``config.json`` stores the full resolved config so it never depends on presets
that may change later.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from .errors import CheckpointError

PREDICTIONS = ("v", "eps", "x0")


@dataclass(frozen=True)
class NetConfig:
    """Widths and depths of one UViT (encoder or denoiser)."""

    widths: tuple[int, ...]          # channels per resolution level, full resolution first
    res_blocks: int                  # ResBlocks per level on the down path (up path: same)
    transformer_depth: int           # adaLN blocks on the lowest grid
    transformer_dim: int
    heads: int
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))


@dataclass(frozen=True)
class ModelConfig:
    """A dual-rate pair: a heavy context encoder and a light denoiser."""

    image_size: int
    in_channels: int
    num_classes: int                 # class ids 0..num_classes-1; id num_classes is the null class
    encoder: NetConfig
    denoiser: NetConfig
    prediction: str = "v"
    emb_dim: int = 128               # width of the time/class embedding
    feature_proj: int = 0            # channels of the 1x1 projection of each encoder feature (0: half the denoiser width)
    logsnr_clamp: tuple[float, float] = (-15.0, 15.0)
    size: str = "custom"             # preset name this came from (informational)

    @property
    def null_class(self) -> int:
        return self.num_classes

    @property
    def levels(self) -> int:
        return len(self.encoder.widths)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: Mapping[str, Any], where: str = "config") -> "ModelConfig":
        """Build from JSON data, naming any unknown or missing field."""
        data = dict(data)
        known = {f.name for f in dataclasses.fields(ModelConfig)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(
                f"{where}: unknown model config field(s) {unknown}; known fields are {sorted(known)}. "
                "Remove them or upgrade dualrate.")
        required = [f.name for f in dataclasses.fields(ModelConfig)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise CheckpointError(f"{where}: model config lacks required field {missing[0]!r} "
                                  f"(required: {', '.join(required)})")
        try:
            for key in ("encoder", "denoiser"):
                net = dict(data[key])
                net_known = {f.name for f in dataclasses.fields(NetConfig)}
                bad = sorted(set(net) - net_known)
                if bad:
                    raise CheckpointError(f"{where}: unknown field(s) {bad} in model.{key}; known: {sorted(net_known)}")
                data[key] = NetConfig(**net)
            if "logsnr_clamp" in data:
                data["logsnr_clamp"] = tuple(float(x) for x in data["logsnr_clamp"])
            cfg = ModelConfig(**data)
        except TypeError as exc:
            raise CheckpointError(f"{where}: invalid model config: {exc}") from None
        cfg.check(where)
        return cfg

    def check(self, where: str = "config") -> None:
        """Validate ranges and divisibility; raise ``CheckpointError`` naming the field."""
        if self.prediction not in PREDICTIONS:
            raise CheckpointError(f"{where}: prediction is {self.prediction!r}; expected one of {PREDICTIONS}")
        if len(self.encoder.widths) != len(self.denoiser.widths):
            raise CheckpointError(
                f"{where}: encoder has {len(self.encoder.widths)} levels but denoiser has "
                f"{len(self.denoiser.widths)}; both nets need the same number of resolution levels")
        lowest = self.image_size // 2 ** (self.levels - 1)
        if lowest < 1 or lowest * 2 ** (self.levels - 1) != self.image_size:
            raise CheckpointError(
                f"{where}: image_size {self.image_size} is not divisible by 2^{self.levels - 1} "
                f"({self.levels} levels)")
        for name, net in (("encoder", self.encoder), ("denoiser", self.denoiser)):
            if net.transformer_dim % net.heads:
                raise CheckpointError(
                    f"{where}: model.{name}.transformer_dim {net.transformer_dim} is not divisible by heads {net.heads}")
            if min(net.widths) < 1 or net.res_blocks < 1:
                raise CheckpointError(f"{where}: model.{name} needs positive widths and res_blocks >= 1")


def _pair(enc: NetConfig, den: NetConfig, **kw: Any) -> ModelConfig:
    return ModelConfig(encoder=enc, denoiser=den, **kw)


# Presets. The encoder is the heavy net; the denoiser keeps the topology at a
# fraction of the width so every-step cost stays low.
PRESETS: dict[str, ModelConfig] = {
    "tiny": _pair(
        NetConfig(widths=(16, 32), res_blocks=1, transformer_depth=1, transformer_dim=32, heads=2),
        NetConfig(widths=(8, 16), res_blocks=1, transformer_depth=1, transformer_dim=16, heads=2),
        image_size=8, in_channels=1, num_classes=10, emb_dim=32, size="tiny"),
    "digits": _pair(
        NetConfig(widths=(32, 64, 128), res_blocks=1, transformer_depth=2, transformer_dim=128, heads=4),
        NetConfig(widths=(16, 32, 64), res_blocks=1, transformer_depth=1, transformer_dim=64, heads=4),
        image_size=16, in_channels=1, num_classes=10, emb_dim=128, size="digits"),
    # small-32: encoder 46.2M params, 12.6 GFLOP per sample; denoiser 9.2M params, 2.9 GFLOP
    # (F_E / F_g = 4.3 at the benchmark sizes, see docs/benchmarks.md)
    "small-32": _pair(
        NetConfig(widths=(128, 256, 384), res_blocks=2, transformer_depth=5, transformer_dim=512, heads=8),
        NetConfig(widths=(80, 160, 240), res_blocks=1, transformer_depth=2, transformer_dim=256, heads=4),
        image_size=32, in_channels=3, num_classes=1000, emb_dim=256, size="small-32"),
    "small-64": _pair(
        NetConfig(widths=(96, 192, 384, 512), res_blocks=2, transformer_depth=8, transformer_dim=512, heads=8),
        NetConfig(widths=(48, 96, 192, 256), res_blocks=1, transformer_depth=2, transformer_dim=256, heads=4),
        image_size=64, in_channels=3, num_classes=1000, emb_dim=256, size="small-64"),
}


def preset(name: str) -> ModelConfig:
    """Return the named preset or raise a ``CheckpointError`` (exit 2) listing the known names."""
    if name not in PRESETS:
        raise CheckpointError(f"unknown model size {name!r}; known sizes: {', '.join(PRESETS)}")
    return PRESETS[name]
