"""The portable sampler spec (spec.json): frozen dataclasses <-> deterministic JSON.

The spec is everything a runtime in any language needs to sample exactly what
the reference samples: the graphs' I/O binding, the normative float64 tables of
the affine sampler step, the refresh steps, guidance and noise rules.

JSON is written with sorted keys and Python's shortest round-trip float repr,
so floats read back bit-identical. Unknown fields give a warning, or an error in
strict mode; every validation message names the field (``sampler.tables.t``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Union, get_args, get_origin, get_type_hints

import numpy as np

from .errors import SpecError
from .jsonio import parse_json
from .refresh import check_refresh_steps
from .sampler_tables import FINAL_STEPS, SAMPLERS, build_tables
from .schedules import alpha_sigma, cosine_logsnr

SPEC_NAME = "dualrate-sampler"
SPEC_VERSION = "2.0.0"
RNG_KINDS = ("philox4x32-10", "external")
TABLE_KEYS_GRID = ("t", "logsnr", "alpha", "sigma")
TABLE_KEYS_STEP = ("coef_z", "coef_x0", "coef_noise")


ROLE_SAMPLE = "sample"          # the current state z_i ([B, C, H, W]); the decoder's input is the scaled final sample
ROLE_TIME = "time"              # the time input of this step, tables.model_time[i]
ROLE_TIME_CTX = "time_ctx"      # the time input of the step whose encoder call filled the cache
COND_PREFIX = "cond:"           # cond:<name>, a conditioning tensor declared in model.conditioning
FEATURE_PREFIX = "feature:"     # feature:<name>, the encoder output of that name (denoiser only)
TIME_INPUTS = ("logsnr", "t", "timestep")
DTYPES = ("float32", "float16", "bfloat16", "float64", "int64", "int32", "bool")
NULL_KINDS = ("none", "value", "file")


@dataclass(frozen=True)
class TensorIO:
    """One graph input or output. ``feeds`` is the input's role: what the sampler binds to it
    (``sample``, ``time``, ``time_ctx``, ``cond:<name>`` or ``feature:<encoder output>``);
    outputs leave it empty. The batch axis is the symbol ``batch`` (or a fixed size)."""

    name: str
    shape: tuple[Union[int, str], ...]
    dtype: str
    feeds: str = ""


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]


@dataclass(frozen=True)
class ConditioningSpec:
    """A conditioning input, per sample (``shape`` excludes the batch axis).

    The unconditional branch of guidance feeds the declared null: ``value`` (every
    element equals ``null_value``, e.g. the null class id) or ``file`` (an ``.npy`` of
    ``shape`` in the bundle, e.g. an empty-prompt embedding). ``num_classes`` bounds
    integer class ids (``0 .. num_classes - 1``) where the input is one.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    null_kind: str = "none"
    null_value: float | None = None
    null_file: str | None = None
    num_classes: int | None = None


@dataclass(frozen=True)
class DecoderSpec:
    """An optional decoder (a VAE decoder, say) run once on the final sample:
    ``input = sample / scaling_factor + shift_factor`` (float32), then the graph."""

    graph: GraphIO
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    output_shape: tuple[int, ...] = ()      # (C, H, W) of one decoded sample
    data_range: tuple[float, float] = (-1.0, 1.0)


@dataclass(frozen=True)
class ModelSpec:
    sample_shape: tuple[int, ...]           # (C, H, W) of one sample
    prediction: str                         # v | eps | x0
    encoder: GraphIO
    denoiser: GraphIO
    conditioning: tuple[ConditioningSpec, ...] = ()
    decoder: DecoderSpec | None = None
    time_input: str = "logsnr"              # what the networks were trained on: logsnr | t | timestep
    layout: str = "NCHW"
    dtype: str = "float32"
    data_range: tuple[float, float] = (-1.0, 1.0)
    logsnr_clamp: tuple[float, float] = (-15.0, 15.0)

    def graphs(self) -> dict[str, GraphIO]:
        """Every graph of the model by name (``decoder`` only when there is one)."""
        out = {"encoder": self.encoder, "denoiser": self.denoiser}
        if self.decoder is not None:
            out["decoder"] = self.decoder.graph
        return out

    def condition(self, name: str) -> ConditioningSpec:
        for c in self.conditioning:
            if c.name == name:
                return c
        raise SpecError(f"model.conditioning has no input named {name!r}; it declares "
                        f"{[c.name for c in self.conditioning] or 'none'}")


