"""Structural checks of a bundle's ONNX graphs, run by ``open_bundle`` before any runtime sees a file.

A manifest's hashes prove that a bundle is unchanged since the manifest was written, not that
its author was honest: a bundle from elsewhere is untrusted input, and ONNX graphs are read by
native runtimes that follow what the file says (an external-data path, a custom op domain).
So, for every graph of the bundle (``<graph>.onnx`` at its root), once its hash matched:

* **external data**: every tensor stored outside the graph names a relative ``location`` that
  resolves inside the bundle to a regular file listed in the manifest (no absolute path, no
  ``..``, no backslash or drive, no symlink on the way, not ONNX Runtime's in-memory address
  form); ``offset``/``length`` are plain decimal integers, ``length`` is the tensor's byte size,
  and ``offset + length`` lies inside the file; no key twice, no key ONNX does not define;
* **domains**: every node (subgraphs and model-local functions included) is in a domain the
  exporter emits (the ONNX standard domain, ``''`` / ``ai.onnx``) or calls a function the model
  defines, whose body follows the same rule; every ``opset_import`` names such a domain; any
  other domain is refused by name;
* **sizes**: every tensor in the file (initializers, Constant values, tensor attributes) has a
  known dtype, non-negative dims, and exactly the bytes (or typed values) its shape and dtype
  imply; sparse tensors, string tensors, segments and training sections are refused (the
  exporter writes none); a Split has as many outputs as its ``num_outputs`` (a mismatch aborts
  ONNX's shape inference, ONNX Runtime's included: a crash no error handling can catch);
* **signature**: the graph's inputs and outputs are the spec's ``GraphIO`` bindings, in order:
  names, dtypes, ranks, fixed dims, and a symbolic batch axis where the spec has ``batch``.

Every failure is a ``BundleError`` (exit 2) on one line naming the file, the tensor or node, and
what was expected.

The protobuf is parsed as ``onnx.load(path, load_external_data=False)`` parses it
(``onnx.ModelProto.ParseFromString``): nothing here lets onnx, or anything else, resolve an
external path. ``scan_graph`` works on the memory map ``open_bundle`` already hashed, so a graph
is read from disk once, and it parses a *skeleton* of it: the raw_data of the main graph's
initializers (nearly all of a graph's bytes) is emptied on the wire and its sizes kept, so no
tensor is copied (parsing a graph of hundreds of MB would cost as much again as hashing it); the
skeleton parses to the same model otherwise (``tests/test_graph_fuzz.py`` checks this on fuzzed
files). The cross-checks that need the manifest, the other files and the spec run in
``check_scans`` once every hash matched.
"""

from __future__ import annotations

import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from .errors import BundleError
from .spec import GraphIO, Spec

# what torch.onnx.export(dynamo=True, optimize=True) emits: the standard domain only (its
# torch_lib functions are inlined); '' and 'ai.onnx' are the same domain
ALLOWED_DOMAINS = frozenset({"", "ai.onnx"})
EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum"})
GRAPH_FILE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\.onnx")
# graph I/O dtypes the spec can declare, by ONNX elem_type
ONNX_IO_DTYPES = {1: "float32", 7: "int64", 10: "float16", 16: "bfloat16", 11: "float64", 6: "int32", 9: "bool"}
# TensorProto.DataType -> bits per element (sub-byte types are packed); STRING and the rest are refused
_BITS = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128,
         16: 16, 17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4, 24: 8, 25: 2, 26: 2}
# where a tensor without raw_data keeps its values, and how many values per element (or elements per value)
_TYPED = {1: ("float_data", 1), 14: ("float_data", 2), 11: ("double_data", 1), 15: ("double_data", 2),
          7: ("int64_data", 1), 12: ("uint64_data", 1), 13: ("uint64_data", 1),
          **{t: ("int32_data", 1) for t in (2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20, 24)},
          **{t: ("int32_data", 1 / 2) for t in (21, 22, 23)}, **{t: ("int32_data", 1 / 4) for t in (25, 26)}}
