"""TensorRT target: import safety and the unavailable path (run everywhere), the pure-Python parts
(optimization profiles, the fp16 graph and the int8 QDQ graph, checked on ONNX Runtime), and engine
tests that need a GPU.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import onnx
import pytest

from dualrate.exporter.errors import BackendUnavailableError, BadInputError
from dualrate.exporter.export import ExportOptions
from dualrate.exporter.runner import graph_feeds, role_values
from dualrate.exporter.sampling import sample, spec_noise
from dualrate.exporter.spec import DecoderSpec, GraphIO, GuidanceSpec, TensorIO
from dualrate.exporter.spec_builder import SamplerOptions
from dualrate.exporter.torch_runner import TorchReferenceRunner
from dualrate.targets.base import get_target
from dualrate.targets.onnxrt import OrtRunner
from dualrate.targets.base import Compiled
from dualrate.targets.precision_plan import parse_plan
from dualrate.targets.trt_backend import (TARGET, DeviceTensor, convert_onnx_fp16, fp16_graph_summary,
                                          graph_profile_rows, profile_rows, profile_shapes)
from dualrate.targets.trt_qdq import qdq_problems
from tests.conftest import REPO, run_cli
from dualrate.validation.export_check import export_bundle
from dualrate.validation.gates import gate_for
from dualrate.validation.graph_parity import graph_level
from dualrate.validation.metrics import compare

pytestmark = pytest.mark.slow
OPTS = ExportOptions(sampler=SamplerOptions(num_steps=4, guidance=2.0, refresh_params={"k": 2, "phase": 0}),
                     golden_seeds=(0,))
REASON = TARGET.available()
needs_trt = pytest.mark.skipif(REASON is not None, reason=f"TensorRT target unavailable here: {REASON}")
without_trt = pytest.mark.skipif(REASON is None, reason="TensorRT and a CUDA device are usable here")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_checkpoint):
    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("trt") / "bundle", OPTS).bundle


def test_module_imports_without_tensorrt_or_cuda():
    code = ("import sys, dualrate.targets.trt_backend as t; assert t.TARGET.name == 'tensorrt'; "
            "print(sorted(m for m in ('tensorrt', 'cuda', 'cuda.bindings') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
    assert get_target("tensorrt") is TARGET and TARGET.precisions == ("fp32", "fp16", "int8")


@without_trt
def test_available_gives_the_reason_and_the_fix():
    assert ("tensorrt cannot be imported" in REASON and "pip install 'dualrate[tensorrt]'" in REASON) or \
        ("cuda-python" in REASON and "pip install" in REASON) or "nvidia-smi" in REASON


@without_trt
def test_compile_and_runner_refuse_with_exit_code_3(bundle):
    with pytest.raises(BackendUnavailableError) as exc:
        TARGET.compile(bundle)
    assert exc.value.exit_code == 3 and REASON in str(exc.value)
    assert not bundle.target_dir("tensorrt", "fp32").exists()
    with pytest.raises(BackendUnavailableError, match="not usable here"):
        TARGET.open_runner(bundle, None)


@without_trt
def test_cli_compile_exits_3_with_the_reason_and_no_traceback(bundle):
    res = run_cli("compile", str(bundle.path), "--target", "tensorrt", "--precision", "fp16")
    assert res.returncode == 3, (res.stdout, res.stderr)
    assert REASON in res.stderr and "Traceback" not in res.stderr
    # stage lines (CI logs) may precede it; the error is one line, the last
    errors = [line for line in res.stderr.splitlines() if "error:" in line]
    assert errors == [res.stderr.strip().splitlines()[-1]]
    assert errors[0].startswith("dualrate compile: error: target tensorrt is not usable here")


@without_trt
@pytest.mark.parametrize("plan", ["int8", "encoder=int8,denoiser=fp16"])
def test_int8_compile_exits_3_with_the_reason(bundle, plan):
    with pytest.raises(BackendUnavailableError) as exc:
        TARGET.compile(bundle, plan)
    assert exc.value.exit_code == 3 and REASON in str(exc.value)
    res = run_cli("compile", str(bundle.path), "--target", "tensorrt", "--precision", plan)
    assert res.returncode == 3 and REASON in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_int8_builds_from_a_tensorrt_ready_qdq_graph(bundle, tmp_path, monkeypatch):
    """The int8 path up to the builder, run here: the ONNX each int8 engine is built from, calibrated on the
    bundle's sampler with the int8 encoder feeding the denoiser, is a QDQ graph TensorRT's explicit
    quantization takes (standard Q/DQ, symmetric int8, float biases); ONNX Runtime runs it within int8 error.
    The quantizer writes nothing into the current directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    plan = parse_plan("int8", bundle.graph_names(), TARGET.precisions)
    record = {"fp16_graphs": {}, "int8_graphs": {}}
    built = {g: bundle.graph(g) for g in bundle.graph_names()}
    for graph in bundle.graph_names():
        built[graph] = TARGET.source_graph(bundle, plan, graph, tmp_path, built, record, calibration_samples=2)
        assert built[graph] == tmp_path / f"{graph}.int8.onnx" and qdq_problems(built[graph]) == []
        qdq = record["int8_graphs"][graph]["qdq"]
        assert qdq["ops"]["QuantizeLinear"] > 10 and qdq["int8_weights"] > 5 and qdq["dequantized_into"]["Conv"] > 5
        assert "symmetric int8 activations" in record["int8_graphs"][graph]["method"]
        model = onnx.load(str(built[graph]))
        assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}          # no com.microsoft ops
        int32 = {t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT32}
        assert not [n.name for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int32]
        print(graph, qdq)
    checks = TARGET.structural_checks(bundle, Compiled(tmp_path, {"graph_precisions": plan.as_dict(),
                                                                  "effective_precision": "int8"}))
    assert [c["name"] for c in checks if c["passed"]][:2] == ["encoder: int8 QDQ graph", "denoiser: int8 QDQ graph"]
    results = graph_level(OrtRunner(bundle.spec, built), {f"{g}_io": bundle.golden(f"{g}_io")
                                                          for g in bundle.graph_names()}, gate_for("fp32"))
    worst = max(r.metrics.rel_l2 for r in results)
    print(f"int8 QDQ graphs on ONNX Runtime: worst rel-L2 {worst:.3g} against PyTorch")
    assert 1e-4 < worst < 0.3              # quantized (not float), and still the same function
    assert list(cwd.iterdir()) == []


