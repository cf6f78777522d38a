"""The Python API: one keyword-only function per verb, the same operations the CLI runs.

    model = dualrate.DualRateModel(encoder=..., denoiser=..., encoder_inputs={...}, denoiser_inputs={...}, ...)
    exported = dualrate.export(model, "bundle", steps=20, refresh_every=4, guidance=3.0)
    dualrate.compile("bundle", target="openvino")
    result = dualrate.sample("bundle", target="onnxruntime", conditioning={...}, seed=0)
    report = dualrate.validate("bundle", target="openvino", reference=model)

Errors are typed (``dualrate.BadInputError``, ``ParityError``, ``BackendUnavailableError``,
... all ``DualrateError``) and carry the one-line message and exit code the CLI prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from dualrate.exporter.bundle import Bundle, open_bundle
from dualrate.exporter.errors import BadInputError
from dualrate.exporter.spec_builder import SamplerOptions

def _bundle(bundle: Any) -> Bundle:
    return bundle if isinstance(bundle, Bundle) else open_bundle(bundle)


def sampler_options(*, steps: int = 32, sampler: str = "ancestral", eta: float | None = None,
                    refresh_every: int | None = 4, refresh_steps: Sequence[int] | None = None,
                    refresh_calibrated: float | None = None, guidance: float = 1.0,
                    guidance_interval: tuple[float, float] | None = None, clip_x0: float | None = None,
                    seed: int = 0) -> SamplerOptions:
    """The sampler a bundle fixes: steps, sampler (ancestral | ddim, with eta), one refresh rule
    (every K steps, an explicit list, or calibrated on the model's feature drift), guidance."""
    rules = [r for r in (refresh_steps is not None, refresh_calibrated is not None) if r]
    if len(rules) > 1:
        raise BadInputError("give one refresh rule: refresh_every, refresh_steps or refresh_calibrated")
    if refresh_steps is not None:
        refresh, params = "explicit", {"steps": [int(s) for s in refresh_steps]}
    elif refresh_calibrated is not None:
        refresh, params = "calibrated", {"threshold": refresh_calibrated}
    else:
        refresh, params = "every_k", {"k": int(refresh_every or 1), "phase": 0}
    if eta is None:
        eta = 1.0 if sampler == "ancestral" else 0.0
    return SamplerOptions(num_steps=steps, sampler=sampler, eta=eta, refresh=refresh, refresh_params=params,
                          guidance=guidance, guidance_interval=guidance_interval, clip_x0=clip_x0, seed=seed)


def export(model: Any, output: str | Path, *, options: Any = None, examples: Mapping[str, Any] | None = None,
           force: bool = False, allow_factory: bool = False, progress: Callable[[str], None] | None = None,
           static_batch: int | None = None, calibrate_precisions: bool | Sequence[str] = False, **sampler: Any):
    """Trace ``model`` into a verified bundle at ``output``.

    Args:
        model: a ``DualRateModel``, or the path of a dualrate checkpoint.
        output: the bundle directory to create (refused if it exists, unless ``force``).
        options: an ``ExportOptions`` (overrides the keywords below), else
        **sampler: ``sampler_options`` keywords (steps, refresh_every, guidance, sampler, eta, ...).
        examples: conditioning rows (name -> array [n, *shape]) for the golden trajectories,
            e.g. real prompt embeddings; default: class ids / standard-normal / ones.
        static_batch: fix the batch axis to this many samples (default: dynamic).
        calibrate_precisions: also store the gate calibration now (True: all, or a list of
            ``fp32`` (the model's own fp32 error, which sets the fp32 gates), ``bf16``, ``fp16``);
            by default each is computed where the model is at hand when first needed (fp32 by
            validate, bf16/fp16 by compile or validate).
        progress: called with each ``dualrate.exporter.progress.Event`` (a str: the stage line);
            ``dualrate.exporter.progress.console()`` shows them as the CLI does.
    Returns:
        ``ExportResult``: ``.bundle`` (the opened, verified bundle), ``.parity`` (ONNX Runtime vs
        PyTorch), ``.timings`` (stage -> seconds) and ``.calibration``.
    Raises:
        BadInputError (a module that does not accept its declared inputs, a missing null under
        guidance, an existing output...), ParityError (ONNX Runtime disagrees: nothing is written).
    """
    from dualrate.exporter.atomic import check_output
    from dualrate.exporter.optional import require

    check_output(Path(output), force)
    for module in ("torch", "onnxscript"):
        require(module, "export (tracing the PyTorch modules to ONNX)")
    from dualrate.exporter.export_options import ExportOptions
    from dualrate.validation.export_check import export_bundle

    if options is None:
        options = ExportOptions(sampler=sampler_options(**sampler), static_batch=static_batch)
    elif sampler:
        raise BadInputError(f"pass sampler settings either in options or as keywords, not both ({sorted(sampler)})")
    return export_bundle(model, output, options, force=force, allow_factory=allow_factory, progress=progress,
                         examples=None if examples is None else {k: np.asarray(v) for k, v in examples.items()},
                         calibrate_precisions=calibrate_precisions)


def compile(bundle: Any, *, target: str = "onnxruntime", precision: "str | Mapping[str, str] | None" = None,
            force: bool = False, model: Any = None, progress: Callable[[str], None] | None = None, **options: Any):
    """Compile ``bundle`` for ``target`` (cached in ``BUNDLE/targets/<target>-<plan name>``).

    ``precision`` is one precision for every graph (``"fp32"``, ``"int8"``, ``"int8-weights"``, ...) or a
    per-graph plan: ``"encoder=int8,denoiser=fp32"`` or ``{"encoder": "int8"}`` (graphs not named stay
    fp32). int8 is calibrated on the bundle's own sampler (``calibration_samples``, ``calibration_seed``).
    ``.record["graph_precisions"]`` names what each graph really computes in.

    ``options`` are the backend's own. ``model`` is the bundle's DualRateModel (checked by its
    weights' sha256): Core ML converts from it for a bundle exported from Python, and a bf16/fp16
    compile calibrates the per-call gates on it (a checkpoint bundle finds its checkpoint itself;
    stored once in ``BUNDLE/calibration/``). Returns the ``Compiled`` cache entry, with
    ``.timings`` and ``.calibration``; ``BackendUnavailableError`` where the runtime cannot run here.
    """
    from dualrate.exporter.progress import Stages
    from dualrate.targets.base import get_target

    b, t = _bundle(bundle), get_target(target)
    precision = _precision(_default_precision(b, target, precision))
    stages = Stages(progress)
    if model is not None and t.converts_from_model:
        options["model"] = model
    with stages("compile", f"compiling for {target} {precision}"):
        compiled = t.compile(b, precision, force=force, **options)
    compiled.calibration = _calibrate(b, compiled.effective_precision, model, options.get("checkpoint"), stages)
    compiled.timings = dict(stages.timings)
    return compiled


def _calibrate(bundle: Bundle, precision: str, model: Any, checkpoint: Any, stages: Any) -> dict[str, Any]:
    """The per-call gate calibration of a reduced ``precision``, computed now where the model is here."""
    from dualrate.exporter.optional import have
    from dualrate.exporter.precision_calibration import LOW_PRECISIONS, ensure, model_from

    if precision not in LOW_PRECISIONS:
        return {"precision": precision, "status": "not_needed"}
    if not have("torch"):
        return ensure(bundle, precision, provider=lambda: (None, "PyTorch is not installed here"))[1]
    from dualrate.exporter.torch_runner import machine_threads

    with machine_threads():
        return ensure(bundle, precision, provider=lambda: model_from(bundle, model, checkpoint), stages=stages)[1]


def open_runner(bundle: Any, *, target: str = "onnxruntime", precision: "str | Mapping[str, str] | None" = None,
                threads: int = 0, **options):
    """A runner of the compiled bundle (the runner contract of ``dualrate.exporter.runner``); ``precision``
    as for ``compile`` (a precision or a per-graph plan)."""
    from dualrate.targets.base import get_target

    b = _bundle(bundle)
    t = get_target(target)
    return t.open_runner(b, t.compile(b, _precision(_default_precision(b, target, precision)), **options),
                         threads=threads)


def _default_precision(bundle: Bundle, target: str, precision: Any) -> Any:
    """``precision`` when given, else the plan ``dualrate tune`` recorded in the bundle for ``target``,
    else fp32 (``exporter.precision_default``)."""
    from dualrate.exporter.precision_default import resolve_precision

    return resolve_precision(bundle, target, precision)


def _precision(precision: Any) -> Any:
    """A plan given as a mapping becomes a plain dict (``parse_plan`` takes text, a dict or a plan)."""
    return dict(precision) if isinstance(precision, Mapping) else precision


def sample(bundle: Any, *, target: str = "onnxruntime", precision: "str | Mapping[str, str] | None" = None,
           conditioning: Mapping[str, Any] | Sequence[int] | None = None, seed: int = 0, n: int | None = None,
           on_step: Callable[[int], None] | None = None):
    """Sample with the bundle's sampler on ``target``.

    ``conditioning`` maps each conditioning input to ``[B, *shape]`` (a class-conditional model
    also takes a list of class ids); ``n`` is the batch for a model without conditioning.
    Returns a ``SampleResult``: ``.x`` final samples ``[B, C, H, W]``, ``.decoded`` (with a decoder),
    ``.refresh_log``.
    """
    from dualrate.exporter.sampling import sample as run_loop
    from dualrate.exporter.sampling import spec_noise

    b = _bundle(bundle)
    runner = open_runner(b, target=target, precision=precision)
    batch = _batch(b.spec, conditioning, n)
    return run_loop(runner, b.spec, conditioning, spec_noise(b.spec, batch, seed), nulls=b.nulls(), on_step=on_step)


def _batch(spec: Any, conditioning: Any, n: int | None) -> int:
    from dualrate.exporter.conditioning import check_conditioning

    cond = check_conditioning(spec, conditioning)
    if cond:
        return len(next(iter(cond.values())))
    if n is None or n < 1:
        raise BadInputError("this model takes no conditioning: pass n (how many samples)")
    return n


@dataclass
class ValidationReport:
    """The outcome of ``validate``: ``verdict`` PASSED | FAILED | NOT RUN and the CLI's ``exit_code``;
    ``doc`` is the JSON report, ``arrays`` what the HTML report shows."""

    doc: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return self.doc["verdict"]

    @property
    def exit_code(self) -> int:
        return int(self.doc["exit_code"])

    @property
    def passed(self) -> bool:
        return self.verdict == "PASSED"

    def summary(self) -> str:
        from dualrate.validation.reports import console_summary

        text = console_summary(self.doc)
        notes = [f"note: {n}" for n in self.doc.get("notes") or []]
        if not notes:
            return text
        *head, verdict = text.split("\n")       # the verdict stays the last line
        return "\n".join([*head, *notes, verdict])

    def save(self, directory: str | Path, data_range: tuple[float, float] = (-1.0, 1.0)) -> Path:
        """Write ``report.json`` and ``report.html`` into ``directory``; returns the HTML path."""
        from dualrate.validation.reports import write_html, write_json

        directory = Path(directory)
        write_json(self.doc, directory / "report.json")
        return write_html(self.doc, self.arrays, directory, data_range=data_range)

    def save_junit(self, path: str | Path) -> None:
        from dualrate.validation.reports import write_junit
        write_junit(self.doc, Path(path))


def validate(bundle: Any, *, target: str = "onnxruntime", precision: str | None = None, reference: Any = "auto",
             checkpoint: str | Path | None = None, gate_overrides: Mapping[str, Mapping[str, float]] | None = None,
             gate_precision: str | None = None, threads: int = 0,
             conditioning: Mapping[str, Any] | None = None, baseline: str | Path | Mapping[str, Any] | None = None,
             baseline_factor: float = 2.0, baseline_epsilon: float = 1e-8,
             progress: Callable[[str], None] | None = None) -> ValidationReport:
    """Layered, fail-closed parity of the compiled bundle against the reference sampler.

    ``reference``: ``"auto"``, ``"torch"`` (the source checkpoint), ``"golden"`` (the bundle's
    vectors, no PyTorch needed) or a ``DualRateModel`` (the model the bundle was exported from,
    checked by its weights' sha256). ``conditioning`` (name -> rows) replaces the recorded
    conditioning of the reference trajectories; it needs a live reference. ``baseline`` (an earlier
    report of the same bundle and target: its path or document) fails the run when any metric grew
    past ``baseline_factor`` x its baseline value + ``baseline_epsilon`` (``validation.baseline``).
    Returns a ``ValidationReport`` (never raises for a parity failure: read ``.verdict``); its
    ``doc["timings"]`` holds each stage's seconds, which ``progress`` is told as they run.
    A bf16/fp16 run calibrates its per-call gates on the PyTorch model the first time (stored in
    ``BUNDLE/calibration/``); without a model here and nothing stored, the default gates are used
    and ``doc["notes"]`` says so. With a per-graph plan (``"encoder=int8,denoiser=fp32"``) each graph
    is judged by its own precision's gates (int8 per call by step band) and the sampler by the
    loosest; ``doc["fidelity"]`` holds the final samples' fidelity against the fp32 reference and,
    when more than one graph is reduced, that of each graph reduced alone (swap runs).
    """
    from dualrate.validation.validate import ValidateOptions
    from dualrate.validation.validate import validate as run_layers

    model = None if isinstance(reference, str) else reference      # a DualRateModel (no torch import needed here)
    bundle = _bundle(bundle)
    precision = _default_precision(bundle, target, precision)
    opts = ValidateOptions(target=target, precision=precision, reference="torch" if model else reference,
                           checkpoint=None if checkpoint is None else Path(checkpoint), gate_precision=gate_precision,
                           gate_overrides={k: dict(v) for k, v in (gate_overrides or {}).items()}, threads=threads,
                           model=model,
                           conditioning=None if conditioning is None else {k: np.asarray(v)
                                                                           for k, v in conditioning.items()})
    b = _bundle(bundle)
    if baseline is not None:          # refused before anything runs: another bundle/target, not a report
        from dualrate.validation import baseline as bl

        where = baseline if isinstance(baseline, (str, Path)) else "(document)"
        base = bl.load_report(baseline) if isinstance(baseline, (str, Path)) else dict(baseline)
        if not bl.is_report(base):
            raise BadInputError("baseline: not a dualrate validate report")
        bl.check_baseline(base, bl.bundle_identity({"bundle": {
            "spec_sha256": b.file_hash("spec.json"), "graphs": {g: b.file_hash(f"{g}.onnx") for g in b.graph_names()}}}),
            target, where)
        bl.compare({}, base, where, baseline_factor, baseline_epsilon)     # bad factor/epsilon: refused now
    doc, arrays = run_layers(b.path, opts, progress)
    if baseline is not None:
        bl.apply(doc, bl.compare(doc, base, where, baseline_factor, baseline_epsilon))
    return ValidationReport(doc, arrays)


def bench(bundle: Any, *, target: str = "onnxruntime", precision: str | None = None, batch: int = 4, repeats: int = 3,
          threads: int = 0, seed: int = 0, model: Any = None, checkpoint: str | Path | None = None,
          single_rate: bool = True, torch_eager: bool = True, torch_compile: bool = True, backend_fp32: bool = True,
          benchmark_app: bool = True, benchmark_app_seconds: float = 10.0,
          progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per-graph latency, dual- vs single-rate, the FLOP bound and the PyTorch peers, measured side by side.

    The peers run at the backend's precision: PyTorch eager and ``torch.compile`` (fp32, or bf16/fp16
    autocast); an int8 or mixed plan is compared with the same backend at fp32 (``backend_fp32``).
    On OpenVINO, ``benchmark_app`` runs on the same IR as a cross-check. ``model`` is the bundle's
    PyTorch model for a bundle exported from Python (its FLOPs and the peers); a checkpoint bundle
    finds its own. Returns the results document (``docs/benchmarks.md`` lists its keys).
    """
    from dualrate.validation.bench import BenchOptions
    from dualrate.validation.bench import bench as run_bench

    bundle = _bundle(bundle)
    opts = BenchOptions(target=target, precision=_default_precision(bundle, target, precision), batch=batch,
                        repeats=repeats, threads=threads,
                        seed=seed, checkpoint=None if checkpoint is None else Path(checkpoint),
                        single_rate=single_rate, torch_eager=torch_eager, torch_compile=torch_compile,
                        backend_fp32=backend_fp32, benchmark_app=benchmark_app,
                        benchmark_app_seconds=benchmark_app_seconds, model=model)
    return run_bench(_bundle(bundle).path, opts, progress=progress or (lambda _: None))


def tune(bundle: Any, output: str | Path, *, target: str = "openvino", budget: str = "final_psnr=30",
         scorer: Any = None, plans: Sequence[str] | None = None, every: Sequence[int] | None = None,
         thresholds: Sequence[float] | None = None, batch: int = 2, repeats: int = 3, seed: int = 0,
         max_plans: int = 24, threads: int = 0, model: Any = None, checkpoint: str | Path | None = None,
         validate: bool = True, validate_tries: int = 3, report: str | Path | None = None, force: bool = False,
         progress: Callable[[str], None] | None = None):
    """The fastest refresh schedule x per-graph precision plan within a fidelity ``budget`` on ``target``,
    written as a new bundle at ``output`` that runs the plan by default there (``validation.tune``).

    ``budget``: ``final_psnr=DB`` (at least), ``rel_l2=X`` (at most) or ``cosine=C`` of the final
    samples against the fp32 every-step sampler on the same backend (same noise and conditioning),
    or ``NAME=V`` with ``scorer``: ``fn(samples, reference) -> float`` (higher is better), or a
    ``dualrate.validation.tune_space.Scorer`` that says which way it points. ``plans`` (plan texts),
    ``every`` (K values) and ``thresholds`` (calibrated refresh) narrow the search; ``max_plans``
    caps the candidates measured. ``model`` is the bundle's DualRateModel where it was exported from
    Python. ``report``: a folder for ``tune.json`` and ``tune.html`` (the Pareto front).
    A written bundle that fails ``validate`` is removed and the next-fastest plan within the budget is
    written instead, up to ``validate_tries`` bundles. Returns a ``TuneResult``: ``.met``, ``.chosen``,
    ``.bundle``, ``.doc``, ``.exit_code``; when nothing within the budget exists or validates, ``met``
    is False and no bundle is left.
    """
    from dualrate.validation.tune import TuneOptions
    from dualrate.validation.tune import tune as run_tune

    opts = TuneOptions(target=target, budget=budget, scorer=scorer, plans=None if plans is None else list(plans),
                       every=None if every is None else list(every),
                       thresholds=None if thresholds is None else list(thresholds), batch=batch, repeats=repeats,
                       seed=seed, max_plans=max_plans, threads=threads, model=model,
                       checkpoint=None if checkpoint is None else Path(checkpoint), validate=validate,
                       validate_tries=validate_tries)
    return run_tune(_bundle(bundle).path, output, opts, report=report, force=force, progress=progress)


__all__ = ["bench", "ValidationReport", "compile", "export", "open_runner", "sample", "sampler_options", "tune",
           "validate"]