_TYPED_FIELDS = ("float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")
_EXTERNAL = 1          # TensorProto.DataLocation.EXTERNAL
_MAX_NAME = 80


def is_graph_file(rel: str) -> bool:
    """Whether ``rel`` (a manifest path) is one of the bundle's graphs: ``<name>.onnx`` at its root."""
    return "/" not in rel and GRAPH_FILE.fullmatch(rel) is not None


def _q(text: Any) -> str:
    """A name from the file, quoted on one line (control characters escaped) and bounded."""
    text = str(text)
    return repr(text if len(text) <= _MAX_NAME else text[:_MAX_NAME] + "…")


@dataclass
class ExternalRef:
    """One tensor stored outside its graph: where it says its bytes are, and how many it needs."""

    tensor: str
    location: str
    offset: int
    length: int | None
    nbytes: int


@dataclass
class ValueSig:
    name: str
    elem_type: int | None                   # None: not a tensor type
    dims: list[int | str | None] | None     # None: no shape; a dim is an int, a symbol, or None (unknown)


@dataclass
class GraphScan:
    """What ``check_scans`` needs of one graph once the file itself passed its checks."""

    file: str
    inputs: list[ValueSig] = field(default_factory=list)
    outputs: list[ValueSig] = field(default_factory=list)
    external: list[ExternalRef] = field(default_factory=list)


class _Fail(Exception):
    """A finding inside the scan; ``scan_graph`` turns it into one BundleError line."""


# -- the scan of one file ---------------------------------------------------------------
def scan_graph(root: Path, rel: str, data: Any) -> GraphScan:
    """Check one graph's protobuf (``data``: its bytes or a buffer over them); BundleError on a finding."""
    import onnx
    from google.protobuf.message import DecodeError

    where = f"bundle {root}: {rel}"
    model = onnx.ModelProto()
    scan = GraphScan(rel)
    # the error is raised after the except blocks: an exception's traceback would keep views of the
    # caller's memory map alive, and the map could not be closed
    failure = None
    try:
        skeleton, lengths = _skeleton(memoryview(data))
        model.ParseFromString(skeleton)
    except _Fail as exc:
        failure = f"{where} is not a readable ONNX model: it {exc}. Re-export the bundle"
    except (DecodeError, RuntimeError, ValueError) as exc:
        why = str(exc).splitlines()[0] if str(exc).strip() else "the protobuf does not parse"
        failure = (f"{where} is not a readable ONNX model ({why}); the file is truncated or corrupt. "
                   "Re-export the bundle")
    if failure is None:
        del skeleton
        try:
            _scan_model(model, scan, lengths)
        except _Fail as exc:
            failure = f"{where}: {exc}"
        except UnicodeDecodeError:
            failure = f"{where}: holds a name that is not valid UTF-8; the file is corrupt. Re-export the bundle"
    if failure is not None:
        raise BundleError(failure)
    return scan


def _scan_model(model: Any, scan: GraphScan, lengths: list[int | None]) -> None:
    if not model.HasField("graph"):
        raise _Fail("holds no graph; expected an ONNX model with a graph")
    if len(model.training_info):
        raise _Fail("has a training section (training_info); bundles hold inference graphs only")
    functions = {(f.domain, f.name, f.overload) for f in model.functions}
    local_domains = {d for d, _, _ in functions}
    scan.inputs = [_sig(v) for v in model.graph.input]
    scan.outputs = [_sig(v) for v in model.graph.output]
    if len(lengths) != len(model.graph.initializer):        # the skeleton is built to match: a bug if not
        raise _Fail("its initializers cannot be read consistently; the file is corrupt")
    _graph_tensors(model.graph, "", scan, lengths)
    # nodes before opset_import: a refused domain is reported with the node that uses it
    _scan_nodes(model.graph.node, "", functions, scan)
    for f in model.functions:
        _scan_nodes(f.node, f"function {_q(f.name)}", functions, scan)
        for op in f.opset_import:
            _check_import(op.domain, local_domains, f"function {_q(f.name)} opset_import")
    for op in model.opset_import:
        _check_import(op.domain, local_domains, "opset_import")


