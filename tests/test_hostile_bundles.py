"""Hostile and malformed bundles, refused at the door (issue 15).

Every case edits a graph of a real exported bundle and re-hashes its manifest (what someone who
can rewrite the manifest does; the hashes then prove nothing), then runs every verb the user
has: ``sample``, ``validate`` and ``compile`` on ONNX Runtime, OpenVINO and Core ML, ``bench``.
Each must exit 2 with one line naming the file, the tensor or node and what was expected, and
nothing may run or be written (no output file, no compile cache, the planted secret unread by
any runtime: the refusal comes from ``open_bundle``, before a runtime sees a file).

The cases: an initializer's external data at ``../secret.bin`` (the secret holding exactly the
bytes the tensor needs, so a runtime would happily load it), at an absolute path, through a
symlink out of the bundle (a linked file, a linked directory), past the end of its file; a
denoiser node moved to the custom domain ``com.evil:Pwn``; the denoiser's output renamed and
re-typed; an initializer with fewer bytes than its shape; a Split whose ``num_outputs`` disagrees
with its outputs (found by the graph fuzzer: it aborts ONNX Runtime); and, past the checks, graphs
that the runtimes themselves refuse (mapped to exit 2 naming the graph and the runtime, never a
traceback, never exit 1 or 3).

The verbs run in-process through ``dualrate.cli.main`` (the same code as the command, without
an interpreter start per case); ``test_real_cli`` runs the two cases of the issue through the
real command in a subprocess.
"""

from __future__ import annotations

import os

import onnx
import pytest

from dualrate.cli import main
from dualrate.exporter.bundle import open_bundle
from tests import hostile_bundle as hb
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ext_bundle(tiny_bundle, tmp_path_factory):
    """The shared tiny bundle with every initializer over 1 KiB in <graph>.onnx.data (as a large model exports)."""
    root = hb.clone(tiny_bundle.path, tmp_path_factory.mktemp("hostile") / "base")
    hb.externalize(root)
    open_bundle(root)               # the clean one opens
    return root


def _secret_for(root, graph="encoder"):
    """(model, first external tensor, the exact bytes it reads): what a leak would look like."""
    model = hb.load(root, graph)
    t = hb.external_initializers(model)[0]
    entries = {e.key: e.value for e in t.external_data}
    off, length = int(entries.get("offset", 0)), int(entries["length"])
    data = (root / entries["location"]).read_bytes()[off:off + length]
    return model, t, data


