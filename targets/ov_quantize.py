"""int8 OpenVINO models made by NNCF (``nncf``, imported only here and only when quantizing).

* ``int8``: ``nncf.quantize`` (post-training static quantization, FakeQuantize on activations and
  int8 weights) on the calibration feeds the bundle's own sampler recorded
  (``exporter/int8_calibration.py``), ``ModelType.TRANSFORMER`` where the graph has attention.
  The sensitive conv/linear layers (``int8_layers``) and attention / softmax / normalisation are in
  the ignored scope, so their activations and arithmetic stay float; afterwards
  ``nncf.compress_weights(INT8_ASYM)`` stores the float layers' weights in int8 as well (the CPU
  plugin decompresses them on the fly), since on adaLN models those projections hold a large share
  of the weights. ``sensitive="float"`` skips that step.
* ``int8-weights``: ``nncf.compress_weights(mode=INT8_ASYM)``: per-channel int8 weights, float
  activations, no calibration.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from typing import Any, Collection, Sequence

import numpy as np

from dualrate.exporter.errors import BackendUnavailableError
from dualrate.exporter.int8_calibration import check_ranges

from .int8_layers import Layer, sensitive_layers

WEIGHTED = ("Convolution", "GroupConvolution", "MatMul")
# left float by type: attention (its softmax inside), normalisation, softmax itself
FLOAT_TYPES = ("ScaledDotProductAttention", "Softmax", "MVN", "NormalizeL2", "GroupNormalization")
INSTALL_HINT = "pip install 'dualrate[openvino]' (it brings nncf)"


def _nncf():
    try:
        import nncf
    except ImportError as exc:
        raise BackendUnavailableError(f"OpenVINO int8 needs NNCF, which cannot be imported ({exc}); "
                                      f"{INSTALL_HINT}") from None
    nncf.set_log_level(logging.ERROR)
    return nncf


@contextlib.contextmanager
def _quiet():
    """NNCF draws progress bars on stdout; the CLI's own stage lines say what is happening."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def float_kept(model: Any, conditioning_inputs: Collection[str]) -> dict[str, str]:
    """IR op friendly name -> why it stays float (``int8_layers.sensitive_layers`` over the IR ops)."""
    ops = list(model.get_ordered_ops())
    const: set[str] = set()
    for op in ops:                          # constants, and what is folded from constants alone (Convert...)
        srcs = [i.get_source_output().get_node() for i in op.inputs()]
        if op.get_type_name() == "Constant" or (srcs and all(s.get_friendly_name() in const for s in srcs)):
            const.add(op.get_friendly_name())

    def tensor(port: Any) -> str:
        return f"{port.get_node().get_friendly_name()}:{port.get_index()}"

    wanted = set(conditioning_inputs)
    layers, cond_tensors = [], []
    for op in ops:
        name = op.get_friendly_name()
        if name in const:
            continue
        srcs = [i.get_source_output() for i in op.inputs()]
        ins = tuple(tensor(s) for s in srcs if s.get_node().get_friendly_name() not in const)
        outs = tuple(tensor(o) for o in op.outputs())
        if op.get_type_name() == "Parameter" and op.output(0).get_any_name() in wanted:
            cond_tensors.extend(outs)
        weighted = (op.get_type_name() in WEIGHTED and len(srcs) > 1
                    and srcs[1].get_node().get_friendly_name() in const)
        layers.append(Layer(name, ins, outs, weighted))
    outputs = [(r.get_any_name(), tensor(r.get_node().input_value(0))) for r in model.outputs]
    return sensitive_layers(layers, cond_tensors, outputs)


def has_attention(model: Any) -> bool:
    return any(op.get_type_name() in ("ScaledDotProductAttention", "Softmax") for op in model.get_ordered_ops())


def quantize_int8(model: Any, feeds: Sequence[dict[str, np.ndarray]], conditioning_inputs: Collection[str],
                  graph: str, sensitive: str = "int8-weights") -> tuple[Any, dict[str, Any]]:
    """(quantized model, record) for ``int8``; see the module docstring."""
    nncf = _nncf()
    kept = float_kept(model, conditioning_inputs)
    attention = has_attention(model)
    scope = nncf.IgnoredScope(names=sorted(kept), types=list(FLOAT_TYPES), validate=False)
    with _quiet():
        quantized = nncf.quantize(model, nncf.Dataset(list(feeds)), subset_size=len(feeds),
                                  model_type=nncf.ModelType.TRANSFORMER if attention else None,
                                  ignored_scope=scope)
        if sensitive == "int8-weights":
            quantized = nncf.compress_weights(quantized, mode=nncf.CompressWeightsMode.INT8_ASYM)
    check_ranges(graph, fake_quantize_ranges(quantized))
    return quantized, {"method": "nncf.quantize (post-training static int8, NNCF's default pipeline for the model type)"
                                 + (", then nncf.compress_weights(INT8_ASYM) for the float layers"
                                    if sensitive == "int8-weights" else ""),
                       "nncf": nncf.__version__, "model_type": "TRANSFORMER" if attention else "default",
                       "calibration_calls": len(feeds), "float_kept": dict(sorted(kept.items())),
                       "float_types": list(FLOAT_TYPES),
                       "sensitive_layers": {"int8-weights": "int8 weights, float activations",
                                            "float": "kept float (not quantized)"}[sensitive]}


