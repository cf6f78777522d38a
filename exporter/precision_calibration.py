"""Gate calibration on the PyTorch reference: computed once per bundle, when first needed.

Two kinds, one store:

* ``bf16`` / ``fp16``: the reference's own spread at that precision (autocast vs float32 on the
  recorded graph inputs, per output, worst call: ``[rel_l2, 1 - cosine]`` under
  ``<precision>/<graph>/<output>``) calibrates the per-call gates of that precision
  (``validation.gates.call_gates``): a step where the reference itself moves 7 % in bf16 cannot be
  held to a 3 % per-call gate. It costs a PyTorch run at that precision (slow where the CPU has no
  native fp16), so an fp32 user never pays for it.
* ``fp32``: the reference's own fp32 error, float32 against float64 (``exporter.fp32_floor``), from
  which the default fp32 gates are set (``validation.gates.gate_set``). float64 has no fast CPU
  kernels (the float64 pass of small-32 took longer than its three float32 reference
  trajectories), so it is not part of every export either.

Each is computed when first needed where the model is available (a bf16/fp16 target compiled or
validated; an fp32 validate), or at export when asked for (``--calibrate-precisions``). A tampered
fp32 floor can only tighten the fp32 gates: they are never looser than the fixed defaults.

Stored per precision outside the hashed payload, like the compile cache in ``targets/``::

    calibration/<precision>.npz    the values (read with allow_pickle=False)
    calibration/<precision>.json   sha256 of the npz, and of the bundle files it was computed from

The npz is written first and the record last, each atomically (``atomic.atomic_write_bytes``),
and the record is removed before a stale pair is replaced: an interrupted calibration leaves the
record absent (nothing is trusted, it is computed again) or complete. A reader verifies the record
before trusting the values: a changed npz is a ``BundleError`` naming it; a record computed from
other bundle files (a copied directory) is stale and ignored. Bundles exported before this module
hold the values in the hashed ``golden/calibration.npz``, which is still read.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .atomic import atomic_write_bytes
from .bundle import CALIBRATION_DIR, Bundle, load_source_checkpoint, recorded_checkpoint
from .errors import BadInputError, BundleError

LOW_PRECISIONS = ("bf16", "fp16")
FLOOR = "fp32"                              # the fp32 floor's kind (``exporter.fp32_floor``)
CALIBRATED = (FLOOR,) + LOW_PRECISIONS      # every kind this module stores
FORMAT = "dualrate-calibration"
FORMAT_VERSION = 1
LEGACY_GOLDEN = "calibration"      # golden/calibration.npz of bundles exported before calibration was deferred
LEGACY_FLOOR = "fp32_floor"        # golden/fp32_floor.npz of bundles exported before the floor was deferred

ModelProvider = Callable[[], "tuple[Any, str | None]"]


def sources(bundle: Bundle, precision: str = "bf16") -> dict[str, str]:
    """The manifest hashes of what the values depend on: the spec, the recorded graph I/O they are
    measured on, the source weights, and the graphs (and their external data). The fp32 floor is a
    property of the PyTorch model alone: instead of the graphs it depends on the trajectory it
    replays and the null conditioning files, so a changed graph is judged by the gates its model
    set, not the defaults."""
    files = bundle.manifest["files"]
    keep = {"spec.json"}
    for g in bundle.graph_names():
        if precision != FLOOR:
            keep |= {rel for rel in files if rel == f"{g}.onnx" or rel.startswith(f"{g}.onnx.")}
        keep.add(f"golden/{g}_io.npz")
    if precision == FLOOR:
        keep |= {rel for rel in files if rel.startswith("conditioning/")}
        trajectories = sorted(rel for rel in files if rel.startswith("golden/trajectory_seed"))
        keep |= set(trajectories[:1])
    out = {rel: files[rel] for rel in sorted(keep) if rel in files}
    out["source_sha256"] = str((bundle.manifest.get("source") or {}).get("sha256"))
    return out


def record_path(bundle: Bundle, precision: str) -> Path:
    return bundle.path / CALIBRATION_DIR / f"{precision}.json"


def values_path(bundle: Bundle, precision: str) -> Path:
    return bundle.path / CALIBRATION_DIR / f"{precision}.npz"


def stored(bundle: Bundle, precision: str) -> dict[str, np.ndarray] | None:
    """The verified stored calibration of ``precision``, or None when there is none (or it was
    computed from other bundle files). A changed values file is a ``BundleError``."""
    legacy = _legacy(bundle)
    if precision in legacy:
        return legacy[precision]
    rec_path, npz_path = record_path(bundle, precision), values_path(bundle, precision)
    rel_rec, rel_npz = f"{CALIBRATION_DIR}/{rec_path.name}", f"{CALIBRATION_DIR}/{npz_path.name}"
    _no_links(bundle, rec_path, npz_path)
    try:
        record = json.loads(rec_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {bundle.path}: {rel_rec} cannot be read ({exc}); delete {rec_path.parent} "
                          "(it is computed again where the PyTorch model is available)") from None
    if (not isinstance(record, dict) or record.get("format") != FORMAT
            or record.get("format_version") != FORMAT_VERSION or not isinstance(record.get("sha256"), str)):
        raise BundleError(f"bundle {bundle.path}: {rel_rec} is not a {FORMAT} record; delete {rec_path.parent} "
                          "(it is computed again where the PyTorch model is available)")
    if record.get("sources") != sources(bundle, precision) or record.get("precision") != precision:
        return None         # computed from other files (a copied directory): stale, never used
    try:
        data = npz_path.read_bytes()
    except FileNotFoundError:
        data = None
    except OSError as exc:
        raise BundleError(f"bundle {bundle.path}: {rel_npz} cannot be read ({exc}); delete {npz_path.parent}") from None
    got = None if data is None else hashlib.sha256(data).hexdigest()
    if got != record["sha256"]:
        found = "is missing" if data is None else f"has sha256 {got[:12]}…"
        raise BundleError(f"bundle {bundle.path}: {rel_npz} {found}, {rel_rec} says {record['sha256'][:12]}…; the "
                          f"file was changed after calibration. Delete {npz_path.parent} (it is computed again where "
                          "the PyTorch model is available)")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            values = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise BundleError(f"bundle {bundle.path}: {rel_npz} cannot be read ({exc})") from None
    _check_values(bundle, rel_npz, precision, values)
    return values


def _no_links(bundle: Bundle, *paths: Path) -> None:
    """The calibration lives in the bundle's own directory: a link (out of it, or anywhere) is refused."""
    for p in (bundle.path / CALIBRATION_DIR, *paths):
        if p.is_symlink():
            raise BundleError(f"bundle {bundle.path}: {p.relative_to(bundle.path).as_posix()} is a link; the "
                              f"calibration must be plain files in the bundle. Delete {bundle.path / CALIBRATION_DIR}")


