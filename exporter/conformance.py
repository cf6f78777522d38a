"""Conformance vectors for native re-implementations of the dual-rate loop (``dualrate golden``).

A native runtime (Swift, Kotlin, C++) cannot run our PyTorch reference, so the
vectors use analytic mock networks (``MockRunner``, no weights) that anyone can
code in a few lines from ``MOCK_FORMULAS``. They are per-element, bounded
(tanh) and sensitive to what a loop can get wrong: refresh timing, the context
log-SNR, the class id, the per-branch cache under guidance. ``write_conformance``
runs the reference loop (``exporter.sampling.sample``) on a few spec variants
and writes, per variant, ``spec.json`` + ``vectors.npz``, and one ``README.md``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .atomic import atomic_directory
from .errors import BadInputError
from .golden import write_npz
from .rng import PhiloxNoise, normal_draw, philox4x32_10
from .sampling import COND, UNCOND, call_plan, sample
from .spec import Spec
from .spec_builder import SamplerOptions, make_spec

# Both key words non-zero (k1 = 0x000ABCDE, k0 = 0x12345678), so a runtime that drops the
# high word of the seed fails; below 2^53, so JSON readers that parse numbers as doubles
# still read it exactly.
DEFAULT_SEED = 0x000ABCDE12345678
BATCH = 2
ATOL, RTOL = 1e-5, 1e-4
RNG_FIRST_DRAWS = 16
# Raw Philox blocks to check before any Box-Muller: counter (0,0,0,0), then one that
# exercises each of the block / draw / sample lanes.
RNG_COUNTERS = ((0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0))
PROBE_LOGSNR, PROBE_LOGSNR_CTX = 1.5, -2.0
# The variants' cosine schedule spans log-SNR [-6, 6], not the model's [-15, 15]: at t = 1 with
# lambda = -15, eps -> x0 = (z - sigma eps) / alpha divides by alpha = 5.5e-4, so one float32 ulp
# of the network output moves z_1 by ~4e-5 and a correct float32 runtime could miss 1e-5 abs.
# At -6 the gain is ~20 (measured worst case 0.1x the tolerance). The tables are normative, so
# the range changes no code path a runtime has.
SCHEDULE_LOGSNR_RANGE = (-6.0, 6.0)

MOCK_FORMULAS = """\
Per sample (no reductions across the batch); z is [C, H, W]; k = class_id (int);
lam = logsnr, lam_ctx = logsnr_ctx (the float32 values the loop passes in).
tanh, sin, sqrt, exp are the usual functions; sigmoid(x) = 1 / (1 + exp(-x)).

    e = sin(0.9 * k + 0.5)                          # class embedding; the null id is just another k

Encoder E(z, lam, k) -> (feat0 [C, H, W], feat1 [C, ceil(H/2), ceil(W/2)]):

    feat0[c,h,w] = tanh(0.8 * z[c,h,w] + 0.1 * lam + e)
    b[c,h,w]     = tanh(1.3 * z[c,h,w] - 0.05 * lam - 0.5 * e)
    feat1[c,p,q] = (b[c,h0,w0] + b[c,h0,w1] + b[c,h1,w0] + b[c,h1,w1]) / 4
                   with h0 = 2p, h1 = min(2p+1, H-1), w0 = 2q, w1 = min(2q+1, W-1)

