"""``dualrate validate``: the layered, fail-closed parity check of a compiled bundle.

Order (the first failing layer is reported): structural (targets that have it),
graph, teacher-forced, free-running, refresh audit, cache == no-cache. Gates key
on the *effective* precision the backend reports, per graph for a precision plan
(``gates.plan_gates``: the sampler's checks by the plan's loosest precision); every
output also passes the tripwire (``tripwire``), whatever the gates. ``fidelity``
then reports the final samples against the fp32 reference, with one swap run per
reduced graph when a plan reduces several. A layer that cannot run here
is "not run" with its reason and never counts as passed; the verdict is then
NOT RUN (exit 3) unless something that did run failed (FAILED, exit 1).

The reference is either the live PyTorch checkpoint (the manifest's, verified by
sha256, or ``checkpoint=``) or the bundle's golden vectors, so a machine without
PyTorch can validate itself; both feed the same code as one vectors dict.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dualrate.exporter.bundle import Bundle, load_source_checkpoint, open_bundle, recorded_checkpoint
from dualrate.exporter.errors import BackendUnavailableError, BadInputError
from dualrate.exporter.precision_calibration import FLOOR
from dualrate.exporter.progress import Progress, Stages
from dualrate.exporter.spec import Spec

from .fidelity import fidelity
from .gates import LOOSENESS, PlanGates, loosest, plan_gates
from .graph_parity import CheckResult, graph_level
from .layers import cache_equivalence, free_running, refresh_audit, teacher_forced

LAYERS = ("structural", "graph", "teacher_forced", "free_running", "refresh_audit", "cache_equivalence")
NUMERIC_LAYERS = LAYERS[1:]


@dataclass
class ValidateOptions:
    target: str = "onnxruntime"
    precision: str = "fp32"
    reference: str = "auto"                  # torch | golden | auto (torch when the checkpoint is reachable)
    checkpoint: Path | None = None
    gate_precision: str | None = None        # judge with this precision's gate instead of the effective one
    gate_overrides: dict[str, dict[str, float]] = field(default_factory=dict)   # "*", "<graph>/<output>", "final"
    threads: int = 0
    # fault injection for the self-test: wrap the backend runner / give the backend another spec
    runner_wrapper: Callable[[Any], Any] | None = None
    backend_spec: Spec | None = None
    model: Any = None                        # a DualRateModel to use as the live reference (Python API)
    conditioning: dict[str, np.ndarray] | None = None   # rows for the reference trajectories (live reference)
    # a reduced plan also samples with one reduced graph at a time (``fidelity``; the self-test skips it)
    swap_runs: bool = True
    # reference vectors and model kept across runs on the same bundle content (the self-test's runs)
    cache: dict[str, Any] | None = None


def validate(bundle_path: str | Path, opts: ValidateOptions, progress: Progress | None = None
             ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run every layer; returns the results document (with ``timings``: stage -> seconds) and the
    arrays the HTML report shows. ``progress`` gets each stage (``dualrate.exporter.progress``)."""
    stages = Stages(progress)
    if opts.cache is None:          # the model is loaded (and verified) once per run
        opts = dataclasses.replace(opts, cache={})
    doc, arrays = _run(bundle_path, opts, stages)
    doc["timings"] = dict(stages.timings)
    return doc, arrays