def compress_int8(model: Any) -> tuple[Any, dict[str, Any]]:
    """(model with int8 weights, record) for ``int8-weights``."""
    nncf = _nncf()
    with _quiet():
        compressed = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    return compressed, {"method": "nncf.compress_weights(mode=INT8_ASYM): per-channel int8 weights, float "
                                  "activations", "nncf": nncf.__version__}


def fake_quantize_ranges(model: Any) -> dict[str, np.ndarray]:
    """The input/output ranges of every FakeQuantize (what calibration produced), by op name."""
    ranges = {}
    for op in model.get_ordered_ops():
        if op.get_type_name() != "FakeQuantize":
            continue
        for k in range(1, 5):
            src = op.input_value(k).get_node()
            if src.get_type_name() == "Constant":
                ranges[f"{op.get_friendly_name()}[{k}]"] = src.get_data()
    return ranges


def op_counts(model: Any) -> dict[str, Any]:
    """FakeQuantize count and how many weight constants are stored as 8-bit integers (of a saved IR read
    back: quantized weights become int8 constants when the model is saved)."""
    ops = list(model.get_ordered_ops())
    kinds = Counter(op.get_type_name() for op in ops)
    int8 = sum(1 for op in ops if op.get_type_name() == "Constant"
               and op.get_element_type().get_type_name() in ("i8", "u8") and int(np.prod(op.get_shape())) > 1)
    return {"ops": {"FakeQuantize": kinds["FakeQuantize"]}, "int8_weight_tensors": int8,
            "conv_linear_nodes": sum(kinds[k] for k in WEIGHTED)}


def sensitivity(float_model: Any, quantized: Any, feeds: Sequence[dict[str, np.ndarray]], core: Any,
                properties: dict[str, str], rows: int = 16, calls: int = 4) -> dict[str, Any]:
    """Per-layer table: for the ``rows`` largest conv/linear layers, the SQNR (dB) of the layer's output in
    the int8 model against the float model on the first ``calls`` calibration calls, and the graph
    outputs' rel-L2 (measured by running both with every listed layer's output exposed)."""
    sizes = {}
    for op in float_model.get_ordered_ops():
        if op.get_type_name() in WEIGHTED and op.get_input_size() > 1:
            w = op.input_value(1).get_node()
            if w.get_type_name() == "Constant":
                sizes[op.get_friendly_name()] = int(np.prod(w.get_shape()))
    names = sorted(sizes, key=lambda n: (-sizes[n], n))[:rows]

    def run(model: Any) -> tuple[list[list[np.ndarray]], dict[str, list[np.ndarray]]]:
        m = model.clone()
        by_name = {op.get_friendly_name(): op for op in m.get_ordered_ops()}
        found = [n for n in names if n in by_name]
        n_out = len(m.outputs)
        m.add_outputs([by_name[n].output(0) for n in found])
        compiled = core.compile_model(m, "CPU", properties)
        outs, layers = [], {n: [] for n in found}
        for feed in list(feeds)[:calls]:
            res = compiled(feed)
            values = [np.asarray(res[p]) for p in compiled.outputs]
            outs.append(values[:n_out])
            for n, v in zip(found, values[n_out:]):
                layers[n].append(v)
        return outs, layers

    f_out, f_layers = run(float_model)
    q_out, q_layers = run(quantized)
    table = []
    for n in names:
        if n in f_layers and n in q_layers:
            f = np.concatenate([a.ravel() for a in f_layers[n]]).astype(np.float64)
            q = np.concatenate([a.ravel() for a in q_layers[n]]).astype(np.float64)
            err = float(np.sum((q - f) ** 2))
            sqnr = 10 * np.log10(float(np.sum(f ** 2)) / err) if err > 0 else None
            table.append({"node": n, "weight_params": sizes[n],
                          "output_sqnr_db": None if sqnr is None or not np.isfinite(sqnr) else round(sqnr, 2)})
    rel = {}
    for i, port in enumerate(float_model.outputs):
        f = np.concatenate([o[i].ravel() for o in f_out]).astype(np.float64)
        q = np.concatenate([o[i].ravel() for o in q_out]).astype(np.float64)
        rel[port.get_any_name()] = float(np.linalg.norm(q - f) / max(np.linalg.norm(f), 1e-30))
    return {"method": "float vs int8 OpenVINO model, each conv/linear output exposed, on the first calibration calls",
            "calls": min(calls, len(feeds)), "rows": table, "output_rel_l2": rel}
