"""Property-based fuzzing (hypothesis) of a bundle's ONNX graphs at the protobuf level.

Each case mutates a real exported graph of the shared tiny bundle (its encoder's weights moved
to ``encoder.onnx.data``, so external-data fields are there to mutate), re-hashes the manifest
(as an attacker who rewrites it would), and runs the result through what a user would run:
``open_bundle``, then compile for ONNX Runtime (every case that opens), OpenVINO and a golden
``validate`` on ONNX Runtime (a drawn share of them). Mutations, 1-3 per case, picked at random
places of the real protobuf:

* types: elem_type of graph inputs, outputs and value_info; an initializer's data_type;
* shapes: graph I/O dims (values, symbols, ranks), initializer dims;
* names: graph inputs/outputs renamed, node edges renamed, nodes deleted or duplicated;
* attributes: values (huge, negative, NaN/Inf, wrong-typed), types, deleted, unknown ones;
* domains: node domains and op types, opset_import domains and versions, local functions;
* external data: location (``..``, absolute, missing, not listed, a directory, ONNX Runtime's
  in-memory address form), offset and length (past the end, non-numeric, negative, huge),
  unknown and repeated keys, data_location flips, sparse and training sections;
* truncations and byte flips of the graph file and of the external data file.

The property: no traceback. ``open_bundle`` returns a bundle or raises ``BundleError`` (exit 2);
compile returns or raises ``BadInputError`` (exit 2: the runtimes are installed and run here, so
exit 3 would be a lie); validate's verdict is PASSED (0) or FAILED (1) or it raises exit 2. Every
error message is one line. Mutations that certainly make a bundle hostile or inconsistent
(external data out of the bundle or past a file's end, a foreign domain, a renamed or re-typed
graph input/output, wrong tensor sizes) must be refused by ``open_bundle`` itself, before any
runtime sees the file. ``open_bundle`` parses a skeleton of each graph (its initializers' bytes
left out); every case also checks that the skeleton reads as the original file does.
``test_graph_fuzz_cli`` runs a handful of such bundles through the real CLI in a subprocess
(exit codes and stderr).

Hypothesis profiles (``HYPOTHESIS_PROFILE``, as in ``tests/test_fuzz_loaders.py``):

* ``ci`` (unset or empty): 1,000 cases, deterministic (``derandomize=True``), no example database,
  ``print_blob=True``; about 2 minutes on 2 cores. OpenVINO compile and validate run on a drawn
  share of the cases that open (OpenVINO's converter and CPU plugin take about a second per graph);
* ``long``: 20x the cases, randomized, so every long run explores new inputs.

``GRAPH_FUZZ_CASES=N`` overrides the number of cases (a quick local run, or a longer one);
``GRAPH_FUZZ_DUMP=DIR`` copies each case's bundle to DIR before it runs, so a case that crashes a
runtime (and the process with it) can be looked at afterwards.

Each test prints how many cases it ran and how far they got, and asserts its whole budget ran.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import onnx
import onnxruntime
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from dualrate.exporter.bundle import open_bundle
from dualrate.exporter.errors import BackendUnavailableError, BundleError, DualrateError
from dualrate.targets.base import get_target
from tests import hostile_bundle as hb
from tests.conftest import run_cli

pytestmark = pytest.mark.slow
# ONNX Runtime logs on stderr about what it is fed (opset 0, failing nodes): expected here
onnxruntime.set_default_logger_severity(4)

if not os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY"):
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "dualrate-hypothesis")
PROFILE = os.environ.get("HYPOTHESIS_PROFILE") or "ci"
LONG = PROFILE == "long"
CASES = int(os.environ.get("GRAPH_FUZZ_CASES") or (20_000 if LONG else 1_000))
CI_MINIMUM = 1_000
# shares of the cases that open which also go through OpenVINO compile (1-3 s per graph: its
# converter and CPU plugin) and, once ONNX Runtime compiled them, a golden validate (about 0.5 s)
OPENVINO_SHARE = 0.05 if LONG else 0.015
VALIDATE_SHARE = 0.3
FUZZ_SETTINGS = settings(max_examples=CASES, derandomize=not LONG, deadline=None, database=None, print_blob=True,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                HealthCheck.filter_too_much, HealthCheck.large_base_example,
                                                HealthCheck.function_scoped_fixture])
GRAPHS = ("encoder", "denoiser")
DUMP = Path(os.environ["GRAPH_FUZZ_DUMP"]) if os.environ.get("GRAPH_FUZZ_DUMP") else None
STATS: Counter[str] = Counter()
SECONDS: Counter[str] = Counter()


# --------------------------------------------------------------------------------------
# the base bundle: the shared tiny bundle, the encoder's weights as external data
# --------------------------------------------------------------------------------------
def write(path: Path, data: bytes) -> None:
    """Replace a file's bytes (a fresh file renamed over it: cheaper than truncating one in place)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Workspace:
    """One bundle directory reused by every case (fresh directories per case cost more than the case):
    ``reset`` puts back the files a case may change and removes what it may add."""

    MUTABLE = ("encoder.onnx", "denoiser.onnx", "encoder.onnx.data", "manifest.json")

    def __init__(self, base: Path, work: Path):
        self.root = hb.clone(base, work / "bundle")
        self.pristine = {rel: (base / rel).read_bytes() for rel in self.MUTABLE}
        self.protos = {g: self.pristine[f"{g}.onnx"] for g in GRAPHS}
        self.data_size = len(self.pristine["encoder.onnx.data"])
        self.secret = work / "secret.bin"          # what ../secret.bin would leak: the real weights
        self.secret.write_bytes(self.pristine["encoder.onnx.data"])
        self.entries = set(os.listdir(self.root))

    def reset(self) -> None:
        for rel, data in self.pristine.items():
            path = self.root / rel
            if path.read_bytes() != data:        # reading is far cheaper than truncating a file
                write(path, data)
        for name in set(os.listdir(self.root)) - self.entries:     # link.bin, targets/, caches
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


