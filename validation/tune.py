"""``dualrate tune``: the fastest refresh schedule x precision plan within a fidelity budget.

The search, on one backend (``TuneOptions.target``):

1. **Reference**: the bundle's sampler with the encoder at every step, at fp32, on the same
   backend — the heavy single-rate sampler a user would otherwise run. Its final samples are what
   every candidate is scored against (same Philox noise, same conditioning rows, same batch), and
   its time is the baseline of each speedup (timed before and after the search, so load that
   changed meanwhile shows in ``reference.drift`` and a note). We use the backend's own fp32 run rather than the
   golden ``every_step_seed*`` trajectories because those hold only the golden batch and seeds,
   while the search picks its own; the backend's fp32 run sits at the fp32 floor of PyTorch
   (rel-L2 ~1e-7, >130 dB, docs/validation.md), far inside any budget worth searching.
2. **Schedules** (``tune_space``): every-K, the bundle's own, calibrated thresholds (measured on
   the backend's fp32 runner with ``exporter.refresh_calibration``).
3. **Plans**: every per-graph precision plan of the target (``parse_plan``), or those given.
4. Each candidate (plan x schedule, the reference itself excluded) is timed with bench's harness
   (``TimedRunner``/``warm_up``/``timed_sample``: a warm-up, then ``repeats`` timed runs, the
   median counts) and scored from its first run. When the product exceeds ``max_plans``, a screen
   comes first (schedules at fp32, then plans at the bundle's schedule; two thirds of the cap at
   most), then the product of the Pareto-optimal ones, up to ``max_plans`` evaluations in all.
5. The **chosen** plan is the fastest that meets the budget; ``tune_bundle`` writes it as a new
   bundle that records the plan as its default precision, and validates it.

Nothing is written before every input has been checked (budget, target, plans, output, the
model the new bundle is exported from).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from dualrate.exporter.bundle import Bundle, open_bundle
from dualrate.exporter.errors import BackendUnavailableError, BadInputError, DualrateError, NonFiniteError
from dualrate.exporter.golden import example_conditioning
from dualrate.exporter.spec import Spec
from dualrate.exporter.spec_builder import every_step, with_refresh_steps

from .bench import TimedRunner, timed_sample, warm_up
from .tune_space import (Schedule, Scorer, candidate_plans, check_thresholds, dedupe, every_k_values, is_reference,
                         pareto_front, parse_budget)

Progress = Callable[[str], None]


@dataclass
class TuneOptions:
    target: str = "openvino"
    budget: str = "final_psnr=30"
    scorer: Any = None                    # a tune_space.Scorer or fn(samples, reference) -> float
    plans: Sequence[str] | None = None    # plan texts to try (default: every per-graph plan of the target)
    every: Sequence[int] | None = None    # every-K values (default: 1 and powers of two up to N/4)
    thresholds: Sequence[float] | None = None   # calibrated refresh thresholds (default 0.05, 0.1, 0.2)
    batch: int = 2                        # samples per sampler run
    repeats: int = 3                      # timed runs per candidate (median)
    seed: int = 0
    max_plans: int = 24                   # candidates evaluated at most (screening runs included)
    threads: int = 0
    checkpoint: Path | None = None        # the source checkpoint, where the manifest's path moved
    model: Any = None                     # the source DualRateModel of a bundle exported from Python
    validate: bool = True                 # validate the written bundle under its own gates
    validate_tries: int = 3               # bundles written at most while the chosen ones fail validation


@dataclass
class TuneResult:
    """``doc``: the results document (``tune.json``); ``chosen``: the chosen point or None;
    ``bundle``: the written bundle (None when the budget was not met)."""

    doc: dict[str, Any]
    chosen: dict[str, Any] | None = None
    bundle: Bundle | None = None
    validation: Any = None

    @property
    def met(self) -> bool:
        return self.chosen is not None

    @property
    def exit_code(self) -> int:
        if not self.met:
            return 1
        v = self.doc.get("validation") or {}
        return int(v.get("exit_code", 0))


@dataclass
class _Search:
    """State of one run: the backend, the reference, a runner per plan."""

    bundle: Bundle
    target: Any
    opts: TuneOptions
    scorer: Scorer
    budget: float
    cond: dict[str, np.ndarray]
    nulls: dict[str, np.ndarray]
    runners: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    reference: dict[str, Any] | None = None
    points: list[dict[str, Any]] = field(default_factory=list)
    not_measured: int = 0                  # candidates left out by the --max-plans screen

    def runner(self, plan: Any) -> Any:
        """The plan's compiled runner (compiled once, cached in the bundle); a plan the backend
        refuses is skipped with its one-line reason."""
        key = plan.text
        if key not in self.runners:
            try:
                compiled = self.target.compile(self.bundle, key)
                self.runners[key] = (self.target.open_runner(self.bundle, compiled, threads=self.opts.threads),
                                     compiled)
            except DualrateError as exc:          # a plan this backend refuses or cannot build here
                self.skipped[key] = str(exc)
                self.runners[key] = None
        return self.runners[key]

    def run(self, plan: Any, spec: Spec) -> dict[str, Any] | None:
        """Warm-up, then ``repeats`` timed sampler runs; the samples of the first."""
        got = self.runner(plan)
        if got is None:
            return None
        runner, compiled = got
        timed = TimedRunner(runner, tuple(self.bundle.graph_names()))
        warm_up(runner, spec, self.cond, self.nulls, self.opts.batch, self.opts.seed)
        runs = [timed_sample(timed, spec, self.cond, self.nulls, self.opts.batch, self.opts.seed)
                for _ in range(self.opts.repeats)]
        first = runs[0]
        samples = first["decoded"] if first.get("decoded") is not None else first["x"]
        return {"time_s": statistics.median(r["wall_s"] for r in runs), "times_s": [r["wall_s"] for r in runs],
                "samples": samples, "graph_precisions": compiled.graph_precisions}

    def measured(self, plan: Any, schedule: Schedule) -> dict[str, Any] | None:
        """The point of (plan, schedule) if it was measured already."""
        return next((p for p in self.points
                     if p["plan"] == plan.text and tuple(p["schedule"]["steps"]) == schedule.steps), None)

    def evaluate(self, plan: Any, schedule: Schedule, stage: str) -> dict[str, Any] | None:
        if self.measured(plan, schedule) is not None:
            return self.measured(plan, schedule)
        try:
            got = self.run(plan, schedule_spec(self.bundle.spec, schedule))
        except NonFiniteError as exc:          # a precision that overflows: a finding, not the end of the search
            self.skipped[f"{plan.text} @ {schedule.name}"] = str(exc)
            return None
        if got is None:
            return None
        score = float(self.scorer.fn(got["samples"], self.reference["samples"]))
        point = {"plan": plan.text, "plan_name": plan.name, "schedule": schedule.as_dict(),
                 "graph_precisions": got["graph_precisions"], "score": score, "time_s": got["time_s"],
                 "times_s": got["times_s"], "meets_budget": self.scorer.meets(score, self.budget), "stage": stage}
        self.points.append(point)
        return point


def schedule_spec(spec: Spec, schedule: Schedule) -> Spec:
    """The bundle's spec with ``schedule``'s refresh steps."""
    if tuple(spec.dual_rate.resolved_refresh_steps) == schedule.steps:
        return spec
    return with_refresh_steps(spec, schedule.steps)


def check_options(opts: TuneOptions) -> None:
    for name, low in (("batch", 1), ("repeats", 1), ("max_plans", 1), ("seed", 0), ("validate_tries", 1)):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise BadInputError(f"--{name.replace('_', '-')} {value!r}: expected an integer >= {low}")


def prepare(bundle_path: str | Path, opts: TuneOptions) -> tuple[Bundle, Any, Scorer, float, list[Any]]:
    """Every check that needs no sampling: (bundle, target, scorer, budget, plans)."""
    from dualrate.targets.base import get_target

    check_options(opts)
    scorer, budget = parse_budget(opts.budget, opts.scorer)
    target = get_target(opts.target)
    target.require()
    reason = target.numeric_unavailable()
    if reason:
        raise BackendUnavailableError(f"target {target.name} cannot run here: {reason}")
    bundle = open_bundle(bundle_path)
    graphs = bundle.graph_names()
    plans = candidate_plans(graphs, target.precisions, opts.plans, target.name)
    for plan in plans if opts.plans is not None else ():
        target.check_precision(plan.text)
    every_k_values(bundle.spec.sampler.num_steps, opts.every)
    check_thresholds(opts.thresholds)
    return bundle, target, scorer, budget, plans


def schedules(search: _Search, stages: Any) -> list[Schedule]:
    """Every-K, the bundle's own and the calibrated schedules (calibrated on the fp32 runner)."""
    from dualrate.exporter.refresh_calibration import calibrate

    spec, opts = search.bundle.spec, search.opts
    n = spec.sampler.num_steps
    out = [Schedule("every_k", k, tuple(range(0, n, k))) for k in every_k_values(n, opts.every)]
    out.append(Schedule("bundle", None, tuple(spec.dual_rate.resolved_refresh_steps)))
    thresholds = check_thresholds(opts.thresholds)
    runner, _ = search.runner(_fp32(search))
    with stages("calibrate", f"calibrating refresh thresholds {', '.join(f'{t:g}' for t in thresholds)} "
                             f"on {search.target.name} fp32", total=len(thresholds)) as advance:
        for t in thresholds:
            cal = calibrate(runner, spec, {"threshold": t, "batch": opts.batch, "seed": opts.seed}, search.nulls)
            out.append(Schedule("calibrated", t, tuple(cal.dual_rate.resolved_refresh_steps)))
            advance()
    return dedupe(out)