def test_qdq_problems_name_what_tensorrt_rejects(bundle, tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    assert qdq_problems(bundle.graph("encoder")) == ["no QuantizeLinear/DequantizeLinear nodes: the graph is not "
                                                     "quantized"]
    zp = numpy_helper.from_array(np.array(3, np.uint8), "zp")
    scale = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q_asym"),
             helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq_asym"),
             helper.make_node("QuantizeLinear", ["x", "s"], ["q2"], name="q_ms", domain="com.microsoft")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [zp, scale])
    path = tmp_path / "asym.onnx"
    onnx.save(helper.make_model(graph), str(path))
    assert qdq_problems(path) == ["q_asym: quantized type UINT8, TensorRT takes INT8",
                                  "dq_asym: quantized type UINT8, TensorRT takes INT8",
                                  "q_ms is in domain 'com.microsoft'; TensorRT parses standard ONNX Q/DQ only"]


def test_profile_rows_follow_guidance_and_the_golden_batch(bundle):
    guided = bundle.spec                                       # guidance at every step: rows double
    assert profile_rows(guided, bundle.manifest) == (1, 4, 16)
    assert profile_rows(guided, bundle.manifest, max_batch=2, opt_batch=3) == (1, 6, 6)
    plain = dataclasses.replace(guided, guidance=GuidanceSpec())          # no guidance: rows = samples
    assert profile_rows(plain, {"graph_rows": {"golden": 2}}) == (1, 2, 8)
    assert profile_rows(plain, {}) == (1, 1, 8)
    static = _static(guided, 6)
    assert profile_rows(static, bundle.manifest, max_batch=100) == (6, 6, 6)
    with pytest.raises(BadInputError, match="positive sample counts"):
        profile_rows(guided, {}, max_batch=0)


