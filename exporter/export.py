"""Model -> bundle contents: spec, the traced graphs (checked), null conditioning, golden vectors, manifest.

``build_bundle`` fills a directory the caller owns (a temporary one beside the
target, see ``atomic.atomic_directory``); backend parity is checked by the caller
before the directory is renamed into place. Nothing here imports a backend runtime.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import torch

from .bundle import SPEC, write_manifest
from .errors import BadInputError
from .golden import capture, write_golden
from .sampling import graph_rows
from .model_pair import DualRateModel, describe
from .export_options import ExportOptions
from .onnx_export import check_graph, export_graph
from .progress import Progress, Stages
from .spec import Spec
from .spec_builder import SamplerOptions, assemble_spec, cosine_grid
from .torch_runner import TorchReferenceRunner, machine_threads


def versions() -> dict[str, str]:
    import onnx
    import safetensors

    from .version import __version__ as tool_version
    return {"dualrate": tool_version, "torch": torch.__version__, "onnx": onnx.__version__,
            "numpy": np.__version__, "safetensors": safetensors.__version__, "python": platform.python_version()}


def spec_for_model(model: DualRateModel, opts: SamplerOptions, provenance: dict, static_rows: int | None = None
                   ) -> Spec:
    """The spec of ``model`` sampled with ``opts``: its grid (the diffusers scheduler it was trained
    with, or the cosine schedule), its graph signatures (found by running it once), the tables."""
    if model.scheduler_config is not None:
        from .diffusers_spec import diffusers_grid

        grid, opts, imp = diffusers_grid(model.scheduler_config, opts, model.time)
        if imp.prediction != model.prediction:
            raise BadInputError(f"the model declares prediction={model.prediction!r}, but its scheduler config "
                                f"trains prediction_type {imp.prediction!r}; make them agree")
    else:
        grid = cosine_grid(opts, model.time, model.logsnr_clamp)
    model_spec = describe(model, float(grid.model_time[0]))
    nulls = model.nulls()
    return assemble_spec(model_spec, opts, grid, provenance, runner_for=lambda s: TorchReferenceRunner(model, s),
                         nulls=nulls)


def build_bundle(model: DualRateModel, root: Path, opts: ExportOptions, source: dict,
                 progress: Progress | Stages | None = None, examples: dict[str, np.ndarray] | None = None) -> Spec:
    """Write spec, graphs, null conditioning, golden vectors and manifest into ``root``; returns the spec.

    ``source`` says where the model came from (the checkpoint's name/sha256/path, or the Python API
    with the weights' sha256); ``examples`` are conditioning rows for the golden trajectories.
    ``progress`` is a callback or a ``Stages`` (whose ``timings`` then hold each stage's seconds).
    """
    stages = progress if isinstance(progress, Stages) else Stages(progress)
    with machine_threads():
        return _build(model, root, opts, source, stages, examples)


def _build(model: DualRateModel, root: Path, opts: ExportOptions, source: dict, stages: Stages,
           examples: dict[str, np.ndarray] | None) -> Spec:
    model.eval()
    if opts.static_batch is not None and opts.static_batch < 1:
        raise BadInputError(f"--static-batch {opts.static_batch}: expected a positive batch size")
    label = ("calibrating the refresh steps on the PyTorch model" if opts.sampler.refresh == "calibrated"
             else "spec: graph signatures and sampler tables")
    with stages("spec", label):
        spec = spec_for_model(model, opts.sampler, {"source_sha256": source.get("sha256"),
                                                    "source": source.get("name")})
    batch = opts.static_batch or opts.golden_batch
    rows = graph_rows(spec, batch)
    if opts.static_batch is not None:
        spec = _static_spec(spec, rows, batch)
    spec.save(root / SPEC)
    nulls = model.nulls()
    for c in spec.model.conditioning:
        if c.null_kind == "file":
            (root / c.null_file).parent.mkdir(parents=True, exist_ok=True)
            np.save(root / c.null_file, np.ascontiguousarray(nulls[c.name]), allow_pickle=False)
    runner = TorchReferenceRunner(model, spec)

    with stages("reference", "reference trajectories on PyTorch",
                total=(len(opts.golden_seeds) + 1) * spec.sampler.num_steps) as step:
        vectors = capture(runner, spec, opts.golden_seeds, batch, nulls, examples=examples, on_step=lambda _: step())
    # (the model's own fp32 error, a float64 pass, is not measured here: precision_calibration
    # computes it when an fp32 validate first needs it, or export_bundle when asked for)
    bound = dict(runner.bound)
    external = {}
    # Compressing the golden vectors (zlib, outside the GIL) overlaps the tracing, which is
    # single-threaded Python: measured, it hides the whole write on two cores.
    golden = Background(write_golden, root / "golden", vectors)
    try:
        for name, gio in spec.model.graphs().items():
            call0 = vectors[f"{name}_io"]
            example = [torch.from_numpy(np.ascontiguousarray(call0[f"call0.{inp}"])) for inp, _ in bound[name].inputs]
            path = root / f"{name}.onnx"
            with stages(f"export_{name}", f"exporting {name} to ONNX (opset {opts.opset})"):
                external[name] = export_graph(bound[name], example, gio, path,
                                              dynamic_batch=opts.static_batch is None,
                                              opset=opts.opset, external_data=opts.external_data)
            with stages(f"check_{name}", f"checking {name}: onnx.checker, shape inference, signature"):
                check_graph(path, gio, dynamic_batch=opts.static_batch is None,
                            batch=rows if name != "decoder" else batch)
    except BaseException:
        golden.thread.join()             # never leave it writing into a directory that is being removed
        raise
    with stages("write", "writing golden vectors (what is left) and the manifest"):
        golden.join()                    # re-raises the writer's error
        _write_manifest(root, source, opts, external, spec, rows)
    return spec


class Background:
    """``fn(*args)`` on a thread; ``join()`` waits and re-raises what it raised."""

    def __init__(self, fn, *args):
        import threading

        self.error: BaseException | None = None

        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:       # handed to join()
                self.error = exc

        self.thread = threading.Thread(target=run, name="dualrate-golden-writer", daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.thread.join()
        if self.error is not None:
            raise self.error


def _write_manifest(root: Path, source: dict, opts: ExportOptions, external: dict, spec: Spec, rows: int) -> None:
    write_manifest(root, {
        "versions": versions(),
        # the path lets targets that convert from the modules (Core ML) find the checkpoint again;
        # its sha256 is verified before use
        "source_checkpoint": source if source.get("kind") == "checkpoint" else None,
        "source": source,
        "export_options": opts.to_dict(),
        "external_data": external,
        "graph_rows": {"golden": graph_rows(spec, opts.golden_batch), "static": rows if opts.static_batch else None},
    })


def _static_spec(spec: Spec, rows: int, batch: int) -> Spec:
    """Replace the ``batch`` symbol with a fixed row count in the I/O binding (the decoder runs on
    the ``batch`` final samples, the other graphs on ``rows``, 2x under batched guidance)."""
    import dataclasses

    def fix(gio, n):
        def t(x):
            return dataclasses.replace(x, shape=tuple(n if d == "batch" else d for d in x.shape))
        return dataclasses.replace(gio, inputs=tuple(map(t, gio.inputs)), outputs=tuple(map(t, gio.outputs)))

    m = spec.model
    decoder = m.decoder and dataclasses.replace(m.decoder, graph=fix(m.decoder.graph, batch))
    model = dataclasses.replace(m, encoder=fix(m.encoder, rows), denoiser=fix(m.denoiser, rows), decoder=decoder)
    return dataclasses.replace(spec, model=model)


__all__ = ["ExportOptions", "build_bundle", "graph_rows", "spec_for_model"]
