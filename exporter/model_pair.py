"""Your Dual-Rate model, declared: two (or three) ``torch.nn.Module``s with their real ``forward``
signatures, and what feeds each input.

Each forward parameter is bound to a *role*::

    SAMPLE          the current state z_i [B, C, H, W] (may feed several parameters)
    TIME            the time of this step, as the model was trained (log-SNR, t or a diffusers timestep)
    TIME_CTX        the time of the step whose encoder call filled the feature cache (denoiser)
    cond("text")    a conditioning tensor declared in ``conditioning`` (class ids, embeddings, masks)
    feature("mid")  one encoder output (denoiser)
    features("down.*")  several encoder outputs, passed as one tuple (or as ``*args``)

Encoder outputs may be a tensor, a tuple/list or a dict (nested too: diffusers'
``ControlNetOutput``); they are flattened to named features: dict keys as they are,
sequence items by index, a top-level sequence as ``feat0, feat1, ...``. ``BoundGraph``
turns a module plus its bindings into a module over flat tensors: the exporter traces
it and the PyTorch reference runs it, so both see exactly the same call.

The reference family (DR-UViT) is one such model; a custom checkpoint names a factory
``package.module:function`` returning a ``DualRateModel`` in its ``config.json``.
Importing a factory runs code, so it is only done when the caller opts in
(``allow_factory=True`` / ``--allow-factory``).
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .errors import BadInputError, CheckpointError
from .model_config import PREDICTIONS, ModelConfig
from .spec import (COND_PREFIX, FEATURE_PREFIX, ROLE_SAMPLE, ROLE_TIME, ROLE_TIME_CTX, TIME_INPUTS,
                   ConditioningSpec, DecoderSpec, GraphIO, ModelSpec, TensorIO)

# -- roles ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Role:
    """What feeds one forward parameter. ``patterns`` (features only) select encoder outputs by name."""

    kind: str                               # sample | time | time_ctx | cond | feature | features
    name: str = ""
    patterns: tuple[str, ...] = ()


SAMPLE = Role(ROLE_SAMPLE)
TIME = Role(ROLE_TIME)
TIME_CTX = Role(ROLE_TIME_CTX)


def cond(name: str) -> Role:
    """The conditioning input ``name`` (declared in ``DualRateModel.conditioning``)."""
    return Role("cond", name)


def feature(name: str) -> Role:
    """One encoder output, by its flattened name."""
    return Role("feature", name)


def features(*patterns: str) -> Role:
    """Several encoder outputs as one tuple, selected by glob patterns in encoder output order
    (``features("*")`` is every feature; ``features("down.*")`` a group)."""
    return Role("features", patterns=patterns or ("*",))


@dataclass(frozen=True)
class Conditioning:
    """A conditioning input, per sample: ``shape`` excludes the batch axis (``()`` for class ids).

    ``null`` is what guidance's unconditional branch feeds: a number (every element, e.g. the
    null class id), an array of ``shape`` (e.g. an empty-prompt embedding, stored in the
    bundle), or None (then guidance is refused). ``num_classes`` bounds integer class ids.
    """

    name: str
    shape: tuple[int, ...] = ()
    dtype: str = "float32"
    null: Any = None
    num_classes: int | None = None

    def null_array(self) -> np.ndarray | None:
        """The null as an array of ``shape`` (None when there is no null)."""
        from .conditioning import np_dtype

        if self.null is None:
            return None
        arr = np.asarray(self.null)
        if arr.ndim == 0:
            return np.full(self.shape, arr.item(), np_dtype(self.dtype))
        return arr.astype(np_dtype(self.dtype))

    def to_spec(self) -> ConditioningSpec:
        arr = None if self.null is None else np.asarray(self.null)
        if arr is None:
            kind, value, path = "none", None, None
        elif arr.ndim == 0:
            kind, value, path = "value", float(arr.item()), None
        else:
            kind, value, path = "file", None, f"conditioning/{self.name}.null.npy"
        return ConditioningSpec(self.name, tuple(int(d) for d in self.shape), self.dtype, kind, value, path,
                                self.num_classes)


@dataclass
class Decoder:
    """An optional decoder run once on the final sample, e.g. a VAE's ``decode``:
    ``Decoder(vae, input="z", method="decode", kwargs={"return_dict": False},
    scaling_factor=vae.config.scaling_factor)``. It is fed ``sample / scaling_factor + shift_factor``."""

    module: nn.Module
    input: str
    method: str = "forward"
    kwargs: dict[str, Any] = field(default_factory=dict)
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    output: str | int | None = None
    data_range: tuple[float, float] = (-1.0, 1.0)


@dataclass
class DualRateModel:
    """A Dual-Rate model as it was trained: the modules, how their inputs are fed, and its sampler facts.

    ``time`` is what the networks take (``logsnr``, continuous ``t`` in [0, 1], or the diffusers
    ``timestep``; the latter needs ``scheduler_config``, the diffusers DDPM/DDIM config the model
    was trained with). ``time_dtype`` is the dtype of the time inputs in the graphs.
    ``encoder_kwargs``/``denoiser_kwargs`` are fixed extra arguments (``return_dict=False``).
    ``denoiser_output`` picks the prediction when the denoiser returns several tensors.
    """

    encoder: nn.Module
    denoiser: nn.Module
    encoder_inputs: Mapping[str, Role]
    denoiser_inputs: Mapping[str, Role]
    sample_shape: tuple[int, int, int]
    prediction: str = "eps"
    time: str = "logsnr"
    time_dtype: str | None = None
    conditioning: Sequence[Conditioning] = ()
    decoder: Decoder | None = None
    scheduler_config: Mapping[str, Any] | None = None
    encoder_kwargs: Mapping[str, Any] = field(default_factory=dict)
    denoiser_kwargs: Mapping[str, Any] = field(default_factory=dict)
    feature_names: Sequence[str] | None = None
    denoiser_output: str | int | None = None
    logsnr_clamp: tuple[float, float] = (-15.0, 15.0)
    data_range: tuple[float, float] = (-1.0, 1.0)

    def __post_init__(self) -> None:
        self.sample_shape = tuple(int(d) for d in self.sample_shape)
        if self.time_dtype is None:
            self.time_dtype = "int64" if self.time == "timestep" else "float32"
        self.check()

    # -- declared facts ---------------------------------------------------------------
    def check(self) -> None:
        """Everything that can be checked without running the modules; BadInputError naming the field."""
        if len(self.sample_shape) != 3 or min(self.sample_shape) < 1:
            raise BadInputError(f"sample_shape is {list(self.sample_shape)}; expected (C, H, W) with positive sizes")
        if self.prediction not in PREDICTIONS:
            raise BadInputError(f"prediction is {self.prediction!r}; expected one of {', '.join(PREDICTIONS)}")
        if self.time not in TIME_INPUTS:
            raise BadInputError(f"time is {self.time!r}; expected one of {', '.join(TIME_INPUTS)}")
        if self.time == "timestep" and self.scheduler_config is None:
            raise BadInputError("time='timestep' needs scheduler_config: the diffusers DDPM/DDIM scheduler config "
                                "the model was trained with (scheduler.config)")
        names = [c.name for c in self.conditioning]
        if len(set(names)) != len(names):
            raise BadInputError(f"conditioning names repeat: {names}")
        for c in self.conditioning:
            null = c.null_array()
            if null is not None and tuple(null.shape) != tuple(c.shape):
                raise BadInputError(f"conditioning {c.name!r}: null has shape {list(np.shape(c.null))}; expected a "
                                    f"number or an array of shape {list(c.shape)}")
            if null is not None and null.dtype.kind == "f" and not np.all(np.isfinite(null)):
                raise BadInputError(f"conditioning {c.name!r}: null contains NaN or Inf")
        for graph, module, inputs in (("encoder", self.encoder, self.encoder_inputs),
                                      ("denoiser", self.denoiser, self.denoiser_inputs)):
            if not isinstance(module, nn.Module):
                raise BadInputError(f"{graph} is a {type(module).__name__}; expected a torch.nn.Module")
            for param, role in inputs.items():
                if not isinstance(role, Role):
                    raise BadInputError(f"{graph} input {param!r} is bound to {role!r}; expected a role "
                                        "(dualrate.SAMPLE, TIME, TIME_CTX, cond(name), feature(name), features(...))")
                if role.kind == "cond" and role.name not in names:
                    raise BadInputError(f"{graph} input {param!r} is fed conditioning {role.name!r}, which is not "
                                        f"declared (conditioning: {names or 'none'})")
                if graph == "encoder" and role.kind in ("time_ctx", "feature", "features"):
                    raise BadInputError(f"encoder input {param!r} is bound to {role.kind}, which only the denoiser "
                                        "can take")
        d = self.decoder
        if d is not None and not (np.isfinite(d.scaling_factor) and d.scaling_factor != 0 and np.isfinite(d.shift_factor)):
            raise BadInputError(f"decoder scaling_factor/shift_factor are {d.scaling_factor}/{d.shift_factor}; the "
                                "decoder is fed sample / scaling_factor + shift_factor: expected finite numbers and "
                                "a non-zero scaling_factor")
        if not any(r.kind in ("feature", "features") for r in self.denoiser_inputs.values()):
            raise BadInputError("the denoiser takes no encoder feature; bind at least one input to "
                                "dualrate.feature(name) or dualrate.features(...)")

    def conditioning_specs(self) -> tuple[ConditioningSpec, ...]:
        return tuple(c.to_spec() for c in self.conditioning)

    def nulls(self) -> dict[str, np.ndarray]:
        """The stored null tensors (conditioning whose null is an array), by name."""
        return {c.name: c.null_array() for c in self.conditioning if c.to_spec().null_kind == "file"}

    def modules(self) -> dict[str, nn.Module]:
        out = {"encoder": self.encoder, "denoiser": self.denoiser}
        if self.decoder is not None:
            out["decoder"] = self.decoder.module
        return out

    def eval(self) -> "DualRateModel":
        for m in self.modules().values():
            m.eval()
        return self

    def state_dict(self) -> dict[str, Any]:
        """One flat state dict, keys prefixed ``encoder.`` / ``denoiser.`` (/ ``decoder.``)."""
        return {f"{g}.{k}": v for g, m in self.modules().items() for k, v in m.state_dict().items()}

    def weights_sha256(self) -> str:
        """sha256 over every parameter and buffer (names, dtypes, shapes, bytes): identifies the weights."""
        h = hashlib.sha256()
        for k, v in sorted(self.state_dict().items()):
            t = v.detach().cpu().contiguous()
            h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    # -- bound graphs -------------------------------------------------------------------
    def bound_encoder(self) -> "BoundGraph":
        inputs = _graph_inputs("encoder", self.encoder_inputs, None)
        return BoundGraph("encoder", self.encoder, "forward", self.encoder_inputs, dict(self.encoder_kwargs), inputs)

    def bound_denoiser(self, feature_names: Sequence[str]) -> "BoundGraph":
        inputs = _graph_inputs("denoiser", self.denoiser_inputs, feature_names)
        return BoundGraph("denoiser", self.denoiser, "forward", self.denoiser_inputs, dict(self.denoiser_kwargs),
                          inputs, feature_names=list(feature_names), output=self.denoiser_output)

    def bound_decoder(self) -> "BoundGraph | None":
        d = self.decoder
        if d is None:
            return None
        return BoundGraph("decoder", d.module, d.method, {d.input: SAMPLE}, dict(d.kwargs), [(d.input, ROLE_SAMPLE)],
                          output=d.output)


def _graph_inputs(graph: str, inputs: Mapping[str, Role], feature_names: Sequence[str] | None) -> list[tuple[str, str]]:
    """(graph input name, spec role) in order: one input per role; a feature input is named after the feature."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for param, role in inputs.items():
        for spec_role, name in _expand(graph, param, role, feature_names):
            if spec_role not in seen:
                seen.add(spec_role)
                out.append((name, spec_role))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise BadInputError(f"{graph}: graph input name(s) {dup} would be used twice (a feature named like a "
                            "forward parameter); rename the feature with feature_names=[...]")
    return out


