"""Core ML target: conversion of every graph (fp32, fp16), compressed weights (int8-weights, palettize4/6/8;
structure and size), int8 activations refused off macOS, structural checks, capture fallback, refusals,
and the model it converts from (the source checkpoint, or ``model=`` for a bundle exported from Python).

Off macOS nothing here predicts: the packages are converted, saved and inspected,
and numeric parity is reported as not run (never as passed).
"""

from __future__ import annotations

import dataclasses
import json
import platform

import numpy as np
import pytest
import torch
from torch import nn

from dualrate.exporter.checkpoint import make_config, save_checkpoint
from dualrate.exporter.errors import BackendUnavailableError, BadInputError
from dualrate.exporter.export import ExportOptions
from dualrate.exporter.model_config import preset
from dualrate.exporter.model_pair import DualRateModel, feature, features
from dualrate.exporter.spec import GraphIO, GuidanceSpec, TensorIO
from dualrate.exporter.spec_builder import SamplerOptions
from dualrate.targets.base import Compiled, get_target
from tests.conftest import run_cli, tiny_pair
from tests.custom_pair import named_pair
from dualrate.validation.export_check import export_bundle

pytest.importorskip("coremltools", reason="coremltools is not installed: pip install 'dualrate[coreml]'")

from dualrate.targets.coreml_backend import (TARGET, PortableGroupNorm, check_fp16_preflight, convert_graph,  # noqa: E402
                                             coreml_names, coreml_rows, fp16_preflight, inspect_package,
                                             portable_module)
from dualrate.targets.coreml_quantize import COMPRESSED_PRECISIONS, package_sizes  # noqa: E402
from dualrate.targets.int8_layers import EMBEDDING, FIRST, LAST  # noqa: E402

pytestmark = pytest.mark.slow
# guidance at every step: graph calls carry 2x rows, so the enumerated batch must include them
OPTS = ExportOptions(sampler=SamplerOptions(num_steps=4, guidance=2.0, refresh_params={"k": 2, "phase": 0}),
                     golden_seeds=(0,))
ON_MAC = platform.system() == "Darwin"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_checkpoint):
    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("coreml") / "bundle", OPTS).bundle


@pytest.fixture(scope="module")
def compiled(bundle):
    return {p: TARGET.compile(bundle, p) for p in ("fp32", "fp16")}


def test_registry_and_batch_rows(bundle):
    assert get_target("coreml") is TARGET and TARGET.available() is None
    assert coreml_rows(bundle.spec, bundle.manifest) == [1, 2, 4, 8, 16]      # 2x rows + golden rows (4)
    unguided = dataclasses.replace(bundle.spec, guidance=GuidanceSpec())
    assert coreml_rows(unguided, {}) == [1, 2, 4, 8]                          # no guidance: rows = samples
    static = dataclasses.replace(bundle.spec, model=dataclasses.replace(
        bundle.spec.model, encoder=_fixed(bundle.spec.model.encoder, 6)))
    assert coreml_rows(static, bundle.manifest) == [6]
    with pytest.raises(BadInputError, match="positive sample counts"):
        coreml_rows(bundle.spec, {}, batch_sizes=[0])