def _run(bundle_path: str | Path, opts: ValidateOptions, stages: Stages
         ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    from dualrate.targets.base import get_target

    with stages("open", "verifying the bundle (hashes, graph checks)"):
        bundle = open_bundle(bundle_path)
    target = get_target(opts.target)
    target.check_precision(opts.precision)
    doc = _header(bundle, opts)
    layers: dict[str, dict[str, Any]] = {}
    arrays: dict[str, np.ndarray] = {}
    reason = target.available()
    compiled = None
    if reason is None:
        try:
            extra = {"model": opts.model} if opts.model is not None and target.converts_from_model else {}
            with stages("compile", f"compiling for {target.name} {opts.precision} (or reusing the cache)"):
                compiled = target.compile(bundle, opts.precision, **extra)
        except BackendUnavailableError as exc:
            reason = str(exc)
    if compiled is None:
        for name in LAYERS:
            layers[name] = _not_run(name, f"target {target.name} is not usable here: {reason}")
        return _finish(doc, layers, None), arrays
    doc["target"].update(_target_info(compiled))
    structural = target.structural_checks(bundle, compiled)
    if structural:        # targets without structural checks are covered by the numeric layers
        layers["structural"] = _layer("structural", [_structural(c) for c in structural])
    numeric_reason = target.numeric_unavailable()
    if numeric_reason:
        for name in NUMERIC_LAYERS:
            layers[name] = _not_run(name, numeric_reason)
        return _finish(doc, layers, None), arrays
    runner = target.open_runner(bundle, compiled, threads=opts.threads)
    if opts.runner_wrapper is not None:
        runner = opts.runner_wrapper(runner)
    vectors, doc["reference"] = reference_vectors(bundle, opts, stages)
    spec = bundle.spec
    nulls = bundle.nulls()
    trajectories = {k: v for k, v in vectors.items() if k.startswith("trajectory_seed")}
    first = trajectories[sorted(trajectories)[0]]
    doc["shapes"] = {"batch": int(len(first["final"])), "steps": spec.sampler.num_steps}
    gates = _plan_gates(bundle, compiled, opts, doc, stages)
    with stages("graph", "graph layer: recorded calls"):
        layers["graph"] = _layer("graph", graph_level(runner, vectors, gates.sampler.base, opts.gate_overrides,
                                                      plan=gates, spec=spec))
    with stages("teacher_forced", "teacher-forced steps"):
        layers["teacher_forced"] = _layer("teacher_forced", teacher_forced(runner, spec, first, gates.sampler.base,
                                                                           nulls=nulls, plan=gates))
    with stages("free_running", "free-running sampler"):
        fr, drift, arrays = free_running(runner, spec, trajectories, gates.final, opts.backend_spec, nulls,
                                         decoded_gate=gates.decoded)
    layers["free_running"] = _layer("free_running", fr)
    layers["refresh_audit"] = _layer("refresh_audit", refresh_audit(spec, fr))
    every = next(v for k, v in vectors.items() if k.startswith("every_step_seed"))
    with stages("cache_equivalence", "cache == no-cache (refresh at every step)"):
        layers["cache_equivalence"] = _layer("cache_equivalence", cache_equivalence(
            runner, spec, every, gates.final, opts.backend_spec, nulls))
    with stages("fidelity", "final fidelity per reduced graph (swap runs)"):
        doc["fidelity"] = fidelity(bundle, target, compiled, fr, trajectories, opts, nulls)
    return _finish(doc, layers, drift), arrays


def graph_precisions(bundle: Bundle, compiled: Any, gate_precision: str | None = None) -> dict[str, str]:
    """The precision each graph is judged at: ``--gate-precision`` (a precision or a plan), else
    what the compile record says each graph really computes in."""
    from dualrate.targets.precision_plan import parse_plan

    if gate_precision:
        return parse_plan(gate_precision, bundle.graph_names()).as_dict()
    got = getattr(compiled, "graph_precisions", None) or compiled.record.get("graph_precisions")
    if got:
        return {g: str(got.get(g, compiled.effective_precision)) for g in bundle.graph_names()}
    return {g: compiled.effective_precision for g in bundle.graph_names()}


def _plan_gates(bundle: Bundle, compiled: Any, opts: ValidateOptions, doc: dict[str, Any],
                stages: Stages) -> PlanGates:
    """The run's gates (``gates.plan_gates``), each calibration they use, recorded in ``doc``.

    fp32 graphs: the model's own fp32 error sets their gates; bf16/fp16 graphs: the reference's
    spread sets their per-call gates; int8 graphs: per call by step band. Each calibration is
    stored, computed now where the model is here, or absent (noted)."""
    precisions = graph_precisions(bundle, compiled, opts.gate_precision)
    sampler = loosest(precisions.values())
    kinds = sorted(set(precisions.values()), key=LOOSENESS.index)
    values: dict[str, Any] = {}
    notes: list[dict[str, Any]] = []
    for p in kinds:
        got, cal = precision_calibration(bundle, p, opts, stages)
        if cal["status"] == "not_needed":
            continue
        notes.append(cal)
        if got is not None:
            values[p] = got
        if cal["status"] == "uncalibrated":
            doc.setdefault("notes", []).append(
                f"the fp32 gates are the fixed defaults, not set from the model's own fp32 error: {cal['reason']}; "
                "export with --calibrate-precisions fp32, or validate once where the model is at hand"
                if p == FLOOR else
                f"per-call {p} gates are uncalibrated (the default {p} gate for every call): {cal['reason']}")
    outputs = {g: [o.name for o in gio.outputs] for g, gio in bundle.spec.model.graphs().items()}
    gates = plan_gates(precisions, outputs, opts.gate_overrides, values.get(FLOOR),
                       {p: v for p, v in values.items() if p != FLOOR})
    doc["gates"] = {sampler: dataclasses.asdict(gates.sampler.base), **gates.describe()}
    if notes:
        # one calibration per kind the plan uses: the first under ``calibration`` (as before plans)
        doc["gates"]["calibration"] = notes[0]
        if len(notes) > 1:
            doc["gates"]["calibrations"] = notes
    if gates.calls:
        doc["gates"]["per_call_calibrated"] = {f"{g}/{o}": dataclasses.asdict(v) for (g, o), v in gates.calls.items()}
    doc["target"]["graph_precisions"] = dict(precisions)
    return gates


def reference_vectors(bundle: Bundle, opts: ValidateOptions, stages: Stages | None = None
                      ) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """The reference as one vectors dict: recomputed on the PyTorch model (the checkpoint, or the
    model handed over in Python), or the bundle's golden files. Computed once per bundle content
    when ``opts.cache`` is given (the self-test validates the same reference seven times)."""
    stages = stages or Stages()
    key = _cache_key(bundle, opts)
    if key is not None and key in opts.cache:
        return opts.cache[key]
    got = _reference_vectors(bundle, opts, stages)
    if key is not None:
        opts.cache[key] = got
    return got


def _cache_key(bundle: Bundle, opts: ValidateOptions) -> str | None:
    if opts.cache is None or opts.conditioning is not None:     # rows given: this run's own reference
        return None
    files = bundle.manifest["files"]
    content = sorted((rel, h) for rel, h in files.items() if rel == "spec.json" or rel.startswith(("golden/",
                                                                                                  "conditioning/")))
    return repr(("reference", opts.reference, str(opts.checkpoint), id(opts.model),
                 (bundle.manifest.get("source") or {}).get("sha256"), content))


def _model_key(bundle: Bundle, opts: ValidateOptions) -> tuple:
    return ("model", str(opts.checkpoint), id(opts.model), (bundle.manifest.get("source") or {}).get("sha256"))


def _live_model(bundle: Bundle, opts: ValidateOptions) -> Any:
    """``reference_model``, loaded (and verified) once per ``opts.cache`` (one validate run, or the self-test)."""
    if opts.cache is None:
        return reference_model(bundle, opts)
    key = _model_key(bundle, opts)
    if key not in opts.cache:
        opts.cache[key] = reference_model(bundle, opts)
    return opts.cache[key]


def precision_calibration(bundle: Bundle, precision: str, opts: ValidateOptions, stages: Stages | None = None
                          ) -> tuple[dict[str, np.ndarray] | None, dict[str, Any]]:
    """The gate calibration of ``precision`` (``exporter.precision_calibration``: the fp32 floor, or
    the bf16/fp16 per-call spread): stored, or computed now on the bundle's PyTorch model where it
    is here, or none (the default gates, noted)."""
    from dualrate.exporter import precision_calibration as pc

    if precision not in pc.CALIBRATED:
        return None, {"precision": precision, "status": "not_needed"}

    def provider() -> tuple[Any, str | None]:
        if opts.cache is not None and _model_key(bundle, opts) in opts.cache:     # the live reference's, verified
            return opts.cache[_model_key(bundle, opts)], None
        return pc.model_from(bundle, opts.model, opts.checkpoint)

    from dualrate.exporter.optional import have

    if not have("torch"):
        return pc.ensure(bundle, precision, provider=lambda: (None, "PyTorch is not installed here "
                                                                     "(pip install 'dualrate[export]')"))
    from dualrate.exporter.torch_runner import machine_threads

    with machine_threads():
        return pc.ensure(bundle, precision, provider=provider, stages=stages)


def _reference_vectors(bundle: Bundle, opts: ValidateOptions, stages: Stages
                       ) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    with stages("golden", "reading the golden vectors"):
        golden = {name: bundle.golden(name) for name in bundle.golden_names()}
    path = recorded_checkpoint(bundle, opts.checkpoint)
    live = opts.model is not None or (path is not None and path.exists())
    use_torch = opts.reference == "torch" or (opts.reference == "auto" and live)
    if not use_torch:
        if opts.reference not in ("golden", "auto"):
            raise BadInputError(f"--reference {opts.reference!r}: expected torch, golden or auto")
        if opts.conditioning is not None:
            raise BadInputError("conditioning was given, but the golden vectors fix the conditioning they recorded; "
                                "use --reference torch (the checkpoint, or the model in Python) to sample with it")
        return golden, "golden"
    from dualrate.exporter.optional import require

    require("torch", "--reference torch (recomputing the reference on the PyTorch model)")
    from dualrate.exporter.golden import capture, trajectory_conditioning
    from dualrate.exporter.torch_runner import TorchReferenceRunner, machine_threads

    model = _live_model(bundle, opts)
    export = bundle.manifest.get("export_options", {})
    seeds = tuple(export.get("golden_seeds", (0, 1)))
    # the same conditioning the golden trajectories were sampled with
    recorded = {int(v["seed"]): trajectory_conditioning(v) for k, v in golden.items() if k.startswith("trajectory_seed")}
    if opts.conditioning is not None:
        from dualrate.exporter.conditioning import check_conditioning
        check_conditioning(bundle.spec, opts.conditioning)            # names, shapes, dtypes: one line if wrong
        recorded = None
    with stages("reference", "reference trajectories on PyTorch",
                total=(len(seeds) + 1) * bundle.spec.sampler.num_steps) as step, machine_threads():
        vectors = capture(TorchReferenceRunner(model, bundle.spec), bundle.spec, seeds,
                          int(export.get("golden_batch", 2)), bundle.nulls(), recorded, examples=opts.conditioning,
                          on_step=lambda _: step())
    return vectors, "torch"


def reference_model(bundle: Bundle, opts: ValidateOptions) -> Any:
    """The live PyTorch model of a bundle: ``opts.model`` (its weights' sha256 must match the
    manifest's source) or the source checkpoint (verified by sha256)."""
    if opts.model is not None:
        from .export_check import model_source

        want = (bundle.manifest.get("source") or {}).get("sha256")
        got = model_source(opts.model)["sha256"]
        if want != got:
            raise BadInputError(f"the reference model's weights have sha256 {got[:12]}…, but bundle {bundle.path} was "
                                f"exported from weights with sha256 {str(want)[:12]}…; pass the model it was exported "
                                "from, or use reference='golden'")
        return opts.model
    return load_source_checkpoint(bundle, opts.checkpoint, "--reference torch recomputes the reference on the "
                                  "PyTorch modules", alternative=", or use --reference golden").pair


def _header(bundle: Bundle, opts: ValidateOptions) -> dict[str, Any]:
    from dualrate.exporter.version import __version__

    return {"tool": "dualrate validate", "format_version": 1, "dualrate_version": __version__,
            "bundle": {"path": str(bundle.path), "spec_sha256": bundle.file_hash("spec.json"),
                       "graphs": {g: bundle.file_hash(f"{g}.onnx") for g in bundle.graph_names()},
                       "source_checkpoint_sha256": (bundle.manifest.get("source_checkpoint") or {}).get("sha256")},
            "source": bundle.manifest.get("source"),
            "decoder": None if bundle.spec.model.decoder is None else {
                "data_range": list(bundle.spec.model.decoder.data_range),
                "output_shape": list(bundle.spec.model.decoder.output_shape)},
            "target": {"backend": opts.target, "requested_precision": opts.precision, "effective_precision": None},
            "machine": _machine(),
            "reference": opts.reference, "gates": {}, "shapes": {}}


def _machine() -> dict[str, str]:
    """Where the run happened (``dualrate report merge`` shows it per row)."""
    import platform

    return {"host": platform.node(), "os": f"{platform.system()} {platform.release()}".strip(),
            "arch": platform.machine(), "python": platform.python_version()}


def _target_info(compiled: Any) -> dict[str, Any]:
    rec = compiled.record
    return {"effective_precision": rec.get("effective_precision"), "runtime_version": rec.get("runtime_version"),
            "graph_precisions": dict(getattr(compiled, "graph_precisions", None) or rec.get("graph_precisions") or {}),
            "device": rec.get("device"), "note": rec.get("note"), "artifacts": rec.get("files", {})}


def _structural(check: dict[str, Any]) -> CheckResult:
    return CheckResult("structural", check.get("graph", "bundle"), check["name"], None,
                       [] if check["passed"] else [check.get("detail", "failed")], {"info": check.get("detail")})


def _layer(name: str, checks: list[CheckResult]) -> dict[str, Any]:
    if not checks:      # a layer that checked nothing did not pass anything
        return _not_run(name, "no checks were produced")
    return {"layer": name, "status": "passed" if all(c.passed for c in checks) else "failed", "reason": None,
            "checks": [c.to_dict() for c in checks]}


def _not_run(name: str, reason: str) -> dict[str, Any]:
    return {"layer": name, "status": "not_run", "reason": reason, "checks": []}


def _finish(doc: dict[str, Any], layers: dict[str, dict[str, Any]], drift: Any) -> dict[str, Any]:
    doc["layers"] = [layers[name] for name in LAYERS if name in layers]
    doc["drift"] = drift
    first = None
    for layer in doc["layers"]:
        for c in layer["checks"]:
            if not c["passed"]:
                m = c.get("metrics") or {}
                first = {"layer": layer["layer"], "graph": c["graph"], "output": c["output"], "step": c.get("step"),
                         "reasons": c["reasons"], "min_atol_at_rtol": m.get("min_atol_at_rtol")}
                break
        if first:
            break
    if first:
        doc["verdict"], doc["exit_code"] = "FAILED", 1
    elif any(layer["status"] == "not_run" for layer in doc["layers"]):
        # a check that could not run is never counted as passed, even beside checks that did
        doc["verdict"], doc["exit_code"] = "NOT RUN", 3
    else:
        doc["verdict"], doc["exit_code"] = "PASSED", 0
    doc["first_failure"] = first
    doc["not_run_reason"] = next((layer["reason"] for layer in doc["layers"] if layer["status"] == "not_run"), None)
    return doc