@pytest.fixture(scope="module")
def base(tiny_bundle, tmp_path_factory):
    """The shared tiny bundle with the encoder's weights in encoder.onnx.data, in a reusable workspace."""
    work = tmp_path_factory.mktemp("graph-fuzz")
    root = hb.clone(tiny_bundle.path, work / "base")
    hb.externalize(root, graphs=("encoder",))
    open_bundle(root)                                   # the unmutated base opens
    return Workspace(root, work)


# --------------------------------------------------------------------------------------
# mutations: each edits the parsed model (or the files) and says whether the result is
# certainly refused at open (True), or may be anything (None)
# --------------------------------------------------------------------------------------
ELEM_TYPES = st.one_of(st.sampled_from([0, 1, 6, 7, 8, 9, 10, 11, 16]), st.integers(0, 40), st.integers(-5, 10**6))
NAMES = st.one_of(st.sampled_from(["", "x", "z", "feat0", "prediction", "a\nb", "é", "../x", "x" * 300]),
                  st.text(max_size=12))
BIG_INTS = st.one_of(st.integers(-3, 70), st.sampled_from([-1, 0, 1, 2**31, 2**31 - 1, 2**62, -(2**63), 2**63 - 1]),
                     st.integers(-(2**63), 2**63 - 1))
DOMAINS = st.one_of(st.sampled_from(["", "ai.onnx", "com.evil", "com.microsoft", "ai.onnx.ml", "com.evil:Pwn",
                                     "pkg.onnxscript.torch_lib", "ai.onnx.preview.training", " ", "AI.ONNX"]),
                    st.text(max_size=10))
LOCATIONS = st.one_of(st.sampled_from([
    "../secret.bin", "../../etc/passwd", "/etc/passwd", "{abs}", "sub/../encoder.onnx.data", "./encoder.onnx.data",
    "encoder.onnx.data", "denoiser.onnx", "spec.json", "golden", "golden/", "nonexistent.bin", "",
    "*/_ORT_MEM_ADDR_/*", "C:\\secret.bin", "..\\secret.bin", "encoder.onnx.data\x00.txt", "~/secret.bin",
    "link.bin"]), st.text(max_size=16))
