"""``dualrate tune``'s report: ``tune.json`` (the results document) and ``tune.html`` (the Pareto plot).

The page is the jinja2 template ``templates/tune.html.j2`` through the report environment
(``reports.environment``, autoescaping, the shared ``report.css``); the plot is a matplotlib figure
(Agg canvas per figure, no pyplot) inlined as SVG like the drift curve: every measured point
(``id="points"``), the Pareto front as a step line (``id="front"``), the budget as a dashed line
(``id="budget"``), the chosen point ringed (``id="chosen"``).
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from dualrate.exporter.atomic import atomic_write_bytes

from .reports import _fmt, environment, machine_text, write_json

# JSON and the plot have no infinity: a bit-identical PSNR is drawn this far above the best finite one
EXACT_HEADROOM_DB = 10.0


def _plot_scores(points: list[dict[str, Any]], budget: dict[str, Any]) -> list[float]:
    finite = [p["score"] for p in points if p["score"] is not None and math.isfinite(p["score"])]
    top = max(finite + [budget["value"]]) + EXACT_HEADROOM_DB
    return [top if p["score"] is None or p["score"] == math.inf else p["score"] for p in points]


def pareto_svg(doc: dict[str, Any]) -> str:
    """Score vs time of every point, the front, the budget line and the chosen plan, as inline SVG."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points, front, budget = doc["points"], doc["pareto_front"], doc["budget"]
    ys = _plot_scores(points, budget)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "dualrate", "font.size": 9}):
        fig = Figure(figsize=(6.8, 3.6), dpi=100)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.set_xscale("log")
        ax.scatter([p["time_s"] for p in points], ys, s=18, color="#7f8c8d", gid="points", label="measured")
        fy = [ys[points.index(p)] for p in front]
        ax.step([p["time_s"] for p in front], fy, where="post", color="#1f5fa8", linewidth=1.6, marker="o",
                markersize=4, gid="front", label="Pareto front")
        ax.axhline(budget["value"], color="#c0392b", linestyle="--", linewidth=1.2, gid="budget",
                   label=f"budget {budget['text']}")
        ax.axvline(doc["reference"]["time_s"], color="#e67e22", linewidth=1, gid="reference",
                   label="fp32 every-step reference")
        chosen = doc.get("chosen")
        if chosen is not None:
            ax.scatter([chosen["time_s"]], [ys[points.index(chosen)]], s=120, facecolors="none",
                       edgecolors="#27ae60", linewidths=2, gid="chosen", label="chosen")
        ax.set_xlabel("sampler wall time, s (median, log scale)")
        ax.set_ylabel(budget["metric"] + (" (exact drawn on top)" if budget["metric"] == "final_psnr" else ""))
        ax.grid(True, which="major", color="#e5e5e5", linewidth=0.6)
        ax.legend(loc="best", fontsize=7, frameon=False)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def _row(p: dict[str, Any], chosen: Any) -> dict[str, Any]:
    score = "exact" if p["score"] is None or p["score"] == math.inf else _fmt(p["score"], ".4g")
    return {"plan": p["plan"], "schedule": p["schedule"]["name"], "encoder_steps": p["schedule"]["encoder_steps"],
            "effective": ", ".join(f"{g}={v}" for g, v in p["graph_precisions"].items()), "score": score,
            "time": _fmt(p["time_s"], ".3f"), "speedup": _fmt(p["speedup"], ".2f"),
            "meets": p["meets_budget"], "front": p.get("on_front", False), "chosen": p is chosen,
            "stage": p["stage"]}


def render_html(doc: dict[str, Any]) -> str:
    from markupsafe import Markup

    chosen = doc.get("chosen")
    rows = sorted((_row(p, chosen) for p in doc["points"]), key=lambda r: (not r["front"], float(r["time"])))
    context = {"doc": doc, "rows": rows, "svg": Markup(pareto_svg(doc)), "machine": machine_text(doc.get("machine")),
               "chosen": None if chosen is None else _row(chosen, chosen),
               "validation": doc.get("validation"), "timings": doc.get("timings") or {}}
    return environment().get_template("tune.html.j2").render(**context)


def write_report(doc: dict[str, Any], out: Path) -> Path:
    """``out/tune.json`` and ``out/tune.html``; returns the HTML path."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(doc, out / "tune.json")
    path = out / "tune.html"
    atomic_write_bytes(path, render_html(doc).encode("utf-8"))
    return path


__all__ = ["pareto_svg", "render_html", "write_report"]
