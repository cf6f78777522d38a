"""DR-UViT reference family and the custom-pair protocol."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualrate.exporter.export import spec_for_model
from dualrate.exporter.model_config import PRESETS, preset
from dualrate.exporter.model_pair import build_pair
from dualrate.exporter.sampling import ArrayNoise, sample
from dualrate.exporter.spec import COND_PREFIX, FEATURE_PREFIX, ROLE_SAMPLE, ROLE_TIME, ROLE_TIME_CTX, roles
from dualrate.exporter.spec_builder import SamplerOptions
from dualrate.exporter.torch_runner import TorchReferenceRunner


def _inputs(model, b=2):
    """A sample, two log-SNRs, a class id and the null class (DR-UViT's null is num_classes)."""
    cfg = preset("tiny")
    assert model.sample_shape == (cfg.in_channels, cfg.image_size, cfg.image_size)
    g = torch.Generator().manual_seed(0)
    z = torch.randn(b, *model.sample_shape, generator=g)
    return z, torch.tensor([-3.0, 2.0])[:b], torch.tensor([1, cfg.num_classes])[:b]


def test_encoder_emits_one_feature_per_level_full_resolution_first(pair):
    z, lam, cls = _inputs(pair)
    feats = pair.encoder(z, lam, cls)
    cfg = preset("tiny")
    assert [tuple(f.shape) for f in feats] == [(2, 16, 8, 8), (2, 32, 4, 4)]
    assert len(feats) == cfg.levels
    out = pair.denoiser(z, lam, lam, cls, *feats)
    assert out.shape == z.shape


@pytest.mark.parametrize("what", ["feat0", "feat1", "logsnr_ctx", "class_id", "logsnr"])
def test_denoiser_depends_on_every_input(pair, what):
    z, lam, cls = _inputs(pair)
    with torch.no_grad():
        feats = list(pair.encoder(z, lam, cls))
        base = pair.denoiser(z, lam, lam, cls, *feats)
        ctx, t, c = lam.clone(), lam.clone(), cls.clone()
        if what.startswith("feat"):
            k = int(what[-1])
            feats[k] = feats[k] + 0.5
        elif what == "logsnr_ctx":
            ctx = ctx + 1.0
        elif what == "logsnr":
            t = t + 1.0
        else:
            c = torch.tensor([2, 3])
        out = pair.denoiser(z, t, ctx, c, *feats)
    assert float((out - base).abs().max()) > 1e-4


def test_encoder_depends_on_class_and_logsnr(pair):
    z, lam, cls = _inputs(pair)
    with torch.no_grad():
        a = pair.encoder(z, lam, cls)[0]
        b = pair.encoder(z, lam + 1, cls)[0]
        c = pair.encoder(z, lam, torch.tensor([3, 0]))[0]
    assert float((a - b).abs().max()) > 1e-4 and float((a - c).abs().max()) > 1e-4


@pytest.mark.parametrize("name", list(PRESETS))
def test_presets_build_and_encoder_is_the_heavy_net(name):
    cfg = preset(name)
    with torch.device("meta"):
        pair = build_pair({"family": "dr-uvit", **cfg.to_dict()})
    n_enc = sum(p.numel() for p in pair.encoder.parameters())
    n_den = sum(p.numel() for p in pair.denoiser.parameters())
    assert n_enc > 2 * n_den
    (c,) = pair.conditioning
    assert (c.name, c.shape, c.dtype, c.num_classes, c.null) == ("class_id", (), "int64", cfg.num_classes,
                                                                  cfg.num_classes)
    assert pair.sample_shape == (cfg.in_channels, cfg.image_size, cfg.image_size)
    assert pair.prediction == cfg.prediction and pair.time == "logsnr"


def test_dr_uvit_binds_its_forward_parameters_by_role(pair):
    spec = spec_for_model(pair, SamplerOptions(num_steps=4), {})
    cfg = preset("tiny")
    feats = [FEATURE_PREFIX + f"feat{k}" for k in range(cfg.levels)]
    assert list(roles(spec.model.encoder)) == [ROLE_SAMPLE, ROLE_TIME, COND_PREFIX + "class_id"]
    assert list(roles(spec.model.denoiser)) == [ROLE_SAMPLE, ROLE_TIME, ROLE_TIME_CTX, COND_PREFIX + "class_id", *feats]
    assert [i.name for i in spec.model.denoiser.inputs] == ["z", "logsnr", "logsnr_ctx", "class_id", "feat0", "feat1"]
    (c,) = spec.model.conditioning
    assert (c.null_kind, c.null_value, c.num_classes) == ("value", float(cfg.num_classes), cfg.num_classes)
    # the reference runner calls the modules exactly as they are called directly
    runner = TorchReferenceRunner(pair, spec)
    z, lam, cls = _inputs(pair)
    with torch.no_grad():
        want = pair.encoder(z, lam, cls)
        den = pair.denoiser(z, lam, lam - 1, cls, *want)
    got = runner.encode({"z": z.numpy(), "logsnr": lam.numpy(), "class_id": cls.numpy()})
    assert list(got) == ["feat0", "feat1"]
    for k, name in enumerate(got):
        assert torch.equal(got[name], want[k])
    out = runner.denoise({"z": z.numpy(), "logsnr": lam.numpy(), "logsnr_ctx": (lam - 1).numpy(),
                          "class_id": cls.numpy(), **got})
    assert np.array_equal(out, den.numpy())


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_other_prediction_types_sample(prediction):
    torch.manual_seed(0)
    cfg = preset("tiny").to_dict()
    cfg["prediction"] = prediction
    pair = build_pair({"family": "dr-uvit", **cfg}).eval()
    spec = spec_for_model(pair, SamplerOptions(num_steps=4), {})
    runner = TorchReferenceRunner(pair, spec)
    assert spec.model.prediction == prediction
    rng = np.random.default_rng(0)
    noise = ArrayNoise(rng.standard_normal((2, 1, 8, 8)).astype(np.float32),
                       rng.standard_normal((4, 2, 1, 8, 8)).astype(np.float32))
    x = sample(runner, spec, [0, 1], noise).x
    assert np.all(np.isfinite(x))


def test_custom_pair_runs_through_the_same_loop():
    from tests.custom_pair import make_pair
    torch.manual_seed(0)
    pair = make_pair().eval()
    spec = spec_for_model(pair, SamplerOptions(num_steps=6, guidance=2.0), {})
    runner = TorchReferenceRunner(pair, spec)
    assert [o.name for o in spec.model.encoder.outputs] == ["feat0"]
    rng = np.random.default_rng(1)
    noise = ArrayNoise(rng.standard_normal((2, 1, 8, 8)).astype(np.float32),
                       rng.standard_normal((6, 2, 1, 8, 8)).astype(np.float32))
    res = sample(runner, spec, [0, 1], noise)
    assert res.refresh_log == {"cond": [0, 4], "uncond": [0, 4]} and np.all(np.isfinite(res.x))
