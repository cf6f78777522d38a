"""A custom dual-rate pair used by the factory-protocol tests (not the DR-UViT family)."""

from __future__ import annotations

import torch
from torch import nn

from dualrate.exporter.model_pair import SAMPLE, TIME, TIME_CTX, Conditioning, DualRateModel, cond, feature


class ConvEncoder(nn.Module):
    def __init__(self, channels: int, width: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, padding=1)
        self.emb = nn.Embedding(3, width)

    def forward(self, z, logsnr, class_id):
        return (torch.tanh(self.conv(z) + self.emb(class_id)[:, :, None, None] + logsnr[:, None, None, None] / 15),)


class ConvDenoiser(nn.Module):
    def __init__(self, channels: int, width: int):
        super().__init__()
        self.conv = nn.Conv2d(channels + width, channels, 3, padding=1)

    def forward(self, z, logsnr, logsnr_ctx, class_id, feat):
        return self.conv(torch.cat([z, feat], 1)) * (1 + (logsnr - logsnr_ctx)[:, None, None, None] / 30)


def make_pair(channels: int = 1, width: int = 4, image_size: int = 8) -> DualRateModel:
    return DualRateModel(
        ConvEncoder(channels, width), ConvDenoiser(channels, width),
        encoder_inputs={"z": SAMPLE, "logsnr": TIME, "class_id": cond("class_id")},
        denoiser_inputs={"z": SAMPLE, "logsnr": TIME, "logsnr_ctx": TIME_CTX, "class_id": cond("class_id"),
                         "feat": feature("feat0")},
        sample_shape=(channels, image_size, image_size), prediction="eps",
        conditioning=[Conditioning("class_id", (), "int64", null=2, num_classes=2)])


class NanAfter(nn.Module):
    """Wraps a denoiser; its output turns NaN once the log-SNR passes ``threshold``."""

    def __init__(self, inner: nn.Module, threshold: float):
        super().__init__()
        self.inner = inner
        self.register_buffer("threshold", torch.tensor(float(threshold)))

    def forward(self, z, logsnr, logsnr_ctx, class_id, feat):
        out = self.inner(z, logsnr, logsnr_ctx, class_id, feat)
        bad = (logsnr > self.threshold)[:, None, None, None]
        return torch.where(bad, torch.full_like(out, float("nan")), out)


def make_nan_pair(threshold: float = 0.0) -> DualRateModel:
    """A pair whose denoiser yields NaN from the first step with logsnr > threshold on."""
    pair = make_pair()
    pair.denoiser = NanAfter(pair.denoiser, threshold)
    return pair
