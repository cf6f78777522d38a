"""The contenders of one ``dualrate bench`` run, their precisions, sizes on disk and the ratios between them.

Every row names the precision each graph computes in (a backend row: the compile record's
``graph_precisions``; a PyTorch row: its autocast dtype or fp32). A ratio is only formed between
rows that compute in the same precision, with one deliberate exception that says so: an int8 (or
mixed-plan) row against the same backend at fp32, which is the gain of the precision itself.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field
from typing import Any, Mapping

FP32 = "fp32"


@dataclass
class Contender:
    """One timed row: a runner (already wrapped in a ``TimedRunner``), the spec it samples with, and
    what the document says about it (``runtime``, ``schedule``, ``precision``, ``graph_precisions`` ...)."""

    key: str
    label: str
    runner: Any
    spec: Any
    info: dict[str, Any] = field(default_factory=dict)


def graph_precisions(compiled: Any, graphs: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Effective precision of each graph of a compiled target (``record["graph_precisions"]``; a record
    from before per-graph plans has one ``effective_precision`` for all)."""
    got = compiled.record.get("graph_precisions") or {}
    return {g: got.get(g) or compiled.record["effective_precision"] for g in graphs}


def uniform(precisions: Mapping[str, str]) -> str | None:
    """The one precision of every graph, or None for a mixed plan."""
    values = set(precisions.values())
    return values.pop() if len(values) == 1 else None


def precision_text(precisions: Mapping[str, str]) -> str:
    """``fp32``, or ``encoder=int8,denoiser=fp32`` for a mixed plan."""
    return uniform(precisions) or ",".join(f"{g}={p}" for g, p in precisions.items())


def artifact_sizes(compiled: Any, graphs: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Bytes on disk of each graph's compiled files in ``BUNDLE/targets/<backend>-<plan>/`` (the record's
    ``files``, attributed by name: ``<graph>.xml``, ``<graph>.onnx.data``, ``<graph>/...``, ``<graph>_...``);
    files of no graph (calibration tables, ...) are ``other``; ``total`` includes them."""
    out = {g: 0 for g in graphs}
    out["other"] = 0
    by_length = sorted(graphs, key=len, reverse=True)     # "encoder_x" is not the graph "encoder" if both exist
    for rel in compiled.record.get("files", {}):
        first = rel.split("/")[0]
        owner = next((g for g in by_length if re.match(rf"{re.escape(g)}($|[._-])", first)), "other")
        out[owner] += (compiled.path / rel).stat().st_size
    out["total"] = sum(out[g] for g in graphs) + out["other"]
    return out


def latency_at_rows(runs: list[dict[str, Any]], graph: str, rows: int) -> float | None:
    """Median latency (s) of ``graph``'s calls with exactly ``rows`` rows over every repeat."""
    times = [t for run in runs for t, r in zip(run["calls"].get(graph, []), run.get("rows", {}).get(graph, []))
             if r == rows]
    return statistics.median(times) if times else None