@dataclass(frozen=True)
class ProcessSpec:
    schedule: dict[str, Any]                # family + parameters (documentation and integrity check)
    kind: str = "vp"
    training_coupling: str = "z_tau from the forward process given z_t (tau >= t)"


@dataclass(frozen=True)
class Tables:
    t: tuple[float, ...]                    # N+1
    logsnr: tuple[float, ...]               # N+1
    alpha: tuple[float, ...]                # N+1
    sigma: tuple[float, ...]                # N+1
    coef_z: tuple[float, ...]               # N: A_i
    coef_x0: tuple[float, ...]              # N: B_i
    coef_noise: tuple[float, ...]           # N: C_i
    model_time: tuple[float, ...] = ()      # N: the networks' time input at step i (model.time_input)

    def array(self, key: str) -> np.ndarray:
        return np.asarray(getattr(self, key), dtype=np.float64)


@dataclass(frozen=True)
class SamplerSpec:
    type: str                               # ancestral | ddim
    eta: float
    num_steps: int
    tables: Tables
    time_grid: str = "uniform_t"
    clip_x0: float | None = None            # clip x0 estimates to [-clip, clip] after guidance
    final_step: str = "return_x0"
    step_rule: str = "z[i+1] = coef_z[i] * z[i] + coef_x0[i] * x0[i] + coef_noise[i] * xi[i]"


@dataclass(frozen=True)
class RngSpec:
    kind: str = "philox4x32-10"             # or "external": the caller supplies every noise tensor
    seed: int | None = 0
    counter: str = "(block, draw, sample, 0); key = (seed & 0xffffffff, seed >> 32)"
    normal: str = "box_muller, u = (x + 0.5) / 2^32, float64 -> float32"


@dataclass(frozen=True)
class NoiseSpec:
    rng: RngSpec = RngSpec()
    initial: str = "standard_normal"
    injection: str = "fresh xi[i] ~ N(0, I) per step; draw index 0 = initial z, i + 1 = step i"


@dataclass(frozen=True)
class GuidanceSpec:
    scale: float = 1.0                      # 1: no guidance
    interval_logsnr: tuple[float, float] | None = None   # guided where lo <= logsnr[i] <= hi
    convention: str = "x0 = x0_uncond + scale * (x0_cond - x0_uncond), before clipping"
    networks: tuple[str, ...] = ("encoder", "denoiser")  # both nets run per branch

    def active(self, logsnr_i: float) -> bool:
        if self.scale == 1.0:
            return False
        if self.interval_logsnr is None:
            return True
        lo, hi = self.interval_logsnr
        return lo <= logsnr_i <= hi


@dataclass(frozen=True)
class RefreshSpec:
    kind: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DualRateSpec:
    refresh: RefreshSpec
    resolved_refresh_steps: tuple[int, ...]
    context_logsnr: str = "logsnr[r] of the step r whose encoder call filled the cache"
    cache_scope: str = "per_guidance_branch"
    cache_rule: str = ("branch b runs the encoder at step i if i is a refresh step, or b has no cache, "
                       "or b's cache predates the latest refresh step <= i")


