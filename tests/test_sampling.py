"""The reference dual-rate loop: caching, refresh audit, guidance branches, noise, NaN stops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualrate.exporter.errors import BadInputError, NonFiniteError
from dualrate.exporter.sampling import ArrayNoise, sample, spec_noise
from dualrate.exporter.spec import Spec
from tests.conftest import tiny_spec

LABELS = np.array([0, 1, 2, 3], dtype=np.int64)


def _noise(spec, batch=len(LABELS), seed=0):
    rng = np.random.default_rng(seed)
    shape = tuple(spec.model.sample_shape)
    return ArrayNoise(rng.standard_normal((batch, *shape)).astype(np.float32),
                      rng.standard_normal((spec.sampler.num_steps, batch, *shape)).astype(np.float32))


def heavy_every_step(pair, spec, labels, noise):
    """Independent plain loop: encoder and denoiser at every step, lambda_ctx = lambda_i,
    coefficients re-derived in float64 from the SAMPLER.md formulas, not read from tables."""
    lam = np.asarray(spec.sampler.tables.logsnr)
    g = spec.guidance.scale
    z = torch.from_numpy(noise.initial.copy())
    null = torch.full((len(labels),), spec.model.null_class)
    with torch.no_grad():
        for i in range(spec.sampler.num_steps):
            lt, ls = lam[i], lam[i + 1]
            a_t, s_t = np.sqrt(1 / (1 + np.exp(-lt))), np.sqrt(1 / (1 + np.exp(lt)))
            a_s, s_s = np.sqrt(1 / (1 + np.exp(-ls))), np.sqrt(1 / (1 + np.exp(ls)))
            lam_b = torch.full((len(labels),), float(lt))

            def x0_for(cls):
                feats = pair.encoder(z, lam_b, cls)
                v = pair.denoiser(z, lam_b, lam_b, cls, *feats)
                return float(a_t) * z - float(s_t) * v

            x0 = x0_for(torch.from_numpy(labels))
            if g != 1.0:
                xu = x0_for(null)
                x0 = xu + g * (x0 - xu)
            if i == spec.sampler.num_steps - 1:
                z = x0
                break
            c = 1 - np.exp(lt - ls)
            z = float(a_s * (1 - c) / a_t) * z + float(a_s * c) * x0 + float(s_s * np.sqrt(c)) * torch.from_numpy(noise.steps[i])
    return z.numpy()


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_refresh_every_step_equals_heavy_every_step(pair, runner, guidance):
    spec = tiny_spec(pair, num_steps=10, refresh_params={"k": 1, "phase": 0}, guidance=guidance)
    noise = _noise(spec)
    got = sample(runner, spec, LABELS, noise).x
    want = heavy_every_step(pair, spec, LABELS, noise)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


def test_cache_changes_output_and_shifting_one_refresh_step_matters(pair, runner):
    base = tiny_spec(pair, num_steps=12, refresh="explicit", refresh_params={"steps": [0, 4, 8]})
    shifted = tiny_spec(pair, num_steps=12, refresh="explicit", refresh_params={"steps": [0, 5, 8]})
    noise = _noise(base)
    a = sample(runner, base, LABELS, noise).x
    b = sample(runner, shifted, LABELS, noise).x
    again = sample(runner, base, LABELS, noise).x
    assert np.array_equal(a, again)
    assert np.max(np.abs(a - b)) > 1e-4


def test_json_round_trip_gives_bit_identical_samples(pair, runner):
    spec = tiny_spec(pair, num_steps=8, guidance=1.5, refresh_params={"k": 3, "phase": 0})
    back, _ = Spec.from_json(spec.to_json())
    noise = _noise(spec)
    assert sample(runner, spec, LABELS, noise).x.tobytes() == sample(runner, back, LABELS, noise).x.tobytes()


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_refresh_audit_equals_spec_per_branch(pair, runner, guidance):
    spec = tiny_spec(pair, num_steps=16, refresh_params={"k": 5, "phase": 0}, guidance=guidance)
    res = sample(runner, spec, LABELS, _noise(spec))
    assert res.refresh_log["cond"] == [0, 5, 10, 15]
    assert res.refresh_log["uncond"] == ([0, 5, 10, 15] if guidance != 1.0 else [])


def test_guidance_interval_gives_uncond_its_own_cache(pair, runner):
    spec = tiny_spec(pair, num_steps=16, refresh_params={"k": 6, "phase": 0}, guidance=3.0)
    lam = spec.sampler.tables.logsnr
    # guided only on steps 3..8: uncond must encode on entry (3, its cache is empty) and at the refresh at 6
    interval = (float(lam[3]), float(lam[8]))
    spec = tiny_spec(pair, num_steps=16, refresh_params={"k": 6, "phase": 0}, guidance=3.0, guidance_interval=interval)
    res = sample(runner, spec, LABELS, _noise(spec))
    assert res.refresh_log["cond"] == [0, 6, 12]
    assert res.refresh_log["uncond"] == [3, 6]


def test_guidance_interval_entry_after_a_missed_refresh_re_encodes(pair, runner):
    spec = tiny_spec(pair, num_steps=16, refresh_params={"k": 4, "phase": 0}, guidance=2.0)
    lam = spec.sampler.tables.logsnr
    # uncond active on 1..2 and again on 9..10 (two intervals are not expressible; use 1..10 vs 9..10)
    spec = tiny_spec(pair, num_steps=16, refresh_params={"k": 4, "phase": 0}, guidance=2.0,
                     guidance_interval=(float(lam[9]), float(lam[10])))
    res = sample(runner, spec, LABELS, _noise(spec))
    assert res.refresh_log["uncond"] == [9]      # no refresh at 8 while inactive; first use encodes


def test_spec_noise_is_deterministic_and_seeded(pair, runner):
    spec = tiny_spec(pair, num_steps=6)
    a = sample(runner, spec, LABELS, spec_noise(spec, 4, seed=7)).x
    b = sample(runner, spec, LABELS, spec_noise(spec, 4, seed=7)).x
    c = sample(runner, spec, LABELS, spec_noise(spec, 4, seed=8)).x
    assert a.tobytes() == b.tobytes()
    assert not np.allclose(a, c)


class _NanAt:
    """Wraps a runner and injects NaN into one graph at one step."""

    def __init__(self, inner, graph, step, spec):
        self.inner, self.graph, self.step, self.calls = inner, graph, step, 0
        self.logsnr = np.asarray(spec.sampler.tables.logsnr, np.float32)

    def _step(self, logsnr):
        return int(np.flatnonzero(self.logsnr == logsnr[0])[0])

    def encode(self, z, logsnr, class_id):
        feats = self.inner.encode(z, logsnr, class_id)
        if self.graph == "encoder" and self._step(logsnr) == self.step:
            feats = (feats[0] * float("nan"),) + feats[1:]
        return feats

    def denoise(self, z, logsnr, ctx, class_id, feats):
        out = self.inner.denoise(z, logsnr, ctx, class_id, feats)
        if self.graph == "denoiser" and self._step(logsnr) == self.step:
            out = out.copy()
            out[0, 0, 0, 0] = np.inf
        return out

    def features_to_numpy(self, feats):
        return self.inner.features_to_numpy(feats)


def test_nan_in_denoiser_names_step_and_graph(pair, runner):
    spec = tiny_spec(pair, num_steps=10)
    with pytest.raises(NonFiniteError, match=r"denoiser output at step 6"):
        sample(_NanAt(runner, "denoiser", 6, spec), spec, LABELS, _noise(spec))


def test_nan_in_encoder_names_the_encoder_and_its_step(pair, runner):
    spec = tiny_spec(pair, num_steps=10, refresh_params={"k": 4, "phase": 0})
    with pytest.raises(NonFiniteError, match=r"encoder output 0 computed at step 4 .*seen at step 4"):
        sample(_NanAt(runner, "encoder", 4, spec), spec, LABELS, _noise(spec))


def test_bad_class_and_noise_shapes_are_clear(pair, runner):
    spec = tiny_spec(pair, num_steps=4)
    with pytest.raises(BadInputError, match=r"class id 19 is out of range; this model has classes 0..9"):
        sample(runner, spec, [19], _noise(spec, 1))
    with pytest.raises(BadInputError, match=r"noise draw 0 has shape \(2, 1, 8, 8\); expected \(4, 1, 8, 8\)"):
        sample(runner, spec, LABELS, _noise(spec, 2))


def test_record_keeps_each_step(pair, runner):
    spec = tiny_spec(pair, num_steps=5)
    res = sample(runner, spec, LABELS, _noise(spec), record=True)
    assert len(res.trajectory) == 5 and np.array_equal(res.trajectory[-1], res.x)
    np.testing.assert_array_equal(res.x0_estimates[-1], res.x)   # return_x0 final step
