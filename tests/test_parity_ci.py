"""Parity a CI can lean on: fp32 gates from the model's own error, --baseline, report merge.

Unit tests of the gate, baseline and matrix logic run on synthetic documents (fast); the rest
runs the real CLI on the suite's shared tiny bundle (ONNX Runtime, OpenVINO) and, once, on the
shipped digits checkpoint exported with few steps.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from dualrate.exporter.bundle import MANIFEST, write_manifest
from dualrate.exporter.errors import BadInputError
from dualrate.validation import baseline as bl
from dualrate.validation.gates import DEFAULT_GATES, FLOOR_FACTOR, FLOOR_MIN_REL_L2, gate_set
from dualrate.validation.merge import merge
from tests.conftest import DEFAULT_CHECKPOINT, run_cli
from tests.test_reports import make_result

FLOOR = {"format": np.array(1), "encoder/feat0/rel_l2": np.array(3e-7), "encoder/feat0/call_rel_l2": np.array(5e-7),
         "encoder/feat0/one_minus_cos": np.array(1e-13), "denoiser/prediction/rel_l2": np.array(1e-9),
         "denoiser/prediction/call_rel_l2": np.array(2e-9), "sampler/final/rel_l2": np.array(2e-7),
         "sampler/drift/rel_l2": np.array(2.5e-7), "decoder/decoded/rel_l2": np.array(0.5),
         "decoder/decoded_final/rel_l2": np.array(4e-7), "trajectory": np.array("trajectory_seed0")}


def assert_margin(doc, margin=2.0):
    """Every numeric check sits at most 1/``margin`` of the gate it was judged by."""
    assert doc["verdict"] == "PASSED", doc["first_failure"]
    for layer in doc["layers"]:
        for c in layer["checks"]:
            d, m = c.get("detail") or {}, c.get("metrics")
            if not m:
                continue
            assert m["rel_l2"] * margin <= d["gate_rel_l2"], (layer["layer"], c["graph"], c["output"], m["rel_l2"], d)
            if "call_gate_rel_l2" in d:
                assert d["worst_call_rel_l2"] * margin <= d["call_gate_rel_l2"], (c["graph"], c["output"], d)


# --------------------------------------------------------------------------- gates (unit)

def test_floor_gates_are_a_multiple_of_the_floor_clamped_and_overridable():
    g = gate_set("fp32", {}, FLOOR)
    assert g.kind == "floor-calibrated"
    assert g.totals[("encoder", "feat0")].rel_l2 == pytest.approx(FLOOR_FACTOR * 3e-7)
    assert g.calls[("encoder", "feat0")].rel_l2 == pytest.approx(FLOOR_FACTOR * 5e-7)
    assert g.totals[("denoiser", "prediction")].rel_l2 == FLOOR_MIN_REL_L2           # an absolute floor of its own
    assert g.totals[("decoder", "decoded")].rel_l2 == DEFAULT_GATES["fp32"].rel_l2   # never looser than the default
    assert g.final.rel_l2 == pytest.approx(FLOOR_FACTOR * 2.5e-7)                    # finals and drift: the larger
    assert g.decoded.rel_l2 == pytest.approx(FLOOR_FACTOR * 4e-7)
    assert g.final.cosine == DEFAULT_GATES["fp32"].cosine and g.final.psnr_db == DEFAULT_GATES["fp32"].psnr_db
    doc = g.describe()
    assert doc["kind"] == "floor-calibrated" and doc["floor_factor"] == FLOOR_FACTOR
    assert doc["per_check"]["graph/encoder/feat0"]["floor_rel_l2"] == pytest.approx(3e-7)
    # overrides win: * on every check, graph/output on its output, final on the finals
    g = gate_set("fp32", {"*": {"rel_l2": 5e-5}, "encoder/feat0": {"rel_l2": 7e-5}, "final": {"psnr_db": 50.0}}, FLOOR)
    assert g.totals[("denoiser", "prediction")].rel_l2 == g.final.rel_l2 == 5e-5
    assert g.totals[("encoder", "feat0")].rel_l2 == g.calls[("encoder", "feat0")].rel_l2 == 7e-5
    assert g.final.psnr_db == g.decoded.psnr_db == 50.0


def test_without_a_floor_or_below_fp32_the_gates_are_the_defaults():
    for precision, floor in (("fp32", None), ("fp32", {}), ("bf16", FLOOR), ("tf32", FLOOR)):
        g = gate_set(precision, {}, floor)
        assert g.kind == "default" and not g.totals and not g.calls
        assert g.final == g.base == DEFAULT_GATES[precision]
        assert g.describe() == {"kind": "default"}


# --------------------------------------------------------------------------- baseline (unit)

def test_baseline_names_each_metric_that_grew_past_the_factor():
    base = make_result("passed")
    now = copy.deepcopy(base)
    assert bl.compare(now, base)["regressions"] == [] and bl.compare(now, base)["compared"] > 50
    feat1 = now["layers"][1]["checks"][1]["metrics"]
    feat1["rel_l2"] *= 2.5                                   # grew past 2x
    now["layers"][1]["checks"][0]["metrics"]["rel_l2"] *= 1.9   # within 2x
    res = bl.compare(now, base, "old.json")
    assert [(r["layer"], r["graph"], r["output"], r["metric"]) for r in res["regressions"]] == [
        ("graph", "encoder", "feat1", "rel_l2")]
    text = bl.describe(res["regressions"][0], res["factor"], res["epsilon"])
    assert text.startswith("graph encoder/feat1 rel_l2 ") and "> 2 x baseline" in text
    doc = bl.apply(copy.deepcopy(now), res)
    assert doc["verdict"] == "FAILED" and doc["exit_code"] == 1
    assert doc["first_failure"]["layer"] == "baseline" and doc["first_failure"]["reasons"] == [text]
    # a looser factor lets it through
    assert bl.compare(now, base, factor=3.0)["passed"]


def test_baseline_epsilon_keeps_tiny_absolute_growth_from_tripping():
    base = make_result("passed")
    m = base["layers"][1]["checks"][0]["metrics"]
    m.update(rel_l2=0.0, max_abs=0.0, max_rel=0.0, min_atol_at_rtol=0.0, cosine=1.0, psnr_db=None)
    now = copy.deepcopy(base)
    now["layers"][1]["checks"][0]["metrics"].update(rel_l2=1e-9, max_abs=1e-9, max_rel=1e-9, psnr_db=180.0)
    assert bl.compare(now, base)["passed"]
    now["layers"][1]["checks"][0]["metrics"]["rel_l2"] = 1e-7
    assert [r["metric"] for r in bl.compare(now, base)["regressions"]] == ["rel_l2"]
    # a value that turns non-finite is a regression, named once
    now = copy.deepcopy(base)
    now["layers"][1]["checks"][0]["metrics"].update(non_finite=3, rel_l2=None, cosine=None, max_abs=None)
    assert [r["metric"] for r in bl.compare(now, base)["regressions"]] == ["non_finite"]
    # the drift curve is compared too
    now = copy.deepcopy(make_result("passed"))
    now["drift"]["rel_l2"] = [v * 10 for v in now["drift"]["rel_l2"]]
    assert [(r["output"], r["metric"]) for r in bl.compare(now, make_result("passed"), epsilon=0)["regressions"]] == [
        ("drift", "rel_l2")]


def test_baseline_of_another_bundle_or_target_or_not_a_report_is_refused(tmp_path):
    doc = make_result("passed")
    ident = bl.bundle_identity(doc)
    bl.check_baseline(doc, ident, "onnxruntime", "b.json")
    with pytest.raises(BadInputError, match="another bundle .*spec sha256"):
        bl.check_baseline({**doc, "bundle": {**doc["bundle"], "spec_sha256": "0" * 64}}, ident, "onnxruntime", "b.json")
    with pytest.raises(BadInputError, match="another bundle .*graphs sha256"):
        bl.check_baseline({**doc, "bundle": {**doc["bundle"], "graphs": {"encoder": "0" * 64}}}, ident, "onnxruntime", "b")
    with pytest.raises(BadInputError, match="a report of target onnxruntime, not openvino"):
        bl.check_baseline(doc, ident, "openvino", "b.json")
    for text in ('{"clean_verdict": "PASSED", "faults": []}', "[1, 2]", "not json"):
        (tmp_path / "x.json").write_text(text)
        with pytest.raises(BadInputError) as exc:
            bl.load_report(tmp_path / "x.json")
        assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- report merge (unit) and its page

def _write(doc, path):
    path.write_text(json.dumps(doc))
    return path


def _chromium_screenshot(html: Path, png: Path) -> None:
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): the rendered matrix is not checked")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={png.parent / 'chromium-profile'}",
             f"--screenshot={png}", "--window-size=1200,900", html.resolve().as_uri()]
    res = subprocess.run([exe, *flags], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0 and png.is_file(), res.stderr[-2000:]


def test_merge_renders_one_matrix_and_refuses_other_bundles(tmp_path):
    from PIL import Image

    ort = make_result("passed")
    ov = make_result("failed")
    ov["target"].update(backend="openvino", runtime_version="2026.4.1")
    ov["machine"] = {"host": "linux-ci", "os": "Linux 6.8", "arch": "x86_64"}
    trt = make_result("not_run")
    paths = [_write(d, tmp_path / f"{n}.json") for n, d in (("ort", ort), ("ov", ov), ("trt", trt))]
    res = run_cli("report", "merge", *map(str, paths), "-o", str(tmp_path / "m"))
    assert res.returncode == 1, res.stdout + res.stderr                   # one run FAILED
    lines = res.stdout.strip().splitlines()
    assert lines[-1] == "FAILED" and len(lines) == 5
    matrix = json.loads((tmp_path / "m" / "matrix.json").read_text())
    assert [(r["target"], r["verdict"]) for r in matrix["rows"]] == [
        ("onnxruntime", "PASSED"), ("openvino", "FAILED"), ("tensorrt", "NOT RUN")]
    ov_row = matrix["rows"][1]
    assert ov_row["machine"] == "linux-ci (Linux 6.8, x86_64)" and ov_row["runtime_version"] == "2026.4.1"
    assert ov_row["cells"]["graph"]["status"] == "failed" and ov_row["cells"]["graph"]["worst_check"] == "encoder/feat0"
    assert ov_row["cells"]["graph"]["worst_rel_l2"] == max(c["metrics"]["rel_l2"] for c in ov["layers"][1]["checks"])
    assert ov_row["cells"]["structural"]["status"] == "not_run" and matrix["rows"][2]["cells"]["graph"]["status"] == "not_run"
    suites = ET.parse(tmp_path / "m" / "matrix.junit.xml").getroot().findall("testsuite")
    assert [s.get("name").split(".")[2] for s in suites] == ["onnxruntime-fp32", "openvino-fp32", "tensorrt-fp32"]
    assert [(s.get("failures"), s.get("skipped")) for s in suites] == [("0", "1"), ("2", "1"), ("0", "6")]
    page = (tmp_path / "m" / "matrix.html").read_text()
    assert page.count('<tr class="run">') == 3 and "<script>" not in page
    _chromium_screenshot(tmp_path / "m" / "matrix.html", tmp_path / "matrix.png")
    with Image.open(tmp_path / "matrix.png") as im:
        px = np.asarray(im.convert("RGB"))
    assert px.shape[:2] == (900, 1200)
    colours = {tuple(c) for c in px.reshape(-1, 3)[::7]}
    assert len(colours) > 50                                              # text, badges, cells: not a blank page
    passed = np.all(px == (213, 245, 227), axis=-1).sum()                 # passed cells (c-passed)
    failed = np.all(px == (250, 219, 216), axis=-1).sum()                 # the failed cell (c-failed)
    assert passed > 5000 and failed > 500, (passed, failed)

    # reports of another bundle: one line, exit 2, nothing written
    other = make_result("passed")
    other["bundle"]["graphs"]["encoder"] = "0" * 64
    res = run_cli("report", "merge", str(paths[0]), str(_write(other, tmp_path / "other.json")), "-o",
                  str(tmp_path / "m2"))
    assert res.returncode == 2 and "different bundles" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m2").exists()
    res = run_cli("report", "merge", str(paths[0]), str(_write({"faults": []}, tmp_path / "st.json")), "-o",
                  str(tmp_path / "m3"))
    assert res.returncode == 2 and "not a dualrate validate report" in res.stderr and not (tmp_path / "m3").exists()


# --------------------------------------------------------------------------- the real CLI on the tiny bundle

def _copy(bundle_path: Path, dest: Path, no_model: bool = False) -> Path:
    shutil.copytree(bundle_path, dest, ignore=shutil.ignore_patterns("targets"))
    if no_model:    # no floor stored and no model to measure it on (a CI machine without the checkpoint)
        shutil.rmtree(dest / "calibration", ignore_errors=True)
        man = json.loads((dest / MANIFEST).read_text())
        man["source_checkpoint"] = {**man["source_checkpoint"], "path": str(dest / "nowhere")}
        write_manifest(dest, {k: v for k, v in man.items() if k not in ("files", "format", "format_version")})
    return dest


@pytest.mark.slow
def test_floor_gates_pass_honest_backends_with_margin_and_catch_one_perturbed_tensor(tiny_bundle, tmp_path):
    from dualrate.validation.faults import perturb_one_weight

    from dualrate.exporter.precision_calibration import stored

    for target in ("onnxruntime", "openvino"):
        res = run_cli("validate", str(tiny_bundle.path), "--target", target, "--reference", "golden",
                      "--json", str(tmp_path / f"{target}.json"))
        assert res.returncode == 0, res.stdout + res.stderr
        doc = json.loads((tmp_path / f"{target}.json").read_text())
        assert doc["gates"]["kind"] == "floor-calibrated" and "gates floor-calibrated" in res.stdout
        # the first fp32 validate measures the floor on the source checkpoint, the next reuses it
        assert doc["gates"]["calibration"]["status"] in ("computed", "stored")
        assert_margin(doc, 2.0)
    assert doc["gates"]["calibration"]["status"] == "stored"
    floor = stored(tiny_bundle, "fp32")
    assert {"encoder/feat0/rel_l2", "denoiser/prediction/call_rel_l2", "sampler/final/rel_l2"} <= set(floor)
    assert all(0 < float(floor[k]) < 1e-5 for k in floor if k.endswith("rel_l2"))
    bad = _copy(tiny_bundle.path, tmp_path / "one")
    name = perturb_one_weight(bad)
    res = run_cli("validate", str(bad), "--target", "onnxruntime", "--reference", "golden", "--json", str(tmp_path / "f.json"))
    assert res.returncode == 1, res.stdout
    ff = json.loads((tmp_path / "f.json").read_text())["first_failure"]
    assert ff["graph"] == "encoder" and ff["layer"] == "graph", (name, ff)
    # --gate still overrides the floor-calibrated gates (the tiny model moves 7e-4 here: far past even 1e-4)
    res = run_cli("validate", str(bad), "--target", "onnxruntime", "--reference", "golden", "--gate", "*:rel_l2=1e-2")
    assert res.returncode == 0, res.stdout
    # no floor stored and no model to measure it: the default gates, and the report says why
    old = _copy(tiny_bundle.path, tmp_path / "old", no_model=True)
    res = run_cli("validate", str(old), "--target", "onnxruntime", "--reference", "golden", "--json", str(tmp_path / "o.json"))
    doc = json.loads((tmp_path / "o.json").read_text())
    assert res.returncode == 0 and doc["gates"]["kind"] == "default" and doc["gates"]["fp32"]["rel_l2"] == 1e-4
    assert doc["gates"]["calibration"]["status"] == "uncalibrated"
    assert any("--calibrate-precisions fp32" in n and "is not here" in n for n in doc["notes"]), doc["notes"]


@pytest.mark.slow
def test_baseline_catches_a_shifted_runtime_setting_and_refuses_foreign_baselines(tiny_bundle, tmp_path):
    b = str(tiny_bundle.path)
    res = run_cli("validate", b, "--target", "openvino", "--reference", "golden", "--json", str(tmp_path / "base.json"))
    assert res.returncode == 0, res.stdout + res.stderr
    # the same settings again: every metric within 2x of the baseline
    res = run_cli("validate", b, "--target", "openvino", "--reference", "golden", "--baseline", str(tmp_path / "base.json"),
                  "--json", str(tmp_path / "same.json"))
    assert res.returncode == 0, res.stdout + res.stderr
    same = json.loads((tmp_path / "same.json").read_text())["baseline"]
    assert same["passed"] and same["compared"] > 50 and "baseline           passed" in res.stdout
    # OpenVINO told to infer in bf16: the gates (bf16 now) pass, the baseline does not
    res = run_cli("validate", b, "--target", "openvino", "--precision", "bf16", "--reference", "golden",
                  "--baseline", str(tmp_path / "base.json"), "--json", str(tmp_path / "bf16.json"),
                  "--junit", str(tmp_path / "bf16.xml"))
    assert res.returncode == 1, res.stdout + res.stderr
    doc = json.loads((tmp_path / "bf16.json").read_text())
    assert all(layer["status"] != "failed" for layer in doc["layers"])        # the gates alone would pass
    reg = doc["baseline"]["regressions"][0]
    assert doc["first_failure"]["layer"] == "baseline" and reg["metric"] in bl.METRICS
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith(f"FAILED: baseline {reg['graph']}/{reg['output']}: ") and "x baseline" in last
    case = next(c for c in ET.parse(tmp_path / "bf16.xml").getroot().iter("testcase") if c.get("classname") == "baseline")
    assert case.find("failure") is not None
    # foreign baselines: one line, exit 2, nothing written
    ort = tmp_path / "ort.json"
    assert run_cli("validate", b, "--target", "onnxruntime", "--reference", "golden", "--json", str(ort)).returncode == 0
    (tmp_path / "st.json").write_text('{"clean_verdict": "PASSED", "faults": []}')
    other = json.loads(ort.read_text())
    other["bundle"]["spec_sha256"] = "0" * 64
    (tmp_path / "other.json").write_text(json.dumps(other))
    for base, why in ((ort, "a report of target onnxruntime, not openvino"), (tmp_path / "st.json", "not a dualrate"),
                      (tmp_path / "other.json", "another bundle")):
        res = run_cli("validate", b, "--target", "openvino", "--reference", "golden", "--baseline", str(base),
                      "--json", str(tmp_path / "never.json"))
        assert res.returncode == 2 and why in res.stderr, res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "never.json").exists()


@pytest.mark.slow
def test_merge_of_real_reports_renders(tiny_bundle, tmp_path):
    from PIL import Image

    paths = []
    for target in ("onnxruntime", "openvino"):
        paths.append(tmp_path / f"{target}.json")
        assert run_cli("validate", str(tiny_bundle.path), "--target", target, "--reference", "golden",
                       "--json", str(paths[-1])).returncode == 0
    res = run_cli("report", "merge", *map(str, paths), "-o", str(tmp_path / "m"))
    assert res.returncode == 0 and res.stdout.strip().splitlines()[-1] == "PASSED", res.stdout + res.stderr
    matrix = json.loads((tmp_path / "m" / "matrix.json").read_text())
    assert [r["target"] for r in matrix["rows"]] == ["onnxruntime", "openvino"]
    assert all(r["gates_kind"] == "floor-calibrated" and r["runtime_version"] for r in matrix["rows"])
    _chromium_screenshot(tmp_path / "m" / "matrix.html", tmp_path / "m.png")
    with Image.open(tmp_path / "m.png") as im:
        px = np.asarray(im.convert("RGB"))
    assert np.all(px == (213, 245, 227), axis=-1).sum() > 5000            # the passed cells rendered


# --------------------------------------------------------------------------- the shipped checkpoint

@pytest.mark.slow
def test_shipped_model_one_perturbed_tensor_fails_while_honest_backends_pass(tmp_path):
    """The issue's fault on the shipped digits model (exported with 8 steps to stay fast): one
    encoder weight tensor x (1 + 1e-3 N(0,1)) fails with the default (floor-calibrated) gates; the
    fixed 1e-4 gate would pass it; ONNX Runtime and OpenVINO pass with margin."""
    from dualrate.validation.faults import perturb_one_weight

    bundle = tmp_path / "digits"
    res = run_cli("export", str(DEFAULT_CHECKPOINT), "-o", str(bundle), "--steps", "8", "--refresh-every", "4",
                  "--guidance", "2")
    assert res.returncode == 0, res.stderr
    for target in ("onnxruntime", "openvino"):
        assert run_cli("validate", str(bundle), "--target", target, "--reference", "golden",
                       "--json", str(tmp_path / f"{target}.json")).returncode == 0
        assert_margin(json.loads((tmp_path / f"{target}.json").read_text()), 3.0)
    bad = _copy(bundle, tmp_path / "bad")
    perturb_one_weight(bad)
    res = run_cli("validate", str(bad), "--target", "onnxruntime", "--reference", "golden", "--json", str(tmp_path / "f.json"))
    assert res.returncode == 1 and res.stdout.strip().splitlines()[-1].startswith("FAILED: graph encoder/"), res.stdout
    doc = json.loads((tmp_path / "f.json").read_text())
    graph = next(layer for layer in doc["layers"] if layer["layer"] == "graph")
    worst = max(c["metrics"]["rel_l2"] / c["detail"]["gate_rel_l2"] for c in graph["checks"])
    assert worst > 3.0                                     # caught with margin, not by a hair
    assert run_cli("validate", str(bad), "--target", "onnxruntime", "--reference", "golden",
                   "--gate", "*:rel_l2=1e-4").returncode == 0


def test_example_ci_workflow_validates_on_each_machine_then_merges():
    yaml = pytest.importorskip("yaml")
    from tests.conftest import REPO

    text = (REPO / "examples" / "ci" / "parity.yml").read_text()
    jobs = yaml.safe_load(text)["jobs"]
    assert set(jobs) == {"export", "linux", "macos", "gpu", "merge"}
    assert jobs["linux"]["strategy"]["matrix"]["target"] == ["onnxruntime", "openvino"]
    assert jobs["macos"]["runs-on"].startswith("macos") and "gpu" in jobs["gpu"]["runs-on"]
    assert set(jobs["merge"]["needs"]) == {"linux", "macos", "gpu"} and jobs["merge"]["if"] == "always()"
    runs = {name: "\n".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    for name, target in (("linux", "${{ matrix.target }}"), ("macos", "coreml"), ("gpu", "tensorrt")):
        assert f"validate bundle --target {target} --reference golden" in runs[name], runs[name]
    assert "--baseline" in runs["linux"] and "dualrate report merge reports/*/report.json -o matrix" in runs["merge"]