def _legacy(bundle: Bundle) -> dict[str, dict[str, np.ndarray]]:
    """Per precision, the values older bundles hold in their hashed golden files, if any:
    ``golden/calibration.npz`` (bf16/fp16) and ``golden/fp32_floor.npz``."""
    files = bundle.manifest["files"]
    out: dict[str, dict[str, np.ndarray]] = {}
    if f"golden/{LEGACY_GOLDEN}.npz" in files:
        for key, val in bundle.golden(LEGACY_GOLDEN).items():
            out.setdefault(key.split("/")[0], {})[key] = val
    if f"golden/{LEGACY_FLOOR}.npz" in files:
        out[FLOOR] = bundle.golden(LEGACY_FLOOR)
    return out


def _check_values(bundle: Bundle, rel: str, precision: str, values: dict[str, np.ndarray]) -> None:
    if precision == FLOOR:
        from .fp32_floor import check_values

        problem = check_values(bundle.spec, values)
        if problem:
            raise BundleError(f"bundle {bundle.path}: {rel} {problem}; delete {bundle.path / CALIBRATION_DIR}")
        return
    outputs = {f"{precision}/{g}/{o.name}" for g, gio in bundle.spec.model.graphs().items() for o in gio.outputs}
    for key, val in values.items():
        if key not in outputs or np.shape(val) != (2,) or not np.all(np.isfinite(val)) or np.any(np.asarray(val) < 0):
            raise BundleError(f"bundle {bundle.path}: {rel} entry {key!r} is not [rel_l2, 1 - cosine] of one of the "
                              f"bundle's graph outputs at {precision}; delete {bundle.path / CALIBRATION_DIR}")