Denoiser g(z, lam, lam_ctx, k, feat0, feat1) -> prediction [C, H, W]:

    d      = lam - lam_ctx                          # how stale the cache is (0 at a refresh step)
    xt     = tanh(0.5 * z[c,h,w] + 0.9 * feat0[c,h,w] - 0.6 * feat1[c, h // 2, w // 2]
                  + 0.4 * e + 0.3 * tanh(0.5 * d) + 0.02 * lam)
    alpha  = sqrt(sigmoid(lam)); sigma = sqrt(sigmoid(-lam))
    prediction = (alpha * z - xt) / sigma           if model.prediction == "v"
                 (z - alpha * xt) / sigma           if model.prediction == "eps"
                 xt                                 if model.prediction == "x0"

xt is the mock's (bounded) clean-sample estimate; the last line reports it in the
model's parameterization, as a trained model would. The reference evaluates the
formulas in float64 from the float32 inputs and rounds the outputs (both features
and the prediction) to float32 once; float32 evaluation also passes the tolerance.
"""


# -- the mock networks ---------------------------------------------------------

def mock_feature_shapes(sample_shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """feat0 at full resolution, feat1 2x2-pooled (ceil for odd sizes): only the sample shape matters."""
    c, h, w = (int(x) for x in sample_shape)
    return [(c, h, w), (c, (h + 1) // 2, (w + 1) // 2)]


def _embed(class_id: np.ndarray) -> np.ndarray:
    return np.sin(0.9 * np.asarray(class_id, np.float64) + 0.5)[:, None, None, None]


def _col(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64)[:, None, None, None]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class MockRunner:
    """The runner protocol with the closed-form networks of ``MOCK_FORMULAS``; features are a
    tuple of two float32 arrays ``(feat0, feat1)``."""

    def __init__(self, prediction: str = "v"):
        if prediction not in ("v", "eps", "x0"):
            raise BadInputError(f"model.prediction is {prediction!r}; expected v, eps or x0")
        self.prediction = prediction

    @classmethod
    def for_spec(cls, spec: Spec) -> "MockRunner":
        return cls(spec.model.prediction)

    def encode(self, z: np.ndarray, logsnr: np.ndarray, class_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        z64, lam, e = np.asarray(z, np.float64), _col(logsnr), _embed(class_id)
        feat0 = np.tanh(0.8 * z64 + 0.1 * lam + e)
        b = np.tanh(1.3 * z64 - 0.05 * lam - 0.5 * e)
        h, w = b.shape[2:]
        r0, c0 = np.arange(0, h, 2), np.arange(0, w, 2)
        r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)   # clamped: odd sizes repeat the edge
        rows0, rows1 = b[:, :, r0], b[:, :, r1]
        feat1 = (rows0[..., c0] + rows0[..., c1] + rows1[..., c0] + rows1[..., c1]) / 4.0
        return feat0.astype(np.float32), feat1.astype(np.float32)

    def denoise(self, z: np.ndarray, logsnr: np.ndarray, logsnr_ctx: np.ndarray, class_id: np.ndarray,
                features: Any) -> np.ndarray:
        feat0, feat1 = (np.asarray(f, np.float64) for f in features)
        z64, lam, ctx, e = np.asarray(z, np.float64), _col(logsnr), _col(logsnr_ctx), _embed(class_id)
        h, w = z64.shape[2:]
        up = feat1.repeat(2, axis=2).repeat(2, axis=3)[:, :, :h, :w]      # feat1[c, h // 2, w // 2]
        xt = np.tanh(0.5 * z64 + 0.9 * feat0 - 0.6 * up + 0.4 * e + 0.3 * np.tanh(0.5 * (lam - ctx)) + 0.02 * lam)
        alpha, sigma = np.sqrt(_sigmoid(lam)), np.sqrt(_sigmoid(-lam))
        if self.prediction == "v":
            out = (alpha * z64 - xt) / sigma
        elif self.prediction == "eps":
            out = (z64 - alpha * xt) / sigma
        else:
            out = xt
        return out.astype(np.float32)

    def features_to_numpy(self, features: Any) -> list[np.ndarray]:
        return [np.asarray(f) for f in features]


# -- the variants --------------------------------------------------------------

@dataclass(frozen=True)
class _Binding:
    """The part of the source model a variant keeps (duck-types ``PairInfo`` for ``make_spec``,
    which takes the schedule's range from ``logsnr_clamp``): sample shape, classes, null id,
    prediction. Feature shapes are the mock's."""

    sample_shape: tuple[int, int, int]
    num_classes: int
    null_class: int
    prediction: str
    logsnr_clamp: tuple[float, float]


def _binding(spec: Spec) -> tuple[_Binding, tuple[float, float]]:
    m = spec.model
    lo, hi = (float(x) for x in m.logsnr_clamp)
    schedule = (max(lo, SCHEDULE_LOGSNR_RANGE[0]), min(hi, SCHEDULE_LOGSNR_RANGE[1]))
    return _Binding(tuple(int(x) for x in m.sample_shape), m.num_classes, m.null_class, m.prediction,
                    schedule), (lo, hi)


def _spec(binding: tuple[_Binding, tuple[float, float]], name: str, opts: SamplerOptions) -> Spec:
    info, clamp = binding
    spec = make_spec(info, mock_feature_shapes(info.sample_shape), opts,   # type: ignore[arg-type]
                     provenance={"conformance_variant": name, "networks": "dualrate.exporter.conformance.MockRunner"})
    # keep the source model's clamp and null id (make_spec set them from the schedule range / binding)
    model = dataclasses.replace(spec.model, logsnr_clamp=clamp, null_class=info.null_class)
    spec = dataclasses.replace(spec, model=model)
    spec.validate()
    return spec


def _interval_between(spec: Spec, first: int, last: int) -> tuple[float, float]:
    """A log-SNR interval that contains exactly the grid points of steps first..last: midpoints
    between neighbouring grid values, rounded for readability where that changes nothing."""
    lam = spec.sampler.tables.logsnr

    def between(a: float, b: float) -> float:
        short = round((a + b) / 2.0, 3)
        return short if a < short < b else (a + b) / 2.0

    return between(lam[first - 1], lam[first]), between(lam[last], lam[last + 1])


def conformance_variants(spec: Spec, seed: int = DEFAULT_SEED) -> dict[str, Spec]:
    """The conformance specs for the model bound by ``spec`` (shape, classes, prediction, clamp),
    on a cosine grid over ``SCHEDULE_LOGSNR_RANGE`` (within the model's clamp).

    * ``ancestral_k4``: ancestral, 16 steps, encoder every K=4 steps;
    * ``ddim_eta0``: DDIM eta=0 (no noise after z_0), 20 steps, an irregular front-loaded refresh list;
    * ``guided_interval``: ancestral, 20 steps, K=4, guidance w=3 only on steps 5..14, so the
      uncond branch starts mid-way (its empty cache forces an encoder call at step 5, which is
      not a refresh step) and stops before the end;
    * ``guided_clip``: DDIM eta=0.5, 12 steps, K=3, guidance w=2 at every step with x0 clipped
      to [-1, 1] (the reference batches both branches here; a native loop need not).
    """
    b = _binding(spec)
    rng = {"rng": "philox4x32-10", "seed": int(seed)}
    out = {
        "ancestral_k4": _spec(b, "ancestral_k4", SamplerOptions(
            num_steps=16, sampler="ancestral", eta=1.0, refresh="every_k", refresh_params={"k": 4, "phase": 0}, **rng)),
        "ddim_eta0": _spec(b, "ddim_eta0", SamplerOptions(
            num_steps=20, sampler="ddim", eta=0.0, refresh="front_loaded",
            refresh_params={"count": 5, "power": 2.0}, **rng)),
    }
    guided = SamplerOptions(num_steps=20, sampler="ancestral", eta=1.0, refresh="every_k",
                            refresh_params={"k": 4, "phase": 0}, guidance=3.0, **rng)
    # the interval comes from this grid's log-SNR values, whatever the model's clamp
    interval = _interval_between(_spec(b, "guided_interval", guided), 5, 14)
    out["guided_interval"] = _spec(b, "guided_interval", dataclasses.replace(guided, guidance_interval=interval))
    out["guided_clip"] = _spec(b, "guided_clip", SamplerOptions(
        num_steps=12, sampler="ddim", eta=0.5, refresh="every_k", refresh_params={"k": 3, "phase": 0},
        guidance=2.0, clip_x0=1.0, **rng))
    return out


# -- the vectors ---------------------------------------------------------------

def conformance_labels(num_classes: int, null_class: int, batch: int = BATCH) -> np.ndarray:
    """Class ids of the conformance batch: the first ``batch`` of 1, 4, 7, ... (mod num_classes,
    then the rest) whose mock embedding lies at least 0.25 from the null id's. The embedding is
    one scalar, so some ids sit close to the null id, and guidance (cond - uncond) would then
    barely show in the vectors."""
    cands = list(dict.fromkeys((1 + 3 * j) % num_classes for j in range(num_classes)))
    cands += [k for k in range(num_classes) if k not in cands]

    def emb(k: int) -> float:       # the e of MOCK_FORMULAS
        return math.sin(0.9 * k + 0.5)

    good = [k for k in cands if abs(emb(k) - emb(null_class)) >= 0.25] or cands
    return np.array([good[i % len(good)] for i in range(batch)], np.int64)


def conformance_vectors(spec: Spec, batch: int = BATCH) -> dict[str, np.ndarray]:
    """Run the reference loop with ``MockRunner`` on ``spec`` and collect every key of vectors.npz."""
    if spec.noise.rng.kind != "philox4x32-10" or spec.noise.rng.seed is None:
        raise BadInputError("conformance vectors need a philox4x32-10 spec with a seed (noise.rng)")
    seed = int(spec.noise.rng.seed)
    n, shape = spec.sampler.num_steps, tuple(spec.model.sample_shape)
    labels = conformance_labels(spec.model.num_classes, spec.model.null_class, batch)
    noise = PhiloxNoise(seed, batch)
    runner = MockRunner.for_spec(spec)
    res = sample(runner, spec, labels, noise, record=True)

    ctx = {COND: np.full(n, -1, np.int64), UNCOND: np.full(n, -1, np.int64)}
    for i, calls in enumerate(call_plan(spec)):
        for call in calls:
            for br in call.branches:
                ctx[br][i] = call.ctx_step
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], np.uint32)
    counters = np.array(RNG_COUNTERS, np.uint32)

    # A probe of the mock on the initial noise, so the networks can be checked before the loop.
    lam = np.full(batch, PROBE_LOGSNR, np.float32)
    ctx_lam = np.full(batch, PROBE_LOGSNR_CTX, np.float32)
    z_init = noise.draw(0, shape)
    feats = runner.encode(z_init, ctx_lam, labels)
    pred = runner.denoise(z_init, lam, ctx_lam, labels, feats)
    return {
        "seed": np.array(seed, np.uint64),
        "class_id": labels,
        "rng_key": key,
        "rng_counters": counters,
        "rng_words": philox4x32_10(counters, key),
        "rng_first_draws": normal_draw(seed, 0, (1, RNG_FIRST_DRAWS))[0],
        "z_init": z_init,
        "xi": np.stack([noise.draw(i + 1, shape) for i in range(n)]),
        "z": np.stack(res.trajectory),
        "x0": np.stack(res.x0_estimates),
        "final": res.x,
        "refresh_cond": np.array(res.refresh_log[COND], np.int64),
        "refresh_uncond": np.array(res.refresh_log[UNCOND], np.int64),
        "ctx_step_cond": ctx[COND],
        "ctx_step_uncond": ctx[UNCOND],
        "guided": (ctx[UNCOND] >= 0).astype(np.int64),
        "probe_logsnr": lam,
        "probe_logsnr_ctx": ctx_lam,
        "probe_feat0": feats[0],
        "probe_feat1": feats[1],
        "probe_prediction": pred,
    }


