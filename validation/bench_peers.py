"""The PyTorch peers of ``dualrate bench``: what a user would run instead of the exported bundle.

Every peer runs the bundle's own sampler loop (the spec's dual-rate call plan) through the same
``BoundGraph`` modules the exporter traced, on the same batch and threads, at the precision of
the backend row it is compared with:

* ``torch_eager``: the modules as they are (fp32), or under ``torch.autocast`` (bf16 / fp16) where
  the backend computes in that precision (autocast is what a PyTorch user writes for it; it keeps
  norms and softmax in fp32, as the backends keep their precision-sensitive ops);
* ``torch_compile``: the same under ``torch.compile`` (inductor), in its strongest CPU
  configuration measured here (``COMPILE_CONFIGS``; ``BEST_COMPILE`` is the one
  ``examples/torch_compile_configs.py`` found fastest on small-32, see docs/benchmarks.md).
  ``dynamic=False``: every row count the loop uses gets its own specialised graph, compiled during
  the warm-up, whose wall time is reported as ``compile_s`` and kept out of the timed repeats.

There is no PyTorch peer for ``int8``/``int8-weights``: ``torch.ao.quantization``'s eager int8
(dynamic, ``nn.Linear`` only; convolutions stay fp32, and the API is deprecated in favour of
torchao) is not the same arithmetic as a statically quantized graph, so it would compare unlike
precisions. An int8 row is compared with the same backend's fp32 row instead.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Mapping

# inductor configurations tried for the CPU (``torch.compile`` takes either ``mode`` or ``options``)
COMPILE_CONFIGS: dict[str, dict[str, Any]] = {
    "default": {},
    "max-autotune-no-cudagraphs": {"mode": "max-autotune-no-cudagraphs"},
    # freezing: weights become constants, so inductor folds them and pre-packs oneDNN convolution / GEMM weights
    "freezing": {"options": {"freezing": True}},
    "freezing+max-autotune": {"options": {"freezing": True, "max_autotune": True}},
}
BEST_COMPILE = "freezing"
AUTOCAST = {"bf16": "bfloat16", "fp16": "float16"}     # torch dtype names; fp32 runs without autocast
TORCH_PRECISIONS = ("fp32",) + tuple(AUTOCAST)
NO_INT8_PEER = ("no PyTorch int8 peer: torch.ao.quantization's eager int8 is dynamic and nn.Linear-only (convolutions "
                "stay fp32; deprecated for torchao), not the arithmetic of a statically quantized graph; the int8 "
                "rows are compared with the same backend at fp32")


@dataclass(frozen=True)
class TorchPeer:
    """One PyTorch contender: eager or compiled (``compile`` names a ``COMPILE_CONFIGS`` entry), at ``precision``."""

    precision: str = "fp32"
    compile: str | None = None

    @property
    def key(self) -> str:
        return "torch_compile" if self.compile else "torch_eager"

    @property
    def label(self) -> str:
        how = f"torch.compile ({self.compile})" if self.compile else "torch eager"
        cast = f", autocast {AUTOCAST[self.precision]}" if self.precision in AUTOCAST else ""
        return f"{how}{cast}"

    def describe(self) -> dict[str, Any]:
        """What the document records about how the peer ran."""
        import torch

        out: dict[str, Any] = {"runtime": f"torch {torch.__version__}", "precision": self.precision,
                               "autocast": AUTOCAST.get(self.precision)}
        if self.compile:
            out["compile"] = {"backend": "inductor", "config": self.compile, "dynamic": False,
                              **COMPILE_CONFIGS[self.compile]}
        return out


def peers_for(precision: str, compiled: bool = True) -> list[TorchPeer]:
    """The PyTorch peers of a backend row computing in ``precision`` (none where PyTorch has no
    same-precision counterpart, e.g. int8)."""
    if precision not in TORCH_PRECISIONS:
        return []
    out = [TorchPeer(precision)]
    if compiled:
        out.append(TorchPeer(precision, BEST_COMPILE))
    return out


def peer_runner(model: Any, spec: Any, peer: TorchPeer) -> Any:
    """A runner (the runner contract) that runs ``peer`` on the model's bound modules."""
    from dualrate.exporter.torch_runner import TorchReferenceRunner

    class PeerRunner(TorchReferenceRunner):
        """The reference runner under autocast and/or ``torch.compile``; features stay torch tensors."""

        name = f"torch-{peer.key}"

        def __init__(self) -> None:
            import torch

            super().__init__(model, spec)
            self.inputs = {g: [name for name, _ in b.inputs] for g, b in self.bound.items()}
            self.autocast = getattr(torch, AUTOCAST[peer.precision]) if peer.precision in AUTOCAST else None
            if peer.compile:
                cfg = COMPILE_CONFIGS[peer.compile]
                self.bound = {g: torch.compile(b, dynamic=False, **cfg) for g, b in self.bound.items()}

        def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
            import torch

            cast = (torch.autocast("cpu", dtype=self.autocast) if self.autocast is not None
                    else contextlib.nullcontext())
            with torch.inference_mode(), cast:
                outs = self.bound[graph](*(self._t(feeds[name]) for name in self.inputs[graph]))
            return dict(zip((o.name for o in self.graphs[graph].outputs), outs))

    return PeerRunner()


__all__ = ["AUTOCAST", "BEST_COMPILE", "COMPILE_CONFIGS", "NO_INT8_PEER", "TorchPeer", "peer_runner", "peers_for"]