NUMBERS = st.one_of(st.integers(-10, 10**7).map(str), st.sampled_from(["", "-0", "+4", "0x10", "1e3", " 4", "١٢",
                                                                         str(2**64), str(10**30), "nan"]))
SAFE_LOCATIONS = {"encoder.onnx.data", "./encoder.onnx.data"}


def _itemsize(data_type: int) -> int | None:
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, TypeError, ValueError):
        return None


def _values(model: onnx.ModelProto, kind: str) -> Any:
    return {"input": model.graph.input, "output": model.graph.output, "value_info": model.graph.value_info}[kind]


def m_elem_type(data, model, ctx) -> bool | None:
    kind = data.draw(st.sampled_from(["input", "output", "value_info"]), label="values")
    values = _values(model, kind)
    if not len(values):
        return None
    v = values[data.draw(st.integers(0, len(values) - 1), label="index")]
    old = v.type.tensor_type.elem_type
    new = data.draw(ELEM_TYPES, label="elem_type")
    if not -(2**31) <= new < 2**31:
        return None
    v.type.tensor_type.elem_type = new
    return True if kind != "value_info" and new != old else None


def m_io_shape(data, model, ctx) -> bool | None:
    kind = data.draw(st.sampled_from(["input", "output"]), label="io")
    values = _values(model, kind)
    if not len(values):
        return None
    v = values[data.draw(st.integers(0, len(values) - 1), label="index")]
    dims = v.type.tensor_type.shape.dim
    op = data.draw(st.sampled_from(["value", "param", "clear", "add", "remove", "no_shape"]), label="op")
    if op == "no_shape":
        v.type.tensor_type.ClearField("shape")
        return True
    if op == "add":
        dims.add().dim_value = data.draw(st.integers(1, 64))
        return True
    if not len(dims):
        return None
    i = data.draw(st.integers(0, len(dims) - 1), label="axis")
    old = dims[i]
    fixed = old.HasField("dim_value")
    if op == "remove":
        del dims[i]
        return True
    if op == "clear":
        dims[i].Clear()
        return True if fixed else None
    if op == "value":
        value = data.draw(st.integers(0, 2**40))
        if fixed and value == old.dim_value:
            return None
        dims[i].dim_value = value
        return True
    dims[i].dim_param = data.draw(st.sampled_from(["batch", "N", "", "b\n"]), label="param")
    return True if fixed else None


def m_io_name(data, model, ctx) -> bool | None:
    kind = data.draw(st.sampled_from(["input", "output"]), label="io")
    values = _values(model, kind)
    if not len(values):
        return None
    v = values[data.draw(st.integers(0, len(values) - 1), label="index")]
    new = data.draw(NAMES, label="name")
    if new == v.name:
        return None
    old, v.name = v.name, new
    for node in model.graph.node:       # keep the graph wired: the edge is renamed everywhere
        for edges in (node.input, node.output):
            for k, e in enumerate(edges):
                if e == old:
                    edges[k] = new
    return True


def m_attribute(data, model, ctx) -> bool | None:
    nodes = [n for n in model.graph.node if len(n.attribute)]
    if not nodes:
        return None
    node = nodes[data.draw(st.integers(0, len(nodes) - 1), label="node")]
    a = node.attribute[data.draw(st.integers(0, len(node.attribute) - 1), label="attr")]
    op = data.draw(st.sampled_from(["i", "f", "ints", "floats", "s", "type", "delete", "add", "t"]), label="op")
    if op == "i":
        a.i = data.draw(BIG_INTS)
    elif op == "f":
        a.f = data.draw(st.floats(allow_nan=True, allow_infinity=True, width=32))
    elif op == "ints":
        values = data.draw(st.lists(BIG_INTS, max_size=6))
        del a.ints[:]
        a.ints.extend(values)
    elif op == "floats":
        del a.floats[:]
        a.floats.extend(data.draw(st.lists(st.floats(width=32), max_size=4)))
    elif op == "s":
        a.s = data.draw(st.binary(max_size=8))
    elif op == "type":
        a.type = data.draw(st.integers(0, 14))
    elif op == "delete":
        node.attribute.remove(a)
    elif op == "add":
        new = node.attribute.add()
        new.name = data.draw(NAMES)
        new.type = onnx.AttributeProto.INT
        new.i = data.draw(BIG_INTS)
    else:
        # a tensor attribute: sizes that do not match (refused), or a well-formed one
        t = a.t
        t.Clear()
        t.data_type = onnx.TensorProto.FLOAT
        t.dims.extend(data.draw(st.lists(st.integers(0, 4), max_size=3)))
        n = 1
        for d in t.dims:
            n *= d
        extra = data.draw(st.sampled_from([0, 0, 1, -1]))
        t.raw_data = b"\x00" * max(0, 4 * n + extra)
        a.type = onnx.AttributeProto.TENSOR
        return True if 4 * n + extra != 4 * n and 4 * n + extra >= 0 else None
    return None


