"""Core ML target: every graph converted from the model's PyTorch modules to ML Program packages.

coremltools has no ONNX frontend any more, so compile converts the modules themselves:
the model comes from the checkpoint the bundle was exported from (manifest
``source_checkpoint``, or ``checkpoint=``; sha256-verified) or, for a bundle exported
from Python, from the ``model=`` option (a ``DualRateModel`` whose weights' sha256 must
be the manifest's ``source.sha256``). Each graph is the same ``BoundGraph`` the ONNX
export traced (``bound_encoder()``, ``bound_denoiser(features)``, ``bound_decoder()``),
with the spec's input names, and example inputs from the bundle's golden ``<graph>_io``.
Capture goes through ``torch.export`` first and falls back to ``torch.jit.trace``
(each fails on different layers); the batch axis becomes ``ct.EnumeratedShapes``
(several such inputs need iOS 18 / macOS 15), or the bundle's static batch. fp16 is
preceded by a PyTorch range check on the golden inputs, and keeps the sin/cos
arguments in fp32. Each graph compiles at its own precision of the plan: ``int8-weights`` and
``palettize4/6/8`` compress the fp32 program's weights, ``int8`` also quantizes activations
(``coreml_quantize``; int8 calibrates by predicting, so macOS only). Packages are saved with
content-derived bytes (``save_package``): the same compile gives the same files.

Core ML predicts only on macOS. Elsewhere the packages are converted, saved and
inspected (``structural_checks``); numeric parity is reported as not run.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import logging
import platform
import re
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from dualrate.exporter.bundle import Bundle, load_source_checkpoint
from dualrate.exporter.errors import BackendUnavailableError, BadInputError
from dualrate.exporter.sampling import graph_rows
from dualrate.exporter.golden import graph_calls
from dualrate.exporter.model_pair import BoundGraph, DualRateModel
from dualrate.exporter.runner import BaseRunner
from dualrate.exporter.spec import GraphIO, Spec

from .base import Compiled, Target
from .coreml_quantize import (ACTIVATION_PRECISIONS, ACTIVATION_QUANT_OPS, ALL_CONSTEXPR_OPS,
                              COMPRESSED_PRECISIONS, check_sensitive, compress, compression_checks,
                              compression_inventory, package_sizes)
from .precision_plan import PrecisionPlan

DEFAULT_SAMPLE_BATCHES = (1, 2, 4, 8)     # samples per sampler call; rows double under batched guidance
PATHS = {"export": "torch.export", "trace": "torch.jit.trace"}
FP16_MAX = 65504.0
FP16_WARN = FP16_MAX / 4
# Core ML multiarrays have no int64: integer inputs (class ids, timesteps) are int32 in the package
# and the runner casts; float inputs and outputs are float32.
COREML_DTYPES = {"float32": "FLOAT32", "int64": "INT32", "float16": "FLOAT32", "int32": "INT32"}
TRIG_OPS = frozenset({"sin", "cos"})
# ML program ops that plain conv/transformer layers convert to; anything else is flagged.
KNOWN_OPS = frozenset({
    "const", "identity", "cast", "shape", "reshape", "transpose", "expand_dims", "squeeze", "concat", "split",
    "stack", "tile", "slice_by_index", "slice_by_size", "gather", "gather_nd", "select", "fill", "range_1d", "pad",
    "add", "sub", "mul", "real_div", "floor_div", "mod", "pow", "sqrt", "rsqrt", "inverse", "square", "exp", "log",
    "abs", "sign", "floor", "ceil", "round", "clip", "maximum", "minimum", "erf",
    "sin", "cos", "tanh", "sigmoid", "relu", "silu", "gelu", "softplus", "leaky_relu", "elu", "softmax",
    "equal", "not_equal", "less", "less_equal", "greater", "greater_equal", "logical_and", "logical_or",
    "logical_not", "reduce_mean", "reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "reduce_l2_norm",
    "cumsum", "matmul", "linear", "einsum", "scaled_dot_product_attention", "band_part",
    "conv", "conv_transpose", "avg_pool", "max_pool", "batch_norm", "instance_norm", "layer_norm", "l2_norm",
    "upsample_nearest_neighbor", "upsample_bilinear", "resize_nearest_neighbor", "resize_bilinear",
    "pixel_shuffle", "pixel_unshuffle", "depth_to_space", "space_to_depth"})


def _ct():
    # On Linux coremltools warns at import that its native (prediction) library is
    # missing; that is expected here and numeric_unavailable() says it properly.
    log = logging.getLogger("coremltools")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        import coremltools
    finally:
        log.setLevel(level)
    return coremltools


# loggers that report on a capture attempt whose failure is handled (recorded, then the next path)
QUIET_LOGGERS = ("coremltools", "torch.export", "torch._export", "torch._dynamo",
                 "torch.fx.experimental.symbolic_shapes")


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Converters print progress bars, warnings and log lines; the caller's progress display is ours to own."""
    logs = [logging.getLogger(name) for name in QUIET_LOGGERS]
    levels = [log.level for log in logs]
    for log in logs:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(logs, levels):
            log.setLevel(level)


