"""int8 graphs for ONNX Runtime, made by ``onnxruntime.quantization`` (no hand-written quantizer).

* ``int8``: static QDQ (``quantize_static``, ``QuantFormat.QDQ``, per-channel int8 weights, uint8
  activations with MinMax ranges calibrated on the bundle's own sampler, ``int8_calibration``).
* ``int8-weights``: the same QDQ pass with 16-bit activations: int8 per-channel weights, and
  ONNX Runtime's CPU kernels, having no 16-bit integer path, dequantize and compute in float
  (weight-only in effect; its MatMulNBits weight-only quantizer covers MatMul and Gather only, and
  the linear layers here are Gemm and Conv).

For TensorRT (``trt_qdq``), ``quantize_static_qdq(activation="int8")`` makes the same QDQ graph with
symmetric int8 activations, float biases and standard-domain Q/DQ only: the explicit quantization
TensorRT's ONNX parser takes.

In ``int8``, the sensitive layers ``int8_layers`` finds (time embedding and FiLM projections,
first conv/linear, last one before each output) get no 8-bit activations: by default int8 weights
with 16-bit activations, computed in float (``sensitive="int8-weights"``: on adaLN models those
projections hold a large share of the weights), or nothing at all (``sensitive="float"``).
Normalisation, softmax and the other element-wise ops are not in the quantized op types, and a
MatMul of two activations (attention) is left float (``MatMulConstBOnly``).

The per-layer sensitivity table is measured with ``onnxruntime.quantization.qdq_loss_debug`` on a
few calibration calls: per quantized conv/linear, the SQNR of its weight's int8 round trip and of
its output in the int8 graph against the float graph (dB; lower = more damage).
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from dualrate.exporter.bundle import Bundle
from dualrate.exporter.int8_calibration import CalibrationOptions, check_ranges, collect
from dualrate.exporter.spec import GraphIO

from .int8_layers import Layer, conditioning_inputs, sensitive_layers

WEIGHTED = ("Conv", "MatMul", "Gemm")
# op types ONNX Runtime would otherwise quantize that are left float by type (normalisation, softmax...)
FLOAT_BY_TYPE = ("InstanceNormalization", "LayerNormalization", "GroupNormalization", "BatchNormalization",
                 "Softmax", "Sigmoid", "Tanh", "Sin", "Cos", "Resize")
SENSITIVITY_CALLS = 4         # calibration calls the sensitivity table is measured on
SENSITIVITY_ROWS = 16         # table rows kept: the largest quantized layers


def _onnx():
    import onnx
    return onnx


def ListReader(feeds: Sequence[dict[str, np.ndarray]]) -> Any:
    """A ``CalibrationDataReader`` over recorded feeds (``rewind`` starts a fresh pass)."""
    return _reader_class()(feeds)


@functools.lru_cache(maxsize=1)
def _reader_class() -> type:
    from onnxruntime.quantization import CalibrationDataReader   # onnxruntime loads only when quantizing

    class _ListReader(CalibrationDataReader):
        def __init__(self, feeds):
            self.feeds = list(feeds)
            self._it = iter(self.feeds)

        def get_next(self):
            return next(self._it, None)

        def rewind(self):
            self._it = iter(self.feeds)

    return _ListReader


def float_kept(model: Any, gio: GraphIO) -> dict[str, str]:
    """Node name -> why it stays float (``int8_layers.sensitive_layers`` over the ONNX nodes)."""
    graph = model.graph
    consts = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    layers = [Layer(n.name, tuple(i for i in n.input if i and i not in consts), tuple(n.output),
                    n.op_type in WEIGHTED and len(n.input) > 1 and n.input[1] in consts) for n in graph.node]
    return sensitive_layers(layers, conditioning_inputs(gio), [(o.name, o.name) for o in graph.output])


def calibration_feeds(bundle: Bundle, graph: str, graphs: Mapping[str, Path],
                      calibration: CalibrationOptions) -> list[dict[str, np.ndarray]]:
    """``graph``'s calibration feeds from the bundle's sampler run on ONNX Runtime over ``graphs`` (graph -> ONNX
    file: the graphs compiled so far as compiled, so an int8 encoder feeds the denoiser's calibration)."""
    from .onnxrt import OrtRunner          # onnxrt imports this module

    runner = OrtRunner(bundle.spec, dict(graphs), spin=False)   # not timed: idle threads sleep
    return collect(runner, bundle.spec, bundle.nulls(), graph, calibration)


def preprocess(src: Path, dst: Path) -> None:
    """ONNX Runtime's own pre-quantization pass (graph folding, ONNX shape inference) and stable node names.

    Symbolic shape inference is skipped: it gives up on the dynamic batch of these graphs, and the
    quantizer needs only the element types, which ONNX shape inference provides. (When it gives up it
    also saves ``sym_shape_infer_temp.onnx`` and a ``<uuid>.data`` into the current directory.) Every
    other file the pass writes goes to its own temporary directory or to ``dst``."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx = _onnx()
    external = Path(f"{src}.data").exists()
    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True, save_as_external_data=external,
                      all_tensors_to_one_file=True, external_data_location=f"{dst.name}.data")
    model = onnx.load(str(dst))
    name_nodes(model)
    onnx.save(model, str(dst), save_as_external_data=external, all_tensors_to_one_file=True,
              location=f"{dst.name}.data")


def name_nodes(model: Any) -> None:
    """Give unnamed nodes a stable name (exclusion lists and the sensitivity table refer to nodes by name)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)


