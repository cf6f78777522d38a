"""What ``dualrate tune`` searches and judges by: budgets, refresh schedules, precision plans.

* A **budget** is ``METRIC=VALUE``: ``final_psnr`` (dB, at least), ``rel_l2`` (at most) or
  ``cosine`` (at least) of a candidate's final samples against the fp32 every-step reference,
  computed by ``validation.metrics.compare``; or any name with a user ``scorer`` (Python API).
* A **schedule** is a resolved list of refresh steps with where it came from: ``every_k`` for
  K in powers of two up to N/4 of the bundle's N steps (K = 1 is every step, which only pays
  at a reduced precision), the bundle's own schedule, and ``calibrated`` thresholds, measured
  like ``--refresh-calibrated`` (``exporter.refresh_calibration``) but on the backend's fp32
  runner, so no PyTorch is needed for the search.
* A **precision plan** is one of ``parse_plan`` over the target's precisions, per graph; a
  backend's new precision (int8) joins the search without a change here.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from dualrate.exporter.errors import BadInputError
from dualrate.targets.precision_plan import PrecisionPlan, parse_plan

DEFAULT_THRESHOLDS = (0.05, 0.1, 0.2)


@dataclass(frozen=True)
class Scorer:
    """``fn(samples, reference) -> float`` (both float32 ``[N, C, H, W]``); ``higher_is_better``
    says which way the budget points (a PSNR floor, a rel-L2 ceiling)."""

    name: str
    fn: Callable[[np.ndarray, np.ndarray], float]
    higher_is_better: bool = True

    def meets(self, value: float | None, budget: float) -> bool:
        if value is None or math.isnan(value):
            return False
        return value >= budget if self.higher_is_better else value <= budget

    def rank(self, value: float | None) -> float:
        """Larger is better whichever way the metric points; a missing or NaN score ranks last."""
        if value is None or math.isnan(value):
            return -math.inf
        return float(value) if self.higher_is_better else -float(value)


def _metric(field: str) -> Callable[[np.ndarray, np.ndarray], float]:
    def score(samples: np.ndarray, reference: np.ndarray) -> float:
        from .metrics import compare

        return float(getattr(compare(samples, reference), field))
    return score


BUILTIN_SCORERS = {"final_psnr": Scorer("final_psnr", _metric("psnr_db"), True),
                   "rel_l2": Scorer("rel_l2", _metric("rel_l2"), False),
                   "cosine": Scorer("cosine", _metric("cosine"), True)}


def parse_budget(text: str, scorer: Scorer | Callable[..., float] | None = None) -> tuple[Scorer, float]:
    """``METRIC=VALUE`` -> (scorer, value). With a user ``scorer`` the metric is its name (a bare
    callable takes the budget's name and counts higher as better)."""
    name, eq, value = (s.strip() for s in str(text).partition("="))
    known = ", ".join(BUILTIN_SCORERS)
    if not eq or not name or not value:
        raise BadInputError(f"--budget {text!r}: expected METRIC=VALUE, e.g. final_psnr=30 (metrics: {known})")
    try:
        bound = float(value)
    except ValueError:
        raise BadInputError(f"--budget {text!r}: {value!r} is not a number") from None
    if not math.isfinite(bound):
        raise BadInputError(f"--budget {text!r}: the value must be finite")
    if scorer is not None:
        if not isinstance(scorer, Scorer):
            if not callable(scorer):
                raise BadInputError(f"scorer {scorer!r} is not callable; pass fn(samples, reference) -> float")
            scorer = Scorer(name, scorer, True)
        if scorer.name != name:
            raise BadInputError(f"--budget {text!r} names {name!r}, but the scorer given is {scorer.name!r}")
        return scorer, bound
    if name not in BUILTIN_SCORERS:
        raise BadInputError(f"--budget {text!r}: unknown metric {name!r}; known: {known} "
                            "(other metrics need a scorer: dualrate.tune(..., scorer=fn))")
    return BUILTIN_SCORERS[name], bound


@dataclass(frozen=True)
class Schedule:
    """Refresh steps and their origin: ``every_k`` (``param`` = K), ``calibrated`` (the threshold),
    or ``bundle`` (the schedule the bundle was exported with)."""

    kind: str
    param: float | int | None
    steps: tuple[int, ...]

    @property
    def name(self) -> str:
        if self.kind == "every_k":
            return "every step" if self.param == 1 else f"every {self.param}"
        if self.kind == "calibrated":
            return f"calibrated {self.param:g}"
        return "bundle's"

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "param": self.param, "name": self.name, "steps": list(self.steps),
                "encoder_steps": len(self.steps)}


def every_k_values(num_steps: int, given: Sequence[int] | None = None) -> list[int]:
    """K values to try: ``given``, else 1 and the powers of two up to N/4 (at least one refresh in
    four steps; sparser ones cost fidelity faster than they save time on a light denoiser)."""
    if given is not None:
        bad = [k for k in given if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_steps]
        if bad:
            raise BadInputError(f"--every {bad[0]!r}: expected integers in 1..{num_steps} (the bundle's steps)")
        return sorted(set(given))
    out, k = [1], 2
    while k <= max(2, num_steps // 4):
        out.append(k)
        k *= 2
    return out


def check_thresholds(given: Sequence[float] | None) -> list[float]:
    values = list(DEFAULT_THRESHOLDS if given is None else given)
    for t in values:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise BadInputError(f"--thresholds {t!r}: expected positive numbers (relative feature drift, e.g. 0.1)")
    return sorted(set(float(t) for t in values))


def dedupe(schedules: Sequence[Schedule]) -> list[Schedule]:
    """One schedule per distinct step list (the first named wins), sparsest first."""
    seen: dict[tuple[int, ...], Schedule] = {}
    for s in schedules:
        seen.setdefault(s.steps, s)
    return sorted(seen.values(), key=lambda s: (len(s.steps), s.steps))


def candidate_plans(graphs: Sequence[str], precisions: Sequence[str], given: Sequence[str] | None = None,
                    target: str | None = None) -> list[PrecisionPlan]:
    """``given`` plan texts (checked), else every per-graph combination of ``precisions``."""
    if given is not None:
        plans = [parse_plan(text, graphs, precisions, target) for text in given]
    else:
        plans = [parse_plan(dict(zip(graphs, combo)), graphs, precisions, target)
                 for combo in itertools.product(precisions, repeat=len(graphs))]
        plans.sort(key=lambda p: p.uniform is None)      # uniform plans first: what a screen must not cut
    return list(dict.fromkeys(plans))


def is_reference(plan: PrecisionPlan, schedule: Schedule, num_steps: int) -> bool:
    """The fp32 every-step sampler: what candidates are judged against, not a candidate."""
    return plan.uniform == "fp32" and len(schedule.steps) == num_steps


def pareto_front(points: Sequence[dict[str, Any]], scorer: Scorer) -> list[dict[str, Any]]:
    """The points no other point beats on both time (lower) and score (the scorer's direction),
    fastest first: walking by time, a point joins when it scores strictly better than every
    faster one. A point without a score (NaN: non-finite samples) is never on it."""
    ordered = sorted(points, key=lambda p: (p["time_s"], -scorer.rank(p["score"])))
    front: list[dict[str, Any]] = []
    for p in ordered:
        if scorer.rank(p["score"]) > (scorer.rank(front[-1]["score"]) if front else -math.inf):
            front.append(p)
    return front


__all__ = ["BUILTIN_SCORERS", "DEFAULT_THRESHOLDS", "Schedule", "Scorer", "candidate_plans", "check_thresholds",
           "dedupe", "every_k_values", "is_reference", "pareto_front", "parse_budget"]
