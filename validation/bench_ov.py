"""OpenVINO's own ``benchmark_app`` on the IR the OpenVINO runner loads: a cross-check of bench's per-graph latency.

For each graph, ``benchmark_app`` runs the compiled target's ``<graph>.xml`` (the file the runner
reads) reshaped to the rows per call of the bench loop (``-shape``), with the runner's own CPU
properties (``-load_config``: latency hint, one stream, the bench's thread count, the inference
precision hint recorded at compile), the sync API and one infer request, for ``seconds``. Its
median and average latency come from its JSON statistics report (``-report_type no_counters
-json_stats``); the configuration it really compiled with is read from its log, so a mismatch
(streams, threads, precision) shows. bench brackets its timed repeats with two such runs, so
load that drifts during the run hits both sides alike.

``benchmark_app``'s UI refuses ``-nthreads``/``-nstreams`` together with ``-hint latency``; the
properties file sets the same properties without that restriction (and exactly as the runner sets them).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping

REPORT = "benchmark_report.json"
CONFIG_KEYS = ("PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS", "INFERENCE_PRECISION_HINT")
_CONFIG_LINE = re.compile(r"^\[ INFO \]\s+([A-Z_]+):\s*(.*)$")


def benchmark_app_command() -> list[str] | None:
    """The ``benchmark_app`` console script of the OpenVINO beside this interpreter (else on PATH), or None.

    (``python -m openvino.tools.benchmark.main`` does not run: that module has no ``__main__`` guard.)
    """
    beside = Path(sys.executable).with_name("benchmark_app")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("benchmark_app")
    return [found] if found else None


def shape_argument(xml: Path, rows: int) -> str:
    """``-shape`` for every input of the IR with ``rows`` on axis 0 (the batch axis of every graph
    input, as the runner binds them); ValueError if another axis is dynamic."""
    import openvino as ov

    parts = []
    for port in ov.Core().read_model(str(xml)).inputs:
        dims = list(port.get_partial_shape())
        rest = []
        for d in dims[1:]:
            if not d.is_static:
                raise ValueError(f"input {port.get_any_name()} of {xml.name} has a dynamic axis besides the batch")
            rest.append(str(d.get_length()))
        parts.append(f"{port.get_any_name()}[{','.join([str(rows), *rest])}]")
    return ",".join(parts)


def parse_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """Latencies (ms) and iterations from ``benchmark_report.json`` (``execution_results``); with the
    default ``-latency_percentile`` 50, its ``latency (ms)`` is the median."""
    res = report["execution_results"]
    return {"median_ms": float(res["latency (ms)"]), "average_ms": float(res["avg latency"]),
            "min_ms": float(res["min latency"]), "max_ms": float(res["max latency"]),
            "iterations": int(res["total number of iterations"]),
            "compile_ms": float(res["compile model time (ms)"])}


def parse_config(log: str) -> dict[str, str]:
    """The compiled model's properties that decide latency, as benchmark_app printed them (step 8)."""
    out: dict[str, str] = {}
    for line in log.splitlines():
        m = _CONFIG_LINE.match(line.strip())
        if m and m.group(1) in CONFIG_KEYS and m.group(1) not in out:
            out[m.group(1)] = m.group(2).strip()
    return out


def run_benchmark_app(xml: Path, rows: int, properties: Mapping[str, str], seconds: float = 10.0,
                      device: str = "CPU", command: list[str] | None = None) -> dict[str, Any]:
    """One ``benchmark_app`` run on ``xml`` at ``rows`` rows with ``properties``; the parsed report,
    the configuration it compiled with and the command line. RuntimeError with its last line on failure."""
    command = command or benchmark_app_command()
    if command is None:
        raise RuntimeError("benchmark_app not found (it comes with the openvino package)")
    with tempfile.TemporaryDirectory(prefix="dualrate-benchmark-app-") as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({device: {k: str(v) for k, v in properties.items()}}))
        folder = Path(tmp) / "report"
        folder.mkdir()                       # benchmark_app does not create it
        argv = [*command, "-m", str(xml), "-d", device, "-hint", "latency", "-api", "sync", "-nireq", "1",
                "-load_config", str(config), "-shape", shape_argument(xml, rows), "-t", f"{seconds:g}",
                "-report_type", "no_counters", "-report_folder", str(folder), "-json_stats"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=max(120.0, 10 * seconds))
        log = proc.stdout + proc.stderr
        if proc.returncode != 0 or not (folder / REPORT).is_file():
            last = next((ln for ln in reversed(log.splitlines()) if ln.strip()), f"exit {proc.returncode}")
            raise RuntimeError(f"benchmark_app failed on {xml.name}: {last.strip()}")
        out = parse_report(json.loads((folder / REPORT).read_text()))
    out["config"] = parse_config(log)
    out["rows"] = rows
    out["command"] = " ".join(["benchmark_app", *argv[len(command):]]).replace(tmp, "<tmp>")
    return out


def graph_properties(record: Mapping[str, Any], graph: str, threads: int) -> dict[str, str]:
    """The CPU properties the OpenVINO runner compiles ``graph`` with: the compile record's (per graph
    where a plan recorded them), with the bench's thread count, as ``open_runner`` sets it."""
    per_graph = (record.get("graphs") or {}).get(graph) or {}
    props = dict(per_graph.get("properties") or record.get("properties") or {})
    props["INFERENCE_NUM_THREADS"] = str(threads)
    return props


def cross_check(ours_ms: Mapping[str, float | None], runs: Mapping[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per graph: bench's median latency at benchmark_app's row count (in the sampler loop) against the
    mean of the bracketing runs' medians (and averages); ``ratio`` = ours / benchmark_app, ``within_10pct``
    the issue's target. Where the runs carry ``ours_back_to_back_ms`` (the runner called back to back
    right before each benchmark_app run: the same calling pattern, the same moment's load), their mean
    and ``ratio_back_to_back`` too."""
    out: dict[str, Any] = {}
    for graph, graph_runs in runs.items():
        median = sum(r["median_ms"] for r in graph_runs) / len(graph_runs)
        average = sum(r["average_ms"] for r in graph_runs) / len(graph_runs)
        ours = ours_ms.get(graph)
        b2b = [r["ours_back_to_back_ms"] for r in graph_runs if r.get("ours_back_to_back_ms")]
        b2b_ms = sum(b2b) / len(b2b) if b2b else None
        out[graph] = {"ours_ms": ours, "benchmark_app_median_ms": median, "benchmark_app_average_ms": average,
                      "ratio": None if not ours else ours / median,
                      "within_10pct": None if not ours else abs(ours / median - 1.0) <= 0.10,
                      "ours_back_to_back_ms": b2b_ms,
                      "ratio_back_to_back": None if b2b_ms is None else b2b_ms / median,
                      "back_to_back_within_10pct": None if b2b_ms is None else abs(b2b_ms / median - 1.0) <= 0.10,
                      "runs": list(graph_runs)}
    return out


__all__ = ["benchmark_app_command", "cross_check", "graph_properties", "parse_config", "parse_report",
           "run_benchmark_app", "shape_argument"]
