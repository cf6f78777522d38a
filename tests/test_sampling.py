"""The reference dual-rate loop: caching, refresh audit, guidance branches, noise, NaN stops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torch import nn

from dualrate.exporter.errors import BadInputError, NonFiniteError, SpecError
from dualrate.exporter.export import spec_for_model
from dualrate.exporter.model_config import preset
from dualrate.exporter.model_pair import SAMPLE, TIME, Conditioning, DualRateModel, cond, feature
from dualrate.exporter.sampling import ArrayNoise, call_plan, sample, spec_noise
from dualrate.exporter.spec import ROLE_TIME, ROLE_TIME_CTX, Spec, roles
from dualrate.exporter.spec_builder import SamplerOptions
from dualrate.exporter.torch_runner import TorchReferenceRunner
from tests.conftest import tiny_spec

LABELS = np.array([0, 1, 2, 3], dtype=np.int64)


def _noise(spec, batch=len(LABELS), seed=0):
    rng = np.random.default_rng(seed)
    shape = tuple(spec.model.sample_shape)
    return ArrayNoise(rng.standard_normal((batch, *shape)).astype(np.float32),
                      rng.standard_normal((spec.sampler.num_steps, batch, *shape)).astype(np.float32))


def heavy_every_step(pair, spec, labels, noise):
    """Independent plain loop: encoder and denoiser at every step, lambda_ctx = lambda_i,
    coefficients re-derived in float64 from the spec's formulas (README "Concepts"), not read from tables."""
    lam = np.asarray(spec.sampler.tables.logsnr)
    g = spec.guidance.scale
    z = torch.from_numpy(noise.initial.copy())
    # the null class of DR-UViT is num_classes (from the preset, not from the spec under test)
    null_class = preset("tiny").num_classes
    assert spec.model.condition("class_id").null_value == null_class
    null = torch.full((len(labels),), null_class)
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
    """Wraps a runner and injects NaN into one graph at one step (found from the graph's time input)."""

    def __init__(self, inner, graph, step, spec):
        self.inner, self.graph, self.step = inner, graph, step
        self.logsnr = np.asarray(spec.sampler.tables.logsnr, np.float32)
        self.time_input = {g: roles(gio)[ROLE_TIME].name for g, gio in spec.model.graphs().items()}

    def _step(self, graph, feeds):
        return int(np.flatnonzero(self.logsnr == feeds[self.time_input[graph]][0])[0])

    def encode(self, feeds):
        feats = self.inner.encode(feeds)
        if self.graph == "encoder" and self._step("encoder", feeds) == self.step:
            first = next(iter(feats))
            feats = {**feats, first: feats[first] * float("nan")}
        return feats

    def denoise(self, feeds):
        out = self.inner.denoise(feeds)
        if self.graph == "denoiser" and self._step("denoiser", feeds) == self.step:
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
    with pytest.raises(NonFiniteError, match=r"encoder output 'feat0' computed at step 4 .*seen at step 4"):
        sample(_NanAt(runner, "encoder", 4, spec), spec, LABELS, _noise(spec))


def test_bad_class_and_noise_shapes_are_clear(pair, runner):
    spec = tiny_spec(pair, num_steps=4)
    with pytest.raises(BadInputError, match=r"class id 19 is out of range for 'class_id'; this model has classes "
                                             r"0\.\.9 \(id 10 is the null class used for guidance\)"):
        sample(runner, spec, [19], _noise(spec, 1))
    with pytest.raises(BadInputError, match=r"class id -1 is out of range for 'class_id'"):
        sample(runner, spec, {"class_id": np.array([-1])}, _noise(spec, 1))
    with pytest.raises(BadInputError, match=r"noise draw 0 has shape \(2, 1, 8, 8\); expected \(4, 1, 8, 8\)"):
        sample(runner, spec, LABELS, _noise(spec, 2))


def test_record_keeps_each_step(pair, runner):
    spec = tiny_spec(pair, num_steps=5)
    res = sample(runner, spec, LABELS, _noise(spec), record=True)
    assert len(res.trajectory) == 5 and np.array_equal(res.trajectory[-1], res.x)
    np.testing.assert_array_equal(res.x0_estimates[-1], res.x)   # return_x0 final step


def test_class_ids_by_name_and_as_a_list_sample_the_same(pair, runner):
    spec = tiny_spec(pair, num_steps=4, guidance=2.0)
    noise = _noise(spec)
    a = sample(runner, spec, LABELS, noise).x
    b = sample(runner, spec, {"class_id": LABELS}, noise).x
    assert a.tobytes() == b.tobytes()


# -- role binding: a model with named conditioning and no time_ctx -------------------------------

L, D = 3, 4                                           # a "prompt": L tokens of D floats, plus a token mask
NULL_TEXT = (np.arange(L * D, dtype=np.float32).reshape(L, D) / 7 - 0.5)   # a stored (file) null


class TextEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.proj = nn.Linear(D, 4)

    def forward(self, x, t, text, mask):
        m = mask.to(x.dtype)[:, :, None]
        pooled = (text * m).sum(1) / m.sum(1).clamp(min=1.0)
        return {"mid": torch.tanh(self.conv(x) + self.proj(pooled)[:, :, None, None] + t[:, None, None, None] / 15)}


class TextDenoiser(nn.Module):
    """Takes no time_ctx: the cached features are used without the time they were computed at."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1 + 4, 1, 3, padding=1)
        self.proj = nn.Linear(D, 1)

    def forward(self, x, t, text, mid):
        scale = 1 + t[:, None, None, None] / 30
        return self.conv(torch.cat([x, mid], 1)) + self.proj(text.mean(1))[:, :, None, None] * scale


def text_model(null_text=NULL_TEXT, seed=0) -> DualRateModel:
    torch.manual_seed(seed)
    return DualRateModel(
        TextEncoder(), TextDenoiser(),
        encoder_inputs={"x": SAMPLE, "t": TIME, "text": cond("text"), "mask": cond("mask")},
        denoiser_inputs={"x": SAMPLE, "t": TIME, "text": cond("text"), "mid": feature("mid")},
        sample_shape=(1, 8, 8), prediction="eps",
        conditioning=[Conditioning("text", (L, D), "float32", null=null_text),
                      Conditioning("mask", (L,), "int64", null=1)]).eval()


def text_conditioning(batch=2, seed=3):
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, L), np.int64)
    mask[0, -1] = 0
    return {"text": rng.standard_normal((batch, L, D)).astype(np.float32), "mask": mask}


@pytest.fixture(scope="module")
def text():
    return text_model()


def text_reference(model, spec, conditioning, noise):
    """Independent dual-rate loop on the modules: encoder at the refresh steps (per branch), denoiser
    every step without time_ctx, eps -> x0 and the ancestral step re-derived in float64."""
    lam = np.asarray(spec.sampler.tables.logsnr)
    g = spec.guidance.scale
    refresh = set(spec.dual_rate.resolved_refresh_steps)
    b = len(conditioning["text"])
    branches = {"cond": (torch.from_numpy(conditioning["text"]), torch.from_numpy(conditioning["mask"]))}
    if g != 1.0:
        branches["uncond"] = (torch.from_numpy(np.repeat(NULL_TEXT[None], b, 0)), torch.ones(b, L, dtype=torch.int64))
    z = torch.from_numpy(noise.initial.copy())
    cache = {}
    with torch.no_grad():
        for i in range(spec.sampler.num_steps):
            lt, ls = lam[i], lam[i + 1]
            a_t, s_t = np.sqrt(1 / (1 + np.exp(-lt))), np.sqrt(1 / (1 + np.exp(lt)))
            a_s, s_s = np.sqrt(1 / (1 + np.exp(-ls))), np.sqrt(1 / (1 + np.exp(ls)))
            t = torch.full((b,), float(lt))
            x0 = {}
            for br, (txt, mask) in branches.items():
                if i in refresh:
                    cache[br] = model.encoder(z, t, txt, mask)["mid"]
                eps = model.denoiser(z, t, txt, cache[br])
                x0[br] = (z - float(s_t) * eps) / float(a_t)
            x = x0["cond"] if g == 1.0 else x0["uncond"] + g * (x0["cond"] - x0["uncond"])
            if i == spec.sampler.num_steps - 1:
                z = x
                break
            c = 1 - np.exp(lt - ls)
            xi = torch.from_numpy(noise.steps[i])
            z = float(a_s * (1 - c) / a_t) * z + float(a_s * c) * x + float(s_s * np.sqrt(c)) * xi
    return z.numpy()


@pytest.mark.parametrize("guidance", [1.0, 2.0])
def test_a_denoiser_without_time_ctx_samples_and_its_spec_has_no_time_ctx_input(text, guidance):
    spec = spec_for_model(text, SamplerOptions(num_steps=6, refresh_params={"k": 3, "phase": 0}, guidance=guidance), {})
    den, enc = roles(spec.model.denoiser), roles(spec.model.encoder)
    assert ROLE_TIME_CTX not in den and ROLE_TIME_CTX not in enc
    assert set(den) == {"sample", "time", "cond:text", "feature:mid"}
    assert set(enc) == {"sample", "time", "cond:text", "cond:mask"}
    assert [i.name for i in spec.model.denoiser.inputs] == ["x", "t", "text", "mid"]
    back, _ = Spec.from_json(spec.to_json(), strict=True)
    assert back == spec
    cond_rows = text_conditioning()
    noise = _noise(spec, batch=2, seed=5)
    res = sample(TorchReferenceRunner(text, spec), spec, cond_rows, noise, nulls=text.nulls())
    assert res.refresh_log == {"cond": [0, 3], "uncond": [0, 3] if guidance != 1.0 else []}
    assert np.all(np.isfinite(res.x))
    np.testing.assert_allclose(res.x, text_reference(text, spec, cond_rows, noise), rtol=1e-4, atol=2e-5)


class _Counting:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def encode(self, feeds):
        self.calls += 1
        return self.inner.encode(feeds)

    def denoise(self, feeds):
        self.calls += 1
        return self.inner.denoise(feeds)


def _good():
    return text_conditioning()


@pytest.mark.parametrize("make,match", [
    (lambda: {**_good(), "text": np.zeros((2, L, D + 1), np.float32)},
     r"conditioning 'text' has shape \[2, 3, 5\]; expected \[batch, 3, 4\]"),
    (lambda: {**_good(), "mask": np.ones((2, L + 1), np.int64)},
     r"conditioning 'mask' has shape \[2, 4\]; expected \[batch, 3\]"),
    (lambda: {**_good(), "text": np.full((2, L, D), "a")}, r"conditioning 'text' has dtype <U1; expected float32"),
    (lambda: {**_good(), "mask": np.full((2, L), 0.5)},
     r"conditioning 'mask' has dtype float64 with non-integer values; expected int64"),
    (lambda: {**_good(), "prompt": np.zeros((2, L, D), np.float32)},
     r"conditioning 'prompt' is not an input of this model; it takes 'text' \(float32 \[batch, 3, 4\]\), "
     r"'mask' \(int64 \[batch, 3\]\)"),
    (lambda: {"text": _good()["text"]},
     r"conditioning 'mask' is missing; this model takes 'text' \(float32 \[batch, 3, 4\]\), 'mask' \(int64 \[batch, 3\]\)"),
    (lambda: {"mask": _good()["mask"]},
     r"conditioning 'text' is missing; this model takes 'text' \(float32 \[batch, 3, 4\]\), 'mask' \(int64 \[batch, 3\]\)"),
    (lambda: {**_good(), "mask": np.ones((3, L), np.int64)}, r"disagree on the batch size: \{'text': 2, 'mask': 3\}"),
    (lambda: [0, 1], r"conditioning was given as a list, but this model takes 'text' \(float32 \[batch, 3, 4\]\), 'mask'"),
])
def test_bad_conditioning_by_name_is_refused_before_any_graph_runs(text, make, match):
    spec = spec_for_model(text, SamplerOptions(num_steps=3, guidance=2.0), {})
    counting = _Counting(TorchReferenceRunner(text, spec))
    with pytest.raises(BadInputError, match=match):
        sample(counting, spec, make(), _noise(spec, batch=2), nulls=text.nulls())
    assert counting.calls == 0


@pytest.mark.parametrize("graph,edit,match", [
    ("denoiser", lambda f: {**f, "text": np.zeros((2, L, D + 1), np.float32)},
     r"denoiser: input 'text' has shape \[2, 3, 5\]; the graph takes \['batch', 3, 4\]"),
    ("encoder", lambda f: {**f, "mask": f["mask"].astype(np.int32)},
     r"encoder: input 'mask' has dtype int32; the graph takes int64"),
    ("denoiser", lambda f: {k: v for k, v in f.items() if k != "text"},
     r"denoiser: input\(s\) \['text'\] were not fed; the graph takes \['x', 't', 'text', 'mid'\]"),
    ("encoder", lambda f: {**f, "prompt": f["text"]},
     r"encoder: fed \['prompt'\], which the graph does not take \(\['x', 't', 'text', 'mask'\]\)"),
])
def test_runner_feeds_by_name_are_checked_against_the_spec(text, graph, edit, match):
    spec = spec_for_model(text, SamplerOptions(num_steps=3), {})
    runner = TorchReferenceRunner(text, spec)
    rows = _good()
    feeds = {"x": np.zeros((2, 1, 8, 8), np.float32), "t": np.zeros(2, np.float32), **rows}
    if graph == "denoiser":
        del feeds["mask"]
        feeds["mid"] = runner.encode({**feeds, "mask": rows["mask"]})["mid"]
        call = runner.denoise
    else:
        call = runner.encode
    call(feeds)                                           # the well-formed feeds run
    with pytest.raises(BadInputError, match=match):
        call(edit(feeds))


def test_guidance_with_a_conditioning_that_declares_no_null_is_refused():
    bare = text_model(null_text=None)
    with pytest.raises(SpecError, match=r"guidance.scale is 2.0 but conditioning 'text' declares no null value"):
        spec_for_model(bare, SamplerOptions(num_steps=3, guidance=2.0), {})
    # without guidance it samples: the null is only needed by the unconditional branch
    spec = spec_for_model(bare, SamplerOptions(num_steps=3), {})
    assert spec.model.condition("text").null_kind == "none"
    runner = TorchReferenceRunner(bare, spec)
    assert np.all(np.isfinite(sample(runner, spec, _good(), _noise(spec, batch=2)).x))
    # a spec that skipped validation is still refused by the loop, naming the input, before any call
    import dataclasses
    guided = dataclasses.replace(spec, guidance=dataclasses.replace(spec.guidance, scale=2.0))
    counting = _Counting(runner)
    with pytest.raises(BadInputError,
                       match=r"guidance needs a null value for conditioning 'text', which declares none"):
        sample(counting, guided, _good(), _noise(spec, batch=2))
    assert counting.calls == 0


def test_a_stored_null_must_be_passed_under_guidance(text):
    spec = spec_for_model(text, SamplerOptions(num_steps=3, guidance=2.0), {})
    c = spec.model.condition("text")
    assert (c.null_kind, c.null_file, c.null_value) == ("file", "conditioning/text.null.npy", None)
    assert spec.model.condition("mask").null_kind == "value" and spec.model.condition("mask").null_value == 1.0
    runner = TorchReferenceRunner(text, spec)
    with pytest.raises(BadInputError, match=r"guidance needs the null value of conditioning 'text' "
                                             r"\(conditioning/text.null.npy\), and none was passed"):
        sample(runner, spec, _good(), _noise(spec, batch=2))
    with pytest.raises(BadInputError, match=r"null value of conditioning 'text' has shape \[3, 5\]; expected \[3, 4\]"):
        sample(runner, spec, _good(), _noise(spec, batch=2), nulls={"text": np.zeros((L, D + 1), np.float32)})


class _Recording:
    """Keeps a host copy of every call's feeds, by graph."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = {"encoder": [], "denoiser": []}

    def encode(self, feeds):
        self.calls["encoder"].append({k: np.array(v) for k, v in feeds.items() if isinstance(v, np.ndarray)})
        return self.inner.encode(feeds)

    def denoise(self, feeds):
        self.calls["denoiser"].append({k: np.array(v) for k, v in feeds.items() if isinstance(v, np.ndarray)})
        return self.inner.denoise(feeds)

    def features_to_numpy(self, feats):
        return self.inner.features_to_numpy(feats)