@dataclass(frozen=True)
class WrittenVariant:
    name: str
    path: Path                      # the variant's folder (final location)
    spec: Spec
    refresh: dict[str, list[int]]   # the refresh audit, per branch
    guided_steps: list[int]


def write_conformance(source: Any, out_dir: str | Path, seed: int = DEFAULT_SEED,
                      force: bool = False) -> list[WrittenVariant]:
    """Write ``out_dir/README.md`` and ``out_dir/<variant>/{spec.json, vectors.npz}`` atomically.

    ``source`` is a ``Bundle`` (anything with ``.spec``), a ``Spec``, or a path to a bundle
    directory or a spec.json. An existing ``out_dir`` is refused unless ``force``.
    """
    spec = _source_spec(source)
    out_dir = Path(out_dir)
    variants = conformance_variants(spec, seed)
    written, rows = [], []
    with atomic_directory(out_dir, force=force) as tmp:
        for name, vspec in variants.items():
            vec = conformance_vectors(vspec)
            (tmp / name).mkdir()
            vspec.save(tmp / name / "spec.json")
            write_npz(tmp / name / "vectors.npz", vec)
            audit = {COND: vec["refresh_cond"].tolist(), UNCOND: vec["refresh_uncond"].tolist()}
            guided = np.flatnonzero(vec["guided"]).tolist()
            written.append(WrittenVariant(name, out_dir / name, vspec, audit, guided))
            rows.append(_readme_row(name, vspec, audit, guided))
        (tmp / "README.md").write_text(_readme(spec, seed, rows))
    return written


