"""``dualrate report merge A.json B.json ... -o DIR``: one parity matrix from reports made on
different machines (ONNX Runtime and OpenVINO on Linux, Core ML on macOS, TensorRT on a GPU).

Rows are runs (target x precision, with the machine, runtime version and verdict of each),
columns the validation layers; each cell holds the layer's status and its worst metric (the
largest rel-L2 among its checks, named). Written as ``matrix.html`` (jinja2 template),
``matrix.json`` and ``matrix.junit.xml``. Reports of different bundles (spec or graph sha256
differ) or files that are not dualrate validate reports are refused: one line, exit 2, nothing
written. The merged verdict is fail-closed like validate's: FAILED if any run failed, else
NOT RUN if any layer of any run could not run, else PASSED.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

from dualrate.exporter.atomic import atomic_write_bytes
from dualrate.exporter.errors import BadInputError

from .baseline import bundle_identity, load_report
from .reports import STATUS_TEXT, _first_failure_text, _fmt, _jsonable, _not_run_reason, _x, environment, machine_text

LAYER_ORDER = ("structural", "graph", "teacher_forced", "free_running", "refresh_audit", "cache_equivalence")
LAYER_TITLES = {"structural": "structural", "graph": "graph", "teacher_forced": "teacher-forced",
                "free_running": "free-running", "refresh_audit": "refresh audit", "cache_equivalence": "cache \u2261 no-cache"}
FILES = ("matrix.html", "matrix.json", "matrix.junit.xml")
EXIT = {"PASSED": 0, "FAILED": 1, "NOT RUN": 3}


def _cell(layer: dict[str, Any] | None) -> dict[str, Any]:
    if layer is None:
        return {"status": "absent", "checks": 0, "failed": 0, "worst_rel_l2": None, "worst_check": None,
                "reason": "the report has no such layer (the target has none)"}
    checks = [c for c in layer.get("checks") or [] if isinstance(c, dict)]
    worst, name = None, None
    for c in checks:
        v = (c.get("metrics") or {}).get("rel_l2")
        bad = (c.get("metrics") or {}).get("non_finite")
        val = math.inf if bad else (float(v) if isinstance(v, (int, float)) else None)
        if val is not None and (worst is None or val > worst):
            worst, name = val, f"{c.get('graph')}/{c.get('output')}"
    return {"status": layer.get("status") or "unknown", "checks": len(checks),
            "failed": sum(1 for c in checks if not c.get("passed")), "worst_rel_l2": worst, "worst_check": name,
            "reason": layer.get("reason")}


def _row(doc: dict[str, Any], path: Path) -> dict[str, Any]:
    t = doc.get("target") or {}
    layers = {str(l.get("layer")): l for l in doc.get("layers") or [] if isinstance(l, dict)}
    verdict = doc.get("verdict") if doc.get("verdict") in EXIT else "FAILED"        # fail closed on the unknown
    return {"report": str(path), "target": t.get("backend"), "requested_precision": t.get("requested_precision"),
            "effective_precision": t.get("effective_precision"), "device": t.get("device"),
            "runtime_version": t.get("runtime_version"), "machine": machine_text(doc.get("machine")),
            "reference": doc.get("reference"), "gates_kind": (doc.get("gates") or {}).get("kind"),
            "dualrate_version": doc.get("dualrate_version"), "verdict": verdict,
            "first_failure": _first_failure_text(doc) if verdict == "FAILED" else None,
            "not_run_reason": _not_run_reason(doc) if verdict == "NOT RUN" else None,
            "cells": {name: _cell(layers.get(name)) for name in LAYER_ORDER}}


def build(docs: Sequence[dict[str, Any]], paths: Sequence[Path]) -> dict[str, Any]:
    """The parity matrix of reports of one bundle (the caller checked that they are)."""
    rows = sorted((_row(d, p) for d, p in zip(docs, paths)),
                  key=lambda r: (str(r["target"]), str(r["effective_precision"] or r["requested_precision"]),
                                 r["machine"], r["report"]))
    verdicts = {r["verdict"] for r in rows}
    verdict = "FAILED" if "FAILED" in verdicts else ("NOT RUN" if "NOT RUN" in verdicts else "PASSED")
    b = docs[0].get("bundle") or {}
    return {"tool": "dualrate report merge", "format_version": 1,
            "bundle": {"spec_sha256": b.get("spec_sha256"), "graphs": b.get("graphs"),
                       "source": docs[0].get("source")},
            "layers": list(LAYER_ORDER), "rows": rows, "verdict": verdict, "exit_code": EXIT[verdict]}


def junit_xml(matrix: dict[str, Any]) -> str:
    """One ``<testsuite>`` per run, one ``<testcase>`` per layer: failure, skipped (not run or
    absent) or passed with the worst metric in ``system-out``."""
    root = ET.Element("testsuites", {"name": "dualrate report merge"})
    for r in matrix["rows"]:
        precision = r["effective_precision"] or r["requested_precision"] or "unknown"
        suite = ET.SubElement(root, "testsuite", {"name": _x(f"dualrate.matrix.{r['target']}-{precision}.{r['machine']}")})
        props = ET.SubElement(suite, "properties")
        for key in ("report", "machine", "runtime_version", "device", "reference", "gates_kind", "verdict"):
            ET.SubElement(props, "property", {"name": key, "value": _x("\u2014" if r[key] is None else r[key])})
        for layer in matrix["layers"]:
            cell = r["cells"][layer]
            case = ET.SubElement(suite, "testcase", {"classname": _x(f"{r['target']}-{precision}"), "name": layer})
            worst = (f"worst rel-L2 {_fmt(cell['worst_rel_l2'])} ({cell['worst_check']}), " if cell["worst_check"] else "")
            text = f"{worst}{cell['checks']} checks, {cell['failed']} failed"
            if cell["status"] == "failed":
                msg = r["first_failure"] if r["first_failure"] and r["first_failure"].startswith(layer) else text
                ET.SubElement(case, "failure", {"message": _x(msg), "type": "parity"}).text = _x(text)
            elif cell["status"] in ("not_run", "absent") or (cell["status"] == "passed" and not cell["checks"]):
                ET.SubElement(case, "skipped", {"message": _x(f"not run: {cell['reason'] or 'no checks'}")})
            elif cell["status"] != "passed":
                ET.SubElement(case, "error", {"message": _x(f"unknown layer status {cell['status']!r}"),
                                              "type": "report"})
            else:
                ET.SubElement(case, "system-out").text = _x(text)
        if r["verdict"] == "FAILED" and suite.find("testcase/failure") is None:    # never green when it failed
            case = ET.SubElement(suite, "testcase", {"classname": _x(f"{r['target']}-{precision}"), "name": "verdict"})
            ET.SubElement(case, "failure", {"message": _x(r["first_failure"] or "FAILED"), "type": "parity"})
        cases = suite.findall("testcase")
        suite.attrib.update({"tests": str(len(cases)),
                             "failures": str(sum(c.find("failure") is not None for c in cases)),
                             "errors": str(sum(c.find("error") is not None for c in cases)),
                             "skipped": str(sum(c.find("skipped") is not None for c in cases))})
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(sum(int(s.get(key)) for s in root.findall("testsuite"))))
    ET.indent(root, space=" ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def render_html(matrix: dict[str, Any]) -> str:
    """``templates/matrix.html.j2`` over the matrix."""
    rows = []
    for r in matrix["rows"]:
        cells = []
        for layer in matrix["layers"]:
            c = r["cells"][layer]
            label = {"absent": "\u2014"}.get(c["status"], STATUS_TEXT.get(c["status"], str(c["status"])))
            title = c["reason"] if c["status"] in ("not_run", "absent") else (
                f"{c['checks']} checks, {c['failed']} failed" + (f"; worst {c['worst_check']}" if c["worst_check"] else ""))
            cells.append({"status": c["status"] if c["status"] in ("passed", "failed", "not_run", "absent") else "failed",
                          "label": label, "worst": _fmt(c["worst_rel_l2"]) if c["worst_rel_l2"] is not None else "",
                          "check": c["worst_check"] or "", "title": title or ""})
        rows.append({**r, "precision": (r["effective_precision"] or r["requested_precision"] or "?")
                     + (f" (asked {r['requested_precision']})" if r["effective_precision"] and r["requested_precision"]
                        and r["effective_precision"] != r["requested_precision"] else ""),
                     "verdict_class": {"PASSED": "passed", "FAILED": "failed"}.get(r["verdict"], "not_run"),
                     "cells_view": cells})
    verdict = matrix["verdict"]
    return environment().get_template("matrix.html.j2").render(
        verdict=verdict, verdict_class={"PASSED": "passed", "FAILED": "failed"}.get(verdict, "not_run"),
        bundle=matrix["bundle"], layers=[LAYER_TITLES.get(l, l) for l in matrix["layers"]], rows=rows)


def merge(paths: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Read every report, refuse mixed bundles, then write the three matrix files into ``out_dir``."""
    paths = [Path(p) for p in paths]
    if len(paths) < 1:
        raise BadInputError("report merge: give at least one report (the JSON of dualrate validate --json)")
    docs = [load_report(p, "report merge:") for p in paths]
    first = bundle_identity(docs[0])
    for p, d in zip(paths[1:], docs[1:]):
        ident = bundle_identity(d)
        if ident != first:
            what = "spec" if ident[0] != first[0] else "graph"
            raise BadInputError(f"report merge: {paths[0]} and {p} are reports of different bundles (their {what} "
                                "sha256 differ); merge reports of one bundle; nothing was written")
    matrix = build(docs, paths)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"report merge: -o {out} exists and is not a directory; nothing was written")
    html = render_html(matrix)
    junit = junit_xml(matrix)
    text = json.dumps(_jsonable(matrix), indent=1, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "matrix.json", text.encode("utf-8"))
    atomic_write_bytes(out / "matrix.junit.xml", junit.encode("utf-8"))
    atomic_write_bytes(out / "matrix.html", html.encode("utf-8"))
    return matrix


def summary(matrix: dict[str, Any]) -> str:
    """A line per run, then the merged verdict."""
    lines = [f"dualrate report merge: {len(matrix['rows'])} runs of bundle spec {str(matrix['bundle']['spec_sha256'])[:12]}\u2026"]
    for r in matrix["rows"]:
        precision = r["effective_precision"] or r["requested_precision"]
        worst = [(c["worst_rel_l2"], l) for l, c in r["cells"].items() if c["worst_rel_l2"] is not None]
        w = max(worst) if worst else None
        tail = f"; worst rel-L2 {_fmt(w[0])} ({w[1]})" if w else ""
        runtime = r["runtime_version"] or "\u2014"
        lines.append(f"  {str(r['target']):12s} {str(precision):5s} {r['verdict']:8s} on {r['machine']}, runtime "
                     f"{runtime}{tail}")
    lines.append(matrix["verdict"])
    return "\n".join(lines)