def make_case(case: str, base, tmp_path):
    """A hostile copy of ``base`` under ``tmp_path``; returns (bundle, needles the one error line must hold)."""
    root = hb.clone(base, tmp_path / "bundle")
    if case == "parent":
        model, t, data = _secret_for(root)
        (tmp_path / "secret.bin").write_bytes(data)
        hb.set_external(t, location="../secret.bin", offset="0")
        hb.save(root, "encoder", model)
        return root, ["encoder.onnx", repr(t.name), "'../secret.bin'", "leads out of the bundle"]
    if case == "absolute":
        model, t, data = _secret_for(root)
        secret = tmp_path / "secret.bin"
        secret.write_bytes(data)
        hb.set_external(t, location=str(secret), offset="0")
        hb.save(root, "encoder", model)
        return root, ["encoder.onnx", repr(t.name), str(secret), "not a relative path"]
    if case == "symlink-file":
        model, t, data = _secret_for(root)
        (tmp_path / "secret.bin").write_bytes(data)
        os.symlink(tmp_path / "secret.bin", root / "weights.bin")
        hb.set_external(t, location="weights.bin", offset="0")
        hb.save(root, "encoder", model)          # the manifest lists weights.bin with the secret's hash
        return root, ["weights.bin", "not a regular file"]
    if case == "symlink-dir":
        model, t, data = _secret_for(root)
        outside = tmp_path / "outside"
        outside.mkdir()
        (outside / "weights.bin").write_bytes(data)
        os.symlink(outside, root / "w")
        hb.set_external(t, location="w/weights.bin", offset="0")
        hb.save(root, "encoder", model)
        return root, ["encoder.onnx", repr(t.name), "'w/weights.bin'"]
    if case == "past-end":
        model = hb.load(root, "encoder")
        t = hb.external_initializers(model)[-1]
        size = (root / "encoder.onnx.data").stat().st_size
        hb.set_external(t, offset=str(size - 8))
        hb.save(root, "encoder", model)
        return root, ["encoder.onnx", repr(t.name), f"of encoder.onnx.data, which has {size}", "inside the file"]
    if case == "domain":
        model = hb.load(root, "denoiser")
        node = model.graph.node[len(model.graph.node) // 2]
        node.domain, node.op_type = "com.evil", "Pwn"
        model.opset_import.add(domain="com.evil", version=1)
        hb.save(root, "denoiser", model)
        return root, ["denoiser.onnx", repr(node.name), "'com.evil:Pwn'", "domain 'com.evil'", "ONNX standard domain"]
    if case == "output-renamed":
        model = hb.load(root, "denoiser")
        old = model.graph.output[0].name
        for node in model.graph.node:
            for k, o in enumerate(node.output):
                if o == old:
                    node.output[k] = "pred"
        model.graph.output[0].name = "pred"
        hb.save(root, "denoiser", model)
        return root, ["denoiser.onnx", "lacks output(s) ['prediction']", "spec binds outputs ['prediction']"]
    if case == "output-retyped":
        model = hb.load(root, "denoiser")
        model.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
        hb.save(root, "denoiser", model)
        return root, ["denoiser.onnx", "output 'prediction' is float16", "spec declares float32"]
    if case == "bytes-short":
        model = hb.load(root, "denoiser")
        t = next(x for x in model.graph.initializer if x.HasField("raw_data") and len(x.raw_data) > 4)
        t.raw_data = t.raw_data[:-4]
        hb.save(root, "denoiser", model)
        return root, ["denoiser.onnx", repr(t.name), f"holds {len(t.raw_data)} bytes", f"need {len(t.raw_data) + 4}"]
    if case == "split-outputs":
        # found by the graph fuzzer: ONNX's (and ONNX Runtime's) shape inference aborts the process
        model = hb.load(root, "denoiser")
        node = next(n for n in model.graph.node if n.op_type == "Split")
        next(a for a in node.attribute if a.name == "num_outputs").i = 1
        hb.save(root, "denoiser", model)
        return root, ["denoiser.onnx", repr(node.name), f"declares num_outputs 1 and has {len(node.output)} outputs"]
    raise AssertionError(case)


CASES = ["parent", "absolute", "symlink-file", "symlink-dir", "past-end", "domain", "output-renamed",
         "output-retyped", "bytes-short", "split-outputs"]
VERBS = {
    "sample": ["sample", "{b}", "--target", "onnxruntime", "-n", "1", "-o", "{out}/grid.png"],
    "validate-onnxruntime": ["validate", "{b}", "--target", "onnxruntime", "--reference", "golden",
                             "--json", "{out}/r.json"],
    "validate-openvino": ["validate", "{b}", "--target", "openvino", "--reference", "golden"],
    "validate-coreml": ["validate", "{b}", "--target", "coreml", "--reference", "golden"],
    "compile-onnxruntime": ["compile", "{b}", "--target", "onnxruntime"],
    "compile-openvino": ["compile", "{b}", "--target", "openvino"],
    "compile-coreml": ["compile", "{b}", "--target", "coreml"],
    "bench": ["bench", "{b}", "--target", "onnxruntime", "--repeats", "1", "--batch", "1", "--json", "{out}/b.json"],
}


def run_verb(verb: str, bundle, out, capsys) -> tuple[int, str]:
    argv = [a.format(b=bundle, out=out) for a in VERBS[verb]]
    capsys.readouterr()
    code = main(argv)          # anything but a DualrateError propagates: the test fails as a user's traceback
    captured = capsys.readouterr()
    return code, captured.err


def error_lines(err: str) -> list[str]:
    """The error lines of stderr (progress lines, indented, may precede them)."""
    return [ln for ln in err.strip().splitlines() if ln.startswith("dualrate ")]


def assert_refused(code: int, err: str, verb: str, needles: list[str]) -> None:
    lines = error_lines(err)
    assert code == 2, (verb, code, err)
    assert len(lines) == 1 and lines[0].startswith(f"dualrate {verb.split('-')[0]}: error: "), (verb, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (verb, needle, lines[0])


def assert_nothing_written(bundle, out) -> None:
    assert not (bundle / "targets").exists(), "a runtime compiled a refused bundle"
    assert not any(out.iterdir()), f"files written: {list(out.iterdir())}"


@pytest.mark.parametrize("case", CASES)
def test_hostile_bundle_refused_on_every_verb(case, ext_bundle, tmp_path, capsys):
    bundle, needles = make_case(case, ext_bundle, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    for verb in VERBS:
        code, err = run_verb(verb, bundle, out, capsys)
        assert_refused(code, err, verb, needles)
        assert_nothing_written(bundle, out)


def test_clean_copy_runs(ext_bundle, tmp_path, capsys):
    """The cases start from a bundle that works: validate passes on it (so a refusal is the edit's doing)."""
    bundle = hb.clone(ext_bundle, tmp_path / "bundle")
    code, err = run_verb("validate-onnxruntime", bundle, tmp_path, capsys)
    assert code == 0, err


# -- past the checks: graphs the runtimes refuse ----------------------------------------------------
def _runtime_refused(base, tmp_path, how: str):
    """An encoder that passes every check at open but that a runtime cannot load: an op no opset has,
    or an attribute out of its range."""
    root = hb.clone(base, tmp_path / "bundle")
    model = hb.load(root, "encoder")
    if how == "unknown-op":
        model.graph.node[len(model.graph.node) // 2].op_type = "NotAnOp"
    else:
        node = next(n for n in model.graph.node if n.op_type == "Concat")
        next(a for a in node.attribute if a.name == "axis").i = 12345
    hb.save(root, "encoder", model)
    open_bundle(root)           # the checks at open pass: this is the runtime's call
    return root


@pytest.mark.parametrize("how", ["unknown-op", "bad-attribute"])
def test_runtime_refusal_is_bad_input(how, ext_bundle, tmp_path, capsys):
    """ONNX Runtime and OpenVINO refusing a graph is the input's fault: exit 2, one line naming the
    graph and the runtime with the runtime's own reason; not exit 1 (parity) nor 3 (unavailable)."""
    bundle = _runtime_refused(ext_bundle, tmp_path, how)
    out = tmp_path / "out"
    out.mkdir()
    for verb, runtime in (("compile-onnxruntime", "ONNX Runtime"), ("validate-onnxruntime", "ONNX Runtime"),
                          ("sample", "ONNX Runtime"), ("bench", "ONNX Runtime"),
                          ("compile-openvino", "OpenVINO"), ("validate-openvino", "OpenVINO")):
        code, err = run_verb(verb, bundle, out, capsys)
        why = "NotAnOp" if how == "unknown-op" else "xis"        # ORT: "axis must be"; OpenVINO: "Axis 12345"
        assert_refused(code, err, verb, [runtime, "the encoder graph (encoder.onnx)", why])
        assert not any(out.iterdir())


def test_real_cli(ext_bundle, tmp_path):
    """The issue's two cases through the real command: exit 2, one line on stderr, no traceback."""
    for case, verb in (("parent", ["validate", "--target", "onnxruntime"]),
                       ("domain", ["compile", "--target", "openvino"])):
        bundle, needles = make_case(case, ext_bundle, tmp_path / case)
        res = run_cli(verb[0], str(bundle), *verb[1:])
        assert res.returncode == 2, (case, res.returncode, res.stderr)
        assert "Traceback" not in res.stderr
        lines = error_lines(res.stderr)
        assert len(lines) == 1 and all(n in lines[0] for n in needles), res.stderr
        assert not (bundle / "targets").exists()
