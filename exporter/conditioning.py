"""Conditioning by name: checking what a caller passes, the null values of the unconditional
branch, and the rows a guidance group feeds.

A model declares its conditioning inputs in ``spec.model.conditioning`` (class ids,
text embeddings ``[L, D]`` with a mask, pooled vectors...). Callers pass a mapping
``name -> array [B, *shape]``; a class-conditional model also accepts a plain list of
class ids. The unconditional branch feeds each input's declared null: a constant
(``null_kind="value"``, e.g. the null class id) or a stored tensor (``"file"``, e.g. an
empty-prompt embedding), which the caller resolves once (``Bundle.nulls()``, or the
in-memory model's) and passes as ``nulls``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .errors import BadInputError
from .spec import ConditioningSpec, Spec

COND, UNCOND = "cond", "uncond"
NP_DTYPES = {"float32": np.float32, "float16": np.float16, "float64": np.float64, "int64": np.int64,
             "int32": np.int32, "bool": np.bool_}


def np_dtype(name: str) -> Any:
    """The numpy dtype of a spec dtype name (bfloat16 stays float32 on the host)."""
    return NP_DTYPES.get(name, np.float32)


def class_input(spec: Spec) -> ConditioningSpec | None:
    """The model's class-id input when it has exactly one conditioning input and it is one."""
    conds = spec.model.conditioning
    if len(conds) == 1 and conds[0].num_classes is not None:
        return conds[0]
    return None


def check_conditioning(spec: Spec, cond: Mapping[str, Any] | Sequence[int] | np.ndarray | None) -> dict[str, np.ndarray]:
    """Validate the caller's conditioning against the spec; returns name -> array [B, *shape].

    Every declared input must be given with its shape and a compatible dtype (ints for an
    integer input, numbers for a float one); class ids must be in range.
    """
    declared = spec.model.conditioning
    if cond is None:
        cond = {}
    if not isinstance(cond, Mapping):
        cls = class_input(spec)
        if cls is None:
            if not declared:
                raise BadInputError("conditioning was given, but this model takes no conditioning; pass none")
            raise BadInputError(f"conditioning was given as a list, but this model takes {_names(declared)}; "
                                "pass a mapping name -> array")
        cond = {cls.name: cond}
    missing = [c.name for c in declared if c.name not in cond]
    if missing and not set(cond) - {c.name for c in declared}:
        raise BadInputError(f"conditioning {missing[0]!r} is missing; this model takes {_names(declared)}")
    out = check_rows(spec, cond)
    return {c.name: out[c.name] for c in declared}


def check_rows(spec: Spec, given: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Example rows for some of the conditioning inputs (``export(examples=...)``): known names,
    each input's shape and dtype, at least one row, the same row count for all."""
    declared = {c.name: c for c in spec.model.conditioning}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise BadInputError(f"conditioning {unknown[0]!r} is not an input of this model; it takes "
                            f"{_names(spec.model.conditioning)}")
    out = {name: _coerce(declared[name], value) for name, value in given.items()}
    sizes = {name: len(a) for name, a in out.items()}
    if len(set(sizes.values())) > 1:
        raise BadInputError(f"conditioning inputs disagree on the batch size: {sizes}")
    if sizes and min(sizes.values()) == 0:
        raise BadInputError("conditioning holds no samples; pass at least one row (one class, one prompt)")
    return out


def _coerce(c: ConditioningSpec, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == len(c.shape):                    # one sample given without the batch axis
        arr = arr[None]
    if tuple(arr.shape[1:]) != tuple(c.shape):
        raise BadInputError(f"conditioning {c.name!r} has shape {list(arr.shape)}; expected "
                            f"[batch, {', '.join(map(str, c.shape))}]".replace(", ]", "]"))
    want = np_dtype(c.dtype)
    integral = np.issubdtype(want, np.integer) or want is np.bool_
    if arr.dtype.kind not in ("i", "u", "b", "f"):
        raise BadInputError(f"conditioning {c.name!r} has dtype {arr.dtype}; expected {_signature(c)}")
    if integral and arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise BadInputError(f"conditioning {c.name!r} has dtype {arr.dtype} with non-integer values; "
                                f"expected {_signature(c)}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise BadInputError(f"conditioning {c.name!r} contains NaN or Inf")
    arr = arr.astype(want)
    if c.num_classes is not None:
        bad = arr[(arr < 0) | (arr >= c.num_classes)]
        if bad.size:
            raise BadInputError(f"class id {int(bad.flat[0])} is out of range for {c.name!r}; this model has classes "
                                f"0..{c.num_classes - 1}" + (f" (id {int(c.null_value)} is the null class used for "
                                                              "guidance)" if c.null_value is not None else ""))
    return arr


def null_row(c: ConditioningSpec, nulls: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """The declared null of ``c`` as one sample ``[*shape]``."""
    if c.null_kind == "value":
        return np.full(c.shape, c.null_value, np_dtype(c.dtype))
    if c.null_kind == "file":
        if nulls is None or c.name not in nulls:
            raise BadInputError(f"guidance needs the null value of conditioning {c.name!r} ({c.null_file}), and "
                                "none was passed; open the bundle (its nulls) or pass nulls={name: array}")
        arr = np.asarray(nulls[c.name])
        if tuple(arr.shape) != tuple(c.shape):
            raise BadInputError(f"null value of conditioning {c.name!r} has shape {list(arr.shape)}; "
                                f"expected {list(c.shape)}")
        return arr.astype(np_dtype(c.dtype))
    raise BadInputError(f"guidance needs a null value for conditioning {c.name!r}, which declares none")


def group_conditioning(spec: Spec, cond: Mapping[str, np.ndarray], nulls: Mapping[str, np.ndarray] | None,
                       branches: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Rows of each conditioning input for a guidance group: cond rows first, then null rows."""
    out = {}
    for c in spec.model.conditioning:
        rows = cond[c.name]
        parts = [rows if br == COND else np.broadcast_to(null_row(c, nulls), rows.shape) for br in branches]
        out[c.name] = np.ascontiguousarray(np.concatenate(parts)) if len(parts) > 1 else parts[0]
    return out


def batch_size(cond: Mapping[str, np.ndarray]) -> int | None:
    return len(next(iter(cond.values()))) if cond else None


def _signature(c: ConditioningSpec) -> str:
    return f"{c.dtype} [batch{''.join(f', {d}' for d in c.shape)}]"


def _names(declared: Sequence[ConditioningSpec]) -> str:
    return ", ".join(f"{c.name!r} ({_signature(c)})" for c in declared) or "no conditioning"
