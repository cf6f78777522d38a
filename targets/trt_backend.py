"""TensorRT target: one serialized engine per graph, and a runner whose cached features stay on the GPU.

Every graph of the bundle gets an engine (``bundle.graph_names()``: encoder, denoiser,
and the decoder where the model has one); tensors are bound by name, as the spec
declares them.

Networks are *strongly typed*: every tensor computes in the type the ONNX graph
gives it, graph by graph as the precision plan says. fp32 builds the bundle's graph with TF32 switched
off (``tf32=True`` allows it and records ``tf32``); fp16 builds from an fp16 copy of the graph
(:func:`convert_onnx_fp16`: fp32 I/O, fp32 normalisations and sin/cos
arguments, fp16 elsewhere); int8 builds from a QDQ copy made by ONNX Runtime's quantizer and
calibrated on the bundle's two-rate sampler (``trt_qdq``): explicit quantization, where the Q/DQ
nodes fix what runs in int8. Both copies are kept in the target directory. Each engine has one
optimization profile over 1 .. ``max_batch`` samples, doubled where guidance
batches both branches (``exporter.export.graph_rows``), or the static batch (the
decoder's profile is over samples, never doubled); one timing cache serves every
build and is saved as ``timing.cache``.

:class:`TrtRunner` implements the runner contract (``dualrate.exporter.runner``) and
runs ``execute_async_v3`` on its own CUDA stream (cuda-python). ``encode`` returns
``{feature name: DeviceTensor}``, the device buffers the encoder wrote; the denoiser
gets them as the feeds of its ``feature:<name>`` inputs and binds their addresses as
they are, so reusing the cache costs no host copy. tensorrt and cuda-python are
imported only when used.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from dualrate.exporter.bundle import Bundle
from dualrate.exporter.errors import BadInputError
from dualrate.exporter.sampling import graph_rows
from dualrate.exporter.runner import BaseRunner
from dualrate.exporter.spec import GraphIO, Spec

from .base import Compiled, Target
from .precision_plan import PrecisionPlan
from .trt_qdq import qdq_graph, qdq_problems, qdq_summary

DEFAULT_MAX_BATCH = 8          # samples per sampler call the engines accept (rows double under batched guidance)
INSTALL_HINT = ("install it on a Linux or Windows machine with an NVIDIA GPU and driver: "
                "pip install 'dualrate[tensorrt]' (tensorrt>=10, cuda-python>=12)")

# -- the fp16 graph ------------------------------------------------------------
# Normalisations reduce over many elements (sums of squares overflow fp16 long before
# the activations do) and TensorRT itself warns about fp16 LayerNorm: they stay fp32.
FP32_OPS = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization",
                      "BatchNormalization", "RMSNormalization"})
# Periodic functions need the *absolute* precision of their argument: the log-SNR
# embedding feeds sin(u * pi * 2^7): in fp16 an argument near 400 is off by up to 0.125.
TRIG_OPS = frozenset({"Sin", "Cos"})
# Ops whose output type comes from an attribute: converting them needs per-op rules; keep fp32.
DTYPE_ATTR_OPS = frozenset({"EyeLike", "RandomNormal", "RandomNormalLike", "RandomUniform",
                            "RandomUniformLike", "Multinomial", "Bernoulli"})
FIXED_FP32_INPUTS = {"Resize": (2,), "Upsample": (1,)}     # scales are tensor(float) in the ONNX spec
CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})


def _trt():
    import tensorrt
    return tensorrt


def _cudart():
    try:
        from cuda.bindings import runtime as cudart     # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart                          # older cuda-python
    return cudart


def _cuda(result: tuple) -> Any:
    """Unwrap a cuda-python ``(err, *values)`` result; raise on an error code."""
    err, values = result[0], result[1:]
    if int(err) != 0:
        cudart = _cudart()
        name = cudart.cudaGetErrorName(err)[1]
        raise RuntimeError(f"CUDA error {int(err)} ({name.decode() if isinstance(name, bytes) else name})")
    return values[0] if len(values) == 1 else (values or None)


# -- optimization profile ------------------------------------------------------
def profile_rows(spec: Spec, manifest: dict[str, Any], max_batch: int = DEFAULT_MAX_BATCH,
                 opt_batch: int | None = None) -> tuple[int, int, int]:
    """(min, opt, max) rows per graph call for the engines' optimization profile.

    A static bundle has exactly one row count. Otherwise min is 1 (an unbatched
    guidance branch, a single sample), opt is the golden batch the bundle was
    validated with (or ``opt_batch`` samples), max is ``max_batch`` samples, all
    doubled where ``graph_rows`` says both guidance branches run as one batch.
    """
    first = spec.model.encoder.inputs[0].shape[0]
    if isinstance(first, int):
        return first, first, first
    if max_batch < 1 or (opt_batch is not None and opt_batch < 1):
        raise BadInputError(f"max_batch {max_batch} / opt_batch {opt_batch}: expected positive sample counts")
    golden = (manifest.get("graph_rows") or {}).get("golden") or graph_rows(spec, 1)
    opt = graph_rows(spec, opt_batch) if opt_batch else golden
    return 1, opt, max(graph_rows(spec, max_batch), opt)


def graph_profile_rows(spec: Spec, manifest: dict[str, Any], graph: str, max_batch: int = DEFAULT_MAX_BATCH,
                       opt_batch: int | None = None) -> tuple[int, int, int]:
    """``profile_rows`` of one graph. The decoder runs once on the final samples: its rows are samples
    (never doubled by guidance), its static batch its own."""
    if graph != "decoder":
        return profile_rows(spec, manifest, max_batch, opt_batch)
    first = spec.model.decoder.graph.inputs[0].shape[0]
    if isinstance(first, int):
        return first, first, first
    if max_batch < 1 or (opt_batch is not None and opt_batch < 1):
        raise BadInputError(f"max_batch {max_batch} / opt_batch {opt_batch}: expected positive sample counts")
    opt = opt_batch or int((manifest.get("export_options") or {}).get("golden_batch") or 1)
    return 1, opt, max(max_batch, opt)


def profile_shapes(io: GraphIO, rows: tuple[int, int, int]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """``{input name: (min shape, opt shape, max shape)}`` for every input of a graph."""
    def at(shape: Sequence[int | str], n: int) -> tuple[int, ...]:
        return tuple(n if d == "batch" else int(d) for d in shape)
    return {t.name: tuple(at(t.shape, n) for n in rows) for t in io.inputs}


# -- fp32 -> fp16 ONNX ---------------------------------------------------------
def convert_onnx_fp16(src: Path, dst: Path, fp32_ops: frozenset[str] = FP32_OPS,
                      trig_fp32: bool = True) -> dict[str, Any]:
    """Write an fp16 copy of the ONNX graph ``src`` to ``dst``; return what was kept fp32.

    Graph inputs and outputs keep their types (casts at the boundary), so the
    spec's I/O binding holds for the fp16 engine too. A node computes in fp16
    unless its op is in ``fp32_ops``, it lies on the path into a ``Sin``/``Cos``
    (``trig_fp32``), or its output type is an attribute. Casts are inserted wherever a value
    crosses between the two precisions (one per value and direction). The result
    passes ``onnx.checker`` with full (strict) type inference.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from dualrate.exporter.onnx_export import EXTERNAL_DATA_THRESHOLD

    FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
    model = onnx.load(str(src))                              # reads external data beside src
    g = model.graph
    flow = sorted({n.op_type for n in g.node if n.op_type in CONTROL_FLOW})
    if flow:
        raise BadInputError(f"{src.name}: fp16 conversion does not handle control flow ({', '.join(flow)}); "
                            "compile this bundle at fp32")
    with tempfile.TemporaryDirectory(dir=Path(dst).parent) as tmp:
        # by path: a graph with external data may exceed protobuf's 2 GB limit in memory
        onnx.shape_inference.infer_shapes_path(str(src), str(Path(tmp) / "inferred.onnx"), strict_mode=True)
        inferred = onnx.load(str(Path(tmp) / "inferred.onnx"), load_external_data=False).graph
    types = {v.name: v.type.tensor_type.elem_type for v in (*inferred.value_info, *inferred.input, *inferred.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    scalar_constants = set()                                # value_float(s): an attribute type, not a tensor
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    types[n.output[0]] = a.t.data_type
                elif a.name in ("value_float", "value_floats"):
                    types[n.output[0]] = FLOAT
                    scalar_constants.add(id(n))

    producers = {o: n for n in g.node for o in n.output}
    trig: set[int] = set()
    stack = [n for n in g.node if n.op_type in TRIG_OPS] if trig_fp32 else []
    while stack:                                            # everything the trig arguments depend on
        n = stack.pop()
        if id(n) not in trig:
            trig.add(id(n))
            stack.extend(producers[i] for i in n.input if i in producers)
    keep = {id(n) for n in g.node if n.op_type in fp32_ops or n.op_type in DTYPE_ATTR_OPS} | trig | scalar_constants
    kept_ops: dict[str, int] = {}
    for n in g.node:
        if id(n) in keep and any(types.get(o) == FLOAT for o in n.output):
            kept_ops[n.op_type] = kept_ops.get(n.op_type, 0) + 1

    # graph outputs produced in fp16 get a final cast back; rename the fp16 value first
    rename = {o.name: f"{o.name}__fp16" for o in g.output
              if o.name in producers and id(producers[o.name]) not in keep and types.get(o.name) == FLOAT}
    for n in g.node:
        n.input[:] = [rename.get(x, x) for x in n.input]
        n.output[:] = [rename.get(x, x) for x in n.output]
    types.update({new: types[old] for old, new in rename.items()})

    inits = {t.name: t for t in g.initializer}
    half_inits: dict[str, str] = {}
    casts: dict[tuple[str, int], str] = {}
    prec = {i.name: FLOAT for i in g.input if types.get(i.name) == FLOAT}   # float value -> its type now
    nodes: list[Any] = []

    def cast(name: str, to: int) -> str:
        if (name, to) not in casts:
            out = casts[(name, to)] = f"{name}__{'fp16' if to == HALF else 'fp32'}"
            nodes.append(helper.make_node("Cast", [name], [out], to=to, name=f"cast_{out}"))
        return casts[(name, to)]

    def half_init(name: str) -> str:
        if name not in half_inits:
            t = numpy_helper.to_array(inits[name])
            half_inits[name] = f"{name}__fp16"
            g.initializer.append(numpy_helper.from_array(_to_half(t), half_inits[name]))
        return half_inits[name]

    for n in g.node:
        half = id(n) not in keep
        fixed = FIXED_FP32_INPUTS.get(n.op_type, ())
        for k, x in enumerate(n.input):
            want = FLOAT if (not half or k in fixed) else HALF
            if x in inits:
                if inits[x].data_type == FLOAT and want == HALF:
                    n.input[k] = half_init(x)
            elif x in prec and prec[x] != want:
                n.input[k] = cast(x, want)
        if half:
            for a in n.attribute:
                if n.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
                    a.i = HALF
                elif n.op_type in ("Constant", "ConstantOfShape") and a.name == "value" and a.t.data_type == FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(_to_half(numpy_helper.to_array(a.t)), a.t.name))
        nodes.append(n)
        for o in n.output:
            if types.get(o) == FLOAT:
                prec[o] = HALF if half else FLOAT
    for old, new in rename.items():
        nodes.append(helper.make_node("Cast", [new], [old], to=FLOAT, name=f"cast_{old}"))

    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]                                     # types changed; TensorRT and checkers re-infer
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    live = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(live)

    dst = Path(dst)
    external = sum(t.ByteSize() for t in g.initializer) > EXTERNAL_DATA_THRESHOLD
    data = dst.with_name(dst.name + ".data")
    if data.exists():                                       # never append into an existing data file
        data.unlink()
    onnx.save(model, str(dst), save_as_external_data=external, location=data.name if external else None)
    try:
        onnx.checker.check_model(str(dst), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise BadInputError(f"{src.name}: the fp16 graph fails onnx.checker ({str(exc).splitlines()[0]}); "
                            "compile at fp32 and report this") from None
    n_half = sum(1 for n in g.node if n.op_type != "Cast" and any(prec.get(o) == HALF for o in n.output))
    return {"fp16_nodes": n_half, "kept_fp32": kept_ops, "casts": len(casts) + len(rename),
            "trig_argument_nodes": len(trig), "external_data": external}


def _to_half(a: np.ndarray) -> np.ndarray:
    """fp16 copy of a float array, clipped into fp16's finite range (a weight beyond it would be inf)."""
    finfo = np.finfo(np.float16)
    return np.clip(a, finfo.min, finfo.max).astype(np.float16)


ONNX_TYPE_NAMES = {"float32": "FLOAT", "float16": "FLOAT16", "bfloat16": "BFLOAT16", "float64": "DOUBLE",
                   "int64": "INT64", "int32": "INT32", "bool": "BOOL"}


def fp16_graph_summary(path: Path) -> dict[str, Any]:
    """Types of an ONNX graph's I/O and how many values / initializers are fp16 (a structural check)."""
    import onnx
    from onnx import TensorProto

    model = onnx.shape_inference.infer_shapes(onnx.load(str(path), load_external_data=False), strict_mode=True)
    g = model.graph
    io = {v.name: TensorProto.DataType.Name(v.type.tensor_type.elem_type) for v in (*g.input, *g.output)}
    values = [v.type.tensor_type.elem_type for v in g.value_info]
    return {"io": io, "fp16_values": values.count(TensorProto.FLOAT16), "fp32_values": values.count(TensorProto.FLOAT),
            "fp16_initializers": sum(t.data_type == TensorProto.FLOAT16 for t in g.initializer)}


# -- the target ----------------------------------------------------------------
class TensorRTTarget(Target):
    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    extra = "tensorrt"

    def available(self) -> str | None:
        try:
            _trt()
        except (ImportError, OSError) as exc:            # OSError: the wheel is there, its CUDA libraries are not
            return f"tensorrt cannot be imported ({exc}); {INSTALL_HINT}"
        try:
            cudart = _cudart()
        except ImportError as exc:
            return f"cuda-python cannot be imported ({exc}); pip install 'cuda-python>=12'"
        err, count = cudart.cudaGetDeviceCount()
        if int(err) != 0 or count < 1:
            why = f"cudaGetDeviceCount returned error {int(err)}" if int(err) else "no CUDA device"
            return (f"tensorrt imports but no CUDA device is usable ({why}); run on a machine with an NVIDIA GPU and "
                    "driver (check `nvidia-smi` and CUDA_VISIBLE_DEVICES)")
        return None

    def runtime_version(self) -> str:
        return _trt().__version__

    def compile_into(self, bundle: Bundle, plan: PrecisionPlan, out: Path, max_batch: int = DEFAULT_MAX_BATCH,
                     opt_batch: int | None = None, tf32: bool = False, workspace_gib: float | None = None,
                     opt_level: int | None = None, timing_cache: str | Path | None = None,
                     calibration_samples: int | None = None, calibration_seed: int | None = None) -> dict[str, Any]:
        """One engine per graph at ``plan.for_graph(graph)``, in graph order (an int8 denoiser is calibrated
        on the features of the encoder as compiled here). ``calibration_*``: ``int8_calibration`` options."""
        trt = _trt()
        spec = bundle.spec
        graph_io = spec.model.graphs()
        rows = profile_rows(spec, bundle.manifest, max_batch, opt_batch)
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        seed_path = Path(timing_cache) if timing_cache else self._previous_cache(bundle, plan.name)
        seed = seed_path.read_bytes() if seed_path and seed_path.is_file() else b""
        cache = None
        record: dict[str, Any] = {"profiles": {}, "fp16_graphs": {}, "int8_graphs": {}}
        built = {g: bundle.graph(g) for g in bundle.graph_names()}     # the ONNX each engine is built from
        for graph in bundle.graph_names():
            io = graph_io[graph]
            source = built[graph] = self.source_graph(bundle, plan, graph, out, built, record,
                                                      calibration_samples, calibration_seed)
            # Strongly typed: precision comes from the graph's types (an fp16 copy; int8 from its Q/DQ nodes),
            # never from builder flags. TensorRT's docs on explicit quantization: "Use explicit quantization
            # with Strong Typing. Precision-control build flags are not required and should not be
            # specified" (BuilderFlag.INT8/FP16 are for the deprecated weakly typed mode).
            network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
            parser = trt.OnnxParser(network, logger)
            if not parser.parse_from_file(str(source)):
                errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
                raise BadInputError(f"TensorRT's ONNX parser rejected {source.name}: {errors}")
            config = builder.create_builder_config()
            if not tf32:
                config.clear_flag(trt.BuilderFlag.TF32)     # on by default; fp32 must mean fp32
            if workspace_gib:
                config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
            if opt_level is not None:
                config.builder_optimization_level = int(opt_level)
            if cache is None:
                cache = config.create_timing_cache(seed)
            if not config.set_timing_cache(cache, False) and seed:
                cache = config.create_timing_cache(b"")     # a cache from another device/version: start fresh
                config.set_timing_cache(cache, False)
            profile = builder.create_optimization_profile()
            shapes = profile_shapes(io, graph_profile_rows(spec, bundle.manifest, graph, max_batch, opt_batch))
            for name, (lo, opt, hi) in shapes.items():
                profile.set_shape(name, lo, opt, hi)
            config.add_optimization_profile(profile)
            serialized = builder.build_serialized_network(network, config)
            if serialized is None:
                raise BadInputError(f"TensorRT could not build the {graph} engine (the TensorRT log above says why); "
                                    f"profile {shapes}")
            (out / f"{graph}.engine").write_bytes(bytes(serialized))
            record["profiles"][graph] = {k: [list(s) for s in v] for k, v in shapes.items()}
        (out / "timing.cache").write_bytes(bytes(cache.serialize()))
        effective = {g: plan.for_graph(g) if plan.for_graph(g) in ("fp16", "int8") else ("tf32" if tf32 else "fp32")
                     for g in bundle.graph_names()}
        return {"graph_precisions": effective, "device": _device_name(), "batch_rows": list(rows),
                "options": {"max_batch": max_batch, "opt_batch": opt_batch, "tf32": tf32,
                            "workspace_gib": workspace_gib, "opt_level": opt_level,
                            "strongly_typed": True, "timing_cache_seed": str(seed_path) if seed else None},
                **record}

    def source_graph(self, bundle: Bundle, plan: PrecisionPlan, graph: str, out: Path, built: dict[str, Path],
                     record: dict[str, Any], calibration_samples: int | None = None,
                     calibration_seed: int | None = None) -> Path:
        """The ONNX file ``graph``'s engine is built from at its plan precision: the bundle's graph (fp32), an
        fp16 copy or a QDQ int8 copy written into ``out`` (recorded in ``record``). Needs no TensorRT."""
        precision = plan.for_graph(graph)
        if precision == "fp16":
            source = out / f"{graph}.fp16.onnx"
            record["fp16_graphs"][graph] = convert_onnx_fp16(bundle.graph(graph), source)
            return source
        if precision == "int8":
            from dualrate.exporter.int8_calibration import options_from

            calibration = options_from(calibration_samples, calibration_seed)
            source = out / f"{graph}.int8.onnx"
            record["int8_graphs"][graph] = qdq_graph(bundle, graph, source, built, calibration)
            return source
        return bundle.graph(graph)

    def _previous_cache(self, bundle: Bundle, precision: str) -> Path | None:
        """A timing cache from this bundle's other TensorRT build (same machine, most likely) speeds the build up."""
        for p in self.precisions:
            cand = bundle.target_dir(self.name, p) / "timing.cache"
            if p != precision and cand.is_file():
                return cand
        return None

    def open_runner(self, bundle: Bundle, compiled: Compiled, threads: int = 0) -> "TrtRunner":
        """``threads`` is accepted for the shared callers (validate, bench) and unused: the GPU runs the graphs."""
        self.require()
        return TrtRunner(bundle.spec, {g: compiled.path / f"{g}.engine" for g in bundle.graph_names()})

    def structural_checks(self, bundle: Bundle, compiled: Compiled) -> list[dict[str, Any]]:
        checks = []
        graph_io = bundle.spec.model.graphs()
        precisions = compiled.graph_precisions
        for graph in bundle.graph_names():
            if precisions.get(graph) == "int8":
                qdq = compiled.path / f"{graph}.int8.onnx"
                problems = qdq_problems(qdq)
                checks.append({"name": f"{graph}: int8 QDQ graph", "passed": not problems,
                               "detail": "; ".join(problems) or f"{qdq_summary(qdq)}: symmetric int8, standard "
                                                                  "ONNX Q/DQ (TensorRT explicit quantization)"})
            if precisions.get(graph) == "fp16":
                s = fp16_graph_summary(compiled.path / f"{graph}.fp16.onnx")
                want = {t.name: ONNX_TYPE_NAMES.get(t.dtype, t.dtype)
                        for t in (*graph_io[graph].inputs, *graph_io[graph].outputs)}
                io_ok = s["io"] == want                     # fp16 inside, the spec's types at the boundary
                checks.append({"name": f"{graph}: fp16 graph", "passed": io_ok and s["fp16_values"] > 0,
                               "detail": f"I/O {s['io']}" + ("" if io_ok else f" (spec {want})")
                                         + f"; {s['fp16_values']} fp16 / {s['fp32_values']} fp32 values, "
                                         f"{s['fp16_initializers']} fp16 initializers"})
        if self.available() is None:
            runtime = _trt().Runtime(_trt().Logger(_trt().Logger.WARNING))
            for graph in bundle.graph_names():
                engine = runtime.deserialize_cuda_engine((compiled.path / f"{graph}.engine").read_bytes())
                checks.append(_engine_io_check(graph, engine, graph_io[graph], compiled.record["profiles"][graph]))
        return checks


def _engine_io_check(graph: str, engine: Any, io: GraphIO, profiles: dict[str, Any]) -> dict[str, Any]:
    trt = _trt()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    want = [t.name for t in (*io.inputs, *io.outputs)]
    problems = [] if sorted(names) == sorted(want) else [f"tensors {names}, spec {want}"]
    for t in (*io.inputs, *io.outputs):
        if t.name not in names:
            continue
        got = np.dtype(trt.nptype(engine.get_tensor_dtype(t.name))).name
        if got != t.dtype:
            problems.append(f"{t.name} is {got}, spec {t.dtype}")
        if t in io.inputs:
            prof = [list(s) for s in engine.get_tensor_profile_shape(t.name, 0)]
            if prof != profiles[t.name]:
                problems.append(f"{t.name} profile {prof}, compiled with {profiles[t.name]}")
    return {"name": f"{graph}: engine I/O", "passed": not problems,
            "detail": "; ".join(problems) or f"{len(names)} tensors match the spec (names, dtypes, profile)"}


def _device_name() -> str:
    cudart = _cudart()
    device = _cuda(cudart.cudaGetDevice())
    props = _cuda(cudart.cudaGetDeviceProperties(device))
    name = props.name
    return f"cuda:{device} ({(name.decode() if isinstance(name, bytes) else str(name)).rstrip(chr(0))})"


# -- the runner ----------------------------------------------------------------
class DeviceBuffer:
    """One cudaMalloc'd block, freed when the last reference goes."""

    __slots__ = ("ptr", "nbytes", "_free")

    def __init__(self, nbytes: int):
        cudart = _cudart()
        self.nbytes = nbytes
        self.ptr = int(_cuda(cudart.cudaMalloc(max(nbytes, 1))))
        self._free = cudart.cudaFree

    def __del__(self):
        if getattr(self, "ptr", 0):
            with contextlib.suppress(Exception):      # at interpreter exit the CUDA bindings may be gone
                self._free(self.ptr)
            self.ptr = 0


class DeviceTensor:
    """One encoder output in device memory: what the sampler caches between steps (bound as it is)."""

    __slots__ = ("buffer", "shape", "dtype")

    def __init__(self, buffer: DeviceBuffer, shape: tuple[int, ...], dtype: np.dtype):
        self.buffer, self.shape, self.dtype = buffer, tuple(int(d) for d in shape), np.dtype(dtype)

    @property
    def ptr(self) -> int:
        return self.buffer.ptr

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class TrtError(RuntimeError):
    """What TensorRT or CUDA refused (or the runner's own check of an input), as one line;
    ``BaseRunner`` turns it into a ``BadInputError`` naming the graph."""


class _Engine:
    """An engine, its execution context and reusable device buffers for per-call inputs/outputs."""

    def __init__(self, runtime: Any, path: Path, graph: str):
        trt = _trt()
        self.graph = graph
        if not path.is_file():
            raise BadInputError(f"compiled TensorRT engine {path} is missing; run `dualrate compile --target "
                                "tensorrt --force`")
        self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise BadInputError(f"{path} could not be deserialized by TensorRT {trt.__version__} on this GPU; "
                                "engines are specific to the TensorRT version and GPU: run `dualrate compile --force`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self.ranges = {n: self.engine.get_tensor_profile_shape(n, 0) for n in self.inputs}
        self._scratch: dict[str, DeviceBuffer] = {}

    def scratch(self, name: str, nbytes: int) -> DeviceBuffer:
        """A per-tensor buffer reused across calls, grown when a bigger batch comes."""
        buf = self._scratch.get(name)
        if buf is None or buf.nbytes < nbytes:
            buf = self._scratch[name] = DeviceBuffer(nbytes)
        return buf

    def bind_shape(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """Check an input against the engine (dtype, profile range) and set its shape; TrtError if off."""
        if dtype != self.dtypes[name]:
            raise TrtError(f"{name} has dtype {dtype}, the engine takes {self.dtypes[name]}")
        lo, _, hi = (tuple(s) for s in self.ranges[name])
        inside = len(shape) == len(lo) and all(a <= d <= b for d, a, b in zip(shape, lo, hi))
        if not inside or not self.context.set_input_shape(name, tuple(shape)):
            raise TrtError(f"{name} has shape {list(shape)}, the engine's profile allows {list(lo)} .. {list(hi)}")


class TrtRunner(BaseRunner):
    """The runner contract over one TensorRT engine per graph on one CUDA stream; features stay in device memory.

    One execution context per engine, reused by every call: use one runner per thread.
    """

    name = "tensorrt"
    runtime_errors = (TrtError,)

    def __init__(self, spec: Spec, engines: Mapping[str, Path]):
        super().__init__(spec)
        trt = _trt()
        self._cudart = _cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engines: dict[str, _Engine] = {}
        for graph, gio in self.graphs.items():
            e = _Engine(self._runtime, Path(engines[graph]), graph)
            want_in, want_out = sorted(t.name for t in gio.inputs), [t.name for t in gio.outputs]
            if sorted(e.inputs) != want_in or any(o not in e.outputs for o in want_out):
                raise BadInputError(f"TensorRT {graph} engine takes {sorted(e.inputs)} and gives {e.outputs}; the "
                                    f"spec binds {want_in} -> {want_out}. Recompile the bundle "
                                    "(`dualrate compile --target tensorrt --force`)")
            self._engines[graph] = e
        self._stream = _cuda(self._cudart.cudaStreamCreate())

    def __del__(self):
        stream = getattr(self, "_stream", None)
        if stream is not None:
            with contextlib.suppress(Exception):
                self._cudart.cudaStreamDestroy(stream)

    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        e = self._engines[graph]
        gio = self.graphs[graph]
        try:
            self._bind_inputs(e, gio, feeds)
            outs: dict[str, Any] = {}
            if graph == "encoder":
                # Fresh buffers per call: the sampler may hold several caches at once (one per guidance
                # branch); each lives exactly as long as the sampler keeps its features.
                for t in gio.outputs:
                    shape = tuple(e.context.get_tensor_shape(t.name))
                    dev = DeviceTensor(DeviceBuffer(math.prod(shape) * e.dtypes[t.name].itemsize), shape,
                                       e.dtypes[t.name])
                    e.context.set_tensor_address(t.name, dev.ptr)
                    outs[t.name] = dev
                self._execute(e)
                _cuda(self._cudart.cudaStreamSynchronize(self._stream))
                return outs
            d2h = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
            staged = []
            for t in gio.outputs:
                host = np.empty(tuple(e.context.get_tensor_shape(t.name)), e.dtypes[t.name])
                buf = e.scratch(t.name, host.nbytes)
                e.context.set_tensor_address(t.name, buf.ptr)
                staged.append((t.name, host, buf))
            self._execute(e)
            for name, host, buf in staged:
                _cuda(self._cudart.cudaMemcpyAsync(host.ctypes.data, buf.ptr, host.nbytes, d2h, self._stream))
                outs[name] = host
            _cuda(self._cudart.cudaStreamSynchronize(self._stream))
            return outs
        except RuntimeError as exc:             # CUDA errors from _cuda, a failed execute: one line
            if isinstance(exc, TrtError):
                raise
            raise TrtError(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__) from None

    def to_numpy(self, value: Any) -> np.ndarray:
        return self.features_to_numpy({"_": value})["_"]

    def features_to_numpy(self, features: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Device tensors copied to the host (one stream synchronisation for all); host arrays as they are."""
        d2h = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        out: dict[str, np.ndarray] = {}
        copied = False
        for name, value in features.items():
            if not isinstance(value, DeviceTensor):
                out[name] = np.asarray(value)
                continue
            host = np.empty(value.shape, value.dtype)
            _cuda(self._cudart.cudaMemcpyAsync(host.ctypes.data, value.ptr, host.nbytes, d2h, self._stream))
            out[name] = host
            copied = True
        if copied:
            _cuda(self._cudart.cudaStreamSynchronize(self._stream))
        return out

    # -- helpers -------------------------------------------------------------
    def _bind_inputs(self, e: _Engine, gio: GraphIO, feeds: Mapping[str, Any]) -> None:
        """Set every input's shape and address by name: device tensors (cached features) as they are,
        host arrays copied into the engine's reusable device buffer for that input."""
        h2d = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        batch: int | None = None
        for t in gio.inputs:
            value = feeds[t.name]
            if isinstance(value, DeviceTensor):
                shape, dtype = value.shape, value.dtype
            else:
                value = np.ascontiguousarray(value)
                shape, dtype = tuple(value.shape), value.dtype
            if batch is None:
                batch = shape[0]
            elif shape[0] != batch:                 # every graph input carries the batch on axis 0
                raise TrtError(f"{t.name} has {shape[0]} rows, the other inputs {batch}")
            e.bind_shape(t.name, shape, dtype)
            if isinstance(value, DeviceTensor):
                e.context.set_tensor_address(t.name, value.ptr)     # the encoder's device memory, bound as is
                continue
            buf = e.scratch(t.name, value.nbytes)
            # pageable host memory: cudaMemcpyAsync returns once the source is staged, so
            # ``value`` may go away afterwards
            _cuda(self._cudart.cudaMemcpyAsync(buf.ptr, value.ctypes.data, value.nbytes, h2d, self._stream))
            e.context.set_tensor_address(t.name, buf.ptr)

    def _execute(self, e: _Engine) -> None:
        if not e.context.execute_async_v3(int(self._stream)):
            raise TrtError(f"TensorRT failed to execute the {e.graph} engine (see the TensorRT log)")


TARGET = TensorRTTarget()

__all__ = ["TARGET", "DeviceTensor", "TensorRTTarget", "TrtRunner", "convert_onnx_fp16", "fp16_graph_summary",
           "graph_profile_rows", "profile_rows", "profile_shapes"]