def quantize_static_qdq(src: Path, dst: Path, feeds: Sequence[dict[str, np.ndarray]], gio: GraphIO, graph: str,
                        sensitive: str = "int8-weights", activation: str = "uint8") -> dict[str, Any]:
    """Static QDQ int8 of the float graph ``src`` (already folded and named) into ``dst``.

    ``sensitive``: what the layers ``float_kept`` finds get: ``"int8-weights"`` (default) int8 weights with
    16-bit activations, which ONNX Runtime's CPU kernels dequantize and compute in float (a second
    ``quantize_static`` pass over just those nodes: the graph shrinks like the rest, the activations
    keep ~16 bits); ``"float"`` leaves them untouched.
    ``activation``: ``"uint8"`` (default, ONNX Runtime's asymmetric uint8) or ``"int8"``: symmetric int8
    activations, float biases, standard-domain Q/DQ only (TensorRT's explicit quantization; with it
    ``sensitive`` must be ``"float"``, as TensorRT has no 16-bit integer activations).
    """
    if activation not in ("uint8", "int8"):
        raise ValueError(f"activation {activation!r}: uint8 or int8")
    if activation == "int8" and sensitive != "float":
        raise ValueError("symmetric int8 activations (TensorRT) leave the sensitive layers float: sensitive='float'")
    model = _onnx().load(str(src))
    kept = float_kept(model, gio)
    with tempfile.TemporaryDirectory() as scratch:
        first = dst if sensitive == "float" or not kept else Path(scratch) / f"{graph}.int8.onnx"
        _quantize(src, first, feeds, activation=activation, exclude=sorted(kept))
        if first != dst:
            _quantize(first, dst, feeds, activation="uint16", only=sorted(kept))
    described = {"uint8": "uint8 activations", "int8": "symmetric int8 activations, float biases"}[activation]
    return {"method": f"onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, {described}, "
                      "MinMax ranges)",
            "sensitive_layers": {"float": "kept float (not quantized)",
                                 "int8-weights": "int8 weights, uint16 activations (computed in float)"}[sensitive],
            "calibration_calls": len(feeds), "float_kept": dict(sorted(kept.items())),
            **_checked(model, dst, graph)}


def quantize_weights(src: Path, dst: Path, feeds: Sequence[dict[str, np.ndarray]], graph: str) -> dict[str, Any]:
    """int8 weights for every conv/linear, activations at 16 bits: ONNX Runtime's CPU kernels have no 16-bit
    integer path, so they dequantize and compute in float (weight-only in effect). The 16-bit activation
    ranges are calibrated like int8's. (ORT's MatMulNBits weight-only quantizer covers MatMul and Gather
    only; the linear layers here are Gemm and Conv.)"""
    _quantize(src, dst, feeds, activation="uint16")
    return {"method": "onnxruntime.quantization.quantize_static (QDQ, per-channel int8 weights, uint16 activations "
                      "computed in float)", "calibration_calls": len(feeds),
            **_checked(_onnx().load(str(src)), dst, graph)}


def _checked(model: Any, dst: Path, graph: str) -> dict[str, Any]:
    """``op_counts`` of the quantized graph ``dst`` against its float ``model``, once its scales are known finite."""
    quantized = _onnx().load(str(dst))
    check_ranges(graph, quantization_parameters(quantized))
    return op_counts(model, quantized)


