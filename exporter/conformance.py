"""Conformance vectors for native re-implementations of the dual-rate loop (``dualrate golden``).

A native runtime (Swift, Kotlin, C++, JavaScript) cannot run our PyTorch reference, so the
vectors use analytic mock networks (``MockRunner``, no weights) that anyone can code in a
few lines from ``MOCK_FORMULAS``. The mocks read their inputs by role, as spec 2 binds them,
work per sample, stay bounded (tanh), and are sensitive to what a loop can get wrong: refresh
timing, the context time, the conditioning and its nulls, the per-branch cache under
guidance, the time input (log-SNR, t or a diffusers timestep) and the decoder's scaling.
``write_conformance`` runs the reference loop (``exporter.sampling.sample``) on spec variants
and writes, per variant, ``spec.json``, ``vectors.npz``, the same tensors as raw little-endian
``.bin`` files indexed by ``vectors.json``, any stored null conditioning, and one ``README.md``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .atomic import atomic_directory
from .conditioning import COND, UNCOND, class_input, np_dtype, null_row
from .diffusers_spec import diffusers_grid
from .errors import BadInputError
from .golden import RecordingRunner, write_npz
from .rng import PhiloxNoise, normal_draw, philox4x32_10
from .runner import BaseRunner, graph_feeds, role_values
from .sampling import call_plan, decoder_input, sample, time_values
from .spec import (COND_PREFIX, FEATURE_PREFIX, ROLE_SAMPLE, ROLE_TIME, ROLE_TIME_CTX, ConditioningSpec, DecoderSpec,
                   GraphIO, ModelSpec, Spec, TensorIO, roles)
from .spec_builder import Grid, SamplerOptions, assemble_spec, cosine_grid

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
# The probe's (time, time_ctx) per model.time_input, before the cast to the graph's dtype.
PROBE_TIME = {"logsnr": (1.5, -2.0), "t": (0.35, 0.6), "timestep": (401.0, 801.0)}
# The cosine variants span log-SNR [-6, 6], not the model's [-15, 15]: at t = 1 with
# lambda = -15, eps -> x0 = (z - sigma eps) / alpha divides by alpha = 5.5e-4, so one float32 ulp
# of the network output moves z_1 by ~4e-5 and a correct float32 runtime could miss 1e-5 abs.
# At -6 the gain is ~20 (measured worst case 0.1x the tolerance). The tables are normative, so
# the range changes no code path a runtime has.
SCHEDULE_LOGSNR_RANGE = (-6.0, 6.0)
DEFAULT_CLASSES = 10                 # class-id variants of a source without a class input (null id 10)
FEATURES = ("feat0", "feat1")        # the mock encoder's outputs
TEXT_SHAPE, LATENT_SHAPE, DECODED_SHAPE = (6, 8), (4, 6, 10), (3, 12, 20)
DECODER_FACTORS = (0.3611, 0.1159)   # scaling_factor, shift_factor (a latent VAE's kind of numbers)
# diffusers' DDIM at 10 steps, trailing spacing (steps_offset has no effect there, as in diffusers),
# no alpha = 1 landing (so the last step keeps noise: final_step "step"); scaled_linear keeps
# alpha at timestep 999 at 0.068, so eps -> x0 stays well-conditioned in float32.
DIFFUSERS_CONFIG = {"_class_name": "DDIMScheduler", "num_train_timesteps": 1000, "beta_schedule": "scaled_linear",
                    "beta_start": 0.00085, "beta_end": 0.012, "timestep_spacing": "trailing", "steps_offset": 1,
                    "set_alpha_to_one": False, "clip_sample": False}
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
BIN_INDEX, BIN_DIR = "vectors.json", "vectors"
MOCK_PROVENANCE = "dualrate.exporter.conformance.MockRunner (README.md, Mock networks)"

MOCK_FORMULAS = """\
The mocks read every input by its role (spec.json: model.<graph>.inputs[k].feeds), never by
position or name, and work per sample (no reductions across the batch). An input the graph
does not take reads as 0: a denoiser without time_ctx has d = 0, a model without
conditioning has e = 0, an encoder without time has lam = 0. z is the sample [C, H, W].

Time (roles time, time_ctx): the mock's log-SNR of a fed time value u, by model.time_input:

    logsnr:   lam(u) = u
    t:        lam(u) = 6 - 12 * u
    timestep: lam(u) = 3 - 8 * u / 1000             # u is the int64 diffusers timestep
    lam = lam(time), lam_ctx = lam(time_ctx)

Conditioning (roles cond:<name>): one scalar e per sample, the sum over the inputs the graph takes of

    class id k (an integer input with num_classes):   sin(0.9 * k + 0.5)   # the null id is just another k
    float input x viewed as [L, D] (D its last axis; a vector [D] is L = 1), masked by
    m [L] = the input cond:<name>_mask where the graph takes one, else all ones:
        s[l] = tanh(0.5 * sum_d x[l,d] * cos(1.3 * d + 0.2))
        1.5 * (sum_l m[l] * s[l]) / max(1, sum_l m[l])
    any other integer input (a mask): nothing by itself

Encoder E -> feat0 [C, H, W], feat1 [C, ceil(H/2), ceil(W/2)] (its outputs, by name):

    feat0[c,h,w] = tanh(0.8 * z[c,h,w] + 0.1 * lam + e)
    b[c,h,w]     = tanh(1.3 * z[c,h,w] - 0.05 * lam - 0.5 * e)
    feat1[c,p,q] = (b[c,h0,w0] + b[c,h0,w1] + b[c,h1,w0] + b[c,h1,w1]) / 4
                   with h0 = 2p, h1 = min(2p+1, H-1), w0 = 2q, w1 = min(2q+1, W-1)