def measure(model: Any, bundle: Bundle, precision: str, on_call: Callable[[], None] = lambda: None
            ) -> dict[str, np.ndarray]:
    """PyTorch autocast at ``precision`` vs the recorded float32 outputs, on the bundle's recorded graph
    inputs: per output, the worst call's ``[rel_l2, 1 - cosine]``. For ``fp32``: the fp32 floor
    (float64 on the same inputs, and one float64 replay of the first golden trajectory)."""
    import torch

    from .golden import graph_calls
    from .torch_runner import TorchReferenceRunner

    if precision == FLOOR:
        from . import fp32_floor

        return fp32_floor.measure(model, bundle.spec, fp32_floor.needed_vectors(bundle), bundle.nulls(),
                                  on_call=on_call)

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    runner = TorchReferenceRunner(model, bundle.spec)
    out: dict[str, np.ndarray] = {}
    golden = set(bundle.golden_names())
    for graph, bound in runner.bound.items():
        if f"{graph}_io" not in golden:
            continue
        names = [o.name for o in runner.graphs[graph].outputs]
        worst: dict[str, list[float]] = {}
        for inputs, outputs in graph_calls(bundle.golden(f"{graph}_io")):
            flat = [torch.from_numpy(np.ascontiguousarray(inputs[name])) for name, _ in bound.inputs]
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
                got = dict(zip(names, bound(*flat)))
            for name, ref in outputs.items():
                a = got[name].float().numpy().astype(np.float64).ravel()
                r = ref.astype(np.float64).ravel()
                rel = float(np.linalg.norm(a - r) / max(np.linalg.norm(r), 1e-30))
                cos = float(a @ r / max(np.linalg.norm(a) * np.linalg.norm(r), 1e-30))
                w = worst.setdefault(name, [0.0, 0.0])
                w[0], w[1] = max(w[0], rel), max(w[1], 1.0 - cos)
            on_call()
        for name, (rel, one_minus_cos) in worst.items():
            out[f"{precision}/{graph}/{name}"] = np.array([rel, one_minus_cos], np.float64)
    return out


def graph_call_count(bundle: Bundle, precision: str = "bf16") -> int:
    """How many calls ``measure`` runs (the progress total): the recorded calls, and for the fp32
    floor also the steps of the replayed trajectory."""
    from .golden import graph_calls

    golden = set(bundle.golden_names())
    calls = sum(len(graph_calls(bundle.golden(f"{g}_io"))) for g in bundle.graph_names() if f"{g}_io" in golden)
    if precision == FLOOR and any(n.startswith("trajectory_seed") for n in golden):
        calls += bundle.spec.sampler.num_steps
    return calls


def write(bundle: Bundle, precision: str, values: dict[str, np.ndarray]) -> Path:
    """Store ``values``: the npz, then its record (the record is what makes it trusted)."""
    from .golden import write_npz

    rec_path, npz_path = record_path(bundle, precision), values_path(bundle, precision)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(rec_path)           # a stale pair: nothing is trusted until the new record is complete
    buf = io.BytesIO()
    write_npz(buf, values)          # sorted members, fixed timestamps: the same values give the same bytes
    data = buf.getvalue()
    atomic_write_bytes(npz_path, data)
    record = {"format": FORMAT, "format_version": FORMAT_VERSION, "precision": precision,
              "file": npz_path.name, "sha256": hashlib.sha256(data).hexdigest(), "sources": sources(bundle, precision),
              "versions": _versions()}
    atomic_write_bytes(rec_path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())
    return npz_path