def m_domain(data, model, ctx) -> bool | None:
    if not len(model.graph.node):
        return None
    node = model.graph.node[data.draw(st.integers(0, len(model.graph.node) - 1), label="node")]
    domain = data.draw(DOMAINS, label="domain")
    node.domain = domain
    if data.draw(st.booleans(), label="op_type"):
        node.op_type = data.draw(st.sampled_from(["Pwn", "Add", "MatMul", "Gemm", "FusedMatMul", "", "Loop"]))
    if data.draw(st.booleans(), label="import"):
        model.opset_import.add(domain=domain, version=data.draw(st.integers(-1, 30)))
    return True if domain not in ("", "ai.onnx") else None


def m_opset(data, model, ctx) -> bool | None:
    op = data.draw(st.sampled_from(["version", "domain", "add", "clear"]), label="op")
    if op == "clear":
        del model.opset_import[:]
        return None
    if op == "add":
        domain = data.draw(DOMAINS)
        model.opset_import.add(domain=domain, version=data.draw(st.integers(-1, 30)))
        return True if domain not in ("", "ai.onnx") else None
    if not len(model.opset_import):
        return None
    imp = model.opset_import[0]
    if op == "version":
        imp.version = data.draw(st.one_of(st.integers(-2, 30), st.sampled_from([2**31, 2**62])))
        return None
    imp.domain = data.draw(DOMAINS)
    return True if imp.domain not in ("", "ai.onnx") else None


def m_function(data, model, ctx) -> bool | None:
    """A model-local function: called in a foreign domain it is the model's own code (allowed when its
    body is standard); a body node in a foreign domain is refused."""
    if not len(model.graph.node):
        return None
    node = model.graph.node[data.draw(st.integers(0, len(model.graph.node) - 1), label="node")]
    f = model.functions.add()
    f.domain, f.name = "com.local", "Wrapped"
    f.input.extend([f"i{k}" for k in range(len(node.input))])
    f.output.extend([f"o{k}" for k in range(len(node.output))])
    body = f.node.add()
    body.CopyFrom(node)
    del body.input[:], body.output[:]
    body.input.extend(f.input)
    body.output.extend(f.output)
    evil = data.draw(st.booleans(), label="evil body")
    if evil:
        body.domain = "com.evil"
    f.opset_import.add(domain="", version=18)
    node.domain, node.op_type = "com.local", "Wrapped"
    del node.attribute[:]
    model.opset_import.add(domain="com.local", version=1)
    return True if evil else None


def _external_tensor(model: onnx.ModelProto, data) -> onnx.TensorProto | None:
    ext = hb.external_initializers(model)
    if not ext:
        return None
    return ext[data.draw(st.integers(0, len(ext) - 1), label="tensor")]


