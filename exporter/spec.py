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
SPEC_VERSION = "1.0.0"
RNG_KINDS = ("philox4x32-10", "external")
TABLE_KEYS_GRID = ("t", "logsnr", "alpha", "sigma")
TABLE_KEYS_STEP = ("coef_z", "coef_x0", "coef_noise")


@dataclass(frozen=True)
class TensorIO:
    """One graph input or output. ``feeds`` says which runtime value binds to an input:
    ``z``, ``logsnr[i]``, ``logsnr[refresh]``, ``class_id``, or ``encoder.<output name>``."""

    name: str
    shape: tuple[Union[int, str], ...]
    dtype: str
    feeds: str = ""


@dataclass(frozen=True)
class GraphIO:
    inputs: tuple[TensorIO, ...]
    outputs: tuple[TensorIO, ...]


@dataclass(frozen=True)
class ModelSpec:
    sample_shape: tuple[int, ...]          # (C, H, W) of one sample
    num_classes: int
    null_class: int                         # the unconditional class id
    prediction: str                         # v | eps | x0
    encoder: GraphIO
    denoiser: GraphIO
    layout: str = "NCHW"
    dtype: str = "float32"
    data_range: tuple[float, float] = (-1.0, 1.0)
    time_input: str = "logsnr"              # the networks take log-SNR, clamped to logsnr_clamp
    logsnr_clamp: tuple[float, float] = (-15.0, 15.0)


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
        if m.num_classes < 1 or not 0 <= m.null_class <= m.num_classes:
            raise SpecError(f"model.null_class {m.null_class} must lie in 0..num_classes ({m.num_classes})")
        if m.layout != "NCHW" or m.dtype != "float32" or m.time_input != "logsnr":
            raise SpecError("model.layout/dtype/time_input must be NCHW/float32/logsnr in spec version 1")
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
            raise SpecError(f"guidance.networks is {list(g.networks)}; version 1 runs both nets per branch")
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
                raise SpecError(f"sampler.tables.logsnr[{i}] is {lam[i]!r} but process.schedule gives {want_lam[i]!r}")
        alpha, sigma = alpha_sigma(lam)
        ref = build_tables(t, lam, s.type, s.eta, s.final_step)
        expected = {"alpha": alpha, "sigma": sigma, **{k: ref[k] for k in TABLE_KEYS_STEP}}
        for key, want in expected.items():
            got = tab.array(key)
            bad = np.abs(got - want) > 1e-12 + 1e-9 * np.abs(want)
            if np.any(bad):
                i = int(np.argmax(bad))
                raise SpecError(f"sampler.tables.{key}[{i}] is {got[i]!r} but the {s.type} step from "
                                f"logsnr gives {want[i]!r}; the tables are inconsistent (edited or corrupt)")


def _check_bindings(m: ModelSpec) -> None:
    enc_out = [o.name for o in m.encoder.outputs]
    if not enc_out:
        raise SpecError("model.encoder.outputs is empty; the encoder must emit at least one feature")
    want_enc = {"z", "logsnr[i]", "class_id"}
    got_enc = {i.feeds for i in m.encoder.inputs}
    if got_enc != want_enc:
        raise SpecError(f"model.encoder.inputs feed {sorted(got_enc)}; expected exactly {sorted(want_enc)}")
    want_den = {"z", "logsnr[i]", "logsnr[refresh]", "class_id"} | {f"encoder.{n}" for n in enc_out}
    got_den = {i.feeds for i in m.denoiser.inputs}
    if got_den != want_den:
        raise SpecError(f"model.denoiser.inputs feed {sorted(got_den)}; expected exactly {sorted(want_den)}")
    if len(m.denoiser.outputs) != 1:
        raise SpecError(f"model.denoiser.outputs has {len(m.denoiser.outputs)} entries; expected 1")


def _check_version(data: Mapping[str, Any]) -> None:
    version = data.get("spec_version")
    if not isinstance(version, str) or not re.fullmatch(r"[0-9]+\.[0-9]+\.[0-9]+", version):
        raise SpecError(f"spec_version is {version!r}; expected a semantic version such as {SPEC_VERSION!r}")
    major = int(version.split(".")[0])
    if major != int(SPEC_VERSION.split(".")[0]):
        raise SpecError(f"spec_version {version} has major version {major}; this dualrate reads "
                        f"{SPEC_VERSION.split('.')[0]}.x. Upgrade dualrate or re-export the bundle")


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