@dataclass(frozen=True)
class Spec:
    model: ModelSpec
    process: ProcessSpec
    sampler: SamplerSpec
    dual_rate: DualRateSpec
    noise: NoiseSpec = NoiseSpec()
    guidance: GuidanceSpec = GuidanceSpec()
    provenance: dict[str, Any] = field(default_factory=dict)
    spec: str = SPEC_NAME
    spec_version: str = SPEC_VERSION

    # -- serialisation ---------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _plain(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1, allow_nan=False) + "\n"

    def save(self, path: str | Path) -> None:
        from .atomic import atomic_write_bytes

        atomic_write_bytes(Path(path), self.to_json().encode())

    @staticmethod
    def from_dict(data: Any, strict: bool = False) -> tuple["Spec", list[str]]:
        """Parse and validate; returns the spec and warnings (unknown fields when not strict)."""
        warns: list[str] = []
        if not isinstance(data, dict):
            raise SpecError(f"spec: expected a JSON object, found {_desc(data)}")
        _check_version(data)
        spec = _read(Spec, data, "", strict, warns)
        spec.validate()
        return spec, warns

    @staticmethod
    def from_json(text: str, strict: bool = False) -> tuple["Spec", list[str]]:
        return Spec.from_dict(parse_json(text, "spec", SpecError, parse_constant=_reject_constant), strict)

    @staticmethod
    def load(path: str | Path, strict: bool = False) -> tuple["Spec", list[str]]:
        path = Path(path)
        try:
            text = path.read_text()
        except FileNotFoundError:
            raise SpecError(f"spec file {path} not found") from None
        except (UnicodeDecodeError, OSError) as exc:
            raise SpecError(f"spec file {path} cannot be read: {exc}") from None
        return Spec.from_json(text, strict)

    # -- validation ------------------------------------------------------
    def validate(self) -> None:
        """Check every invariant a runtime relies on; raise SpecError naming the field."""
        m, s = self.model, self.sampler
        if self.spec != SPEC_NAME:
            raise SpecError(f"spec is {self.spec!r}; expected {SPEC_NAME!r}")
        if len(m.sample_shape) != 3 or min(m.sample_shape) < 1:
            raise SpecError(f"model.sample_shape is {list(m.sample_shape)}; expected [C, H, W] with positive sizes")
        if m.prediction not in ("v", "eps", "x0"):
            raise SpecError(f"model.prediction is {m.prediction!r}; expected v, eps or x0")
        if m.layout != "NCHW" or m.dtype != "float32":
            raise SpecError("model.layout/dtype must be NCHW/float32")
        if m.time_input not in TIME_INPUTS:
            raise SpecError(f"model.time_input is {m.time_input!r}; expected one of {', '.join(TIME_INPUTS)}")
        _check_conditioning(m)
        _check_bindings(m)
        if s.type not in SAMPLERS:
            raise SpecError(f"sampler.type is {s.type!r}; supported: {', '.join(SAMPLERS)}")
        if not 0.0 <= s.eta <= 1.0 or (s.type == "ancestral" and s.eta != 1.0):
            raise SpecError(f"sampler.eta is {s.eta}; expected 0..1 for ddim and exactly 1 for ancestral")
        if s.final_step not in FINAL_STEPS:
            raise SpecError(f"sampler.final_step is {s.final_step!r}; expected one of {FINAL_STEPS}")
        if s.clip_x0 is not None and not (math.isfinite(s.clip_x0) and s.clip_x0 > 0):
            raise SpecError(f"sampler.clip_x0 is {s.clip_x0}; expected a positive number or null")
        if s.num_steps < 1:
            raise SpecError(f"sampler.num_steps is {s.num_steps}; expected at least 1")
        self._validate_tables()
        check_refresh_steps(self.dual_rate.resolved_refresh_steps, s.num_steps)
        g = self.guidance
        if not (math.isfinite(g.scale) and g.scale >= 0):
            raise SpecError(f"guidance.scale is {g.scale}; expected a finite number >= 0 (1 = no guidance)")
        if g.interval_logsnr is not None and not g.interval_logsnr[0] <= g.interval_logsnr[1]:
            raise SpecError(f"guidance.interval_logsnr is {list(g.interval_logsnr)}; expected [low, high] with low <= high")
        if set(g.networks) != {"encoder", "denoiser"}:
            raise SpecError(f"guidance.networks is {list(g.networks)}; this version runs both nets per branch")
        if g.scale != 1.0:
            missing = [c.name for c in m.conditioning if c.null_kind == "none"]
            if missing:
                raise SpecError(f"guidance.scale is {g.scale} but conditioning {missing[0]!r} declares no null value "
                                "for the unconditional branch; declare one (a value or a stored tensor) or "
                                "sample without guidance (scale 1)")
            if not m.conditioning:
                raise SpecError(f"guidance.scale is {g.scale} but the model takes no conditioning; use scale 1")
        rng = self.noise.rng
        if rng.kind not in RNG_KINDS:
            raise SpecError(f"noise.rng.kind is {rng.kind!r}; expected one of {RNG_KINDS}")
        if rng.kind != "external" and (rng.seed is None or not 0 <= rng.seed < 2 ** 64):
            raise SpecError(f"noise.rng.seed is {rng.seed!r}; expected an integer in [0, 2^64)")

    def _validate_tables(self) -> None:
        s = self.sampler
        tab = s.tables
        n = s.num_steps
        for key in TABLE_KEYS_GRID + TABLE_KEYS_STEP:
            want = n + 1 if key in TABLE_KEYS_GRID else n
            vals = tab.array(key)
            if len(vals) != want:
                raise SpecError(f"sampler.tables.{key} has {len(vals)} entries; expected {want} for num_steps={n}")
            if not np.all(np.isfinite(vals)):
                raise SpecError(f"sampler.tables.{key} contains non-finite values")
        t, lam = tab.array("t"), tab.array("logsnr")
        _check_model_time(self.model.time_input, tab, n)
        if np.any(np.diff(t) >= 0):
            i = int(np.argmax(np.diff(t) >= 0))
            raise SpecError(f"sampler.tables.t must decrease strictly (t[0] = noise); t[{i}]={t[i]} and t[{i + 1}]={t[i + 1]}")
        if np.any(np.diff(lam) <= 0):
            i = int(np.argmax(np.diff(lam) <= 0))
            raise SpecError(f"sampler.tables.logsnr must increase strictly; logsnr[{i}]={lam[i]}, logsnr[{i + 1}]={lam[i + 1]}")
        sch = self.process.schedule
        if sch.get("family") == "cosine" and s.time_grid == "uniform_t":
            try:
                want_lam = cosine_logsnr(t, float(sch["logsnr_min"]), float(sch["logsnr_max"]), float(sch.get("shift", 0.0)))
            except (KeyError, TypeError, ValueError, OverflowError) as exc:
                raise SpecError(f"process.schedule is incomplete for the cosine family: {exc!r}") from None
            bad = np.abs(lam - want_lam) > 1e-12 + 1e-12 * np.abs(want_lam)
            if np.any(bad):
                i = int(np.argmax(bad))
                raise SpecError(f"sampler.tables.logsnr[{i}] is {float(lam[i])!r} but process.schedule gives {float(want_lam[i])!r}")
        if sch.get("family") == "discrete" and s.time_grid == "discrete":
            _check_discrete(sch, lam, s.num_steps)
        alpha, sigma = alpha_sigma(lam)
        ref = build_tables(t, lam, s.type, s.eta, s.final_step)
        expected = {"alpha": alpha, "sigma": sigma, **{k: ref[k] for k in TABLE_KEYS_STEP}}
        for key, want in expected.items():
            got = tab.array(key)
            bad = np.abs(got - want) > 1e-12 + 1e-9 * np.abs(want)
            if np.any(bad):
                i = int(np.argmax(bad))
                raise SpecError(f"sampler.tables.{key}[{i}] is {float(got[i])!r} but the {s.type} step from "
                                f"logsnr gives {float(want[i])!r}; the tables are inconsistent (edited or corrupt)")