def _source_spec(source: Any) -> Spec:
    if isinstance(source, Spec):
        return source
    if hasattr(source, "spec") and isinstance(source.spec, Spec):
        return source.spec
    path = Path(source)
    if path.is_file():
        return Spec.load(path)[0]
    from .bundle import open_bundle

    return open_bundle(path).spec


# -- README --------------------------------------------------------------------

def _fmt_steps(steps: Sequence[int]) -> str:
    return "[" + ", ".join(map(str, steps)) + "]" if steps else "none"


def _readme_row(name: str, spec: Spec, audit: dict[str, list[int]], guided: list[int]) -> str:
    s, g = spec.sampler, spec.guidance
    sampler = s.type if s.type == "ancestral" else f"ddim eta={s.eta:g}"
    where = (f", interval {list(g.interval_logsnr)} -> steps {guided[0]}..{guided[-1]}" if g.interval_logsnr
             else ", all steps")
    guide = "off" if g.scale == 1.0 else f"w={g.scale:g}{where}"
    extra = f", clip_x0={s.clip_x0:g}" if s.clip_x0 is not None else ""
    return (f"| `{name}` | {sampler}{extra} | {s.num_steps} | {_fmt_steps(spec.dual_rate.resolved_refresh_steps)} "
            f"| {guide} | {_fmt_steps(audit[COND])} | {_fmt_steps(audit[UNCOND])} |")


