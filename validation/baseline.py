"""``dualrate validate --baseline PREVIOUS.json``: judge a run against an earlier report.

Gates say whether a backend is close enough to the reference; a baseline says whether it moved.
Every metric of every numeric check (rel-L2, max abs, max rel, the smallest passing atol,
1 - cosine, and PSNR as its error ``10^(-PSNR/20)``), and the worst drift of the free-running
state, is compared with the same check of an earlier report of the same bundle (spec and graph
hashes) on the same backend. A metric *regresses* when

    new > factor * baseline + epsilon         (defaults: factor 2, epsilon 1e-8)

or when it turns non-finite; the absolute epsilon keeps 0 -> 1e-9 from tripping. Any regression
makes the run FAILED (exit 1) and names the metric, even when every gate still passes: a runtime
upgrade that moves the numerics shows up in CI. A baseline that is not a dualrate validate report,
or one of another bundle or backend, is refused before anything runs (exit 2).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

from dualrate.exporter.errors import BadInputError

DEFAULT_FACTOR = 2.0
DEFAULT_EPSILON = 1e-8
TOOL = "dualrate validate"
METRICS = ("rel_l2", "max_abs", "max_rel", "min_atol_at_rtol", "one_minus_cosine", "psnr_error")


def is_report(doc: Any) -> bool:
    """Whether ``doc`` is a results document of ``dualrate validate``."""
    return (isinstance(doc, dict) and doc.get("tool") == TOOL and isinstance(doc.get("format_version"), int)
            and isinstance(doc.get("layers"), list) and isinstance(doc.get("bundle"), dict)
            and isinstance(doc.get("target"), dict) and isinstance(doc["bundle"].get("spec_sha256"), str)
            and isinstance(doc["bundle"].get("graphs"), dict))


def load_report(path: str | Path, what: str = "--baseline") -> dict[str, Any]:
    """A dualrate validate report from ``path``; BadInputError (exit 2, one line) for anything else."""
    from dualrate.exporter.jsonio import read_json

    doc = read_json(Path(path), f"{what} {path}", BadInputError)
    if not is_report(doc):
        raise BadInputError(f"{what} {path}: not a dualrate validate report (expected the JSON that "
                            "`dualrate validate --json FILE` or --report DIR writes)")
    return doc


def bundle_identity(doc: Mapping[str, Any]) -> tuple[str, tuple[tuple[str, str], ...]]:
    """What makes two reports reports of one bundle: the spec's and every graph's sha256."""
    b = doc.get("bundle") or {}
    return str(b.get("spec_sha256")), tuple(sorted((str(k), str(v)) for k, v in (b.get("graphs") or {}).items()))


def check_baseline(baseline: Mapping[str, Any], identity: tuple[str, tuple[tuple[str, str], ...]], backend: str,
                   path: str | Path) -> None:
    """BadInputError unless ``baseline`` is a report of the bundle ``identity`` on ``backend``."""
    if bundle_identity(baseline) != identity:
        got = bundle_identity(baseline)
        what = "spec" if got[0] != identity[0] else "graphs"
        raise BadInputError(f"--baseline {path}: a report of another bundle (its {what} sha256 differs from this "
                            "bundle's); compare runs of the same bundle")
    other = (baseline.get("target") or {}).get("backend")
    if other != backend:
        raise BadInputError(f"--baseline {path}: a report of target {other}, not {backend}; compare runs on the "
                            "same target")


def _error_values(m: Mapping[str, Any]) -> dict[str, float | None]:
    """The metrics of a check as errors (bigger is worse); None where the value is NaN/undefined."""
    def num(x: Any) -> float | None:
        return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None

    cos = num(m.get("cosine"))
    psnr = m.get("psnr_db")
    if psnr is None:           # JSON null: +inf (an exact match) when nothing differs, else undefined
        psnr_err = 0.0 if not m.get("non_finite") and m.get("max_abs") == 0 else None
    else:
        psnr_err = 10 ** (-float(psnr) / 20) if num(psnr) is not None else None
    return {"rel_l2": num(m.get("rel_l2")), "max_abs": num(m.get("max_abs")), "max_rel": num(m.get("max_rel")),
            "min_atol_at_rtol": num(m.get("min_atol_at_rtol")),
            "one_minus_cosine": None if cos is None else max(0.0, 1.0 - cos), "psnr_error": psnr_err}


def _checks(doc: Mapping[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = {}
    for layer in doc.get("layers") or []:
        for c in layer.get("checks") or []:
            if isinstance(c, dict) and isinstance(c.get("metrics"), dict):
                out[(str(layer.get("layer")), str(c.get("graph")), str(c.get("output")))] = c["metrics"]
    drift = [v for v in ((doc.get("drift") or {}).get("rel_l2") or [])]
    if drift:
        finite = [float(v) for v in drift if isinstance(v, (int, float)) and math.isfinite(v)]
        out[("free_running", "sampler", "drift")] = {
            "rel_l2": max(finite) if len(finite) == len(drift) else None,
            "non_finite": len(drift) - len(finite)}
    return out


def compare(doc: Mapping[str, Any], baseline: Mapping[str, Any], path: str | Path = "",
            factor: float = DEFAULT_FACTOR, epsilon: float = DEFAULT_EPSILON) -> dict[str, Any]:
    """Every metric of ``doc`` against the same check of ``baseline``; returns the ``baseline``
    section of the results document (``regressions`` lists each metric that grew, worst first)."""
    if not (factor >= 1.0) or not (epsilon >= 0.0):
        raise BadInputError(f"--baseline-factor {factor:g} / --baseline-epsilon {epsilon:g}: expected a factor >= 1 "
                            "and an epsilon >= 0")
    now, then = _checks(doc), _checks(baseline)
    regressions, compared = [], 0
    for key, m in now.items():
        if key not in then:
            continue
        old_m, new_m = then[key], m
        if (new_m.get("non_finite") or 0) > (old_m.get("non_finite") or 0):
            regressions.append(_regression(key, "non_finite", old_m.get("non_finite") or 0, new_m["non_finite"], math.inf))
        old, new = _error_values(old_m), _error_values(new_m)
        for metric in METRICS:
            a, b = old.get(metric), new.get(metric)
            if a is None:
                continue            # nothing to compare against (NaN or absent in the baseline)
            compared += 1
            if b is None:           # undefined now; non-finite values were named above
                if not new_m.get("non_finite"):
                    regressions.append(_regression(key, metric, a, None, math.inf))
            elif b > factor * a + epsilon:
                regressions.append(_regression(key, metric, a, b, b / a if a > 0 else math.inf))
    regressions.sort(key=lambda r: -r["ratio"] if math.isfinite(r["ratio"]) else -math.inf)
    b_target, d_target = baseline.get("target") or {}, doc.get("target") or {}
    return {"path": str(path), "factor": factor, "epsilon": epsilon, "compared": compared,
            "checks_missing": sorted("/".join(k) for k in set(then) - set(now)),
            "baseline_verdict": baseline.get("verdict"),
            "baseline_precision": b_target.get("effective_precision") or b_target.get("requested_precision"),
            "precision": d_target.get("effective_precision") or d_target.get("requested_precision"),
            "baseline_runtime_version": b_target.get("runtime_version"),
            "runtime_version": d_target.get("runtime_version"),
            "regressions": regressions, "passed": not regressions}


def _regression(key: tuple[str, str, str], metric: str, old: float, new: float | None, ratio: float) -> dict[str, Any]:
    layer, graph, output = key
    return {"layer": layer, "graph": graph, "output": output, "metric": metric, "baseline": old, "value": new,
            "ratio": ratio}


def describe(r: Mapping[str, Any], factor: float, epsilon: float) -> str:
    """One regression as text: ``graph encoder/feat0 rel_l2 3.1e-07 > 2 x baseline 1.2e-07 (+1e-08)``."""
    where = f"{r['layer']} {r['graph']}/{r['output']} {r['metric']}"
    if r["value"] is None:
        return f"{where} is non-finite (baseline {r['baseline']:.3g})"
    if r["metric"] == "non_finite":
        return f"{where}: {r['value']} non-finite values (baseline {r['baseline']})"
    return f"{where} {r['value']:.3g} > {factor:g} x baseline {r['baseline']:.3g} (+{epsilon:g})"


def apply(doc: dict[str, Any], section: dict[str, Any]) -> dict[str, Any]:
    """Record the comparison in ``doc``; a regression makes the run FAILED (exit 1), naming the
    worst metric as the first failure unless a gate already failed."""
    doc["baseline"] = section
    if section["regressions"]:
        if doc.get("verdict") != "FAILED":
            r = section["regressions"][0]
            doc["first_failure"] = {"layer": "baseline", "graph": r["graph"], "output": r["output"], "step": None,
                                    "reasons": [describe(r, section["factor"], section["epsilon"])],
                                    "min_atol_at_rtol": None}
        doc["verdict"], doc["exit_code"] = "FAILED", 1
    return doc