def m_external(data, model, ctx) -> bool | None:
    t = _external_tensor(model, data)
    if t is None:             # the denoiser keeps its weights inline: make one external
        inits = [x for x in model.graph.initializer if x.HasField("raw_data") and len(x.dims)]
        if not inits:
            return None
        t = inits[data.draw(st.integers(0, len(inits) - 1), label="tensor")]
        t.ClearField("raw_data")
        t.data_location = onnx.TensorProto.EXTERNAL
        hb.set_external(t, location="encoder.onnx.data", offset="0")
    entries = {e.key: e.value for e in t.external_data}
    op = data.draw(st.sampled_from(["location", "offset", "length", "unknown", "repeat", "drop", "inline",
                                    "both"]), label="op")
    size = ctx["data_size"]
    if op == "location":
        loc = data.draw(LOCATIONS, label="location").replace("{abs}", str(ctx["secret"]))
        if loc == "link.bin":
            ctx["make_link"] = True
        hb.set_external(t, location=loc)
        if loc not in SAFE_LOCATIONS:
            return True if loc != "spec.json" and loc != "denoiser.onnx" else None
        return None
    if op in ("offset", "length"):
        value = data.draw(NUMBERS, label=op)
        hb.set_external(t, **{op: value})
        entries[op] = value
        if not value.isascii() or not value.isdigit():
            return True
        off, length = int(entries.get("offset", "0") or 0), entries.get("length")
        nbytes = _itemsize(t.data_type)
        if nbytes is None or entries.get("location") not in SAFE_LOCATIONS:
            return None
        for d in t.dims:
            nbytes *= d
        if length is not None and length.isdigit() and int(length) != nbytes:
            return True
        return True if off + nbytes > size else None
    if op == "unknown":
        e = t.external_data.add()
        e.key, e.value = data.draw(st.sampled_from(["basepath", "checksum", "Location", "", "x"])), "1"
        return True if e.key != "checksum" else None
    if op == "repeat":
        e = t.external_data.add()
        e.key, e.value = "location", data.draw(st.sampled_from(["encoder.onnx.data", "../secret.bin"]))
        return True
    if op == "drop":
        key = data.draw(st.sampled_from(["location", "offset", "length"]))
        kept = [(e.key, e.value) for e in t.external_data if e.key != key]
        del t.external_data[:]
        for k, v in kept:
            x = t.external_data.add()
            x.key, x.value = k, v
        return True if key == "location" else None
    if op == "inline":            # marked inline, with external entries and no bytes
        t.data_location = onnx.TensorProto.DEFAULT
        return True
    t.raw_data = b"\x00" * 4      # external and inline at once
    return True