MAX_TRAIN_TIMESTEPS = 100_000


def _check_discrete(sch: Mapping[str, Any], lam: np.ndarray, n: int) -> None:
    """A diffusers-imported grid: logsnr[i] is the float64 image of diffusers' float32 alphabar at
    the step's training timestep (``process.schedule.timesteps``), so the tables match the model's training."""
    from .schedules import alphabar_logsnr, alphas_cumprod, beta_table

    try:
        T = int(sch["num_train_timesteps"])
        ts = np.asarray(sch["timesteps"], dtype=np.int64)
        if not 2 <= T <= MAX_TRAIN_TIMESTEPS or len(ts) != n or np.any((ts < 0) | (ts >= T)):
            raise ValueError(f"{T} training timesteps, timesteps {list(ts)[:8]}")
        if sch["beta_schedule"] == "trained_betas":
            betas = np.asarray(sch["trained_betas"], dtype=np.float32)
            if betas.shape != (T,):
                raise ValueError(f"{betas.size} trained_betas for {T} timesteps")
        else:
            betas = beta_table(sch["beta_schedule"], T, float(sch["beta_start"]), float(sch["beta_end"]),
                               fused=sch.get("linspace_rounding", "fma") == "fma")
        with np.errstate(all="ignore"):
            want = alphabar_logsnr(alphas_cumprod(betas))[ts]
    except (KeyError, TypeError, ValueError, OverflowError, SpecError) as exc:
        raise SpecError(f"process.schedule does not describe a discrete (diffusers) schedule: {exc}") from None
    bad = lam[:n] != want
    if np.any(bad):
        i = int(np.argmax(bad))
        raise SpecError(f"sampler.tables.logsnr[{i}] is {float(lam[i])!r} but process.schedule's alphabar at timestep "
                        f"{int(ts[i])} gives {float(want[i])!r}; the tables do not match the model's training schedule")


