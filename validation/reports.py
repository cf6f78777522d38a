"""Report writers for ``dualrate validate``: strict JSON, JUnit XML for CI, an HTML page and
the console summary.

The HTML page is a jinja2 template (``templates/report.html.j2``) over a view of the results
document: PNG sample grids and one row per sample of the whole golden batch with its own
difference image (Pillow), the drift curve with its refresh steps and gate line (matplotlib,
Agg, inline SVG), the gates, the baseline comparison and a table per layer.

Every writer only *reads* the results document made by ``validation.validate``; none
of them decides or softens a verdict. A layer that did not run is shown as "not run"
with its reason everywhere and is never rendered or counted as passed. Files are
written atomically (temporary sibling, then rename), so an interrupted run leaves no
half-written report.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from dualrate.exporter.atomic import atomic_write_bytes

from .png import encode_png, grid, to_uint8, write_png

__all__ = ["write_json", "junit_xml", "write_junit", "write_html", "console_summary", "colormap", "drift_svg"]

LAYER_INFO = {
    "structural": ("Structural", "I/O names, shapes, dtypes and precision of the compiled artifacts, not executed."),
    "graph": ("Graph level", "Each graph on the backend vs the reference, on inputs recorded from reference trajectories."),
    "teacher_forced": ("Teacher-forced steps", "Every step gets the reference state and features; localizes a bad step."),
    "free_running": ("Free-running sampler", "Full dual-rate sampling on the backend with the same noise; final samples."),
    "refresh_audit": ("Refresh audit", "The steps at which the encoder ran, per guidance branch, equal the spec's."),
    "cache_equivalence": ("Cache \u2261 no-cache", "Refreshing at every step, the backend loop equals the heavy reference."),
}
# Layers whose checks are per network graph; the others check the whole sampler loop.
GRAPH_LAYERS = ("structural", "graph", "teacher_forced")
STATUS_TEXT = {"passed": "passed", "failed": "FAILED", "not_run": "not run"}
IMAGE_FILES = {"reference": "samples_reference.png", "backend": "samples_backend.png", "heatmap": "error_heatmap.png"}
# the decoder's output on the final samples (a bundle with a decoder): the images a user actually gets
DECODED_FILES = {"reference": "decoded_reference.png", "backend": "decoded_backend.png",
                 "heatmap": "decoded_heatmap.png"}
# which arrays of ``layers.free_running`` each image section shows
IMAGE_SETS = {"final": (IMAGE_FILES, "reference_final", "backend_final"),
              "decoded": (DECODED_FILES, "reference_decoded", "backend_decoded")}
MIN_TILE_PX = 64
MAX_TILES = 64            # a huge batch would make an unreadable grid; show the first ones and say so


# --------------------------------------------------------------------------- shared helpers

def _fmt(x: Any, spec: str = ".3g") -> str:
    """A number for people: ``None`` (JSON's stand-in for NaN/inf) as a dash."""
    if x is None:
        return "\u2014"
    if isinstance(x, bool) or not isinstance(x, (int, float, np.integer, np.floating)):
        return str(x)
    if isinstance(x, (int, np.integer)):
        return str(int(x))          # steps and counts: never "1.23e+03"
    x = float(x)
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "\u221e" if x > 0 else "-\u221e"
    return format(x, spec)


def _psnr_text(m: dict[str, Any]) -> str:
    # Metrics.to_dict writes PSNR = +inf (an exact match) as null; tell that apart from "undefined".
    if m.get("psnr_db") is None and not m.get("non_finite") and m.get("max_abs") == 0:
        return "\u221e dB"
    return "\u2014" if m.get("psnr_db") is None else f"{_fmt(m['psnr_db'], '.1f')} dB"


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _check_name(c: dict[str, Any]) -> str:
    return c.get("name") or f"{c.get('graph', '?')}/{c.get('output', '?')}"


def _gate(result: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """The gate the run was judged by: the ``gates`` entry keyed by a precision (``gates`` may
    also hold per-call calibrated gates, which are not a gate themselves)."""
    gates = result.get("gates") or {}
    eff = (result.get("target") or {}).get("effective_precision")
    if isinstance(gates.get(eff), dict) and "rel_l2" in gates[eff]:
        return eff, gates[eff]
    for key, val in gates.items():
        if isinstance(val, dict) and "rel_l2" in val:
            return key, val
    return None, None


def _gate_text(name: str | None, gate: dict[str, Any] | None, result: dict[str, Any] | None = None) -> str:
    if not gate:
        return "no gate recorded"
    gates = (result or {}).get("gates") or {}
    per_graph, sampler = gates.get("per_graph"), gates.get("sampler")
    if gates.get("kind") == "per-graph" and isinstance(per_graph, dict) and isinstance(sampler, dict):
        each = "; ".join(f"{g} {v.get('precision')} (rel-L2 \u2264 {_fmt(v.get('rel_l2'), 'g')}, cosine \u2265 "
                         f"{_fmt(v.get('cosine'), 'g')})" for g, v in per_graph.items() if isinstance(v, dict))
        return (f"gates per graph: {each}; sampler checks at the loosest, {sampler.get('precision')}: rel-L2 \u2264 "
                f"{_fmt(sampler.get('rel_l2'), 'g')}, cosine \u2265 {_fmt(sampler.get('cosine'), 'g')}, PSNR \u2265 "
                f"{_fmt(sampler.get('psnr_db'), 'g')} dB (final samples); no non-finite values"
                + ("; int8 calls by step band (gates.bands)" if gates.get("bands") else ""))
    if gates.get("kind") == "floor-calibrated":
        return (f"gate {name}, floor-calibrated: rel-L2 \u2264 {_fmt(gates.get('floor_factor'), 'g')} \u00d7 the "
                f"reference's own fp32 error per check (at least {_fmt(gates.get('floor_min_rel_l2'), 'g')}, at most "
                f"{_fmt(gate.get('rel_l2'), 'g')}), cosine \u2265 {_fmt(gate.get('cosine'), 'g')}, "
                f"PSNR \u2265 {_fmt(gate.get('psnr_db'), 'g')} dB (final samples), no non-finite values")
    bands = "; single calls by step band (gates.bands)" if gates.get("bands") else ""
    return (f"gate {name}: rel-L2 \u2264 {_fmt(gate.get('rel_l2'), 'g')}, cosine \u2265 {_fmt(gate.get('cosine'), 'g')}, "
            f"PSNR \u2265 {_fmt(gate.get('psnr_db'), 'g')} dB (final samples), no non-finite values{bands}")


def _layers(result: dict[str, Any]) -> list[dict[str, Any]]:
    return list(result.get("layers") or [])


def _find_check(result: dict[str, Any], ff: dict[str, Any]) -> dict[str, Any] | None:
    for layer in _layers(result):
        if layer.get("layer") != ff.get("layer"):
            continue
        for c in layer.get("checks") or []:
            if (c.get("graph"), c.get("output")) == (ff.get("graph"), ff.get("output")) and not c.get("passed"):
                return c
    return None


def _tolerance_hint(min_atol: Any, rtol: Any) -> str:
    if min_atol is None:
        return ""
    at = f" at rtol {_fmt(rtol, 'g')}" if rtol is not None else ""
    return f"min atol that passes{at}: {_fmt(min_atol)}"


def _worst_step_note(c: dict[str, Any]) -> str:
    """Per-step layers give the first failing step but the metrics of the worst step; say so
    rather than let a reader pair step k with another step's numbers."""
    worst = (c.get("detail") or {}).get("worst_step")
    return f"metrics of worst step {worst}" if c.get("metrics") and worst is not None and worst != c.get("step") else ""


def _first_failure_text(result: dict[str, Any]) -> str:
    """``layer graph/output step k: reasons (min atol that passes at rtol r: x)`` on one line."""
    ff = result.get("first_failure") or {}
    if not ff:
        return "a check failed (the results document names no first failure)"
    step = f" step {ff['step']}" if ff.get("step") is not None else ""
    reasons = "; ".join(_one_line(r) for r in ff.get("reasons") or []) or "failed"
    check = _find_check(result, ff) or {}
    rtol = (check.get("metrics") or {}).get("rtol")
    notes = "; ".join(n for n in (_worst_step_note(check), _tolerance_hint(ff.get("min_atol_at_rtol"), rtol)) if n)
    return f"{ff.get('layer')} {ff.get('graph')}/{ff.get('output')}{step}: {reasons}" + (f" ({notes})" if notes else "")


def _not_run_reason(result: dict[str, Any]) -> str:
    if result.get("not_run_reason"):
        return _one_line(result["not_run_reason"])
    reasons = [l.get("reason") for l in _layers(result) if l.get("status") == "not_run"]
    numeric = [l.get("reason") for l in _layers(result) if l.get("status") == "not_run" and l.get("layer") != "structural"]
    return _one_line(next((r for r in numeric + reasons if r), "no check could run"))


def _detail_items(detail: dict[str, Any] | None) -> list[tuple[str, str]]:
    """Scalars and short lists of a check's detail; long per-step series are left to the JSON."""
    items = []
    for key, val in sorted((detail or {}).items()):
        if key.startswith("per_step"):
            continue
        if isinstance(val, (list, tuple)) and len(val) <= 12 and all(not isinstance(v, (list, dict)) for v in val):
            items.append((key, "[" + ", ".join(_fmt(v) for v in val) + "]"))
        elif val is None or isinstance(val, (str, int, float, bool, np.integer, np.floating)):
            items.append((key, _one_line(_fmt(val))))
    return items


# --------------------------------------------------------------------------- JSON

def _jsonable(obj: Any, where: str = "$") -> Any:
    """Plain JSON types only: NaN/inf become null (strict JSON has neither), numpy becomes
    Python, tuples become lists; anything else is an error rather than a silent ``str()``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist(), where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj), where)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"results document: {where} is a {type(obj).__name__}, which has no JSON form")


def write_json(result: dict[str, Any], path: str | Path) -> None:
    """The results document as strict JSON (sorted keys, indent 1, NaN/inf as null), atomically."""
    text = json.dumps(_jsonable(result), indent=1, sort_keys=True, allow_nan=False, ensure_ascii=False)
    atomic_write_bytes(Path(path), (text + "\n").encode("utf-8"))


# --------------------------------------------------------------------------- JUnit XML

# XML 1.0 cannot carry most control characters even escaped; a reason quoting raw bytes must not break CI parsing.
_XML_BAD = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _x(text: Any) -> str:
    return _XML_BAD.sub("\ufffd", str(text))


def _expected_groups(layer_name: str, result: dict[str, Any]) -> list[str]:
    """Testcase names of a layer that did not run: the same ones a run produces, so CI keeps
    one history per test whether or not this machine could run it."""
    if layer_name in GRAPH_LAYERS:
        return list(((result.get("bundle") or {}).get("graphs") or {}) or ("encoder", "denoiser"))
    return ["sampler"]


def _group_checks(checks: Iterable[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for c in checks:
        groups.setdefault(str(c.get("graph") or "bundle"), []).append(c)
    return list(groups.items())


def _check_text(c: dict[str, Any]) -> str:
    """A check as a few lines: result, reasons, every metric, the tolerance that would pass."""
    step = f" step {c['step']}" if c.get("step") is not None else ""
    head = f"{'passed' if c.get('passed') else 'FAILED'} {_check_name(c)}{step}"
    if not c.get("passed"):
        head += ": " + ("; ".join(_one_line(r) for r in c.get("reasons") or []) or "failed")
    lines = [head]
    m = c.get("metrics")
    if m:
        if _worst_step_note(c):
            lines.append(f"  ({_worst_step_note(c)})")
        lines.append(f"  rel-L2 {_fmt(m.get('rel_l2'))}, cosine {_fmt(m.get('cosine'), '.8f')}, PSNR {_psnr_text(m)}, "
                     f"max abs {_fmt(m.get('max_abs'))}, max rel {_fmt(m.get('max_rel'))}, "
                     f"non-finite {_fmt(m.get('non_finite'))}, shape {m.get('shape')}")
        if m.get("min_atol_at_rtol") is not None:
            lines.append(f"  minimum atol that would have passed |a-b| <= atol + rtol*|ref| at rtol "
                         f"{_fmt(m.get('rtol'), 'g')}: {_fmt(m.get('min_atol_at_rtol'))}")
    items = _detail_items(c.get("detail"))
    if items:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in items))
    return "\n".join(lines)


def _testcase(suite: ET.Element, layer: str, name: str) -> ET.Element:
    return ET.SubElement(suite, "testcase", {"classname": _x(layer), "name": _x(name)})


def _layer_cases(suite: ET.Element, layer: dict[str, Any], result: dict[str, Any], gate_line: str) -> None:
    name, status, checks = str(layer.get("layer")), layer.get("status"), layer.get("checks") or []
    if status == "not_run" or (status == "passed" and not checks):
        # A layer that "passed" with nothing checked is not evidence of parity: skipped, never passed.
        why = _one_line(layer.get("reason") or "") if status == "not_run" else "the layer reported no checks"
        for group in _expected_groups(name, result):
            ET.SubElement(_testcase(suite, name, group), "skipped", {"message": _x(f"not run: {why}")})
        return
    if status not in ("passed", "failed"):
        case = _testcase(suite, name, "layer")
        ET.SubElement(case, "error", {"message": _x(f"unknown layer status {status!r}"), "type": "report"})
        return
    if not checks:   # failed, but with no check to show: the layer reason is the failure
        case = _testcase(suite, name, "layer")
        ET.SubElement(case, "failure", {"message": _x(layer.get("reason") or "failed"), "type": "parity"}).text = _x(gate_line)
        return
    for group, group_checks in _group_checks(checks):
        case = _testcase(suite, name, group)
        body = "\n".join(_check_text(c) for c in group_checks)
        bad = [c for c in group_checks if not c.get("passed")]
        if bad:
            first = bad[0]
            step = f" step {first['step']}" if first.get("step") is not None else ""
            reason = _one_line((first.get("reasons") or ["failed"])[0])
            msg = f"{first.get('output', _check_name(first))}{step}: {reason}"
            text = f"{len(bad)} of {len(group_checks)} checks failed; {gate_line}\n{body}"
            ET.SubElement(case, "failure", {"message": _x(msg), "type": "parity"}).text = _x(text)
        else:
            ET.SubElement(case, "system-out").text = _x(body)


def junit_xml(result: dict[str, Any]) -> str:
    """One ``<testsuite>`` per run, one ``<testcase>`` per layer x graph (``sampler`` for the
    loop-level layers); failures carry every metric and the tolerance that would have passed,
    layers that could not run are ``<skipped>``."""
    target = result.get("target") or {}
    precision = target.get("effective_precision") or target.get("requested_precision") or "unknown"
    suite_name = f"dualrate.validate.{target.get('backend', 'unknown')}-{precision}"
    root = ET.Element("testsuites", {"name": "dualrate validate"})
    suite = ET.SubElement(root, "testsuite", {"name": _x(suite_name)})
    props = ET.SubElement(suite, "properties")
    for key, val in _provenance(result):
        ET.SubElement(props, "property", {"name": _x(key), "value": _x(val)})
    for i, note in enumerate(_notes(result), 1):
        ET.SubElement(props, "property", {"name": f"note {i}", "value": _x(note)})
    for stage, seconds in _timings(result):
        ET.SubElement(props, "property", {"name": _x(f"seconds {stage}"), "value": _x(seconds)})
    for row in _fidelity_rows(result):
        ET.SubElement(props, "property", {"name": _x(f"fidelity {row['name']}"),
                                          "value": _x(f"{row['plan']}: final PSNR {row['psnr']} vs fp32 reference"
                                                      + (f" ({row['note']})" if row["note"] else ""))})
    gate_line = _gate_text(*_gate(result), result)
    for layer in _layers(result):
        _layer_cases(suite, layer, result, gate_line)
    _baseline_case(suite, result)
    verdict, failed, skipped = result.get("verdict"), suite.findall("testcase/failure"), suite.findall("testcase/skipped")
    if (verdict == "FAILED" and not failed) or (verdict not in ("PASSED", "FAILED") and not failed and not skipped):
        # fail closed: a document that did not pass must never read as all green in CI
        case = _testcase(suite, "verdict", "overall")
        ET.SubElement(case, "failure", {"message": _x(f"verdict {result.get('verdict')!r}"), "type": "parity"}).text = \
            _x(_first_failure_text(result))
    cases = suite.findall("testcase")
    counts = {"tests": len(cases),
              "failures": sum(1 for c in cases if c.find("failure") is not None),
              "errors": sum(1 for c in cases if c.find("error") is not None),
              "skipped": sum(1 for c in cases if c.find("skipped") is not None)}
    for el in (root, suite):
        el.attrib.update({k: str(v) for k, v in counts.items()})
    total = dict(_timings(result)).get("total")
    if total is not None:
        suite.set("time", total)
    ET.indent(root, space=" ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _baseline_case(suite: ET.Element, result: dict[str, Any]) -> None:
    """``baseline/metrics``: every metric against the earlier report (``--baseline``)."""
    b = result.get("baseline")
    if not isinstance(b, dict):
        return
    from .baseline import describe

    case = _testcase(suite, "baseline", "metrics")
    regs = [describe(r, b.get("factor", 2.0), b.get("epsilon", 0.0)) for r in b.get("regressions") or []]
    head = (f"{b.get('compared')} metrics against {b.get('path')} (factor {_fmt(b.get('factor'), 'g')}, "
            f"epsilon {_fmt(b.get('epsilon'), 'g')})")
    if regs:
        ET.SubElement(case, "failure", {"message": _x(f"{len(regs)} metrics grew: {regs[0]}"),
                                        "type": "baseline"}).text = _x(head + "\n" + "\n".join(regs))
    else:
        ET.SubElement(case, "system-out").text = _x(head + ": none grew")


def write_junit(result: dict[str, Any], path: str | Path) -> None:
    atomic_write_bytes(Path(path), junit_xml(result).encode("utf-8"))


# --------------------------------------------------------------------------- console

def _worst(checks: list[dict[str, Any]]) -> tuple[float, str] | None:
    vals = [(c["metrics"]["rel_l2"], _check_name(c)) for c in checks
            if c.get("metrics") and isinstance(c["metrics"].get("rel_l2"), (int, float))]
    return max(vals) if vals else None


def console_summary(result: dict[str, Any]) -> str:
    """A line per layer (and per failing check, a few at most), then exactly one verdict line:
    ``PASSED``, ``FAILED: <first failure>`` or ``NOT RUN: <reason>``."""
    target = result.get("target") or {}
    req, eff = target.get("requested_precision"), target.get("effective_precision")
    kind = (result.get("gates") or {}).get("kind")
    lines = [f"dualrate validate: {target.get('backend', '?')} precision {req} (effective {eff or 'unknown'}), "
             f"reference {result.get('reference', '?')}, bundle {(result.get('bundle') or {}).get('path', '?')}"
             + (f", gates {kind}" if kind else "")]
    for layer in _layers(result):
        name, status, checks = layer.get("layer"), layer.get("status"), layer.get("checks") or []
        head = f"  {str(name):18s} {STATUS_TEXT.get(status, str(status)):8s}"
        if status == "not_run":
            lines.append(f"{head} {_one_line(layer.get('reason') or '')}")
            continue
        bad = [c for c in checks if not c.get("passed")]
        worst = _worst(checks)
        tail = f"; worst rel-L2 {_fmt(worst[0])} ({worst[1]})" if worst else ""
        count = (f"{len(bad)} of {len(checks)} checks failed" if bad
                 else f"{len(checks)} check{'' if len(checks) == 1 else 's'}")
        lines.append(f"{head} {count}{tail}")
        for c in bad[:3]:
            m = c.get("metrics") or {}
            step = f" step {c['step']}" if c.get("step") is not None else ""
            notes = "; ".join(n for n in (_worst_step_note(c), _tolerance_hint(m.get("min_atol_at_rtol"), m.get("rtol"))) if n)
            lines.append(f"      {_check_name(c)}{step}: {'; '.join(_one_line(r) for r in c.get('reasons') or [])}"
                         + (f" ({notes})" if notes else ""))
        if len(bad) > 3:
            lines.append(f"      ... and {len(bad) - 3} more")
    lines += _baseline_lines(result)
    lines += _fidelity_lines(result)
    verdict = result.get("verdict")
    if verdict == "PASSED":
        skipped = [str(l.get("layer")) for l in _layers(result) if l.get("status") == "not_run"]
        if skipped:
            lines.append(f"note: not run (not counted as passed): {', '.join(skipped)}")
        lines.append("PASSED")
    elif verdict == "NOT RUN":
        lines.append(f"NOT RUN: {_not_run_reason(result)}")
    elif verdict == "FAILED":
        lines.append(f"FAILED: {_first_failure_text(result)}")
    else:   # fail closed on a document we do not understand
        lines.append(f"FAILED: the results document has no recognised verdict ({verdict!r})")
    return "\n".join(lines)


def _fidelity_lines(result: dict[str, Any]) -> list[str]:
    """Final PSNR vs the fp32 reference for a run with a reduced graph, and per swap run."""
    rows = _fidelity_rows(result)
    if not rows or not ((result.get("fidelity") or {}).get("reduced_graphs")):
        return []
    gate = _fidelity_gate(result)
    head = f"  {'fidelity':18s} final PSNR {rows[0]['psnr']} vs the fp32 reference" + (f" (gate \u2265 {gate})" if gate else "")
    parts = [f"{r['name']} ({r['plan']}) {r['psnr']}" if not r["note"].startswith("not run") else
             f"{r['name']} ({r['plan']}) {r['note']}" for r in rows[1:]]
    return [head] + ([f"      {p}" for p in parts])


def _baseline_lines(result: dict[str, Any]) -> list[str]:
    b = result.get("baseline")
    if not isinstance(b, dict):
        return []
    from .baseline import describe

    regs = b.get("regressions") or []
    slack = f"{_fmt(b.get('factor'), 'g')}x (+{_fmt(b.get('epsilon'), 'g')})"
    if not regs:
        return [f"  {'baseline':18s} {'passed':8s} {b.get('compared')} metrics within {slack} of {b.get('path')}"]
    out = [f"  {'baseline':18s} {'FAILED':8s} {len(regs)} of {b.get('compared')} metrics grew past {slack} "
           f"of {b.get('path')}"]
    out += [f"      {describe(r, b.get('factor', 2.0), b.get('epsilon', 0.0))}" for r in regs[:5]]
    if len(regs) > 5:
        out.append(f"      ... and {len(regs) - 5} more")
    return out


# --------------------------------------------------------------------------- images (Pillow) and colours (matplotlib)

NON_FINITE_RGB = (255, 0, 255)    # magenta never occurs in viridis, so a NaN pixel cannot pass for an error value


def colormap(t: np.ndarray) -> np.ndarray:
    """``t`` in [0, 1] (clipped) to matplotlib's viridis as RGB uint8 ``[..., 3]`` (perceptually
    ordered, readable in grey and by most colour-blind readers); non-finite ``t`` is magenta."""
    from matplotlib import colormaps

    t = np.asarray(t, np.float64)
    bad = ~np.isfinite(t)
    rgb = colormaps["viridis"](np.clip(np.where(bad, 0.0, t), 0.0, 1.0))[..., :3]
    rgb = np.floor(rgb * 255.0 + 0.5)
    rgb[bad] = NON_FINITE_RGB
    return rgb.astype(np.uint8)


def _as_nchw(x: np.ndarray, limit: int | None = MAX_TILES) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"expected images [B, C, H, W], got shape {x.shape}")
    return x[:limit]


def _tiles(x: np.ndarray) -> tuple[np.ndarray, bool]:
    """Images as grid tiles: grey or RGB as they are; any other channel count (latents) as one
    grey tile per channel, so nothing is shown as a false colour or an alpha channel."""
    n, c, h, w = x.shape
    if c in (1, 3):
        return x, False
    return x.reshape(n * c, 1, h, w), True


def _layout(result: dict[str, Any], n: int, c: int, per_channel: bool) -> int:
    """Grid rows: the validator's ``shapes.rows`` when it gives one, else about square."""
    if per_channel:
        return n
    rows = (result.get("shapes") or {}).get("rows")
    if isinstance(rows, int) and 1 <= rows <= n:
        return rows
    return max(1, int(math.floor(math.sqrt(n))))


def _heat(diff: np.ndarray, vmax: float) -> np.ndarray:
    """``|difference|`` tiles ``[N, 1, H, W]`` as viridis ``[N, 3, H, W]`` on the scale 0 .. ``vmax``."""
    d = diff[:, 0]
    return colormap(d / vmax if vmax > 0 else np.where(np.isfinite(d), 0.0, np.nan)).transpose(0, 3, 1, 2)


def _data_uri(pixels: np.ndarray) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(encode_png(pixels)).decode("ascii")


def _labels(arrays: dict[str, np.ndarray], n: int) -> list[str]:
    given = arrays.get("sample_labels")
    if given is not None and len(given) >= n:
        return [str(x) for x in np.asarray(given)[:n]]
    return [f"#{k}" for k in range(n)]


def _write_images(result: dict[str, Any], arrays: dict[str, np.ndarray], out: Path,
                  data_range: tuple[float, float], which: str = "final") -> dict[str, Any]:
    """Reference, backend and heatmap PNG grids with the same layout, and one row per sample
    (reference, backend, its own difference image; inline PNGs); returns what the page states.
    ``which``: the final samples or the decoded output (``IMAGE_SETS``)."""
    files, ref_key, got_key = IMAGE_SETS[which]
    total = len(_as_nchw(arrays[ref_key], limit=None))
    ref, got = _as_nchw(arrays[ref_key]), _as_nchw(arrays[got_key])
    what = "final samples" if which == "final" else "decoded outputs"
    if ref.shape != got.shape:
        raise ValueError(f"reference {ref.shape} and backend {got.shape} {what} differ in shape")
    n, c, h, w = ref.shape
    lo, hi = data_range
    scale = max(1, math.ceil(MIN_TILE_PX / min(h, w)))
    ref_t, per_channel = _tiles(ref)
    got_t, _ = _tiles(got)
    rows = _layout(result, n, c, per_channel)
    # to_uint8 cannot map NaN; non-finite pixels show as the low end here and magenta in the heatmap
    show = lambda x: to_uint8(np.nan_to_num(np.asarray(x, np.float64), nan=lo, posinf=hi, neginf=lo), data_range)
    ref_u8, got_u8 = show(ref_t), show(got_t)
    diff = np.abs(np.asarray(got_t, np.float64) - np.asarray(ref_t, np.float64))
    if not per_channel:
        diff = diff.max(axis=1, keepdims=True)    # worst channel per pixel, aligned with the RGB tile
    finite = diff[np.isfinite(diff)]
    vmax = float(finite.max()) if finite.size else 0.0
    sizes = {}
    for key, img in (("reference", ref_u8), ("backend", got_u8), ("heatmap", _heat(diff, vmax))):
        pixels = grid(img, rows, scale=scale)
        write_png(out / files[key], pixels)
        sizes[key] = (pixels.shape[1], pixels.shape[0])
    per = c if per_channel else 1                 # tiles per sample
    samples = []
    for k, label in enumerate(_labels(arrays, n)):
        tiles = slice(k * per, (k + 1) * per)
        d = diff[tiles]
        fin = d[np.isfinite(d)]
        own = float(fin.max()) if fin.size else 0.0
        images = {key: grid(img, 1, scale=scale) for key, img in
                  (("reference", ref_u8[tiles]), ("backend", got_u8[tiles]), ("difference", _heat(d, own)))}
        a, r = np.asarray(got[k], np.float64), np.asarray(ref[k], np.float64)
        ok = np.isfinite(a).all() and np.isfinite(r).all()
        norm = float(np.linalg.norm(r))
        samples.append({"label": label, "width": images["reference"].shape[1], "height": images["reference"].shape[0],
                        **{f"{key}_uri": _data_uri(px) for key, px in images.items()},
                        "rel_l2": _fmt(float(np.linalg.norm(a - r)) / norm if ok and norm > 0 else None),
                        "max_abs": _fmt(own), "non_finite": int(d.size - fin.size)})
    return {"sizes": sizes, "vmax": vmax, "non_finite": int(diff.size - finite.size),
            "differing_u8": int(np.count_nonzero(ref_u8 != got_u8)), "pixels_u8": int(ref_u8.size),
            "count": n, "total": total, "per_channel": per_channel, "channels": c,
            "scale": scale, "samples": samples}


# --------------------------------------------------------------------------- drift plot (matplotlib, inline SVG)

def _decades(values: list[float]) -> tuple[float, float]:
    lo = math.floor(math.log10(min(values)))
    hi = math.ceil(math.log10(max(values)))
    return float(lo), float(hi if hi > lo else lo + 1)


def drift_svg(drift: dict[str, Any], gate_rel_l2: float | None = None, gate_name: str | None = None) -> str:
    """rel-L2 of the backend state vs the reference per step on a log y-axis, drawn by matplotlib
    as SVG: the curve (``id="drift"``, one marker per step), a vertical line per refresh step
    (``id="refresh-<step>"``) and the gate as a dashed line (``id="gate"``). Exact matches (0)
    sit on the bottom edge and non-finite values on the top edge as red marks
    (``id="non-finite"``), so the curve keeps one point per step."""
    import io

    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    vals = [None if v is None or not math.isfinite(float(v)) else float(v) for v in drift.get("rel_l2") or []]
    steps = [int(s) for s in list(drift.get("steps") or range(len(vals)))[:len(vals)]]
    vals = vals[:len(steps)]
    positive = [v for v in vals if v is not None and v > 0]
    if gate_rel_l2 is not None and gate_rel_l2 > 0:
        positive.append(float(gate_rel_l2))
    d_lo, d_hi = _decades(positive or [1e-8, 1.0])
    if any(v == 0 for v in vals):
        d_lo -= 1                                       # room below the data for the exact matches
    bottom, top = 10.0 ** d_lo, 10.0 ** d_hi
    ys = [top if v is None else (bottom if v == 0 else v) for v in vals]
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "dualrate", "font.size": 9}):
        fig = Figure(figsize=(6.8, 3.2), dpi=100)
        FigureCanvasAgg(fig)                     # the Agg canvas, per figure: no global backend switch (pyplot unused)
        ax = fig.add_subplot()
        ax.set_yscale("log")
        ax.set_ylim(bottom, top)
        s0, s1 = (min(steps), max(steps)) if steps else (0, 1)
        ax.set_xlim(s0 - 0.5, max(s1, s0 + 1) + 0.5)
        for s in drift.get("refresh_steps") or []:
            if steps and s0 <= int(s) <= s1:
                ax.axvline(int(s), color="#e67e22", linewidth=1, alpha=0.8, gid=f"refresh-{int(s)}")
        if gate_rel_l2 is not None and gate_rel_l2 > 0:
            ax.axhline(float(gate_rel_l2), color="#c0392b", linestyle="--", linewidth=1.2, gid="gate",
                       label=" ".join(x for x in ("gate", gate_name, f"rel-L2 {_fmt(gate_rel_l2)}") if x))
        ax.plot(steps, ys, color="#1f5fa8", linewidth=1.8, marker="o", markersize=3, gid="drift",
                label="backend vs reference")
        bad = [(s, y) for s, y, v in zip(steps, ys, vals) if v is None]
        if bad:
            ax.plot([s for s, _ in bad], [y for _, y in bad], linestyle="none", marker="o", markersize=6,
                    color="#d00000", gid="non-finite", label="non-finite", clip_on=False)
        ax.set_xlabel("sampling step")
        ax.set_ylabel("rel-L2 of z vs reference (log scale)")
        ax.grid(True, which="major", axis="y", color="#e5e5e5", linewidth=0.6)
        ax.legend(loc="upper left", fontsize=8, frameon=False)
        fig.tight_layout()
        buf = io.StringIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]                     # inline: no XML declaration or doctype