def _graph_tensors(graph: Any, where: str, scan: GraphScan, raw_lengths: list[int | None] | None = None) -> None:
    prefix = f"{where} " if where else ""
    for i, t in enumerate(graph.initializer):
        _tensor(t, lambda t=t: f"{prefix}initializer {_q(t.name)}", scan,
                raw_lengths[i] if raw_lengths is not None else -1)
    if len(graph.sparse_initializer):
        raise _Fail(f"{prefix}sparse initializer {_q(graph.sparse_initializer[0].values.name)}: bundles hold "
                    "dense tensors only")


def _scan_nodes(nodes: Any, where: str, functions: set, scan: GraphScan) -> None:
    """Every node, and the nodes of every subgraph (If/Loop/Scan bodies) at any depth (iteratively).
    Labels are formatted only for a finding (or an external tensor): graphs hold thousands of nodes."""
    stack = [(nodes, where)]
    while stack:
        nodes, where = stack.pop()
        for i, node in enumerate(nodes):
            def label(node: Any = node, i: int = i, where: str = where) -> str:
                op = f"{node.domain}:{node.op_type}" if node.domain else node.op_type
                text = f"node {_q(node.name) if node.name else '#' + str(i)} (op {_q(op)})"
                return f"{where} {text}" if where else text

            if node.domain and node.domain not in ALLOWED_DOMAINS and \
                    (node.domain, node.op_type, node.overload) not in functions:
                raise _Fail(f"{label()} is in the domain {_q(node.domain)}; bundles exported by dualrate use only "
                            "the ONNX standard domain ('' / ai.onnx), and the model defines no such function. "
                            "Refused: a custom domain runs code the runtime loads from elsewhere")
            if node.op_type == "Split" and node.domain in ALLOWED_DOMAINS:
                _check_split(node, label)
            for a in node.attribute:
                if a.HasField("t"):
                    _tensor(a.t, lambda a=a, label=label: f"{label()} attribute {_q(a.name)}", scan)
                for k, t in enumerate(a.tensors):
                    _tensor(t, lambda a=a, k=k, label=label: f"{label()} attribute {_q(a.name)}[{k}]", scan)
                if a.HasField("sparse_tensor") or len(a.sparse_tensors):
                    raise _Fail(f"{label()} attribute {_q(a.name)} holds a sparse tensor; bundles hold dense "
                                "tensors only")
                for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    sub_where = f"{label()} attribute {_q(a.name)} subgraph"
                    _graph_tensors(sub, sub_where, scan)
                    stack.append((sub.node, sub_where))


def _check_split(node: Any, label: Callable[[], str]) -> None:
    """Split's ``num_outputs`` equals its outputs: ONNX's shape inference (ONNX Runtime's too, 1.32)
    indexes past a vector when it is smaller and aborts the process; no error can be caught."""
    for a in node.attribute:
        if a.name == "num_outputs" and a.i != len(node.output):
            raise _Fail(f"{label()} declares num_outputs {a.i} and has {len(node.output)} outputs; expected the "
                        "same number (a mismatch crashes ONNX's shape inference)")


def _check_import(domain: str, local: set[str], where: str) -> None:
    if domain not in ALLOWED_DOMAINS and domain not in local:
        raise _Fail(f"{where} names the domain {_q(domain)}; bundles exported by dualrate use only the ONNX "
                    "standard domain ('' / ai.onnx)")


def _sig(v: Any) -> ValueSig:
    if v.type.WhichOneof("value") != "tensor_type":
        return ValueSig(v.name, None, None)
    tt = v.type.tensor_type
    dims = None
    if tt.HasField("shape"):
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param if d.HasField("dim_param") else None)
                for d in tt.shape.dim]
    return ValueSig(v.name, tt.elem_type, dims)


