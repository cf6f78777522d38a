"""int8 and int8-weights on ONNX Runtime and OpenVINO, per-graph precision plans, and their bad input.

Real quantizers throughout (``onnxruntime.quantization``, NNCF), calibrated on the bundle's own sampler.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import dualrate as dr
from dualrate.exporter.bundle import open_bundle
from dualrate.exporter.errors import BadInputError
from dualrate.targets.base import get_target
from dualrate.targets.precision_plan import parse_plan
from tests import hostile_bundle as hb
from tests.conftest import DEFAULT_CHECKPOINT, run_cli

HAVE_OPENVINO = importlib.util.find_spec("openvino") is not None and importlib.util.find_spec("nncf") is not None
needs_openvino = pytest.mark.skipif(not HAVE_OPENVINO, reason="openvino and nncf are not installed")


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory):
    """A private copy of the shared tiny bundle (guided, 8 steps, refresh every 3): these tests compile a lot."""
    return open_bundle(hb.clone(tiny_bundle.path, tmp_path_factory.mktemp("int8") / "bundle"))


def disk_size(compiled, graph: str) -> int:
    return sum(p.stat().st_size for p in compiled.path.iterdir() if p.name.split(".")[0] == graph)


def onnx_ops(path: Path) -> dict[str, int]:
    from collections import Counter
    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node))


# -- plans ---------------------------------------------------------------------------------------------------------

def test_plans_parse_and_name_their_cache_folder(bundle):
    graphs = bundle.graph_names()
    plan = parse_plan("encoder=int8", graphs, allowed=("fp32", "int8"))
    assert plan.as_dict() == {"encoder": "int8", "denoiser": "fp32"} and plan.uniform is None
    assert plan.name == "encoder-int8.denoiser-fp32" and plan.text == "encoder=int8,denoiser=fp32"
    assert parse_plan({"denoiser": "int8"}, graphs).as_dict() == {"encoder": "fp32", "denoiser": "int8"}
    assert parse_plan("int8", graphs).name == "int8"
    assert bundle.target_dir("onnxruntime", plan) == bundle.path / "targets" / "onnxruntime-encoder-int8.denoiser-fp32"
    ort = get_target("onnxruntime")
    for bad in ("int4", "encoder=int4", "decoder=int8", "encoder=int8,encoder=fp32", "encoder", "encoder=", ""):
        with pytest.raises(BadInputError):
            ort.plan(bundle, bad)


@pytest.mark.parametrize("precision, words", [("encoder=int4", "int4"), ("decoder=int8", "decoder"),
                                              ("int3", "int3"), ("encoder=int8,,", "GRAPH=PRECISION")])
def test_bad_plans_exit_2_through_the_cli_and_write_nothing(bundle, precision, words):
    before = sorted(p.name for p in (bundle.path / "targets").glob("*")) if (bundle.path / "targets").exists() else []
    res = run_cli("compile", str(bundle.path), "--target", "onnxruntime", "--precision", precision)
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in res.stderr, res.stderr
    after = sorted(p.name for p in (bundle.path / "targets").glob("*")) if (bundle.path / "targets").exists() else []
    assert after == before


def test_non_finite_calibration_is_bad_input_and_writes_nothing(tiny_bundle, tmp_path):
    root = hb.clone(tiny_bundle.path, tmp_path / "nan")

    def poison(model):     # one denoiser weight NaN: its outputs (and activation ranges) go non-finite
        init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims or [1])))
        arr = onnx.numpy_helper.to_array(init).copy()
        arr.flat[0] = np.nan
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
    hb.edit(root, "denoiser", poison)
    res = run_cli("compile", str(root), "--target", "onnxruntime", "--precision", "denoiser=int8")
    assert res.returncode == 2, res.stderr
    assert "non-finite" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not list((root / "targets").glob("onnxruntime-*")) if (root / "targets").exists() else True
    assert not [p for p in (root / "targets").glob(".*")] if (root / "targets").exists() else True


# -- ONNX Runtime ----------------------------------------------------------------------------------------------------

def test_ort_int8_is_qdq_smaller_finite_and_keeps_sensitive_layers_float(bundle):
    fp32 = dr.compile(bundle, target="onnxruntime", precision="fp32")
    c = dr.compile(bundle, target="onnxruntime", precision="int8")
    assert c.path.name == "onnxruntime-int8" and c.record["requested_precision"] == "int8"
    assert c.effective_precision == "int8" and c.graph_precisions == {"encoder": "int8", "denoiser": "int8"}
    for g in ("encoder", "denoiser"):
        q = c.record["quantization"][g]
        ops = onnx_ops(c.path / f"{g}.onnx")
        assert ops.get("QuantizeLinear", 0) > 0 and ops.get("DequantizeLinear", 0) > 0, ops
        assert q["int8_weight_tensors"] > 0 and q["calibration_calls"] > 0
        reasons = set(q["float_kept"].values())
        assert "first conv/linear" in reasons and any(r.startswith("last conv/linear") for r in reasons)
        assert "time/conditioning embedding or FiLM projection" in reasons
        table = q["sensitivity"]
        assert table["rows"] and all(r["weight_sqnr_db"] is not None for r in table["rows"])
        assert all(np.isfinite(v) for v in table["output_rel_l2"].values())
        ratio = disk_size(fp32, g) / disk_size(c, g)
        print(f"onnxruntime {g}: fp32 {disk_size(fp32, g)} B, int8 {disk_size(c, g)} B, {ratio:.2f}x smaller")
        assert ratio > 1.2          # the tiny graphs carry about as much graph structure as weights
    x = dr.sample(bundle, target="onnxruntime", precision="int8", conditioning=[1, 2], seed=0).x
    ref = dr.sample(bundle, target="onnxruntime", precision="fp32", conditioning=[1, 2], seed=0).x
    assert np.isfinite(x).all() and np.linalg.norm(x - ref) / np.linalg.norm(ref) < 0.5


def test_ort_int8_weights_quantizes_weights(bundle):
    c = dr.compile(bundle, target="onnxruntime", precision="int8-weights")
    assert c.graph_precisions == {"encoder": "int8-weights", "denoiser": "int8-weights"}
    for g in ("encoder", "denoiser"):
        assert c.record["quantization"][g]["int8_weight_tensors"] > 0
        assert onnx_ops(c.path / f"{g}.onnx").get("DequantizeLinear", 0) > 0
    x = dr.sample(bundle, target="onnxruntime", precision="int8-weights", conditioning=[3], seed=1).x
    assert np.isfinite(x).all()


def test_mixed_plan_names_each_graphs_precision(bundle):
    c = dr.compile(bundle, target="onnxruntime", precision={"encoder": "int8"})
    assert c.path.name == "onnxruntime-encoder-int8.denoiser-fp32"
    rec = json.loads((c.path / "compile.json").read_text())
    assert rec["graph_precisions"] == {"encoder": "int8", "denoiser": "fp32"}
    assert rec["effective_precision"] == "encoder=int8,denoiser=fp32"
    assert rec["requested_precision"] == "encoder=int8,denoiser=fp32"
    assert "denoiser" not in rec["quantization"]
    assert "QuantizeLinear" not in onnx_ops(c.path / "denoiser.onnx")
    # the same plan written as text reuses the cache
    again = dr.compile(bundle, target="onnxruntime", precision="encoder=int8,denoiser=fp32")
    assert again.record["files"] == rec["files"]


def test_ort_int8_artifacts_are_byte_identical_across_compiles(bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)            # the quantizer's scratch files go to temporary directories, not here
    first = dr.compile(bundle, target="onnxruntime", precision="int8", force=True).record["files"]
    second = dr.compile(bundle, target="onnxruntime", precision="int8", force=True).record["files"]
    assert first == second
    assert list(tmp_path.iterdir()) == []


def test_ort_quantizer_refuses_an_activation_encoding_it_has_no_pass_for(tmp_path):
    from dualrate.targets import ort_quantize

    args = (tmp_path / "in.onnx", tmp_path / "out.onnx", [], None, "encoder")
    with pytest.raises(ValueError, match="uint8 or int8"):
        ort_quantize.quantize_static_qdq(*args, activation="uint16")
    with pytest.raises(ValueError, match="sensitive='float'"):      # TensorRT has no 16-bit activations to give
        ort_quantize.quantize_static_qdq(*args, sensitive="int8-weights", activation="int8")


# -- OpenVINO --------------------------------------------------------------------------------------------------------

@needs_openvino
@pytest.mark.slow
def test_openvino_int8_and_int8_weights(bundle):
    import openvino as ov

    fp32 = dr.compile(bundle, target="openvino", precision="fp32")
    ref = dr.sample(bundle, target="openvino", precision="fp32", conditioning=[1, 2], seed=0).x
    for precision in ("int8", "int8-weights"):
        c = dr.compile(bundle, target="openvino", precision=precision)
        assert c.graph_precisions == {"encoder": precision, "denoiser": precision}
        for g in ("encoder", "denoiser"):
            q = c.record["graphs"][g]["quantization"]
            assert q["int8_weight_tensors"] > 0
            model = ov.Core().read_model(str(c.path / f"{g}.xml"))
            fq = sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
            assert (fq > 0) == (precision == "int8"), fq
            print(f"openvino {precision} {g}: fp32 {disk_size(fp32, g)} B, {disk_size(c, g)} B, "
                  f"{disk_size(fp32, g) / disk_size(c, g):.2f}x smaller")
        x = dr.sample(bundle, target="openvino", precision=precision, conditioning=[1, 2], seed=0).x
        assert np.isfinite(x).all() and np.linalg.norm(x - ref) / np.linalg.norm(ref) < 0.5


@needs_openvino
@pytest.mark.slow
def test_openvino_mixed_plan_and_determinism(bundle):
    first = dr.compile(bundle, target="openvino", precision="denoiser=int8", force=True)
    assert first.graph_precisions == {"encoder": "fp32", "denoiser": "int8"}
    assert first.record["graph_properties"]["denoiser"]["INFERENCE_PRECISION_HINT"] == "f32"
    second = dr.compile(bundle, target="openvino", precision="denoiser=int8", force=True)
    assert first.record["files"] == second.record["files"]


# -- the shipped digits model ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "bundle"
    res = run_cli("export", str(DEFAULT_CHECKPOINT), "-o", str(out), "--steps", "16", "--refresh-every", "4",
                  "--guidance", "2")
    assert res.returncode == 0, res.stderr
    return open_bundle(out)


def psnr(x: np.ndarray, ref: np.ndarray, data_range: float = 2.0) -> float:
    return float(10 * np.log10(data_range ** 2 / np.mean((x.astype(np.float64) - ref) ** 2)))


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_digits_int8_final_samples_close_to_fp32(digits, target):
    classes = list(range(10))
    ref = dr.sample(digits, target=target, precision="fp32", conditioning=classes, seed=0).x
    x = dr.sample(digits, target=target, precision="int8", conditioning=classes, seed=0).x
    fp32 = dr.compile(digits, target=target, precision="fp32")
    int8 = dr.compile(digits, target=target, precision="int8")
    sizes = {g: disk_size(fp32, g) / disk_size(int8, g) for g in ("encoder", "denoiser")}
    value = psnr(x, ref)
    print(f"digits {target} int8: final-sample PSNR {value:.2f} dB vs fp32; size ratios {sizes}")
    assert np.isfinite(x).all() and value >= 35.0
    assert all(r > 2.5 for r in sizes.values())
