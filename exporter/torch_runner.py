"""``TorchReferenceRunner``: the user's PyTorch modules behind the runner contract (the reference).

It calls the same ``BoundGraph`` wrappers the exporter traces, so the reference and the
exported graphs see exactly the same call of each module.
"""

from __future__ import annotations

import contextlib
import copy
import os
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from .model_pair import DualRateModel
from .runner import BaseRunner
from .spec import Spec


class TorchReferenceRunner(BaseRunner):
    """Runs the modules in eval mode, float32 (or ``dtype``, on a copy), no autograd.

    Features stay torch tensors between steps; numpy inputs are wrapped without copies.
    """

    name = "torch"

    def __init__(self, model: DualRateModel, spec: Spec, dtype: torch.dtype = torch.float32):
        super().__init__(spec)
        model.eval()
        self.model = model
        self.dtype = dtype
        names = [o.name for o in spec.model.encoder.outputs]
        bound = {"encoder": model.bound_encoder(), "denoiser": model.bound_denoiser(names)}
        if spec.model.decoder is not None:
            bound["decoder"] = model.bound_decoder()
        # Another dtype (a float64 reference, a bf16 check) works on a copy: the caller's modules stay float32.
        self.bound = bound if dtype == torch.float32 else {g: copy.deepcopy(b).to(dtype) for g, b in bound.items()}

    def _t(self, x: Any) -> torch.Tensor:
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        return t.to(self.dtype) if t.is_floating_point() and t.dtype != self.dtype else t

    @torch.inference_mode()
    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        bound = self.bound[graph]
        outs = bound(*(self._t(feeds[name]) for name, _ in bound.inputs))
        return dict(zip((o.name for o in self.graphs[graph].outputs), outs))

    def to_numpy(self, value: Any) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            t = value.detach()
            if t.is_floating_point() and t.dtype != torch.float16:
                t = t.float()
            return t.numpy()
        return np.asarray(value)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def machine_threads(threads: int = 0) -> Iterator[int]:
    """Run PyTorch's intra-op pool on ``threads`` (0: every core this process may use) inside the
    block, then restore what the caller had."""
    want = threads or available_cores()
    previous = torch.get_num_threads()
    if want != previous:
        torch.set_num_threads(want)
    try:
        yield want
    finally:
        if torch.get_num_threads() != previous:
            torch.set_num_threads(previous)