def test_both_graphs_convert_with_torch_export_and_record_it(bundle, compiled):
    for precision, c in compiled.items():
        rec = json.loads((c.path / "compile.json").read_text())
        assert rec["requested_precision"] == rec["effective_precision"] == precision
        if platform.system() == "Linux":
            assert rec["device"] == "coreml (not executed on Linux)"
        assert rec["batch_rows"] == [1, 2, 4, 8, 16] and rec["batch_shapes"] == "enumerated"
        assert rec["minimum_deployment_target"] == "macOS15"
        for graph in ("encoder", "denoiser"):
            assert rec["conversion"][graph]["path"] == "torch.export"
            assert rec["conversion"][graph]["first_error"] is None
            assert any(f.startswith(f"{graph}.mlpackage/") for f in rec["files"])
        assert rec["source_checkpoint"]["sha256"] == bundle.manifest["source_checkpoint"]["sha256"]
        assert rec["converted_from"] == f"checkpoint tiny sha256 {bundle.manifest['source']['sha256']}"
        assert rec["compile_options"] == {} and sorted(rec["graph_batch_rows"]) == ["denoiser", "encoder"]
        assert rec["rewrites"]["GroupNorm as reshape-mean arithmetic (batch axis -1)"] > 0
    pre = compiled["fp16"].record["fp16_preflight"]
    assert pre["verdict"] == "ok" and set(pre["graphs"]) == {"encoder", "denoiser"}
    assert 0 < pre["graphs"]["denoiser"]["max_abs"] < 1e3 and pre["graphs"]["encoder"]["calls"] >= 1
    assert compiled["fp32"].record["fp16_preflight"] is None
    # the log-SNR embedding's sin/cos arguments stay fp32 inside the fp16 program
    assert all(compiled["fp16"].record["conversion"][g]["fp32_ops_in_fp16"] > 0 for g in ("encoder", "denoiser"))


def test_structural_checks_pass_on_the_tiny_bundle(bundle, compiled):
    for precision, c in compiled.items():
        checks = TARGET.structural_checks(bundle, c)
        assert len(checks) == 12, checks
        failed = [ch for ch in checks if not ch["passed"]]
        assert not failed, failed
        detail = {ch["name"]: ch["detail"] for ch in checks}
        assert "'z', 'logsnr', 'logsnr_ctx', 'class_id', 'feat0', 'feat1'" in detail["denoiser: I/O names"]
        assert "batch rows [1, 2, 4, 8, 16]" in detail["encoder: I/O shapes"]
        assert "conv" in detail["denoiser: op inventory"] and "softmax" in detail["encoder: op inventory"]
        assert ("FLOAT16" in detail["denoiser: precision"]) == (precision == "fp16")
    info = inspect_package(compiled["fp16"].path / "encoder.mlpackage")
    assert info["inputs"][2]["name"] == "class_id" and info["inputs"][2]["dtype"] == "INT32"
    assert sorted(info["inputs"][2]["enumerated"]) == [[1], [2], [4], [8], [16]]
    assert info["trig_input_dtypes"] == ["FLOAT32", "FLOAT32"] and info["dtypes"]["FLOAT16"] > 100


def test_structural_checks_fail_closed(bundle, compiled):
    c = compiled["fp32"]
    wrong_rows = TARGET.structural_checks(bundle, Compiled(c.path, {**c.record, "batch_rows": [1, 2]}))
    assert {ch["name"] for ch in wrong_rows if not ch["passed"]} == {"encoder: I/O shapes", "denoiser: I/O shapes"}
    claimed_fp16 = TARGET.structural_checks(bundle, Compiled(c.path, {**c.record, "effective_precision": "fp16",
                                                                      "graph_precisions": {"encoder": "fp16",
                                                                                           "denoiser": "fp16"}}))
    bad = [ch for ch in claimed_fp16 if not ch["passed"]]
    assert {ch["name"] for ch in bad} == {"encoder: precision", "denoiser: precision"}
    assert "no fp16 tensors" in bad[0]["detail"]
    renamed = dataclasses.replace(bundle, spec=dataclasses.replace(bundle.spec, model=dataclasses.replace(
        bundle.spec.model, encoder=GraphIO(bundle.spec.model.encoder.inputs,
                                           tuple(dataclasses.replace(t, name=t.name.upper())
                                                 for t in bundle.spec.model.encoder.outputs)))))
    assert not next(ch for ch in TARGET.structural_checks(renamed, c) if ch["name"] == "encoder: I/O names")["passed"]


@pytest.mark.skipif(ON_MAC, reason="on macOS Core ML predicts; the runner test below covers it")
def test_numeric_checks_are_not_run_off_macos(bundle, compiled):
    reason = TARGET.numeric_unavailable()
    assert reason.startswith("Core ML prediction requires macOS (this is ") and "not run" in reason
    with pytest.raises(BackendUnavailableError, match="requires macOS") as exc:
        TARGET.open_runner(bundle, compiled["fp32"])
    assert exc.value.exit_code == 3


