"""Helpers for tests that tamper with a bundle's graphs and re-hash its manifest (an attacker who
can rewrite the manifest, or an honest but broken exporter): copy, edit the protobuf, re-hash.

Graphs are read with ``onnx.load(load_external_data=False)`` and written back as they are
(external tensors keep their references; the data files are untouched).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import onnx

from dualrate.exporter.bundle import MANIFEST, write_manifest


def clone(src: Path, dst: Path) -> Path:
    """A copy of a bundle without its compile caches."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("targets"))
    return dst


def rehash(root: Path) -> None:
    """Rewrite manifest.json's hashes for the files as they are now (as an attacker would)."""
    manifest = json.loads((root / MANIFEST).read_text())
    write_manifest(root, {k: v for k, v in manifest.items() if k not in ("files", "format", "format_version")})


def load(root: Path, graph: str) -> onnx.ModelProto:
    return onnx.load(str(root / f"{graph}.onnx"), load_external_data=False)


def save(root: Path, graph: str, model: onnx.ModelProto, rehashed: bool = True) -> None:
    (root / f"{graph}.onnx").write_bytes(model.SerializeToString())
    if rehashed:
        rehash(root)


def edit(root: Path, graph: str, fn: Callable[[onnx.ModelProto], None]) -> None:
    model = load(root, graph)
    fn(model)
    save(root, graph, model)


def externalize(root: Path, graphs: tuple[str, ...] = ("encoder", "denoiser"), min_bytes: int = 1024) -> None:
    """Move every initializer of at least ``min_bytes`` into ``<graph>.onnx.data`` (what export does for
    large models), then re-hash: a legitimate external-data bundle made from an inline one."""
    for graph in graphs:
        model = onnx.load(str(root / f"{graph}.onnx"))
        onnx.save(model, str(root / f"{graph}.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=f"{graph}.onnx.data", size_threshold=min_bytes)
    rehash(root)


def external_initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]


def set_external(tensor: onnx.TensorProto, **fields: str) -> None:
    """Replace a tensor's external_data entries (given keys) keeping the others in order."""
    entries = [(e.key, e.value) for e in tensor.external_data]
    entries = [(k, fields.pop(k)) if k in fields else (k, v) for k, v in entries] + list(fields.items())
    del tensor.external_data[:]
    for k, v in entries:
        e = tensor.external_data.add()
        e.key, e.value = k, v


def move_to_file(tensor: onnx.TensorProto, location: str) -> bytes:
    """Make an inline tensor external at ``location`` (offset 0); returns the bytes that file must hold."""
    from onnx import numpy_helper

    data = numpy_helper.to_array(tensor).tobytes()
    tensor.ClearField("raw_data")
    for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(f)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    set_external(tensor, location=location, offset="0", length=str(len(data)))
    return data
