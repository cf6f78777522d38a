"""The ``calibrated`` refresh generator: measured drift decides, and the sampler replays it exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dualrate.exporter.errors import BadInputError, SpecError
from dualrate.exporter.refresh import resolve_refresh
from dualrate.exporter.sampling import group_labels, sample, spec_noise
from dualrate.exporter.spec import Spec
from dualrate.exporter.spec_builder import SamplerOptions, make_spec

from tests.conftest import feature_shapes, run_cli

THRESHOLD = 0.5                 # the random tiny net drifts fast: 0.3-1.3 per step


def calibrated(pair, runner, threshold=THRESHOLD, **opts):
    options = SamplerOptions(refresh="calibrated", refresh_params={"threshold": threshold}, **opts)
    return make_spec(pair.info, feature_shapes(runner, pair.info), options, runner=runner)


def relative_drift(fresh, cached) -> float:
    num = sum(float(np.sum((a.astype(np.float64) - b) ** 2)) for a, b in zip(fresh, cached))
    return float(np.sqrt(num / sum(float(np.sum(b.astype(np.float64) ** 2)) for b in cached)))


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_refresh_steps_are_where_the_replayed_trajectory_drifts_past_the_threshold(pair, runner, guidance):
    spec = calibrated(pair, runner, num_steps=24, guidance=guidance)
    steps = list(spec.dual_rate.resolved_refresh_steps)
    params = spec.dual_rate.refresh.params
    assert spec.dual_rate.refresh.kind == "calibrated" and params["threshold"] == THRESHOLD
    assert params["batch"] == 4 and params["seed"] == 0
    assert steps[0] == 0 and 2 <= len(steps) < 24, steps          # the tiny net drifts: some, not all, steps

    # Replay: sample the calibrated spec on the plain runner, then recompute every step's drift
    # independently from the z it actually saw. Refresh steps exceed the threshold, others do not.
    labels = np.arange(4) % pair.info.num_classes
    result = sample(runner, spec, labels, spec_noise(spec, 4, 0), record=True)
    assert result.refresh_log["cond"] == steps
    zs = [spec_noise(spec, 4, 0).draw(0, tuple(spec.model.sample_shape)), *result.trajectory[:-1]]
    lam = spec.sampler.tables.logsnr
    branches = ("cond", "uncond") if guidance != 1.0 else ("cond",)
    cls = group_labels(labels, spec.model.null_class, branches)
    cached = None
    for i, z in enumerate(zs):
        z_in = np.concatenate([z] * len(branches))
        fresh = runner.features_to_numpy(runner.encode(z_in, np.full(len(cls), lam[i], np.float32), cls))
        if cached is None:
            cached = fresh
            continue
        drift = relative_drift(fresh, cached)
        assert params["measured_drift"][i] == pytest.approx(drift, rel=1e-4, abs=1e-6), i
        assert (drift > THRESHOLD) == (i in steps), (i, drift)
        if i in steps:
            cached = fresh


def test_extreme_thresholds_give_every_step_and_only_the_first(pair, runner):
    assert list(calibrated(pair, runner, 1e-12, num_steps=8).dual_rate.resolved_refresh_steps) == list(range(8))
    assert list(calibrated(pair, runner, 1e9, num_steps=8).dual_rate.resolved_refresh_steps) == [0]


def test_calibrated_spec_round_trips_through_json(pair, runner, tmp_path):
    spec = calibrated(pair, runner, num_steps=12, guidance=2.0)
    spec.save(tmp_path / "spec.json")
    again, _ = Spec.load(tmp_path / "spec.json")
    assert again.dual_rate == spec.dual_rate
    drift = json.loads((tmp_path / "spec.json").read_text())["dual_rate"]["refresh"]["params"]["measured_drift"]
    assert drift[0] is None and len(drift) == 12


@pytest.mark.parametrize("params,match", [
    ({"threshold": 0}, "positive number"), ({"threshold": -1.0}, "positive number"),
    ({"threshold": float("nan")}, "positive number"), ({}, "threshold is None"),
    ({"threshold": 0.1, "batch": 0}, "batch is 0"), ({"threshold": 0.1, "every": 3}, "unknown parameters")])
def test_bad_calibration_parameters_are_bad_input(pair, runner, params, match):
    options = SamplerOptions(num_steps=4, refresh="calibrated", refresh_params=params)
    with pytest.raises(BadInputError, match=match):
        make_spec(pair.info, feature_shapes(runner, pair.info), options, runner=runner)


def test_without_a_model_it_says_where_it_works(pair, runner):
    options = SamplerOptions(num_steps=4, refresh="calibrated", refresh_params={"threshold": 0.1})
    with pytest.raises(BadInputError, match="measured on the model"):
        make_spec(pair.info, feature_shapes(runner, pair.info), options)
    with pytest.raises(SpecError, match="measured on the model"):
        resolve_refresh("calibrated", {"threshold": 0.1}, 4)


def test_cli_export_and_sample_take_refresh_calibrated(tiny_checkpoint, tmp_path):
    out = run_cli("export", str(tiny_checkpoint), "-o", str(tmp_path / "bundle"), "--steps", "12",
                  "--refresh-calibrated", str(THRESHOLD))
    assert out.returncode == 0, out.stderr
    spec, _ = Spec.load(tmp_path / "bundle" / "spec.json")
    assert spec.dual_rate.refresh.kind == "calibrated"
    steps = list(spec.dual_rate.resolved_refresh_steps)
    assert f"refresh at {steps}" in out.stdout
    both = run_cli("export", str(tiny_checkpoint), "-o", str(tmp_path / "b2"), "--refresh-every", "4",
                   "--refresh-calibrated", "0.1")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    bad = run_cli("sample", str(tiny_checkpoint), "--refresh-calibrated", "0", "-o", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "positive number" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.png").exists()
