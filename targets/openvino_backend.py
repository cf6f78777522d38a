"""OpenVINO target: ONNX -> OpenVINO IR per precision, and a runner whose cached features stay ``ov.Tensor``s.

Compile converts each bundle graph with ``ov.convert_model`` and saves it as IR
(``encoder.xml/.bin``, ``denoiser.xml/.bin``; weights compressed to fp16 only for
fp16). It then compiles the IR once on the CPU plugin with the precision hint and
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
layers it kept and what they really executed in.

The runner keeps the encoder's features as ``ov.Tensor``s it allocates itself
for every ``encode`` (so a later encode for another guidance branch cannot
overwrite them) and binds them to the denoiser's request without a host copy.

Bundles have a dynamic batch axis, but the CPU plugin runs a dynamic-shape model
slower: it cannot fuse the element-wise chains (GroupNorm affine, FiLM, SiLU) into
JIT subgraphs and re-plans shapes at every call. The runner therefore compiles,
on first use of each row count, a copy of the graph with that batch fixed (the
sampler calls one row count throughout), checks it computes in the same precision,
and keeps the last few; the dynamic model stays the reference for input checks.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Collection, Iterable, Sequence
from xml.etree import ElementTree

import numpy as np

from dualrate.exporter.bundle import GRAPHS, Bundle
from dualrate.exporter.errors import BackendUnavailableError, BadInputError

from .base import Compiled, Target

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


def precision_sensitive_ops(model: Any) -> set[str]:
    """Names of the layers computing sin/cos arguments (and their constants): keep them f32.

    Walks up from every Sin/Cos through cheap element-wise and shape ops only, so a
    sin of a heavy op's output never drags that op (or the network above it) into f32.
    """
    keep: set[str] = set()
    stack = [op for op in model.get_ordered_ops() if op.get_type_name() in ("Sin", "Cos")]
    while stack:
        node = stack.pop()
        name, kind = node.get_friendly_name(), node.get_type_name()
        if name in keep or (kind != "Constant" and kind not in _EMBEDDING_CHAIN):
            continue
        keep.add(name)
        if kind != "Constant":
            stack.extend(i.get_source_output().get_node() for i in node.inputs())
    return keep


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
    precisions = ("fp32", "bf16", "fp16")
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

    def compile_into(self, bundle: Bundle, precision: str, out: Path, threads: int = 0, **_: Any) -> dict[str, Any]:
        ov = _ov()
        core = _core()
        props = cpu_properties(precision, threads)
        per_graph: dict[str, dict[str, Any]] = {}
        for graph in GRAPHS:
            xml = out / f"{graph}.xml"
            try:
                model = ov.convert_model(str(bundle.graph(graph)))   # reads .onnx.data beside it, if any
            except Exception as exc:          # OpConversionFailure and friends: name the graph, keep it short
                raise BackendUnavailableError(f"OpenVINO {ov.__version__} cannot convert {graph}.onnx: "
                                              f"{_first_line(exc)}") from None
            # f32 keeps everything f32 anyway: marking would only cost an IR round trip
            keep = precision_sensitive_ops(model) if precision != "fp32" else set()
            with tempfile.TemporaryDirectory(dir=out) as scratch:
                if keep:
                    # the Python API cannot set the attribute; its serialized IR form can be written
                    raw = Path(scratch) / f"{graph}.xml"
                    ov.save_model(model, str(raw), compress_to_fp16=False)
                    _mark_precise(raw, keep)
                    model = core.read_model(str(raw))
                # fp16 weights only where fp16 is asked for (with an f32 hint they would still lose
                # bits); the compression leaves the constants marked precise in f32
                ov.save_model(model, str(xml), compress_to_fp16=precision == "fp16")
                del model                      # drop the mapping of the scratch weights before removal
            compiled = core.compile_model(core.read_model(str(xml)), DEVICE, props)   # compile what was saved
            effective, hint, layers = precision_of(compiled)
            per_graph[graph] = {"effective_precision": effective, "inference_precision_hint": hint,
                                "executed_layer_precisions": layers,
                                "kept_f32": sorted(keep),
                                "kept_f32_executed": executed_precisions(compiled, only=keep),
                                "properties_read_back": {k: _prop_str(compiled.get_property(k)) for k in _READBACK}}
        effective = loosest(g["effective_precision"] for g in per_graph.values())
        record: dict[str, Any] = {
            "effective_precision": effective,
            "device": core.get_property(DEVICE, "FULL_DEVICE_NAME"),
            "device_plugin": DEVICE,
            "optimization_capabilities": list(core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES")),
            "properties": props,
            "weights_compressed_to_fp16": precision == "fp16",
            "graphs": per_graph,
        }
        if effective != precision:
            hints = ", ".join(f"{g}={v['inference_precision_hint']}" for g, v in per_graph.items())
            layers = ", ".join(f"{g}={v['executed_layer_precisions']}" for g, v in per_graph.items())
            record["note"] = (f"requested {precision} ({HINTS[precision]}), but the {DEVICE} plugin runs {effective} "
                              f"(read-back INFERENCE_PRECISION_HINT {hints}; executed layers {layers}); "
                              "parity is gated on the effective precision")
        return record

    def open_runner(self, bundle: Bundle, compiled: Compiled, threads: int = 0, **_: Any) -> "OpenVinoRunner":
        props = dict(compiled.record.get("properties") or cpu_properties(compiled.effective_precision))
        if threads:
            props["INFERENCE_NUM_THREADS"] = str(threads)     # speed only; the precision stays as compiled
        return OpenVinoRunner(compiled.path / "encoder.xml", compiled.path / "denoiser.xml",
                              [o.name for o in bundle.spec.model.encoder.outputs], props,
                              expected_precision=compiled.effective_precision)

    def structural_checks(self, bundle: Bundle, compiled: Compiled) -> list[dict[str, Any]]:
        """IR inputs/outputs against the spec: names, element types, and a dynamic batch iff the spec has one."""
        core = _core()
        checks = []
        for graph, io in (("encoder", bundle.spec.model.encoder), ("denoiser", bundle.spec.model.denoiser)):
            model = core.read_model(str(compiled.path / f"{graph}.xml"))
            for kind, ports, declared in (("input", model.inputs, io.inputs), ("output", model.outputs, io.outputs)):
                got = [(p.get_any_name(), p.get_element_type().to_dtype().name, _dims(p.get_partial_shape()))
                       for p in ports]
                want = [(t.name, t.dtype, tuple("?" if isinstance(d, str) else d for d in t.shape)) for t in declared]
                checks.append({"name": f"{graph} {kind}s match the spec", "graph": graph, "passed": got == want,
                               "detail": f"IR {got}; spec {want}"})
        rec = compiled.record
        checks.append({"name": "effective precision recorded", "passed": rec.get("effective_precision") in HINTS,
                       "detail": f"requested {rec.get('requested_precision')}, effective {rec.get('effective_precision')}"
                                 + (f" ({rec['note']})" if rec.get("note") else "")})
        return checks


class _Graph:
    """One compiled graph and its infer request, with input checks that name the graph.

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

    def bind(self, values: dict[str, Any]) -> int:
        """Set every input (numpy arrays shared, ``ov.Tensor``s as they are); return the batch size."""
        ov = _ov()
        if set(values) != set(self.inputs):
            self._reject(f"got inputs {sorted(values)}, the graph has {sorted(self.inputs)}")
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
                self._reject(f"input {name!r} has dtype {dtype}, expected {want}")
            if not port.get_partial_shape().compatible(ov.PartialShape(list(shape))):
                self._reject(f"input {name!r} has shape {shape}, expected {_dims(port.get_partial_shape())}")
            if batch is None:
                batch = shape[0]
            elif shape[0] != batch:    # every graph input carries the batch on axis 0
                self._reject(f"input {name!r} has batch {shape[0]}, other inputs have {batch}")
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

    def infer(self) -> None:
        try:
            self.request.infer()
        except (RuntimeError, TypeError, ValueError) as exc:
            self._reject(_first_line(exc))

    def _reject(self, why: str) -> None:
        raise BadInputError(f"openvino rejected the {self.name} inputs: {why}") from None


