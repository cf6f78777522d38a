"""A custom dual-rate pair used by the factory-protocol tests (not the DR-UViT family)."""

from __future__ import annotations

import torch
from torch import nn

from exporter.model_pair import DualRatePair, PairInfo


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


def make_pair(channels: int = 1, width: int = 4, image_size: int = 8) -> DualRatePair:
    return DualRatePair(ConvEncoder(channels, width), ConvDenoiser(channels, width),
                        PairInfo(image_size=image_size, in_channels=channels, num_classes=2, prediction="eps"))
