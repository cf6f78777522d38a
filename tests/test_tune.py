"""``dualrate tune``: budgets, the Pareto front, bad input, and real searches on the tiny bundle
whose chosen plan is written as a bundle that validates under its own gates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from dualrate.exporter.errors import BadInputError
from dualrate.validation.tune_space import (Schedule, Scorer, candidate_plans, every_k_values, pareto_front,
                                            parse_budget)


def test_budgets_parse_and_point_the_right_way():
    psnr, db = parse_budget("final_psnr=30")
    assert (psnr.name, db, psnr.higher_is_better) == ("final_psnr", 30.0, True)
    assert psnr.meets(30.0, 30.0) and not psnr.meets(29.9, 30.0) and not psnr.meets(float("nan"), 30.0)
    rel, x = parse_budget("rel_l2=0.05")
    assert rel.meets(0.01, x) and not rel.meets(0.06, x)
    ref = np.ones((2, 1, 4, 4), np.float32)
    assert psnr.fn(ref, ref) == math.inf and rel.fn(ref * 1.1, ref) == pytest.approx(0.1)
    custom, v = parse_budget("accuracy=0.9", scorer=lambda s, r: 1.0)
    assert custom.name == "accuracy" and custom.meets(1.0, v)
    for bad, msg in (("psnr=30", "unknown metric 'psnr'"), ("final_psnr", "METRIC=VALUE"),
                     ("final_psnr=abc", "not a number"), ("final_psnr=inf", "finite")):
        with pytest.raises(BadInputError, match=msg):
            parse_budget(bad)
    with pytest.raises(BadInputError, match="scorer given is 'other'"):
        parse_budget("accuracy=0.9", scorer=Scorer("other", lambda s, r: 0.0))


def test_pareto_front_keeps_only_undominated_points_fastest_first():
    s = Scorer("final_psnr", lambda a, b: 0.0, True)
    pts = [{"time_s": 1.0, "score": 20.0}, {"time_s": 2.0, "score": 35.0}, {"time_s": 2.5, "score": 30.0},
           {"time_s": 3.0, "score": math.inf}, {"time_s": 0.5, "score": float("nan")}]
    assert [(p["time_s"], p["score"]) for p in pareto_front(pts, s)] == [(1.0, 20.0), (2.0, 35.0), (3.0, math.inf)]
    lower = Scorer("rel_l2", lambda a, b: 0.0, False)
    pts = [{"time_s": 1.0, "score": 0.1}, {"time_s": 2.0, "score": 0.2}, {"time_s": 3.0, "score": 0.01}]
    assert [p["time_s"] for p in pareto_front(pts, lower)] == [1.0, 3.0]


def test_search_space_comes_from_the_target_and_the_steps():
    plans = candidate_plans(["encoder", "denoiser"], ("fp32", "bf16"), target="openvino")
    assert [p.text for p in plans] == ["fp32", "bf16", "encoder=fp32,denoiser=bf16", "encoder=bf16,denoiser=fp32"]
    assert every_k_values(64) == [1, 2, 4, 8, 16] and every_k_values(8) == [1, 2]
    with pytest.raises(BadInputError, match="--every 9"):
        every_k_values(8, [2, 9])
    assert Schedule("calibrated", 0.1, (0, 3)).name == "calibrated 0.1"


@pytest.mark.parametrize("args, message", [
    (["--budget", "psnr=30"], "unknown metric 'psnr'"),
    (["--target", "nope"], "unknown target 'nope'"),
    (["--plans", "encoder=int9"], "unknown precision 'int9'"),
    (["--plans", "decoder=fp32"], "names graph 'decoder'"),
    (["--every", "99"], "--every 99"),
    (["--max-plans", "0"], "--max-plans 0"),
    (["--checkpoint", "/nonexistent/ckpt"], "the checkpoint given, /nonexistent/ckpt, is not there"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(tiny_bundle, tmp_path, args, message):
    base = {"--target": "onnxruntime", "--budget": "final_psnr=30"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    out = tmp_path / "new"
    r = run_cli("tune", str(tiny_bundle.path), *[x for kv in base.items() for x in kv], "-o", str(out))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr
    assert not out.exists() and not Path(str(out) + ".tune").exists()


def test_tune_writes_front_and_a_bundle_that_validates(tiny_bundle, tmp_path):
    """A real search (ONNX Runtime fp32, every-K and one calibrated threshold): the chosen plan is the
    fastest within budget, the new bundle refreshes where it was measured, records the plan as its
    default precision, and ``dualrate validate`` passes it under its own gates."""
    out, report = tmp_path / "tuned", tmp_path / "report"
    r = run_cli("tune", str(tiny_bundle.path), "--target", "onnxruntime", "--budget", "final_psnr=15",
                "--plans", "fp32", "--thresholds", "0.1", "--repeats", "2", "-o", str(out), "--report", str(report))
    assert r.returncode == 0, r.stderr + r.stdout
    doc = json.loads((report / "tune.json").read_text())
    points, chosen = doc["points"], doc["chosen"]
    assert doc["reference"]["time_s"] > 0 and len(points) >= 2
    assert all(p["time_s"] > 0 and p["speedup"] > 0 for p in points)
    assert all(p["plan"] != "fp32" or p["schedule"]["encoder_steps"] < 8 for p in points)   # reference excluded
    within = [p for p in points if p["score"] is None or p["score"] >= 15]
    assert chosen["meets_budget"] and chosen["time_s"] == min(p["time_s"] for p in within)
    assert {"checks", "reference", "calibrate", "search", "export", "validate"} <= set(doc["timings"])
    assert doc["validation"]["verdict"] == "PASSED"
    html = (report / "tune.html").read_text()
    assert 'id="front"' in html and 'id="budget"' in html and 'id="chosen"' in html
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["export_options"]["precision_plan"] == {"onnxruntime": "fp32"}
    spec = json.loads((out / "spec.json").read_text())
    assert spec["dual_rate"]["resolved_refresh_steps"] == chosen["schedule"]["steps"]
    v = run_cli("validate", str(out), "--target", "onnxruntime", "--reference", "golden")
    assert v.returncode == 0, v.stdout + v.stderr
    assert "chose fp32" in r.stdout


def test_budget_no_plan_meets_exits_1_naming_the_best(tiny_bundle, tmp_path):
    out = tmp_path / "never"
    r = run_cli("tune", str(tiny_bundle.path), "--target", "onnxruntime", "--budget", "rel_l2=1e-12",
                "--plans", "fp32", "--every", "2", "--thresholds", "0.5", "--repeats", "1", "-o", str(out))
    assert r.returncode == 1, r.stderr + r.stdout
    assert "no plan meets the budget rel_l2 <= 1e-12" in r.stdout and "the best plan found is fp32" in r.stdout
    assert not out.exists()
    doc = json.loads((Path(str(out) + ".tune") / "tune.json").read_text())
    assert doc["chosen"] is None and doc["points"]


def test_python_api_with_a_user_scorer(tiny_bundle, tmp_path):
    import dualrate

    seen = []

    def mean_abs(samples, reference):
        seen.append(samples.shape)
        return float(np.mean(np.abs(samples - reference)))

    res = dualrate.tune(tiny_bundle, tmp_path / "api", target="onnxruntime", budget="mean_abs=10",
                        scorer=Scorer("mean_abs", mean_abs, higher_is_better=False), plans=["fp32"], every=[2],
                        thresholds=[0.2], repeats=1, batch=1, validate=False)
    assert res.met and res.exit_code == 0 and res.bundle is not None and seen[0][0] == 1
    assert res.doc["budget"]["text"] == "mean_abs <= 10"
    from dualrate.exporter.precision_default import resolve_precision
    assert resolve_precision(res.bundle, "onnxruntime", None) == "fp32"
    assert resolve_precision(res.bundle, "openvino", None) == "fp32"
    assert resolve_precision(res.bundle, "onnxruntime", "int8") == "int8"


def test_recorded_plan_is_the_default_precision_per_target():
    from types import SimpleNamespace

    from dualrate.exporter.precision_default import recorded_plan, resolve_precision

    tuned = SimpleNamespace(manifest={"export_options": {"precision_plan": {"openvino": "encoder=bf16,denoiser=fp32"}}})
    plain = SimpleNamespace(manifest={"export_options": {}})
    assert resolve_precision(tuned, "openvino", None) == "encoder=bf16,denoiser=fp32"
    assert resolve_precision(tuned, "onnxruntime", None) == "fp32"       # another target: fp32
    assert resolve_precision(tuned, "openvino", "fp16") == "fp16"        # an explicit precision wins
    assert recorded_plan(plain, "openvino") is None and resolve_precision(plain, "openvino", None) == "fp32"


def test_a_chosen_bundle_that_fails_validate_is_removed_and_the_next_plan_tried(tiny_bundle, tmp_path, monkeypatch):
    """validate stubbed: the first bundle FAILS in the sampler layers (the next-fastest point is then
    written), and a graph-layer failure rules out the plan; nothing failing is left on disk."""
    from types import SimpleNamespace

    import dualrate
    import dualrate.api

    verdicts = []

    def fake_validate(bundle, **kw):
        layer = "free_running" if not verdicts else "graph"
        verdicts.append(layer)
        return SimpleNamespace(verdict="FAILED", exit_code=1,
                               doc={"first_failure": {"layer": layer, "graph": "encoder", "reasons": ["planted"]}})

    monkeypatch.setattr(dualrate.api, "validate", fake_validate)
    out = tmp_path / "tuned"
    res = dualrate.tune(tiny_bundle, out, target="onnxruntime", budget="final_psnr=0", plans=["fp32"], every=[2],
                        thresholds=[0.2], repeats=1, batch=1)
    assert verdicts == ["free_running", "graph"] and not res.met and res.exit_code == 1 and not out.exists()
    attempts = res.doc["validation_attempts"]
    assert [a["first_failure"]["layer"] for a in attempts] == ["free_running", "graph"]
    from dualrate.validation.tune import failure_text
    assert "2 plan(s) within the budget final_psnr >= 0 failed dualrate validate" in failure_text(res.doc)