def _versions() -> dict[str, str]:
    import torch

    from .version import __version__
    return {"dualrate": __version__, "torch": torch.__version__}


@contextlib.contextmanager
def _locked(bundle: Bundle) -> Iterator[None]:
    """One calibrating process per bundle at a time (the others then find its result)."""
    folder = bundle.path / CALIBRATION_DIR
    _no_links(bundle, folder / ".lock")
    folder.mkdir(exist_ok=True)
    try:
        import fcntl
    except ImportError:          # not POSIX: the atomic writes still keep every file whole
        yield
        return
    with open(folder / ".lock", "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def model_from(bundle: Bundle, model: Any = None, checkpoint: str | Path | None = None) -> tuple[Any, str | None]:
    """(the bundle's PyTorch model, None) or (None, why there is none here).

    ``model`` (a DualRateModel handed over in Python) must have the manifest's source weights
    (BadInputError otherwise); else the source checkpoint, verified by sha256, where it is reachable.
    """
    from .optional import have

    if model is not None:
        want = (bundle.manifest.get("source") or {}).get("sha256")
        got = model.weights_sha256()
        if want != got:
            raise BadInputError(f"the model's weights have sha256 {got[:12]}…, but bundle {bundle.path} was exported "
                                f"from weights with sha256 {str(want)[:12]}…; pass the model it was exported from")
        return model, None
    if not have("torch"):
        return None, "PyTorch is not installed here (pip install 'dualrate[export]')"
    if not bundle.manifest.get("source_checkpoint"):
        return None, ("the bundle was exported from a model handed over in Python; pass that model "
                      "(model=... / ValidateOptions.model) to calibrate")
    path = recorded_checkpoint(bundle, checkpoint)
    if path is None or not path.exists():
        return None, f"its source checkpoint {path} is not here (--checkpoint PATH)"
    try:
        return load_source_checkpoint(bundle, checkpoint, "calibrating the reduced-precision gates needs the "
                                      "PyTorch modules").pair, None
    except BadInputError as exc:
        return None, str(exc)


def ensure(bundle: Bundle, precision: str, model: Any = None, provider: ModelProvider | None = None,
           stages: Any = None) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
    """The calibration of ``precision``: stored (verified), else computed on the model and stored,
    else None. ``model`` is the bundle's DualRateModel (already verified), or ``provider`` returns
    ``(model, reason)`` and is called only when nothing is stored. Returns the values and what happened
    (``{"precision", "status": stored | computed | uncalibrated, "reason"?, "path"?}``)."""
    if precision not in CALIBRATED:
        return None, {"precision": precision, "status": "not_needed"}
    values = stored(bundle, precision)
    if values is not None:
        return values, {"precision": precision, "status": "stored", "path": str(_where(bundle, precision))}
    found, reason = (model, None) if model is not None or provider is None else provider()
    if found is None:
        return None, {"precision": precision, "status": "uncalibrated",
                      "reason": reason or "no PyTorch model to calibrate on"}
    with _locked(bundle):
        values = stored(bundle, precision)          # another process may have finished it meanwhile
        if values is not None:
            return values, {"precision": precision, "status": "stored", "path": str(_where(bundle, precision))}
        from .progress import Stages

        stages = stages or Stages()
        label = ("measuring the reference's own fp32 error (float64 pass)" if precision == FLOOR
                 else f"calibrating {precision} gates on PyTorch autocast")
        with stages(f"calibrate_{precision}", label, total=graph_call_count(bundle, precision)) as advance:
            values = measure(found, bundle, precision, on_call=advance)
            path = write(bundle, precision, values)
    return values, {"precision": precision, "status": "computed", "path": str(path)}


def _where(bundle: Bundle, precision: str) -> Path:
    if precision in _legacy(bundle):
        return bundle.path / "golden" / f"{LEGACY_FLOOR if precision == FLOOR else LEGACY_GOLDEN}.npz"
    return values_path(bundle, precision)


__all__ = ["CALIBRATED", "FLOOR", "LOW_PRECISIONS", "ensure", "measure", "model_from", "sources", "stored", "write"]
