"""``dualrate validate``: layers, references, gates, NOT RUN, self-test, reports via the CLI."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from dualrate.exporter.export import ExportOptions
from dualrate.exporter.spec_builder import SamplerOptions
from tests.conftest import run_cli
from tests.test_parity_ci import assert_margin
from dualrate.validation.export_check import export_bundle
from dualrate.validation.faults import FAULTS, bf16_round, self_test
from dualrate.validation.validate import LAYERS, ValidateOptions, validate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("v") / "bundle"
    opts = ExportOptions(sampler=SamplerOptions(num_steps=10, guidance=2.0, refresh_params={"k": 4, "phase": 0}))
    return export_bundle(tiny_checkpoint, out, opts).bundle.path


def _summary(doc):
    return [(layer["layer"], layer["status"]) for layer in doc["layers"]]


def test_all_layers_pass_and_both_references_agree(bundle):
    docs = {ref: validate(bundle, ValidateOptions(reference=ref))[0] for ref in ("torch", "golden")}
    for ref, doc in docs.items():
        assert doc["verdict"] == "PASSED" and doc["exit_code"] == 0, doc["first_failure"]
        assert doc["reference"] == ref
        assert _summary(doc) == [(name, "passed") for name in LAYERS[1:]]   # ORT has no structural layer
        assert doc["target"]["effective_precision"] == "fp32" and doc["gates"]["fp32"]["rel_l2"] == 1e-4
        assert doc["source"]["kind"] == "checkpoint" and doc["source"]["name"] == "tiny"
        assert doc["bundle"]["source_checkpoint_sha256"] == doc["source"]["sha256"]
    a, b = (docs[r]["layers"] for r in ("torch", "golden"))
    for la, lb in zip(a, b):
        assert [c["passed"] for c in la["checks"]] == [c["passed"] for c in lb["checks"]]
    free = next(layer for layer in docs["torch"]["layers"] if layer["layer"] == "free_running")
    assert all(c["metrics"]["psnr_db"] is None or c["metrics"]["psnr_db"] >= 60 for c in free["checks"])
    assert docs["torch"]["drift"]["refresh_steps"] == [0, 4, 8] and len(docs["torch"]["drift"]["rel_l2"]) == 10


def test_teacher_forced_covers_every_step_and_refresh(bundle):
    doc, _ = validate(bundle, ValidateOptions(reference="golden"))
    tf = {c["graph"] + "/" + c["output"]: c for c in next(l for l in doc["layers"] if l["layer"] == "teacher_forced")["checks"]}
    assert tf["denoiser/prediction"]["detail"]["steps"] == list(range(10))
    assert tf["encoder/feat0"]["detail"]["steps"] == [0, 4, 8]


def test_strict_gate_fails_and_names_layer_graph_output_and_tolerance(bundle, tmp_path):
    res = run_cli("validate", str(bundle), "--target", "onnxruntime", "--reference", "golden",
                  "--gate", "*:rel_l2=1e-12", "--json", str(tmp_path / "r.json"))
    assert res.returncode == 1, res.stdout + res.stderr
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith("FAILED") and "graph" in last and "encoder" in last and "feat0" in last
    doc = json.loads((tmp_path / "r.json").read_text())
    ff = doc["first_failure"]
    assert (ff["layer"], ff["graph"], ff["output"]) == ("graph", "encoder", "feat0")
    assert ff["min_atol_at_rtol"] > 0


def test_bad_gate_override_is_a_usage_error(bundle):
    res = run_cli("validate", str(bundle), "--target", "onnxruntime", "--gate", "*:psnr=3")
    assert res.returncode == 2 and "unknown field(s) ['psnr']" in res.stderr


def test_unavailable_backend_is_not_run_exit_3_and_skipped_in_junit(bundle, tmp_path):
    res = run_cli("validate", str(bundle), "--target", "tensorrt", "--junit", str(tmp_path / "j.xml"),
                  "--json", str(tmp_path / "r.json"))
    assert res.returncode == 3, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("NOT RUN")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["verdict"] == "NOT RUN" and all(layer["status"] == "not_run" for layer in doc["layers"])
    suite = ET.parse(tmp_path / "j.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert int(suite.get("skipped")) == int(suite.get("tests")) and int(suite.get("failures")) == 0


def test_cli_passes_and_writes_three_report_forms(bundle, tmp_path):
    res = run_cli("validate", str(bundle), "--target", "onnxruntime", "--report", str(tmp_path / "rep"),
                  "--junit", str(tmp_path / "j.xml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1] == "PASSED"
    doc = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert doc["verdict"] == "PASSED"
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "PASSED" in html and "<svg" in html
    pngs = sorted(p.name for p in (tmp_path / "rep").glob("*.png"))
    assert len(pngs) >= 3
    suite = ET.parse(tmp_path / "j.xml").getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    assert int(suite.get("failures")) == 0 and int(suite.get("tests")) >= 5


def test_reference_torch_with_the_wrong_checkpoint_is_refused(bundle, tmp_path):
    res = run_cli("init", "--config", "tiny", "-o", str(tmp_path / "other"), "--seed", "9")
    assert res.returncode == 0
    res = run_cli("validate", str(bundle), "--target", "onnxruntime", "--reference", "torch",
                  "--checkpoint", str(tmp_path / "other"))
    assert res.returncode == 2 and "the bundle was exported from" in res.stderr


def test_self_test_catches_every_planted_fault(bundle):
    res = self_test(bundle, ValidateOptions(reference="golden"))
    assert res["clean_verdict"] == "PASSED"
    assert [r["fault"] for r in res["faults"]] == list(FAULTS)
    missed = [r for r in res["faults"] if not r["caught"]]
    assert not missed, missed
    assert res["caught"] == res["applicable"] == 8 and res["passed"]
    layers = {r["fault"]: r["first_failure"]["layer"] for r in res["faults"]}
    assert layers["refresh_shifted"] in ("free_running", "refresh_audit")
    collapsed = next(r for r in res["faults"] if r["fault"] == "output_collapsed_gates_open")["first_failure"]
    assert any(w.startswith("tripwire: ") and "constant" in w for w in collapsed["reasons"]), collapsed


def test_self_test_cli(bundle):
    res = run_cli("validate", str(bundle), "--target", "onnxruntime", "--self-test", "--reference", "golden")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "PASSED: self-test caught 8 of 8 planted faults" in res.stdout
    assert res.stdout.count("CAUGHT") == 8


def test_bf16_rounding_is_bfloat16():
    import numpy as np
    # bf16 keeps 8 significant bits: the spacing at 1.0 is 2^-7
    x = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -9, 3.14159265], np.float32)
    got = bf16_round(x)
    assert got.tolist() == [1.0, 1.0, 1 + 2 ** -6, 1.0, 3.140625]   # ties go to even



# --------------------------------------------------------------------------- a Python model with a decoder

@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory):
    """A text-conditioned model with a stored null and an RGB decoder, exported from Python."""
    import dualrate
    from tests.test_bad_input_matrix import text_model

    model = text_model()
    out = tmp_path_factory.mktemp("t") / "bundle"
    return model, dualrate.export(model, out, steps=4, guidance=2.0, refresh_every=2)


def _layer(doc, name):
    return next(layer for layer in doc["layers"] if layer["layer"] == name)


def test_python_model_with_a_decoder_exports_its_source_and_three_graphs(text_bundle):
    model, res = text_bundle
    root = res.bundle.path
    assert {(r.graph, r.output) for r in res.parity} == {("encoder", "mid"), ("denoiser", "prediction"),
                                                         ("decoder", "decoded")}
    assert all(r.passed for r in res.parity)
    man = res.bundle.manifest
    assert man["source"] == {"kind": "python", "name": "TextEncoder+TextDenoiser+RGBDecoder",
                             "sha256": model.weights_sha256()}
    assert man["source_checkpoint"] is None
    assert {"decoder.onnx", "conditioning/text.null.npy", "golden/decoder_io.npz"} <= set(man["files"])
    np.testing.assert_array_equal(res.bundle.nulls()["text"], np.zeros((3, 5), np.float32))
    traj = res.bundle.golden("trajectory_seed0")
    assert traj["cond.text"].shape == (2, 3, 5) and traj["decoded"].shape == (2, 3, 8, 8)
    assert (root / "spec.json").is_file() and res.bundle.spec.model.decoder.scaling_factor == 0.5


def test_python_model_with_a_decoder_validates_and_the_report_shows_the_decoded_grid(text_bundle, tmp_path):
    import dualrate

    model, res = text_bundle
    for reference in (model, "golden"):
        report = dualrate.validate(res.bundle, reference=reference)
        doc = report.doc
        assert report.verdict == "PASSED", report.summary()
        assert doc["reference"] == ("torch" if reference is model else "golden")
        assert doc["source"] == res.bundle.manifest["source"] and doc["bundle"]["source_checkpoint_sha256"] is None
        assert ("decoder", "decoded") in {(c["graph"], c["output"]) for c in _layer(doc, "graph")["checks"]}
        decoded = [c for c in _layer(doc, "free_running")["checks"] if c["graph"] == "decoder"]
        assert [c["output"] for c in decoded] == ["decoded[trajectory_seed0]", "decoded[trajectory_seed1]"]
        assert all(c["passed"] and c["metrics"]["rel_l2"] <= 1e-4 for c in decoded)
        # fp32 gates from the model's own error, decoder included, and ONNX Runtime well inside them
        assert doc["gates"]["kind"] == "floor-calibrated" and "decoded" in doc["gates"]["per_check"]
        assert_margin(doc, 2.0)
        # the whole golden batch: both trajectories' decoded samples
        assert report.arrays["reference_decoded"].shape == report.arrays["backend_decoded"].shape == (4, 3, 8, 8)
    html = report.save(tmp_path / "rep").read_text()
    assert "<h2>Decoded output</h2>" in html and 'src="decoded_reference.png"' in html
    assert "Python model TextEncoder+TextDenoiser+RGBDecoder" in html and model.weights_sha256() in html
    assert sorted(p.name for p in (tmp_path / "rep").glob("decoded_*.png")) == [
        "decoded_backend.png", "decoded_heatmap.png", "decoded_reference.png"]


def test_a_reference_model_with_other_weights_is_refused(text_bundle):
    import torch

    import dualrate
    from tests.test_bad_input_matrix import text_model

    _, res = text_bundle
    other = text_model()
    with torch.no_grad():
        other.decoder.module.conv.bias.add_(1e-3)
    with pytest.raises(dualrate.BadInputError, match=r"the reference model's weights have sha256 [0-9a-f]{12}…, but "
                                                     r"bundle .* was exported from weights with sha256"):
        dualrate.validate(res.bundle, reference=other)