def m_initializer(data, model, ctx) -> bool | None:
    inits = [x for x in model.graph.initializer if x.data_location == onnx.TensorProto.DEFAULT]
    if not inits:
        return None
    t = inits[data.draw(st.integers(0, len(inits) - 1), label="tensor")]
    op = data.draw(st.sampled_from(["dims", "data_type", "truncate", "typed", "reshape", "string"]), label="op")
    numel = 1
    for d in t.dims:
        numel *= d
    if op == "dims":
        new = data.draw(st.lists(st.integers(-2, 2**40), max_size=4))
        del t.dims[:]
        t.dims.extend(new)
        n = 1
        for d in new:
            n *= d
        return True if n != numel or any(d < 0 for d in new) else None
    if op == "reshape":          # same element count: sizes match, the runtime decides
        del t.dims[:]
        t.dims.append(numel)
        return None
    if op == "data_type":
        new = data.draw(ELEM_TYPES)
        if not -(2**31) <= new < 2**31:
            return None
        old_size = _itemsize(t.data_type)
        t.data_type = new
        same = old_size is not None and _itemsize(new) == old_size and new != onnx.TensorProto.STRING
        return None if same else True
    if op == "truncate":
        raw = t.raw_data
        if not raw:
            return None
        t.raw_data = raw[: data.draw(st.integers(0, len(raw) - 1))]
        return True
    if op == "string":
        t.data_type = onnx.TensorProto.STRING
        return True
    # typed values instead of raw bytes: the right count is fine, any other is refused
    raw = t.raw_data
    t.ClearField("raw_data")
    field, count = ("float_data", len(raw) // 4) if t.data_type == 1 else ("int64_data", len(raw) // 8)
    n = count + data.draw(st.sampled_from([0, 0, 1, -1]))
    getattr(t, field).extend([0] * max(n, 0))
    return True if max(n, 0) != count else None


def m_node(data, model, ctx) -> bool | None:
    nodes = model.graph.node
    if not len(nodes):
        return None
    i = data.draw(st.integers(0, len(nodes) - 1), label="node")
    op = data.draw(st.sampled_from(["delete", "duplicate", "rename_input", "swap", "op_type", "subgraph"]), label="op")
    if op == "delete":
        del nodes[i]
    elif op == "duplicate":
        nodes.add().CopyFrom(nodes[i])
    elif op == "rename_input" and len(nodes[i].input):
        nodes[i].input[data.draw(st.integers(0, len(nodes[i].input) - 1))] = data.draw(NAMES)
    elif op == "swap" and len(nodes[i].input) > 1:
        a, b = nodes[i].input[0], nodes[i].input[1]
        nodes[i].input[0], nodes[i].input[1] = b, a
    elif op == "op_type":
        nodes[i].op_type = data.draw(st.sampled_from(["Add", "Relu", "NotAnOp", "If", "Loop", "", "Identity"]))
    elif op == "subgraph":
        # an If whose branch holds a foreign-domain node: refused however deep it sits
        branch = onnx.helper.make_graph([onnx.helper.make_node("Pwn", [], ["y"], domain="com.evil")], "b", [],
                                        [onnx.helper.make_tensor_value_info("y", 1, None)])
        nodes[i].attribute.add().CopyFrom(onnx.helper.make_attribute("then_branch", branch))
        return True
    return None


def m_sections(data, model, ctx) -> bool | None:
    op = data.draw(st.sampled_from(["sparse", "training", "no_graph", "segment"]), label="op")
    if op == "sparse":
        sp = model.graph.sparse_initializer.add()
        sp.values.CopyFrom(onnx.helper.make_tensor("sp", 1, [1], [1.0]))
        sp.indices.CopyFrom(onnx.helper.make_tensor("spi", 7, [1], [0]))
        sp.dims.append(4)
    elif op == "training":
        model.training_info.add()
    elif op == "no_graph":
        model.ClearField("graph")
    elif len(model.graph.initializer):
        model.graph.initializer[0].segment.begin = 0
    else:
        return None
    return True


MUTATIONS: dict[str, tuple[Callable, int]] = {
    "elem_type": (m_elem_type, 2), "io_shape": (m_io_shape, 2), "io_name": (m_io_name, 1),
    "attribute": (m_attribute, 4), "domain": (m_domain, 2), "opset": (m_opset, 1), "function": (m_function, 1),
    "external": (m_external, 4), "initializer": (m_initializer, 3), "node": (m_node, 2), "sections": (m_sections, 1),
}
FILE_MUTATIONS = ("truncate_graph", "flip_bytes", "truncate_data", "append_data")
KINDS = [k for k, (_, w) in MUTATIONS.items() for _ in range(w)] + list(FILE_MUTATIONS)


# --------------------------------------------------------------------------------------
# the pipeline and its property
# --------------------------------------------------------------------------------------
def check_error(exc: BaseException, stage: str, allowed: tuple[int, ...]) -> None:
    if not isinstance(exc, DualrateError):
        raise AssertionError(f"{stage}: {type(exc).__name__} escaped (a traceback for the user): {exc!r}") from exc
    msg = str(exc)
    assert exc.exit_code in allowed, f"{stage}: exit {exc.exit_code} ({type(exc).__name__}): {msg}"
    assert msg.strip() and "\n" not in msg and "\r" not in msg, f"{stage}: not one line: {msg!r}"
    assert "Traceback" not in msg, msg


def run_pipeline(root: Path, openvino: bool, validate: bool) -> list[str]:
    """open -> compile for ONNX Runtime -> maybe compile for OpenVINO -> maybe a golden validate on
    ONNX Runtime (when it compiled); returns what happened at each stage that ran."""
    start = time.perf_counter()
    try:
        bundle = open_bundle(root)
    except Exception as exc:    # noqa: BLE001 - the property judges it
        check_error(exc, "open_bundle", (2,))
        assert isinstance(exc, BundleError), type(exc)
        return ["refused at open"]
    finally:
        SECONDS["open"] += time.perf_counter() - start
    stages = []
    for target, wanted in (("onnxruntime", True), ("openvino", openvino)):
        if not wanted:
            continue
        start = time.perf_counter()
        try:
            get_target(target).compile(bundle, "fp32")
            stages.append(f"{target} compiled")
        except Exception as exc:    # noqa: BLE001
            # the runtimes are installed and run here: exit 3 would say otherwise
            check_error(exc, f"compile {target}", (2,))
            assert not isinstance(exc, BackendUnavailableError)
            stages.append(f"{target} refused")
        SECONDS[target] += time.perf_counter() - start
    if validate and "onnxruntime compiled" in stages:
        from dualrate.validation.validate import ValidateOptions
        from dualrate.validation.validate import validate as run_validate

        start = time.perf_counter()
        try:
            doc, _ = run_validate(root, ValidateOptions(target="onnxruntime", reference="golden"))
        except Exception as exc:    # noqa: BLE001
            check_error(exc, "validate", (1, 2))
            stages.append(f"validate refused (exit {exc.exit_code})")
        else:
            assert doc["exit_code"] in (0, 1), (doc["verdict"], doc.get("not_run_reason"))
            stages.append(f"validate {doc['verdict']}")
        SECONDS["validate"] += time.perf_counter() - start
    return stages


def check_skeleton(raw: bytes) -> None:
    """``open_bundle`` parses a graph's structure from a skeleton (raw_data of initializers emptied, their
    sizes read off the wire): where the skeleton reads, the original must parse to the same model."""
    from google.protobuf.message import DecodeError

    from dualrate.exporter.graph_checks import _Fail, _skeleton

    try:
        skeleton, lengths = _skeleton(memoryview(raw))
        got = onnx.ModelProto.FromString(skeleton)
    except (_Fail, DecodeError):
        return                      # refused: stricter than the parser is fine
    try:
        want = onnx.ModelProto.FromString(raw)
    except DecodeError as exc:
        raise AssertionError(f"the skeleton parsed, the original does not ({exc})") from None
    assert lengths == [len(t.raw_data) if t.HasField("raw_data") else None for t in want.graph.initializer]
    for t in want.graph.initializer:
        if t.HasField("raw_data"):
            t.raw_data = b""
    assert got == want, "the skeleton parses to another model than the original"


def make_case(ws: Workspace, data) -> tuple[Path, bool, list[str], int]:
    """A mutated, re-hashed copy of the base bundle: (path, certainly refused at open?, what was done,
    a number fixed by the case that picks the cases going further than ONNX Runtime)."""
    ws.reset()
    root, protos = ws.root, ws.protos
    ctx: dict[str, Any] = {"data_size": ws.data_size, "secret": ws.secret}
    graph = data.draw(st.sampled_from(GRAPHS), label="graph")
    model = onnx.ModelProto.FromString(protos[graph])
    kinds = data.draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3), label="mutations")
    verdicts = [MUTATIONS[k][0](data, model, ctx) for k in kinds if k in MUTATIONS]
    raw = model.SerializeToString()
    corrupted = False
    if "truncate_graph" in kinds:
        raw = raw[: data.draw(st.integers(0, max(0, len(raw) - 1)), label="cut")]
        corrupted = True
    if "flip_bytes" in kinds and raw:
        buf = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 8), label="flips")):
            buf[data.draw(st.integers(0, len(buf) - 1))] ^= data.draw(st.integers(1, 255))
        raw = bytes(buf)
        corrupted = True
    write(root / f"{graph}.onnx", raw)
    check_skeleton(raw)
    # one protobuf edit and no corruption: its verdict holds (two edits may undo each other,
    # a cut or a flipped byte may drop the edited part)
    certain = len(verdicts) == 1 and verdicts[0] is True and not corrupted
    if "truncate_data" in kinds:
        path = root / "encoder.onnx.data"
        keep = data.draw(st.integers(0, ctx["data_size"] - 1), label="data cut")
        write(path, path.read_bytes()[:keep])
        certain = certain or graph == "denoiser"      # the encoder's own tensors reach past the cut
    if "append_data" in kinds:
        with open(root / "encoder.onnx.data", "ab") as fh:
            fh.write(b"\x00" * data.draw(st.integers(1, 64)))
    if ctx.get("make_link"):
        (root / "link.bin").symlink_to(ws.secret)
    hb.rehash(root)
    note(f"{graph}: {kinds}, certainly refused at open: {certain}")
    return root, certain, kinds, zlib.crc32(raw + repr(kinds).encode()) % 1000


