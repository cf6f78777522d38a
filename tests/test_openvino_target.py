"""The OpenVINO target: precision forced and read back, parity per effective precision, feature lifetime.

Measured numbers are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from dualrate.exporter.bundle import open_bundle, write_manifest
from dualrate.exporter.errors import BackendUnavailableError, BadInputError
from dualrate.exporter.export import ExportOptions
from dualrate.exporter.model_pair import DualRateModel, feature
from dualrate.exporter.runner import graph_feeds, role_values
from dualrate.exporter.sampling import sample, spec_noise
from dualrate.exporter.spec_builder import SamplerOptions
from dualrate.exporter.torch_runner import TorchReferenceRunner
from dualrate.targets.base import Compiled, get_target
from tests.conftest import REPO
from tests.custom_pair import named_pair
from dualrate.validation.export_check import export_bundle
from dualrate.validation.gates import gate_for
from dualrate.validation.graph_parity import graph_level
from dualrate.validation.metrics import compare

ov = pytest.importorskip("openvino")
pytestmark = pytest.mark.slow

OPTS = ExportOptions(sampler=SamplerOptions(num_steps=8, guidance=2.0, refresh_params={"k": 3, "phase": 0}))
LABELS = np.arange(4) % 10
SEED = 3


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_checkpoint):
    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("ov") / "bundle", OPTS).bundle


@pytest.fixture(scope="module")
def target():
    t = get_target("openvino")
    if t.available():
        pytest.skip(t.available())
    return t


@pytest.fixture(scope="module")
def vectors(bundle):
    return {f"{g}_io": bundle.golden(f"{g}_io") for g in bundle.graph_names()}


@pytest.fixture(scope="module")
def reference_samples(bundle, pair):
    return sample(TorchReferenceRunner(pair, bundle.spec), bundle.spec, LABELS,
                  spec_noise(bundle.spec, len(LABELS), seed=SEED)).x


@pytest.fixture(scope="module")
def fp32(bundle, target):
    compiled = target.compile(bundle, "fp32")
    return compiled, target.open_runner(bundle, compiled)


@pytest.fixture(scope="module")
def bf16(bundle, target):
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in caps:
        pytest.skip(f"this CPU has no native bf16 (OPTIMIZATION_CAPABILITIES {caps}); OpenVINO would not run bf16")
    compiled = target.compile(bundle, "bf16")
    return compiled, target.open_runner(bundle, compiled)


def feeds(spec, graph: str, z, lam, cls, features=None, lam_ctx=None) -> dict:
    """The feeds of one call by input name, from role values (as the sampler builds them)."""
    values = role_values(z, lam, lam if lam_ctx is None else lam_ctx, {"class_id": cls}, features)
    return graph_feeds(spec.model.graphs()[graph], values)


def parity_report(label: str, results) -> None:
    for r in results:
        m = r.metrics
        print(f"\n[openvino {label}] graph {r.graph:8s} {r.output:10s} rel-L2 {m.rel_l2:.3e} "
              f"(worst call {r.detail['worst_call_rel_l2']:.3e}) cosine {m.cosine:.8f} PSNR {m.psnr_db:.1f} dB "
              f"{'PASS' if r.passed else 'FAIL ' + '; '.join(r.reasons)}")


def sample_on(runner, bundle) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    x = sample(runner, bundle.spec, LABELS, spec_noise(bundle.spec, len(LABELS), seed=SEED)).x
    return x, time.perf_counter() - start


def test_fp32_is_forced_and_the_record_says_so(bundle, target, fp32):
    compiled, runner = fp32
    rec = json.loads((compiled.path / "compile.json").read_text())
    assert compiled.path == bundle.path / "targets" / "openvino-fp32"
    assert sorted(p.name for p in compiled.path.iterdir()) == ["compile.json", "denoiser.bin", "denoiser.xml",
                                                               "encoder.bin", "encoder.xml"]
    assert rec["requested_precision"] == rec["effective_precision"] == "fp32" and "note" not in rec
    assert rec["properties"]["INFERENCE_PRECISION_HINT"] == "f32"
    assert rec["properties"]["PERFORMANCE_HINT"] == "LATENCY" and rec["properties"]["NUM_STREAMS"] == "1"
    assert rec["device"] == ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    assert rec["runtime_version"] == ov.__version__ and rec["weights_compressed_to_fp16"] is False
    assert sorted(rec["graphs"]) == sorted(bundle.graph_names()) == ["denoiser", "encoder"]
    for g in bundle.graph_names():
        info = rec["graphs"][g]
        assert info["inference_precision_hint"] == "f32" and info["properties_read_back"]["INFERENCE_PRECISION_HINT"] == "f32"
        assert set(info["executed_layer_precisions"]) == {"f32"}, info     # not one layer lowered
    assert runner.effective_precision == "fp32"
    checks = target.structural_checks(bundle, compiled)
    assert len(checks) == 5 and all(c["passed"] for c in checks), checks


def test_the_cpu_plugin_default_would_not_be_fp32_here(bundle, fp32):
    """Why fp32 must be forced: without the hint, a bf16-capable CPU runs bf16 and says so only if asked."""
    core = ov.Core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no native bf16, so the plugin default is f32 anyway")
    compiled, _ = fp32
    default = core.compile_model(str(compiled.path / "encoder.xml"), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
    assert default.get_property("INFERENCE_PRECISION_HINT").get_type_name() == "bf16"


def test_fp32_graph_parity_and_sampling_match_pytorch(bundle, fp32, vectors, reference_samples):
    compiled, runner = fp32
    results = graph_level(runner, vectors, gate_for("fp32"))
    parity_report("fp32", results)
    assert {(r.graph, r.output) for r in results} == {("encoder", "feat0"), ("encoder", "feat1"),
                                                      ("denoiser", "prediction")}
    assert all(r.passed for r in results), [r.reasons for r in results]
    x, seconds = sample_on(runner, bundle)
    m = compare(x, reference_samples)
    print(f"\n[openvino fp32] samples vs PyTorch: rel-L2 {m.rel_l2:.3e} PSNR {m.psnr_db:.1f} dB; "
          f"{len(LABELS)} samples x {bundle.spec.sampler.num_steps} steps in {seconds * 1e3:.1f} ms")
    assert m.psnr_db >= 60.0 and not gate_for("fp32").check(m, final_sample=True), m


def test_bf16_is_read_back_passes_bf16_gates_and_fails_fp32_gates(bundle, bf16, vectors, reference_samples):
    compiled, runner = bf16
    rec = compiled.record
    assert rec["requested_precision"] == rec["effective_precision"] == "bf16" and runner.effective_precision == "bf16"
    for g in bundle.graph_names():
        info = rec["graphs"][g]
        assert info["inference_precision_hint"] == "bf16" and info["executed_layer_precisions"].get("bf16", 0) > 0
        assert info["kept_f32"] and info["kept_f32_executed"].get("f32", 0) > 0    # sin/cos arguments stay f32
    # the time inputs are found by their role, not their name
    assert rec["graphs"]["encoder"]["time_inputs"] == ["logsnr"]
    assert rec["graphs"]["denoiser"]["time_inputs"] == ["logsnr", "logsnr_ctx"]
    results = graph_level(runner, vectors, gate_for("bf16"))
    parity_report("bf16", results)
    assert all(r.passed for r in results), [r.reasons for r in results]
    # the SAME numbers judged as if the backend had claimed fp32: every output must fail
    fp32_gate = gate_for("fp32")
    verdicts = {(r.graph, r.output): fp32_gate.check(r.metrics) for r in results}
    print(f"\n[openvino bf16] under the fp32 gate: {verdicts}")
    assert all(verdicts.values()), verdicts
    x, seconds = sample_on(runner, bundle)
    m = compare(x, reference_samples)
    print(f"\n[openvino bf16] samples vs PyTorch: rel-L2 {m.rel_l2:.3e} PSNR {m.psnr_db:.1f} dB; "
          f"{seconds * 1e3:.1f} ms")
    assert not gate_for("bf16").check(m, final_sample=True), m
    assert gate_for("fp32").check(m, final_sample=True), m


def test_runner_refuses_a_record_that_overstates_the_precision(bundle, target, bf16):
    compiled, _ = bf16
    forged = Compiled(compiled.path, {**compiled.record, "effective_precision": "fp32"})
    with pytest.raises(BackendUnavailableError, match=r"runs the compiled models in bf16, but they were compiled "
                                                      r"and recorded as fp32; recompile"):
        target.open_runner(bundle, forged)


def test_fp16_record_is_what_the_plugin_reports(bundle, target, vectors, reference_samples):
    compiled = target.compile(bundle, "fp16")
    rec = compiled.record
    runner = target.open_runner(bundle, compiled)
    core = ov.Core()
    for g in bundle.graph_names():
        model = core.compile_model(str(compiled.path / f"{g}.xml"), "CPU", rec["properties"])
        really = model.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        assert rec["graphs"][g]["inference_precision_hint"] == really
    assert runner.effective_precision == rec["effective_precision"]
    if rec["effective_precision"] != "fp16":
        assert "note" in rec and f"runs {rec['effective_precision']}" in rec["note"]
    else:
        assert "note" not in rec
    results = graph_level(runner, vectors, gate_for(rec["effective_precision"]))
    parity_report(f"fp16 (effective {rec['effective_precision']})", results)
    assert all(r.passed for r in results), [r.reasons for r in results]
    x, seconds = sample_on(runner, bundle)
    m = compare(x, reference_samples)
    print(f"\n[openvino fp16 -> {rec['effective_precision']}] samples vs PyTorch: rel-L2 {m.rel_l2:.3e} "
          f"PSNR {m.psnr_db:.1f} dB; {seconds * 1e3:.1f} ms")
    assert not gate_for(rec["effective_precision"]).check(m, final_sample=True), m


def test_features_are_ov_tensors_that_outlive_the_next_encode(bundle, fp32):
    _, runner = fp32
    spec = bundle.spec
    rng = np.random.default_rng(0)
    z = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    lam = np.full(2, 0.5, np.float32)
    cls, other = np.array([1, 2], np.int64), np.array([10, 10], np.int64)
    cond = runner.encode(feeds(spec, "encoder", z, lam, cls))
    assert list(cond) == ["feat0", "feat1"] and all(isinstance(f, ov.Tensor) for f in cond.values())
    saved = {k: v.copy() for k, v in runner.features_to_numpy(cond).items()}
    # the other guidance branch refreshes on the same request: it must not write into cond's tensors
    uncond = runner.encode(feeds(spec, "encoder", -z, lam, other))
    after, theirs = runner.features_to_numpy(cond), runner.features_to_numpy(uncond)
    for name, before in saved.items():
        np.testing.assert_array_equal(after[name], before)
        assert not np.allclose(after[name], theirs[name])
    # zero-copy tensors and numpy copies of them give the same prediction
    native = feeds(spec, "denoiser", z, lam, cls, cond)
    np.testing.assert_array_equal(runner.denoise(native), runner.denoise(feeds(spec, "denoiser", z, lam, cls, saved)))
    first = runner.denoise(native)
    runner.denoise(feeds(spec, "denoiser", -z, lam, other, uncond))
    np.testing.assert_array_equal(first, runner.denoise(native))   # predictions are not aliased either


def test_row_counts_run_on_static_copies_that_match_the_dynamic_graph(bundle, fp32):
    """The CPU plugin runs fixed shapes faster; the copies must compute what the dynamic graph computes."""
    _, runner = fp32
    graph = runner._graphs["encoder"]
    rng = np.random.default_rng(1)
    for rows in (1, 3, 2, 5, 6, 7):                         # more row counts than it keeps compiled
        z = rng.standard_normal((rows, 1, 8, 8)).astype(np.float32)
        lam = np.full(rows, 0.25, np.float32)
        cls = np.arange(rows, dtype=np.int64) % 10
        call = feeds(bundle.spec, "encoder", z, lam, cls)
        specialized = runner.features_to_numpy(runner.encode(call))
        assert graph.request is not graph._dynamic_request
        dynamic = graph._dynamic_request
        for name, value in call.items():                    # bound by name, as the runner binds them
            dynamic.set_tensor(name, ov.Tensor(np.ascontiguousarray(value)))
        dynamic.infer()
        for name, got in specialized.items():
            # fp32 both ways; only the summation order of the kernels differs
            assert compare(got, dynamic.get_tensor(name).data).rel_l2 <= 1e-5
    assert list(graph._by_rows) == [2, 5, 6, 7] and len(graph._by_rows) == graph.MAX_SPECIALIZED


def test_compile_cache_is_reused(bundle, target, fp32):
    compiled, _ = fp32
    stamp = {p.name: p.stat().st_mtime_ns for p in compiled.path.iterdir()}
    start = time.perf_counter()
    again = target.compile(bundle, "fp32")
    assert again.record == compiled.record
    assert {p.name: p.stat().st_mtime_ns for p in again.path.iterdir()} == stamp
    assert time.perf_counter() - start < 2.0


def test_bad_inputs_are_bad_input_errors_naming_the_graph(bundle, fp32):
    _, runner = fp32
    spec = bundle.spec
    lam, cls = np.zeros(2, np.float32), np.zeros(2, np.int64)
    with pytest.raises(BadInputError, match=r"encoder: input 'z' has shape \[2, 3, 8, 8\]; the graph takes "
                                            r"\['batch', 1, 8, 8\]"):
        runner.encode(feeds(spec, "encoder", np.zeros((2, 3, 8, 8), np.float32), lam, cls))
    with pytest.raises(BadInputError, match="encoder: input 'z' has dtype float64; the graph takes float32"):
        runner.encode(feeds(spec, "encoder", np.zeros((2, 1, 8, 8)), lam, cls))
    with pytest.raises(BadInputError, match="encoder: input 'class_id' has 3 rows; other inputs have 2"):
        runner.encode(feeds(spec, "encoder", np.zeros((2, 1, 8, 8), np.float32), lam, np.zeros(3, np.int64)))
    feats = runner.encode(feeds(spec, "encoder", np.zeros((2, 1, 8, 8), np.float32), lam, cls))
    short = feeds(spec, "denoiser", np.zeros((2, 1, 8, 8), np.float32), lam, cls, feats)
    del short["feat1"]
    with pytest.raises(BadInputError, match=r"denoiser: input\(s\) \['feat1'\] were not fed"):
        runner.denoise(short)
    # features kept as ov.Tensors are checked by the runner itself, and the message is one line
    with pytest.raises(BadInputError, match=r"^openvino could not run the denoiser graph: input 'feat0' has batch 2, "
                                            r"other inputs have 3$"):
        runner.denoise(feeds(spec, "denoiser", np.zeros((3, 1, 8, 8), np.float32), np.zeros(3, np.float32),
                             np.zeros(3, np.int64), feats))


def static_copy(bundle, dest, rows: int):
    """The module's bundle with its batch axis fixed to ``rows``, as ``--static-batch`` exports it.

    A real static export costs two more dynamo exports (~15 s on these machines); OpenVINO
    sees the same thing either way: ONNX graphs whose inputs and outputs have a static batch.
    """
    shutil.copytree(bundle.path, dest, ignore=shutil.ignore_patterns("targets", "manifest.json"))
    for g in bundle.graph_names():
        model = onnx.load(str(dest / f"{g}.onnx"))
        del model.graph.value_info[:]
        for v in (*model.graph.input, *model.graph.output):
            v.type.tensor_type.shape.dim[0].dim_value = rows      # replaces the "batch" dim_param
        onnx.save(model, str(dest / f"{g}.onnx"))
    spec = json.loads((dest / "spec.json").read_text())
    graphs = [spec["model"]["encoder"], spec["model"]["denoiser"]]
    if spec["model"].get("decoder"):
        graphs.append(spec["model"]["decoder"]["graph"])
    for io in graphs:
        for t in (*io["inputs"], *io["outputs"]):
            t["shape"] = [rows if d == "batch" else d for d in t["shape"]]
    (dest / "spec.json").write_text(json.dumps(spec, indent=1, sort_keys=True) + "\n")
    info = {k: v for k, v in bundle.manifest.items() if k not in ("format", "format_version", "files")}
    info["graph_rows"] = {**info["graph_rows"], "static": rows}
    write_manifest(dest, info)
    return open_bundle(dest)


def test_static_batch_bundle(bundle, target, vectors, tmp_path, pair):
    rows = bundle.manifest["graph_rows"]["golden"]             # the golden vectors' row count: parity still runs
    static = static_copy(bundle, tmp_path / "static", rows)
    compiled = target.compile(static, "fp32")
    model = ov.Core().read_model(str(compiled.path / "encoder.xml"))
    assert model.inputs[0].get_partial_shape().is_static and model.inputs[0].get_shape()[0] == rows
    runner = target.open_runner(static, compiled)
    results = graph_level(runner, vectors, gate_for("fp32"))
    assert all(r.passed for r in results), [r.reasons for r in results]
    batch = rows // 2                                           # guided everywhere: cond + uncond rows per call
    x = sample(runner, static.spec, LABELS[:batch], spec_noise(static.spec, batch, seed=SEED)).x
    ref = sample(TorchReferenceRunner(pair, static.spec), static.spec, LABELS[:batch],
                 spec_noise(static.spec, batch, seed=SEED)).x
    assert x.shape == (batch, 1, 8, 8) and compare(x, ref).psnr_db >= 60.0
    with pytest.raises(BadInputError, match=rf"encoder: input 'z' has shape \[{rows + 2}, 1, 8, 8\]; the graph "
                                            rf"takes \[{rows}, 1, 8, 8\]"):
        sample(runner, static.spec, LABELS[:batch + 1], spec_noise(static.spec, batch + 1))


def test_missing_openvino_gives_the_install_hint():
    code = ("import sys; sys.modules['openvino'] = None\n"          # as if the extra were not installed
            "from dualrate.targets.base import get_target\n"
            "print(get_target('openvino').available())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'dualrate[openvino]'" in out.stdout


# -- a model whose inputs are named otherwise, with a decoder ----------------------------------------------
class TimeFourier(nn.Module):
    """sin/cos of a continuous time t in [0, 1] through a fixed Fourier projection (a MatMul), then an MLP."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("w", torch.linspace(1.0, 64.0, dim // 2)[None] * 6.2831853)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        arg = (t[:, None] * 1000.0) @ self.w / 1000.0
        return self.mlp(torch.cat([torch.sin(arg), torch.cos(arg)], 1))