def _tensor(t: Any, label: Callable[[], str], scan: GraphScan, raw_length: int | None = -1) -> None:
    """A tensor's dtype, dims and bytes; an external one is recorded for ``check_scans``.

    ``raw_length``: the size of its raw_data read off the wire (None: no raw_data), or -1 to
    take it from the parsed message (which copies the bytes out: fine for small tensors)."""
    if t.data_type not in _BITS:
        name = {8: "STRING"}.get(t.data_type, f"data_type {t.data_type}")
        raise _Fail(f"{label()} has {name}; expected a numeric tensor type")
    if any(d < 0 for d in t.dims):
        raise _Fail(f"{label()} has dims {list(t.dims)[:8]}; expected non-negative sizes")
    numel = math.prod(t.dims)
    nbytes = (numel * _BITS[t.data_type] + 7) // 8
    if t.HasField("segment"):
        raise _Fail(f"{label()} is a segment of a tensor; bundles hold whole tensors")
    if t.data_location == _EXTERNAL:
        if t.HasField("raw_data") or any(len(getattr(t, f)) for f in _TYPED_FIELDS):
            raise _Fail(f"{label()} is marked external but also holds data in the file; expected one or the other")
        scan.external.append(_external(t, label(), nbytes))
        return
    if t.data_location != 0:
        raise _Fail(f"{label()} has data_location {t.data_location}; expected 0 (in the file) or 1 (external)")
    if len(t.external_data):
        raise _Fail(f"{label()} has external_data entries but is not marked external; expected neither or both")
    if t.HasField("raw_data"):
        if any(len(getattr(t, f)) for f in _TYPED_FIELDS):
            raise _Fail(f"{label()} holds raw_data and typed values; expected one of them")
        got = len(t.raw_data) if raw_length == -1 else raw_length
        if got is None:
            raise _Fail(f"{label()} cannot be read consistently; the file is corrupt")
        if got != nbytes:
            raise _Fail(f"{label()} holds {got} bytes; its shape and dtype ({_shape(t)}) need {nbytes}")
        return
    want_field, per = _TYPED[t.data_type]
    want = math.ceil(numel * per)
    for f in _TYPED_FIELDS:
        n = len(getattr(t, f))
        if f != want_field and n:
            raise _Fail(f"{label()} ({_shape(t)}) keeps values in {f}; expected {want_field}")
    got = len(getattr(t, want_field))
    if got != want:
        raise _Fail(f"{label()} holds {got} values; its shape and dtype ({_shape(t)}) need {want}")


def _skeleton(buf: memoryview) -> tuple[bytes, list[int | None]]:
    """The model's protobuf with every main-graph initializer's raw_data emptied, and the sizes they
    had: the structure is parsed from the skeleton, so no tensor's bytes are copied (parsing them
    costs as much as hashing them: seconds for a graph of hundreds of MB).

    It mirrors what the parser does with the original: every ``graph`` field of the model merges
    into one graph (initializers appended in order); an initializer is one length-delimited field;
    the last ``raw_data`` field of a tensor wins. An emptied raw_data stays present (``HasField``).
    Everything else is copied byte for byte, so the skeleton parses as the original would.
    """
    out = bytearray()
    lengths: list[int | None] = []
    for field_no, wire, tag_at, start, end in _wire_fields(buf, 0, len(buf)):
        if not (field_no == 7 and wire == 2):                # not ModelProto.graph: as it is
            out += buf[tag_at:end]
            continue
        graph = bytearray()
        for g_no, g_wire, g_tag_at, g_start, g_end in _wire_fields(buf, start, end):
            if not (g_no == 5 and g_wire == 2):              # not GraphProto.initializer
                graph += buf[g_tag_at:g_end]
                continue
            tensor = bytearray()
            raw = None
            for t_no, t_wire, t_tag_at, t_start, t_end in _wire_fields(buf, g_start, g_end):
                if t_no == 9 and t_wire == 2:                # TensorProto.raw_data
                    raw = t_end - t_start
                    tensor += b"\x4a\x00"                     # field 9, length 0
                else:
                    tensor += buf[t_tag_at:t_end]
            lengths.append(raw)
            graph += b"\x2a" + _encode_varint(len(tensor)) + tensor     # field 5
        out += b"\x3a" + _encode_varint(len(graph)) + graph             # field 7
    return bytes(out), lengths


