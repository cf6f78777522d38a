"""What every backend shares: the registry, the compile cache and its verification.

A backend module provides a ``Target`` subclass with

* ``available()`` -> reason string or None (cheap; imports the runtime lazily);
* ``compile_into(bundle, plan, out_dir, **options)`` -> compile record fields (writes artifacts);
  ``plan`` is a ``PrecisionPlan`` (``targets/precision_plan.py``): the precision of each graph;
* ``open_runner(bundle, compiled)`` -> a runner implementing the contract of
  ``dualrate.exporter.runner`` (a ``BaseRunner`` subclass: inputs by name, one error wrapper).

Compiled artifacts live in ``BUNDLE/targets/<backend>-<plan name>/`` (``onnxruntime-int8``,
``openvino-encoder-int8.denoiser-fp32``) with a ``compile.json`` recording the requested
precision (the plan's text), the effective precision of each graph (``graph_precisions``) and their
summary (``effective_precision``), runtime version,
device, options, the hashes of the source graphs and of every artifact. A cache
whose sources or runtime version changed is rebuilt; one whose artifacts changed
is an error (it may have been tampered with).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from dualrate.exporter.atomic import atomic_directory
from dualrate.exporter.bundle import Bundle, sha256_file
from dualrate.exporter.errors import BackendUnavailableError, BadInputError, BundleError, DualrateError
from dualrate.exporter.runner import first_line

from .precision_plan import PrecisionPlan, parse_plan

COMPILE_RECORD = "compile.json"
BACKENDS = {"onnxruntime": "dualrate.targets.onnxrt", "openvino": "dualrate.targets.openvino_backend",
            "coreml": "dualrate.targets.coreml_backend", "tensorrt": "dualrate.targets.trt_backend"}


@dataclass
class Compiled:
    """A verified compile cache entry (``dualrate.compile`` adds the stage ``timings`` and what
    happened to the reduced-precision gate ``calibration``)."""

    path: Path
    record: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)
    calibration: dict[str, Any] | None = None

    @property
    def effective_precision(self) -> str:
        """The precision every graph really computes in, or for a mixed plan its per-graph text
        (``encoder=int8,denoiser=fp32``)."""
        return self.record["effective_precision"]

    @property
    def graph_precisions(self) -> dict[str, str]:
        """Effective precision of each graph (records written before plans existed: the uniform one)."""
        got = self.record.get("graph_precisions")
        if got:
            return dict(got)
        return {g: self.record["effective_precision"] for g in self.record.get("sources", {})}


class Target:
    name = "base"
    precisions: tuple[str, ...] = ("fp32",)
    extra = ""            # pip extra that installs the runtime
    converts_from_model = False   # compiles from the PyTorch modules (takes ``model=``), not the graphs

    def available(self) -> str | None:
        """None if usable here, else the reason (with the fix)."""
        raise NotImplementedError

    def runtime_version(self) -> str:
        raise NotImplementedError

    def compile_into(self, bundle: Bundle, plan: PrecisionPlan, out: Path, **options: Any) -> dict[str, Any]:
        """Write artifacts into ``out`` with each graph at ``plan.for_graph(graph)``; return compile-record
        fields, at least ``device`` and either ``graph_precisions`` (graph -> what the runtime will really
        compute it in) or, where every graph computes in one precision, ``effective_precision``."""
        raise NotImplementedError

    def open_runner(self, bundle: Bundle, compiled: Compiled, **options: Any):
        raise NotImplementedError

    def numeric_unavailable(self) -> str | None:
        """Why numeric checks cannot run here although compiling can (Core ML off macOS), else None."""
        return None

    def structural_checks(self, bundle: Bundle, compiled: Compiled) -> list[dict[str, Any]]:
        """Checks that need no execution (I/O names, shapes, dtypes, op inventory, precision).

        Each is ``{"name": str, "passed": bool, "detail": str}``.
        """
        return []

    # -- shared ---------------------------------------------------------------
    def require(self) -> None:
        reason = self.available()
        if reason:
            raise BackendUnavailableError(f"target {self.name} is not usable here: {reason}")

    def check_precision(self, precision: "str | PrecisionPlan | dict[str, str]") -> None:
        """Refuse a precision or plan this backend cannot compile before a bundle is at hand (the graphs a
        plan names are checked against the bundle by ``plan``)."""
        parse_plan(precision, _named_graphs(precision), allowed=self.precisions, target=self.name)

    def plan(self, bundle: Bundle, precision: "str | PrecisionPlan | dict[str, str]") -> PrecisionPlan:
        """The precision plan ``precision`` (``int8``, ``encoder=int8,denoiser=fp32`` or a dict) over the
        bundle's graphs; ``BadInputError`` for a precision this backend lacks or a graph the bundle lacks."""
        return parse_plan(precision, bundle.graph_names(), allowed=self.precisions, target=self.name)

    def compile(self, bundle: Bundle, precision: "str | PrecisionPlan | dict[str, str]" = "fp32", force: bool = False,
                **options: Any) -> Compiled:
        """Return the cached compile if it is current, else build it (atomically)."""
        self.require()
        plan = self.plan(bundle, precision)
        out = bundle.target_dir(self.name, plan.name)
        # options are part of the cache key: other options rebuild instead of reusing
        key_options = self.key_options(options)
        if not force:
            cached = self._cached(bundle, plan, out, key_options)
            if cached is not None:
                return cached
        # a concurrent compile of the same bundle may finish first: keep its (equivalent) result
        with atomic_directory(out, force=True, keep_existing=None if force else (
                lambda: self._cached(bundle, plan, out, key_options) is not None)) as tmp:
            fields = self.compile_into(bundle, plan, tmp, **options)
            graph_precisions = fields.pop("graph_precisions", None) or {
                g: fields["effective_precision"] for g in bundle.graph_names()}
            record = {"backend": self.name, "requested_precision": plan.text,
                      "runtime_version": self.runtime_version(), "machine": platform.machine(),
                      "sources": {g: bundle.file_hash(f"{g}.onnx") for g in bundle.graph_names()},
                      "compile_options": key_options, "cache_key": self.cache_key(), **fields,
                      "graph_precisions": graph_precisions,
                      "effective_precision": effective_summary(bundle.graph_names(), graph_precisions)}
            record["files"] = {p.relative_to(tmp).as_posix(): sha256_file(p)
                               for p in sorted(tmp.rglob("*")) if p.is_file()}
            (tmp / COMPILE_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        return self._cached(bundle, plan, out, key_options) or Compiled(out, record)

    def key_options(self, options: dict[str, Any]) -> dict[str, Any]:
        """The options that decide the artifacts (the compile cache key, recorded in compile.json)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(options.items()) if v is not None}

    def cache_key(self) -> dict[str, Any]:
        """What else invalidates a compile (a converter's torch version, the CPU, dualrate itself:
        its quantizers and conversion code decide the artifacts as much as the runtime does)."""
        from dualrate.exporter.version import __version__

        return {"machine": platform.machine(), "dualrate": __version__}

    def _cached(self, bundle: Bundle, plan: PrecisionPlan, out: Path, options: dict[str, Any]) -> Compiled | None:
        try:
            record = json.loads((out / COMPILE_RECORD).read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        sources = {g: bundle.file_hash(f"{g}.onnx") for g in bundle.graph_names()}
        if (record.get("sources") != sources or record.get("runtime_version") != self.runtime_version()
                or record.get("requested_precision", plan.text) != plan.text
                or record.get("compile_options", {}) != json.loads(json.dumps(options))
                or record.get("cache_key") != json.loads(json.dumps(self.cache_key()))):
            return None          # stale: the bundle, runtime, options or machine changed; rebuild
        for rel, want in record.get("files", {}).items():
            p = out / rel
            if not p.is_file() or sha256_file(p) != want:
                raise BundleError(f"compiled target {out} has a changed or missing file {rel}; "
                                  f"delete {out} or run `dualrate compile --force`")
        return Compiled(out, record)


def effective_summary(graphs: list[str], graph_precisions: dict[str, str]) -> str:
    """One string for the record's ``effective_precision``: the precision when every graph computes in it,
    else the plan-style text of the per-graph precisions (``encoder=int8,denoiser=fp32``)."""
    return PrecisionPlan(tuple((g, graph_precisions[g]) for g in graphs)).text


def _named_graphs(precision: "str | PrecisionPlan | dict[str, str]") -> list[str]:
    """The graphs a plan names (a uniform precision names none: any graph list will do)."""
    if isinstance(precision, PrecisionPlan):
        return [g for g, _ in precision.graphs]
    if isinstance(precision, dict):
        return [str(g) for g in precision]
    return [part.partition("=")[0].strip() for part in str(precision).split(",") if "=" in part] or ["encoder"]


@contextlib.contextmanager
def runtime_step(runtime: str, graph: str, action: str, errors: tuple[type[BaseException], ...] = (Exception,),
                 line: Callable[[BaseException], str] = first_line,
                 unavailable: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """An error ``runtime`` raises while it loads, converts or compiles ``graph`` as one line naming both.

    The runtime is installed and running (``Target.require`` said so), and the bundle passed its
    checks at open, so what the runtime refuses here is the input: ``BadInputError`` (exit 2).
    Only ``unavailable`` errors (an execution provider or device failing on this machine) are
    ``BackendUnavailableError`` (exit 3). dualrate's own errors pass through unchanged.
    """
    try:
        yield
    except DualrateError:
        raise
    except unavailable as exc:
        raise BackendUnavailableError(f"{runtime} cannot {action} the {graph} graph on this machine: "
                                      f"{line(exc)}") from None
    except errors as exc:
        raise BadInputError(f"{runtime} could not {action} the {graph} graph ({graph}.onnx): {line(exc)}") from None


def get_target(name: str) -> Target:
    """The backend named ``name``; its runtime is imported only when used."""
    if name not in BACKENDS:
        raise BadInputError(f"unknown target {name!r}; choose one of {', '.join(BACKENDS)}")
    try:
        module = importlib.import_module(BACKENDS[name])
    except ImportError as exc:       # a package the backend module itself needs (Core ML converts with torch)
        return UnavailableTarget(name, f"its module needs {exc.name or exc}, which is not installed; "
                                       f"pip install 'dualrate[{_EXTRAS.get(exc.name, name)}]'")
    return module.TARGET


_EXTRAS = {"torch": "export", "onnxscript": "export", "safetensors": "export"}


class UnavailableTarget(Target):
    """A backend whose module cannot be imported here: every use says why (exit 3), nothing runs."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason

    def available(self) -> str | None:
        return self.reason

    def runtime_version(self) -> str:
        return "-"

    def check_precision(self, precision: Any) -> None:
        """Which precisions the backend takes is unknown without its module: availability decides first."""
