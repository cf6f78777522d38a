"""Conformance vectors (``exporter.conformance``, ``dualrate golden``): the vectors equal the
reference loop, an independent numpy loop written from spec.json + README passes them (bit
for bit where the arithmetic is elementwise), and the usual loop bugs fail them."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from dualrate.exporter.conformance import (ATOL, BIN_INDEX, DEFAULT_SEED, RTOL, VARIANT_NOTES, MockRunner,
                                           conformance_conditioning, conformance_nulls, conformance_variants,
                                           write_conformance)
from dualrate.exporter.errors import BadInputError, BundleError, OutputExistsError
from dualrate.exporter.rng import PhiloxNoise
from dualrate.exporter.runner import graph_feeds, role_values
from dualrate.exporter.sampling import sample
from dualrate.exporter.spec import ConditioningSpec, GraphIO, ModelSpec, Spec, TensorIO
from dualrate.exporter.spec_builder import SamplerOptions, make_spec
from tests.conftest import REPO, run_cli

VARIANTS = ("ancestral_k4", "ddim_eta0", "guided_interval", "guided_clip", "timestep_trailing", "text_guided",
            "latent_decoder")
GUIDED = ("guided_interval", "guided_clip", "text_guided")


def _source(shape=(1, 8, 8), prediction="v", classes=10, null=10) -> Spec:
    """A DR-UViT-like source binding (its features are not the mock's; the variants rebind them)."""
    io = lambda name, shape, dtype, role="": TensorIO(name, ("batch", *shape), dtype, role)  # noqa: E731
    z, lam, cls = io("z", shape, "float32", "sample"), io("logsnr", (), "float32", "time"), \
        io("class_id", (), "int64", "cond:class_id")
    feat = io("feat0", (16, *shape[1:]), "float32")
    model = ModelSpec(
        sample_shape=shape, prediction=prediction,
        conditioning=(ConditioningSpec("class_id", (), "int64", "value", float(null), None, classes),),
        encoder=GraphIO((z, lam, cls), (feat,)),
        denoiser=GraphIO((z, lam, io("logsnr_ctx", (), "float32", "time_ctx"), cls,
                          io("feat0", feat.shape[1:], "float32", "feature:feat0")),
                         (io("prediction", shape, "float32"),)))
    return make_spec(model, SamplerOptions(num_steps=8))


def _odd_source() -> Spec:
    """Non-square, odd-sized, 3 channels, eps, one class with null id 1: clamped pooling, the
    eps conversion and another null id."""
    return _source((3, 5, 7), "eps", classes=1, null=1)


@pytest.fixture(scope="module")
def vectors_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("conf") / "vectors"
    write_conformance(_source(), out)
    return out


def _load(folder: Path) -> tuple[dict, dict[str, np.ndarray]]:
    spec = json.loads((folder / "spec.json").read_text())
    with np.load(folder / "vectors.npz", allow_pickle=False) as data:
        return spec, {k: data[k] for k in data.files}


def _cond_rows(vec: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len("cond."):]: v for k, v in vec.items() if k.startswith("cond.")}


# -- (a) the vectors are the project's own reference loop ---------------------------------

@pytest.mark.parametrize("name", VARIANTS)
def test_vectors_equal_reference_loop_bit_exact(vectors_dir, name):
    folder = vectors_dir / name
    spec, _ = Spec.load(folder / "spec.json", strict=True)
    _, vec = _load(folder)
    nulls = {c.name: np.load(folder / c.null_file, allow_pickle=False) for c in spec.model.conditioning
             if c.null_kind == "file"}
    noise = PhiloxNoise(int(spec.noise.rng.seed), len(vec["z_init"]))
    res = sample(MockRunner(spec), spec, _cond_rows(vec), noise, nulls=nulls, record=True)
    shape = tuple(spec.model.sample_shape)
    assert np.array_equal(vec["z_init"], noise.draw(0, shape))
    assert np.array_equal(vec["xi"], np.stack([noise.draw(i + 1, shape) for i in range(spec.sampler.num_steps)]))
    assert np.array_equal(vec["z"], np.stack(res.trajectory))
    assert np.array_equal(vec["x0"], np.stack(res.x0_estimates))
    assert np.array_equal(vec["final"], res.x)
    assert vec["refresh_cond"].tolist() == res.refresh_log["cond"]
    assert vec["refresh_uncond"].tolist() == res.refresh_log["uncond"]
    assert int(vec["seed"]) == spec.noise.rng.seed == DEFAULT_SEED
    assert (res.decoded is None) == ("decoded" not in vec)
    if res.decoded is not None:
        assert np.array_equal(vec["decoded"], res.decoded)