def _expand(graph: str, param: str, role: Role, feature_names: Sequence[str] | None) -> list[tuple[str, str]]:
    """The spec roles (and graph input names) one forward parameter reads."""
    if role.kind in (ROLE_SAMPLE, ROLE_TIME, ROLE_TIME_CTX):
        return [(role.kind, param)]
    if role.kind == "cond":
        return [(COND_PREFIX + role.name, param)]
    names = list(feature_names or [])
    if role.kind == "feature":
        if role.name not in names:
            raise BadInputError(f"{graph} input {param!r} is fed feature {role.name!r}, which the encoder does not "
                                f"produce (its outputs: {names})")
        return [(FEATURE_PREFIX + role.name, role.name)]
    picked = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in role.patterns)]
    if not picked:
        raise BadInputError(f"{graph} input {param!r} is fed features {list(role.patterns)}, which match none of "
                            f"the encoder's outputs {names}")
    return [(FEATURE_PREFIX + n, n) for n in picked]


class BoundGraph(nn.Module):
    """A user module called through its bindings: ``forward(*flat)`` takes the graph inputs in order
    and returns a tuple of tensors (the flattened outputs). Exported as is, and run as the reference."""

    def __init__(self, graph: str, module: nn.Module, method: str, bindings: Mapping[str, Role],
                 kwargs: dict[str, Any], inputs: list[tuple[str, str]], feature_names: Sequence[str] | None = None,
                 output: str | int | None = None):
        super().__init__()
        self.graph, self.module, self.method = graph, module, method
        self.kwargs = kwargs
        self.inputs = inputs                       # [(graph input name, spec role)]
        self.output = output
        fn = getattr(module, method, None)
        if not callable(fn):
            raise BadInputError(f"{graph}: {type(module).__name__} has no method {method!r}")
        sig = inspect.signature(fn)
        self._plan = _call_plan(graph, type(module).__name__, method, sig, bindings, kwargs,
                                [r for _, r in inputs], feature_names)
        # with a bound *args, the parameters before it must go positionally (defaults filled in)
        names = list(sig.parameters)
        star = next((n for n, p in sig.parameters.items() if p.kind is p.VAR_POSITIONAL), None)
        self._leading = ([(n, sig.parameters[n].default) for n in names[:names.index(star)]]
                         if star is not None and star in bindings else [])

    def forward(self, *flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for _, t in self.named(*flat))

    def named(self, *flat: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        """The call on flat inputs, outputs flattened with their names (one for denoiser/decoder)."""
        args: list[torch.Tensor] = []
        kwargs = dict(self.kwargs)
        for param, idx, how in self._plan:
            value = tuple(flat[i] for i in idx) if how in ("tuple", "varargs") else flat[idx[0]]
            if how == "varargs":
                args.extend(value)
            else:
                kwargs[param] = value
        if self._leading:
            args = [kwargs.pop(n) if n in kwargs else default for n, default in self._leading] + args
        leaves = flatten_outputs(getattr(self.module, self.method)(*args, **kwargs))
        if self.graph != "encoder":
            leaves = [pick_output(self.graph, leaves, self.output)]
        return leaves


def _call_plan(graph: str, cls: str, method: str, sig: inspect.Signature, bindings: Mapping[str, Role],
               kwargs: Mapping[str, Any], roles: list[str], feature_names: Sequence[str] | None
               ) -> list[tuple[str, list[int], str]]:
    """How each forward parameter is built from the flat inputs: (param, input indices, single|tuple|varargs)."""
    params = sig.parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    where = f"{graph}: {cls}.{method}{sig}"[:300]
    for param in list(bindings) + list(kwargs):
        if param not in params and not takes_kwargs:
            raise BadInputError(f"{graph}: input {param!r} was declared, but {cls}.{method} does not accept it "
                                f"(its parameters: {', '.join(params)})")
    clash = sorted(set(bindings) & set(kwargs))
    if clash:
        raise BadInputError(f"{graph}: {clash} are both bound to a role and given as fixed kwargs")
    for name, p in params.items():
        required = p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        if required and name not in bindings and name not in kwargs:
            raise BadInputError(f"{graph}: {cls}.{method} requires {name!r}, which was not declared; bind it to a "
                                f"role or pass it in {graph}_kwargs ({where})")
    plan = []
    for param, role in bindings.items():
        idx = [roles.index(r) for r, _ in _expand(graph, param, role, feature_names)]
        varargs = param in params and params[param].kind is inspect.Parameter.VAR_POSITIONAL
        how = "varargs" if varargs else ("tuple" if role.kind == "features" else "single")
        if varargs and role.kind != "features":
            raise BadInputError(f"{graph}: *{param} takes several tensors; bind it to dualrate.features(...)")
        plan.append((param, idx, how))
    return plan


def flatten_outputs(out: Any, prefix: str = "") -> list[tuple[str, torch.Tensor]]:
    """Named leaves of a module output: a tensor, tuple/list (``feat{k}`` at the top), dict (its keys)."""
    if isinstance(out, torch.Tensor):
        return [(prefix or "out", out)]
    if isinstance(out, Mapping) or (hasattr(out, "keys") and hasattr(out, "__getitem__")):
        leaves = []
        for k in out.keys():
            leaves += flatten_outputs(out[k], f"{prefix}.{k}" if prefix else str(k))
        return leaves
    if isinstance(out, (tuple, list)):
        leaves = []
        for k, v in enumerate(out):
            leaves += flatten_outputs(v, f"{prefix}.{k}" if prefix else f"feat{k}")
        return leaves
    if out is None:
        return []
    raise BadInputError(f"a module returned {type(out).__name__}; expected tensors in a tuple, list or dict")


def pick_output(graph: str, leaves: list[tuple[str, torch.Tensor]], which: str | int | None) -> tuple[str, torch.Tensor]:
    """The one output of a denoiser/decoder: the only tensor, or the one ``which`` names."""
    if which is None:
        if len(leaves) != 1:
            raise BadInputError(f"the {graph} returned {len(leaves)} tensors ({[n for n, _ in leaves]}); name the one "
                                f"to use ({graph}_output=...)")
        return leaves[0]
    if isinstance(which, int):
        if not -len(leaves) <= which < len(leaves):
            raise BadInputError(f"{graph} output {which} does not exist; it returned {len(leaves)} tensors")
        return leaves[which]
    for name, t in leaves:
        if name == which or name.endswith("." + which):
            return name, t
    raise BadInputError(f"{graph} output {which!r} does not exist; it returned {[n for n, _ in leaves]}")


# -- the reference family and custom factories ---------------------------------------------


def dr_uvit_model(cfg: ModelConfig, encoder: nn.Module, denoiser: nn.Module) -> DualRateModel:
    """DR-UViT bound by role: ``encoder(z, logsnr, class_id)``, ``denoiser(z, logsnr, logsnr_ctx, class_id, *features)``."""
    return DualRateModel(
        encoder=encoder, denoiser=denoiser,
        encoder_inputs={"z": SAMPLE, "logsnr": TIME, "class_id": cond("class_id")},
        denoiser_inputs={"z": SAMPLE, "logsnr": TIME, "logsnr_ctx": TIME_CTX, "class_id": cond("class_id"),
                         "features": features("*")},
        sample_shape=(cfg.in_channels, cfg.image_size, cfg.image_size), prediction=cfg.prediction, time="logsnr",
        conditioning=[Conditioning("class_id", (), "int64", null=cfg.null_class, num_classes=cfg.num_classes)],
        logsnr_clamp=tuple(cfg.logsnr_clamp))


def build_pair(model: Mapping[str, Any], allow_factory: bool = False, where: str = "config") -> DualRateModel:
    """Build a randomly initialised model from the ``model`` section of a config."""
    model = dict(model)
    family = model.pop("family", "dr-uvit")
    if family == "dr-uvit":
        from .dr_uvit import build_dr_uvit
        from .model_config import preset

        # {"size": "digits"} alone names a preset; a full config spells every field out
        cfg = preset(model["size"]) if set(model) == {"size"} else ModelConfig.from_dict(model, where)
        enc, den = build_dr_uvit(cfg)
        return dr_uvit_model(cfg, enc, den)
    if family == "custom":
        factory = model.get("factory")
        if not isinstance(factory, str) or ":" not in factory:
            raise CheckpointError(f"{where}: model.factory must be 'package.module:function', found {factory!r}")
        if not allow_factory:
            raise CheckpointError(
                f"{where}: this checkpoint is built by the custom factory {factory!r}, which would import and run "
                "that code. Pass --allow-factory (allow_factory=True) if you trust it.")
        pair = load_factory(factory)(**dict(model.get("kwargs", {})))
        if not isinstance(pair, DualRateModel):
            raise CheckpointError(f"{where}: factory {factory!r} returned {type(pair).__name__}; expected DualRateModel")
        return pair
    raise CheckpointError(f"{where}: model.family is {family!r}; expected 'dr-uvit' or 'custom'")


def load_factory(spec: str) -> Any:
    """Resolve ``package.module:function``; a clear error if it does not exist."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BadInputError(f"cannot import factory module {module_name!r} ({exc}); is it installed / on PYTHONPATH?") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise BadInputError(f"factory {spec!r}: module {module_name!r} has no callable {attr!r}")
    return fn


DualRatePair = DualRateModel      # the name checkpoints and factories used before role binding


# -- the model's graph signatures, found by running it once -----------------------------------

TORCH_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
                torch.float64: "float64", torch.int64: "int64", torch.int32: "int32", torch.bool: "bool"}


def example_inputs(model: DualRateModel, graph: "BoundGraph", values: Mapping[str, Any]) -> tuple[torch.Tensor, ...]:
    """Flat inputs of ``graph`` from role values (numpy or torch)."""
    return tuple(torch.as_tensor(np.asarray(values[role]) if not isinstance(values[role], torch.Tensor)
                                 else values[role]) for _, role in graph.inputs)


def probe_values(model: DualRateModel, time_value: float, batch: int = 1, seed: int = 0) -> dict[str, Any]:
    """Role values for one probe call: a standard-normal sample, the given time, each conditioning's
    null (or zeros / class 0 / ones for a mask-like integer input)."""
    from .conditioning import np_dtype

    rng = np.random.default_rng(seed)
    tdt = np_dtype(model.time_dtype)
    values: dict[str, Any] = {ROLE_SAMPLE: rng.standard_normal((batch, *model.sample_shape)).astype(np.float32),
                              ROLE_TIME: np.full(batch, time_value).astype(tdt),
                              ROLE_TIME_CTX: np.full(batch, time_value).astype(tdt)}
    for c in model.conditioning:
        null = c.null_array()
        row = null if null is not None and c.num_classes is None else np.zeros(c.shape, np_dtype(c.dtype))
        values[COND_PREFIX + c.name] = np.array(np.broadcast_to(row, (batch, *c.shape)))
    return values


def describe(model: DualRateModel, time_value: float) -> ModelSpec:
    """The model's graphs as the spec records them, found by running each module once at batch 1.

    Names every encoder output (features), checks the denoiser returns the sample's shape and
    that the decoder's output is finite; BadInputError naming the graph and input otherwise.
    """
    model.eval()
    values = probe_values(model, time_value)
    enc = model.bound_encoder()
    leaves = _probe(enc, example_inputs(model, enc, values))
    names = list(model.feature_names) if model.feature_names is not None else [n for n, _ in leaves]
    if len(names) != len(leaves) or len(set(names)) != len(names):
        raise BadInputError(f"feature_names has {len(names)} unique names; the encoder returns {len(leaves)} tensors "
                            f"({[n for n, _ in leaves]})")
    if not leaves:
        raise BadInputError("the encoder returned no tensor; it must return at least one feature")
    feats = [TensorIO(n, ("batch", *t.shape[1:]), _dtype(t, f"encoder output {n!r}")) for n, (_, t) in zip(names, leaves)]
    values.update({FEATURE_PREFIX + n: t for n, (_, t) in zip(names, leaves)})
    den = model.bound_denoiser(names)
    (_, pred), = _probe(den, example_inputs(model, den, values))
    if tuple(pred.shape[1:]) != model.sample_shape:
        raise BadInputError(f"the denoiser returned shape {list(pred.shape)}; expected [batch, "
                            f"{', '.join(map(str, model.sample_shape))}] (sample_shape)")
    conds = {COND_PREFIX + c.name: c for c in model.conditioning}

    def gio(bound: BoundGraph, outputs: tuple[TensorIO, ...]) -> GraphIO:
        return GraphIO(tuple(_input_io(model, conds, feats, name, role) for name, role in bound.inputs), outputs)

    decoder = None
    if model.decoder is not None:
        dec = model.bound_decoder()
        d = model.decoder
        latent = (values[ROLE_SAMPLE] / np.float32(d.scaling_factor) + np.float32(d.shift_factor)).astype(np.float32)
        (_, img), = _probe(dec, (torch.from_numpy(latent),))
        if not torch.all(torch.isfinite(img)):
            raise BadInputError(f"the decoder ({type(d.module).__name__}.{d.method}) returned NaN/Inf for input "
                                f"{d.input!r} = sample / {d.scaling_factor} + {d.shift_factor} (float32 "
                                f"{list(latent.shape)}, a standard-normal sample); expected finite values")
        decoder = DecoderSpec(gio(dec, (TensorIO("decoded", ("batch", *img.shape[1:]), _dtype(img, "decoder output")),)),
                              float(d.scaling_factor), float(d.shift_factor), tuple(int(x) for x in img.shape[1:]),
                              tuple(float(x) for x in d.data_range))
    return ModelSpec(sample_shape=model.sample_shape, prediction=model.prediction,
                     encoder=gio(enc, tuple(feats)),
                     denoiser=gio(den, (TensorIO("prediction", ("batch", *model.sample_shape), "float32"),)),
                     conditioning=model.conditioning_specs(), decoder=decoder, time_input=model.time,
                     data_range=tuple(float(x) for x in model.data_range),
                     logsnr_clamp=tuple(float(x) for x in model.logsnr_clamp))


def _probe(bound: BoundGraph, flat: tuple[torch.Tensor, ...]) -> list[tuple[str, torch.Tensor]]:
    try:
        with torch.inference_mode():
            return bound.named(*flat)
    except BadInputError:
        raise
    except Exception as exc:       # the user's module rejected what its declared inputs feed it
        shown = ", ".join(f"{n}: {str(t.dtype).replace('torch.', '')} {list(t.shape)}"
                          for (n, _), t in zip(bound.inputs, flat))
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInputError(f"the {bound.graph} ({type(bound.module).__name__}.{bound.method}) failed on its declared "
                            f"inputs ({shown}): {type(exc).__name__}: {line}") from None


def _dtype(t: torch.Tensor, where: str) -> str:
    if t.dtype not in TORCH_DTYPES:
        raise BadInputError(f"{where} has dtype {t.dtype}; supported: {', '.join(TORCH_DTYPES.values())}")
    return TORCH_DTYPES[t.dtype]


def _input_io(model: DualRateModel, conds: Mapping[str, Conditioning], feats: list[TensorIO], name: str,
              role: str) -> TensorIO:
    if role == ROLE_SAMPLE:
        return TensorIO(name, ("batch", *model.sample_shape), "float32", role)
    if role in (ROLE_TIME, ROLE_TIME_CTX):
        return TensorIO(name, ("batch",), model.time_dtype, role)
    if role in conds:
        c = conds[role]
        return TensorIO(name, ("batch", *c.shape), c.dtype, role)
    f = next(f for f in feats if FEATURE_PREFIX + f.name == role)
    return TensorIO(name, f.shape, f.dtype, role)