def _quantize(src: Path, dst: Path, feeds: Sequence[dict[str, np.ndarray]], activation: str,
              exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> None:
    """One ``quantize_static`` pass: per-channel symmetric int8 weights, MinMax activation ranges. ``activation``:
    ``uint8`` (ONNX Runtime's default, asymmetric), ``int8`` (TensorRT's: symmetric) or ``uint16`` (int8-weights:
    ONNX Runtime's CPU kernels compute 16-bit activations in float)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # 16-bit Q/DQ needs opset 21 or ONNX Runtime's own (com.microsoft) Q/DQ ops
    extra = {"MatMulConstBOnly": True, "WeightSymmetric": True, "UseQDQContribOps": activation == "uint16"}
    if activation == "int8":
        # TensorRT: symmetric (zero point 0) activations, and biases left float: it rejects int32 bias Q/DQ
        extra.update(ActivationSymmetric=True, QuantizeBias=False)
    quantize_static(str(src), str(dst), ListReader(feeds), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(WEIGHTED), per_channel=True, reduce_range=False,
                    activation_type={"uint8": QuantType.QUInt8, "int8": QuantType.QInt8,
                                     "uint16": QuantType.QUInt16}[activation],
                    weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                    nodes_to_quantize=None if only is None else list(only),
                    calibrate_method=CalibrationMethod.MinMax,
                    use_external_data_format=Path(f"{src}.data").exists(),     # large graphs keep external weights
                    extra_options=extra)


def quantization_parameters(model: Any) -> dict[str, np.ndarray]:
    """Every scale the quantized graph holds (initializers feeding Q/DQ nodes' scale input)."""
    onnx = _onnx()
    inits = {t.name: t for t in model.graph.initializer}
    scales = {n.input[1] for n in model.graph.node
              if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 1}
    return {s: onnx.numpy_helper.to_array(inits[s]) for s in sorted(scales) if s in inits}


def op_counts(before: Any, after: Any) -> dict[str, Any]:
    """What quantization did: Q/DQ and integer op counts, int8 weight tensors, float-by-type ops."""
    from collections import Counter

    onnx = _onnx()
    ops = Counter(n.op_type for n in after.graph.node)
    int8 = sum(1 for t in after.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
               and int(np.prod(t.dims or [1])) > 1)
    weighted = sum(1 for n in before.graph.node if n.op_type in WEIGHTED)
    return {"ops": {k: ops[k] for k in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
                                        "MatMulInteger", "ConvInteger") if ops[k]},
            "int8_weight_tensors": int8, "conv_linear_nodes": weighted,
            "float_by_type": {k: v for k, v in Counter(n.op_type for n in before.graph.node
                                                       if n.op_type in FLOAT_BY_TYPE).items()}}


def sensitivity(float_path: Path, qdq_path: Path, feeds: Sequence[dict[str, np.ndarray]],
                rows: int = SENSITIVITY_ROWS) -> dict[str, Any]:
    """Per-layer table from ``qdq_loss_debug``: the ``rows`` largest quantized conv/linear layers with their
    weight SQNR and output SQNR (int8 graph against the float graph), and the graph outputs' rel-L2."""
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                          compute_weight_error, create_activation_matching,
                                                          create_weight_matching,
                                                          modify_model_output_intermediate_tensors)

    onnx = _onnx()
    calls = list(feeds)[:SENSITIVITY_CALLS]
    with tempfile.TemporaryDirectory() as scratch:
        aug_f, aug_q = Path(scratch) / "float.onnx", Path(scratch) / "qdq.onnx"
        modify_model_output_intermediate_tensors(str(float_path), str(aug_f))
        modify_model_output_intermediate_tensors(str(qdq_path), str(aug_q))
        providers = ["CPUExecutionProvider"]
        acts_f = collect_activations(str(aug_f), ListReader(calls), execution_providers=providers)
        acts_q = collect_activations(str(aug_q), ListReader(calls), execution_providers=providers)
    act_err = compute_activation_error(create_activation_matching(acts_q, acts_f))
    weight_err = compute_weight_error(create_weight_matching(str(float_path), str(qdq_path)))
    model = onnx.load(str(float_path))
    inits = {t.name: int(np.prod(t.dims or [1])) for t in model.graph.initializer}
    table = []
    for n in model.graph.node:
        if n.op_type not in WEIGHTED or len(n.input) < 2 or n.input[1] not in weight_err:
            continue
        err = act_err.get(n.output[0], {})
        table.append({"node": n.name, "op": n.op_type, "weight_params": inits.get(n.input[1], 0),
                      "weight_sqnr_db": _db(weight_err[n.input[1]]),
                      "output_sqnr_db": _db(err.get("xmodel_err")), "output_qdq_sqnr_db": _db(err.get("qdq_err"))})
    table.sort(key=lambda r: (-r["weight_params"], r["node"]))
    outputs = {}
    for o in model.graph.output:
        f = np.concatenate([np.ravel(a) for a in acts_f.get(o.name, [])] or [np.zeros(1)])
        q = np.concatenate([np.ravel(a) for a in acts_q.get(o.name, [])] or [np.zeros(1)])
        outputs[o.name] = float(np.linalg.norm(q - f) / max(np.linalg.norm(f), 1e-30))
    return {"method": "onnxruntime.quantization.qdq_loss_debug on the first calibration calls", "calls": len(calls),
            "quantized_layers": len(table), "rows": table[:rows], "output_rel_l2": outputs}


def _db(value: Any) -> float | None:
    if value is None:
        return None
    v = float(np.asarray(value))
    return round(v, 2) if np.isfinite(v) else None
