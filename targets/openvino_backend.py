"""OpenVINO target: ONNX -> OpenVINO IR per precision, and a runner whose cached features stay ``ov.Tensor``s.

Compile converts each bundle graph (``bundle.graph_names()``: encoder, denoiser and
the decoder where the model has one) with ``ov.convert_model`` and saves it as IR
(``<graph>.xml/.bin``; weights compressed to fp16 only for fp16). It then compiles the IR once on the CPU plugin with the precision hint and
reads back what the plugin will *really* compute in: the CPU plugin runs bf16
silently on AVX512-BF16/AMX machines unless told f32, and may refuse f16 where
the CPU has no native fp16. The compile record's ``effective_precision`` is the
loosest of the read-back hint and the precisions of the executed layers, never
the requested one by assumption; the runner re-checks it at open time.

bf16/f16 enforcement in the CPU plugin goes further than PyTorch autocast: it
also lowers the cheap element-wise chain that builds sinusoidal time embeddings,
where an argument like pi * 128 * u cannot be represented in 8 (or 11) mantissa
bits and sin/cos return noise. Compile marks that chain (and its constants) with
OpenVINO's "precise" runtime attribute so it stays f32, and records which
layers it kept and what they really executed in. The chain is found from both
ends, whatever the inputs are called: up from every Sin/Cos through cheap
element-wise ops, and down from the inputs the spec binds to the roles ``time``
and ``time_ctx`` (everything computed from the time alone on its way to a sin/cos).

The runner implements the runner contract (``dualrate.exporter.runner``): graphs
run by input name. It keeps the encoder's features as ``ov.Tensor``s it allocates
itself for every ``encode`` (so a later encode for another guidance branch cannot
overwrite them) and binds them to the denoiser's request, as the feeds of its
``feature:<name>`` inputs, without a host copy.

Bundles have a dynamic batch axis (axis 0 of every graph input and output, by the
spec), but the CPU plugin runs a dynamic-shape model slower: it cannot fuse the
element-wise chains (GroupNorm affine, FiLM, SiLU) into JIT subgraphs and re-plans
shapes at every call. The runner therefore compiles, on first use of each row
count, a copy of the graph with that batch fixed (the
sampler calls one row count throughout), checks it computes in the same precision,
and keeps the last few; the dynamic model stays the reference for input checks.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping
from xml.etree import ElementTree

import numpy as np

from dualrate.exporter import int8_calibration
from dualrate.exporter.bundle import Bundle
from dualrate.exporter.int8_calibration import CalibrationOptions
from dualrate.exporter.errors import BackendUnavailableError, BadInputError
from dualrate.exporter.runner import BaseRunner
from dualrate.exporter.spec import ROLE_TIME, ROLE_TIME_CTX, GraphIO, Spec

from . import ov_quantize
from .base import Compiled, Target, runtime_step
from .int8_layers import check_sensitive, conditioning_inputs
from .precision_plan import INT8_PRECISIONS, PrecisionPlan

DEVICE = "CPU"
INSTALL_HINT = "pip install 'dualrate[openvino]'"
# dualrate precision name -> OpenVINO element type name, and back
HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
FROM_OV = {v: k for k, v in HINTS.items()}
# looser gates later: when a graph mixes precisions, it is judged by the loosest one it runs
LOOSENESS = ("fp32", "fp16", "bf16")
# executed-graph layers that move no float data of their own
_NOT_COMPUTE = frozenset({"Const", "Input", "Output", "Parameter", "Result"})
# ops allowed on the path from a time input to sin/cos (precision_sensitive_ops)
_EMBEDDING_CHAIN = frozenset({"Add", "Subtract", "Multiply", "Divide", "Negative", "Clamp", "Maximum", "Minimum",
                              "Exp", "Power", "Convert", "Unsqueeze", "Squeeze", "Reshape", "Broadcast", "Concat",
                              "Sin", "Cos"})
_READBACK = ("INFERENCE_PRECISION_HINT", "EXECUTION_MODE_HINT", "PERFORMANCE_HINT", "NUM_STREAMS",
             "INFERENCE_NUM_THREADS")


def _ov():
    import openvino
    return openvino


def _ov_errors() -> tuple[type[BaseException], ...]:
    """What OpenVINO raises about a model: RuntimeError and its own failure classes (plain Exceptions)."""
    from openvino import _pyopenvino as native

    return (RuntimeError, ValueError, *(v for v in vars(native).values()
                                        if isinstance(v, type) and issubclass(v, Exception)))


@functools.lru_cache(maxsize=1)
def _core():
    """One ``ov.Core`` per process: it loads the device plugins, which is not free."""
    return _ov().Core()


def cpu_properties(precision: str, threads: int = 0) -> dict[str, str]:
    """CPU plugin properties for single-stream latency at ``precision`` (what compile sets and records)."""
    return {"INFERENCE_PRECISION_HINT": HINTS[precision],
            "PERFORMANCE_HINT": "LATENCY",          # one request at a time: the sampler is sequential
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(threads or os.cpu_count() or 1)}


def loosest(precisions: Iterable[str]) -> str:
    return max(precisions, key=LOOSENESS.index, default="fp32")


def executed_precisions(compiled_model: Any, only: Collection[str] | None = None) -> dict[str, int]:
    """How many executed float layers run in each precision (from the runtime graph's rt_info).

    ``only``: count just the executed layers made from these original (IR) layer names.
    """
    wanted = None if only is None else set(only)
    counts: Counter[str] = Counter()
    for op in compiled_model.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        if "runtimePrecision" not in rt or rt["layerType"].astype(str) in _NOT_COMPUTE:
            continue
        if wanted is not None and wanted.isdisjoint(rt["originalLayersNames"].astype(str).split(",")):
            continue
        prec = rt["runtimePrecision"].astype(str)
        if prec in FROM_OV:
            counts[prec] += 1
    return dict(sorted(counts.items()))


def time_inputs(gio: GraphIO) -> list[str]:
    """The graph inputs the spec binds to the time roles (``time``, ``time_ctx``), whatever their names."""
    return [t.name for t in gio.inputs if t.feeds in (ROLE_TIME, ROLE_TIME_CTX)]


def precision_sensitive_ops(model: Any, time_names: Collection[str] = ()) -> set[str]:
    """Names of the layers computing sin/cos arguments (and their constants): keep them f32.

    Two walks, united:

    * up from every Sin/Cos through cheap element-wise and shape ops only, so a sin of
      a heavy op's output never drags that op (or the network above it) into f32;
    * down from the inputs named in ``time_names`` (the spec's ``time``/``time_ctx``
      inputs): every op computed from the time alone (and constants) on its way to a
      Sin/Cos, whatever its type (a Fourier projection's MatMul, say). Such ops see one
      value per sample, so keeping them f32 costs nothing measurable.
    """
    ops = list(model.get_ordered_ops())
    trig = [op for op in ops if op.get_type_name() in ("Sin", "Cos")]
    keep: set[str] = set()
    stack = list(trig)
    while stack:
        node = stack.pop()
        name, kind = node.get_friendly_name(), node.get_type_name()
        if name in keep or (kind != "Constant" and kind not in _EMBEDDING_CHAIN):
            continue
        keep.add(name)
        if kind != "Constant":
            stack.extend(i.get_source_output().get_node() for i in node.inputs())
    if not trig or not time_names:
        return keep

    def sources(op: Any) -> list[Any]:
        return [i.get_source_output().get_node() for i in op.inputs()]

    # ops a Sin/Cos depends on (any type), the Sin/Cos included
    feeds_trig: set[str] = set()
    stack = list(trig)
    while stack:
        node = stack.pop()
        if node.get_friendly_name() not in feeds_trig:
            feeds_trig.add(node.get_friendly_name())
            stack.extend(sources(node))
    # ops computed from the time inputs and constants only (topological order: sources come first)
    wanted = set(time_names)
    params = {p.get_node().get_friendly_name() for p in model.inputs if p.get_any_name() in wanted}
    from_time: set[str] = set(params)
    for op in ops:
        kind = op.get_type_name()
        if kind in ("Parameter", "Constant", "Result") or not op.inputs():
            continue
        srcs = sources(op)
        if all(s.get_friendly_name() in from_time or s.get_type_name() == "Constant" for s in srcs) and \
                any(s.get_friendly_name() in from_time for s in srcs):
            from_time.add(op.get_friendly_name())
    chain = (from_time - params) & feeds_trig
    for op in ops:
        if op.get_friendly_name() in chain:
            keep.add(op.get_friendly_name())
            keep.update(s.get_friendly_name() for s in sources(op) if s.get_type_name() == "Constant")
    return keep


def unsqueeze_as_reshape(model: Any, names: Collection[str]) -> int:
    """Rewrite the named ``Unsqueeze`` ops (``t[:, None]`` of a time embedding) as ``Reshape``s; returns how many.

    The CPU plugin turns an Unsqueeze into its own Reshape and the "precise" attribute does not
    survive that (it is not copyable), so the value would be rounded to bf16 on its way to
    sin/cos. A Reshape in the IR is kept as it is, and keeps the attribute. The new op takes the
    Unsqueeze's name, so ``names`` still marks it.
    """
    ov = _ov()
    ops = ov.opset13
    count = 0
    for op in list(model.get_ordered_ops()):
        if op.get_type_name() != "Unsqueeze" or op.get_friendly_name() not in names:
            continue
        axes_node = op.input_value(1).get_node()
        out = op.get_output_partial_shape(0)
        if axes_node.get_type_name() != "Constant" or out.rank.is_dynamic:
            continue
        rank = out.rank.get_length()
        axes = {int(a) % rank for a in np.atleast_1d(axes_node.get_data())}
        x = op.input_value(0)
        pieces, j = [], 0
        for k in range(rank):
            if k in axes:
                pieces.append(ops.constant(np.array([1], np.int64)))
                continue
            d = out[k]
            pieces.append(ops.constant(np.array([d.get_length()], np.int64)) if d.is_static else
                          ops.gather(ops.shape_of(x, "i64"), ops.constant(np.array([j], np.int64)),
                                     ops.constant(np.array(0, np.int64))))
            j += 1
        reshape = ops.reshape(x, ops.concat(pieces, 0), special_zero=False)
        reshape.set_friendly_name(op.get_friendly_name())
        op.output(0).replace(reshape.output(0))
        count += 1
    if count:
        model.validate_nodes_and_infer_types()
    return count


def canonical_names(model: Any) -> int:
    """Rename ops that carry OpenVINO's generated name (``<Type>_<n>``, n from a process-wide counter) to
    ``<Type>_<position in the model>``: the saved IR is then the same bytes whatever was built before in the process
    (same bundle, options and seed: byte-identical artifacts). Returns how many were renamed."""
    count = 0
    for i, op in enumerate(model.get_ordered_ops()):
        # the type in the name may be the op's origin (a Constant folded from a Reshape is "Reshape_136")
        kind, _, number = op.get_friendly_name().rpartition("_")
        if kind.isalnum() and number.isdigit() and number != str(i):
            op.set_friendly_name(f"{kind}_{i}")
            count += 1
    return count


def _mark_precise(xml: Path, names: Collection[str]) -> None:
    """Add OpenVINO's "precise" runtime attribute (what ``ov::disable_fp16_compression`` serializes to)
    to the named IR layers; the plugins then keep them in their original precision."""
    tree = ElementTree.parse(xml)
    for layer in tree.getroot().iter("layer"):
        if layer.get("name") in names:
            rt = layer.find("rt_info")
            if rt is None:
                rt = ElementTree.Element("rt_info")
                layer.insert(0, rt)
            ElementTree.SubElement(rt, "attribute", {"name": "precise", "version": "0"})
    tree.write(xml, encoding="utf-8", xml_declaration=True)


def precision_of(compiled_model: Any) -> tuple[str, str, dict[str, int]]:
    """(effective precision, read-back hint, executed layer precisions) of one compiled model.

    The hint alone is what the plugin promises; the executed graph is what it built.
    Either one running lower than f32 makes the graph that precision.
    """
    hint = compiled_model.get_property("INFERENCE_PRECISION_HINT").get_type_name()
    layers = executed_precisions(compiled_model)
    seen = [FROM_OV[p] for p in layers] + ([FROM_OV[hint]] if hint in FROM_OV else [])
    if not seen:
        raise BackendUnavailableError(f"OpenVINO reports inference precision {hint!r}, which dualrate cannot gate; "
                                      "report this with `dualrate doctor` output")
    return loosest(seen), hint, layers


class OpenVinoTarget(Target):
    name = "openvino"
    precisions = ("fp32", "bf16", "fp16", "int8", "int8-weights")
    extra = "openvino"

    def available(self) -> str | None:
        try:
            _ov()
        except ImportError as exc:
            return f"openvino cannot be imported ({exc}); {INSTALL_HINT}"
        try:
            devices = _core().available_devices
        except RuntimeError as exc:
            return f"OpenVINO cannot load its device plugins ({exc}); reinstall with {INSTALL_HINT}"
        if DEVICE not in devices:
            return f"OpenVINO finds no {DEVICE} device (found {devices}); reinstall with {INSTALL_HINT}"
        return None

    def runtime_version(self) -> str:
        return _ov().__version__

    def compile_into(self, bundle: Bundle, plan: PrecisionPlan, out: Path, threads: int = 0,
                     calibration_samples: int | None = None, calibration_seed: int | None = None,
                     int8_sensitive: str = "int8-weights") -> dict[str, Any]:
        """IR per graph at its plan's precision, in graph order (encoder first: an int8 denoiser is calibrated
        on the features of the encoder as compiled here); ``threads`` (0: every core) is recorded with the
        properties and used by the runner. int8 graphs: ``ov_quantize`` (``int8_sensitive``: its
        ``sensitive``), calibrated by ``int8_calibration`` (``calibration_*``), their float part in f32."""
        ov = _ov()
        core = _core()
        check_sensitive(int8_sensitive)
        calibration = int8_calibration.options_from(calibration_samples, calibration_seed)
        graph_io = bundle.spec.model.graphs()
        per_graph: dict[str, dict[str, Any]] = {}
        graph_props: dict[str, dict[str, str]] = {}
        graph_precisions: dict[str, str] = {}
        runtime = f"OpenVINO {ov.__version__.split('-')[0]}"
        with tempfile.TemporaryDirectory() as fp32_irs:
            for graph in bundle.graph_names():
                precision = plan.for_graph(graph)
                # an int8 graph's float part (sensitive layers, normalisation, softmax) computes in f32, not in
                # the bf16 the plugin would pick on its own on AMX machines
                float_precision = precision if precision in HINTS else "fp32"
                props = cpu_properties(float_precision, threads)
                xml = out / f"{graph}.xml"
                times = time_inputs(graph_io[graph])
                # OpConversionFailure and friends: the bundle passed its checks at open, so the graph is at fault
                with runtime_step(runtime, graph, "convert", (Exception,), _convert_line):
                    model = ov.convert_model(str(bundle.graph(graph)))   # reads .onnx.data beside it, if any
                canonical_names(model)
                quantization = None
                if precision in INT8_PRECISIONS:
                    model, quantization = self._quantize(bundle, graph, model, precision, calibration, int8_sensitive,
                                                         out, Path(fp32_irs), graph_props, threads)
                # f32 (and int8's float part) keeps everything f32 anyway: marking would only cost an IR round trip
                keep = precision_sensitive_ops(model, times) if float_precision != "fp32" else set()
                rewritten = unsqueeze_as_reshape(model, keep) if keep else 0
                with tempfile.TemporaryDirectory(dir=out) as scratch:
                    if keep:
                        # the Python API cannot set the attribute; its serialized IR form can be written
                        raw = Path(scratch) / f"{graph}.xml"
                        ov.save_model(model, str(raw), compress_to_fp16=False)
                        _mark_precise(raw, keep)
                        model = core.read_model(str(raw))
                    # fp16 weights only where fp16 is asked for (with an f32 hint they would still lose
                    # bits); the compression leaves the constants marked precise in f32
                    canonical_names(model)         # ops NNCF or the IR round trip added
                    ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
                    del model                      # drop the mapping of the scratch weights before removal
                with runtime_step(runtime, graph, "compile", _ov_errors(), _first_line):
                    compiled = core.compile_model(core.read_model(str(xml)), DEVICE, props)   # compile what was saved
                effective, hint, layers = precision_of(compiled)
                per_graph[graph] = {"effective_precision": effective, "inference_precision_hint": hint,
                                    "executed_layer_precisions": layers,
                                    "time_inputs": times,
                                    "kept_f32": sorted(keep),
                                    "kept_f32_unsqueeze_as_reshape": rewritten,
                                    "kept_f32_executed": executed_precisions(compiled, only=keep),
                                    "properties_read_back": {k: _prop_str(compiled.get_property(k)) for k in _READBACK}}
                if quantization is not None:
                    quantization.update(ov_quantize.op_counts(core.read_model(str(xml))))
                    per_graph[graph]["quantization"] = quantization
                    # its float part runs in ``effective`` (f32 as asked; anything else is in the note)
                    graph_precisions[graph] = precision
                else:
                    graph_precisions[graph] = effective
                graph_props[graph] = props
        first = bundle.graph_names()[0]
        record: dict[str, Any] = {
            "graph_precisions": graph_precisions,
            "device": core.get_property(DEVICE, "FULL_DEVICE_NAME"),
            "device_plugin": DEVICE,
            "optimization_capabilities": list(core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")),
            "properties": graph_props[first],
            "graph_properties": graph_props,
            "weights_compressed_to_fp16": "fp16" in plan.precisions,
            "graphs": per_graph,
        }
        if any(p in INT8_PRECISIONS for p in plan.precisions):
            record["calibration"] = calibration.record("OpenVINO")
        off = {g: v for g, v in per_graph.items() if v["effective_precision"] !=
               (plan.for_graph(g) if plan.for_graph(g) in HINTS else "fp32")}
        if off:
            hints = ", ".join(f"{g}={v['inference_precision_hint']}" for g, v in off.items())
            layers = ", ".join(f"{g}={v['executed_layer_precisions']}" for g, v in off.items())
            if plan.uniform in HINTS:
                asked = f"{plan.uniform} ({HINTS[plan.uniform]})"
                runs = loosest(v["effective_precision"] for v in off.values())
            else:
                asked, runs = plan.text, ", ".join(f"{g} in {v['effective_precision']}" for g, v in off.items())
            record["note"] = (f"requested {asked}, but the {DEVICE} plugin runs {runs} (read-back "
                              f"INFERENCE_PRECISION_HINT {hints}; executed layers {layers}); parity is gated on the "
                              "effective precision")
        return record

    def _quantize(self, bundle: Bundle, graph: str, model: Any, precision: str, calibration: CalibrationOptions,
                  sensitive: str, out: Path, fp32_irs: Path, graph_props: dict[str, dict[str, str]],
                  threads: int) -> tuple[Any, dict[str, Any]]:
        """``model`` at ``precision`` (int8 | int8-weights) and its record (``ov_quantize``)."""
        if precision == "int8-weights":
            with runtime_step("NNCF", graph, "compress the weights of", (RuntimeError, ValueError, TypeError)):
                return ov_quantize.compress_int8(model)
        # the sampler as the compiled bundle will run it, up to this graph: graphs compiled so far as compiled
        # (an int8 encoder's features), the rest as fp32 IR
        models, props = {}, {}
        for g in bundle.graph_names():
            if g in graph_props:
                models[g], props[g] = out / f"{g}.xml", graph_props[g]
            else:
                models[g], props[g] = self._fp32_ir(bundle, g, fp32_irs), cpu_properties("fp32", threads)
        runner = OpenVinoRunner(bundle.spec, models, props)
        feeds = int8_calibration.collect(runner, bundle.spec, bundle.nulls(), graph, calibration)
        del runner
        gio = bundle.spec.model.graphs()[graph]
        with runtime_step("NNCF", graph, "quantize", (RuntimeError, ValueError, TypeError)):
            quantized, record = ov_quantize.quantize_int8(model.clone(), feeds, conditioning_inputs(gio), graph,
                                                          sensitive)
        record["sensitivity"] = ov_quantize.sensitivity(model, quantized, feeds, _core(),
                                                        cpu_properties("fp32", threads))
        return quantized, record

    def _fp32_ir(self, bundle: Bundle, graph: str, scratch: Path) -> Path:
        """The graph converted as is (f32), for calibration runs before it is compiled."""
        xml = scratch / f"{graph}.xml"
        if not xml.is_file():
            ov = _ov()
            with runtime_step(f"OpenVINO {ov.__version__.split('-')[0]}", graph, "convert", (Exception,),
                              _convert_line):
                ov.save_model(ov.convert_model(str(bundle.graph(graph))), str(xml), compress_to_fp16=False)
        return xml

    def open_runner(self, bundle: Bundle, compiled: Compiled, threads: int = 0) -> "OpenVinoRunner":
        rec = compiled.record
        names = bundle.graph_names()
        base = rec.get("properties") or cpu_properties(compiled.effective_precision)
        props = {g: dict((rec.get("graph_properties") or {}).get(g) or base) for g in names}
        if threads:
            for p in props.values():
                p["INFERENCE_NUM_THREADS"] = str(threads)     # speed only; the precision stays as compiled
        # what the plugin computed each graph's float part in at compile time (int8 graphs: f32)
        graphs = rec.get("graphs") or {}
        expected: str | dict[str, str] = (compiled.effective_precision if compiled.effective_precision in HINTS else
                                          {g: graphs.get(g, {}).get("effective_precision", "fp32") for g in names})
        return OpenVinoRunner(bundle.spec, {g: compiled.path / f"{g}.xml" for g in names}, props,
                              expected_precision=expected)

    def structural_checks(self, bundle: Bundle, compiled: Compiled) -> list[dict[str, Any]]:
        """IR inputs/outputs against the spec: names, element types, and a dynamic batch iff the spec has one."""
        core = _core()
        checks = []
        graph_io = bundle.spec.model.graphs()
        for graph in bundle.graph_names():
            io = graph_io[graph]
            model = core.read_model(str(compiled.path / f"{graph}.xml"))
            for kind, ports, declared in (("input", model.inputs, io.inputs), ("output", model.outputs, io.outputs)):
                got = [(p.get_any_name(), p.get_element_type().to_dtype().name, _dims(p.get_partial_shape()))
                       for p in ports]
                want = [(t.name, t.dtype, tuple("?" if isinstance(d, str) else d for d in t.shape)) for t in declared]
                checks.append({"name": f"{graph} {kind}s match the spec", "graph": graph, "passed": got == want,
                               "detail": f"IR {got}; spec {want}"})
        rec = compiled.record
        known = set(HINTS) | set(INT8_PRECISIONS)
        graph_precisions = compiled.graph_precisions
        checks.append({"name": "effective precision recorded",
                       "passed": bool(graph_precisions) and all(p in known for p in graph_precisions.values()),
                       "detail": f"requested {rec.get('requested_precision')}, effective {rec.get('effective_precision')}"
                                 + (f" ({rec['note']})" if rec.get("note") else "")})
        return checks


class OpenVinoError(RuntimeError):
    """What OpenVINO (or the runner's own check of a runtime-native feed) refused, as one useful line;
    ``BaseRunner`` turns it into a ``BadInputError`` naming the graph."""


class _Graph:
    """One compiled graph and its infer request; inputs and outputs by name.

    ``source``/``properties`` given and a dynamic batch axis: calls run on a copy compiled
    for their row count (see the module docstring); ``self.request`` is the one in use.
    """

    MAX_SPECIALIZED = 4          # row counts kept compiled (each holds its own copy of the weights)

    def __init__(self, name: str, compiled_model: Any, source: Any = None, properties: dict[str, str] | None = None):
        self.name = name
        self.model = compiled_model
        self.request = compiled_model.create_infer_request()
        self.inputs = {p.get_any_name(): (i, p) for i, p in enumerate(compiled_model.inputs)}
        self.outputs = [p.get_any_name() for p in compiled_model.outputs]
        self._dynamic_request = self.request
        self._source = source if source is not None and _batch_only_dynamic(compiled_model) else None
        self._properties = dict(properties or {})
        self._precision = precision_of(compiled_model)[0] if self._source is not None else None
        self._by_rows: dict[int, Any] = {}      # insertion order = least recently used first

    def request_for(self, batch: int) -> Any:
        """The infer request for ``batch`` rows: a static-shape compile when possible, else the dynamic one."""
        if self._source is None:
            return self._dynamic_request
        request = self._by_rows.pop(batch, None)
        if request is None:
            model = self._source.clone()
            # the batch is axis 0 of every graph input (the spec's I/O binding), whatever the input is called
            model.reshape({p.get_any_name(): _ov().PartialShape([batch, *list(p.get_partial_shape())[1:]])
                           for p in model.inputs})
            compiled = _core().compile_model(model, DEVICE, self._properties)
            # same IR and properties: anything but the same precision would change what parity was gated on
            request = (compiled.create_infer_request() if precision_of(compiled)[0] == self._precision
                       else self._dynamic_request)
            if len(self._by_rows) >= self.MAX_SPECIALIZED:
                self._by_rows.pop(next(iter(self._by_rows)))
        self._by_rows[batch] = request
        return request

    def bind(self, values: Mapping[str, Any]) -> int:
        """Set every input by name (numpy arrays shared, ``ov.Tensor``s as they are); return the batch size."""
        ov = _ov()
        if set(values) != set(self.inputs):
            raise OpenVinoError(f"got inputs {sorted(values)}, the graph has {sorted(self.inputs)}")
        batch: int | None = None
        tensors: list[tuple[int, Any]] = []
        for name, value in values.items():
            index, port = self.inputs[name]
            if isinstance(value, ov.Tensor):
                dtype, shape, tensor = value.element_type.to_dtype(), tuple(value.shape), value
            else:
                arr = np.asarray(value)
                dtype, shape, tensor = arr.dtype, arr.shape, None
            want = port.get_element_type().to_dtype()
            if dtype != want:
                raise OpenVinoError(f"input {name!r} has dtype {dtype}, expected {want}")
            if not port.get_partial_shape().compatible(ov.PartialShape(list(shape))):
                raise OpenVinoError(f"input {name!r} has shape {shape}, expected {_dims(port.get_partial_shape())}")
            if batch is None:
                batch = shape[0]
            elif shape[0] != batch:    # every graph input carries the batch on axis 0
                raise OpenVinoError(f"input {name!r} has batch {shape[0]}, other inputs have {batch}")
            if tensor is None:
                # shares the caller's buffer for the duration of the call: no copy for contiguous input
                tensor = ov.Tensor(np.ascontiguousarray(arr), shared_memory=True)
            tensors.append((index, tensor))
        assert batch is not None
        self.request = self.request_for(batch)
        for index, tensor in tensors:
            self.request.set_input_tensor(index, tensor)
        return batch

    def output_shapes(self, batch: int) -> list[list[int]] | None:
        """Output shapes for ``batch`` rows, or None when another axis is dynamic too."""
        shapes = []
        for port in self.model.outputs:
            dims = []
            for k, d in enumerate(port.get_partial_shape()):
                if d.is_static:
                    dims.append(d.get_length())
                elif k == 0:
                    dims.append(batch)
                else:
                    return None
            shapes.append(dims)
        return shapes

    def run(self, feeds: Mapping[str, Any], native: bool) -> dict[str, Any]:
        """One call: outputs by name, as fresh ``ov.Tensor``s this call owns (``native``) or numpy arrays."""
        ov = _ov()
        try:
            batch = self.bind(feeds)
            shapes = self.output_shapes(batch)
            fresh: list[Any] | None = None
            if shapes is not None:
                # outputs land in memory this call owns: the request's own outputs would be overwritten by
                # the next call (for the encoder: the other guidance branch's refresh), no copy after infer
                if native:
                    fresh = [ov.Tensor(p.get_element_type(), ov.Shape(s)) for p, s in zip(self.model.outputs, shapes)]
                else:
                    fresh = [np.empty(s, dtype=p.get_element_type().to_dtype())
                             for p, s in zip(self.model.outputs, shapes)]
                for i, t in enumerate(fresh):
                    self.request.set_output_tensor(i, t if native else ov.Tensor(t, shared_memory=True))
            self.request.infer()
            outs: dict[str, Any] = {}
            for i, name in enumerate(self.outputs):
                produced = self.request.get_output_tensor(i)
                mine = None if fresh is None else fresh[i]
                if mine is not None and _same_memory(produced, mine):
                    outs[name] = mine
                elif native:           # the plugin used its own buffer: take a private copy
                    own = ov.Tensor(produced.element_type, produced.shape)
                    produced.copy_to(own)
                    outs[name] = own
                else:
                    outs[name] = np.array(produced.data)
            return outs
        except (RuntimeError, TypeError, ValueError) as exc:
            if isinstance(exc, OpenVinoError):
                raise
            raise OpenVinoError(_first_line(exc)) from None


class OpenVinoRunner(BaseRunner):
    """The runner contract over one OpenVINO compiled model per graph; features stay ``ov.Tensor``s between steps.

    One infer request per graph, reused by every call: use one runner per thread.
    """

    name = "openvino"
    runtime_errors = (OpenVinoError,)

    def __init__(self, spec: Spec, models: Mapping[str, Path], properties: Mapping[str, Any],
                 expected_precision: str | Mapping[str, str] | None = None):
        """``properties``: CPU plugin properties for every graph, or graph -> properties (a precision plan);
        ``expected_precision``: what the graphs computed in at compile time (one, or per graph)."""
        super().__init__(spec)
        core = _core()
        per_graph = properties and all(isinstance(v, Mapping) for v in properties.values())
        self.graph_properties = {g: dict(properties[g] if per_graph else properties) for g in self.graphs}
        self.properties = self.graph_properties[next(iter(self.graphs))]
        self._graphs: dict[str, _Graph] = {}
        for name, gio in self.graphs.items():
            xml = models.get(name)
            if xml is None or not Path(xml).is_file():
                raise BadInputError(f"compiled OpenVINO model {xml or name + '.xml'} is missing; run "
                                    "`dualrate compile --target openvino --force`")
            with runtime_step("OpenVINO", name, "load the compiled copy of", _ov_errors(), _first_line):
                source = core.read_model(str(xml))
                props = self.graph_properties[name]
                g = _Graph(name, core.compile_model(source, DEVICE, props), source, props)
            want_in, want_out = sorted(t.name for t in gio.inputs), [t.name for t in gio.outputs]
            if sorted(g.inputs) != want_in or any(o not in g.outputs for o in want_out):
                raise BadInputError(f"compiled OpenVINO {name} takes {sorted(g.inputs)} and gives {g.outputs}; the "
                                    f"spec binds {want_in} -> {want_out}. Recompile the bundle "
                                    "(`dualrate compile --target openvino --force`)")
            self._graphs[name] = g
        got = {name: precision_of(g.model)[0] for name, g in self._graphs.items()}
        self.effective_precision = loosest(got.values())
        recompile = ("recompile here with `dualrate compile --target openvino --force` so parity is gated on what "
                     "really runs")
        # same IR, same properties, different answer: another CPU or OpenVINO build than at compile time
        if isinstance(expected_precision, str) and self.effective_precision != expected_precision:
            raise BackendUnavailableError(
                f"OpenVINO on this machine runs the compiled models in {self.effective_precision}, but they were "
                f"compiled and recorded as {expected_precision}; {recompile}")
        if isinstance(expected_precision, Mapping):
            off = [f"{name} in {p} (recorded {expected_precision[name]})" for name, p in got.items()
                   if expected_precision.get(name, p) != p]
            if off:
                raise BackendUnavailableError(f"OpenVINO on this machine runs {', '.join(off)}; {recompile}")

    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, Any]:
        # the encoder's outputs are the feature cache: they stay ov.Tensors (bound as they are later)
        outs = self._graphs[graph].run(feeds, native=graph == "encoder")
        return {t.name: outs[t.name] for t in self.graphs[graph].outputs}

    def to_numpy(self, value: Any) -> np.ndarray:
        ov = _ov()
        return np.array(value.data) if isinstance(value, ov.Tensor) else np.asarray(value)


def _batch_only_dynamic(compiled_model: Any) -> bool:
    """Whether the batch (axis 0 of every input) is the only dynamic dimension."""
    shapes = [p.get_partial_shape() for p in compiled_model.inputs]
    return (any(s[0].is_dynamic for s in shapes)
            and all(s.rank.is_static and all(d.is_static for d in list(s)[1:]) for s in shapes))


def _same_memory(produced: Any, mine: Any) -> bool:
    """Whether the request wrote its output into ``mine`` (an ``ov.Tensor`` or a numpy array)."""
    data = mine if isinstance(mine, np.ndarray) else mine.data
    return tuple(produced.shape) == tuple(data.shape) and produced.data.ctypes.data == data.ctypes.data


def _dims(shape: Any) -> tuple[int | str, ...]:
    return tuple(d.get_length() if d.is_static else "?" for d in shape)


def _prop_str(value: Any) -> str:
    ov = _ov()
    return value.get_type_name() if isinstance(value, ov.Type) else str(value)


def _first_line(exc: BaseException) -> str:
    """The informative line of an OpenVINO error (its messages start with source-location lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Exception from", "Check '"))]
    return (useful or lines or [type(exc).__name__])[0]


_FRAMING = ("Check '", "Exception from", "FrontEnd API failed", "Model wasn't fully converted", "Summary:", "--",
            "[ONNX Frontend]", "While validating")


def _convert_line(exc: BaseException) -> str:
    """One line of a conversion failure: the converter's summary ("No conversion rule found for
    operations: X-18") and its first specific reason, without the source-location framing."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    summary = [ln[2:].strip() for ln in lines[next((i for i, ln in enumerate(lines) if ln == "Summary:"),
                                                    len(lines)):] if ln.startswith("--")]
    reason = next((ln for ln in lines if not ln.startswith(_FRAMING)), None)
    text = "; ".join(summary + ([reason] if reason else []))
    return text or _first_line(exc)


TARGET = OpenVinoTarget()