# -- batch shapes ----------------------------------------------------------------
def coreml_rows(spec: Spec, manifest: dict[str, Any], batch_sizes: Sequence[int] | None = None) -> list[int]:
    """Row counts the packages accept: the static batch, or each batch size, its guidance
    rows (``graph_rows``) and the golden rows the bundle was validated with."""
    first = spec.model.encoder.inputs[0].shape[0]
    if isinstance(first, int):
        return [first]
    sizes = tuple(batch_sizes or DEFAULT_SAMPLE_BATCHES)
    if not sizes or min(sizes) < 1:
        raise BadInputError(f"batch_sizes {list(sizes)}: expected positive sample counts")
    rows = {n for b in sizes for n in (b, graph_rows(spec, b))}
    golden = (manifest.get("graph_rows") or {}).get("golden")
    if golden:
        rows.add(int(golden))
    if len(rows) > 128:
        raise BadInputError(f"{len(rows)} batch shapes requested; Core ML enumerates at most 128")
    return sorted(rows)


def coreml_names(gio: GraphIO) -> dict[str, str]:
    """Spec I/O name -> the name of that feature in the Core ML package.

    Core ML feature names are identifiers (``[A-Za-z_][A-Za-z0-9_]*``); coremltools would rename
    any other (``down_block_res_samples.0`` -> ``down_block_res_samples_0``), so dualrate picks
    the name itself, the same way for conversion, structural checks and the runner: other
    characters become ``_``, a leading digit gets a ``_`` prefix, a clash a ``_<k>`` suffix.
    """
    names = [t.name for t in (*gio.inputs, *gio.outputs)]
    used = {n for n in names if _IDENTIFIER.fullmatch(n)}
    out: dict[str, str] = {}
    for n in names:
        if _IDENTIFIER.fullmatch(n):
            out[n] = n
            continue
        base = re.sub(r"[^A-Za-z0-9_]", "_", n)
        base = base if base and not base[0].isdigit() else "_" + base
        name, k = base, 1
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        out[n] = name
    return out


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _shape(shape: Sequence[int | str], rows: int) -> tuple[int, ...]:
    return tuple(rows if d == "batch" else int(d) for d in shape)