class OpenVinoRunner:
    """Runner protocol over two OpenVINO compiled models; features stay ``ov.Tensor``s between steps.

    One infer request per graph, reused by every call: use one runner per thread.
    """

    name = "openvino"

    def __init__(self, encoder: Path, denoiser: Path, feature_names: Sequence[str], properties: dict[str, str],
                 expected_precision: str | None = None):
        core = _core()
        self.properties = dict(properties)
        graphs = {}
        for name, xml in (("encoder", encoder), ("denoiser", denoiser)):
            if not Path(xml).is_file():
                raise BadInputError(f"compiled OpenVINO model {xml} is missing; run `dualrate compile --target openvino`")
            source = core.read_model(str(xml))
            graphs[name] = _Graph(name, core.compile_model(source, DEVICE, self.properties), source, self.properties)
        self._enc, self._den = graphs["encoder"], graphs["denoiser"]
        self.effective_precision = loosest(precision_of(g.model)[0] for g in graphs.values())
        if expected_precision is not None and self.effective_precision != expected_precision:
            # same IR, same properties, different answer: another CPU or OpenVINO build than at compile time
            raise BackendUnavailableError(
                f"OpenVINO on this machine runs the compiled models in {self.effective_precision}, but they were "
                f"compiled and recorded as {expected_precision}; recompile here with "
                "`dualrate compile --target openvino --force` so parity is gated on what really runs")
        self._feature_names = list(feature_names)
        missing = [n for n in self._feature_names if n not in self._enc.outputs or n not in self._den.inputs]
        if missing:
            raise BadInputError(f"compiled OpenVINO models do not carry feature(s) {missing}; recompile the bundle")
        self._feature_index = [self._enc.outputs.index(n) for n in self._feature_names]

    def encode(self, z: np.ndarray, logsnr: np.ndarray, class_id: np.ndarray) -> list[Any]:
        ov = _ov()
        g = self._enc
        batch = g.bind({"z": z, "logsnr": logsnr, "class_id": class_id})
        shapes = g.output_shapes(batch)
        fresh = None
        if shapes is not None:
            # the encoder writes straight into tensors this call owns: the request's own outputs
            # would be overwritten by the next encode (the other guidance branch)
            fresh = [ov.Tensor(p.get_element_type(), ov.Shape(s)) for p, s in zip(g.model.outputs, shapes)]
            for i, t in enumerate(fresh):
                g.request.set_output_tensor(i, t)
        g.infer()
        outs = []
        for i in range(len(g.outputs)):
            produced = g.request.get_output_tensor(i)
            if fresh is not None and _same_memory(produced, fresh[i]):
                outs.append(fresh[i])
            else:                      # the plugin used its own buffer: take a private copy (encode only, sparse)
                own = ov.Tensor(produced.element_type, produced.shape)
                produced.copy_to(own)
                outs.append(own)
        return [outs[i] for i in self._feature_index]

    def denoise(self, z: np.ndarray, logsnr: np.ndarray, logsnr_ctx: np.ndarray, class_id: np.ndarray,
                features: Any) -> np.ndarray:
        ov = _ov()
        g = self._den
        features = list(features)
        if len(features) != len(self._feature_names):
            raise BadInputError(f"openvino rejected the denoiser inputs: {len(features)} feature tensors given, "
                                f"the graph takes {len(self._feature_names)} ({', '.join(self._feature_names)})")
        batch = g.bind({"z": z, "logsnr": logsnr, "logsnr_ctx": logsnr_ctx, "class_id": class_id,
                        **dict(zip(self._feature_names, features))})
        shapes = g.output_shapes(batch)
        out = None
        if shapes is not None:
            # the prediction lands in a fresh numpy array: no copy after infer, no aliasing the request
            out = np.empty(shapes[0], dtype=g.model.outputs[0].get_element_type().to_dtype())
            g.request.set_output_tensor(0, ov.Tensor(out, shared_memory=True))
        g.infer()
        produced = g.request.get_output_tensor(0)
        if out is not None and produced.data.ctypes.data == out.ctypes.data:
            return out
        return np.array(produced.data)

    def features_to_numpy(self, features: Any) -> list[np.ndarray]:
        ov = _ov()
        return [np.array(f.data) if isinstance(f, ov.Tensor) else np.array(f) for f in features]


def _batch_only_dynamic(compiled_model: Any) -> bool:
    """Whether the batch (axis 0 of every input) is the only dynamic dimension."""
    shapes = [p.get_partial_shape() for p in compiled_model.inputs]
    return (any(s[0].is_dynamic for s in shapes)
            and all(s.rank.is_static and all(d.is_static for d in list(s)[1:]) for s in shapes))


def _same_memory(a: Any, b: Any) -> bool:
    return tuple(a.shape) == tuple(b.shape) and a.data.ctypes.data == b.data.ctypes.data


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


TARGET = OpenVinoTarget()
