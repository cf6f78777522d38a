"""``TorchReferenceRunner``: the PyTorch modules behind the runner protocol (the reference)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch

from .model_pair import DualRatePair


class TorchReferenceRunner:
    """Runs the encoder/denoiser modules in eval mode, float32 (or ``dtype``), no autograd.

    Features stay torch tensors between steps; numpy inputs are wrapped without copies.
    """

    name = "torch"

    def __init__(self, pair: DualRatePair, dtype: torch.dtype = torch.float32):
        pair.eval()
        self.dtype = dtype
        # Another dtype (a float64 reference, a bf16 check) works on a copy: the
        # caller's modules stay float32.
        same = dtype == torch.float32
        self.encoder = pair.encoder if same else copy.deepcopy(pair.encoder).to(dtype)
        self.denoiser = pair.denoiser if same else copy.deepcopy(pair.denoiser).to(dtype)

    def _t(self, x: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x))
        return t.to(self.dtype) if t.is_floating_point() else t

    @torch.inference_mode()
    def encode(self, z: np.ndarray, logsnr: np.ndarray, class_id: np.ndarray) -> tuple[torch.Tensor, ...]:
        return tuple(self.encoder(self._t(z), self._t(logsnr), self._t(class_id)))

    @torch.inference_mode()
    def denoise(self, z: np.ndarray, logsnr: np.ndarray, logsnr_ctx: np.ndarray, class_id: np.ndarray,
                features: Any) -> np.ndarray:
        out = self.denoiser(self._t(z), self._t(logsnr), self._t(logsnr_ctx), self._t(class_id), *features)
        return out.float().numpy()

    def features_to_numpy(self, features: Any) -> list[np.ndarray]:
        return [f.float().numpy() for f in features]