def test_graph_fuzz(base):
    """open -> compile -> validate on mutated graphs: no traceback, exit codes that mean what they say."""
    STATS.clear()
    SECONDS.clear()
    start = time.perf_counter()
    seen = Counter()

    @FUZZ_SETTINGS
    @given(st.data())
    def fuzz(data):
        start = time.perf_counter()
        root, certain, kinds, pick = make_case(base, data)
        SECONDS["make case"] += time.perf_counter() - start
        if DUMP:         # a case that crashes a runtime takes the process with it: keep the last one
            shutil.rmtree(DUMP, ignore_errors=True)
            shutil.copytree(root, DUMP, symlinks=True)
            (DUMP / "mutations.txt").write_text(f"{kinds}\n")
        stages = run_pipeline(root, openvino=pick < OPENVINO_SHARE * 1000,
                              validate=pick >= 1000 - VALIDATE_SHARE * 1000)
        if certain:
            assert stages == ["refused at open"], f"{kinds}: a certainly refused graph got to {stages}"
        STATS["cases"] += 1
        STATS.update(stages)
        seen.update(kinds)

    fuzz()
    total = STATS["cases"]
    elapsed = time.perf_counter() - start
    print(f"\n[graph fuzz] {total} cases in {elapsed:.1f} s (profile {PROFILE}): {dict(STATS.most_common())}")
    print(f"[graph fuzz] mutations: {dict(seen.most_common())}")
    print(f"[graph fuzz] seconds by stage: { {k: round(v, 1) for k, v in SECONDS.most_common()} }")
    assert total >= CASES, f"ran {total} cases, fewer than the budget {CASES}"
    if total >= CI_MINIMUM:     # a budget this size reaches every stage (a quick override may not)
        for outcome in ("refused at open", "onnxruntime compiled", "onnxruntime refused", "openvino compiled",
                        "validate PASSED"):
            assert STATS[outcome], f"no case reached '{outcome}': the generator lost its reach"