Denoiser g -> prediction [C, H, W]; f0, f1 are its inputs fed feature:feat0, feature:feat1:

    d      = lam - lam_ctx                          # how stale the cache is (0 at a refresh step)
    xt     = tanh(0.5 * z[c,h,w] + 0.9 * f0[c,h,w] - 0.6 * f1[c, h // 2, w // 2]
                  + 0.4 * e + 0.3 * tanh(0.5 * d) + 0.02 * lam)
    alpha  = sqrt(sigmoid(lam)); sigma = sqrt(sigmoid(-lam)); sigmoid(x) = 1 / (1 + exp(-x))
    prediction = (alpha * z - xt) / sigma           if model.prediction == "v"
                 (z - alpha * xt) / sigma           if model.prediction == "eps"
                 xt                                 if model.prediction == "x0"

Decoder D (model.decoder.graph) -> [O, OH, OW] = model.decoder.output_shape; s [C, H, W] is its
sample input, which the loop computes as final / scaling_factor + shift_factor:

    image[o,y,x] = tanh(0.4 * s[o % C, i, j] - 0.2 * s[(o + 1) % C, i, j] + 0.1 * o)
                   with i = (y * H) // OH, j = (x * W) // OW        # nearest upsampling

xt is the mock's (bounded) clean-sample estimate, reported in the model's parameterization
through the mock's own alpha and sigma; the loop converts back with sampler.tables.alpha
and sigma, which differ from the mock's off log-SNR time, so a loop that re-derives them
from the time input fails. The reference evaluates the formulas in float64 from the fed
values and rounds each output to float32 once; float32 evaluation also passes the tolerance.
"""


# -- the mock networks ---------------------------------------------------------

def mock_feature_shapes(sample_shape: Sequence[int]) -> list[tuple[int, int, int]]:
    """feat0 at full resolution, feat1 2x2-pooled (ceil for odd sizes): only the sample shape matters."""
    c, h, w = (int(x) for x in sample_shape)
    return [(c, h, w), (c, (h + 1) // 2, (w + 1) // 2)]


def mock_logsnr(time_input: str, u: Any) -> np.ndarray:
    """The mock's log-SNR of a fed time value (``lam(u)`` of ``MOCK_FORMULAS``), float64."""
    u = np.asarray(u, np.float64)
    if time_input == "logsnr":
        return u
    if time_input == "t":
        return 6.0 - 12.0 * u
    return 3.0 - 8.0 * u / 1000.0


def _col(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64).reshape(-1, 1, 1, 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _rows(values: Mapping[str, np.ndarray]) -> int:
    return len(next(iter(values.values())))


def _sample_in(model: ModelSpec, values: Mapping[str, np.ndarray]) -> np.ndarray:
    if ROLE_SAMPLE in values:
        return np.asarray(values[ROLE_SAMPLE], np.float64)
    return np.zeros((_rows(values), *model.sample_shape))


def _lam_in(model: ModelSpec, values: Mapping[str, np.ndarray], role: str) -> np.ndarray:
    if role in values:
        return _col(mock_logsnr(model.time_input, values[role]))
    return np.zeros((_rows(values), 1, 1, 1))


def _token_mean(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """The masked mean of per-token scores of a float conditioning input, per sample."""
    x = np.asarray(x, np.float64)
    x = x.reshape(len(x), -1, x.shape[-1])                                  # [B, L, D]
    s = np.tanh(0.5 * np.sum(x * np.cos(1.3 * np.arange(x.shape[-1]) + 0.2), axis=-1))
    m = np.ones_like(s) if mask is None else np.asarray(mask, np.float64).reshape(s.shape)
    return 1.5 * np.sum(m * s, axis=-1) / np.maximum(1.0, np.sum(m, axis=-1))


def _embedding(model: ModelSpec, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """``e`` of ``MOCK_FORMULAS``: one scalar per sample from the conditioning the graph takes."""
    e = np.zeros(_rows(values))
    for c in model.conditioning:
        x = values.get(COND_PREFIX + c.name)
        if x is None:
            continue
        if c.num_classes is not None:
            e = e + np.sin(0.9 * np.asarray(x, np.float64).reshape(len(x)) + 0.5)
        elif np.asarray(x).dtype.kind == "f":
            e = e + _token_mean(x, values.get(f"{COND_PREFIX}{c.name}_mask"))
    return _col(e)


def _pool2(b: np.ndarray) -> np.ndarray:
    h, w = b.shape[2:]
    r0, c0 = np.arange(0, h, 2), np.arange(0, w, 2)
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)   # clamped: odd sizes repeat the edge
    rows0, rows1 = b[:, :, r0], b[:, :, r1]
    return (rows0[..., c0] + rows0[..., c1] + rows1[..., c0] + rows1[..., c1]) / 4.0


def mock_encoder(model: ModelSpec, values: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """E of ``MOCK_FORMULAS`` on the inputs by role; returns [feat0, feat1] (float32)."""
    z, lam, e = _sample_in(model, values), _lam_in(model, values, ROLE_TIME), _embedding(model, values)
    feat0 = np.tanh(0.8 * z + 0.1 * lam + e)
    feat1 = _pool2(np.tanh(1.3 * z - 0.05 * lam - 0.5 * e))
    return [feat0.astype(np.float32), feat1.astype(np.float32)]


def mock_denoiser(model: ModelSpec, values: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """g of ``MOCK_FORMULAS`` on the inputs by role; returns [prediction] (float32)."""
    z, e = _sample_in(model, values), _embedding(model, values)
    lam = _lam_in(model, values, ROLE_TIME)
    d = lam - _lam_in(model, values, ROLE_TIME_CTX) if ROLE_TIME_CTX in values else 0.0
    shapes = mock_feature_shapes(model.sample_shape)
    f0, f1 = (np.asarray(values.get(FEATURE_PREFIX + n, np.zeros((len(z), *s))), np.float64)
              for n, s in zip(FEATURES, shapes))
    h, w = z.shape[2:]
    up = f1.repeat(2, axis=2).repeat(2, axis=3)[:, :, :h, :w]      # f1[c, h // 2, w // 2]
    xt = np.tanh(0.5 * z + 0.9 * f0 - 0.6 * up + 0.4 * e + 0.3 * np.tanh(0.5 * d) + 0.02 * lam)
    alpha, sigma = np.sqrt(_sigmoid(lam)), np.sqrt(_sigmoid(-lam))
    out = {"v": (alpha * z - xt) / sigma, "eps": (z - alpha * xt) / sigma, "x0": xt}[model.prediction]
    return [out.astype(np.float32)]


def mock_decoder(model: ModelSpec, values: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """D of ``MOCK_FORMULAS``: two channels mixed, nearest-upsampled to the decoder's output shape."""
    s = _sample_in(model, values)
    c, h, w = s.shape[1:]
    o, oh, ow = model.decoder.output_shape
    near = s[:, :, (np.arange(oh) * h) // oh][:, :, :, (np.arange(ow) * w) // ow]     # [B, C, OH, OW]
    ch = np.arange(o)
    out = np.tanh(0.4 * near[:, ch % c] - 0.2 * near[:, (ch + 1) % c] + 0.1 * ch[:, None, None])
    return [out.astype(np.float32)]


MOCKS: dict[str, Callable[[ModelSpec, Mapping[str, np.ndarray]], list[np.ndarray]]] = {
    "encoder": mock_encoder, "denoiser": mock_denoiser, "decoder": mock_decoder}


class MockRunner(BaseRunner):
    """The runner contract with the closed-form networks of ``MOCK_FORMULAS``: the feeds are checked
    against the spec's graphs (``BaseRunner``), then read by role; outputs come back by name."""

    name = "mock"

    def __init__(self, spec: Spec):
        super().__init__(spec)
        got = [(o.name, tuple(o.shape[1:])) for o in spec.model.encoder.outputs]
        want = list(zip(FEATURES, mock_feature_shapes(spec.model.sample_shape)))
        if got != want:
            raise BadInputError(f"the mock encoder emits {want}, but this spec's encoder outputs are {got}; "
                                "mock networks run the specs of conformance_variants")

    def _run(self, graph: str, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        gio = self.graphs[graph]
        values = {tio.feeds: np.asarray(feeds[tio.name]) for tio in gio.inputs}
        return {o.name: out for o, out in zip(gio.outputs, MOCKS[graph](self.spec.model, values))}


# -- the mock models (graph bindings) -------------------------------------------

def _bind(sample_shape: tuple[int, ...], time_dtype: str, conditioning: Sequence[ConditioningSpec],
          inputs: Sequence[tuple[str, str]]) -> tuple[TensorIO, ...]:
    """Graph inputs from (name, role) pairs, each with the shape and dtype its role implies."""
    feats = dict(zip(FEATURES, mock_feature_shapes(sample_shape)))
    conds = {COND_PREFIX + c.name: c for c in conditioning}
    out = []
    for name, role in inputs:
        if role == ROLE_SAMPLE:
            shape, dtype = tuple(sample_shape), "float32"
        elif role in (ROLE_TIME, ROLE_TIME_CTX):
            shape, dtype = (), time_dtype
        elif role in conds:
            shape, dtype = tuple(conds[role].shape), conds[role].dtype
        else:
            shape, dtype = feats[role[len(FEATURE_PREFIX):]], "float32"
        out.append(TensorIO(name, ("batch", *shape), dtype, role))
    return tuple(out)


@dataclass(frozen=True)
class MockModel:
    """What a variant's model is: the graphs' inputs as (name, role) pairs, the rest as in ``ModelSpec``."""

    sample_shape: tuple[int, int, int]
    prediction: str
    encoder: tuple[tuple[str, str], ...]
    denoiser: tuple[tuple[str, str], ...]
    conditioning: tuple[ConditioningSpec, ...] = ()
    time_input: str = "logsnr"
    time_dtype: str = "float32"
    decoder: tuple[float, float, tuple[int, int, int]] | None = None    # scaling, shift, output shape
    logsnr_clamp: tuple[float, float] = (-15.0, 15.0)

    def _inputs(self, pairs: Sequence[tuple[str, str]]) -> tuple[TensorIO, ...]:
        return _bind(self.sample_shape, self.time_dtype, self.conditioning, pairs)

    def spec(self) -> ModelSpec:
        feats = tuple(TensorIO(n, ("batch", *s), "float32") for n, s in
                      zip(FEATURES, mock_feature_shapes(self.sample_shape)))
        decoder = None
        if self.decoder is not None:
            scaling, shift, shape = self.decoder
            graph = GraphIO(self._inputs([("latents", ROLE_SAMPLE)]),
                            (TensorIO("image", ("batch", *shape), "float32"),))
            decoder = DecoderSpec(graph, scaling, shift, shape)
        prediction = (TensorIO("prediction", ("batch", *self.sample_shape), "float32"),)
        return ModelSpec(
            sample_shape=self.sample_shape, prediction=self.prediction,
            encoder=GraphIO(self._inputs(self.encoder), feats), denoiser=GraphIO(self._inputs(self.denoiser), prediction),
            conditioning=self.conditioning, decoder=decoder, time_input=self.time_input,
            logsnr_clamp=self.logsnr_clamp)


def _class_conditioning(source: Spec) -> ConditioningSpec:
    """The class-id input of the class variants: the source's own (name, classes, null id) where it
    has one, else ``DEFAULT_CLASSES`` classes with the null id one past the last."""
    c = class_input(source)
    if c is None:
        return ConditioningSpec("class_id", (), "int64", "value", float(DEFAULT_CLASSES), None, DEFAULT_CLASSES)
    null = c.null_value if c.null_kind == "value" else float(c.num_classes)
    return ConditioningSpec(c.name, (), "int64", "value", float(null), None, c.num_classes)


def mock_models(source: Spec) -> dict[str, MockModel]:
    """The variants' models. All keep the source's prediction and log-SNR clamp; all but ``latent``
    its sample shape. ``class`` mirrors the DR-UViT binding; ``timestep`` and ``text`` name their
    inputs unlike the roles and the feature outputs, in another order per graph, so only
    binding by role passes them."""
    m = source.model
    shape = tuple(int(x) for x in m.sample_shape)
    common = {"prediction": m.prediction, "logsnr_clamp": tuple(m.logsnr_clamp)}
    cls = _class_conditioning(source)
    labels = ConditioningSpec("class_labels", (), "int64", "value", cls.null_value, None, cls.num_classes)
    text = (ConditioningSpec("text", TEXT_SHAPE, "float32", "file", None, "text.null.npy"),
            ConditioningSpec("text_mask", TEXT_SHAPE[:1], "int64", "file", None, "text_mask.null.npy"))
    feats = (("feat0", "feature:feat0"), ("feat1", "feature:feat1"))
    return {
        "class": MockModel(shape, conditioning=(cls,), **common,
                           encoder=(("z", "sample"), ("logsnr", "time"), (cls.name, f"cond:{cls.name}")),
                           denoiser=(("z", "sample"), ("logsnr", "time"), ("logsnr_ctx", "time_ctx"),
                                     (cls.name, f"cond:{cls.name}"), *feats)),
        "timestep": MockModel(shape, conditioning=(labels,), time_input="timestep", time_dtype="int64", **common,
                              encoder=(("sample", "sample"), ("timestep", "time"), ("class_labels", "cond:class_labels")),
                              denoiser=(("class_labels", "cond:class_labels"), ("ctx_timestep", "time_ctx"),
                                        ("down_feat", "feature:feat1"), ("timestep", "time"), ("sample", "sample"),
                                        ("mid_feat", "feature:feat0"))),
        "text": MockModel(shape, conditioning=text, time_input="t", **common,     # the denoiser takes no time_ctx
                          encoder=(("x", "sample"), ("t", "time"), ("encoder_hidden_states", "cond:text"),
                                   ("encoder_attention_mask", "cond:text_mask")),
                          denoiser=(("encoder_attention_mask", "cond:text_mask"), ("h1", "feature:feat1"),
                                    ("encoder_hidden_states", "cond:text"), ("x", "sample"), ("t", "time"),
                                    ("h0", "feature:feat0"))),
        "latent": MockModel(LATENT_SHAPE, time_dtype="float64", decoder=(*DECODER_FACTORS, DECODED_SHAPE), **common,
                            encoder=(("latents", "sample"),),                # no time, no conditioning
                            denoiser=(("latents", "sample"), ("logsnr", "time"), ("logsnr_ctx", "time_ctx"), *feats)),
    }


# -- the variants --------------------------------------------------------------

VARIANT_NOTES = {
    "ancestral_k4": "ancestral, encoder every K=4 steps",
    "ddim_eta0": "DDIM eta=0 (no noise after z_0), irregular front-loaded refresh list",
    "guided_interval": "guidance only on steps inside a log-SNR interval: the uncond branch starts mid-way "
                       "(its empty cache forces an encoder call off the refresh list) and stops early",
    "guided_clip": "guidance at every step (dualrate batches both branches), x0 clipped to [-1, 1]",
    "timestep_trailing": "diffusers DDIMScheduler (trailing spacing, steps_offset 1, set_alpha_to_one false): "
                         "int64 timesteps from tables.model_time, final_step 'step', DDIM eta 0.3",
    "text_guided": "text-like conditioning [L, D] float32 + int64 mask [L], both nulls stored tensors (.npy); "
                   "guidance at every step; time input t; the denoiser takes no time_ctx",
    "latent_decoder": "unconditional non-square latent [4, 6, 10], encoder on the sample alone, float64 time "
                      "inputs, explicit refresh list with adjacent steps, decoder with scaling and shift factors",
}


def _assemble(name: str, model: MockModel, opts: SamplerOptions, grid: Grid) -> Spec:
    return assemble_spec(model.spec(), opts, grid, {"conformance_variant": name, "networks": MOCK_PROVENANCE})


def _cosine(name: str, model: MockModel, opts: SamplerOptions) -> Spec:
    """A variant on the cosine schedule over ``SCHEDULE_LOGSNR_RANGE`` (within the model's clamp)."""
    lo, hi = model.logsnr_clamp
    span = (max(lo, SCHEDULE_LOGSNR_RANGE[0]), min(hi, SCHEDULE_LOGSNR_RANGE[1]))
    return _assemble(name, model, opts, cosine_grid(opts, model.time_input, span))


def _diffusers(name: str, model: MockModel, opts: SamplerOptions) -> Spec:
    """A variant on ``DIFFUSERS_CONFIG``'s grid (its prediction type is the model's)."""
    config = {**DIFFUSERS_CONFIG, "prediction_type": DIFFUSERS_PREDICTION[model.prediction]}
    grid, opts, _ = diffusers_grid(config, opts, model.time_input)
    return _assemble(name, model, opts, grid)


def _interval_between(spec: Spec, first: int, last: int) -> tuple[float, float]:
    """A log-SNR interval that contains exactly the grid points of steps first..last: midpoints
    between neighbouring grid values, rounded for readability where that changes nothing."""
    lam = spec.sampler.tables.logsnr

    def between(a: float, b: float) -> float:
        short = round((a + b) / 2.0, 3)
        return short if a < short < b else (a + b) / 2.0

    return between(lam[first - 1], lam[first]), between(lam[last], lam[last + 1])


def _options(seed: int, num_steps: int, sampler: str, eta: float, refresh: str, params: dict[str, Any],
             **guidance: Any) -> SamplerOptions:
    return SamplerOptions(num_steps=num_steps, sampler=sampler, eta=eta, refresh=refresh, refresh_params=params,
                          rng="philox4x32-10", seed=int(seed), **guidance)


def conformance_variants(source: Spec, seed: int = DEFAULT_SEED) -> dict[str, Spec]:
    """The conformance specs for the model bound by ``source`` (see ``mock_models``, ``VARIANT_NOTES``)."""
    models = mock_models(source)
    cls = models["class"]
    guided = _options(seed, 20, "ancestral", 1.0, "every_k", {"k": 4, "phase": 0}, guidance=3.0)
    # the interval comes from this grid's log-SNR values (steps 5..14), whatever the model's clamp
    interval = _interval_between(_cosine("guided_interval", cls, guided), 5, 14)
    return {
        "ancestral_k4": _cosine("ancestral_k4", cls, _options(seed, 16, "ancestral", 1.0, "every_k",
                                                              {"k": 4, "phase": 0})),
        "ddim_eta0": _cosine("ddim_eta0", cls, _options(seed, 20, "ddim", 0.0, "front_loaded",
                                                        {"count": 5, "power": 2.0})),
        "guided_interval": _cosine("guided_interval", cls, replace(guided, guidance_interval=interval)),
        "guided_clip": _cosine("guided_clip", cls, _options(seed, 12, "ddim", 0.5, "every_k", {"k": 3, "phase": 0},
                                                            guidance=2.0, clip_x0=1.0)),
        "timestep_trailing": _diffusers("timestep_trailing", models["timestep"],
                                        _options(seed, 10, "ddim", 0.3, "every_k", {"k": 3, "phase": 0})),
        "text_guided": _cosine("text_guided", models["text"],
                               _options(seed, 14, "ancestral", 1.0, "uniform_logsnr", {"count": 5}, guidance=3.0)),
        "latent_decoder": _cosine("latent_decoder", models["latent"],
                                  _options(seed, 12, "ddim", 0.7, "explicit", {"steps": [0, 3, 4, 9]})),
    }


# -- conditioning and nulls ------------------------------------------------------

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


def _tokens(batch: int, shape: tuple[int, ...]) -> np.ndarray:
    """Closed-form token embeddings [L, D], a different prompt per row: phases chosen so the mock's
    token scores (``s[l]``) mostly agree within a row, which puts e well away from the null's."""
    d = np.arange(shape[-1])
    lead = np.arange(math.prod(shape[:-1]) or 1)[:, None]
    rows = [0.8 * np.cos(1.3 * d + 0.2 + 0.35 * lead + 2.5 * b) + 0.2 * np.sin(2.1 * (lead * shape[-1] + d) + b)
            for b in range(batch)]
    return np.stack(rows).reshape(batch, *shape).astype(np.float32)


def _mask(batch: int, shape: tuple[int, ...], keep: Sequence[int] | None = None) -> np.ndarray:
    """Masks [L]: row b keeps its first ``keep[b]`` tokens (default max(1, L - 2b), so the padded
    tokens differ between rows)."""
    keep = keep or [max(1, shape[-1] - 2 * b) for b in range(batch)]
    return np.stack([np.broadcast_to(np.arange(shape[-1]) < k, shape) for k in keep]).astype(np.int64)


def conformance_conditioning(spec: Spec, batch: int = BATCH) -> dict[str, np.ndarray]:
    """The cond rows of a variant by input: class ids (``conformance_labels``), closed-form token
    embeddings and masks of decreasing length."""
    out = {}
    for c in spec.model.conditioning:
        if c.num_classes is not None:
            out[c.name] = conformance_labels(c.num_classes, int(c.null_value), batch)
        elif np.dtype(np_dtype(c.dtype)).kind == "f":
            out[c.name] = _tokens(batch, tuple(c.shape)).astype(np_dtype(c.dtype))
        else:
            out[c.name] = _mask(batch, tuple(c.shape)).astype(np_dtype(c.dtype))
    return out


def conformance_nulls(spec: Spec) -> dict[str, np.ndarray]:
    """The stored nulls (``null_kind`` file) of a variant: a faint fixed embedding (an empty
    prompt's), and a mask that keeps the first token only."""
    out = {}
    for c in spec.model.conditioning:
        if c.null_kind != "file":
            continue
        if np.dtype(np_dtype(c.dtype)).kind == "f":
            out[c.name] = (0.05 * np.cos(0.5 * np.arange(math.prod(c.shape)))).reshape(c.shape).astype(np_dtype(c.dtype))
        else:
            out[c.name] = _mask(1, tuple(c.shape), keep=[1])[0].astype(np_dtype(c.dtype))
    return out


# -- the vectors ---------------------------------------------------------------

def _time_dtype(model: ModelSpec) -> Any:
    """The dtype the networks take time in (the denoiser's, else the encoder's; float64 if neither)."""
    for gio in (model.denoiser, model.encoder):
        tio = roles(gio).get(ROLE_TIME)
        if tio is not None:
            return np_dtype(tio.dtype)
    return np.float64


def _rng_vectors(seed: int) -> dict[str, np.ndarray]:
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], np.uint32)
    counters = np.array(RNG_COUNTERS, np.uint32)
    return {"seed": np.array(seed, np.uint64), "rng_key": key, "rng_counters": counters,
            "rng_words": philox4x32_10(counters, key),
            "rng_first_draws": normal_draw(seed, 0, (1, RNG_FIRST_DRAWS))[0]}


def _branch_vectors(spec: Spec, rec: RecordingRunner, batch: int) -> dict[str, np.ndarray]:
    """Per step and branch: the denoiser's prediction and the step whose encoder call filled the
    cache it used (-1 where the branch is inactive); walks the call plan in call order."""
    n, shape = spec.sampler.num_steps, tuple(spec.model.sample_shape)
    ctx = {br: np.full(n, -1, np.int64) for br in (COND, UNCOND)}
    pred = {br: np.zeros((n, batch, *shape), np.float32) for br in (COND, UNCOND)}
    calls = iter(rec.calls["denoiser"])
    for i, step in enumerate(call_plan(spec)):
        for call in step:
            out = next(calls)["out.prediction"]
            for k, br in enumerate(call.branches):
                ctx[br][i] = call.ctx_step
                pred[br][i] = out[k * batch:(k + 1) * batch]
    return {"pred_cond": pred[COND], "pred_uncond": pred[UNCOND], "ctx_step_cond": ctx[COND],
            "ctx_step_uncond": ctx[UNCOND], "guided": (ctx[UNCOND] >= 0).astype(np.int64)}


def _probe(spec: Spec, runner: MockRunner, z: np.ndarray, cond: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The mocks on the initial noise, checkable before any loop: E at time_ctx, then g."""
    m = spec.model
    t, t_ctx = (np.full(len(z), v).astype(_time_dtype(m)) for v in PROBE_TIME[m.time_input])
    feats = runner.encode(graph_feeds(m.encoder, role_values(z, t_ctx, None, cond)))
    pred = runner.denoise(graph_feeds(m.denoiser, role_values(z, t, t_ctx, cond, feats)))
    return {"probe_time": t, "probe_time_ctx": t_ctx, **{f"probe_{k}": v for k, v in feats.items()},
            "probe_prediction": pred}


def conformance_vectors(spec: Spec, nulls: Mapping[str, np.ndarray] | None = None,
                        batch: int = BATCH) -> dict[str, np.ndarray]:
    """Run the reference loop with ``MockRunner`` on ``spec`` and collect every key of vectors.npz."""
    if spec.noise.rng.kind != "philox4x32-10" or spec.noise.rng.seed is None:
        raise BadInputError("conformance vectors need a philox4x32-10 spec with a seed (noise.rng)")
    seed = int(spec.noise.rng.seed)
    m, n, shape = spec.model, spec.sampler.num_steps, tuple(spec.model.sample_shape)
    nulls = conformance_nulls(spec) if nulls is None else nulls
    cond = conformance_conditioning(spec, batch)
    noise = PhiloxNoise(seed, batch)
    runner = MockRunner(spec)
    rec = RecordingRunner(runner)
    res = sample(rec, spec, cond, noise, nulls=nulls, record=True)
    z_init = noise.draw(0, shape)
    out = {**_rng_vectors(seed),
           **{f"cond.{k}": v for k, v in cond.items()},
           **{f"null.{c.name}": null_row(c, nulls) for c in m.conditioning if c.null_kind != "none"},
           "time": time_values(spec).astype(_time_dtype(m)),
           "z_init": z_init, "xi": np.stack([noise.draw(i + 1, shape) for i in range(n)]),
           "z": np.stack(res.trajectory), "x0": np.stack(res.x0_estimates), "final": res.x,
           "refresh_cond": np.array(res.refresh_log[COND], np.int64),
           "refresh_uncond": np.array(res.refresh_log[UNCOND], np.int64),
           **_branch_vectors(spec, rec, batch), **_probe(spec, runner, z_init, cond)}
    if m.decoder is not None:
        out.update(decoder_input=decoder_input(spec, res.x), decoded=res.decoded)
    return out


# -- files ---------------------------------------------------------------------

def write_bin(folder: Path, arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Each tensor as raw little-endian C-order bytes in ``vectors/<name>.bin``, indexed by
    ``vectors.json`` (name -> dtype, shape, file): a browser runtime reads them into typed
    arrays without an npz parser. Returns the index."""
    (folder / BIN_DIR).mkdir()
    tensors = {}
    for name in sorted(arrays):
        arr = np.asarray(arrays[name])
        rel = f"{BIN_DIR}/{name}.bin"
        (folder / rel).write_bytes(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes(order="C"))
        tensors[name] = {"dtype": arr.dtype.name, "shape": list(arr.shape), "file": rel}
    index = {"format": "dualrate-conformance-tensors", "byte_order": "little", "order": "C", "tensors": tensors}
    (folder / BIN_INDEX).write_text(json.dumps(index, indent=1, sort_keys=True) + "\n")
    return index


def write_variant(folder: Path, spec: Spec, vectors: Mapping[str, np.ndarray],
                  nulls: Mapping[str, np.ndarray]) -> None:
    """spec.json, the stored nulls where its null_file says (relative to spec.json, as in a
    bundle), vectors.npz, and the .bin tensors with their index."""
    folder.mkdir()
    spec.save(folder / "spec.json")
    for c in spec.model.conditioning:
        if c.null_kind == "file":
            (folder / c.null_file).parent.mkdir(parents=True, exist_ok=True)
            np.save(folder / c.null_file, np.asarray(nulls[c.name]), allow_pickle=False)
    write_npz(folder / "vectors.npz", vectors)
    write_bin(folder, vectors)


@dataclass(frozen=True)
class WrittenVariant:
    name: str
    path: Path                      # the variant's folder (final location)
    spec: Spec
    refresh: dict[str, list[int]]   # the refresh audit, per branch
    guided_steps: list[int]


def write_conformance(source: Any, out_dir: str | Path, seed: int = DEFAULT_SEED,
                      force: bool = False) -> list[WrittenVariant]:
    """Write ``out_dir/README.md`` and a folder per variant (``write_variant``) atomically.

    ``source`` is a ``Bundle`` (anything with ``.spec``), a ``Spec``, or a path to a bundle
    directory or a spec.json. An existing ``out_dir`` is refused unless ``force``.
    """
    spec = _source_spec(source)
    out_dir = Path(out_dir)
    variants = conformance_variants(spec, seed)
    written = []
    with atomic_directory(out_dir, force=force) as tmp:
        for name, vspec in variants.items():
            nulls = conformance_nulls(vspec)
            vec = conformance_vectors(vspec, nulls)
            write_variant(tmp / name, vspec, vec, nulls)
            audit = {COND: vec["refresh_cond"].tolist(), UNCOND: vec["refresh_uncond"].tolist()}
            written.append(WrittenVariant(name, out_dir / name, vspec, audit, np.flatnonzero(vec["guided"]).tolist()))
        (tmp / "README.md").write_text(_readme(spec, seed, written))
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


def _readme_row(v: WrittenVariant) -> str:
    s, g = v.spec.sampler, v.spec.guidance
    sampler = s.type if s.type == "ancestral" else f"ddim eta={s.eta:g}"
    where = (f", interval {list(g.interval_logsnr)} -> steps {v.guided_steps[0]}..{v.guided_steps[-1]}"
             if g.interval_logsnr else ", all steps")
    guide = "off" if g.scale == 1.0 else f"w={g.scale:g}{where}"
    extra = (f", clip_x0={s.clip_x0:g}" if s.clip_x0 is not None else "") + f", final_step {s.final_step}"
    return (f"| `{v.name}` | {sampler}{extra} | {s.num_steps} | {_fmt_steps(v.spec.dual_rate.resolved_refresh_steps)} "
            f"| {guide} | {_fmt_steps(v.refresh[COND])} | {_fmt_steps(v.refresh[UNCOND])} |")


def _io_text(tio: TensorIO) -> str:
    return f"`{tio.name}` ({tio.feeds or 'output'}: {tio.dtype} {list(tio.shape)})".replace("'", "")


def _binding_block(v: WrittenVariant) -> str:
    """One variant's model as a native runtime binds it: graphs' inputs by role, conditioning, decoder."""
    m = v.spec.model
    facts = [f"sample {list(m.sample_shape)}", f"prediction `{m.prediction}`", f"time_input `{m.time_input}`"]
    for c in m.conditioning:
        null = f"null value {c.null_value:g}" if c.null_kind == "value" else f"null tensor `{c.null_file}`"
        facts.append(f"conditioning `{c.name}` {c.dtype} {list(c.shape)}, {null}")
    if m.decoder is not None:
        d = m.decoder
        facts.append(f"decoder scaling_factor {d.scaling_factor:g}, shift_factor {d.shift_factor:g}, "
                     f"output {list(d.output_shape)}")
    graphs = [f"- {graph}: " + ", ".join(map(_io_text, gio.inputs)) + " -> " + ", ".join(map(_io_text, gio.outputs))
              for graph, gio in m.graphs().items()]
    return "\n".join([f"### `{v.name}`", "", f"{VARIANT_NOTES[v.name]}.", "", "; ".join(facts) + ".", "", *graphs])


def _readme(source: Spec, seed: int, written: list[WrittenVariant]) -> str:
    m = source.model
    rows = "\n".join(_readme_row(v) for v in written)
    bindings = "\n\n".join(_binding_block(v) for v in written)
    return README_TEMPLATE.format(
        shape=list(m.sample_shape), prediction=m.prediction, batch=BATCH, seed=seed, seed_hex=f"0x{seed:016X}",
        span=list(SCHEDULE_LOGSNR_RANGE), rows=rows, bindings=bindings, mock=MOCK_FORMULAS.rstrip(),
        atol=f"{ATOL:g}", rtol=f"{RTOL:g}", first_draws=RNG_FIRST_DRAWS,
        probe=", ".join(f"{k}: {a:g}, {b:g}" for k, (a, b) in PROBE_TIME.items()))


README_TEMPLATE = """# Dual-rate sampler conformance vectors

A native implementation of the dual-rate loop (Swift, Kotlin, C++, JavaScript, ...) that
reproduces these vectors implements `spec.json` (spec 2, inputs bound by role) correctly:
the affine step tables, the networks' time input (`tables.model_time`: log-SNR, t or a
diffusers timestep), the refresh schedule and cache rule, conditioning and its declared
nulls under classifier-free guidance with per-branch caches, x0 clipping, the decoder's
scaling, and the Philox4x32-10 noise. The networks are analytic mocks (no weights), so the
check needs nothing but this folder.

The variants keep the source model's prediction `{prediction}` and sample shape {shape}
(all but `latent_decoder`); the class variants keep its class input (or use 10 classes with
null id 10). Batch B = {batch}, seed {seed} ({seed_hex}). The cosine variants span log-SNR
{span}, where every prediction type is well-conditioned in float32 (eps -> x0 divides by
alpha); a runtime reads the tables either way.

| variant | sampler | N | resolved_refresh_steps | guidance | encoder ran (cond) | encoder ran (uncond) |
|---|---|---|---|---|---|---|
{rows}

## Model bindings

Each graph input is fed by its role (`feeds` in spec.json): `sample`, `time`, `time_ctx`,
`cond:<name>`, `feature:<encoder output>`. Names and order differ between variants and
between graphs on purpose; a network takes only the roles it declares.

{bindings}

## Files

Each variant folder holds

- `spec.json`: read it as your runtime would; the mock networks replace the graphs.
- `vectors.npz`: numpy zip; every member is a plain `.npy` (`np.load(path, allow_pickle=False)`).
- `vectors.json` + `vectors/<key>.bin`: the same tensors as raw bytes for runtimes without an
  npz reader (a browser): see "Raw tensors" below.
- `<name>.null.npy` for each conditioning input whose null is a stored tensor (`null_kind`
  `file`). A runtime finds it through spec.json: `model.conditioning[k].null_file` is a path
  relative to the folder holding spec.json (here the file beside it; in a bundle
  `conditioning/<name>.null.npy`), a `.npy` of the declared shape and dtype that the uncond
  branch feeds in every row. A `value` null feeds `null_value` in every element. The vectors
  hold each null again as `null.<name>`.

## How to check a runtime

1. RNG: compute Philox4x32-10 of each `rng_counters[j]` with key `rng_key` and compare with
   `rng_words[j]` (exact). Then the first normals of draw 0, sample 0 against `rng_first_draws`,
   then your full draws against `z_init` and `xi`.
2. Inputs: `time` must equal `sampler.tables.model_time` cast to the time inputs' dtype
   (exact; int64 timesteps are integers); your nulls must equal `null.<name>` (exact).
3. Networks: code the mocks below; run the encoder on (sample `z_init`, time `probe_time_ctx`,
   the `cond.<name>` rows) and compare with `probe_feat0`, `probe_feat1`; run the denoiser on
   (`z_init`, time `probe_time`, time_ctx `probe_time_ctx`, the cond rows, those features) and
   compare with `probe_prediction` (probe times per time_input: {probe}). With a decoder, run it
   on `decoder_input` and compare with `decoded`.
4. Step arithmetic (teacher-forced, exact in float32): from the recorded `pred_cond` /
   `pred_uncond` and z before step i (`z_init`, then `z[i-1]`), to_x0, guidance and clipping
   give `x0[i]` bit for bit; `x0[i]` and `xi[i]` give `z[i]` bit for bit; `final` gives
   `decoder_input` bit for bit. See "Arithmetic" below.
5. Loop: run your sampler with the `cond.<name>` rows and the seed from spec.json
   (`noise.rng.seed`), record z after every step and compare with `z`, `x0`, `final`,
   `decoded`; record which steps ran the encoder for each branch and the context step each
   denoiser call used, and compare with the audit arrays (exact).

Tolerance (float32): every element of the draws, probes, `z`, `x0`, `final` and `decoded`
must satisfy `|got - want| <= {atol} + {rtol} * |want|`; Philox words, time inputs, nulls
and the audit arrays must match exactly.

## Mock networks

```
{mock}
```

## The loop (spec field names)

```
N      = sampler.num_steps;  T = sampler.tables          # float64 tables; use them, do not re-derive
time_i = T.model_time[i] cast to each time input's dtype  # what the networks were trained on
z      = draw(0)                                        # z_init
cache  = {{}}                                             # per branch: (features by name, ctx_step)
last_r = 0
for i in 0..N-1:
    if i in dual_rate.resolved_refresh_steps: last_r = i
    guided = guidance.scale != 1 and (guidance.interval_logsnr is null
             or lo <= T.logsnr[i] <= hi)                 # [lo, hi] = guidance.interval_logsnr
    branches = [cond] + ([uncond] if guided else [])
    for b in branches:
        cond_b = the cond.<name> rows (cond) or each input's declared null in every row (uncond)
        if b not in cache or i in resolved_refresh_steps or cache[b].ctx_step < last_r:
            cache[b] = (E(sample=z, time=time_i, cond:<name>=cond_b), ctx_step = i)   # audit: b ran E at i
        out_b = g(sample=z, time=time_i, time_ctx=T.model_time[cache[b].ctx_step] (cast),
                  cond:<name>=cond_b, feature:<n>=cache[b].features[n])
        x0_b  = to_x0(out_b):  v: a*z - s*out_b;  eps: (z - s*out_b) / a;  x0: out_b
                with a = T.alpha[i], s = T.sigma[i]
    x0 = x0_cond if not guided else x0_uncond + guidance.scale * (x0_cond - x0_uncond)
    if sampler.clip_x0 is not null: x0 = clip(x0, -clip_x0, clip_x0)
    z = (T.coef_z[i]*z + T.coef_x0[i]*x0) + T.coef_noise[i]*draw(i+1)   # skip the draw when coef_noise[i] == 0
if model.decoder: decoded = D(sample = z / decoder.scaling_factor + decoder.shift_factor)
return z (and decoded)
```

Each branch keeps its own cache: the uncond branch never reuses the cond branch's features
(they were computed with other conditioning). The uncond cache is filled the first time the
branch is active, even off the refresh list (see `guided_interval`). The context time is the
time input of the step whose encoder call filled the cache, not the current one
(`ctx_step_cond` / `ctx_step_uncond` give that step per step and branch). The mocks work per
sample, so running the branches one after the other or as one batch of 2B rows (cond rows
first, as dualrate does when guidance covers every step) gives the same numbers.

## Arithmetic

The reference loop rounds every table entry to float32 once (`float(T.alpha[i])` etc.) and
works in float32, elementwise, in the order written above: to_x0, then guidance, then the
clip, then `(coef_z*z + coef_x0*x0)`, then `+ coef_noise*xi`, each product and sum rounded
to float32 (no fused multiply-add). The decoder input is `final / float32(scaling_factor) +
float32(shift_factor)` in float32. A runtime that keeps to this reproduces `x0`, `z` and
`decoder_input` bit for bit from the recorded inputs of each step (check 4); fused
multiply-adds or wider accumulators stay within the tolerance.

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
| `rng_key` | uint32 | [2] | (k0, k1) from the seed |
| `rng_counters` | uint32 | [4, 4] | counters (block, draw, sample, 0) checked |
| `rng_words` | uint32 | [4, 4] | Philox4x32-10 output for each counter |
| `rng_first_draws` | float32 | [{first_draws}] | first normals of draw 0, sample 0 |
| `cond.<name>` | input's | [B, ...] | the conditioning rows of the cond branch, per input |
| `null.<name>` | input's | [...] | the declared null of the input (one row; the uncond branch feeds it in every row) |
| `time` | time input's | [N] | `tables.model_time` cast to the time inputs' dtype: what the networks get at step i |
| `z_init` | float32 | [B, C, H, W] | draw 0: the initial z |
| `xi` | float32 | [N, B, C, H, W] | draw i + 1: noise of step i (unused where coef_noise[i] == 0) |
| `z` | float32 | [N, B, C, H, W] | z after step i (z[N-1] is the output) |
| `x0` | float32 | [N, B, C, H, W] | guided, clipped x0 estimate of step i |
| `final` | float32 | [B, C, H, W] | the sampler's output |
| `pred_cond` | float32 | [N, B, C, H, W] | the denoiser's output for the cond branch at step i |
| `pred_uncond` | float32 | [N, B, C, H, W] | same for uncond; zeros where the branch is inactive |
| `refresh_cond` | int64 | [M_c] | steps at which the cond branch ran the encoder |
| `refresh_uncond` | int64 | [M_u] | steps at which the uncond branch ran the encoder (empty without guidance) |
| `ctx_step_cond` | int64 | [N] | step whose encoder call filled the cache the cond denoiser used |
| `ctx_step_uncond` | int64 | [N] | same for uncond; -1 where the branch is inactive |
| `guided` | int64 | [N] | 1 where guidance is active (the uncond branch runs) |
| `probe_time`, `probe_time_ctx` | time input's | [B] | probe time inputs |
| `probe_feat0`, `probe_feat1` | float32 | [B, ...] | E(sample z_init, time probe_time_ctx, cond rows) |
| `probe_prediction` | float32 | [B, C, H, W] | g(z_init, probe_time, probe_time_ctx, cond rows, probe features) |
| `decoder_input` | float32 | [B, C, H, W] | with a decoder: final / scaling_factor + shift_factor |
| `decoded` | float32 | [B, O, OH, OW] | with a decoder: D(decoder_input) |

## Raw tensors (vectors.json, vectors/*.bin)

`vectors.json` indexes every key of vectors.npz:

```
{{"format": "dualrate-conformance-tensors", "byte_order": "little", "order": "C",
 "tensors": {{"<key>": {{"dtype": "float32", "shape": [2, 1, 8, 8], "file": "vectors/<key>.bin"}}, ...}}}}
```

Each `.bin` holds the tensor's elements and nothing else: C order (last axis fastest),
little-endian, `prod(shape)` elements (a 0-d tensor is one element). dtypes and their
typed arrays: float32 Float32Array, float64 Float64Array, int64 BigInt64Array, uint32
Uint32Array, uint64 BigUint64Array.

Regenerate with `dualrate golden BUNDLE -o DIR [--seed S]`; the files are deterministic.
"""
