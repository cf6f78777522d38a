"""The QDQ ONNX graph a TensorRT int8 engine is built from, made by ONNX Runtime's quantizer (no TensorRT needed).

TensorRT's int8 is *explicit quantization*: the ONNX graph carries QuantizeLinear/DequantizeLinear
pairs with their scales, the parser turns them into IQuantizeLayer/IDequantizeLayer, and the builder
fuses them into int8 kernels. TensorRT implicit (calibrator) int8 is deprecated and not used. TensorRT
supports only symmetric quantization — signed int8, zero point 0 — and only the standard ONNX
Q/DQ ops, so the graph is quantized by ``ort_quantize.quantize_static_qdq`` with symmetric int8
activations and its sensitive layers left float (no 16-bit / contrib-domain Q/DQ, which TensorRT cannot
parse); :func:`qdq_problems` checks exactly those properties before a build and in the structural checks.

Calibration is the bundle's own two-rate sampler (``int8_calibration.collect``), run on ONNX Runtime
over the graphs as this compile makes them (an int8 encoder's QDQ graph feeds the denoiser's
calibration), so everything here runs on a CPU: only the engine build needs TensorRT.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from dualrate.exporter.bundle import Bundle
from dualrate.exporter.errors import BadInputError

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def qdq_graph(bundle: Bundle, graph: str, dst: Path, graphs: Mapping[str, Path],
              calibration: Any = None) -> dict[str, Any]:
    """Write the TensorRT-ready QDQ int8 graph of ``graph`` to ``dst``; return its record.

    ``graphs`` are the ONNX files the calibration sampler runs (graph -> path: what this compile made so
    far, the bundle's graphs for the rest); ``calibration`` an ``int8_calibration.CalibrationOptions``.
    """
    from dualrate.exporter import int8_calibration

    from . import ort_quantize

    calibration = calibration or int8_calibration.CalibrationOptions()
    gio = bundle.spec.model.graphs()[graph]
    with tempfile.TemporaryDirectory(prefix="dualrate-trt-qdq-") as scratch:
        folded = Path(scratch) / f"{graph}.onnx"
        ort_quantize.preprocess(bundle.graph(graph), folded)
        feeds = ort_quantize.calibration_feeds(bundle, graph, graphs, calibration)
        # ``activation="int8"``: symmetric int8 activations, float biases, standard-domain Q/DQ; ``sensitive=
        # "float"`` leaves the sensitive layers unquantized (TensorRT has no 16-bit integer activations for them)
        info = ort_quantize.quantize_static_qdq(folded, dst, feeds, gio, graph, sensitive="float", activation="int8")
    problems = qdq_problems(dst)
    if problems:
        raise BadInputError(f"the int8 QDQ graph of {graph} is not one TensorRT can build: {'; '.join(problems[:3])}")
    return {**info, "qdq": qdq_summary(dst), "calibration": calibration.record("ONNX Runtime")}


def _graph(path: Path) -> tuple[Any, dict[str, Any]]:
    """The ONNX graph at ``path`` and its initializers by name."""
    import onnx

    g = onnx.load(str(path)).graph
    return g, {t.name: t for t in g.initializer}


def qdq_summary(path: Path) -> dict[str, Any]:
    """Q/DQ node counts, int8 weight initializers and the quantized op types of a QDQ graph."""
    import onnx

    g, inits = _graph(path)
    consumers: dict[str, list[str]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    quantized = {}
    for n in g.node:
        if n.op_type == "DequantizeLinear":
            for op in consumers.get(n.output[0], []):
                quantized[op] = quantized.get(op, 0) + 1
    return {"ops": {op: sum(n.op_type == op for n in g.node) for op in QDQ_OPS},
            "int8_weights": sum(t.data_type == onnx.TensorProto.INT8 and len(t.dims) > 1 for t in inits.values()),
            "dequantized_into": dict(sorted(quantized.items()))}


def qdq_problems(path: Path) -> list[str]:
    """What in a QDQ graph TensorRT's explicit quantization rejects: no Q/DQ at all, Q/DQ outside the
    standard ONNX domain, non-int8 quantized types, non-zero zero points (TensorRT is symmetric only)."""
    import onnx
    from onnx import numpy_helper

    g, inits = _graph(path)
    nodes = [n for n in g.node if n.op_type in QDQ_OPS]
    problems = [] if nodes else ["no QuantizeLinear/DequantizeLinear nodes: the graph is not quantized"]
    for n in nodes:
        if n.domain not in ("", "ai.onnx"):
            problems.append(f"{n.name or n.op_type} is in domain {n.domain!r}; TensorRT parses standard ONNX Q/DQ only")
            continue
        zp = n.input[2] if len(n.input) > 2 and n.input[2] else None
        if zp is None:
            continue                                   # no zero point: int8 by the ONNX default
        if zp not in inits:
            problems.append(f"{n.name or n.op_type}: zero point {zp} is not a constant")
            continue
        t = inits[zp]
        if t.data_type != onnx.TensorProto.INT8:
            problems.append(f"{n.name or n.op_type}: quantized type {onnx.TensorProto.DataType.Name(t.data_type)}, "
                            "TensorRT takes INT8")
        elif np.any(numpy_helper.to_array(t) != 0):
            problems.append(f"{n.name or n.op_type}: non-zero zero point (asymmetric); TensorRT is symmetric only")
    return problems


__all__ = ["qdq_graph", "qdq_problems", "qdq_summary"]
