"""Checkpoint -> bundle contents: spec, two traced graphs (checked), golden vectors, manifest.

``build_bundle`` fills a directory the caller owns (a temporary one beside the
target, see ``atomic.atomic_directory``); backend parity is checked by the caller
before the directory is renamed into place. Nothing here imports a backend runtime.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .bundle import SPEC, write_manifest
from .checkpoint import LoadedCheckpoint
from .errors import BadInputError
from .golden import capture, write_golden
from .onnx_export import DEFAULT_OPSET, DenoiserGraph, EncoderGraph, check_graph, export_graph
from .spec import Spec
from .spec_builder import SamplerOptions, graph_io, make_spec
from .torch_runner import TorchReferenceRunner

Progress = Callable[[str], None]


@dataclass(frozen=True)
class ExportOptions:
    sampler: SamplerOptions = field(default_factory=SamplerOptions)
    static_batch: int | None = None          # None: dynamic batch axis
    opset: int = DEFAULT_OPSET
    external_data: bool | None = None        # None: decide by weight size
    golden_seeds: tuple[int, ...] = (0, 1)
    golden_batch: int = 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["golden_seeds"] = list(self.golden_seeds)
        return d


def graph_rows(spec: Spec, batch: int) -> int:
    """Rows per graph call for ``batch`` samples: 2x when both guidance branches run batched."""
    lam = spec.sampler.tables.logsnr
    guided_everywhere = all(spec.guidance.active(lam[i]) for i in range(spec.sampler.num_steps))
    return 2 * batch if guided_everywhere else batch


def versions() -> dict[str, str]:
    import onnx
    import safetensors

    from .version import __version__ as tool_version
    return {"dualrate": tool_version, "torch": torch.__version__, "onnx": onnx.__version__,
            "numpy": np.__version__, "safetensors": safetensors.__version__, "python": platform.python_version()}


def build_bundle(ckpt: LoadedCheckpoint, root: Path, opts: ExportOptions, progress: Progress = lambda _: None) -> Spec:
    """Write spec, graphs, golden vectors and manifest into ``root``; returns the spec."""
    pair = ckpt.pair.eval()
    runner = TorchReferenceRunner(pair)
    info = pair.info
    probe = runner.encode(np.zeros((1, *info.sample_shape), np.float32), np.zeros(1, np.float32),
                          np.zeros(1, np.int64))
    feature_shapes = [tuple(f.shape[1:]) for f in probe]
    if opts.sampler.refresh == "calibrated":
        progress("calibrating the refresh steps on the PyTorch model")
    spec = make_spec(info, feature_shapes, opts.sampler,
                     {"checkpoint_sha256": ckpt.sha256, "checkpoint": ckpt.path.name}, runner=runner)
    batch = opts.static_batch or opts.golden_batch
    if opts.static_batch is not None and opts.static_batch < 1:
        raise BadInputError(f"--static-batch {opts.static_batch}: expected a positive batch size")
    rows = graph_rows(spec, batch)
    if opts.static_batch is not None:
        spec = _static_spec(spec, rows)
    spec.save(root / SPEC)

    progress("capturing reference trajectories")
    vectors = capture(runner, spec, opts.golden_seeds, batch)
    enc_call = vectors["encoder_io"]
    example_enc = [torch.from_numpy(enc_call[f"call0.{n}"]) for n in ("z", "logsnr", "class_id")]
    example_den = [torch.from_numpy(vectors["denoiser_io"][f"call0.{i.name}"]) for i in spec.model.denoiser.inputs]
    external = {}
    for name, module, example, io_spec in (
            ("encoder", EncoderGraph(pair.encoder), example_enc, spec.model.encoder),
            ("denoiser", DenoiserGraph(pair.denoiser), example_den, spec.model.denoiser)):
        progress(f"exporting {name} to ONNX (opset {opts.opset})")
        path = root / f"{name}.onnx"
        external[name] = export_graph(module, example, io_spec, path, dynamic_batch=opts.static_batch is None,
                                      opset=opts.opset, external_data=opts.external_data)
        progress(f"checking {name}: onnx.checker, shape inference, signature")
        check_graph(path, io_spec, dynamic_batch=opts.static_batch is None, batch=rows)
    write_golden(root / "golden", vectors)
    write_manifest(root, {
        "versions": versions(),
        # the path lets targets that convert from the modules (Core ML) find the checkpoint again;
        # its sha256 is verified before use
        "source_checkpoint": {"name": ckpt.path.name, "sha256": ckpt.sha256, "path": str(ckpt.path.resolve())},
        "export_options": opts.to_dict(),
        "external_data": external,
        "graph_rows": {"golden": graph_rows(spec, opts.golden_batch), "static": rows if opts.static_batch else None},
    })
    return spec


def _static_spec(spec: Spec, rows: int) -> Spec:
    """Replace the ``batch`` symbol with a fixed row count in the I/O binding."""
    import dataclasses

    def fix(gio):
        def t(x):
            return dataclasses.replace(x, shape=tuple(rows if d == "batch" else d for d in x.shape))
        return dataclasses.replace(gio, inputs=tuple(map(t, gio.inputs)), outputs=tuple(map(t, gio.outputs)))

    model = dataclasses.replace(spec.model, encoder=fix(spec.model.encoder), denoiser=fix(spec.model.denoiser))
    return dataclasses.replace(spec, model=model)


__all__ = ["ExportOptions", "build_bundle", "graph_io", "graph_rows"]