def test_the_decoder_profile_is_over_samples(bundle):
    """The decoder runs once on the final samples: guidance never doubles its rows."""
    image = GraphIO((TensorIO("latent", ("batch", 1, 8, 8), "float32", "sample"),),
                    (TensorIO("decoded", ("batch", 3, 16, 16), "float32"),))
    spec = dataclasses.replace(bundle.spec, model=dataclasses.replace(
        bundle.spec.model, decoder=DecoderSpec(image, output_shape=(3, 16, 16))))
    for graph in ("encoder", "denoiser"):
        assert graph_profile_rows(spec, bundle.manifest, graph) == profile_rows(spec, bundle.manifest) == (1, 4, 16)
    assert bundle.manifest["export_options"]["golden_batch"] == 2
    assert graph_profile_rows(spec, bundle.manifest, "decoder") == (1, 2, 8)
    assert graph_profile_rows(spec, bundle.manifest, "decoder", max_batch=4, opt_batch=3) == (1, 3, 4)
    assert profile_shapes(image, (1, 2, 8)) == {"latent": ((1, 1, 8, 8), (2, 1, 8, 8), (8, 1, 8, 8))}
    static = dataclasses.replace(spec, model=dataclasses.replace(spec.model, decoder=DecoderSpec(
        GraphIO(tuple(dataclasses.replace(t, shape=(3, *t.shape[1:])) for t in image.inputs), image.outputs),
        output_shape=(3, 16, 16))))
    assert graph_profile_rows(static, bundle.manifest, "decoder", max_batch=100) == (3, 3, 3)
    with pytest.raises(BadInputError, match="positive sample counts"):
        graph_profile_rows(spec, {}, "decoder", max_batch=0)


def test_profile_shapes_cover_every_input(bundle):
    shapes = profile_shapes(bundle.spec.model.denoiser, (1, 4, 16))
    assert list(shapes) == ["z", "logsnr", "logsnr_ctx", "class_id", "feat0", "feat1"]
    assert shapes["z"] == ((1, 1, 8, 8), (4, 1, 8, 8), (16, 1, 8, 8))
    assert shapes["logsnr"] == ((1,), (4,), (16,))
    assert shapes["feat1"] == ((1, 32, 4, 4), (4, 32, 4, 4), (16, 32, 4, 4))
    static = profile_shapes(_static(bundle.spec, 6).model.encoder, (6, 6, 6))
    assert static["z"] == ((6, 1, 8, 8),) * 3


def test_fp16_graph_keeps_io_types_and_the_trig_path_in_fp32(bundle, tmp_path):
    for graph in bundle.graph_names():
        dst = tmp_path / f"{graph}.fp16.onnx"
        report = convert_onnx_fp16(bundle.graph(graph), dst)
        assert {"Sin", "Cos", "Clip", "InstanceNormalization", "LayerNormalization"} <= set(report["kept_fp32"])
        assert report["fp16_nodes"] > 100 and report["trig_argument_nodes"] > 0 and not report["external_data"]
        summary = fp16_graph_summary(dst)
        io = bundle.spec.model.graphs()[graph]
        assert summary["io"] == {t.name: t.dtype.upper().replace("FLOAT32", "FLOAT")
                                 for t in (*io.inputs, *io.outputs)}
        assert summary["fp16_values"] > 100 and summary["fp16_initializers"] > 50
        model = onnx.load(str(dst))
        assert [i.name for i in model.graph.input] == [t.name for t in io.inputs]
        assert any(n.op_type == "Cast" for n in model.graph.node)


def test_fp16_graphs_pass_the_fp16_gate_on_onnx_runtime(bundle, tmp_path):
    """The fp16 graphs TensorRT would build from, run by ORT's CPU kernels against the PyTorch goldens."""
    vectors = {f"{g}_io": bundle.golden(f"{g}_io") for g in bundle.graph_names()}
    worst = {}
    for trig_fp32 in (True, False):
        paths = {g: tmp_path / f"{g}.{trig_fp32}.onnx" for g in bundle.graph_names()}
        for g, p in paths.items():
            convert_onnx_fp16(bundle.graph(g), p, trig_fp32=trig_fp32)
        results = graph_level(OrtRunner(bundle.spec, paths), vectors, gate_for("fp16"))
        if trig_fp32:
            assert all(r.passed for r in results), [r.to_dict() for r in results if not r.passed]
        worst[trig_fp32] = max(r.metrics.rel_l2 for r in results if r.graph == "denoiser")
    # sin(pi * 2^7 * u) of an fp16 argument is off by up to ~0.1: keeping the argument fp32 pays
    assert worst[True] < 1e-2 and worst[False] > 1.5 * worst[True], worst