def _check_model_time(kind: str, tab: Tables, n: int) -> None:
    """``model_time`` holds what the networks are fed; for log-SNR and t it is that table's column."""
    got = tab.array("model_time")
    if len(got) != n:
        raise SpecError(f"sampler.tables.model_time has {len(got)} entries; expected {n} (one per step)")
    if not np.all(np.isfinite(got)):
        raise SpecError("sampler.tables.model_time contains non-finite values")
    if kind in ("logsnr", "t"):
        want = tab.array(kind)[:n]
        if not np.array_equal(got, want):
            i = int(np.argmax(got != want))
            raise SpecError(f"sampler.tables.model_time[{i}] is {float(got[i])!r} but model.time_input {kind} "
                            f"says it is sampler.tables.{kind}[{i}] = {float(want[i])!r}")
    elif np.any(got != np.round(got)) or np.any(got < 0):
        i = int(np.argmax((got != np.round(got)) | (got < 0)))
        raise SpecError(f"sampler.tables.model_time[{i}] is {float(got[i])!r}; discrete timesteps are "
                        "non-negative integers")


def _check_conditioning(m: ModelSpec) -> None:
    names = [c.name for c in m.conditioning]
    if len(set(names)) != len(names):
        raise SpecError(f"model.conditioning names repeat: {names}")
    for c in m.conditioning:
        where = f"model.conditioning[{c.name}]"
        if not c.name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", c.name):
            raise SpecError(f"{where}: name {c.name!r} must start with a letter or _ and hold letters, digits, _ . -")
        if c.dtype not in DTYPES:
            raise SpecError(f"{where}.dtype is {c.dtype!r}; expected one of {', '.join(DTYPES)}")
        if any(d < 1 for d in c.shape):
            raise SpecError(f"{where}.shape is {list(c.shape)}; sizes must be positive")
        if c.null_kind not in NULL_KINDS:
            raise SpecError(f"{where}.null_kind is {c.null_kind!r}; expected one of {', '.join(NULL_KINDS)}")
        if (c.null_kind == "value") != (c.null_value is not None):
            raise SpecError(f"{where}: null_value is given exactly when null_kind is 'value'")
        if (c.null_kind == "file") != (c.null_file is not None):
            raise SpecError(f"{where}: null_file is given exactly when null_kind is 'file'")
        if c.null_file is not None and (c.null_file.startswith("/") or ".." in c.null_file.split("/")
                                        or not c.null_file.endswith(".npy")):
            raise SpecError(f"{where}.null_file is {c.null_file!r}; expected a relative .npy path inside the bundle")
        if c.num_classes is not None:
            if not c.dtype.startswith("int") or c.num_classes < 1:
                raise SpecError(f"{where}: num_classes applies to integer class ids with at least one class")


def roles(gio: GraphIO) -> dict[str, TensorIO]:
    """A graph's inputs by role."""
    return {i.feeds: i for i in gio.inputs}