def _readme(source: Spec, seed: int, rows: list[str]) -> str:
    c, h, w = source.model.sample_shape
    m = source.model
    return f"""# Dual-rate sampler conformance vectors

A native implementation of the dual-rate loop (Swift, Kotlin, C++, ...) that reproduces
these vectors within tolerance implements `spec.json` correctly: the affine step tables,
the refresh schedule and cache rule, classifier-free guidance with per-branch caches,
x0 clipping, and the Philox4x32-10 noise. The networks are analytic mocks (no weights),
so the check needs nothing but this folder.

Model binding (from the source spec): sample shape [C, H, W] = [{c}, {h}, {w}], {m.num_classes} classes,
null class {m.null_class}, prediction `{m.prediction}`. Batch B = {BATCH}, seed {seed} (0x{seed:016X}).
The variants' cosine schedule spans log-SNR {list(_binding(source)[0].logsnr_clamp)}, where every prediction type
is well-conditioned in float32 (eps -> x0 divides by alpha); a runtime reads the tables either way.

| variant | sampler | N | resolved_refresh_steps | guidance | encoder ran (cond) | encoder ran (uncond) |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Each variant folder holds `spec.json` (read it as your runtime would; the mock networks
replace the graphs: feed them exactly what the spec's I/O binding names) and `vectors.npz`
(numpy zip; every member is a plain `.npy`, `np.load(path, allow_pickle=False)`).

## How to check a runtime

1. RNG: compute Philox4x32-10 of each `rng_counters[j]` with key `rng_key` and compare with
   `rng_words[j]` (exact). Then the first normals of draw 0, sample 0 against `rng_first_draws`,
   then your full draws against `z_init` and `xi`.
2. Networks: code the mock below; run the encoder on (`z_init`, `probe_logsnr_ctx`, `class_id`)
   and compare with `probe_feat0`, `probe_feat1`; run the denoiser on (`z_init`, `probe_logsnr`,
   `probe_logsnr_ctx`, `class_id`, those features) and compare with `probe_prediction`.
3. Loop: run your sampler with `class_id` and the seed from `spec.json` (`noise.rng.seed`), record z
   after every step and compare with `z` (and `x0`, `final`); record which steps ran the encoder
   for each branch and compare with the audit arrays (exact).

Tolerance (float32): every element of the draws, probes, `z`, `x0` and `final` must satisfy
`|got - want| <= 1e-5 + 1e-4 * |want|`; Philox words and the audit arrays must match exactly.

## Mock networks

```
{MOCK_FORMULAS.rstrip()}
```

## The loop (spec field names)

```
N      = sampler.num_steps;  T = sampler.tables          # float64 tables; use them, do not re-derive
z      = draw(0)                                        # z_init
cache  = {{}}                                             # per branch: (feat0, feat1, ctx_step)
last_r = 0
for i in 0..N-1:
    if i in dual_rate.resolved_refresh_steps: last_r = i
    guided = guidance.scale != 1 and (guidance.interval_logsnr is null
             or lo <= T.logsnr[i] <= hi)                 # [lo, hi] = guidance.interval_logsnr
    branches = [cond] + ([uncond] if guided else [])     # class: class_id / model.null_class
    for b in branches:
        if b not in cache or i in resolved_refresh_steps or cache[b].ctx_step < last_r:
            cache[b] = (E(z, T.logsnr[i], class_b), ctx_step = i)     # audit: b ran the encoder at i
        out_b = g(z, T.logsnr[i], T.logsnr[cache[b].ctx_step], class_b, cache[b].features)
        x0_b  = to_x0(out_b):  v: T.alpha[i]*z - T.sigma[i]*out_b
                               eps: (z - T.sigma[i]*out_b) / T.alpha[i];  x0: out_b
    x0 = x0_cond if not guided else x0_uncond + guidance.scale * (x0_cond - x0_uncond)
    if sampler.clip_x0 is not null: x0 = clip(x0, -clip_x0, clip_x0)
    z = T.coef_z[i]*z + T.coef_x0[i]*x0 + T.coef_noise[i]*draw(i+1)   # skip the draw when coef_noise[i] == 0
return z                                                # = x0 of the last step under final_step return_x0
```

Each branch keeps its own cache: the uncond branch never reuses the cond branch's features
(they were computed with another class id). The uncond cache is filled the first time the
branch is active, even off the refresh list (see `guided_interval`: step 5). `logsnr_ctx` is
the log-SNR of the step whose encoder call filled the cache, not the current one
(`ctx_step_cond` / `ctx_step_uncond` in the vectors give that step per step and branch).
The mocks work per sample, so running the branches one after the other or as one batch of
2B rows (cond rows first, as dualrate does when guidance covers every step) gives the same
numbers.

## Noise (noise.rng, kind philox4x32-10)

Philox4x32-10 (Random123), uint32 arithmetic mod 2^32; mulhilo(a, b) splits the 64-bit
product into (hi, lo). M0 = 0xD2511F53, M1 = 0xCD9E8D57, W0 = 0x9E3779B9, W1 = 0xBB67AE85.
Ten rounds; round r > 0 first bumps the key: k0 += W0, k1 += W1. Each round:

```
(hi0, lo0) = mulhilo(M0, c0); (hi1, lo1) = mulhilo(M1, c2)
(c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
```

Key (k0, k1) = (seed & 0xFFFFFFFF, seed >> 32); counter (c0, c1, c2, c3) = (block, draw,
sample, 0). Element e of a sample's flattened C-order [C, H, W] tensor is lane e % 4 of
block e // 4. draw 0 is the initial z, draw i + 1 the noise of step i; sample b is the batch
row. Uniforms u_j = (x_j + 0.5) / 2^32 in float64; lanes (0, 1) give r cos t, r sin t with
r = sqrt(-2 ln u_0), t = 2 pi u_1 (2 pi = 6.283185307179586), lanes (2, 3) likewise; round
each normal to float32 once, at the end. libm may differ in the last bit of log/cos/sin, so
compare normals with the tolerance, Philox words exactly.

## vectors.npz

| key | dtype | shape | content |
|---|---|---|---|
| `seed` | uint64 | [] | the seed (also `noise.rng.seed` in spec.json) |
| `class_id` | int64 | [B] | conditional class of each sample |
| `rng_key` | uint32 | [2] | (k0, k1) from the seed |
| `rng_counters` | uint32 | [4, 4] | counters (block, draw, sample, 0) checked |
| `rng_words` | uint32 | [4, 4] | Philox4x32-10 output for each counter |
| `rng_first_draws` | float32 | [{RNG_FIRST_DRAWS}] | first normals of draw 0, sample 0 |
| `z_init` | float32 | [B, C, H, W] | draw 0: the initial z |
| `xi` | float32 | [N, B, C, H, W] | draw i + 1: noise of step i (unused where coef_noise[i] == 0) |
| `z` | float32 | [N, B, C, H, W] | z after step i (z[N-1] is the output) |
| `x0` | float32 | [N, B, C, H, W] | guided, clipped x0 estimate of step i |
| `final` | float32 | [B, C, H, W] | the sampler's output |
| `refresh_cond` | int64 | [M_c] | steps at which the cond branch ran the encoder |
| `refresh_uncond` | int64 | [M_u] | steps at which the uncond branch ran the encoder (empty without guidance) |
| `ctx_step_cond` | int64 | [N] | step whose encoder call filled the cache the cond denoiser used |
| `ctx_step_uncond` | int64 | [N] | same for uncond; -1 where the branch is inactive |
| `guided` | int64 | [N] | 1 where guidance is active (the uncond branch runs) |
| `probe_logsnr`, `probe_logsnr_ctx` | float32 | [B] | probe inputs ({PROBE_LOGSNR}, {PROBE_LOGSNR_CTX}) |
| `probe_feat0`, `probe_feat1` | float32 | [B, ...] | E(z_init, probe_logsnr_ctx, class_id) |
| `probe_prediction` | float32 | [B, C, H, W] | g(z_init, probe_logsnr, probe_logsnr_ctx, class_id, probe features) |

Regenerate with `dualrate golden BUNDLE -o DIR [--seed S]`; the files are deterministic.
"""