def _roles(gio) -> dict:
    return {i.feeds: i for i in gio.inputs}


def test_variants_are_what_the_design_asks_for():
    src = _source()
    var = conformance_variants(src)
    assert tuple(var) == VARIANTS == tuple(VARIANT_NOTES)
    for name, spec in var.items():
        assert spec.noise.rng.kind == "philox4x32-10" and 10 <= spec.sampler.num_steps <= 24
        assert spec.model.prediction == "v" and spec.model.logsnr_clamp == (-15.0, 15.0)
        assert [o.name for o in spec.model.encoder.outputs] == ["feat0", "feat1"]
        if name != "latent_decoder":
            assert spec.model.sample_shape == src.model.sample_shape
    for name in VARIANTS[:4]:            # the class variants: the source's class input, log-SNR time
        m = var[name].model
        assert m.conditioning == src.model.conditioning and m.time_input == "logsnr"
        assert var[name].process.schedule["logsnr_min"] == -6.0
    a, d, g = var["ancestral_k4"], var["ddim_eta0"], var["guided_interval"]
    assert a.sampler.type == "ancestral" and a.dual_rate.resolved_refresh_steps == (0, 4, 8, 12)
    assert d.sampler.type == "ddim" and d.sampler.eta == 0.0 and max(d.sampler.tables.coef_noise) == 0.0
    lam = g.sampler.tables.logsnr
    assert g.guidance.scale > 1 and [i for i in range(20) if g.guidance.active(lam[i])] == list(range(5, 15))
    assert 5 not in g.dual_rate.resolved_refresh_steps    # the uncond cache starts empty off the refresh list

    ts = var["timestep_trailing"]
    assert ts.model.time_input == "timestep" and ts.sampler.tables.model_time == tuple(range(999, 0, -100))
    assert {_roles(ts.model.denoiser)[r].dtype for r in ("time", "time_ctx")} == {"int64"}
    sch = ts.process.schedule
    assert (sch["timestep_spacing"], sch["steps_offset"], sch["set_alpha_to_one"]) == ("trailing", 1, False)
    assert ts.sampler.final_step == "step" and ts.sampler.tables.coef_noise[-1] > 0

    tx = var["text_guided"].model
    assert [(c.name, c.shape, c.dtype, c.null_kind) for c in tx.conditioning] == [
        ("text", (6, 8), "float32", "file"), ("text_mask", (6,), "int64", "file")]
    assert "time_ctx" not in _roles(tx.denoiser) and tx.time_input == "t" and var["text_guided"].guidance.scale == 3

    lat = var["latent_decoder"].model
    assert lat.sample_shape == (4, 6, 10) and not lat.conditioning and set(_roles(lat.encoder)) == {"sample"}
    assert (lat.decoder.scaling_factor, lat.decoder.shift_factor, lat.decoder.output_shape) == (0.3611, 0.1159,
                                                                                                (3, 12, 20))
    for name in ("timestep_trailing", "text_guided"):     # only binding by role (not name, not order) passes
        den = var[name].model.denoiser
        assert not {"feat0", "feat1"} & {i.name for i in den.inputs} and den.inputs[0].feeds != "sample"


def _mock_call(spec: Spec, runner: MockRunner, z, t, t_ctx, cond) -> np.ndarray:
    feats = runner.encode(graph_feeds(spec.model.encoder, role_values(z, t_ctx, None, cond)))
    return runner.denoise(graph_feeds(spec.model.denoiser, role_values(z, t, t_ctx, cond, feats)))


def test_mock_is_per_sample_bounded_and_sensitive():
    var = conformance_variants(_source(prediction="x0"))
    spec = var["guided_clip"]
    runner = MockRunner(spec)
    z = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32) * 3
    lam, ctx = np.array([-14.0, 0.5, 14.0]), np.array([-15.0, -1.0, 10.0])
    cls = {"class_id": np.array([1, 4, 10], np.int64)}
    out = _mock_call(spec, runner, z, lam, ctx, cls)
    assert out.dtype == np.float32 and np.abs(out).max() < 1.0
    for b in range(3):    # no reductions across the batch: each row alone gives the same numbers
        row = _mock_call(spec, runner, z[b:b + 1], lam[b:b + 1], ctx[b:b + 1], {"class_id": cls["class_id"][b:b + 1]})
        assert np.array_equal(row, out[b:b + 1])
    other = _mock_call(spec, runner, z, lam, ctx, {"class_id": np.array([10, 10, 1])})
    assert np.abs(other - out).mean(axis=(1, 2, 3)).min() > 0.05   # another class id: another output, every row
    assert np.abs(_mock_call(spec, runner, z, lam, lam, cls) - out)[:2].max() > 0.05     # time_ctx matters

    text = var["text_guided"]
    runner = MockRunner(text)
    rows = conformance_conditioning(text)
    z, t = z[:2], np.array([0.3, 0.7])
    base = _mock_call(text, runner, z, t, t, rows)
    padded = dict(rows, text=rows["text"].copy())
    padded["text"][1, 4:] += 5.0                                      # tokens the mask drops
    assert np.array_equal(_mock_call(text, runner, z, t, t, padded), base)
    nulls = {k: np.broadcast_to(v, rows[k].shape) for k, v in conformance_nulls(text).items()}
    assert np.abs(_mock_call(text, runner, z, t, t, nulls) - base).mean(axis=(1, 2, 3)).min() > 0.05