def _check_bindings(m: ModelSpec) -> None:
    """Every graph input has a role this spec can feed; a network may take any subset of them."""
    enc_out = {o.name: o for o in m.encoder.outputs}
    if not enc_out:
        raise SpecError("model.encoder.outputs is empty; the encoder must emit at least one feature")
    conds = {f"{COND_PREFIX}{c.name}": c for c in m.conditioning}
    allowed = {"encoder": {ROLE_SAMPLE, ROLE_TIME, *conds},
               "denoiser": {ROLE_SAMPLE, ROLE_TIME, ROLE_TIME_CTX, *conds, *(FEATURE_PREFIX + n for n in enc_out)}}
    if m.decoder is not None:
        allowed["decoder"] = {ROLE_SAMPLE}
    for graph, gio in m.graphs().items():
        names = [i.name for i in gio.inputs] + [o.name for o in gio.outputs]
        if len(set(names)) != len(names):
            raise SpecError(f"model.{graph}: input/output names repeat: {names}")
        seen: set[str] = set()
        for tio in gio.inputs:
            where = f"model.{graph} input {tio.name!r}"
            if tio.feeds not in allowed[graph]:
                raise SpecError(f"{where} is fed {tio.feeds!r}; an input of the {graph} is fed one of "
                                f"{', '.join(sorted(allowed[graph]))}")
            if tio.feeds in seen:
                raise SpecError(f"{where}: role {tio.feeds!r} feeds two inputs; one input per role")
            seen.add(tio.feeds)
            _check_io(tio, where)
            if tio.feeds in (ROLE_TIME, ROLE_TIME_CTX) and (len(tio.shape) != 1 or tio.dtype not in TIME_DTYPES):
                raise SpecError(f"{where} ({tio.feeds}) is {tio.dtype} {list(tio.shape)}; a time input is [batch] "
                                f"of {', '.join(TIME_DTYPES)}")
            want = _role_signature(m, enc_out, conds, tio.feeds, graph)
            if want is not None and (tio.dtype, tuple(tio.shape[1:])) != want:
                raise SpecError(f"{where} ({tio.feeds}) is {tio.dtype} {list(tio.shape)}; expected {want[0]} "
                                f"[batch, {', '.join(map(str, want[1]))}]".replace(", ]", "]"))
        for tio in gio.outputs:
            _check_io(tio, f"model.{graph} output {tio.name!r}")
        if ROLE_SAMPLE not in seen and graph != "encoder":
            raise SpecError(f"model.{graph} takes no input fed 'sample'; the {graph} must read the sample")
    if len(m.denoiser.outputs) != 1:
        raise SpecError(f"model.denoiser.outputs has {len(m.denoiser.outputs)} entries; expected 1 (the prediction)")
    if tuple(m.denoiser.outputs[0].shape[1:]) != tuple(m.sample_shape):
        raise SpecError(f"model.denoiser output is {list(m.denoiser.outputs[0].shape)}; expected "
                        f"[batch, {', '.join(map(str, m.sample_shape))}] (the sample's shape)")
    if m.decoder is not None:
        d = m.decoder
        if len(d.graph.outputs) != 1:
            raise SpecError(f"model.decoder.graph.outputs has {len(d.graph.outputs)} entries; expected 1")
        if not (math.isfinite(d.scaling_factor) and d.scaling_factor != 0 and math.isfinite(d.shift_factor)):
            raise SpecError(f"model.decoder.scaling_factor/shift_factor are {d.scaling_factor}/{d.shift_factor}; "
                            "expected finite numbers and a non-zero scaling factor")
        if tuple(d.graph.outputs[0].shape[1:]) != tuple(d.output_shape):
            raise SpecError(f"model.decoder.output_shape is {list(d.output_shape)} but its graph outputs "
                            f"{list(d.graph.outputs[0].shape)}")


def _check_io(tio: TensorIO, where: str) -> None:
    if tio.dtype not in DTYPES:
        raise SpecError(f"{where}: dtype {tio.dtype!r} is not one of {', '.join(DTYPES)}")
    if not tio.shape or not (tio.shape[0] == "batch" or (isinstance(tio.shape[0], int) and tio.shape[0] > 0)):
        raise SpecError(f"{where}: shape {list(tio.shape)} must start with the batch axis ('batch' or a size)")
    if any(not isinstance(d, int) or d < 1 for d in tio.shape[1:]):
        raise SpecError(f"{where}: shape {list(tio.shape)} must have fixed positive sizes after the batch axis")


