"""Tracing a model's graphs (``BoundGraph``s) to ONNX, and the fail-closed structural checks on them.

Export goes through ``torch.onnx.export(dynamo=True)`` (the torch.export-based
exporter). The batch axis is dynamic by default (symbol ``batch``) or static.
Weights above the protobuf limit go to ONNX external data, one fresh
``<graph>.onnx.data`` per graph; checks get *paths* so the checker and shape
inference read external data themselves.

After export every graph must keep each declared input and output with the
declared name, dtype and shape: an exporter that prunes an unused input (a
denoiser that ignores ``logsnr_ctx``, say) changes the graph signature silently,
and this catches it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .errors import BadInputError
from .export_options import DEFAULT_OPSET
from .spec import GraphIO

# protobuf refuses messages over 2 GiB; leave headroom for the graph itself
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
ONNX_DTYPES = {1: "float32", 7: "int64", 10: "float16", 16: "bfloat16", 11: "float64", 6: "int32", 9: "bool"}


def param_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters()) + \
        sum(b.numel() * b.element_size() for b in module.buffers())


def export_graph(module: nn.Module, example: Sequence[torch.Tensor], io_spec: GraphIO, path: Path,
                 dynamic_batch: bool = True, opset: int = DEFAULT_OPSET,
                 external_data: bool | None = None) -> bool:
    """Export ``module`` to ``path``; returns whether external data was used.

    ``external_data=None`` decides by size (weights above ~1.8 GB).
    """
    path = Path(path)
    in_names = [i.name for i in io_spec.inputs]
    out_names = [o.name for o in io_spec.outputs]
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=65536)
        # a BoundGraph takes ``forward(*flat)``: one spec per flat input, grouped as that one varargs
        dynamic_shapes: Any = (tuple({0: batch} for _ in example),)
    else:
        dynamic_shapes = None
    use_external = param_bytes(module) > EXTERNAL_DATA_THRESHOLD if external_data is None else external_data
    log = io.StringIO()
    # The exporter reports progress on stdout and warns about unrelated optional
    # packages (torchvision ops); the caller's progress display is ours to own.
    registry_log = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_log.level
    registry_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(log):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(module.eval(), tuple(example), None, input_names=in_names,
                                        output_names=out_names, opset_version=opset, dynamo=True,
                                        dynamic_shapes=dynamic_shapes, verbose=False, optimize=True)
    finally:
        registry_log.setLevel(level)
    data_file = path.with_name(path.name + ".data")
    for stale in (path, data_file):      # never append into an existing external data file
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stale)
    _strip_node_metadata(program.model)
    program.save(str(path), external_data=use_external)
    return use_external


def _strip_node_metadata(model: Any) -> None:
    """Drop the exporter's per-node debug metadata (Python stack traces with absolute
    paths and line numbers, FX node text): it made the same model export to
    different bytes from different checkouts, and it leaks local paths. Done on the
    exporter's in-memory model before the one save (the same bytes as loading the
    saved file, clearing each node's ``metadata_props`` and saving it again)."""
    try:
        import onnx_ir as ir
    except ImportError:                  # onnxscript before onnx_ir was split out of it
        from onnxscript import ir

    for graph in (model.graph, *model.functions.values()):
        for node in ir.traversal.RecursiveGraphIterator(graph):
            node.metadata_props.clear()


def check_graph(path: Path, io_spec: GraphIO, dynamic_batch: bool, batch: int) -> None:
    """Full ONNX checker, shape inference, and the declared signature; BadInputError on any mismatch."""
    import onnx

    path = Path(path)
    graph = path.stem
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise BadInputError(f"{graph}: the exported ONNX graph fails onnx.checker: {str(exc).splitlines()[0]}") from None
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        inferred_path = Path(tmp) / path.name
        onnx.shape_inference.infer_shapes_path(str(path), str(inferred_path), strict_mode=True, data_prop=True)
        model = onnx.load(str(inferred_path), load_external_data=False)
    _check_values(graph, "input", model.graph.input, io_spec.inputs, dynamic_batch, batch)
    _check_values(graph, "output", model.graph.output, io_spec.outputs, dynamic_batch, batch)


def _check_values(graph: str, kind: str, values: Any, declared: Sequence[Any], dynamic_batch: bool, batch: int) -> None:
    found = {v.name: v for v in values}
    names = [d.name for d in declared]
    missing = [n for n in names if n not in found]
    if missing:
        raise BadInputError(
            f"{graph}: declared {kind}(s) {missing} did not survive export (graph {kind}s are {list(found)}); "
            f"the exporter pruned them, usually because the model ignores them. Make the model use every "
            f"declared {kind}, or declare fewer")
    extra = [n for n in found if n not in names]
    if extra:
        raise BadInputError(f"{graph}: the exported graph has undeclared {kind}(s) {extra}")
    if list(found) != names:
        raise BadInputError(f"{graph}: {kind} order is {list(found)}; declared {names}")
    for d in declared:
        ttype = found[d.name].type.tensor_type
        dtype = ONNX_DTYPES.get(ttype.elem_type, f"onnx type {ttype.elem_type}")
        if dtype != d.dtype:
            raise BadInputError(f"{graph}: {kind} {d.name!r} has dtype {dtype}; declared {d.dtype}")
        dims = [x.dim_param or x.dim_value for x in ttype.shape.dim]
        want = [(("batch" if dynamic_batch else batch) if s == "batch" else s) for s in d.shape]
        got = [("batch" if dynamic_batch and i == 0 and isinstance(x, str) else x) for i, x in enumerate(dims)]
        if got != want:
            raise BadInputError(f"{graph}: {kind} {d.name!r} has shape {dims}; declared {list(want)}")