@pytest.mark.skipif(not ON_MAC or TARGET.numeric_unavailable() is not None,
                    reason=f"Core ML prediction unavailable: {TARGET.numeric_unavailable()}")
def test_coreml_matches_pytorch_on_recorded_inputs(bundle, compiled):
    from dualrate.validation.gates import gate_for
    from dualrate.validation.graph_parity import graph_level

    vectors = {f"{g}_io": bundle.golden(f"{g}_io") for g in bundle.graph_names()}
    for precision, c in compiled.items():
        runner = TARGET.open_runner(bundle, c)
        results = graph_level(runner, vectors, gate_for(c.effective_precision))
        assert all(r.passed for r in results), [r.to_dict() for r in results if not r.passed]


class DataDependent(nn.Module):
    """Python control flow on a tensor's value: torch.export cannot guard on it, tracing bakes the branch."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, z, logsnr, class_id):
        h = self.conv(z)
        if float(h.abs().max()) > 1e6:
            h = h / 1e6
        return (h * logsnr[:, None, None, None],)


SMALL_IO = GraphIO(inputs=(TensorIO("z", ("batch", 1, 8, 8), "float32"), TensorIO("logsnr", ("batch",), "float32"),
                           TensorIO("class_id", ("batch",), "int64")),
                   outputs=(TensorIO("feat0", ("batch", 4, 8, 8), "float32"),))


def test_falls_back_to_tracing_when_torch_export_rejects_a_module(tmp_path):
    example = (torch.randn(2, 1, 8, 8), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    mlmodel, info = convert_graph(DataDependent().eval(), example, SMALL_IO, [1, 2, 4])
    assert info["path"] == "torch.jit.trace"
    assert info["first_error"].startswith("GuardOnDataDependentSymNode")
    assert list(info["failed_paths"]) == ["torch.export"]
    mlmodel.save(str(tmp_path / "dd.mlpackage"))
    pkg = inspect_package(tmp_path / "dd.mlpackage")
    assert [f["name"] for f in pkg["inputs"]] == ["z", "logsnr", "class_id"] and pkg["outputs"][0]["name"] == "feat0"
    assert sorted(pkg["inputs"][0]["enumerated"]) == [[1, 1, 8, 8], [2, 1, 8, 8], [4, 1, 8, 8]]


class NoCoreMLOp(nn.Module):
    """lgamma has no Core ML conversion on either path."""

    def forward(self, z, logsnr, class_id):
        return (torch.lgamma(z.abs() + 1) * logsnr[:, None, None, None],)


def test_every_path_failing_is_one_clear_error():
    example = (torch.randn(2, 1, 8, 8), torch.zeros(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(BadInputError, match=r"failed on every capture path: torch\.export: NotImplementedError: "
                                            r".*lgamma.*; torch\.jit\.trace: NotImplementedError: .*'lgamma'"):
        convert_graph(NoCoreMLOp(), example, SMALL_IO, [1, 2])
    with pytest.raises(BadInputError, match="conversion order"):
        convert_graph(NoCoreMLOp(), example, SMALL_IO, [1, 2], order=("onnx",))
    with pytest.raises(BadInputError, match="iOS 18 / macOS 15"):
        convert_graph(NoCoreMLOp(), example, SMALL_IO, [1, 2], deployment_target="macOS13")
    with pytest.raises(BadInputError, match="example batch 2 must be one of the batch rows"):
        convert_graph(NoCoreMLOp(), example, SMALL_IO, [1, 4])


def test_portable_group_norm_is_group_norm(pair):
    encoder, swapped = portable_module(pair.bound_encoder())
    assert swapped == 10 and not any(isinstance(m, nn.GroupNorm) for m in encoder.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in pair.encoder.modules())     # the original is untouched
    example = (torch.randn(4, 1, 8, 8), torch.linspace(-5, 5, 4), torch.arange(4))
    with torch.no_grad():
        for got, want in zip(encoder(*example), pair.bound_encoder()(*example)):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    gn = nn.GroupNorm(4, 16)
    with torch.no_grad():
        gn.weight.normal_()
        gn.bias.normal_()
    x = torch.randn(3, 16, 5, 7) * 3 + 1
    torch.testing.assert_close(PortableGroupNorm(gn)(x), gn(x), rtol=1e-5, atol=1e-5)


def test_fp16_preflight_flags_overflow_and_refuses():
    class Amplifier(nn.Module):
        def __init__(self, gain: float):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.gain = gain

        def forward(self, x):
            return self.lin(x) * 0 + self.gain * torch.ones_like(x)

    calls = {"encoder": [{"x": np.ones((2, 4), np.float32)}], "denoiser": [{"x": np.ones((2, 4), np.float32)}]}
    report = fp16_preflight({"encoder": Amplifier(1e5), "denoiser": Amplifier(2e4)}, calls,
                            {"encoder": ["x"], "denoiser": ["x"]})
    assert report["verdict"] == "overflow"
    assert report["overflow"] == ["encoder:encoder reaches 1e+05"]
    assert report["near_limit"] == ["denoiser:denoiser reaches 2e+04"]
    assert report["graphs"]["encoder"]["module"] == "encoder" and report["graphs"]["denoiser"]["max_abs"] == 2e4
    with pytest.raises(BadInputError, match=r"beyond fp16's largest value 65504.*--precision fp32.*allow_fp16_overf"):
        check_fp16_preflight(report)
    check_fp16_preflight(report, allow_overflow=True)


def test_checkpoint_must_be_the_one_the_bundle_came_from(bundle, tmp_path):
    other = tmp_path / "other"
    save_checkpoint(tiny_pair(seed=1), make_config({"family": "dr-uvit", **preset("tiny").to_dict()}), other)
    with pytest.raises(BadInputError, match=r"has sha256 .*, but bundle .* was exported from tiny with sha256"):
        TARGET.compile_into(bundle, TARGET.plan(bundle, "fp32"), tmp_path, checkpoint=other)
    with pytest.raises(BadInputError, match=r"the checkpoint given, .*missing, is not there; pass checkpoint=PATH"):
        TARGET.compile_into(bundle, TARGET.plan(bundle, "fp32"), tmp_path, checkpoint=tmp_path / "missing")
    assert not list(tmp_path.glob("*.mlpackage"))


def test_cli_compile_refuses_a_python_bundle_without_the_model(named):
    _, bundle = named
    res = run_cli("compile", str(bundle.path), "--target", "coreml")
    assert res.returncode == 2, (res.stdout, res.stderr)
    assert "exported from a Python model" in res.stderr and "model=model" in res.stderr
    assert "Traceback" not in res.stderr


def test_cli_compile_reuses_the_cache(bundle, compiled):
    res = run_cli("compile", str(bundle.path), "--target", "coreml")
    assert res.returncode == 0, res.stderr
    assert "effective fp32" in res.stdout and "Traceback" not in res.stderr


# -- compressed weights (coremltools.optimize): structure and size here, numerics on macOS ---------------------
# one mixed plan covers palettize6 and palettize8 (and the per-graph plan path) in a single compile
COMPRESSED = ("int8-weights", "palettize4", "encoder=palettize6,denoiser=palettize8")


@pytest.fixture(scope="module")
def compressed(bundle):
    return {p: TARGET.compile(bundle, p) for p in COMPRESSED}


def _weights(c: Compiled, graph: str) -> int:
    return package_sizes(c.path / f"{graph}.mlpackage")["weight_bytes"]


def test_compressed_precisions_compile_per_graph_and_pass_structural_checks(bundle, compressed):
    assert set(COMPRESSED_PRECISIONS) <= set(TARGET.precisions)
    plans = {"int8-weights": {"encoder": "int8-weights", "denoiser": "int8-weights"},
             "palettize4": {"encoder": "palettize4", "denoiser": "palettize4"},
             COMPRESSED[2]: {"encoder": "palettize6", "denoiser": "palettize8"}}
    for plan, c in compressed.items():
        assert c.graph_precisions == plans[plan] and c.effective_precision == plan
        assert c.path.name == f"coreml-{'encoder-palettize6.denoiser-palettize8' if ',' in plan else plan}"
        checks = TARGET.structural_checks(bundle, c)
        assert len(checks) == 20, [ch["name"] for ch in checks]          # 6 + 4 compression checks per graph
        assert not [ch for ch in checks if not ch["passed"]], [ch for ch in checks if not ch["passed"]]
        for graph, precision in plans[plan].items():
            method, bits = COMPRESSED_PRECISIONS[precision]
            info = inspect_package(c.path / f"{graph}.mlpackage")["compression"]
            ops = "constexpr_lut_to_dense" if method == "palettize" else "constexpr_blockwise_shift_scale"
            assert info["constexpr_ops"][ops] > 5 and set(info["constexpr_ops"]) == {ops}
            assert set(info["payload_dtypes"]) == {"INT8" if method == "linear" else f"UINT{bits}"}
            assert info["activation_quant_ops"] == {"dequantize": 0, "quantize": 0}
            rec = c.record["compression"][graph]
            kept = rec["float_layers"]
            # sensitive layers stay float, found from the program's structure
            assert list(kept.values()).count(FIRST) == 1
            assert sum(w.startswith(LAST.format("")) for w in kept.values()) == \
                len(bundle.spec.model.graphs()[graph].outputs)
            assert list(kept.values()).count(EMBEDDING) >= 4
            assert all(info["weight_source"][name] == "float" for name in kept)
            print(f"{plan} {graph}: {info['constexpr_ops']} payload {info['payload_dtypes']}, "
                  f"{len(kept)} float layers")
        # inspecting read the packages without touching them: the cache still verifies
        assert TARGET.compile(bundle, plan).record == c.record


def test_compressed_packages_are_measurably_smaller(bundle, compiled, compressed):
    """Sizes on disk, measured here against the fp32 packages of the same bundle.

    The whole package shrinks less than the 4x / 8x of the compressed tensors themselves: the tiny
    model's float layers (conditioning embedding, first and last layers) hold a quarter (encoder) to
    a half (denoiser) of its weight bytes, and the program text is a fixed ~160 kB per package.
    """
    fp32 = compiled["fp32"]
    for graph in bundle.graph_names():
        float_pkg = package_sizes(fp32.path / f"{graph}.mlpackage")
        sizes = {}
        for plan, c in compressed.items():
            precision = c.graph_precisions[graph]
            rec = c.record["compression"][graph]
            assert rec["float_weight_bytes"] == float_pkg["weight_bytes"]      # the same fp32 program, re-measured
            got = package_sizes(c.path / f"{graph}.mlpackage")
            assert got == {k: rec[k] for k in got}
            # the compressed tensors alone: their fp32 bytes over what they take now
            elements = inspect_package(c.path / f"{graph}.mlpackage")["compression"]["compressed_elements"]
            now = 4 * elements - (float_pkg["weight_bytes"] - got["weight_bytes"])
            sizes[precision] = (got["weight_bytes"], float_pkg["package_bytes"] / got["package_bytes"],
                                4 * elements / now)
            print(f"{graph} {precision}: weights {got['weight_bytes']} B vs fp32 {float_pkg['weight_bytes']} B, "
                  f"package {got['package_bytes']} B vs {float_pkg['package_bytes']} B "
                  f"({sizes[precision][1]:.2f}x), compressed tensors {sizes[precision][2]:.2f}x smaller")
        assert sizes["int8-weights"][2] >= 3.5 and sizes["palettize4"][2] >= 6.0
        assert sizes["int8-weights"][1] >= 1.5 and sizes["palettize4"][1] > sizes["int8-weights"][1]
        other = "palettize6" if graph == "encoder" else "palettize8"
        assert sizes["palettize4"][0] < sizes[other][0]
        if other == "palettize6":
            assert sizes["palettize6"][0] < sizes["int8-weights"][0]


def test_compression_checks_fail_closed(bundle, compiled, compressed):
    int8w, fp32 = compressed["int8-weights"], compiled["fp32"]
    as_pal4 = TARGET.structural_checks(bundle, Compiled(int8w.path, {**int8w.record, "graph_precisions": {
        "encoder": "palettize4", "denoiser": "int8-weights"}}))
    bad = {ch["name"]: ch["detail"] for ch in as_pal4 if not ch["passed"]}
    assert "encoder: compressed weights" in bad and all(n.startswith("encoder: ") for n in bad), bad
    assert "no constexpr_lut_to_dense ops" in bad["encoder: compressed weights"]
    assert "constexpr_blockwise_shift_scale ops, which palettize4 does not make" in bad["encoder: compressed weights"]
    # an fp32 package claimed as int8-weights: nothing compressed, and no float size to compare with
    as_int8 = TARGET.structural_checks(bundle, Compiled(fp32.path, {**fp32.record, "graph_precisions": {
        "encoder": "int8-weights", "denoiser": "fp32"}}))
    assert {ch["name"] for ch in as_int8 if not ch["passed"]} == {"encoder: compressed weights",
                                                                  "encoder: on-disk size"}
    # a layer the record says is float but reads compressed weights
    rec = json.loads(json.dumps(int8w.record))
    compressed_layer = next(n for n, s in inspect_package(int8w.path / "denoiser.mlpackage")["compression"][
        "weight_source"].items() if s == "compressed")
    rec["compression"]["denoiser"]["float_layers"][compressed_layer] = "claimed float"
    bad = [ch for ch in TARGET.structural_checks(bundle, Compiled(int8w.path, rec)) if not ch["passed"]]
    assert [ch["name"] for ch in bad] == ["denoiser: float layers"]
    assert f"{compressed_layer} (claimed float) reads compressed weights" in bad[0]["detail"]


def test_sensitive_layers_can_be_compressed_too(bundle, compressed, tmp_path):
    with pytest.raises(BadInputError, match="sensitive_layers 'int4': choose float or compressed"):
        TARGET.compile(bundle, "int8-weights", sensitive_layers="int4")
    c = TARGET.compile(bundle, "encoder=int8-weights,denoiser=fp32", sensitive_layers="compressed")
    rec, default = c.record["compression"]["encoder"], compressed["int8-weights"].record["compression"]["encoder"]
    assert rec["float_layers"] == {} and rec["sensitive_layers"] == default["float_layers"]
    assert list(c.record["compression"]) == ["encoder"] and c.graph_precisions["denoiser"] == "fp32"
    checks = {ch["name"]: ch for ch in TARGET.structural_checks(bundle, c)}
    assert all(ch["passed"] for ch in checks.values()), [ch for ch in checks.values() if not ch["passed"]]
    assert "sensitive layers are compressed as asked" in checks["encoder: float layers"]["detail"]
    sources = inspect_package(c.path / "encoder.mlpackage")["compression"]["weight_source"]
    assert all(sources[name] == "compressed" for name in rec["sensitive_layers"])
    assert rec["weight_bytes"] < default["weight_bytes"]
    print(f"encoder int8-weights, sensitive layers compressed: weights {rec['weight_bytes']} B "
          f"(float: {default['weight_bytes']} B, fp32 {rec['float_weight_bytes']} B)")


def test_the_same_compile_gives_the_same_bytes(bundle, compressed):
    """k-means palettes, protobuf maps and package identifiers: a recompile in another process (other hash
    seeds) writes byte-identical packages."""
    before = compressed["palettize4"].record["files"]
    res = run_cli("compile", str(bundle.path), "--target", "coreml", "--precision", "palettize4", "--force")
    assert res.returncode == 0, res.stderr
    after = json.loads((compressed["palettize4"].path / "compile.json").read_text())["files"]
    assert after == before and any(f.endswith("model.mlmodel") for f in after)


@pytest.mark.skipif(ON_MAC, reason="on macOS Core ML predicts and calibrates int8 activations")
def test_int8_activations_are_unavailable_off_macos_and_numerics_not_run(bundle, compressed, tmp_path):
    for plan in ("int8", "encoder=int8,denoiser=int8-weights"):
        with pytest.raises(BackendUnavailableError, match=r"Core ML int8 \(weights and activations\) for encoder"
                                                          r".*linear_quantize_activations.*requires macOS") as exc:
            TARGET.compile(bundle, plan)
        assert exc.value.exit_code == 3
    assert not bundle.target_dir("coreml", "int8").exists()
    res = run_cli("compile", str(bundle.path), "--target", "coreml", "--precision", "int8")
    assert res.returncode == 3 and "requires macOS" in res.stderr and "Traceback" not in res.stderr, res.stderr
    for c in compressed.values():
        with pytest.raises(BackendUnavailableError, match="requires macOS"):
            TARGET.open_runner(bundle, c)


# -- a bundle exported from Python: other input names, nested dict features, a decoder ----------------------
class Enc(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.label = nn.Conv2d(2, 8, 3, padding=1), nn.Embedding(4, 8)
        self.norm = nn.GroupNorm(2, 8)

    def forward(self, x, noise_level, label):
        freqs = torch.arange(1, 5, dtype=torch.float32) * 3.14159
        arg = noise_level[:, None] * freqs
        emb = torch.cat([torch.sin(arg), torch.cos(arg)], 1) + self.label(label)
        h = torch.tanh(self.norm(self.conv(x)) + emb[:, :, None, None])
        return {"mid": h, "down": [nn.functional.avg_pool2d(h, 2)]}          # features "mid", "down.0"


class Den(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2 + 16, 2, 3, padding=1)

    def forward(self, x, noise_level, cached_level, label, mid, down):
        scale = (1 + noise_level - cached_level)[:, None, None, None]
        return self.conv(torch.cat([x, mid * scale, nn.functional.interpolate(down[0], scale_factor=2.0)], 1))


def named_model(seed: int = 0) -> DualRateModel:
    torch.manual_seed(seed)
    return named_pair(Enc(), Den(), {"mid": feature("mid"), "down": features("down.*")})


@pytest.fixture(scope="module")
def named(tmp_path_factory):
    model = named_model()
    return model, export_bundle(model, tmp_path_factory.mktemp("coreml-named") / "bundle", OPTS).bundle


def test_a_python_bundle_converts_every_graph_from_the_model(named):
    model, bundle = named
    assert bundle.graph_names() == ["encoder", "denoiser", "decoder"] and bundle.manifest["source_checkpoint"] is None
    sha = bundle.manifest["source"]["sha256"]
    compiled = TARGET.compile(bundle, "fp16", model=model)
    rec = compiled.record
    assert rec["converted_from"] == f"python model sha256 {sha}" and rec["source_checkpoint"] is None
    assert rec["source"] == {"kind": "python", "name": bundle.manifest["source"]["name"], "sha256": sha}
    # where the modules came from is pinned by the manifest's sha256, not part of the cache key: the
    # same compile serves a later call without the model (the CLI)
    assert rec["compile_options"] == {}
    assert json.loads((compiled.path / "compile.json").read_text())["compile_options"] == {}
    assert TARGET.compile(bundle, "fp16").path == compiled.path
    assert set(rec["conversion"]) == {"encoder", "denoiser", "decoder"}
    assert all(c["path"] == "torch.export" for c in rec["conversion"].values())
    assert set(rec["fp16_preflight"]["graphs"]) == {"encoder", "denoiser", "decoder"}
    assert rec["graph_batch_rows"]["decoder"] == rec["batch_rows"]
    checks = TARGET.structural_checks(bundle, compiled)
    assert len(checks) == 18 and not [c for c in checks if not c["passed"]], checks
    detail = {ch["name"]: ch["detail"] for ch in checks}
    # Core ML names are identifiers: "down.0" is "down_0" in the packages, and the checks expect exactly that
    assert coreml_names(bundle.spec.model.encoder) == {"x": "x", "noise_level": "noise_level", "label": "label",
                                                       "mid": "mid", "down.0": "down_0"}
    assert rec["conversion"]["encoder"]["renamed"] == rec["conversion"]["denoiser"]["renamed"] == {"down.0": "down_0"}
    assert "inputs ['x', 'noise_level', 'cached_level', 'label', 'mid', 'down_0']" in detail["denoiser: I/O names"]
    assert "outputs ['mid', 'down_0']" in detail["encoder: I/O names"]
    assert "inputs ['latent'], outputs ['decoded']" in detail["decoder: I/O names"]
    # the same model again: the cache is reused
    again = TARGET.compile(bundle, "fp16", model=named_model())
    assert again.record == rec
    wrong_rows = TARGET.structural_checks(bundle, Compiled(compiled.path, {**rec, "batch_rows": [1, 2]}))
    assert {c["name"] for c in wrong_rows if not c["passed"]} == {f"{g}: I/O shapes" for g in bundle.graph_names()}
    if not ON_MAC:
        with pytest.raises(BackendUnavailableError, match="requires macOS"):
            TARGET.open_runner(bundle, compiled)


def test_a_python_bundle_needs_its_own_model(named, bundle, tmp_path):
    model, pybundle = named
    with pytest.raises(BadInputError, match=r"exported from a Python model \(Enc\+Den\+LatentDecoder, weights sha256 .*\), not "
                                            r"a checkpoint: pass that model, dualrate\.compile\(bundle, "
                                            r"target='coreml', model=model\)"):
        TARGET.compile(pybundle, "fp32")
    with pytest.raises(BadInputError, match=r"model= has weights sha256 .*, but bundle .* was exported from "
                                            r"Enc\+Den\+LatentDecoder with sha256 .*; pass the model the bundle was exported"):
        TARGET.compile(pybundle, "fp32", model=named_model(seed=1))
    with pytest.raises(BadInputError, match="model= is a str; expected the dualrate.DualRateModel"):
        TARGET.compile(pybundle, "fp32", model="model.pt")
    with pytest.raises(BadInputError, match="pass model= or checkpoint=, not both"):
        TARGET.compile_into(pybundle, TARGET.plan(pybundle, "fp32"), tmp_path, model=model, checkpoint=tmp_path)
    # a checkpoint's bundle: the model's weights are not the checkpoint's sha256, so the checkpoint is the way
    with pytest.raises(BadInputError, match=r"was exported from the checkpoint tiny: pass checkpoint=PATH"):
        TARGET.compile_into(bundle, TARGET.plan(bundle, "fp32"), tmp_path, model=model)
    assert not list(tmp_path.glob("*.mlpackage")) and not pybundle.target_dir("coreml", "fp32").exists()


@pytest.mark.skipif(not ON_MAC or TARGET.numeric_unavailable() is not None,
                    reason=f"Core ML prediction unavailable: {TARGET.numeric_unavailable()}")
def test_coreml_matches_pytorch_on_every_graph_of_a_python_bundle(named):
    from dualrate.validation.gates import gate_for
    from dualrate.validation.graph_parity import graph_level

    model, bundle = named
    compiled = TARGET.compile(bundle, "fp32", model=model)
    runner = TARGET.open_runner(bundle, compiled)
    vectors = {f"{g}_io": bundle.golden(f"{g}_io") for g in bundle.graph_names()}
    results = graph_level(runner, vectors, gate_for("fp32"))
    assert {r.graph for r in results} == {"encoder", "denoiser", "decoder"}
    assert all(r.passed for r in results), [r.to_dict() for r in results if not r.passed]


def test_coreml_names_are_identifiers_and_unique():
    io = GraphIO((TensorIO("z", ("batch", 1), "float32", "sample"), TensorIO("a.b", ("batch", 1), "float32"),
                  TensorIO("a_b", ("batch", 1), "float32"), TensorIO("0.x", ("batch", 1), "float32")),
                 (TensorIO("out-put", ("batch", 1), "float32"),))
    assert coreml_names(io) == {"z": "z", "a.b": "a_b_1", "a_b": "a_b", "0.x": "_0_x", "out-put": "out_put"}


def _fixed(gio: GraphIO, rows: int) -> GraphIO:
    def fix(t):
        return dataclasses.replace(t, shape=tuple(rows if d == "batch" else d for d in t.shape))
    return GraphIO(tuple(map(fix, gio.inputs)), tuple(map(fix, gio.outputs)))