# --------------------------------------------------------------------------- HTML (jinja2 template)

TEMPLATES = Path(__file__).resolve().parent / "templates"


def environment():
    """The jinja2 environment of the report templates (``validation/templates``), HTML-escaping."""
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


def _provenance(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Key facts of the run as (label, value) text, shared by the HTML header and JUnit properties."""
    b, t = result.get("bundle") or {}, result.get("target") or {}
    rows = [("verdict", result.get("verdict")), ("exit code", result.get("exit_code")),
            ("tool", f"{result.get('tool', 'dualrate validate')} {result.get('dualrate_version', '')} "
                     f"(format {result.get('format_version', '?')})"),
            ("bundle", b.get("path")), ("spec sha256", b.get("spec_sha256"))]
    rows += [(f"graph {g} sha256", h) for g, h in (b.get("graphs") or {}).items()]
    rows += _source_rows(result.get("source"))
    if b.get("source_checkpoint_sha256") and not isinstance(result.get("source"), dict):
        rows.append(("source checkpoint sha256", b["source_checkpoint_sha256"]))
    rows += [("backend", t.get("backend")), ("device", t.get("device")), ("runtime version", t.get("runtime_version")),
             ("requested precision", t.get("requested_precision")), ("effective precision", t.get("effective_precision"))]
    rows += [(f"precision {g}", p) for g, p in _graph_precisions(result).items()]
    rows.append(("reference", result.get("reference")))
    if isinstance(result.get("machine"), dict):
        rows.append(("machine", machine_text(result["machine"])))
    if t.get("note"):
        rows.append(("target note", t["note"]))
    rows += [(f"artifact {name} sha256", h) for name, h in (t.get("artifacts") or {}).items()]
    rows += [(f"shape {k}", v) for k, v in (result.get("shapes") or {}).items()]
    gname, gate = _gate(result)
    rows.append(("gate", _gate_text(gname, gate, result)))
    return [(k, "\u2014" if v is None else str(v)) for k, v in rows]


def _graph_precisions(result: dict[str, Any]) -> dict[str, str]:
    """The effective precision of each graph: what the run judged each graph at (``gates``), else
    what the compile record says (``target``)."""
    got = ((result.get("gates") or {}).get("graph_precisions") or (result.get("target") or {}).get("graph_precisions"))
    return {str(g): str(p) for g, p in got.items()} if isinstance(got, dict) else {}


def _notes(result: dict[str, Any]) -> list[str]:
    return [_one_line(n) for n in result.get("notes") or []]


def _timings(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Each stage's seconds (``timings``), in run order, and their total."""
    t = result.get("timings")
    if not isinstance(t, dict) or not t:
        return []
    rows = [(str(k), _fmt(v, ".2f")) for k, v in t.items() if isinstance(v, (int, float))]
    total = sum(float(v) for v in t.values() if isinstance(v, (int, float)))
    return rows + [("total", _fmt(total, ".2f"))]


def _fidelity_rows(result: dict[str, Any]) -> list[dict[str, str]]:
    """The final fidelity vs the fp32 reference: this run, then each swap run (one reduced graph)."""
    f = result.get("fidelity")
    if not isinstance(f, dict) or not isinstance(f.get("final"), dict):
        return []

    def row(name: str, plan: str, entry: dict[str, Any], status: str = "measured") -> dict[str, str]:
        final, dec = entry.get("final") or {}, entry.get("decoded") or {}
        if status not in ("measured", "this run"):
            return {"name": name, "plan": plan, "psnr": "\u2014", "rel_l2": "\u2014", "decoded": "\u2014",
                    "note": f"not run: {_one_line(entry.get('reason') or status)}"}
        psnr = "non-finite" if final.get("non_finite") else f"{_fmt(final.get('psnr_db'), '.1f')} dB"
        return {"name": name, "plan": plan, "psnr": psnr, "rel_l2": _fmt(final.get("rel_l2")),
                "decoded": f"{_fmt(dec.get('psnr_db'), '.1f')} dB" if dec else "\u2014",
                "note": "; ".join(_one_line(x) for x in entry.get("tripwire") or [])
                        or ("the run itself" if status == "this run" else "")}

    plan = ",".join(f"{g}={p}" for g, p in (f.get("graph_precisions") or {}).items())
    rows = [row("this run", plan, f)]
    for r in f.get("runs") or []:
        if isinstance(r, dict) and r.get("status") != "this run":
            rows.append(row(f"only {r.get('reduced')} reduced", str(r.get("plan")), r, str(r.get("status"))))
    return rows


def _fidelity_gate(result: dict[str, Any]) -> str | None:
    sampler = (result.get("gates") or {}).get("sampler")
    if isinstance(sampler, dict) and sampler.get("psnr_db") is not None:
        return f"{_fmt(sampler.get('psnr_db'), 'g')} dB ({sampler.get('precision')})"
    return None


def machine_text(m: Any) -> str:
    """``host (os, arch)`` of a results document's ``machine``."""
    if not isinstance(m, dict):
        return "unknown"
    detail = ", ".join(str(m[k]) for k in ("os", "arch") if m.get(k))
    return f"{m.get('host') or '?'}" + (f" ({detail})" if detail else "")


def _source_rows(source: Any) -> list[tuple[str, Any]]:
    """Where the bundle's model came from (the manifest's ``source``): a checkpoint (name, path)
    or a model handed over in Python (its classes), with the weights' sha256."""
    if not isinstance(source, dict):
        return []
    kind = source.get("kind")
    what = {"checkpoint": "checkpoint", "python": "Python model"}.get(kind, str(kind or "unknown"))
    rows: list[tuple[str, Any]] = [("source", f"{what} {source.get('name') or ''}".strip())]
    if source.get("path"):
        rows.append(("source path", source["path"]))
    rows.append(("source sha256", source.get("sha256")))
    return rows


def _layer_reason(result: dict[str, Any], name: str) -> str | None:
    layer = next((l for l in _layers(result) if l.get("layer") == name), None)
    if layer is None:
        return f"the results document has no {name} layer"
    return layer.get("reason") if layer.get("status") == "not_run" else None


def _has_decoder(result: dict[str, Any]) -> bool:
    return "decoder" in ((result.get("bundle") or {}).get("graphs") or {})


def _decoded_range(result: dict[str, Any], given: tuple[float, float] | None) -> tuple[float, float]:
    """The decoded output's data range: the caller's, else the one the results document records
    (``decoder.data_range``), else [-1, 1]."""
    if given is not None:
        return tuple(float(x) for x in given)
    rec = (result.get("decoder") or {}).get("data_range")
    if isinstance(rec, (list, tuple)) and len(rec) == 2 and all(isinstance(x, (int, float)) for x in rec) \
            and rec[0] < rec[1]:
        return float(rec[0]), float(rec[1])
    return -1.0, 1.0


def _image_section(result: dict[str, Any], arrays: dict[str, np.ndarray], out: Path,
                   data_range: tuple[float, float], which: str) -> dict[str, Any] | None:
    """The template's view of one image section (None: no section at all)."""
    files, ref_key, got_key = IMAGE_SETS[which]
    head = "Final samples" if which == "final" else "Decoded output"
    if not arrays or ref_key not in arrays or got_key not in arrays:
        for f in files.values():                 # never let a previous run's images sit beside this page
            (out / f).unlink(missing_ok=True)
        if which == "decoded" and not _has_decoder(result):
            return None                          # no decoder: nothing to decode, no section
        why = _layer_reason(result, "free_running") or (
            "no final samples were recorded" if which == "final" else "no decoded outputs were recorded")
        return {"head": head, "state": "notrun", "message": why}
    try:
        info = _write_images(result, arrays, out, data_range, which)
    except ValueError as exc:                    # a bad array must not cost the rest of the report
        for f in files.values():
            (out / f).unlink(missing_ok=True)
        return {"head": head, "state": "warn", "message": f"images not shown: {exc}"}
    n, total = info["count"], info["total"]
    what = "samples" if which == "final" else "decoded outputs"
    note = f"first {n} of {total} {what}; " if total > n else f"{n} {what}; "
    if which == "decoded":
        note = "the decoder's output on the final samples; " + note
    note += (f"{info['channels']} channels shown as grey tiles, one row per sample; " if info["per_channel"] else "")
    note += f"data range {_fmt(data_range[0], 'g')} \u2026 {_fmt(data_range[1], 'g')}, upscaled \u00d7{info['scale']}"
    heat = (f"|backend \u2212 reference|, colour scale 0 (dark) \u2026 {_fmt(info['vmax'])} (yellow); "
            f"max |difference| = {_fmt(info['vmax'])}")
    if not info["per_channel"] and info["channels"] > 1:
        heat += " (worst channel per pixel)"
    if info["non_finite"]:
        heat += f"; {info['non_finite']} non-finite values shown magenta"
    backend = (result.get("target") or {}).get("backend", "?")
    figures = [{"src": files[key], "width": info["sizes"][key][0], "height": info["sizes"][key][1],
                "alt": f"{which} {key}", "caption": cap}
               for key, cap in (("reference", "reference"), ("backend", f"backend ({backend})"), ("heatmap", heat))]
    return {"head": head, "state": "ok", "note": note, "figures": figures, "samples": info["samples"],
            "differing": f"{info['differing_u8']} of {info['pixels_u8']} 8-bit pixel values differ after quantisation."}


def _drift_view(result: dict[str, Any]) -> dict[str, Any]:
    drift = result.get("drift")
    if not drift or not drift.get("rel_l2"):
        return {"state": "notrun", "message": _layer_reason(result, "free_running") or "no drift curve was recorded"}
    from markupsafe import Markup

    gname, gate = _gate(result)
    gate_rel = (gate or {}).get("rel_l2")
    per_check = ((result.get("gates") or {}).get("per_check") or {}).get("final")
    if isinstance(per_check, dict) and isinstance(per_check.get("rel_l2"), (int, float)):
        gate_rel = per_check["rel_l2"]                # floor-calibrated: the free-running gate
    return {"state": "ok", "trajectory": drift.get("trajectory"), "refresh_steps": list(drift.get("refresh_steps") or []),
            "svg": Markup(drift_svg(drift, gate_rel, gname))}


def _check_view(c: dict[str, Any], fallback_gate: Any) -> dict[str, Any]:
    m = c.get("metrics") or {}
    detail = c.get("detail") or {}
    atol = _fmt(m.get("min_atol_at_rtol")) + (f" @ rtol {_fmt(m.get('rtol'), 'g')}" if m.get("rtol") is not None else "")
    notes = ", ".join([n for n in (_worst_step_note(c),) if n] + [f"{k}={v}" for k, v in _detail_items(detail)])
    numbers = ((_fmt(m.get("rel_l2")), _fmt(detail.get("gate_rel_l2", fallback_gate)), _fmt(m.get("cosine"), ".8f"),
                _psnr_text(m), _fmt(m.get("max_abs")), atol) if m else ("\u2014",) * 6)
    return {"passed": bool(c.get("passed")), "name": _check_name(c), "step": _fmt(c.get("step")), "numbers": numbers,
            "result": "passed" if c.get("passed") else "FAILED: " + "; ".join(str(r) for r in c.get("reasons") or ["failed"]),
            "notes": notes}


def _layer_view(layer: dict[str, Any], fallback_gate: Any) -> dict[str, Any]:
    name, status = str(layer.get("layer")), layer.get("status")
    title, desc = LAYER_INFO.get(name, (name, ""))
    return {"name": name, "title": title, "desc": desc, "status": status,
            "badge": status if status in STATUS_TEXT else "error", "label": STATUS_TEXT.get(status, str(status)),
            "reason": layer.get("reason"), "checks": [_check_view(c, fallback_gate) for c in layer.get("checks") or []]}


def _gates_view(result: dict[str, Any]) -> dict[str, Any] | None:
    """The floor-calibrated gates per check (None for default gates: the header names them)."""
    gates = result.get("gates") or {}
    if gates.get("kind") != "floor-calibrated" or not isinstance(gates.get("per_check"), dict):
        return None
    rows = [{"check": k, "floor": _fmt((v or {}).get("floor_rel_l2")), "gate": _fmt((v or {}).get("rel_l2"))}
            for k, v in gates["per_check"].items() if isinstance(v, dict)]
    return {"factor": _fmt(gates.get("floor_factor"), "g"), "minimum": _fmt(gates.get("floor_min_rel_l2"), "g"),
            "rows": rows}


def _plan_gates_view(result: dict[str, Any]) -> dict[str, Any] | None:
    """Each graph's precision and gate, the sampler's, and the int8 per-call gates by step band."""
    gates = result.get("gates") or {}
    per_graph, sampler = gates.get("per_graph"), gates.get("sampler")
    if not isinstance(per_graph, dict) or not isinstance(sampler, dict):
        return None
    rows = [{"what": f"graph {g}", "precision": v.get("precision"), "rel_l2": _fmt(v.get("rel_l2"), "g"),
             "cosine": _fmt(v.get("cosine"), "g"), "psnr": "\u2014"} for g, v in per_graph.items() if isinstance(v, dict)]
    rows.append({"what": "sampler (teacher-forced, free-running, cache)", "precision": sampler.get("precision"),
                 "rel_l2": _fmt(sampler.get("rel_l2"), "g"), "cosine": _fmt(sampler.get("cosine"), "g"),
                 "psnr": f"{_fmt(sampler.get('psnr_db'), 'g')} dB"})
    bands = [{"check": k, "rel_l2": _fmt(v.get("rel_l2"), "g"), "cosine": _fmt(v.get("cosine"), "g")}
             for k, v in (gates.get("bands") or {}).items() if isinstance(v, dict)]
    return {"rows": rows, "bands": bands, "margin": _fmt(gates.get("band_margin"), "g")}


def _baseline_view(result: dict[str, Any]) -> dict[str, Any] | None:
    from .baseline import describe

    b = result.get("baseline")
    if not isinstance(b, dict):
        return None
    regs = [describe(r, b.get("factor", 2.0), b.get("epsilon", 0.0)) for r in b.get("regressions") or []]
    return {"path": b.get("path"), "factor": _fmt(b.get("factor"), "g"), "epsilon": _fmt(b.get("epsilon"), "g"),
            "compared": b.get("compared"), "regressions": regs, "passed": not regs,
            "precisions": f"{b.get('baseline_precision')} \u2192 {b.get('precision')}",
            "runtimes": f"{b.get('baseline_runtime_version')} \u2192 {b.get('runtime_version')}"}


def render_html(result: dict[str, Any], sections: list[dict[str, Any]]) -> str:
    """The report page (``templates/report.html.j2``) for ``result`` and its image ``sections``."""
    verdict = str(result.get("verdict") or "unknown")
    t = result.get("target") or {}
    req, eff = t.get("requested_precision"), t.get("effective_precision")
    _, gate = _gate(result)
    context = {
        "title": f"dualrate validate: {result.get('verdict', 'unknown')}",
        "backend": t.get("backend", "?"), "precision": eff or req or "", "verdict": verdict,
        "verdict_class": {"PASSED": "passed", "FAILED": "failed"}.get(verdict, "not_run"),
        "first_failure": _first_failure_text(result) if verdict == "FAILED" else None,
        "not_run": _not_run_reason(result) if verdict == "NOT RUN" else None,
        "precision_note": (f"The backend ran at {eff}, not the requested {req}; gates key on the effective precision."
                           if req and eff and req != eff else None),
        "provenance": [(k, v) for k, v in _provenance(result) if k != "verdict"],
        "gates": _gates_view(result), "sections": [s for s in sections if s], "drift": _drift_view(result),
        "baseline": _baseline_view(result),
        "notes": _notes(result), "timings": _timings(result),
        "fidelity": {"rows": _fidelity_rows(result), "gate": _fidelity_gate(result)} if _fidelity_rows(result) else None,
        "plan_gates": _plan_gates_view(result),
        "layers": [_layer_view(l, (gate or {}).get("rel_l2")) for l in _layers(result)],
    }
    return environment().get_template("report.html.j2").render(**context)


def write_html(result: dict[str, Any], arrays: dict[str, np.ndarray], out_dir: str | Path,
               data_range: tuple[float, float] = (-1.0, 1.0),
               decoded_range: tuple[float, float] | None = None) -> Path:
    """``out_dir/report.html`` plus its PNGs beside it; returns the HTML path. The images are
    written first, so the page never points at a missing or partial file.

    ``data_range`` maps the final samples to pixels; ``decoded_range`` the decoder's output
    (``reference_decoded``/``backend_decoded``, shown where the bundle has a decoder), by default
    the ``decoder.data_range`` the results document records, else [-1, 1]."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = arrays or {}
    sections = [_image_section(result, arrays, out, tuple(data_range), "final"),
                _image_section(result, arrays, out, _decoded_range(
                    result, None if decoded_range is None else tuple(decoded_range)), "decoded")]
    page = render_html(result, sections)
    path = out / "report.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