class NamedEncoder(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.time, self.label = TimeFourier(width), nn.Embedding(4, width)
        self.conv, self.down = nn.Conv2d(2, width, 3, padding=1), nn.Conv2d(width, width, 3, stride=2, padding=1)

    def forward(self, x, noise_level, label):
        h = torch.tanh(self.conv(x) + (self.time(noise_level) + self.label(label))[:, :, None, None])
        return {"mid": h, "low": torch.tanh(self.down(h))}


class NamedDenoiser(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.time, self.ctx, self.label = TimeFourier(width), TimeFourier(width), nn.Embedding(4, width)
        self.up = nn.Upsample(scale_factor=2.0)
        self.conv = nn.Conv2d(2 + 2 * width, 2, 3, padding=1)

    def forward(self, x, noise_level, cached_level, label, mid, low):
        emb = self.time(noise_level) + self.ctx(cached_level) + self.label(label)
        h = torch.cat([x, mid * emb[:, :, None, None], self.up(low)], 1)
        return self.conv(h)


def named_model(seed: int = 0) -> DualRateModel:
    """Inputs called x / noise_level / cached_level / label, dict features ``mid``/``low``, a decoder."""
    torch.manual_seed(seed)
    return named_pair(NamedEncoder(), NamedDenoiser(), {"mid": feature("mid"), "low": feature("low")})


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    model = named_model()
    opts = ExportOptions(sampler=SamplerOptions(num_steps=6, guidance=2.0, refresh_params={"k": 2, "phase": 0}))
    return model, export_bundle(model, tmp_path_factory.mktemp("ov-named") / "bundle", opts).bundle


def test_any_input_names_and_a_decoder(named, target):
    model, bundle = named
    assert bundle.graph_names() == ["encoder", "denoiser", "decoder"]
    assert bundle.manifest["source"]["kind"] == "python" and bundle.manifest["source_checkpoint"] is None
    compiled = target.compile(bundle, "fp32")
    assert {"decoder.xml", "decoder.bin"} <= {p.name for p in compiled.path.iterdir()}
    assert sorted(compiled.record["graphs"]) == ["decoder", "denoiser", "encoder"]
    assert compiled.record["graphs"]["denoiser"]["time_inputs"] == ["noise_level", "cached_level"]
    checks = target.structural_checks(bundle, compiled)
    assert len(checks) == 7 and all(c["passed"] for c in checks), checks
    runner = target.open_runner(bundle, compiled)
    results = graph_level(runner, {f"{g}_io": bundle.golden(f"{g}_io") for g in bundle.graph_names()},
                          gate_for("fp32"))
    assert {(r.graph, r.output) for r in results} == {("encoder", "mid"), ("encoder", "low"),
                                                      ("denoiser", "prediction"), ("decoder", "decoded")}
    assert all(r.passed for r in results), [r.reasons for r in results]
    labels = {"label": np.array([0, 2, 1])}
    got = sample(runner, bundle.spec, labels, spec_noise(bundle.spec, 3, seed=1))
    ref = sample(TorchReferenceRunner(model, bundle.spec), bundle.spec, labels, spec_noise(bundle.spec, 3, seed=1))
    assert got.decoded.shape == (3, 3, 8, 8) and compare(got.decoded, ref.decoded).psnr_db >= 60.0
    assert compare(got.x, ref.x).psnr_db >= 60.0


def test_time_chain_found_by_role_stays_f32_in_bf16(named, target):
    """The Fourier projection is a MatMul: only the walk down from the ``time`` inputs reaches it."""
    from dualrate.targets.openvino_backend import precision_sensitive_ops

    _, bundle = named
    model = ov.convert_model(str(bundle.graph("denoiser")))
    by_trig = precision_sensitive_ops(model)
    by_role = precision_sensitive_ops(model, ["noise_level", "cached_level"])
    matmuls = {op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"}
    assert by_trig < by_role and not (by_trig & matmuls)
    assert len(by_role & matmuls) == 2              # the two projections; the MLPs after sin/cos stay out
    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" not in caps:
        pytest.skip(f"this CPU has no native bf16 (OPTIMIZATION_CAPABILITIES {caps})")
    compiled = target.compile(bundle, "bf16")
    assert compiled.effective_precision == "bf16"
    for g, times in (("encoder", ["noise_level"]), ("denoiser", ["noise_level", "cached_level"]), ("decoder", [])):
        info = compiled.record["graphs"][g]
        assert info["time_inputs"] == times and bool(info["kept_f32"]) == bool(times)
        # t[:, None] is rewritten as a Reshape, which the plugin keeps f32 (its own Unsqueeze drops the mark)
        assert info["kept_f32_unsqueeze_as_reshape"] == len(times)
        if times:
            assert info["kept_f32_executed"].get("f32", 0) >= 2 * len(times)      # sin and cos per time input
    # what the plugin really ran is recorded, not assumed: OpenVINO 2026.4 turns the MatMul into a
    # FullyConnected, which loses the mark ("precise" is not copied), and kept_f32_executed counts it as bf16
    runner = target.open_runner(bundle, compiled)
    assert runner.effective_precision == "bf16"


def test_reference_bundle_time_chain_runs_entirely_f32_in_bf16(bundle, bf16):
    compiled, _ = bf16
    for g in bundle.graph_names():
        info = compiled.record["graphs"][g]
        assert info["kept_f32_unsqueeze_as_reshape"] >= 1
        assert set(info["kept_f32_executed"]) == {"f32"}, info["kept_f32_executed"]
