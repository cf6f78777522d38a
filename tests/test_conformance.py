"""Conformance vectors (``exporter.conformance``, ``dualrate golden``): the vectors equal the
reference loop, an independent numpy loop written from spec.json + README passes them, and
the mock networks are sensitive enough that the usual loop bugs fail them."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dualrate.exporter.conformance import (ATOL, DEFAULT_SEED, RTOL, MockRunner, conformance_variants, mock_feature_shapes,
                                  write_conformance)
from dualrate.exporter.errors import OutputExistsError
from dualrate.exporter.model_config import preset
from dualrate.exporter.model_pair import info_from_config
from dualrate.exporter.rng import PhiloxNoise
from dualrate.exporter.sampling import sample
from dualrate.exporter.spec import Spec
from dualrate.exporter.spec_builder import SamplerOptions, make_spec
from tests.conftest import REPO, run_cli

VARIANTS = ("ancestral_k4", "ddim_eta0", "guided_interval", "guided_clip")


def _tiny_spec(**info_changes) -> Spec:
    info = dataclasses.replace(info_from_config(preset("tiny")), **info_changes)
    return make_spec(info, mock_feature_shapes(info.sample_shape), SamplerOptions(num_steps=8))


def _odd_spec() -> Spec:
    """A non-square, odd-sized, 3-channel, eps-prediction binding with one class: exercises the
    clamped pooling, the eps conversion and a null id of 1."""
    binding = types.SimpleNamespace(sample_shape=(3, 5, 7), num_classes=1, null_class=1, prediction="eps",
                                    logsnr_clamp=(-15.0, 15.0))
    return make_spec(binding, mock_feature_shapes((3, 5, 7)), SamplerOptions(num_steps=8))


@pytest.fixture(scope="module")
def vectors_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("conf") / "vectors"
    write_conformance(_tiny_spec(), out)
    return out


def _load(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    spec = json.loads((folder / "spec.json").read_text())
    with np.load(folder / "vectors.npz", allow_pickle=False) as data:
        return spec, {k: data[k] for k in data.files}


# -- (a) the vectors are the project's own reference loop ---------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_vectors_equal_reference_loop_bit_exact(vectors_dir, name):
    spec, _ = Spec.load(vectors_dir / name / "spec.json", strict=True)
    with np.load(vectors_dir / name / "vectors.npz", allow_pickle=False) as data:
        vec = {k: data[k] for k in data.files}
    noise = PhiloxNoise(int(spec.noise.rng.seed), len(vec["class_id"]))
    res = sample(MockRunner(spec.model.prediction), spec, vec["class_id"], noise, record=True)
    shape = tuple(spec.model.sample_shape)
    assert np.array_equal(vec["z_init"], noise.draw(0, shape))
    assert np.array_equal(vec["xi"], np.stack([noise.draw(i + 1, shape) for i in range(spec.sampler.num_steps)]))
    assert np.array_equal(vec["z"], np.stack(res.trajectory))
    assert np.array_equal(vec["x0"], np.stack(res.x0_estimates))
    assert np.array_equal(vec["final"], res.x)
    assert vec["refresh_cond"].tolist() == res.refresh_log["cond"]
    assert vec["refresh_uncond"].tolist() == res.refresh_log["uncond"]
    assert int(vec["seed"]) == spec.noise.rng.seed == DEFAULT_SEED


def test_variants_are_what_the_design_asks_for():
    src = _tiny_spec()
    var = conformance_variants(src)
    assert tuple(var) == VARIANTS
    for spec in var.values():
        assert spec.model.sample_shape == src.model.sample_shape and spec.model.num_classes == 10
        assert [o.shape[1:] for o in spec.model.encoder.outputs] == [(1, 8, 8), (1, 4, 4)]   # the mock's binding
        assert spec.noise.rng.kind == "philox4x32-10" and 12 <= spec.sampler.num_steps <= 24
    a, d, g = var["ancestral_k4"], var["ddim_eta0"], var["guided_interval"]
    assert a.sampler.type == "ancestral" and a.dual_rate.resolved_refresh_steps == (0, 4, 8, 12)
    assert d.sampler.type == "ddim" and d.sampler.eta == 0.0 and max(d.sampler.tables.coef_noise) == 0.0
    lam = g.sampler.tables.logsnr
    guided = [i for i in range(g.sampler.num_steps) if g.guidance.active(lam[i])]
    assert g.guidance.scale > 1 and guided == list(range(5, 15))
    assert 5 not in g.dual_rate.resolved_refresh_steps    # the uncond cache starts empty off the refresh list
    for spec in var.values():     # a well-conditioned schedule, the model's own clamp kept
        assert spec.process.schedule["logsnr_min"] == -6.0 and spec.model.logsnr_clamp == (-15.0, 15.0)


def test_mock_is_per_element_bounded_and_class_sensitive():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((3, 2, 5, 7)).astype(np.float32) * 3
    lam = np.array([-14.0, 0.5, 14.0], np.float32)
    ctx = np.array([-15.0, -1.0, 10.0], np.float32)
    cls = np.array([1, 4, 10], np.int64)
    m = MockRunner("x0")
    feats = m.encode(z, ctx, cls)
    assert [f.shape[1:] for f in feats] == [tuple(s) for s in mock_feature_shapes((2, 5, 7))]
    out = m.denoise(z, lam, ctx, cls, feats)
    assert out.dtype == np.float32 and np.abs(out).max() < 1.0
    for b in range(3):    # no reductions across the batch: each row alone gives the same numbers
        fb = m.encode(z[b:b + 1], ctx[b:b + 1], cls[b:b + 1])
        assert np.array_equal(m.denoise(z[b:b + 1], lam[b:b + 1], ctx[b:b + 1], cls[b:b + 1], fb), out[b:b + 1])
    other = m.denoise(z, lam, ctx, np.array([10, 10, 1]), m.encode(z, ctx, np.array([10, 10, 1])))
    assert np.abs(other - out).mean(axis=(1, 2, 3)).min() > 0.05   # another class id: another output, every row
    stale = m.denoise(z, lam, lam, cls, feats)
    assert np.abs(stale - out)[:2].max() > 0.05                     # logsnr_ctx matters


# -- (b) an independent loop from spec.json + README alone ------------------------------
# The functions below use nothing from the project (only json, numpy and math): Philox,
# Box-Muller, the mocks and the loop are written from README.md, as a native implementer
# would, and read only spec.json (as plain JSON) and vectors.npz.

_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_MASK = np.uint64(0xFFFFFFFF)


def np_philox(c0, c1, c2, c3, k0, k1):
    c0, c1, c2, c3, k0, k1 = (np.asarray(x, np.uint64) for x in (c0, c1, c2, c3, k0, k1))
    for r in range(10):
        if r:
            k0, k1 = (k0 + np.uint64(_W0)) & _MASK, (k1 + np.uint64(_W1)) & _MASK
        p0, p1 = np.uint64(_M0) * c0, np.uint64(_M1) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & _MASK, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & _MASK
    return [np.asarray(x, np.uint64) for x in (c0, c1, c2, c3)]


def np_normals(seed: int, draw: int, sample: int, count: int) -> np.ndarray:
    blocks = np.arange((count + 3) // 4, dtype=np.uint64)
    x = np_philox(blocks, draw, sample, 0, seed & 0xFFFFFFFF, seed >> 32)
    u = [(w.astype(np.float64) + 0.5) / 2.0 ** 32 for w in x]
    out = []
    for a, b in ((u[0], u[1]), (u[2], u[3])):
        r, t = np.sqrt(-2.0 * np.log(a)), 2.0 * math.pi * b
        out += [r * np.cos(t), r * np.sin(t)]
    return np.stack(out, axis=-1).reshape(-1)[:count].astype(np.float32)


def np_draw(seed: int, draw: int, batch: int, shape) -> np.ndarray:
    return np.stack([np_normals(seed, draw, b, math.prod(shape)).reshape(shape) for b in range(batch)])


def np_sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_encoder(z, lam, k, dt):
    """The README's encoder evaluated in precision ``dt``; outputs rounded to float32."""
    z, lam = np.asarray(z, dt), dt(lam)
    e = np.sin(dt(0.9) * dt(k) + dt(0.5))
    f0 = np.tanh(dt(0.8) * z + dt(0.1) * lam + e)
    b = np.tanh(dt(1.3) * z - dt(0.05) * lam - dt(0.5) * e)
    c, h, w = z.shape
    f1 = np.zeros((c, (h + 1) // 2, (w + 1) // 2), dt)
    for p in range(f1.shape[1]):
        for q in range(f1.shape[2]):
            h0, h1, w0, w1 = 2 * p, min(2 * p + 1, h - 1), 2 * q, min(2 * q + 1, w - 1)
            f1[:, p, q] = (b[:, h0, w0] + b[:, h0, w1] + b[:, h1, w0] + b[:, h1, w1]) / dt(4)
    return f0.astype(np.float32), f1.astype(np.float32)     # graph outputs are float32 (model.dtype)


def np_denoiser(z, lam, lam_ctx, k, f0, f1, prediction, dt):
    """The README's denoiser evaluated in precision ``dt``; output rounded to float32."""
    z, lam, lam_ctx, f0, f1 = np.asarray(z, dt), dt(lam), dt(lam_ctx), np.asarray(f0, dt), np.asarray(f1, dt)
    e = np.sin(dt(0.9) * dt(k) + dt(0.5))
    c, h, w = z.shape
    up = f1[:, np.arange(h) // 2][:, :, np.arange(w) // 2]
    xt = np.tanh(dt(0.5) * z + dt(0.9) * f0 - dt(0.6) * up + dt(0.4) * e
                 + dt(0.3) * np.tanh(dt(0.5) * (lam - lam_ctx)) + dt(0.02) * lam)
    alpha, sigma = np.sqrt(np_sigmoid(lam)), np.sqrt(np_sigmoid(-lam))
    out = {"v": (alpha * z - xt) / sigma, "eps": (z - alpha * xt) / sigma, "x0": xt}[prediction]
    return out.astype(np.float32)


def np_loop(spec: dict, class_id: np.ndarray, dt=np.float32, mdt=np.float32, fault: str | None = None) -> dict:
    """The dual-rate loop of README.md, one sample and one branch at a time, in precision ``dt``
    with the mocks evaluated in ``mdt``. ``fault`` injects a known bug: shift_refresh,
    ctx_current, shared_cache, uncond_class, draw_index."""
    s, m, g = spec["sampler"], spec["model"], spec["guidance"]
    T = {k: np.asarray(v, np.float64) for k, v in s["tables"].items()}
    n, shape, seed = s["num_steps"], tuple(m["sample_shape"]), spec["noise"]["rng"]["seed"]
    refresh = list(spec["dual_rate"]["resolved_refresh_steps"])
    if fault and fault.startswith("shift_refresh"):       # shift_refresh<j>: refresh j one step later
        j = int(fault[len("shift_refresh"):] or 1)
        refresh[j] += 1
    out = {"z": [], "refresh_cond": set(), "refresh_uncond": set(),
           "ctx_step_cond": [-1] * n, "ctx_step_uncond": [-1] * n}
    zs = []
    for b, k in enumerate(class_id):
        z = np_normals(seed, 0, b, math.prod(shape)).reshape(shape).astype(dt)
        cache, last_r, traj = {}, 0, []
        for i in range(n):
            lam = dt(T["logsnr"][i])
            if i in refresh:
                last_r = i
            interval = g["interval_logsnr"]
            guided = g["scale"] != 1 and (interval is None or interval[0] <= T["logsnr"][i] <= interval[1])
            x0 = {}
            for br in ["cond", "uncond"] if guided else ["cond"]:
                cls = int(k) if br == "cond" or fault == "uncond_class" else m["null_class"]
                slot = "cond" if fault == "shared_cache" else br
                if slot not in cache or i in refresh or cache[slot][2] < last_r:
                    cache[slot] = (*np_encoder(z, lam, cls, mdt), i)
                    out[f"refresh_{br}"].add(i)
                f0, f1, r = cache[slot]
                out[f"ctx_step_{br}"][i] = r
                ctx = lam if fault == "ctx_current" else dt(T["logsnr"][r])
                pred = np_denoiser(z, lam, ctx, cls, f0, f1, m["prediction"], mdt).astype(dt)
                a, sg = dt(T["alpha"][i]), dt(T["sigma"][i])
                x0[br] = {"v": a * z - sg * pred, "eps": (z - sg * pred) / a, "x0": pred}[m["prediction"]]
            xh = x0["cond"] if not guided else x0["uncond"] + dt(g["scale"]) * (x0["cond"] - x0["uncond"])
            if s["clip_x0"] is not None:
                xh = np.clip(xh, -dt(s["clip_x0"]), dt(s["clip_x0"]))
            z = dt(T["coef_z"][i]) * z + dt(T["coef_x0"][i]) * xh
            if T["coef_noise"][i] != 0:
                draw = i if fault == "draw_index" else i + 1
                xi = np_normals(seed, draw, b, math.prod(shape)).reshape(shape).astype(dt)
                z = z + dt(T["coef_noise"][i]) * xi
            traj.append(z)
        zs.append(np.stack(traj))
    out["z"] = np.stack(zs, axis=1)                                     # [N, B, C, H, W]
    out["refresh_cond"], out["refresh_uncond"] = sorted(out["refresh_cond"]), sorted(out["refresh_uncond"])
    return out


def tolerance_ratio(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max |got - want|, max of |got - want| / (ATOL + RTOL |want|)): passing means ratio <= 1."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.abs(got - want)
    return float(err.max()), float((err / (1e-5 + 1e-4 * np.abs(want))).max())


def check_independently(folder: Path, dt=np.float32, mdt=np.float32, fault: str | None = None) -> tuple[dict, bool]:
    """Check every stage (RNG words, draws, mock probe, loop) of one variant folder; returns
    {stage: (max abs error, max tolerance ratio)} and whether the refresh audit matches exactly."""
    spec, vec = _load(folder)
    report = {}
    key = (spec["noise"]["rng"]["seed"] & 0xFFFFFFFF, spec["noise"]["rng"]["seed"] >> 32)
    assert vec["rng_key"].tolist() == list(key)
    words = np.stack(np_philox(*vec["rng_counters"].T.astype(np.uint64), *key), axis=-1)
    assert words.tolist() == vec["rng_words"].tolist()
    seed = spec["noise"]["rng"]["seed"]
    report["rng_first_draws"] = tolerance_ratio(np_normals(seed, 0, 0, 16), vec["rng_first_draws"])
    shape, b = tuple(spec["model"]["sample_shape"]), len(vec["class_id"])
    report["z_init"] = tolerance_ratio(np_draw(seed, 0, b, shape), vec["z_init"])
    probe = [np_encoder(vec["z_init"][r], vec["probe_logsnr_ctx"][r], int(vec["class_id"][r]), mdt) for r in range(b)]
    report["probe_feat0"] = tolerance_ratio(np.stack([p[0] for p in probe]), vec["probe_feat0"])
    report["probe_feat1"] = tolerance_ratio(np.stack([p[1] for p in probe]), vec["probe_feat1"])
    pred = [np_denoiser(vec["z_init"][r], vec["probe_logsnr"][r], vec["probe_logsnr_ctx"][r], int(vec["class_id"][r]),
                        *probe[r], spec["model"]["prediction"], mdt) for r in range(b)]
    report["probe_prediction"] = tolerance_ratio(np.stack(pred), vec["probe_prediction"])
    res = np_loop(spec, vec["class_id"], dt, mdt, fault)
    report["z"] = tolerance_ratio(res["z"], vec["z"])
    report["final"] = tolerance_ratio(res["z"][-1], vec["final"])
    audit_ok = all(res[k] == vec[k].tolist() for k in ("refresh_cond", "refresh_uncond", "ctx_step_cond",
                                                         "ctx_step_uncond"))
    audit_ok &= [int(c >= 0) for c in res["ctx_step_uncond"]] == vec["guided"].tolist()
    return report, audit_ok


# (loop precision, mock precision): a float32 runtime, a float64 one, and a mixed one
PRECISIONS = {"f32": (np.float32, np.float32), "f64": (np.float64, np.float64), "f64-mock32": (np.float64, np.float32)}


@pytest.mark.parametrize("prec", PRECISIONS)
@pytest.mark.parametrize("name", VARIANTS)
def test_independent_numpy_loop_passes_the_vectors(vectors_dir, name, prec):
    report, audit_ok = check_independently(vectors_dir / name, *PRECISIONS[prec])
    print(name, prec, {k: f"{a:.2e} ({r:.3f}x tol)" for k, (a, r) in report.items()})
    assert audit_ok, "the refresh audit differs"
    for key, (max_abs, ratio) in report.items():
        assert ratio <= 1.0, f"{name}/{key}: max abs error {max_abs:.3g} is {ratio:.3g}x the tolerance"


@pytest.mark.parametrize("source", ["eps_odd_shape", "eps", "x0"])
def test_independent_loop_passes_for_other_bindings(tmp_path, source):
    spec = _odd_spec() if source == "eps_odd_shape" else _tiny_spec(prediction=source)
    write_conformance(spec, tmp_path / "v")
    for name in VARIANTS:
        for prec, dts in PRECISIONS.items():
            report, audit_ok = check_independently(tmp_path / "v" / name, *dts)
            worst = max(r for _, r in report.values())
            print(source, name, prec, f"worst {worst:.3f}x tol")
            assert audit_ok
            assert worst <= 1.0, f"{source}/{name}/{prec}: {report}"


# -- (c) the vectors catch the usual bugs ------------------------------------------------

FAULTS = [("shift_refresh", v) for v in VARIANTS] + [("ctx_current", v) for v in VARIANTS] + [
    ("shared_cache", "guided_interval"), ("shared_cache", "guided_clip"),
    ("uncond_class", "guided_interval"), ("draw_index", "ancestral_k4")]


@pytest.mark.parametrize("fault,name", FAULTS)
def test_a_buggy_loop_fails_the_vectors(vectors_dir, fault, name):
    report, audit_ok = check_independently(vectors_dir / name, np.float32, np.float32, fault)
    max_abs, ratio = report["z"]
    print(f"{fault} on {name}: max abs error {max_abs:.3g} = {ratio:.3g}x the tolerance")
    assert max_abs > 1e-3 and ratio > 100, f"{fault} on {name} was not caught: max abs {max_abs:.3g}"
    if fault == "shift_refresh" or (fault, name) == ("shared_cache", "guided_interval"):
        # the audit names these bugs too (under full guidance one shared cache refreshes at the
        # same steps, so there only z shows it)
        assert not audit_ok


@pytest.mark.parametrize("name", VARIANTS)
def test_every_single_refresh_shift_fails(vectors_dir, name):
    spec, _ = _load(vectors_dir / name)
    steps = spec["dual_rate"]["resolved_refresh_steps"]
    for j in range(1, len(steps)):
        if j + 1 < len(steps) and steps[j] + 1 == steps[j + 1]:
            continue                                     # shifting onto the next refresh is another test
        max_abs, ratio = check_independently(vectors_dir / name, np.float32, np.float32, f"shift_refresh{j}")[0]["z"]
        print(f"{name}: refresh {steps[j]} -> {steps[j] + 1}: max abs error {max_abs:.3g} = {ratio:.3g}x the tolerance")
        assert max_abs > 1e-3 and ratio > 100


# -- files, atomic writes, README ---------------------------------------------------------

def test_write_is_deterministic_and_atomic(tmp_path, vectors_dir):
    out = tmp_path / "again"
    write_conformance(types.SimpleNamespace(spec=_tiny_spec()), out)     # a Bundle-like source
    for name in VARIANTS:
        for f in ("spec.json", "vectors.npz"):
            assert (out / name / f).read_bytes() == (vectors_dir / name / f).read_bytes()
    assert (out / "README.md").read_text() == (vectors_dir / "README.md").read_text()
    with pytest.raises(OutputExistsError):
        write_conformance(_tiny_spec(), out)
    write_conformance(_tiny_spec(), out, seed=7, force=True)
    assert int(np.load(out / "ancestral_k4" / "vectors.npz")["seed"]) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]      # no partial directories left


def test_readme_documents_formulas_keys_and_tolerance(vectors_dir):
    text = (vectors_dir / "README.md").read_text()
    for needle in ("tanh(0.8 * z[c,h,w] + 0.1 * lam + e)", "sin(0.9 * k + 0.5)", "1e-5 + 1e-4 * |want|",
                   "resolved_refresh_steps", "coef_noise[i]", "(block, draw, sample, 0)", "`refresh_uncond`",
                   "`rng_first_draws`", "`guided_interval`"):
        assert needle in text, needle
    assert (ATOL, RTOL) == (1e-5, 1e-4)
    _, vec = _load(vectors_dir / "ancestral_k4")
    for key in vec:
        assert f"`{key}`" in text, f"vectors.npz key {key} is not documented"


def test_golden_handler_on_a_spec_file(tmp_path, capsys):
    from dualrate.commands.golden_cmd import add_golden_command

    parser = argparse.ArgumentParser()
    add_golden_command(parser.add_subparsers(dest="command"))
    _tiny_spec().save(tmp_path / "spec.json")
    args = parser.parse_args(["golden", str(tmp_path / "spec.json"), "-o", str(tmp_path / "g"), "--seed", "3"])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "guided_interval" in printed and "uncond [5, 8, 12]" in printed and "seed 3" in printed
    assert (tmp_path / "g" / "README.md").is_file() and (tmp_path / "g" / "ddim_eta0" / "vectors.npz").is_file()
    with pytest.raises(OutputExistsError):
        args.handler(args)


def _cli_has_golden() -> bool:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "dualrate", "golden", "--help"], capture_output=True,
                          cwd=REPO, env=env, timeout=120).returncode == 0


cli_has_golden = _cli_has_golden()


@pytest.mark.skipif(not cli_has_golden, reason="`dualrate golden` is not wired into dualrate/cli.py yet")
def test_cli_golden_on_a_bundle(tiny_bundle, tmp_path):
    out = tmp_path / "golden"
    res = run_cli("golden", str(tiny_bundle.path), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "ancestral_k4" in res.stdout and (out / "README.md").is_file()
    for name in VARIANTS:
        spec, vec = _load(out / name)
        assert spec["model"]["sample_shape"] == list(tiny_bundle.spec.model.sample_shape)
        assert vec["z"].shape[0] == spec["sampler"]["num_steps"]
    again = run_cli("golden", str(tiny_bundle.path), "-o", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    assert run_cli("golden", str(tiny_bundle.path), "-o", str(out), "--force").returncode == 0