def _role_signature(m: ModelSpec, enc_out: dict[str, TensorIO], conds: dict[str, ConditioningSpec],
                    role: str, graph: str) -> tuple[str, tuple] | None:
    """(dtype, per-sample shape) a role implies, or None where the graph decides (time dtype)."""
    if role == ROLE_SAMPLE:
        return "float32", tuple(m.sample_shape)
    if role in conds:
        return conds[role].dtype, tuple(conds[role].shape)
    if role.startswith(FEATURE_PREFIX):
        out = enc_out[role[len(FEATURE_PREFIX):]]
        return out.dtype, tuple(out.shape[1:])
    return None


TIME_DTYPES = ("float32", "float64", "int64", "int32")


def _check_version(data: Mapping[str, Any]) -> None:
    version = data.get("spec_version")
    if not isinstance(version, str) or not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version):
        raise SpecError(f"spec_version is {version!r}; expected a semantic version such as {SPEC_VERSION!r}")
    major = int(version.split(".")[0])
    ours = int(SPEC_VERSION.split(".")[0])
    if major < ours:
        raise SpecError(f"spec_version {version} was written by an earlier dualrate (inputs bound by position); "
                        f"this dualrate reads {ours}.x with inputs bound by role. Re-export the bundle "
                        "with this version (dualrate export)")
    if major > ours:
        raise SpecError(f"spec_version {version} has major version {major}; this dualrate reads "
                        f"{ours}.x. Upgrade dualrate or re-export the bundle")


def _reject_constant(name: str) -> Any:
    raise SpecError(f"spec contains {name}, which is not valid JSON; tables must be finite numbers")


# -- generic dataclass <-> JSON ----------------------------------------------

def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def _desc(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"[:80]


def _check_finite(value: Any, where: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise SpecError(f"{where}: contains a non-finite number, which JSON cannot represent")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{where}[{i}]")


def _read(tp: Any, value: Any, path: str, strict: bool, warns: list[str]) -> Any:
    """Convert JSON data to the annotated type, naming the field on any mismatch."""
    origin, args = get_origin(tp), get_args(tp)
    where = path or "spec"
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in (a for a in args if a is not type(None)):
            try:
                return _read(option, value, path, strict, warns)
            except SpecError:
                continue
        names = " or ".join(getattr(a, "__name__", str(a)) for a in args)
        raise SpecError(f"{where}: expected {names}, found {_desc(value)}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected an object, found {_desc(value)}")
        hints = get_type_hints(tp)
        fields = {f.name: f for f in dataclasses.fields(tp)}
        for key in sorted(set(value) - set(fields)):
            msg = f"{path + '.' if path else ''}{key}: unknown field (ignored)"
            if strict:
                raise SpecError(msg.replace("(ignored)", "(strict mode)"))
            warns.append(msg)
        kwargs = {}
        for name, f in fields.items():
            sub = f"{path}.{name}" if path else name
            if name in value:
                kwargs[name] = _read(hints[name], value[name], sub, strict, warns)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise SpecError(f"{sub}: required field is missing")
        return tp(**kwargs)
    if origin is tuple:
        if not isinstance(value, list):
            raise SpecError(f"{where}: expected a list, found {_desc(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_read(args[0], v, f"{where}[{i}]", strict, warns) for i, v in enumerate(value))
        if len(value) != len(args):
            raise SpecError(f"{where}: expected {len(args)} entries, found {len(value)}")
        return tuple(_read(a, v, f"{where}[{i}]", strict, warns) for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected an object, found {_desc(value)}")
        try:
            _check_finite(value, where)     # free-form, but it must be written back as strict JSON
        except RecursionError:
            raise SpecError(f"{where}: nested too deeply") from None
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where}: expected a number, found {_desc(value)}")
        try:
            out = float(value)
        except OverflowError:          # an integer beyond the float range
            out = math.inf
        if not math.isfinite(out):     # 1e999 parses as inf
            raise SpecError(f"{where}: expected a finite number, found {str(value)[:40]}")
        return out
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: expected an integer, found {_desc(value)}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise SpecError(f"{where}: expected {tp.__name__}, found {_desc(value)}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} at {where}")   # internal: a dataclass uses a type we do not read
