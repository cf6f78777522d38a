"""Custom dual-rate pairs for the tests (not the DR-UViT family): a small conv pair (the factory
protocol) and ``named_pair``, the binding of a model with its own input names and a decoder."""

from __future__ import annotations

import torch
from torch import nn

from dualrate.exporter.model_pair import SAMPLE, TIME, TIME_CTX, Conditioning, Decoder, DualRateModel, cond, feature


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


class LatentDecoder(nn.Module):
    """A 2-channel latent to a 3-channel image in [-1, 1] (``decode``, a tuple like diffusers')."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)

    def decode(self, latent):
        return (torch.tanh(self.conv(latent)),)


def named_pair(encoder: nn.Module, denoiser: nn.Module, denoiser_features: dict) -> DualRateModel:
    """``encoder``/``denoiser`` taking x / noise_level / (cached_level) / label, bound by role: a
    2x8x8 v-prediction latent on time ``t``, 3 classes with null 3, the features ``denoiser_features``
    (input name -> role) and a ``LatentDecoder`` with scaling factor 0.5 (built after the two nets,
    so a seed set before the call fixes all three)."""
    return DualRateModel(
        encoder, denoiser,
        encoder_inputs={"x": SAMPLE, "noise_level": TIME, "label": cond("label")},
        denoiser_inputs={"x": SAMPLE, "noise_level": TIME, "cached_level": TIME_CTX, "label": cond("label"),
                         **denoiser_features},
        sample_shape=(2, 8, 8), prediction="v", time="t",
        conditioning=[Conditioning("label", (), "int64", null=3, num_classes=3)],
        decoder=Decoder(LatentDecoder(), input="latent", method="decode", scaling_factor=0.5)).eval()
