"""Report writers of ``dualrate validate``: strict JSON, JUnit XML, the HTML page, console text."""

from __future__ import annotations

import copy
import html
import json
import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from dualrate.validation.gates import DEFAULT_GATES
from dualrate.validation.metrics import compare
from dualrate.validation.reports import (colormap, console_summary, drift_svg, junit_xml, write_html, write_json,
                                write_junit)

GATE = DEFAULT_GATES["fp32"]
STEPS = 10
REFRESH = [0, 4, 8]
XSS = 'feature <script>alert("x")</script> & more'


# --------------------------------------------------------------------------- a realistic results document

def _check(layer, graph, output, actual=None, reference=None, step=None, detail=None, final=False, reasons=None):
    metrics = compare(actual, reference) if actual is not None else None
    if reasons is None:
        reasons = GATE.check(metrics, final_sample=final) if metrics else []
    return {"layer": layer, "graph": graph, "output": output, "passed": not reasons, "reasons": reasons,
            "metrics": metrics.to_dict() if metrics else None, "step": step, "detail": detail or {}}


def _close(rng, shape, rel):
    ref = rng.standard_normal(shape).astype(np.float32)
    return ref + rel * rng.standard_normal(shape).astype(np.float32), ref


def make_result(kind="passed"):
    """``passed``: every numeric layer passes (structural not run, as on onnxruntime);
    ``failed``: graph-level encoder/feat0 breaks the gate; ``not_run``: no layer could run."""
    rng = np.random.default_rng(0)
    doc = {"tool": "dualrate validate", "format_version": 1, "dualrate_version": "0.1.0",
           "bundle": {"path": "/tmp/b", "spec_sha256": "a" * 64, "graphs": {"encoder": "e" * 64, "denoiser": "d" * 64}},
           "target": {"backend": "onnxruntime", "requested_precision": "fp32", "effective_precision": "fp32",
                      "runtime_version": "1.32.0", "device": "cpu",
                      "artifacts": {"encoder.onnx": "1" * 64, "denoiser.onnx": "2" * 64}},
           "source": {"kind": "checkpoint", "name": "tiny", "sha256": "c" * 64, "path": "/ckpts/tiny"},
           "reference": "golden", "shapes": {"batch": 4, "rows": 2},
           "gates": {"fp32": {"rel_l2": GATE.rel_l2, "cosine": GATE.cosine, "psnr_db": GATE.psnr_db}}}
    if kind == "not_run":
        reason = f"target tensorrt is not usable here: no CUDA device ({XSS})"
        doc["target"].update(backend="tensorrt", effective_precision=None)
        doc["layers"] = [{"layer": n, "status": "not_run", "reason": reason, "checks": []} for n in
                         ("structural", "graph", "teacher_forced", "free_running", "refresh_audit", "cache_equivalence")]
        doc.update(drift=None, verdict="NOT RUN", first_failure=None, exit_code=3, not_run_reason=reason)
        return doc
    bad = 3e-4 if kind == "failed" else 1e-7
    graph = [_check("graph", "encoder", "feat0", *_close(rng, (12, 16, 8), bad), detail={"calls": 12, "worst_call": 3}),
             _check("graph", "encoder", "feat1", *_close(rng, (12, 16, 8), 1e-7), detail={"calls": 12, "worst_call": 0}),
             _check("graph", "denoiser", "prediction", *_close(rng, (12, 1, 8, 8), 1e-7), detail={"calls": 12})]
    tf = [_check("teacher_forced", "encoder", name, *_close(rng, (4, 16, 8), 1e-7),
                 detail={"steps": REFRESH, "worst_step": 4, "per_step_rel_l2": [1e-7] * 3}) for name in ("feat0", "feat1")]
    tf.append(_check("teacher_forced", "denoiser", "prediction", *_close(rng, (4, 1, 8, 8), 1e-7),
                     detail={"steps": list(range(STEPS)), "worst_step": 9, "per_step_rel_l2": [1e-7] * STEPS}))
    fr = [_check("free_running", "sampler", f"final[trajectory_seed{s}]", *_close(rng, (4, 1, 8, 8), 1e-7),
                 final=True, detail={"seed": s, "trajectory": f"trajectory_seed{s}"}) for s in (0, 1)]
    ra = [_check("refresh_audit", "sampler", f"{br}[trajectory_seed{s}]", detail={"expected": REFRESH, "actual": REFRESH})
          for s in (0, 1) for br in ("cond", "uncond")]
    ce = [_check("cache_equivalence", "sampler", "final[every_step]", *_close(rng, (4, 1, 8, 8), 1e-7), final=True)]
    if kind == "failed":
        ra[1] = _check("refresh_audit", "sampler", "uncond[trajectory_seed0]", step=5, reasons=[XSS],
                       detail={"expected": REFRESH, "actual": [0, 5, 8]})
    layers = [{"layer": "structural", "status": "not_run", "checks": [],
               "reason": "target onnxruntime has no structural checks (numeric layers cover it)"}]
    for name, checks in (("graph", graph), ("teacher_forced", tf), ("free_running", fr), ("refresh_audit", ra),
                         ("cache_equivalence", ce)):
        layers.append({"layer": name, "status": "passed" if all(c["passed"] for c in checks) else "failed",
                       "reason": None, "checks": checks})
    drift = [1e-7 * (1 + i) for i in range(STEPS)]
    doc.update(layers=layers, drift={"trajectory": "trajectory_seed0", "steps": list(range(STEPS)), "rel_l2": drift,
                                     "refresh_steps": REFRESH})
    if kind == "failed":
        c = graph[0]
        assert not c["passed"], c
        doc.update(verdict="FAILED", exit_code=1, first_failure={
            "layer": "graph", "graph": "encoder", "output": "feat0", "step": None, "reasons": c["reasons"],
            "min_atol_at_rtol": c["metrics"]["min_atol_at_rtol"]})
    else:
        doc.update(verdict="PASSED", exit_code=0, first_failure=None)
    return doc


