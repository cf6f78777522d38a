"""Core ML weight compression and int8 through ``coremltools.optimize.coreml``, and what proves it structurally.

A graph is first converted to a float ML program (``coreml_backend.convert_graph``), then compressed:

* ``int8-weights``: ``linear_quantize_weights`` with ``OpLinearQuantizerConfig(mode="linear_symmetric",
  dtype="int8")`` (per output channel); activations stay fp32.
* ``palettize4`` / ``palettize6`` / ``palettize8``: ``palettize_weights`` with
  ``OpPalettizerConfig(mode="kmeans", nbits=N)``: each weight tensor becomes N-bit indices into a
  2^N-entry float table.
* ``int8`` (weights and activations): ``linear_quantize_activations`` then ``linear_quantize_weights``.
  coremltools calibrates activation ranges by *predicting* with the float model on sample inputs, which
  Core ML only does on macOS: elsewhere it is unavailable (exit 3), never approximated.

Only weights of the layers that carry the network's arithmetic (conv, linear, matmul) are compressed;
layers that are known to be sensitive stay float (:func:`float_layers`, the rule of ``int8_layers`` that
every backend shares): the conditioning embedding path (time, class and FiLM / adaLN generators: every
step's modulation flows through it), the first conv/linear on the sample path and the last one before
each output. Normalisation scales and biases never feed those ops,
so they stay float too, and with int8 activations norms and softmax keep float inputs.
``sensitive_layers="compressed"`` (a compile option) compresses the sensitive layers as well.

In the saved package the compressed weights are ``constexpr_*`` ops (``constexpr_blockwise_shift_scale``
or ``constexpr_affine_dequantize`` for int8, ``constexpr_lut_to_dense`` for palettes) whose data type
says the bit width (INT8, UINT4/6/8): :func:`compression_checks` counts them, checks the bit width,
that the float layers really read float weights, and the on-disk size against the float conversion of
the same graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from dualrate.exporter.errors import BadInputError
from dualrate.exporter.spec import GraphIO

# precision -> (coremltools method, bits per compressed weight)
WEIGHT_PRECISIONS = {"int8-weights": ("linear", 8), "palettize4": ("palettize", 4),
                     "palettize6": ("palettize", 6), "palettize8": ("palettize", 8)}
ACTIVATION_PRECISIONS = {"int8": ("linear", 8)}
COMPRESSED_PRECISIONS = {**WEIGHT_PRECISIONS, **ACTIVATION_PRECISIONS}
# the ops a compressed weight becomes in the package, per method (coremltools picks by deployment target)
CONSTEXPR_OPS = {"linear": frozenset({"constexpr_affine_dequantize", "constexpr_blockwise_shift_scale"}),
                 "palettize": frozenset({"constexpr_lut_to_dense"})}
ALL_CONSTEXPR_OPS = frozenset().union(*CONSTEXPR_OPS.values())
ACTIVATION_QUANT_OPS = frozenset({"quantize", "dequantize"})
# the data type of the compressed payload: int8 values, or N-bit palette indices
PAYLOAD_INPUTS = {"constexpr_blockwise_shift_scale": "data", "constexpr_affine_dequantize": "quantized_data",
                  "constexpr_lut_to_dense": "indices"}
PAYLOAD_DTYPES = {("linear", 8): ("INT8",), ("palettize", 4): ("UINT4",), ("palettize", 6): ("UINT6",),
                  ("palettize", 8): ("UINT8",)}
WEIGHT_OP_TYPES = ("conv", "conv_transpose", "linear", "matmul")
# with int8 activations these keep float inputs: reductions and exponentials need the range
FLOAT_ACTIVATION_OP_TYPES = ("softmax", "layer_norm", "instance_norm", "batch_norm", "l2_norm", "sin", "cos",
                             "reduce_mean", "reduce_sum", "rsqrt", "sqrt", "exp", "real_div")
# Tensors of at most this many elements stay float: a bias or a 16x16 projection saves less than its
# scales / palette and the extra op cost (coremltools' own default is 2048, which would leave most of a
# small model float).
WEIGHT_THRESHOLD = 512
SIZE_SLACK = 1.25               # the size check's tolerance over the ideal bits ratio ...
SIDE_BYTES_PER_TENSOR = 1088    # ... plus a palette (up to 256 fp32 entries) or per-channel scales per tensor


def _cto():
    import coremltools.optimize.coreml as cto
    return cto


def method_bits(precision: str) -> tuple[str, int]:
    """(``linear`` | ``palettize``, bits) of a compressed precision."""
    return COMPRESSED_PRECISIONS[precision]


# -- which layers stay float ----------------------------------------------------
def _input_vars(op: Any) -> list[Any]:
    out = []
    for value in op.inputs.values():
        out.extend(value if isinstance(value, (list, tuple)) else (value,))
    return out


def _const_weight(op: Any, threshold: int) -> bool:
    """Whether ``op`` reads a constant tensor large enough to be compressed."""
    return any(v.op is not None and v.op.op_type == "const" and v.val is not None
               and np.size(v.val) > threshold for v in _input_vars(op))


def float_layers(program: Any, conditioning: Iterable[str], threshold: int = WEIGHT_THRESHOLD) -> dict[str, str]:
    """``{op name: why it stays float}`` for the sensitive weighted ops of a MIL program, by the rule every
    backend shares (``int8_layers.sensitive_layers``: the conditioning embedding / FiLM projections, the
    first conv/linear on the sample path, the last before each output). ``conditioning``: the program
    inputs bound to time or conditioning. Only ops whose weight would be compressed (over ``threshold``
    elements) count as weighted."""
    from .int8_layers import Layer, sensitive_layers

    fn = program.functions["main"]
    layers = [Layer(op.name, tuple(v.name for v in _input_vars(op) if v.op is None or v.op.op_type != "const"),
                    tuple(o.name for o in op.outputs),
                    op.op_type in WEIGHT_OP_TYPES and _const_weight(op, threshold))
              for op in fn.operations if op.op_type != "const"]
    return sensitive_layers(layers, conditioning, [(o.name, o.name) for o in fn.outputs])


# -- compressing ------------------------------------------------------------------
def _op_config(precision: str) -> Any:
    cto = _cto()
    method, bits = method_bits(precision)
    if method == "palettize":
        return cto.OpPalettizerConfig(mode="kmeans", nbits=bits, weight_threshold=WEIGHT_THRESHOLD)
    return cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=WEIGHT_THRESHOLD)


def weight_config(precision: str, keep_float: Iterable[str]) -> Any:
    """The ``OptimizationConfig``: ``precision``'s config on conv / linear / matmul weights only (no
    global config, so norm scales and other constants stay float), ``None`` for the float layers."""
    cto = _cto()
    config = _op_config(precision)
    return cto.OptimizationConfig(op_type_configs={t: config for t in WEIGHT_OP_TYPES},
                                  op_name_configs={name: None for name in keep_float})


def activation_config(keep_float: Iterable[str]) -> Any:
    """int8 activations everywhere coremltools inserts them, except the float layers and the ops of
    ``FLOAT_ACTIVATION_OP_TYPES``."""
    cto = _cto()
    config = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=WEIGHT_THRESHOLD)
    return cto.OptimizationConfig(global_config=config,
                                  op_type_configs={t: None for t in FLOAT_ACTIVATION_OP_TYPES},
                                  op_name_configs={name: None for name in keep_float})


SENSITIVE_CHOICES = ("float", "compressed")


def check_sensitive(sensitive: str) -> None:
    if sensitive not in SENSITIVE_CHOICES:
        raise BadInputError(f"sensitive_layers {sensitive!r}: choose {' or '.join(SENSITIVE_CHOICES)} (float keeps "
                            "the conditioning embedding, first and last layers uncompressed)")


def compress(mlmodel: Any, precision: str, io_spec: GraphIO, names: Mapping[str, str],
             samples: Sequence[Mapping[str, np.ndarray]] | None = None,
             program: Any = None, sensitive: str = "float") -> tuple[Any, dict[str, Any]]:
    """``mlmodel`` (a float ML program; loaded for prediction when ``precision`` is int8) compressed to
    ``precision``; returns it and the record: method, bits, the sensitive layers and which stay float.

    ``names`` maps the spec's I/O names to the package's; ``samples`` (int8 only) are calibration
    inputs by package name; ``program`` is the model's MIL program where ``mlmodel`` (loaded from disk)
    no longer carries it. ``sensitive="compressed"`` compresses the sensitive layers too: on adaLN / FiLM
    models the conditioning projections hold a fifth to a third of the weight bytes, so this is the
    smaller package, at the fidelity cost the macOS numeric layers measure.
    """
    from .coreml_backend import _quiet

    check_sensitive(sensitive)
    cto = _cto()
    method, bits = method_bits(precision)
    from .int8_layers import conditioning_inputs

    found = float_layers(program if program is not None else mlmodel._mil_program,
                         [names[n] for n in conditioning_inputs(io_spec)])
    keep = found if sensitive == "float" else {}
    info = {"method": {"linear": "linear_quantize_weights", "palettize": "palettize_weights"}[method],
            "config": {"mode": "kmeans" if method == "palettize" else "linear_symmetric", "bits": bits,
                       "weight_threshold": WEIGHT_THRESHOLD, "op_types": list(WEIGHT_OP_TYPES)},
            "sensitive": sensitive, "sensitive_layers": found, "float_layers": keep, "activations": "fp32"}
    try:
        with _quiet():
            if precision in ACTIVATION_PRECISIONS:
                if not samples:
                    raise BadInputError(f"Core ML {precision} needs calibration samples; none were given")
                mlmodel = cto.linear_quantize_activations(mlmodel, activation_config(keep), list(samples))
                info.update(activations="int8", calibration_samples=len(samples),
                            float_activation_op_types=list(FLOAT_ACTIVATION_OP_TYPES))
            fn = cto.palettize_weights if method == "palettize" else cto.linear_quantize_weights
            mlmodel = fn(mlmodel, weight_config(precision, keep))
    except ValueError as exc:          # e.g. one constant shared by a float layer and a compressed one
        raise BadInputError(f"coremltools could not compress this graph to {precision}: "
                            f"{str(exc).strip().splitlines()[0]}") from None
    return mlmodel, info


def package_sizes(path: Path) -> dict[str, int]:
    """Bytes on disk of an .mlpackage and of its weight file(s)."""
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    return {"package_bytes": sum(p.stat().st_size for p in files),
            "weight_bytes": sum(p.stat().st_size for p in files if p.parent.name == "weights")}


# -- structural proof ------------------------------------------------------------
def compression_inventory(ops: Iterable[Any]) -> dict[str, Any]:
    """From a package's ML program ops: the constexpr ops by type, their payload dtypes, how many
    weight elements they hold, and for every weighted op whether its weight comes from one."""
    from coremltools.proto import MIL_pb2

    constexpr: dict[str, int] = {}
    payload: dict[str, int] = {}
    elements = 0
    decompressed: set[str] = set()
    weight_source: dict[str, str] = {}
    ops = list(ops)
    for op in ops:
        if op.type in ALL_CONSTEXPR_OPS:
            constexpr[op.type] = constexpr.get(op.type, 0) + 1
            arg = op.inputs[PAYLOAD_INPUTS[op.type]].arguments[0] if PAYLOAD_INPUTS[op.type] in op.inputs else None
            if arg is not None and arg.HasField("value"):
                dtype = MIL_pb2.DataType.Name(arg.value.type.tensorType.dataType)
                payload[dtype] = payload.get(dtype, 0) + 1
            for o in op.outputs:
                decompressed.add(o.name)
                elements += int(np.prod([d.constant.size for d in o.type.tensorType.dimensions]))
    for op in ops:
        if op.type in WEIGHT_OP_TYPES:
            name = op.attributes["name"].immediateValue.tensor.strings.values[0] if "name" in op.attributes else ""
            args = [a.name for key in ("weight", "x", "y") if key in op.inputs for a in op.inputs[key].arguments]
            weight_source[name] = "compressed" if any(a in decompressed for a in args) else "float"
    return {"constexpr_ops": constexpr, "payload_dtypes": payload, "compressed_elements": elements,
            "weight_source": weight_source, "activation_quant_ops": {t: sum(op.type == t for op in ops)
                                                                   for t in sorted(ACTIVATION_QUANT_OPS)}}


def compression_checks(precision: str, inventory: Mapping[str, Any], sizes: Mapping[str, int],
                       record: Mapping[str, Any]) -> list[tuple[str, list[str], str]]:
    """``(name, problems, detail when none)`` for a package compiled at ``precision``: the compressed
    ops, their bit width, the float layers, int8 activations, the size against the float conversion."""
    method, bits = method_bits(precision)
    want_ops, other = CONSTEXPR_OPS[method], ALL_CONSTEXPR_OPS - CONSTEXPR_OPS[method]
    got = inventory["constexpr_ops"]
    n = sum(v for k, v in got.items() if k in want_ops)
    problems = [] if n else [f"no {' / '.join(sorted(want_ops))} ops: the weights are not compressed"]
    problems += [f"{v} {k} ops, which {precision} does not make" for k, v in got.items() if k in other]
    wrong = {d: c for d, c in inventory["payload_dtypes"].items() if d not in PAYLOAD_DTYPES[(method, bits)]}
    if wrong:
        problems.append(f"payload dtypes {wrong}, expected {'/'.join(PAYLOAD_DTYPES[(method, bits)])}")
    sources = inventory["weight_source"]
    n_float = sum(s == "float" for s in sources.values())
    checks = [("compressed weights", problems,
               f"{n} {'/'.join(sorted(k for k in got if k in want_ops))} ops, payload "
               f"{inventory['payload_dtypes']}, {inventory['compressed_elements']} weight elements at {bits} bits; "
               f"{len(sources) - n_float} of {len(sources)} conv/linear/matmul layers read compressed weights")]

    kept = dict(record.get("float_layers") or {})
    problems = [f"{name} ({why}) reads compressed weights" for name, why in kept.items()
                if sources.get(name) == "compressed"]
    problems += [f"{name} ({why}) is not in the package" for name, why in kept.items() if name not in sources]
    if kept:
        detail = f"{len(kept)} sensitive layers read float weights: " + ", ".join(f"{k} ({v})" for k, v in kept.items())
    elif record.get("sensitive") == "compressed":
        detail = f"none: the {len(record.get('sensitive_layers') or {})} sensitive layers are compressed as asked"
    else:
        detail = "no sensitive weighted layers"
    checks.append(("float layers", problems, detail))

    quant = inventory["activation_quant_ops"]
    if precision in ACTIVATION_PRECISIONS:
        problems = [] if all(quant.values()) else [f"activation quantize/dequantize ops {quant}: none inserted"]
    else:
        problems = ([f"activation quantize/dequantize ops {quant} in a weight-only program"]
                    if any(quant.values()) else [])
    checks.append(("activations", problems, f"quantize/dequantize ops {quant}"))

    float_w = int(record.get("float_weight_bytes") or 0)
    got_w, got_p = int(sizes["weight_bytes"]), int(sizes["package_bytes"])
    if not float_w:
        checks.append(("on-disk size", ["the compile record has no float_weight_bytes to compare with"], ""))
        return checks
    share = min(1.0, 4 * inventory["compressed_elements"] / float_w)     # fp32 bytes the constexpr ops replace
    bound = float_w * (1 - share * (1 - bits / 32)) * SIZE_SLACK + SIDE_BYTES_PER_TENSOR * n
    float_p = int(record.get("float_package_bytes") or 0)
    detail = (f"weights {got_w} B vs {float_w} B fp32 ({float_w / max(got_w, 1):.2f}x smaller), package {got_p} B vs "
              f"{float_p} B ({float_p / max(got_p, 1):.2f}x); {share:.0%} of the fp32 weight bytes compressed, "
              f"bound {bound:.0f} B")
    checks.append(("on-disk size", [] if got_w <= bound else [f"{detail}: larger than the bound"], detail))
    return checks


__all__ = ["ACTIVATION_PRECISIONS", "COMPRESSED_PRECISIONS", "WEIGHT_PRECISIONS", "compress", "compression_checks",
           "compression_inventory", "float_layers", "package_sizes", "weight_config"]