@pytest.mark.parametrize("interval", [False, True])
def test_the_uncond_branch_is_fed_exactly_the_stored_null_rows(text, interval):
    opts = dict(num_steps=8, refresh_params={"k": 3, "phase": 0}, guidance=2.5)
    spec = spec_for_model(text, SamplerOptions(**opts), {})
    if interval:     # separate cond / uncond calls; uncond only on steps 2..5
        lam = spec.sampler.tables.logsnr
        spec = spec_for_model(text, SamplerOptions(**opts, guidance_interval=(float(lam[2]), float(lam[5]))), {})
    rows = _good()
    b = len(rows["text"])
    rec = _Recording(TorchReferenceRunner(text, spec))
    res = sample(rec, spec, rows, _noise(spec, batch=b), nulls=text.nulls())
    want = {"cond": rows, "uncond": {"text": np.repeat(NULL_TEXT[None], b, 0), "mask": np.ones((b, L), np.int64)}}
    enc, den = iter(rec.calls["encoder"]), iter(rec.calls["denoiser"])
    seen_uncond = 0
    for i, calls in enumerate(call_plan(spec)):
        for call in calls:
            fed = [next(enc)] if call.refresh else []
            fed.append(next(den))
            for feeds in fed:
                for k, br in enumerate(call.branches):
                    part = slice(k * b, (k + 1) * b)
                    for name in ("text", "mask"):
                        if name not in feeds:            # the denoiser takes no mask
                            continue
                        got = feeds[name][part]
                        assert got.dtype == want[br][name].dtype
                        assert np.array_equal(got, want[br][name]), (i, br, name)
                    seen_uncond += br == "uncond"
                    assert len(feeds["x"]) == b * len(call.branches)
    assert next(enc, None) is None and next(den, None) is None
    guided_steps = [i for i in range(8) if spec.guidance.active(float(spec.sampler.tables.logsnr[i]))]
    assert (guided_steps == [2, 3, 4, 5]) == interval and seen_uncond >= len(guided_steps)
    assert res.refresh_log["uncond"] == ([2, 3] if interval else [0, 3, 6])
    # the stored null is what guidance uses: another null moves the samples
    other = sample(TorchReferenceRunner(text, spec), spec, rows, _noise(spec, batch=b), nulls={"text": NULL_TEXT + 1})
    assert np.max(np.abs(other.x - res.x)) > 1e-4