def make_arrays(b=4, c=1, h=8, w=8, seed=1):
    rng = np.random.default_rng(seed)
    ref = np.tanh(rng.standard_normal((b, c, h, w))).astype(np.float32)
    return {"reference_final": ref, "backend_final": ref + np.float32(1e-6)}


# --------------------------------------------------------------------------- PNG reader

def read_png(path):
    """Check the PNG signature and every chunk (Pillow's ``verify``: CRCs, structure); return the
    pixels ``[H, W, C]``."""
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode in ("L", "RGB", "RGBA")
        px = np.asarray(im)
    return px[:, :, None] if px.ndim == 2 else px


def _strict_loads(text):
    def refuse(token):
        raise AssertionError(f"non-strict JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def _suite(xml_text):
    root = ET.fromstring(xml_text.encode("utf-8"))
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    assert len(suites) == 1
    return root, suites[0]


def _cases(suite):
    return {(c.get("classname"), c.get("name")): c for c in suite.findall("testcase")}


# --------------------------------------------------------------------------- JSON

def test_json_is_strict_sorted_and_round_trips(tmp_path):
    doc = make_result("passed")
    doc["drift"]["rel_l2"][3] = float("nan")
    doc["layers"][1]["checks"][0]["detail"].update(worst=float("inf"), neg=-math.inf, f32=np.float32(0.5),
                                                   i64=np.int64(7), arr=np.arange(3), flag=np.bool_(True))
    path = tmp_path / "sub" / "r.json"
    write_json(doc, path)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    got = _strict_loads(text)
    assert got["drift"]["rel_l2"][3] is None
    detail = got["layers"][1]["checks"][0]["detail"]
    assert detail["worst"] is None and detail["neg"] is None
    assert detail["f32"] == 0.5 and detail["i64"] == 7 and detail["arr"] == [0, 1, 2] and detail["flag"] is True
    assert text == json.dumps(got, indent=1, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n"
    # everything else survives unchanged
    clean = make_result("passed")
    write_json(clean, path)
    assert _strict_loads(path.read_text()) == json.loads(json.dumps(clean))
    assert [p.name for p in path.parent.iterdir()] == ["r.json"]          # no temporary file left behind


def test_json_refuses_objects_without_a_json_form_and_writes_nothing(tmp_path):
    doc = make_result("passed")
    doc["bundle"]["handle"] = object()
    with pytest.raises(TypeError, match=r"\$\.bundle\.handle"):
        write_json(doc, tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- JUnit

def test_junit_passed_counts_and_one_case_per_layer_and_graph(tmp_path):
    write_junit(make_result("passed"), tmp_path / "j.xml")
    text = (tmp_path / "j.xml").read_text()
    root, suite = _suite(text)
    assert suite.get("name") == "dualrate.validate.onnxruntime-fp32"
    cases = _cases(suite)
    assert list(cases) == [("structural", "encoder"), ("structural", "denoiser"), ("graph", "encoder"),
                           ("graph", "denoiser"), ("teacher_forced", "encoder"), ("teacher_forced", "denoiser"),
                           ("free_running", "sampler"), ("refresh_audit", "sampler"), ("cache_equivalence", "sampler")]
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped"), suite.get("errors")) == ("9", "0", "2", "0")
    assert root.get("tests") == "9" and root.get("skipped") == "2"
    # the graph-level encoder case lists each of its outputs with its metrics
    out = cases[("graph", "encoder")].find("system-out").text
    assert "passed encoder/feat0" in out and "passed encoder/feat1" in out and "rel-L2" in out
    skipped = cases[("structural", "encoder")].find("skipped")
    assert skipped is not None and "no structural checks" in skipped.get("message")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["effective precision"] == "fp32" and props["spec sha256"] == "a" * 64
    assert (props["source"], props["source path"], props["source sha256"]) == ("checkpoint tiny", "/ckpts/tiny", "c" * 64)


def test_junit_failure_names_output_metrics_and_tolerance():
    doc = make_result("failed")
    root, suite = _suite(junit_xml(doc))
    cases = _cases(suite)
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("9", "2", "2")
    fail = cases[("graph", "encoder")].find("failure")
    m = doc["layers"][1]["checks"][0]["metrics"]
    assert fail.get("message") == f"feat0: {doc['first_failure']['reasons'][0]}"
    assert re.fullmatch(r"feat0: rel-L2 0\.000\d+ > 0\.0001", fail.get("message"))
    assert format(m["min_atol_at_rtol"], ".3g") in fail.text and "minimum atol that would have passed" in fail.text
    assert format(m["rel_l2"], ".3g") in fail.text and "1 of 2 checks failed" in fail.text
    assert "passed encoder/feat1" in fail.text                          # the other output of the graph is listed too
    assert cases[("graph", "denoiser")].find("failure") is None
    audit = cases[("refresh_audit", "sampler")].find("failure")
    assert audit.get("message") == f"uncond[trajectory_seed0] step 5: {XSS}"   # escaped by XML, read back intact


def test_junit_not_run_is_skipped_never_passed(tmp_path):
    doc = make_result("not_run")
    doc["layers"][1]["reason"] += "\x01 control char"          # must not break XML 1.0
    root, suite = _suite(junit_xml(doc))
    assert suite.get("name") == "dualrate.validate.tensorrt-fp32"
    cases = suite.findall("testcase")
    assert len(cases) == 9 and suite.get("skipped") == "9" and suite.get("failures") == "0"
    for c in cases:
        sk = c.find("skipped")
        assert sk is not None and sk.get("message").startswith("not run: target tensorrt is not usable here")
        assert c.find("failure") is None and c.find("system-out") is None


def test_junit_is_never_green_for_a_document_that_did_not_pass():
    doc = make_result("passed")
    doc["verdict"] = "FAILED"
    _, suite = _suite(junit_xml(doc))
    assert _cases(suite)[("verdict", "overall")].find("failure") is not None and suite.get("failures") == "1"


def test_junit_layer_that_passed_without_checks_is_skipped():
    doc = make_result("passed")
    doc["layers"][3]["checks"] = []
    _, suite = _suite(junit_xml(doc))
    case = _cases(suite)[("free_running", "sampler")]
    assert case.find("skipped") is not None and suite.get("skipped") == "3"


# --------------------------------------------------------------------------- HTML

def test_html_passed_has_verdict_images_and_drift_chart(tmp_path):
    doc = make_result("passed")
    path = write_html(doc, make_arrays(), tmp_path / "rep")
    assert path == tmp_path / "rep" / "report.html"
    page = path.read_text()
    assert '<span class="verdict v-passed" id="verdict">PASSED</span>' in page
    srcs = re.findall(r'<img src="([^"]+)" width="(\d+)" height="(\d+)"', page)
    assert [s for s, _, _ in srcs] == ["samples_reference.png", "samples_backend.png", "error_heatmap.png"]
    for src, w, h in srcs:
        px = read_png(tmp_path / "rep" / src)
        # 4 tiles of 8x8 upscaled x8 (>= 64 px) in 2 rows (shapes.rows), 2 px padding
        assert px.shape[:2] == (134, 134) and (int(w), int(h)) == (134, 134)
    assert read_png(tmp_path / "rep" / "error_heatmap.png").shape[2] == 3
    assert read_png(tmp_path / "rep" / "samples_reference.png").shape[2] == 1
    # drift (matplotlib SVG): one point per step, a line per refresh step, the gate dashed, axes labelled
    svg = page[page.index("<svg"):page.index("</svg>") + len("</svg>")]
    points = _svg_points(svg, "drift")
    assert len(points) == STEPS
    assert _svg_ids(svg, "refresh-") == [f"refresh-{s}" for s in REFRESH]
    assert "stroke-dasharray" in ET.tostring(_svg_group(svg, "gate"), encoding="unicode")
    assert "sampling step" in svg and "rel-L2 of z vs reference (log scale)" in svg
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    assert xs == sorted(xs) and ys == sorted(ys, reverse=True)          # drift grows: the curve rises
    # the whole batch, one row per sample with its own difference image (inline PNGs)
    assert page.count('<tr class="sample">') == 4 and page.count('src="data:image/png;base64,') == 12
    # a table per layer; the structural layer is "not run", distinct from passed
    for layer in ("structural", "graph", "teacher_forced", "free_running", "refresh_audit", "cache_equivalence"):
        assert f'id="layer-{layer}"' in page
    assert '<span class="badge b-not_run">not run</span>' in page
    assert "not run: target onnxruntime has no structural checks" in page
    assert page.count('<tr class="pass">') == sum(len(l["checks"]) for l in doc["layers"])
    assert "1.32.0" in page and "e" * 64 in page and "requested precision" in page
    assert "<td>source</td><td><code>checkpoint tiny</code>" in page and "c" * 64 in page
    assert "Decoded output" not in page and "decoded_" not in page       # no decoder: no decoded section


def test_html_failed_escapes_reasons_and_names_first_failure(tmp_path):
    doc = make_result("failed")
    page = write_html(doc, make_arrays(), tmp_path).read_text()
    assert 'class="verdict v-failed"' in page and ">FAILED<" in page
    assert "<script>" not in page
    assert re.search(r"&lt;script&gt;alert\((&quot;|&#34;)x(&quot;|&#34;)\)&lt;/script&gt; &amp; more", page)
    assert XSS in html.unescape(page)
    assert page.count('<tr class="fail">') == 2
    assert "First failure: graph encoder/feat0: rel-L2" in page


def test_html_not_run_shows_reason_instead_of_images(tmp_path):
    stale = tmp_path / "samples_reference.png"
    stale.write_bytes(b"old")                     # a previous run's image must not sit beside the new page
    doc = make_result("not_run")
    page = write_html(doc, {}, tmp_path).read_text()
    assert 'class="verdict v-not_run"' in page and ">NOT RUN<" in page
    assert "<img" not in page and "<svg" not in page and not list(tmp_path.glob("*.png"))
    assert "not run: target tensorrt is not usable here: no CUDA device (feature &lt;script&gt;" in page
    assert "<script>" not in page
    assert page.count('<span class="badge b-not_run">not run</span>') == 6 and 'class="badge b-passed"' not in page


def test_heatmap_marks_the_differing_pixel_and_states_the_max(tmp_path):
    arrays = make_arrays(b=2, c=3, h=4, w=4)
    arrays["backend_final"] = arrays["reference_final"].copy()
    arrays["backend_final"][1, 2, 3, 0] += 0.25
    page = write_html(make_result("passed"), arrays, tmp_path).read_text()
    assert "max |difference| = 0.25 (worst channel per pixel)" in page
    heat = read_png(tmp_path / "error_heatmap.png")
    ref = read_png(tmp_path / "samples_reference.png")
    assert heat.shape == ref.shape == (2 + 2 * (16 * 4 + 2), 2 + 1 * (16 * 4 + 2), 3)   # shapes.rows = 2: one column
    # tile 1 (second row) at pixel row 3, col 0, upscaled x16 to >= 64 px
    y0, x0 = 2 + 66 + 3 * 16, 2 + 0 * 16
    assert heat[y0:y0 + 16, x0:x0 + 16].reshape(-1, 3).tolist() == [[253, 231, 37]] * 256
    assert (heat[2:2 + 64, 2:2 + 64] == [68, 1, 84]).all()              # tile 0 identical: the low end


def test_latent_channels_are_grey_tiles_and_non_finite_is_magenta(tmp_path):
    arrays = make_arrays(b=2, c=4, h=16, w=16)
    arrays["backend_final"][0, 1, 0, 0] = np.nan
    page = write_html(make_result("passed"), arrays, tmp_path).read_text()
    ref, heat = read_png(tmp_path / "samples_reference.png"), read_png(tmp_path / "error_heatmap.png")
    assert ref.shape == (2 + 2 * 66, 2 + 4 * 66, 1) and heat.shape[:2] == ref.shape[:2]
    assert heat[2, 2 + 66].tolist() == [255, 0, 255]
    assert "1 non-finite values shown magenta" in page and "4 channels shown as grey tiles" in page


def test_colormap_is_ordered_and_flags_non_finite():
    rgb = colormap(np.array([0.0, 0.25, 0.5, 0.75, 1.0, 2.0, -1.0, np.nan, np.inf]))
    assert rgb.dtype == np.uint8 and rgb.shape == (9, 3)
    assert rgb[0].tolist() == [68, 1, 84] and rgb[4].tolist() == [253, 231, 37]
    assert rgb[5].tolist() == rgb[4].tolist() and rgb[6].tolist() == rgb[0].tolist()   # clipped
    assert rgb[7].tolist() == rgb[8].tolist() == [255, 0, 255]
    luma = rgb[:5].astype(float) @ [0.2126, 0.7152, 0.0722]
    assert (np.diff(luma) > 0).all()


def _svg_group(svg, gid):
    return next(el for el in ET.fromstring(svg).iter() if el.get("id") == gid)


def _svg_ids(svg, prefix):
    return [el.get("id") for el in ET.fromstring(svg).iter() if (el.get("id") or "").startswith(prefix)]


def _svg_points(svg, gid):
    """The marker positions (one ``<use>`` per data point) of the matplotlib line ``gid``."""
    return [(float(u.get("x")), float(u.get("y"))) for u in _svg_group(svg, gid).iter() if u.tag.endswith("}use")]


def _svg_path(el):
    """The (x, y) vertices of the first path in ``el``."""
    d = next(p for p in el.iter() if p.tag.endswith("}path")).get("d").replace("M", " ").replace("L", " ").split()
    return [(float(d[i]), float(d[i + 1])) for i in range(0, len(d), 2)]


def test_drift_svg_keeps_a_point_per_step_for_exact_and_non_finite_values():
    svg = drift_svg({"steps": [0, 1, 2, 3], "rel_l2": [0.0, 1e-6, None, float("nan")], "refresh_steps": [0, 2, 9]},
                    gate_rel_l2=1e-4, gate_name="fp32")
    assert svg.startswith("<svg")                              # inline: no XML declaration
    xy = _svg_points(svg, "drift")
    assert len(xy) == 4
    # the plot frame: a refresh line spans it vertically, the gate line horizontally
    (_, bottom), (_, top) = _svg_path(_svg_group(svg, "refresh-0"))
    (left, _), (right, _) = _svg_path(_svg_group(svg, "gate"))
    assert all(left <= px <= right and top <= py <= bottom for px, py in xy)   # everything inside the plot frame
    assert xy[0][1] == bottom and xy[2][1] == xy[3][1] == top              # exact match at the bottom, non-finite at the top
    assert _svg_ids(svg, "refresh-") == ["refresh-0", "refresh-2"]          # step 9 is outside the curve
    assert len(_svg_points(svg, "non-finite")) == 2                       # red marks on the two non-finite steps
    assert drift_svg({"steps": [0, 1, 2, 3], "rel_l2": [0.0, 1e-6, None, float("nan")], "refresh_steps": [0, 2, 9]},
                     gate_rel_l2=1e-4, gate_name="fp32") == svg             # deterministic bytes


# --------------------------------------------------------------------------- console

def test_console_summary_last_line_forms():
    passed = console_summary(make_result("passed")).splitlines()
    assert passed[-1] == "PASSED"
    assert any(l.split()[:2] == ["structural", "not"] for l in passed)
    assert "not counted as passed" in passed[-2]

    doc = make_result("failed")
    lines = console_summary(doc).splitlines()
    m = doc["layers"][1]["checks"][0]["metrics"]
    assert lines[-1].startswith("FAILED: graph encoder/feat0: rel-L2 ")
    assert lines[-1].endswith(f"(min atol that passes at rtol 0.001: {m['min_atol_at_rtol']:.3g})")
    assert any("teacher_forced" in l and "passed" in l for l in lines)
    assert any(l.strip().startswith("sampler/uncond[trajectory_seed0] step 5:") for l in lines)

    lines = console_summary(make_result("not_run")).splitlines()
    assert lines[-1].startswith("NOT RUN: target tensorrt is not usable here")
    assert sum(l in ("PASSED",) or l.startswith(("FAILED", "NOT RUN")) for l in lines) == 1


def test_console_summary_fails_closed_on_an_unknown_verdict():
    doc = make_result("passed")
    doc["verdict"] = "MAYBE"
    assert console_summary(doc).splitlines()[-1].startswith("FAILED: ")
    doc = copy.deepcopy(make_result("failed"))
    doc["first_failure"]["reasons"] = ["line one\nline two"]
    assert console_summary(doc).splitlines()[-1].startswith("FAILED: graph encoder/feat0: line one line two (")


def test_first_failing_step_is_not_paired_with_the_worst_steps_metrics(tmp_path):
    doc = make_result("failed")
    tf = doc["layers"][2]["checks"][2]           # teacher-forced denoiser/prediction: first fails at 2, worst at 9
    tf.update(passed=False, step=2, reasons=["rel-L2 0.0002 > 0.0001"])
    doc["layers"][2]["status"] = "failed"
    line = next(l for l in console_summary(doc).splitlines() if "denoiser/prediction step 2" in l)
    assert "metrics of worst step 9" in line
    _, suite = _suite(junit_xml(doc))
    assert "(metrics of worst step 9)" in _cases(suite)[("teacher_forced", "denoiser")].find("failure").text
    assert "metrics of worst step 9, steps=[0, 1, 2" in write_html(doc, {}, tmp_path).read_text()


# --------------------------------------------------------------------------- decoder and source (bundle format 2)

def _with_decoder(doc, data_range=(0.0, 1.0)):
    doc["bundle"]["graphs"]["decoder"] = "f" * 64
    doc["decoder"] = {"data_range": list(data_range)}
    return doc


def _decoded_arrays(b=4, seed=2):
    """Latents [B, 4, 8, 8] as the final samples, RGB [B, 3, 16, 16] in [0, 1] as the decoded output."""
    rng = np.random.default_rng(seed)
    arrays = make_arrays(b=b, c=4, h=8, w=8, seed=seed)
    ref = rng.uniform(0, 1, (b, 3, 16, 16)).astype(np.float32)
    ref[0, :, 0, 0] = 0.5
    got = ref.copy()
    got[3, 1, 15, 15] += 0.125
    return {**arrays, "reference_decoded": ref, "backend_decoded": got}


def test_html_shows_the_decoded_output_grid_after_the_samples(tmp_path):
    doc = _with_decoder(make_result("passed"))
    page = write_html(doc, _decoded_arrays(), tmp_path).read_text()
    srcs = [s for s, _, _ in re.findall(r'<img src="([^"]+)" width="(\d+)" height="(\d+)"', page)]
    assert srcs == ["samples_reference.png", "samples_backend.png", "error_heatmap.png",
                    "decoded_reference.png", "decoded_backend.png", "decoded_heatmap.png"]
    assert page.index("<h2>Final samples</h2>") < page.index("<h2>Decoded output</h2>") < page.index("<svg")
    ref, got, heat = (read_png(tmp_path / f"decoded_{k}.png") for k in ("reference", "backend", "heatmap"))
    # 4 RGB tiles of 16x16 upscaled x4 (>= 64 px) in 2 rows (shapes.rows), 2 px padding
    assert ref.shape == got.shape == (2 + 2 * 66, 2 + 2 * 66, 3) and heat.shape == ref.shape
    assert read_png(tmp_path / "samples_reference.png").shape[2] == 1       # the latents: grey tile per channel
    # the decoder's data range [0, 1] (from the document), not the samples' [-1, 1]: 0.5 is mid-grey
    assert ref[2, 2].tolist() == [128, 128, 128]
    decoded = page[page.index("<h2>Decoded output</h2>"):]
    assert "the decoder's output on the final samples; 4 decoded outputs; data range 0 \u2026 1" in html.unescape(decoded)
    assert "max |difference| = 0.125 (worst channel per pixel)" in decoded
    # the one differing pixel: tile 3 (second row, second column), pixel (15, 15), upscaled x4
    y0, x0 = 2 + 66 + 15 * 4, 2 + 66 + 15 * 4
    assert heat[y0:y0 + 4, x0:x0 + 4].reshape(-1, 3).tolist() == [[253, 231, 37]] * 16
    assert (heat[2:2 + 64, 2:2 + 64] == [68, 1, 84]).all()
    # an explicit range wins over the document's
    write_html(doc, _decoded_arrays(), tmp_path / "b", decoded_range=(-1.0, 1.0))
    assert read_png(tmp_path / "b" / "decoded_reference.png")[2, 2].tolist() == [191, 191, 191]


def test_decoded_section_not_run_when_the_bundle_has_a_decoder_but_no_arrays(tmp_path):
    for f in ("decoded_reference.png", "decoded_backend.png", "decoded_heatmap.png"):
        (tmp_path / f).write_bytes(b"old")              # a previous run's images must not survive
    page = write_html(_with_decoder(make_result("passed")), make_arrays(), tmp_path).read_text()
    assert '<h2>Decoded output</h2><p class="notrun">not run: no decoded outputs were recorded</p>' in page
    assert "decoded_" not in page and not list(tmp_path.glob("decoded_*"))
    page = write_html(_with_decoder(make_result("not_run")), {}, tmp_path).read_text()
    assert '<h2>Decoded output</h2><p class="notrun">not run: target tensorrt is not usable here' in page


def test_decoded_arrays_that_disagree_in_shape_do_not_cost_the_report(tmp_path):
    arrays = _decoded_arrays()
    arrays["backend_decoded"] = arrays["backend_decoded"][:, :, :8]
    page = write_html(_with_decoder(make_result("passed")), arrays, tmp_path).read_text()
    assert "images not shown: reference (4, 3, 16, 16) and backend (4, 3, 8, 16) decoded outputs differ in shape" in page
    assert (tmp_path / "samples_reference.png").exists() and not list(tmp_path.glob("decoded_*"))
    assert '<span class="verdict v-passed" id="verdict">PASSED</span>' in page


def test_python_source_is_shown_without_a_path():
    doc = make_result("passed")
    doc["source"] = {"kind": "python", "name": "ConvEncoder+ConvDenoiser", "sha256": "9" * 64}
    doc["bundle"]["source_checkpoint_sha256"] = None
    _, suite = _suite(junit_xml(doc))
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["source"] == "Python model ConvEncoder+ConvDenoiser" and props["source sha256"] == "9" * 64
    assert "source path" not in props and "source checkpoint sha256" not in props


def test_documents_without_a_source_still_show_the_checkpoint_hash():
    doc = make_result("passed")
    del doc["source"]
    doc["bundle"]["source_checkpoint_sha256"] = "b" * 64
    _, suite = _suite(junit_xml(doc))
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["source checkpoint sha256"] == "b" * 64 and "source" not in props