def test_graph_fuzz_budget():
    """The CI profile runs at least 1,000 graph cases (the long one 20x as many)."""
    if not os.environ.get("GRAPH_FUZZ_CASES"):
        assert CASES >= CI_MINIMUM


CLI_VERBS = {
    "validate": (["validate", "{b}", "--target", "onnxruntime", "--reference", "golden"], (0, 1, 2)),
    "compile": (["compile", "{b}", "--target", "onnxruntime"], (0, 2)),
    "sample": (["sample", "{b}", "-n", "1", "-o", "{out}", "--force"], (0, 2)),
}


def test_graph_fuzz_cli(base, tmp_path):
    """A handful of mutated bundles through the real command in a subprocess: exit 0, 1 (validate's
    FAILED) or 2 with exactly one error line, never a traceback, never 3 (the runtime runs here)."""
    seen: list[tuple[str, int]] = []

    @settings(FUZZ_SETTINGS, max_examples=4 if not LONG else 40)
    @given(st.data())
    def fuzz(data):
        root, certain, kinds, _ = make_case(base, data)
        verb = data.draw(st.sampled_from(sorted(CLI_VERBS)), label="verb")
        argv, allowed = CLI_VERBS[verb]
        res = run_cli(*[a.format(b=root, out=tmp_path / "grid.png") for a in argv])
        note(f"{verb}: exit {res.returncode}\n{res.stderr}")
        assert "Traceback" not in res.stderr and "Traceback" not in res.stdout
        assert res.returncode in allowed, (verb, kinds, res.returncode, res.stderr)
        if res.returncode == 2:
            lines = [ln for ln in res.stderr.splitlines() if ln.startswith("dualrate ")]   # after progress lines
            assert len(lines) == 1 and lines[0].startswith(f"dualrate {verb}: error: "), res.stderr
        if certain:
            assert res.returncode == 2 and "bundle " in res.stderr, (kinds, res.stderr)
        seen.append((verb, res.returncode))

    fuzz()
    print(f"\n[graph fuzz cli] {seen}")