def test_mock_runner_checks_feeds_by_name():
    spec = conformance_variants(_source())["timestep_trailing"]
    runner = MockRunner(spec)
    z = np.zeros((2, 1, 8, 8), np.float32)
    feeds = graph_feeds(spec.model.encoder, role_values(z, np.array([999.0, 999.0]), None,
                                                        {"class_labels": np.array([1, 2])}))
    assert feeds["timestep"].dtype == np.int64 and set(runner.encode(feeds)) == {"feat0", "feat1"}
    with pytest.raises(BadInputError, match="timestep"):
        runner.encode(dict(feeds, timestep=feeds["timestep"].astype(np.float32)))
    with pytest.raises(BadInputError, match="mock"):
        MockRunner(_source())                 # a real model's binding is not the mock's


# -- (b) an independent loop from spec.json + README alone ------------------------------
# The functions below use nothing from the project (only json, numpy and math): Philox,
# Box-Muller, the mocks and the loop are written from README.md, as a native implementer
# would, and read only spec.json (as plain JSON), the stored nulls and vectors.npz.

_M0, _M1, _W0, _W1 = 0xD2511F53, 0xCD9E8D57, 0x9E3779B9, 0xBB67AE85
_MASK = np.uint64(0xFFFFFFFF)
NP = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "int32": np.int32, "bool": np.bool_}


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


def np_lam(kind: str, u, dt):
    u = dt(u)
    return {"logsnr": u, "t": dt(6) - dt(12) * u, "timestep": dt(3) - dt(8) * u / dt(1000)}[kind]


def np_embedding(model: dict, by_role: dict, dt):
    """The README's e: class ids, and float inputs as masked means of token scores."""
    e = dt(0)
    for c in model["conditioning"]:
        x = by_role.get("cond:" + c["name"])
        if x is None:
            continue
        if c["num_classes"] is not None:
            e = e + np.sin(dt(0.9) * dt(x) + dt(0.5))
        elif np.asarray(x).dtype.kind == "f":
            x = np.asarray(x, dt).reshape(-1, np.shape(x)[-1])
            s = np.tanh(dt(0.5) * np.sum(x * np.cos(dt(1.3) * np.arange(x.shape[1], dtype=dt) + dt(0.2)), axis=1))
            m = by_role.get(f"cond:{c['name']}_mask")
            m = np.ones_like(s) if m is None else np.asarray(m, dt).reshape(s.shape)
            e = e + dt(1.5) * np.sum(m * s) / max(dt(1), np.sum(m))
    return e


def _z_lam(model: dict, by_role: dict, dt):
    z = np.asarray(by_role.get("sample", np.zeros(model["sample_shape"])), dt)
    lam = np_lam(model["time_input"], by_role["time"], dt) if "time" in by_role else dt(0)
    return z, lam