# -- on a machine with TensorRT and a GPU ---------------------------------------------
@needs_trt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_engines_build_check_and_match_pytorch(bundle, pair, precision):
    compiled = TARGET.compile(bundle, precision)
    rec = compiled.record
    assert rec["effective_precision"] == precision and rec["device"].startswith("cuda:")
    assert {"encoder.engine", "denoiser.engine", "timing.cache"} <= set(rec["files"])
    assert rec["profiles"]["denoiser"]["z"] == [[1, 1, 8, 8], [4, 1, 8, 8], [16, 1, 8, 8]]
    checks = TARGET.structural_checks(bundle, compiled)
    assert checks and all(c["passed"] for c in checks), checks
    runner = TARGET.open_runner(bundle, compiled)
    gate = gate_for(compiled.effective_precision)
    results = graph_level(runner, {f"{g}_io": bundle.golden(f"{g}_io") for g in bundle.graph_names()}, gate)
    assert all(r.passed for r in results), [r.to_dict() for r in results if not r.passed]
    labels = np.arange(3) % 10
    got = sample(runner, bundle.spec, labels, spec_noise(bundle.spec, 3, seed=5)).x
    ref = sample(TorchReferenceRunner(pair, bundle.spec), bundle.spec, labels, spec_noise(bundle.spec, 3, seed=5)).x
    assert compare(got, ref).psnr_db >= gate.psnr_db


def _feeds(spec, graph, z, lam, cls, features=None):
    return graph_feeds(spec.model.graphs()[graph], role_values(z, lam, lam, {"class_id": cls}, features))


@needs_trt
def test_features_stay_on_the_device_and_bad_inputs_are_clear(bundle):
    spec = bundle.spec
    runner = TARGET.open_runner(bundle, TARGET.compile(bundle, "fp32"))
    z, lam, cls = np.zeros((4, 1, 8, 8), np.float32), np.zeros(4, np.float32), np.zeros(4, np.int64)
    feats = runner.encode(_feeds(spec, "encoder", z, lam, cls))
    assert all(isinstance(f, DeviceTensor) for f in feats.values())
    assert {k: f.shape for k, f in feats.items()} == {"feat0": (4, 16, 8, 8), "feat1": (4, 32, 4, 4)}
    again = runner.denoise(_feeds(spec, "denoiser", z, lam, cls, feats))
    assert again.shape == (4, 1, 8, 8)
    host = runner.features_to_numpy(feats)
    np.testing.assert_array_equal(again, runner.denoise(_feeds(spec, "denoiser", z, lam, cls, host)))
    with pytest.raises(BadInputError, match=r"encoder: input 'z' has shape \[4, 3, 8, 8\]"):
        runner.encode(_feeds(spec, "encoder", np.zeros((4, 3, 8, 8), np.float32), lam, cls))
    with pytest.raises(BadInputError, match="encoder: input 'z' has dtype float64"):
        runner.encode(_feeds(spec, "encoder", z.astype(np.float64), lam, cls))
    with pytest.raises(BadInputError, match=r"^tensorrt could not run the encoder graph: z has shape \[17, 1, 8, 8\], "
                                            r"the engine's profile allows"):
        runner.encode(_feeds(spec, "encoder", np.zeros((17, 1, 8, 8), np.float32), np.zeros(17, np.float32),
                             np.zeros(17, np.int64)))
    three = np.zeros((3, 1, 8, 8), np.float32)
    with pytest.raises(BadInputError, match="tensorrt could not run the denoiser graph: feat0 has 4 rows, the other "
                                            "inputs 3"):
        runner.denoise(_feeds(spec, "denoiser", three, np.zeros(3, np.float32), np.zeros(3, np.int64), feats))


def _static(spec, rows):
    def fix(gio: GraphIO) -> GraphIO:
        def t(x):
            return dataclasses.replace(x, shape=tuple(rows if d == "batch" else d for d in x.shape))
        return GraphIO(tuple(map(t, gio.inputs)), tuple(map(t, gio.outputs)))
    return dataclasses.replace(spec, model=dataclasses.replace(spec.model, encoder=fix(spec.model.encoder),
                                                               denoiser=fix(spec.model.denoiser)))