def _encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _wire_fields(buf: memoryview, pos: int, end: int):
    """(field number, wire type, tag offset, start, end) of each field in ``buf[pos:end]``; start/end
    bound a length-delimited field's payload. Groups (wire types 3 and 4) do not occur in ONNX files."""
    while pos < end:
        tag_at = pos
        tag, pos = _varint(buf, pos, end)
        wire = tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
            start = pos
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            start, pos = pos, pos + length
        elif wire in (1, 5):
            start, pos = pos, pos + (8 if wire == 1 else 4)
        else:
            raise _Fail(f"uses protobuf wire type {wire}, which ONNX files do not; the file is corrupt")
        if pos > end:
            raise _Fail("has a protobuf field running past its end; the file is truncated or corrupt")
        yield tag >> 3, wire, tag_at, start, pos


def _varint(buf: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _Fail("has a malformed protobuf varint; the file is truncated or corrupt")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _shape(t: Any) -> str:
    dims = list(t.dims)
    return f"{_dtype_name(t.data_type)} {dims[:8]}{'…' if len(dims) > 8 else ''}"


def _dtype_name(data_type: int) -> str:
    import onnx

    try:
        return onnx.TensorProto.DataType.Name(data_type).lower()
    except ValueError:
        return f"data_type {data_type}"


def _external(t: Any, label: str, nbytes: int) -> ExternalRef:
    entries: dict[str, str] = {}
    for e in t.external_data:
        if not isinstance(e.key, str) or not isinstance(e.value, str):    # the parser gives bytes for bad UTF-8
            raise _Fail(f"{label} has an external_data entry {_q(e.key)}: {_q(e.value)} that is not valid UTF-8")
        if e.key not in EXTERNAL_KEYS:
            raise _Fail(f"{label} has the external_data key {_q(e.key)}; ONNX defines only "
                        f"{', '.join(sorted(EXTERNAL_KEYS))}")
        if e.key in entries:
            raise _Fail(f"{label} gives the external_data key {_q(e.key)} twice; expected each key once "
                        "(readers disagree on which one wins)")
        entries[e.key] = e.value
    if "location" not in entries:
        raise _Fail(f"{label} is external but gives no location; expected the name of a file of the bundle")
    numbers: dict[str, int | None] = {}
    for key in ("offset", "length"):
        value = entries.get(key)
        if value is None:
            numbers[key] = None
        elif not re.fullmatch(r"[0-9]{1,20}", value):
            raise _Fail(f"{label} has external_data {key} {_q(value)}; expected a non-negative decimal integer")
        else:
            numbers[key] = int(value)
    if numbers["length"] is not None and numbers["length"] != nbytes:
        raise _Fail(f"{label} has external_data length {numbers['length']}; its shape and dtype need {nbytes} bytes")
    return ExternalRef(label, entries["location"], numbers["offset"] or 0, numbers["length"], nbytes)


# -- cross-checks against the manifest, the files and the spec ---------------------------------
def check_scans(root: Path, spec: Spec, listed: Mapping[str, str], scans: Mapping[str, GraphScan]) -> None:
    """External data against the bundle's files, and each spec graph's I/O against its ``GraphIO``."""
    real_root = os.path.realpath(root)
    resolved: dict[str, tuple[str, int] | str] = {}       # location -> (file, size), or why it is refused
    for rel, scan in scans.items():
        for ref in scan.external:
            if ref.location not in resolved:
                resolved[ref.location] = _resolve(root, real_root, ref.location, listed)
            found = resolved[ref.location]
            if isinstance(found, str):
                raise BundleError(f"bundle {root}: {rel}: {ref.tensor} stores its data at {_q(ref.location)}, "
                                  f"{found}; external data must be a file of this bundle listed in manifest.json "
                                  f"(such as {rel}.data), named by a relative path. Refused: nothing reads outside "
                                  "the bundle")
            norm, size = found
            end = ref.offset + (ref.length if ref.length is not None else ref.nbytes)
            if end > size:
                raise BundleError(f"bundle {root}: {rel}: {ref.tensor} reads bytes {ref.offset}..{end} of {norm}, "
                                  f"which has {size}; expected offset + length inside the file. The bundle is "
                                  "truncated or was edited: re-export it")
    for graph, gio in spec.model.graphs().items():
        scan = scans.get(f"{graph}.onnx")
        if scan is not None:
            check_signature(f"bundle {root}: {graph}.onnx", scan, gio)


def _resolve(root: Path, real_root: str, loc: str, listed: Mapping[str, str]) -> tuple[str, int] | str:
    """(the manifest path, its size) of an external-data location, or why it is refused."""
    parts = loc.split("/")
    if not loc or "\\" in loc or "\x00" in loc or ":" in loc or loc.startswith("/") or loc.startswith("~"):
        return "which is not a relative path inside the bundle"
    if ".." in parts:
        return "which leads out of the bundle ('..')"
    norm = "/".join(p for p in parts if p not in ("", "."))
    if norm not in listed:
        return "which is not a file listed in the bundle's manifest"
    path = os.path.join(root, *norm.split("/"))
    real = os.path.realpath(path)
    if real != os.path.join(real_root, *norm.split("/")) or os.path.islink(path):
        return f"which passes through a symbolic link (to {_q(real)})"
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"which cannot be read ({exc})"
    if not stat.S_ISREG(st.st_mode):
        return "which is not a regular file"
    return norm, st.st_size


def check_signature(where: str, scan: GraphScan, gio: GraphIO) -> None:
    """The graph's inputs and outputs are the spec's, in order, with their dtypes, ranks and fixed dims."""
    for kind, got, declared in (("input", scan.inputs, gio.inputs), ("output", scan.outputs, gio.outputs)):
        names = [v.name for v in got]
        want = [t.name for t in declared]
        if names != want:
            missing = [n for n in want if n not in names]
            extra = [n for n in names if n not in want]
            detail = (f"lacks {kind}(s) {[_q(n)[1:-1] for n in missing[:6]]}" if missing else
                      f"has undeclared {kind}(s) {[_q(n)[1:-1] for n in extra[:6]]}" if extra else
                      f"has its {kind}s in the order {[_q(n)[1:-1] for n in names[:8]]}")
            raise BundleError(f"{where} {detail}; the spec binds {kind}s {want}. The graph does not match the "
                              "bundle's spec.json: re-export the bundle")
        for v, t in zip(got, declared):
            dtype = ONNX_IO_DTYPES.get(v.elem_type) if v.elem_type is not None else None
            if dtype != t.dtype:
                found = "not a tensor" if v.elem_type is None else (dtype or _dtype_name(v.elem_type))
                raise BundleError(f"{where}: {kind} {_q(v.name)} is {found}; the spec declares {t.dtype}. The graph "
                                  "does not match the bundle's spec.json: re-export the bundle")
            if v.dims is None or len(v.dims) != len(t.shape):
                rank = "no shape" if v.dims is None else f"rank {len(v.dims)}"
                raise BundleError(f"{where}: {kind} {_q(v.name)} has {rank}; the spec declares {list(t.shape)} "
                                  f"(rank {len(t.shape)}). The graph does not match the bundle's spec.json")
            for axis, (d, s) in enumerate(zip(v.dims, t.shape)):
                ok = ((isinstance(d, str) and d != "") or d is None) if s == "batch" else d == s
                if not ok:
                    shown = [x if x is not None else "?" for x in v.dims]
                    raise BundleError(f"{where}: {kind} {_q(v.name)} has shape {shown} (axis {axis}: "
                                      f"{_q(shown[axis])[1:-1] if isinstance(shown[axis], str) else shown[axis]}); "
                                      f"the spec declares {list(t.shape)}"
                                      + (" (a symbolic batch axis)" if s == "batch" else "")
                                      + ". The graph does not match the bundle's spec.json")