def np_encoder(model: dict, by_role: dict, dt) -> list[np.ndarray]:
    z, lam = _z_lam(model, by_role, dt)
    e = np_embedding(model, by_role, dt)
    f0 = np.tanh(dt(0.8) * z + dt(0.1) * lam + e)
    b = np.tanh(dt(1.3) * z - dt(0.05) * lam - dt(0.5) * e)
    c, h, w = z.shape
    f1 = np.zeros((c, (h + 1) // 2, (w + 1) // 2), dt)
    for p in range(f1.shape[1]):
        for q in range(f1.shape[2]):
            h0, h1, w0, w1 = 2 * p, min(2 * p + 1, h - 1), 2 * q, min(2 * q + 1, w - 1)
            f1[:, p, q] = (b[:, h0, w0] + b[:, h0, w1] + b[:, h1, w0] + b[:, h1, w1]) / dt(4)
    return [f0.astype(np.float32), f1.astype(np.float32)]      # graph outputs are float32


def np_denoiser(model: dict, by_role: dict, dt) -> list[np.ndarray]:
    z, lam = _z_lam(model, by_role, dt)
    e = np_embedding(model, by_role, dt)
    d = lam - np_lam(model["time_input"], by_role["time_ctx"], dt) if "time_ctx" in by_role else dt(0)
    f0, f1 = (np.asarray(by_role[f"feature:feat{k}"], dt) for k in (0, 1))
    c, h, w = z.shape
    up = f1[:, np.arange(h) // 2][:, :, np.arange(w) // 2]
    xt = np.tanh(dt(0.5) * z + dt(0.9) * f0 - dt(0.6) * up + dt(0.4) * e + dt(0.3) * np.tanh(dt(0.5) * d)
                 + dt(0.02) * lam)
    alpha, sigma = np.sqrt(1 / (1 + np.exp(-lam))), np.sqrt(1 / (1 + np.exp(lam)))
    return [{"v": (alpha * z - xt) / sigma, "eps": (z - alpha * xt) / sigma, "x0": xt}[model["prediction"]]
            .astype(np.float32)]


def np_decoder(model: dict, by_role: dict, dt) -> list[np.ndarray]:
    s = np.asarray(by_role["sample"], dt)
    c, h, w = s.shape
    o, oh, ow = model["decoder"]["output_shape"]
    out = np.zeros((o, oh, ow), dt)
    for y in range(oh):
        for x in range(ow):
            i, j = y * h // oh, x * w // ow
            out[:, y, x] = np.tanh(dt(0.4) * s[np.arange(o) % c, i, j] - dt(0.2) * s[(np.arange(o) + 1) % c, i, j]
                                   + dt(0.1) * np.arange(o, dtype=dt))
    return [out.astype(np.float32)]


def np_call(model: dict, graph: str, role_values: dict, dt) -> dict[str, np.ndarray]:
    """Run one mock graph the way a runtime runs a real one: feeds by input name from the roles
    (time cast to the input's dtype), outputs by name."""
    gio = model["decoder"]["graph"] if graph == "decoder" else model[graph]
    feeds = {i["name"]: np.asarray(role_values[i["feeds"]]).astype(NP[i["dtype"]]) for i in gio["inputs"]}
    by_role = {i["feeds"]: feeds[i["name"]] for i in gio["inputs"]}         # the mock's side of the contract
    outs = {"encoder": np_encoder, "denoiser": np_denoiser, "decoder": np_decoder}[graph](model, by_role, dt)
    return {o["name"]: v for o, v in zip(gio["outputs"], outs)}


def np_nulls(folder: Path, model: dict) -> dict[str, np.ndarray]:
    """Each conditioning input's null row: null_value everywhere, or the .npy at null_file."""
    out = {}
    for c in model["conditioning"]:
        if c["null_kind"] == "value":
            out[c["name"]] = np.full(c["shape"], c["null_value"]).astype(NP[c["dtype"]])
        elif c["null_kind"] == "file":
            out[c["name"]] = np.load(folder / c["null_file"], allow_pickle=False)
    return out


def np_to_x0(prediction: str, out, z, a, s):
    return {"v": a * z - s * out, "eps": (z - s * out) / a, "x0": out}[prediction]


@np.errstate(over="ignore", invalid="ignore", divide="ignore")   # a faulty loop may overflow
def np_loop(folder: Path, spec: dict, cond_rows: dict, batch: int, dt=np.float32, mdt=np.float32,
            fault: str | None = None) -> dict:
    """The dual-rate loop of README.md, one sample and one branch at a time, in precision ``dt``
    with the mocks evaluated in ``mdt``. ``fault`` injects a known bug: shift_refresh<j> (refresh j
    one step later), ctx_current (time_ctx of the current step), shared_cache (one cache for both
    branches), uncond_cond_rows (the uncond branch fed the cond rows), null_zeros (a stored null
    read as zeros), draw_index (noise of step i from draw i), time_logsnr (log-SNR fed instead of
    tables.model_time), decoder_scale_inverted (x * scaling_factor + shift)."""
    s, m, g = spec["sampler"], spec["model"], spec["guidance"]
    T = {k: np.asarray(v, np.float64) for k, v in s["tables"].items()}
    n, shape, seed = s["num_steps"], tuple(m["sample_shape"]), spec["noise"]["rng"]["seed"]
    refresh = list(spec["dual_rate"]["resolved_refresh_steps"])
    if fault and fault.startswith("shift_refresh"):
        j = int(fault[len("shift_refresh"):] or 1)
        refresh[j] += 1
    times = T["logsnr"][:n] if fault == "time_logsnr" else T["model_time"]
    nulls = np_nulls(folder, m)
    if fault == "null_zeros":
        nulls = {k: (np.zeros_like(v) if v.dtype.kind == "f" else v) for k, v in nulls.items()}
    out = {"refresh_cond": set(), "refresh_uncond": set(), "ctx_step_cond": [-1] * n, "ctx_step_uncond": [-1] * n}
    zs, decoded = [], []
    for b in range(batch):
        z = np_normals(seed, 0, b, math.prod(shape)).reshape(shape).astype(dt)
        conds = {"cond": {k: v[b] for k, v in cond_rows.items()},
                 "uncond": {k: v[b] for k, v in cond_rows.items()} if fault == "uncond_cond_rows" else nulls}
        cache, last_r, traj = {}, 0, []
        for i in range(n):
            if i in refresh:
                last_r = i
            interval = g["interval_logsnr"]
            guided = g["scale"] != 1 and (interval is None or interval[0] <= T["logsnr"][i] <= interval[1])
            x0 = {}
            for br in ["cond", "uncond"] if guided else ["cond"]:
                roles = {"sample": z, "time": times[i],
                         **{f"cond:{k}": v for k, v in conds[br].items()}}
                slot = "cond" if fault == "shared_cache" else br
                if slot not in cache or i in refresh or cache[slot][1] < last_r:
                    cache[slot] = (np_call(m, "encoder", roles, mdt), i)
                    out[f"refresh_{br}"].add(i)
                feats, r = cache[slot]
                out[f"ctx_step_{br}"][i] = r
                roles["time_ctx"] = times[i] if fault == "ctx_current" else times[r]
                roles.update({f"feature:{k}": v for k, v in feats.items()})
                pred = next(iter(np_call(m, "denoiser", roles, mdt).values())).astype(dt)
                x0[br] = np_to_x0(m["prediction"], pred, z, dt(T["alpha"][i]), dt(T["sigma"][i]))
            xh = x0["cond"] if not guided else x0["uncond"] + dt(g["scale"]) * (x0["cond"] - x0["uncond"])
            if s["clip_x0"] is not None:
                xh = np.clip(xh, -dt(s["clip_x0"]), dt(s["clip_x0"]))
            z = dt(T["coef_z"][i]) * z + dt(T["coef_x0"][i]) * xh
            if T["coef_noise"][i] != 0:
                draw = i if fault == "draw_index" else i + 1
                z = z + dt(T["coef_noise"][i]) * np_normals(seed, draw, b, math.prod(shape)).reshape(shape).astype(dt)
            traj.append(z)
        zs.append(np.stack(traj))
        if m["decoder"] is not None:
            decoded.append(np_decode(m, z, dt, mdt, inverted=fault == "decoder_scale_inverted"))
    out["z"] = np.stack(zs, axis=1)                                     # [N, B, C, H, W]
    out["decoded"] = np.stack(decoded) if decoded else None
    out["refresh_cond"], out["refresh_uncond"] = sorted(out["refresh_cond"]), sorted(out["refresh_uncond"])
    return out


def np_decoder_input(dec: dict, z, dt, inverted: bool = False):
    scale, shift = dt(dec["scaling_factor"]), dt(dec["shift_factor"])
    return (z * scale if inverted else z / scale) + shift


def np_decode(m: dict, z, dt, mdt, inverted: bool = False) -> np.ndarray:
    x = np_decoder_input(m["decoder"], z.astype(dt), dt, inverted)
    return next(iter(np_call(m, "decoder", {"sample": x}, mdt).values()))


def tolerance_ratio(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """(max |got - want|, max of |got - want| / (ATOL + RTOL |want|)): passing means ratio <= 1."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = np.abs(got - want)
    err[~np.isfinite(err)] = np.inf                     # a NaN fails, it does not compare False
    return float(err.max()), float((err / (1e-5 + 1e-4 * np.abs(want))).max())


def _probe(spec: dict, vec: dict, mdt) -> dict[str, np.ndarray]:
    """The README's step 3, row by row: E at probe_time_ctx, then g."""
    m, rows = spec["model"], _cond_rows(vec)
    out: dict[str, list] = {}
    for r in range(len(vec["z_init"])):
        roles = {"sample": vec["z_init"][r], "time": vec["probe_time"][r], "time_ctx": vec["probe_time_ctx"][r],
                 **{f"cond:{k}": v[r] for k, v in rows.items()}}
        feats = np_call(m, "encoder", dict(roles, time=vec["probe_time_ctx"][r]), mdt)
        pred = np_call(m, "denoiser", {**roles, **{f"feature:{k}": v for k, v in feats.items()}}, mdt)
        for k, v in {**feats, "prediction": next(iter(pred.values()))}.items():
            out.setdefault(f"probe_{k}", []).append(v)
        if m["decoder"] is not None:
            out.setdefault("decoded", []).append(
                next(iter(np_call(m, "decoder", {"sample": vec["decoder_input"][r]}, mdt).values())))
    return {k: np.stack(v) for k, v in out.items()}


def check_independently(folder: Path, dt=np.float32, mdt=np.float32, fault: str | None = None) -> tuple[dict, bool]:
    """Check every stage (RNG words, draws, mock probe, loop) of one variant folder; returns
    {stage: (max abs error, max tolerance ratio)} and whether the audit matches exactly."""
    spec, vec = _load(folder)
    seed = spec["noise"]["rng"]["seed"]
    key = (seed & 0xFFFFFFFF, seed >> 32)
    assert vec["rng_key"].tolist() == list(key)
    words = np.stack(np_philox(*vec["rng_counters"].T.astype(np.uint64), *key), axis=-1)
    assert words.tolist() == vec["rng_words"].tolist()
    report = {"rng_first_draws": tolerance_ratio(np_normals(seed, 0, 0, 16), vec["rng_first_draws"]),
              "z_init": tolerance_ratio(np_draw(seed, 0, len(vec["z_init"]), spec["model"]["sample_shape"]),
                                        vec["z_init"])}
    for key, got in _probe(spec, vec, mdt).items():
        report[f"probe:{key}"] = tolerance_ratio(got, vec[key])
    res = np_loop(folder, spec, _cond_rows(vec), len(vec["z_init"]), dt, mdt, fault)
    report["z"] = tolerance_ratio(res["z"], vec["z"])
    report["final"] = tolerance_ratio(res["z"][-1], vec["final"])
    if res["decoded"] is not None:
        report["decoded"] = tolerance_ratio(res["decoded"], vec["decoded"])
    audit_ok = all(res[k] == vec[k].tolist() for k in ("refresh_cond", "refresh_uncond", "ctx_step_cond",
                                                         "ctx_step_uncond"))
    audit_ok &= [int(c >= 0) for c in res["ctx_step_uncond"]] == vec["guided"].tolist()
    return report, audit_ok


# (loop precision, mock precision): a float32 runtime, a float64 one, and mixed ones; f32-mock64 is
# the reference's own arithmetic (on one machine it reproduces the vectors bit for bit)
PRECISIONS = {"f32": (np.float32, np.float32), "f64": (np.float64, np.float64), "f64-mock32": (np.float64, np.float32),
              "f32-mock64": (np.float32, np.float64)}


def _assert_passes(folder: Path, label: str) -> None:
    for prec, dts in PRECISIONS.items():
        report, audit_ok = check_independently(folder, *dts)
        print(label, prec, {k: f"{a:.1e} ({r:.3f}x tol)" for k, (a, r) in report.items()})
        assert audit_ok, f"{label}/{prec}: the refresh audit differs"
        for key, (max_abs, ratio) in report.items():
            assert ratio <= 1.0, f"{label}/{prec}/{key}: max abs error {max_abs:.3g} is {ratio:.3g}x the tolerance"


@pytest.mark.parametrize("name", VARIANTS)
def test_independent_numpy_loop_passes_the_vectors(vectors_dir, name):
    _assert_passes(vectors_dir / name, name)


@pytest.mark.parametrize("source", ["eps_odd_shape", "eps", "x0"])
def test_independent_loop_passes_for_other_bindings(tmp_path, source):
    spec = _odd_source() if source == "eps_odd_shape" else _source(prediction=source)
    write_conformance(spec, tmp_path / "v")
    for name in VARIANTS:
        _assert_passes(tmp_path / "v" / name, f"{source}/{name}")


@pytest.mark.parametrize("name", VARIANTS)
def test_elementwise_stages_are_bitwise(vectors_dir, name):
    """README "Arithmetic": time inputs, nulls, to_x0 + guidance + clip, the affine step and the
    decoder input reproduce bit for bit from the recorded inputs of each step (teacher-forced)."""
    folder = vectors_dir / name
    spec, vec = _load(folder)
    s, m, g = spec["sampler"], spec["model"], spec["guidance"]
    T, f32 = {k: np.asarray(v, np.float64) for k, v in s["tables"].items()}, np.float32
    time_in = next(i for i in m["denoiser"]["inputs"] if i["feeds"] == "time")
    want_time = np.asarray(T["model_time"]).astype(NP[time_in["dtype"]])
    assert vec["time"].dtype == want_time.dtype and np.array_equal(vec["time"], want_time)
    for k, v in np_nulls(folder, m).items():
        assert vec[f"null.{k}"].dtype == v.dtype and np.array_equal(vec[f"null.{k}"], v)
    z_prev = vec["z_init"]
    for i in range(s["num_steps"]):
        a, sg = f32(T["alpha"][i]), f32(T["sigma"][i])
        x0 = np_to_x0(m["prediction"], vec["pred_cond"][i], z_prev, a, sg)
        if vec["guided"][i]:
            xu = np_to_x0(m["prediction"], vec["pred_uncond"][i], z_prev, a, sg)
            x0 = xu + f32(g["scale"]) * (x0 - xu)
        if s["clip_x0"] is not None:
            x0 = np.clip(x0, -f32(s["clip_x0"]), f32(s["clip_x0"]))
        assert x0.dtype == np.float32 and np.array_equal(x0, vec["x0"][i]), f"x0 of step {i}"
        z = f32(T["coef_z"][i]) * z_prev + f32(T["coef_x0"][i]) * vec["x0"][i]
        if T["coef_noise"][i] != 0:
            z = z + f32(T["coef_noise"][i]) * vec["xi"][i]
        assert np.array_equal(z, vec["z"][i]), f"z of step {i}"
        z_prev = vec["z"][i]
    assert np.array_equal(vec["final"], vec["z"][-1])
    if m["decoder"] is not None:
        assert np.array_equal(np_decoder_input(m["decoder"], vec["final"], f32), vec["decoder_input"])


def test_conditioning_separates_from_the_nulls():
    """Guidance (cond - uncond) shows in every variant: each row's embedding lies >= 0.25 from its null's."""
    for name, spec in conformance_variants(_source()).items():
        m = json.loads(spec.to_json())["model"]
        rows, nulls = conformance_conditioning(spec), conformance_nulls(spec)
        for c in spec.model.conditioning:
            if c.null_kind == "value":
                nulls[c.name] = np.full(c.shape, c.null_value).astype(rows[c.name].dtype)
        if not rows:
            continue
        e_null = np_embedding(m, {f"cond:{k}": v for k, v in nulls.items()}, np.float64)
        for b in range(len(next(iter(rows.values())))):
            e = np_embedding(m, {f"cond:{k}": v[b] for k, v in rows.items()}, np.float64)
            assert abs(e - e_null) >= 0.25, (name, b, e, e_null)


# -- (c) the vectors catch the usual bugs ------------------------------------------------

CTX_VARIANTS = tuple(v for v in VARIANTS if v != "text_guided")    # its denoiser takes no time_ctx
FAULTS = ([("shift_refresh", v) for v in VARIANTS] + [("ctx_current", v) for v in CTX_VARIANTS]
          + [(f, v) for f in ("shared_cache", "uncond_cond_rows") for v in GUIDED]
          + [("null_zeros", "text_guided"), ("draw_index", "ancestral_k4"), ("draw_index", "latent_decoder"),
             ("time_logsnr", "timestep_trailing"), ("time_logsnr", "text_guided"),
             ("decoder_scale_inverted", "latent_decoder")])


def _worst_output(report: dict) -> tuple[float, float]:
    return max((report[k] for k in ("z", "final", "decoded") if k in report), key=lambda r: r[1])


@pytest.mark.parametrize("fault,name", FAULTS)
def test_a_buggy_loop_fails_the_vectors(vectors_dir, fault, name):
    report, audit_ok = check_independently(vectors_dir / name, np.float32, np.float32, fault)
    max_abs, ratio = _worst_output(report)
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
        report, _ = check_independently(vectors_dir / name, np.float32, np.float32, f"shift_refresh{j}")
        max_abs, ratio = report["z"]
        print(f"{name}: refresh {steps[j]} -> {steps[j] + 1}: max abs error {max_abs:.3g} = {ratio:.3g}x the tolerance")
        assert max_abs > 1e-3 and ratio > 100


# -- files, atomic writes, README ---------------------------------------------------------

def test_bin_index_holds_every_tensor_bit_for_bit(vectors_dir):
    for name in VARIANTS:
        folder = vectors_dir / name
        index = json.loads((folder / BIN_INDEX).read_text())
        assert (index["byte_order"], index["order"]) == ("little", "C")
        _, vec = _load(folder)
        assert set(index["tensors"]) == set(vec)
        assert sorted(p.name for p in (folder / "vectors").iterdir()) == sorted(f"{k}.bin" for k in vec)
        for key, entry in index["tensors"].items():
            raw = (folder / entry["file"]).read_bytes()
            arr = np.frombuffer(raw, np.dtype(entry["dtype"]).newbyteorder("<")).reshape(entry["shape"])
            assert arr.dtype.name == vec[key].dtype.name and np.array_equal(arr, vec[key]), f"{name}/{key}"


def test_stored_nulls_are_where_the_spec_says(vectors_dir):
    spec, _ = Spec.load(vectors_dir / "text_guided" / "spec.json")
    for c in spec.model.conditioning:
        arr = np.load(vectors_dir / "text_guided" / c.null_file, allow_pickle=False)
        assert c.null_file == f"{c.name}.null.npy" and arr.shape == c.shape and arr.dtype.name == c.dtype


def test_write_is_deterministic_and_atomic(tmp_path, vectors_dir):
    out = tmp_path / "again"
    write_conformance(types.SimpleNamespace(spec=_source()), out)     # a Bundle-like source
    files = sorted(p.relative_to(vectors_dir) for p in vectors_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (vectors_dir / rel).read_bytes(), rel
    with pytest.raises(OutputExistsError):
        write_conformance(_source(), out)
    write_conformance(_source(), out, seed=7, force=True)
    assert int(np.load(out / "ancestral_k4" / "vectors.npz")["seed"]) == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again"]      # no partial directories left


def test_readme_documents_formulas_keys_and_tolerance(vectors_dir):
    text = (vectors_dir / "README.md").read_text()
    for needle in ("tanh(0.8 * z[c,h,w] + 0.1 * lam + e)", "sin(0.9 * k + 0.5)", "lam(u) = 3 - 8 * u / 1000",
                   "cos(1.3 * d + 0.2)", "0.4 * s[o % C, i, j]", "1e-05 + 0.0001 * |want|",
                   "resolved_refresh_steps", "coef_noise[i]", "(block, draw, sample, 0)", "null_file",
                   "<name>.null.npy", "vectors.json", "BigInt64Array", "little-endian", "bit for bit",
                   "`encoder_attention_mask` (cond:text_mask: int64 [batch, 6])"):
        assert needle in text, needle
    assert (ATOL, RTOL) == (1e-5, 1e-4)
    for name in VARIANTS:
        assert f"`{name}`" in text
        _, vec = _load(vectors_dir / name)
        for key in vec:
            doc = f"`{key.split('.')[0]}.<name>`" if "." in key else f"`{key}`"
            assert doc in text, f"vectors.npz key {key} is not documented"


def test_golden_handler_on_a_spec_file(tmp_path, capsys):
    from dualrate.commands.golden_cmd import add_golden_command

    parser = argparse.ArgumentParser()
    add_golden_command(parser.add_subparsers(dest="command"))
    _source().save(tmp_path / "spec.json")
    args = parser.parse_args(["golden", str(tmp_path / "spec.json"), "-o", str(tmp_path / "g"), "--seed", "3"])
    assert args.handler(args) == 0
    printed = capsys.readouterr().out
    assert "guided_interval" in printed and "uncond [5, 8, 12]" in printed and "seed 3" in printed
    assert "time int64" in printed and "text.null.npy" in printed and "decoded [3, 12, 20]" in printed
    assert (tmp_path / "g" / "README.md").is_file() and (tmp_path / "g" / "ddim_eta0" / "vectors.json").is_file()
    with pytest.raises(OutputExistsError):
        args.handler(args)
    (tmp_path / "b").mkdir()                                # a directory is opened (verified) as a bundle
    (tmp_path / "spec.json").rename(tmp_path / "b" / "spec.json")
    with pytest.raises(BundleError, match="manifest"):
        args.handler(parser.parse_args(["golden", str(tmp_path / "b"), "-o", str(tmp_path / "g2")]))
    assert not (tmp_path / "g2").exists()


def _cli_has_golden() -> bool:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "dualrate", "golden", "--help"], capture_output=True,
                          cwd=REPO, env=env, timeout=120).returncode == 0


@pytest.mark.skipif(not _cli_has_golden(), reason="`dualrate golden` is not wired into dualrate/cli.py")
def test_cli_golden_on_a_spec_and_refusals(tmp_path):
    _odd_source().save(tmp_path / "spec.json")
    out = tmp_path / "golden"
    res = run_cli("golden", str(tmp_path / "spec.json"), "-o", str(out))
    assert res.returncode == 0, res.stderr
    assert "latent_decoder" in res.stdout and (out / "README.md").is_file()
    for name in VARIANTS:
        spec, vec = _load(out / name)
        if name != "latent_decoder":
            assert spec["model"]["sample_shape"] == [3, 5, 7]
        assert vec["z"].shape[0] == spec["sampler"]["num_steps"]
    again = run_cli("golden", str(tmp_path / "spec.json"), "-o", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    bad = run_cli("golden", str(tmp_path / "spec.json"), "-o", str(tmp_path / "x"), "--seed", "-1")
    assert bad.returncode == 2 and "--seed" in bad.stderr and not (tmp_path / "x").exists()