def comparisons(rows: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``ratio`` = the other row's sampler time over this row's (> 1: this row is faster), for every pair
    that compares like with like: a PyTorch peer against the backend row of its precision (the dual-rate
    row, or the same backend at fp32 for an int8 / mixed plan), and the dual-rate row against the same
    backend at fp32 (``like_for_like`` false: the gain of the lower precision, named as such)."""
    out = []
    backend = [k for k in ("dual_rate", "backend_fp32") if k in rows]
    for key, row in rows.items():
        if not key.startswith("torch_"):
            continue
        against = next((b for b in backend if rows[b]["graph_precisions"] == row["graph_precisions"]), None)
        if against is not None:
            out.append(_ratio(f"vs_{key}" if against == "dual_rate" else f"backend_fp32_vs_{key}",
                              against, key, rows, True))
    if "backend_fp32" in rows:
        out.append(_ratio("vs_backend_fp32", "dual_rate", "backend_fp32", rows, False))
    return out


def _ratio(name: str, row: str, other: str, rows: Mapping[str, Mapping[str, Any]], like: bool) -> dict[str, Any]:
    return {"name": name, "row": row, "against": other, "ratio": rows[other]["time_s"] / rows[row]["time_s"],
            "precision": precision_text(rows[row]["graph_precisions"]),
            "against_precision": precision_text(rows[other]["graph_precisions"]), "like_for_like": like}


def _mb(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}"


def rows_table(doc: Mapping[str, Any]) -> list[str]:
    """The sampler rows (precision, time, first calls) and the ratios, as console lines."""
    rows = doc.get("rows", {})
    width = max([len(r["label"]) for r in rows.values()] + [len("sampler run")]) + 2
    lines = [f"  {'sampler run':<{width}}{'precision':<26}{'time s':>8}{'first calls s':>15}"]
    for key, row in rows.items():
        first = row.get("compile_s", row.get("warm_up_s"))
        note = " (compile)" if "compile_s" in row else ""
        lines.append(f"  {row['label']:<{width}}{precision_text(row['graph_precisions']):<26}{row['time_s']:>8.2f}"
                     f"{'-' if first is None else format(first, '.1f'):>15}{note}")
    for cmp in doc.get("comparisons", []):
        a, b = rows[cmp["row"]], rows[cmp["against"]]
        how = ("same precision" if cmp["like_for_like"] else
               f"the gain of {cmp['precision']} over {cmp['against_precision']} on the same backend")
        lines.append(f"  {cmp['name']:<24}{cmp['ratio']:>6.2f}x  {a['label']} vs {b['label']} ({how})")
    return lines


def sizes_table(doc: Mapping[str, Any]) -> list[str]:
    """Size on disk per graph and precision, as console lines."""
    sizes = doc.get("sizes", {})
    if not sizes:
        return []
    graphs = list(doc["latency_ms"])
    lines = [f"  {'compiled target':<40}" + "".join(f"{g + ' MB':>14}" for g in graphs) + f"{'total MB':>10}"]
    for name, entry in sizes.items():
        prec = entry["graph_precisions"]
        lines.append(f"  {name:<40}" + "".join(f"{_mb(entry['bytes'].get(g)) + ' ' + prec.get(g, ''):>14}"
                                                for g in graphs) + f"{_mb(entry['bytes']['total']):>10}")
    return lines


def benchmark_app_table(doc: Mapping[str, Any]) -> list[str]:
    """Our per-graph latency against OpenVINO's benchmark_app on the same IR, as console lines."""
    check = doc.get("benchmark_app")
    if not check:
        return []
    lines = [f"  {'benchmark_app (same IR)':<26}{'rows':>6}{'ours in loop':>14}{'ours b2b':>10}{'app median':>12}"
             f"{'app mean':>10}{'loop/app':>10}{'b2b/app':>9}"]
    for g, c in check["graphs"].items():
        rows = c["runs"][0]["rows"]
        lines.append(f"  {g:<26}{rows:>6}{_num(c['ours_ms'], 14)}{_num(c.get('ours_back_to_back_ms'))}"
                     f"{c['benchmark_app_median_ms']:>12.1f}{c['benchmark_app_average_ms']:>10.1f}"
                     f"{_num(c['ratio'], 10, '.3f')}{_num(c.get('ratio_back_to_back'), 9, '.3f')}")
    lines.append("  (ms; b2b: the runner called back to back right before each benchmark_app run, as it calls)")
    return lines


def _num(x: float | None, width: int = 10, fmt: str = ".1f") -> str:
    return f"{'-' if x is None else format(x, fmt):>{width}}"


__all__ = ["Contender", "artifact_sizes", "benchmark_app_table", "comparisons", "graph_precisions",
           "latency_at_rows", "precision_text", "rows_table", "sizes_table", "uniform"]
