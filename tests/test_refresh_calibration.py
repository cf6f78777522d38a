"""The ``calibrated`` refresh generator: measured drift decides, and the sampler replays it exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from dualrate.exporter.errors import BadInputError, SpecError
from dualrate.exporter.model_config import preset
from dualrate.exporter.refresh import resolve_refresh
from dualrate.exporter.runner import graph_feeds, role_values
from dualrate.exporter.sampling import sample, spec_noise
from dualrate.exporter.spec import Spec
from dualrate.exporter.spec_builder import SamplerOptions, make_spec

from tests.conftest import run_cli, tiny_spec

THRESHOLD = 0.5                 # the random tiny net drifts fast: 0.3-1.3 per step


def calibrated(pair, threshold=THRESHOLD, **opts):
    return tiny_spec(pair, refresh="calibrated", refresh_params={"threshold": threshold}, **opts)


def relative_drift(fresh, cached) -> float:
    assert fresh.keys() == cached.keys()
    num = sum(float(np.sum((fresh[k].astype(np.float64) - cached[k]) ** 2)) for k in cached)
    return float(np.sqrt(num / sum(float(np.sum(b.astype(np.float64) ** 2)) for b in cached.values())))


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_refresh_steps_are_where_the_replayed_trajectory_drifts_past_the_threshold(pair, runner, guidance):
    spec = calibrated(pair, num_steps=24, guidance=guidance)
    steps = list(spec.dual_rate.resolved_refresh_steps)
    params = spec.dual_rate.refresh.params
    assert spec.dual_rate.refresh.kind == "calibrated" and params["threshold"] == THRESHOLD
    assert params["batch"] == 4 and params["seed"] == 0
    assert steps[0] == 0 and 2 <= len(steps) < 24, steps          # the tiny net drifts: some, not all, steps

    # Replay: sample the calibrated spec on the plain runner, then recompute every step's drift
    # independently from the z it actually saw. Refresh steps exceed the threshold, others do not.
    cfg = preset("tiny")
    labels = np.arange(4) % cfg.num_classes
    # cond rows, then the null class (DR-UViT's is num_classes) for the unconditional rows
    rows = 2 if guidance != 1.0 else 1
    cls = np.concatenate([labels] + [np.full(4, cfg.num_classes)] * (rows - 1)).astype(np.int64)
    assert_replay_matches(runner, spec, {"class_id": labels}, {"class_id": cls}, rows)


def assert_replay_matches(runner, spec, conditioning, group_cond, rows, batch=4):
    """Sample ``spec`` on ``runner``, recompute each step's drift on the replayed z (``group_cond``: the
    conditioning of the ``rows`` branch groups, built by the caller) and check it against the record."""
    steps = list(spec.dual_rate.resolved_refresh_steps)
    params = spec.dual_rate.refresh.params
    result = sample(runner, spec, conditioning, spec_noise(spec, batch, 0), record=True)
    assert result.refresh_log["cond"] == steps
    zs = [spec_noise(spec, batch, 0).draw(0, tuple(spec.model.sample_shape)), *result.trajectory[:-1]]
    times = spec.sampler.tables.model_time
    cached = None
    for i, z in enumerate(zs):
        z_in = np.concatenate([z] * rows)
        feeds = graph_feeds(spec.model.encoder, role_values(z_in, np.full(len(z_in), times[i]), None, group_cond))
        for name, value in group_cond.items():
            assert feeds[name] is value
        fresh = runner.features_to_numpy(runner.encode(feeds))
        if cached is None:
            cached = fresh
            continue
        drift = relative_drift(fresh, cached)
        assert params["measured_drift"][i] == pytest.approx(drift, rel=1e-4, abs=1e-6), i
        assert (drift > params["threshold"]) == (i in steps), (i, drift)
        if i in steps:
            cached = fresh


class _TimelessEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)

    def forward(self, x):
        return (torch.tanh(self.conv(x)),)


class _CtxDenoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(5, 1, 3, padding=1)

    def forward(self, x, t, t_ctx, feat):
        return self.conv(torch.cat([x, feat], 1)) * (1 + (t - t_ctx)[:, None, None, None])


def test_calibration_replays_for_an_encoder_without_a_time_input():
    from dualrate.exporter.export import spec_for_model
    from dualrate.exporter.model_pair import SAMPLE, TIME, TIME_CTX, DualRateModel, feature
    from dualrate.exporter.torch_runner import TorchReferenceRunner

    torch.manual_seed(0)
    model = DualRateModel(_TimelessEncoder(), _CtxDenoiser(), encoder_inputs={"x": SAMPLE},
                          denoiser_inputs={"x": SAMPLE, "t": TIME, "t_ctx": TIME_CTX, "feat": feature("feat0")},
                          sample_shape=(1, 8, 8), prediction="eps").eval()
    spec = spec_for_model(model, SamplerOptions(num_steps=12, refresh="calibrated",
                                                refresh_params={"threshold": 0.3, "batch": 2}), {})
    steps = spec.dual_rate.resolved_refresh_steps
    assert 2 <= len(steps) < 12, steps                       # some cached steps, where time_ctx matters
    assert_replay_matches(TorchReferenceRunner(model, spec), spec, None, {}, 1, batch=2)


def test_extreme_thresholds_give_every_step_and_only_the_first(pair):
    assert list(calibrated(pair, 1e-12, num_steps=8).dual_rate.resolved_refresh_steps) == list(range(8))
    assert list(calibrated(pair, 1e9, num_steps=8).dual_rate.resolved_refresh_steps) == [0]


def test_calibrated_spec_round_trips_through_json(pair, tmp_path):
    spec = calibrated(pair, num_steps=12, guidance=2.0)
    spec.save(tmp_path / "spec.json")
    again, _ = Spec.load(tmp_path / "spec.json")
    assert again.dual_rate == spec.dual_rate
    drift = json.loads((tmp_path / "spec.json").read_text())["dual_rate"]["refresh"]["params"]["measured_drift"]
    assert drift[0] is None and len(drift) == 12


@pytest.mark.parametrize("params,match", [
    ({"threshold": 0}, "positive number"), ({"threshold": -1.0}, "positive number"),
    ({"threshold": float("nan")}, "positive number"), ({}, "threshold is None"),
    ({"threshold": 0.1, "batch": 0}, "batch is 0"), ({"threshold": 0.1, "every": 3}, "unknown parameters")])
def test_bad_calibration_parameters_are_bad_input(pair, params, match):
    with pytest.raises(BadInputError, match=match):
        tiny_spec(pair, num_steps=4, refresh="calibrated", refresh_params=params)


def test_without_a_model_it_says_where_it_works(runner):
    options = SamplerOptions(num_steps=4, refresh="calibrated", refresh_params={"threshold": 0.1})
    with pytest.raises(BadInputError, match="measured on the model"):
        make_spec(runner.spec.model, options)        # the model's graph signatures alone, no runner
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