def _fp32(search: _Search) -> Any:
    from dualrate.targets.precision_plan import parse_plan

    return parse_plan("fp32", search.bundle.graph_names(), search.target.precisions, search.target.name)


def candidates(plans: Sequence[Any], scheds: Sequence[Schedule], n: int) -> list[tuple[Any, Schedule]]:
    """(plan, schedule) pairs, schedule-major, without the fp32 every-step reference itself."""
    return [(p, s) for s in scheds for p in plans if not is_reference(p, s, n)]


def search_all(search: _Search, plans: list[Any], scheds: list[Schedule], stages: Any) -> None:
    """Evaluate the product, or screen first when it exceeds ``max_plans`` (module docstring)."""
    n = search.bundle.spec.sampler.num_steps
    todo = candidates(plans, scheds, n)
    limit = search.opts.max_plans
    if len(todo) > limit:
        own = next(s for s in scheds if s.steps == tuple(search.bundle.spec.dual_rate.resolved_refresh_steps))
        fp32 = _fp32(search)
        # schedules first (one compiled plan), then plans (uniform ones first); a third of the cap is
        # kept for the product of what the screen finds
        screen = candidates([fp32] if fp32 in plans else plans[:1], scheds, n) + candidates(plans, [own], n)
        screen = list(dict.fromkeys((p.text, s) for p, s in screen))
        by_text = {p.text: p for p in plans}
        _evaluate(search, [(by_text[t], s) for t, s in screen][:max(1, limit * 2 // 3)], "screen", stages)
        front = pareto_front(search.points, search.scorer)
        good_plans = [p for p in plans if any(q["plan"] == p.text for q in front)] or plans[:1]
        good_scheds = [s for s in scheds if any(tuple(q["schedule"]["steps"]) == s.steps for q in front)] or scheds
        rest = [(p, s) for p, s in candidates(good_plans, good_scheds, n) if search.measured(p, s) is None]
        todo = rest[:max(0, limit - len(search.points))]
    _evaluate(search, todo, "search", stages)
    search.not_measured = sum(1 for p, s in candidates(plans, scheds, n)
                              if search.runners.get(p.text, True) is not None and search.measured(p, s) is None)


def _evaluate(search: _Search, todo: Sequence[tuple[Any, Schedule]], stage: str, stages: Any) -> None:
    if not todo:
        return
    label = "screening plans and schedules" if stage == "screen" else "searching plans x schedules"
    with stages(stage, f"{label} ({len(todo)} candidates, {search.opts.repeats} timed runs each)",
                total=len(todo)) as advance:
        for plan, schedule in todo:
            search.evaluate(plan, schedule, stage)
            advance()


def tune(bundle_path: str | Path, output: str | Path, opts: TuneOptions, *, report: str | Path | None = None,
         force: bool = False, progress: Progress | None = None) -> TuneResult:
    """Search, choose, write the chosen plan as a bundle at ``output`` (and the report into
    ``report``: ``tune.json``, ``tune.html``); see the module docstring. A budget no plan meets
    writes the report and no bundle (``TuneResult.met`` False, exit code 1)."""
    from dualrate.exporter.atomic import check_output
    from dualrate.exporter.progress import Stages

    from .tune_bundle import export_source, write_validated
    from .tune_report import write_report

    stages = Stages(progress)
    output = Path(output)
    check_output(output, force)
    if report is not None:
        check_output(Path(report) / "tune.json", force)
    # the checks run outside a stage: bad input fails with its one line and no stage lines around it
    start = time.perf_counter()
    bundle, target, scorer, budget, plans = prepare(bundle_path, opts)
    source = export_source(bundle, opts)
    stages.timings["checks"] = round(time.perf_counter() - start, 3)
    search = _Search(bundle, target, opts, scorer, budget,
                     example_conditioning(bundle.spec, opts.seed, opts.batch, bundle.nulls()), bundle.nulls())
    with stages("reference", f"fp32 every-step reference on {target.name}"):
        got = search.run(_fp32(search), every_step(bundle.spec))
        if got is None:
            raise BadInputError(f"target {target.name} cannot compile bundle {bundle.path} at fp32: "
                                f"{search.skipped.get('fp32')}")
        search.reference = got
    scheds = schedules(search, stages)
    search_all(search, plans, scheds, stages)
    # candidates run one after another, not interleaved with the reference: time it again after the
    # search, so load that changed meanwhile shows (and is averaged) instead of skewing every speedup
    with stages("reference_again", f"fp32 every-step reference on {target.name} again (load drift)"):
        again = search.run(_fp32(search), every_step(bundle.spec))
    search.reference.update(before_s=search.reference["time_s"], after_s=again["time_s"],
                            times_s=search.reference["times_s"] + again["times_s"])
    search.reference["time_s"] = statistics.median(search.reference["times_s"])
    doc = document(search, plans, scheds)
    doc["chosen"], doc["validation_attempts"] = None, []
    result = TuneResult(doc)
    if any(p["meets_budget"] for p in search.points):
        chosen, result.bundle, result.validation, doc["validation_attempts"] = write_validated(
            search, source, output, force, stages)
        doc["chosen"] = result.chosen = chosen
        if result.validation is not None:
            doc["validation"] = {"verdict": result.validation.verdict, "exit_code": result.validation.exit_code,
                                 "first_failure": result.validation.doc.get("first_failure")}
        if chosen is not None:
            doc["output"] = str(output)
    doc["timings"] = dict(stages.timings)
    if report is not None:
        with stages("report", "writing tune.json and tune.html"):
            write_report(doc, Path(report))
        doc["timings"] = dict(stages.timings)
    return result


def document(search: _Search, plans: Sequence[Any], scheds: Sequence[Schedule]) -> dict[str, Any]:
    """The results document: setup, reference, every point, the Pareto front."""
    from dualrate.exporter.version import __version__

    from .bench import machine_info

    b, s, o = search.bundle, search.scorer, search.opts
    front = pareto_front(search.points, s)
    ids = {id(p) for p in front}
    ref = search.reference
    for p in search.points:
        p["on_front"] = id(p) in ids
        p["speedup"] = ref["time_s"] / p["time_s"]
    drift = ref.get("after_s", ref["time_s"]) / ref.get("before_s", ref["time_s"])
    notes = [] if 0.8 <= drift <= 1.25 else [
        f"the machine's load changed during the search: the reference took {ref['before_s']:.3g} s before it and "
        f"{ref['after_s']:.3g} s after it; speedups use the median of both and are uncertain by that much"]
    return {
        "tool": "dualrate tune", "format_version": 1, "dualrate_version": __version__,
        "bundle": str(b.path), "spec_sha256": b.file_hash("spec.json"),
        "target": {"backend": search.target.name, "runtime_version": search.target.runtime_version()},
        "budget": {"metric": s.name, "value": search.budget, "higher_is_better": s.higher_is_better,
                   "text": f"{s.name} {'>=' if s.higher_is_better else '<='} {search.budget:g}"},
        "setup": {"num_steps": b.spec.sampler.num_steps, "batch": o.batch, "repeats": o.repeats, "seed": o.seed,
                  "max_plans": o.max_plans, "threads": o.threads,
                  "bundle_refresh_steps": list(b.spec.dual_rate.resolved_refresh_steps),
                  "scored_on": "decoded" if b.spec.model.decoder is not None else "final samples"},
        "reference": {"what": f"fp32, encoder at every step, on {search.target.name}", "time_s": ref["time_s"],
                      "times_s": ref["times_s"], "before_s": ref.get("before_s"), "after_s": ref.get("after_s"),
                      "drift": drift},
        "notes": notes,
        "plans": [p.text for p in plans],
        "schedules": [sc.as_dict() for sc in scheds],
        "points": search.points,
        "pareto_front": front,
        "skipped": dict(search.skipped),
        "not_measured": {"count": max(0, search.not_measured),
                         "why": f"left out by the screen under --max-plans {o.max_plans}"},
        "machine": machine_info(),
    }


def summary(result: TuneResult) -> str:
    """The console lines: the front, then the choice (or why there is none)."""
    doc = result.doc
    r = doc["reference"]
    lines = [f"reference: {r['what']}: {r['time_s']:.2f} s (median; {r['before_s']:.2f} s before the search, "
             f"{r['after_s']:.2f} s after)"]
    lines += [f"note: {n}" for n in doc.get("notes") or []]
    lines.append(f"Pareto front ({doc['budget']['metric']} vs time, {len(doc['points'])} candidates measured):")
    for p in doc["pareto_front"]:
        mark = "*" if p is doc.get("chosen") else ("+" if p["meets_budget"] else " ")
        lines.append(f"  {mark} {p['plan']:28s} {p['schedule']['name']:16s} {_score(p['score'])} "
                     f"{p['time_s']:.3f} s  {p['speedup']:.2f}x")
    return "\n".join(lines)


def failure_text(doc: dict[str, Any]) -> str:
    """Why nothing was chosen: no plan meets the budget, or none within it validates."""
    tried = doc.get("validation_attempts") or []
    if not tried:
        return f"no plan meets the budget {doc['budget']['text']}; {best_text(doc)}"
    shown = "; ".join(f"{a['plan']} with {a['schedule']} refresh: {_failure_line(a['first_failure'])}" for a in tried)
    return (f"{len(tried)} plan(s) within the budget {doc['budget']['text']} failed dualrate validate under the new "
            f"bundle's own gates ({shown}); narrow --plans or raise the budget")


def _failure_line(ff: dict[str, Any]) -> str:
    where = "/".join(str(ff[k]) for k in ("layer", "graph", "output") if ff.get(k))
    return f"{where} {'; '.join(ff.get('reasons') or [])}".strip()


def best_text(doc: dict[str, Any]) -> str:
    """The best-scoring point, for the message of a budget nobody meets."""
    b = doc["budget"]
    rank = Scorer(b["metric"], lambda *_: 0.0, b["higher_is_better"]).rank
    best = max(doc["points"], key=lambda p: rank(p["score"]), default=None)
    if best is None:
        return "no candidate could be measured"
    return (f"the best plan found is {best['plan']} with {best['schedule']['name']} refresh: "
            f"{b['metric']} {_score(best['score'])} ({best['speedup']:.2f}x the reference's speed)")


def _score(value: Any) -> str:
    """A score as text; a PSNR of a bit-identical result is infinite (null in JSON)."""
    if value is None or value == float("inf"):
        return "exact"
    return f"{value:.4g}"


__all__ = ["TuneOptions", "TuneResult", "best_text", "failure_text", "summary", "tune"]