# -- fp16 pre-flight --------------------------------------------------------------
def fp16_preflight(modules: dict[str, Any], calls: dict[str, list[dict[str, np.ndarray]]],
                   input_names: dict[str, list[str]]) -> dict[str, Any]:
    """Run each module on recorded inputs; report every submodule's max |x| over its inputs and outputs.

    Module hooks see module boundaries only: values made and consumed inside one
    ``forward`` (an attention logit, say) are covered through the module that
    holds them.
    """
    report: dict[str, Any] = {"limit": FP16_MAX, "warn_above": FP16_WARN, "graphs": {}, "overflow": [],
                              "near_limit": []}
    for graph, module in modules.items():
        peaks: dict[str, float] = {}

        def hook(name: str):
            def record(_mod, args, out):
                flat = [t for t in (*args, *(out if isinstance(out, (tuple, list)) else (out,)))
                        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
                if flat:
                    peak = max(float(t.detach().abs().max()) for t in flat)
                    peaks[name] = max(peaks.get(name, 0.0), peak)
            return record

        handles = [m.register_forward_hook(hook(n or graph)) for n, m in module.named_modules()]
        try:
            with torch.inference_mode():
                for call in calls[graph]:
                    module(*(torch.from_numpy(np.ascontiguousarray(call[n])) for n in input_names[graph]))
        finally:
            for h in handles:
                h.remove()
        top = sorted(peaks.items(), key=lambda kv: -kv[1])
        report["graphs"][graph] = {"max_abs": top[0][1] if top else 0.0, "module": top[0][0] if top else None,
                                   "calls": len(calls[graph]), "top": [[n, v] for n, v in top[:5]]}
        report["overflow"] += [f"{graph}:{n} reaches {v:.4g}" for n, v in top if v > FP16_MAX]
        report["near_limit"] += [f"{graph}:{n} reaches {v:.4g}" for n, v in top if FP16_WARN < v <= FP16_MAX]
    report["verdict"] = "overflow" if report["overflow"] else ("near limit" if report["near_limit"] else "ok")
    return report


def check_fp16_preflight(report: dict[str, Any], allow_overflow: bool = False) -> None:
    """Refuse an fp16 compile whose golden inputs already overflow fp16 in PyTorch."""
    if report["overflow"] and not allow_overflow:
        worst = "; ".join(report["overflow"][:3]) + (f" (+{len(report['overflow']) - 3} more)"
                                                      if len(report["overflow"]) > 3 else "")
        raise BadInputError(
            f"fp16 pre-flight: on the bundle's recorded inputs, {worst}, beyond fp16's largest value "
            f"{FP16_MAX:g}; the fp16 Core ML model would produce inf/NaN there. Compile with --precision fp32, or "
            "pass allow_fp16_overflow=True (CLI: --allow-fp16-overflow) to convert anyway")


# -- conversion ----------------------------------------------------------------
class PortableGroupNorm(nn.Module):
    """``nn.GroupNorm`` arithmetic with a ``-1`` batch axis.

    coremltools' ``group_norm`` conversion builds a reshape constant from the batch
    size, which is symbolic under enumerated shapes, and fails; this form converts.
    """

    def __init__(self, src: nn.GroupNorm):
        super().__init__()
        # plain ints: a traced shape lookup would become a shape op on the symbolic batch
        self.groups, self.channels, self.eps = src.num_groups, src.num_channels, src.eps
        self.weight, self.bias = src.weight, src.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unflatten(1, (self.groups, self.channels // self.groups))
        dims = tuple(range(2, h.dim()))
        mean = h.mean(dim=dims, keepdim=True)
        var = (h - mean).pow(2).mean(dim=dims, keepdim=True)        # biased, as GroupNorm
        h = ((h - mean) / torch.sqrt(var + self.eps)).flatten(1, 2)
        if self.weight is not None:
            view = (1, -1) + (1,) * (h.dim() - 2)
            h = h * self.weight.view(view) + self.bias.view(view)
        return h


def portable_module(module: nn.Module) -> tuple[nn.Module, int]:
    """A deep copy of ``module`` with every ``nn.GroupNorm`` swapped; returns it and the count."""
    module = copy.deepcopy(module).eval()
    count = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.GroupNorm):
                setattr(parent, name, PortableGroupNorm(child))
                count += 1
    return module, count


def _batch_dynamic_shapes(module: Any, n_args: int, max_rows: int) -> Any:
    """torch.export ``dynamic_shapes`` marking dim 0 of every tensor argument, ``*args`` included."""
    batch = torch.export.Dim("batch", min=1, max=max(2, max_rows))
    shapes: list[Any] = []
    for p in inspect.signature(module.forward).parameters.values():
        if p.kind == p.VAR_POSITIONAL:
            shapes.append(tuple({0: batch} for _ in range(n_args - len(shapes))))
            break
        shapes.append({0: batch})
    return tuple(shapes)


def _fp16_selector():
    """op_selector for FP16ComputePrecision: every op goes fp16 except those feeding sin/cos."""
    keep: dict[int, set[int]] = {}
    stats = {"fp32_ops": 0}

    def feeds_trig(block: Any) -> set[int]:
        ancestors: set[int] = set()
        stack = [op for op in block.operations if op.op_type in TRIG_OPS]
        while stack:
            op = stack.pop()
            if id(op) in ancestors:
                continue
            ancestors.add(id(op))
            for value in op.inputs.values():
                for var in (value if isinstance(value, (list, tuple)) else (value,)):
                    if getattr(var, "op", None) is not None:
                        stack.append(var.op)
        stats["fp32_ops"] = len(ancestors)
        return ancestors

    def select(op: Any) -> bool:
        block = op.enclosing_block
        if id(block) not in keep:
            keep[id(block)] = feeds_trig(block)
        return id(op) not in keep[id(block)]

    return select, stats


def convert_graph(module: Any, example: Sequence[Any], io_spec: GraphIO, rows: Sequence[int],
                  precision: str = "fp32", order: Sequence[str] = ("export", "trace"),
                  deployment_target: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Convert one graph module to an ML program, trying each capture path in ``order``.

    Returns the ``MLModel`` (not loaded) and a record: the path used, every
    earlier path's error, and how many ops an fp16 program keeps in fp32.
    """
    ct = _ct()
    unknown = [p for p in order if p not in PATHS]
    if unknown or not order:
        raise BadInputError(f"conversion order {list(order)}: choose from {', '.join(PATHS)}")
    enumerated = len(rows) > 1
    target_name = deployment_target or ("macOS15" if enumerated else "macOS13")
    target = getattr(ct.target, target_name, None)
    if target is None:
        raise BadInputError(f"minimum_deployment_target {target_name!r} is not a coremltools target "
                            f"(e.g. macOS13, macOS15, iOS17, iOS18)")
    if enumerated and target < ct.target.iOS18:
        raise BadInputError(f"minimum_deployment_target {target_name}: a dynamic-batch bundle needs enumerated "
                            "batch shapes on several inputs, which Core ML supports from iOS 18 / macOS 15; pass "
                            "a newer target or export the bundle with --static-batch")
    example = tuple(torch.as_tensor(e) for e in example)
    if int(example[0].shape[0]) not in rows:
        raise BadInputError(f"the example batch {int(example[0].shape[0])} must be one of the batch rows {list(rows)}")

    names = coreml_names(io_spec)

    def tensor_type(t: Any) -> Any:
        dtype = np.int32 if t.dtype.startswith("int") else np.float32
        if enumerated:
            shape = ct.EnumeratedShapes(shapes=[list(_shape(t.shape, r)) for r in rows],
                                        default=list(_shape(t.shape, int(example[0].shape[0]))))
        else:
            shape = _shape(t.shape, rows[0])
        return ct.TensorType(name=names[t.name], shape=shape, dtype=dtype)

    errors: dict[str, str] = {}
    for path in order:
        selector, stats = _fp16_selector()
        precision_arg = (ct.transform.FP16ComputePrecision(op_selector=selector) if precision == "fp16"
                         else ct.precision.FLOAT32)
        try:
            with _quiet():
                if path == "export":
                    dynamic = _batch_dynamic_shapes(module, len(example), max(rows)) if enumerated else None
                    program = torch.export.export(module, example, dynamic_shapes=dynamic).run_decompositions({})
                else:
                    program = torch.jit.trace(module, example)      # check_trace stays on: its sanity check counts
                mlmodel = ct.convert(program, inputs=[tensor_type(t) for t in io_spec.inputs],
                                     outputs=[ct.TensorType(name=names[t.name], dtype=np.float32)
                                              for t in io_spec.outputs],
                                     convert_to="mlprogram", compute_precision=precision_arg,
                                     minimum_deployment_target=target, skip_model_load=True)
        except Exception as exc:   # noqa: BLE001 - capture and conversion fail in many types; the next path decides
            first = next((s.strip() for s in str(exc).splitlines() if s.strip()), "").rstrip(".")
            errors[PATHS[path]] = f"{type(exc).__name__}: {first}"[:300]
            continue
        return mlmodel, {"path": PATHS[path], "first_error": next(iter(errors.values()), None),
                         "renamed": {k: v for k, v in names.items() if k != v},
                         "failed_paths": errors, "fp32_ops_in_fp16": stats["fp32_ops"] if precision == "fp16" else 0,
                         "deployment_target": target_name}
    raise BadInputError("Core ML conversion failed on every capture path: "
                        + "; ".join(f"{p}: {e}" for p, e in errors.items())
                        + ". Compile this bundle for another target, or simplify the failing layer")


def save_package(mlmodel: Any, path: Path) -> None:
    """Save ``mlmodel`` as an .mlpackage whose bytes depend only on its content.

    coremltools writes the specification with protobuf's default serialization (map entries in hash
    order, which differs between processes) and names the package items with random UUIDs; the same
    program would give other bytes on every compile. The spec is rewritten with deterministic
    serialization and the item identifiers are derived from the item paths.
    """
    from coremltools.proto import Model_pb2

    mlmodel.save(str(path))
    manifest_path = path / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, f"dualrate:{item['path']}"))
           for old, item in manifest["itemInfoEntries"].items()}
    manifest["itemInfoEntries"] = {ids[k]: v for k, v in manifest["itemInfoEntries"].items()}
    manifest["rootModelIdentifier"] = ids[manifest["rootModelIdentifier"]]
    # in the layout coremltools itself writes: opening the package rewrites any other (and the cache
    # would then fail its own hash check)
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")
    spec_path = path / "Data" / manifest["itemInfoEntries"][manifest["rootModelIdentifier"]]["path"]
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def coreml_feeds(gio: GraphIO, names: Mapping[str, str], feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Feeds by spec name -> what a package takes: its names (``coreml_names``), integers as int32
    (Core ML has no int64), floats as float32."""
    typed = {}
    for t in gio.inputs:
        want = np.int32 if t.dtype.startswith("int") else np.float32
        typed[names[t.name]] = np.ascontiguousarray(np.asarray(feeds[t.name]).astype(want, copy=False))
    return typed


def compress_graph(mlmodel: Any, precision: str, io_spec: GraphIO,
                   samples: Sequence[Mapping[str, np.ndarray]] | None = None,
                   sensitive: str = "float") -> tuple[Any, dict[str, Any]]:
    """A converted fp32 program compressed to ``precision`` (``coreml_quantize.compress``, ``sensitive`` its
    choice for the sensitive layers), and its record with the size of the float package it came from
    (what the size check compares with). ``samples`` (int8 only): calibration inputs by package name
    (``calibration_samples_of``)."""
    ct = _ct()
    program = mlmodel._mil_program             # the float layers are found on the converted MIL program
    names = coreml_names(io_spec)
    with tempfile.TemporaryDirectory(prefix="dualrate-coreml-") as tmp:
        path = Path(tmp) / "float.mlpackage"
        with _quiet():
            save_package(mlmodel, path)
        sizes = package_sizes(path)
        if precision in ACTIVATION_PRECISIONS:
            mlmodel = ct.models.MLModel(str(path))          # loaded: calibration predicts with it (macOS)
        mlmodel, info = compress(mlmodel, precision, io_spec, names, samples, program=program, sensitive=sensitive)
    info.update(float_package_bytes=sizes["package_bytes"], float_weight_bytes=sizes["weight_bytes"])
    return mlmodel, info


def calibration_samples_of(bundle: Bundle, graph: str, programs: Mapping[str, Any], out: Path,
                        options: Any) -> list[dict[str, np.ndarray]]:
    """int8 calibration inputs of ``graph`` by package name, recorded from the bundle's own two-rate sampler
    (``int8_calibration.collect``) run on Core ML (macOS) over the graphs as this compile makes them: the
    packages already in ``out`` (a quantized encoder feeds the denoiser the stale features it will really
    see) and the float ``programs`` for the rest."""
    from dualrate.exporter import int8_calibration

    gio = bundle.spec.model.graphs()[graph]
    with tempfile.TemporaryDirectory(prefix="dualrate-coreml-calib-") as tmp:
        packages = {}
        for g, program in programs.items():
            packages[g] = out / f"{g}.mlpackage"
            if not packages[g].exists():
                packages[g] = Path(tmp) / f"{g}.mlpackage"
                with _quiet():
                    save_package(program, packages[g])
        runner = CoreMLRunner(bundle.spec, packages)
        feeds = int8_calibration.collect(runner, bundle.spec, bundle.nulls(), graph, options)
        del runner
    names = coreml_names(gio)
    return [coreml_feeds(gio, names, f) for f in feeds]


# -- inspecting a package ----------------------------------------------------------
def _mil_ops(block: Any) -> Iterator[Any]:
    for op in block.operations:
        yield op
        for inner in op.blocks:
            yield from _mil_ops(inner)


def _dims(value_type: Any) -> list[int | None]:
    return [d.constant.size if d.WhichOneof("dimension") == "constant" else None
            for d in value_type.tensorType.dimensions]


def inspect_package(path: Path) -> dict[str, Any]:
    """What a package holds, read without compiling or loading it: I/O, op counts, tensor dtypes."""
    ct = _ct()
    from coremltools.proto import FeatureTypes_pb2, MIL_pb2

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    array_type = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType

    def feature(f: Any) -> dict[str, Any]:
        t = f.type.multiArrayType
        return {"name": f.name, "dtype": array_type.Name(t.dataType), "shape": list(t.shape),
                "enumerated": [list(s.shape) for s in t.enumeratedShapes.shapes]}

    out: dict[str, Any] = {"kind": spec.WhichOneof("Type"), "spec_version": spec.specificationVersion,
                           "inputs": [feature(f) for f in spec.description.input],
                           "outputs": [feature(f) for f in spec.description.output]}
    if out["kind"] != "mlProgram":
        return out
    fn = spec.mlProgram.functions["main"]
    block = fn.block_specializations[fn.opset]
    ops: dict[str, int] = {}
    dtypes: dict[str, int] = {}
    produced: dict[str, Any] = {i.name: i.type for i in fn.inputs}     # value name -> its MIL type
    trig_inputs: list[str] = []
    for op in _mil_ops(block):
        ops[op.type] = ops.get(op.type, 0) + 1
        for o in op.outputs:
            if o.type.WhichOneof("type") == "tensorType":
                name = MIL_pb2.DataType.Name(o.type.tensorType.dataType)
                dtypes[name] = dtypes.get(name, 0) + 1
                produced[o.name] = o.type
        if op.type in TRIG_OPS:
            x = op.inputs["x"].arguments[0].name
            trig_inputs.append(MIL_pb2.DataType.Name(produced[x].tensorType.dataType) if x in produced else "?")
    out.update(opset=fn.opset, ops=ops, dtypes=dtypes, trig_input_dtypes=trig_inputs,
               output_dims={n: _dims(produced[n]) for n in block.outputs if n in produced},
               compression=compression_inventory(_mil_ops(block)), sizes=package_sizes(path))
    return out


# -- the target ----------------------------------------------------------------
class CoreMLTarget(Target):
    name = "coreml"
    converts_from_model = True
    precisions = ("fp32", "fp16", "int8", "int8-weights", "palettize4", "palettize6", "palettize8")
    extra = "coreml"

    def available(self) -> str | None:
        try:
            _ct()
        except ImportError as exc:
            return f"coremltools cannot be imported ({exc}); pip install 'dualrate[coreml]' (coremltools>=8)"
        return None

    def runtime_version(self) -> str:
        return _ct().__version__

    def numeric_unavailable(self) -> str | None:
        system = platform.system()
        if system != "Darwin":
            return (f"Core ML prediction requires macOS (this is {system}); conversion and structural checks "
                    "run here, numeric parity is not run here")
        try:
            from coremltools import libcoremlpython  # noqa: F401  (the native prediction library)
        except ImportError as exc:
            return (f"this coremltools has no prediction library ({exc}); on macOS 13+ reinstall it: "
                    "pip install --force-reinstall coremltools")
        return None

    def check_activation_quantization(self, plan: PrecisionPlan) -> None:
        """int8 activations are calibrated by predicting with the float model: refuse (exit 3) where Core ML
        cannot predict, before anything is converted."""
        wanted = [g for g, p in plan.graphs if p in ACTIVATION_PRECISIONS]
        reason = self.numeric_unavailable() if wanted else None
        if reason:
            raise BackendUnavailableError(
                f"Core ML int8 (weights and activations) for {', '.join(wanted)} is not available here: coremltools "
                f"calibrates activation ranges by running the float model on sample inputs "
                f"(linear_quantize_activations), and {reason}. int8-weights and palettize4/6/8 compile here")

    def cache_key(self) -> dict[str, Any]:
        import torch
        # conversion starts from the torch modules, so the torch version is part of what was compiled
        return {**super().cache_key(), "torch": torch.__version__}

    def compile(self, bundle: Bundle, precision: str = "fp32", force: bool = False, **options: Any) -> Compiled:
        """``Target.compile``, with a ``model=`` option entering the cache key as its weights' sha256."""
        if options.get("model") is not None:
            options["model"] = ModelOption(options["model"])
        return super().compile(bundle, precision, force=force, **options)

    def key_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """Where the modules come from (``model=``, ``checkpoint=``, ``allow_factory``) is pinned by the
        manifest's source sha256, which every source is checked against: it does not change the
        artifacts, so a compile made from Python is reused by the CLI and the other way round."""
        return super().key_options({k: v for k, v in options.items()
                                    if k not in ("model", "checkpoint", "allow_factory")})

    def compile_into(self, bundle: Bundle, plan: PrecisionPlan, out: Path, checkpoint: str | Path | None = None,
                     allow_factory: bool = False, model: DualRateModel | None = None,
                     batch_sizes: Sequence[int] | None = None, conversion_order: Sequence[str] = ("export", "trace"),
                     allow_fp16_overflow: bool = False, minimum_deployment_target: str | None = None,
                     calibration_samples: int | None = None, calibration_seed: int | None = None,
                     sensitive_layers: str = "float") -> dict[str, Any]:
        """Convert every graph of the bundle from the model's modules, then compress each graph the plan
        puts at a compressed precision, in graph order (an int8 denoiser is calibrated on the features
        of the encoder as compiled here; ``calibration_*``: ``int8_calibration`` options;
        ``sensitive_layers``: ``float`` (default) or ``compressed``, see ``coreml_quantize.compress``).

        The model: ``model=`` (a ``DualRateModel``; for a bundle exported from Python) or the
        source checkpoint (``checkpoint=``, default the manifest's path; ``allow_factory`` for a
        custom factory). Either must be what the bundle was exported from (sha256).
        """
        ct = _ct()
        self.check_activation_quantization(plan)
        check_sensitive(sensitive_layers)
        spec = bundle.spec
        pair, converted_from, source = source_model(bundle, checkpoint, allow_factory, model)
        gios = spec.model.graphs()
        modules = bound_graphs(pair, spec)
        names = {g: [t.name for t in gios[g].inputs] for g in modules}
        calls = {g: [ins for ins, _ in graph_calls(bundle.golden(f"{g}_io"))] for g in modules}
        rows = coreml_rows(spec, bundle.manifest, batch_sizes)
        if len(rows) > 1:
            # every graph converts with its first recorded call as the example: its rows must be accepted
            rows = sorted(set(rows) | {int(np.shape(calls[g][0][names[g][0]])[0]) for g in modules
                                       if gios[g].inputs[0].shape[0] == "batch"})
        preflight = None
        half = {g: m for g, m in modules.items() if plan.for_graph(g) == "fp16"}
        if half:
            preflight = fp16_preflight(half, calls, names)
            check_fp16_preflight(preflight, allow_fp16_overflow)
        conversion: dict[str, Any] = {}
        programs: dict[str, Any] = {}
        swapped = 0
        for graph, module in modules.items():
            portable, count = portable_module(module)
            swapped += count
            example = [torch.from_numpy(np.ascontiguousarray(calls[graph][0][n])) for n in names[graph]]
            # compressed precisions start from the fp32 program: coremltools compresses its weights
            programs[graph], conversion[graph] = convert_graph(
                portable, example, gios[graph], graph_batch_rows(gios[graph], rows),
                "fp16" if plan.for_graph(graph) == "fp16" else "fp32", conversion_order, minimum_deployment_target)
        compression: dict[str, Any] = {}
        calibration = None
        for graph, mlmodel in programs.items():
            precision = plan.for_graph(graph)
            if precision in COMPRESSED_PRECISIONS:
                samples = None
                if precision in ACTIVATION_PRECISIONS:
                    from dualrate.exporter.int8_calibration import options_from

                    calibration = options_from(calibration_samples, calibration_seed)
                    samples = calibration_samples_of(bundle, graph, programs, out, calibration)
                mlmodel, compression[graph] = compress_graph(mlmodel, precision, gios[graph], samples, sensitive_layers)
            save_package(mlmodel, out / f"{graph}.mlpackage")
            if graph in compression:
                compression[graph].update(package_sizes(out / f"{graph}.mlpackage"))
        system = platform.system()
        return {"graph_precisions": plan.as_dict(), "compression": compression,
                "calibration": None if calibration is None else calibration.record("Core ML"),
                "device": "coreml (not executed on Linux)" if system == "Linux" else f"coreml ({system})",
                "minimum_deployment_target": conversion["encoder"]["deployment_target"],
                "batch_rows": rows, "batch_shapes": "enumerated" if len(rows) > 1 else "static",
                "graph_batch_rows": {g: graph_batch_rows(gios[g], rows) for g in modules},
                "conversion": conversion, "fp16_preflight": preflight,
                "rewrites": {"GroupNorm as reshape-mean arithmetic (batch axis -1)": swapped},
                "converted_from": converted_from,
                "source": source,
                "source_checkpoint": source if source["kind"] == "checkpoint" else None,
                "converter": {"coremltools": ct.__version__, "torch": torch.__version__},
                "options": {"conversion_order": list(conversion_order), "batch_sizes": list(batch_sizes or
                            DEFAULT_SAMPLE_BATCHES), "allow_fp16_overflow": allow_fp16_overflow}}

    def open_runner(self, bundle: Bundle, compiled: Compiled, compute_units: str = "ALL",
                    threads: int = 0) -> "CoreMLRunner":
        """``threads`` is accepted for the shared callers (validate, bench) and unused: Core ML schedules itself."""
        reason = self.numeric_unavailable()
        target = str(compiled.record.get("minimum_deployment_target", ""))
        mac = platform.mac_ver()[0]
        if not reason and target.startswith("macOS") and mac and int(mac.split(".")[0]) < int(target[5:]):
            reason = (f"these packages need {target} (enumerated batch shapes on several inputs) and this is macOS "
                      f"{mac}; recompile from a bundle exported with --static-batch, or run on {target}+")
        if reason:
            raise BackendUnavailableError(f"target {self.name} cannot run here: {reason}")
        return CoreMLRunner(bundle.spec, {g: compiled.path / f"{g}.mlpackage" for g in bundle.graph_names()},
                            compute_units)

    def structural_checks(self, bundle: Bundle, compiled: Compiled) -> list[dict[str, Any]]:
        """Per graph: ML program, I/O names, shapes (the enumerated batch rows), dtypes, op inventory, precision;
        for a compressed graph also its compressed weights, float layers, activations and on-disk size
        (``coreml_quantize.compression_checks``)."""
        checks: list[dict[str, Any]] = []
        precisions = compiled.graph_precisions
        gios = bundle.spec.model.graphs()
        for graph in bundle.graph_names():
            precision = precisions.get(graph, compiled.effective_precision)
            half = precision == "fp16"
            io_spec = gios[graph]
            rows = graph_batch_rows(io_spec, compiled.record["batch_rows"])
            info = inspect_package(compiled.path / f"{graph}.mlpackage")

            def check(name: str, problems: list[str], ok_detail: str) -> None:
                checks.append({"name": f"{graph}: {name}", "graph": graph, "passed": not problems,
                               "detail": "; ".join(problems) or ok_detail})

            check("ML program", [] if info["kind"] == "mlProgram" else [f"package holds a {info['kind']}"],
                  f"mlProgram, specification version {info['spec_version']}, opset {info.get('opset')}")
            if info["kind"] != "mlProgram":
                continue
            names = coreml_names(io_spec)            # the spec's names as Core ML identifiers
            want_in, want_out = [names[t.name] for t in io_spec.inputs], [names[t.name] for t in io_spec.outputs]
            got_in, got_out = [f["name"] for f in info["inputs"]], [f["name"] for f in info["outputs"]]
            check("I/O names", [] if (got_in, got_out) == (want_in, want_out)
                  else [f"inputs {got_in} outputs {got_out}; spec {want_in} {want_out}"],
                  f"inputs {got_in}, outputs {got_out}")
            problems = []
            for t, f in zip(io_spec.inputs, info["inputs"]):
                want = sorted(list(_shape(t.shape, r)) for r in rows)
                got = sorted(f["enumerated"]) if f["enumerated"] else [f["shape"]]
                if got != want:
                    problems.append(f"{t.name} accepts {got}, expected {want}")
            for t in io_spec.outputs:
                dims = info["output_dims"].get(names[t.name])
                want_dims = [None if len(rows) > 1 and d == "batch" else (rows[0] if d == "batch" else d)
                             for d in t.shape]
                if dims != want_dims:
                    problems.append(f"{t.name} has dims {dims}, expected {want_dims} (None: the enumerated batch)")
            check("I/O shapes", problems, f"batch rows {rows} on every input; outputs follow")
            problems = [f"{t.name} is {f['dtype']}, expected {COREML_DTYPES.get(t.dtype)} for spec {t.dtype}"
                        for t, f in zip((*io_spec.inputs, *io_spec.outputs), (*info["inputs"], *info["outputs"]))
                        if f["dtype"] != COREML_DTYPES.get(t.dtype)]
            check("I/O dtypes", problems, "float tensors FLOAT32; integer inputs INT32 (the runner casts)")
            known = KNOWN_OPS | (ALL_CONSTEXPR_OPS if precision in COMPRESSED_PRECISIONS else frozenset()) | (
                ACTIVATION_QUANT_OPS if precision in ACTIVATION_PRECISIONS else frozenset())
            unexpected = sorted(set(info["ops"]) - known)
            inventory = ", ".join(f"{k} {v}" for k, v in sorted(info["ops"].items()))
            check("op inventory", [f"unexpected ops {unexpected} (inventory: {inventory})"] if unexpected else [],
                  inventory)
            fp16 = info["dtypes"].get("FLOAT16", 0)
            if half:
                problems = [] if fp16 and info["ops"].get("cast") else ["no fp16 tensors/casts in an fp16 program"]
                problems += [f"a sin/cos computes from a {d} argument" for d in info["trig_input_dtypes"]
                             if d != "FLOAT32"]
            else:
                problems = [f"{fp16} fp16 tensors in an fp32 program"] if fp16 else []
            check("precision", problems, f"tensor dtypes {info['dtypes']}; {info['ops'].get('cast', 0)} casts; "
                  f"sin/cos arguments {info['trig_input_dtypes'] or 'none'}")
            if precision in COMPRESSED_PRECISIONS:
                record = (compiled.record.get("compression") or {}).get(graph) or {}
                for name, problems, detail in compression_checks(precision, info["compression"], info["sizes"], record):
                    check(name, problems, detail)
        return checks


# -- the model to convert ----------------------------------------------------------
class ModelOption(str):
    """A ``DualRateModel`` given as the ``model=`` compile option.

    Compile options are the compile cache key and are written to compile.json, so the
    option *is* the string ``python model sha256 <weights sha256>`` there; ``compile_into``
    takes the model from ``.model``.
    """

    model: DualRateModel
    sha256: str

    def __new__(cls, model: Any) -> "ModelOption":
        if isinstance(model, ModelOption):
            return model
        if not isinstance(model, DualRateModel):
            raise BadInputError(f"model= is a {type(model).__name__}; expected the dualrate.DualRateModel the "
                                "bundle was exported from")
        from dualrate.validation.export_check import model_source

        sha = model_source(model)["sha256"]
        self = super().__new__(cls, f"python model sha256 {sha}")
        self.model, self.sha256 = model, sha
        return self


def source_model(bundle: Bundle, checkpoint: str | Path | None = None, allow_factory: bool = False,
                 model: Any = None) -> tuple[DualRateModel, str, dict[str, Any]]:
    """(the model to convert, what it was converted from, the record's ``source``); BadInputError unless it
    is the model the bundle was exported from (sha256)."""
    src = bundle.manifest.get("source") or {}
    want, kind, name = src.get("sha256"), src.get("kind"), src.get("name", "its source")
    if model is not None:
        if checkpoint is not None:
            raise BadInputError("pass model= or checkpoint=, not both: Core ML converts from one source")
        option = ModelOption(model)
        if option.sha256 != want:
            advice = (f"; this bundle was exported from the checkpoint {name}: pass checkpoint=PATH (CLI: "
                      "--checkpoint PATH) instead" if kind == "checkpoint" else
                      "; pass the model the bundle was exported from, or re-export the bundle from this model")
            raise BadInputError(f"model= has weights sha256 {option.sha256[:12]}…, but bundle {bundle.path} was "
                                f"exported from {name} with sha256 {str(want)[:12]}… (manifest.json source.sha256)"
                                + advice)
        return (option.model, f"python model sha256 {option.sha256}",
                {"kind": "python", "name": name, "sha256": option.sha256})
    if kind == "python" and not bundle.manifest.get("source_checkpoint"):
        raise BadInputError(f"Core ML converts from the PyTorch modules, and bundle {bundle.path} was exported from a "
                            f"Python model ({name}, weights sha256 {str(want)[:12]}…), not a checkpoint: pass that "
                            "model, dualrate.compile(bundle, target='coreml', model=model)")
    ckpt = load_source_checkpoint(bundle, checkpoint, "Core ML converts from the PyTorch modules", allow_factory)
    return (ckpt.pair, f"checkpoint {ckpt.path.name} sha256 {ckpt.sha256}",
            {"kind": "checkpoint", "name": ckpt.path.name, "path": str(ckpt.path.resolve()), "sha256": ckpt.sha256})


def bound_graphs(model: DualRateModel, spec: Spec) -> dict[str, BoundGraph]:
    """Every graph of the spec as the model's ``BoundGraph`` (eval mode), its inputs checked against the spec."""
    model.eval()
    gios = spec.model.graphs()
    features = [o.name for o in spec.model.encoder.outputs]
    out = {"encoder": model.bound_encoder(), "denoiser": model.bound_denoiser(features)}
    if "decoder" in gios:
        decoder = model.bound_decoder()
        if decoder is None:
            raise BadInputError("the bundle has a decoder graph, but the model declares no decoder; pass the model "
                                "the bundle was exported from")
        out["decoder"] = decoder
    for graph, bound in out.items():
        got = [(n, r) for n, r in bound.inputs]
        want = [(t.name, t.feeds) for t in gios[graph].inputs]
        if got != want:
            raise BadInputError(f"the model's {graph} takes {got} (input, role), but the bundle's spec binds {want}; "
                                "pass the model the bundle was exported from")
        bound.eval()
    return out


def graph_batch_rows(gio: GraphIO, rows: Sequence[int]) -> list[int]:
    """The row counts a graph's package accepts: its own static batch, else ``rows`` (enumerated)."""
    first = gio.inputs[0].shape[0]
    return [first] if isinstance(first, int) else list(rows)


class CoreMLRunner(BaseRunner):
    """The runner contract over one Core ML model per graph (macOS only).

    ``MLModel.predict`` takes and returns numpy arrays by name (``coreml_names``: the spec's
    names as Core ML identifiers). The features are the
    arrays Core ML returned, kept as they are (no re-copy) until the next refresh; Core
    ML's Python API has no way to keep them inside the framework between predictions.
    Integer inputs are int32 in the packages: the runner casts them.
    """

    name = "coreml"
    runtime_errors = (RuntimeError, ValueError, KeyError)

    def __init__(self, spec: Spec, packages: Mapping[str, Path], compute_units: str = "ALL"):
        super().__init__(spec)
        ct = _ct()
        units = getattr(ct.ComputeUnit, compute_units.upper(), None)
        if units is None:
            raise BadInputError(f"compute_units {compute_units!r}: choose ALL, CPU_ONLY, CPU_AND_GPU or CPU_AND_NE")
        self._models = {g: ct.models.MLModel(str(packages[g]), compute_units=units) for g in self.graphs}
        self._names = {g: coreml_names(gio) for g, gio in self.graphs.items()}

    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        gio, names = self.graphs[graph], self._names[graph]
        out = self._models[graph].predict(coreml_feeds(gio, names, feeds))
        return {t.name: np.asarray(out[names[t.name]], dtype=np.float32) for t in gio.outputs}


TARGET = CoreMLTarget()
