"""Report writers for ``dualrate validate``: strict JSON, JUnit XML for CI, an HTML page
(PNG sample grids, an error heatmap, an inline-SVG drift curve, a table per layer) and
the console summary.

Every writer only *reads* the results document made by ``validation.validate``; none
of them decides or softens a verdict. A layer that did not run is shown as "not run"
with its reason everywhere and is never rendered or counted as passed. Files are
written atomically (temporary sibling, then rename), so an interrupted run leaves no
half-written report.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from dualrate.exporter.atomic import atomic_write_bytes

from .png import grid, to_uint8, write_png

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


def _gate_text(name: str | None, gate: dict[str, Any] | None) -> str:
    if not gate:
        return "no gate recorded"
    return (f"gate {name}: rel-L2 \u2264 {_fmt(gate.get('rel_l2'), 'g')}, cosine \u2265 {_fmt(gate.get('cosine'), 'g')}, "
            f"PSNR \u2265 {_fmt(gate.get('psnr_db'), 'g')} dB (final samples), no non-finite values")


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
    gate_line = _gate_text(*_gate(result))
    for layer in _layers(result):
        _layer_cases(suite, layer, result, gate_line)
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
    ET.indent(root, space=" ")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


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
    lines = [f"dualrate validate: {target.get('backend', '?')} precision {req} (effective {eff or 'unknown'}), "
             f"reference {result.get('reference', '?')}, bundle {(result.get('bundle') or {}).get('path', '?')}"]
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


# --------------------------------------------------------------------------- images

# viridis sampled at 9 points: perceptually ordered, readable in grey and by most colour-blind readers
_VIRIDIS = np.array([[68, 1, 84], [71, 44, 122], [59, 81, 139], [44, 113, 142], [33, 144, 141],
                     [39, 173, 129], [92, 200, 99], [170, 220, 50], [253, 231, 37]], np.float64)
NON_FINITE_RGB = (255, 0, 255)    # magenta never occurs in viridis, so a NaN pixel cannot pass for an error value


def colormap(t: np.ndarray) -> np.ndarray:
    """``t`` in [0, 1] (clipped) to viridis-like RGB uint8 ``[..., 3]``; non-finite ``t`` is magenta."""
    t = np.asarray(t, np.float64)
    bad = ~np.isfinite(t)
    pos = np.clip(np.where(bad, 0.0, t), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    lo = np.minimum(np.floor(pos).astype(np.int64), len(_VIRIDIS) - 2)
    frac = (pos - lo)[..., None]
    rgb = _VIRIDIS[lo] * (1 - frac) + _VIRIDIS[lo + 1] * frac
    rgb[bad] = NON_FINITE_RGB
    return np.floor(rgb + 0.5).astype(np.uint8)


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


def _write_images(result: dict[str, Any], arrays: dict[str, np.ndarray], out: Path,
                  data_range: tuple[float, float], which: str = "final") -> dict[str, Any]:
    """Reference, backend and heatmap PNGs with the same layout; returns what the page states.
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
    heat = colormap(diff[:, 0] / vmax if vmax > 0 else np.where(np.isfinite(diff[:, 0]), 0.0, np.nan))
    sizes = {}
    for key, img in (("reference", ref_u8), ("backend", got_u8), ("heatmap", heat.transpose(0, 3, 1, 2))):
        pixels = grid(img, rows, scale=scale)
        write_png(out / files[key], pixels)
        sizes[key] = (pixels.shape[1], pixels.shape[0])
    return {"sizes": sizes, "vmax": vmax, "non_finite": int(diff.size - finite.size),
            "differing_u8": int(np.count_nonzero(ref_u8 != got_u8)), "pixels_u8": int(ref_u8.size),
            "count": n, "total": total, "per_channel": per_channel, "channels": c,
            "scale": scale}


# --------------------------------------------------------------------------- SVG drift curve

def _decades(values: list[float]) -> tuple[float, float]:
    lo = math.floor(math.log10(min(values)))
    hi = math.ceil(math.log10(max(values)))
    return float(lo), float(hi if hi > lo else lo + 1)


def drift_svg(drift: dict[str, Any], gate_rel_l2: float | None = None, gate_name: str | None = None) -> str:
    """rel-L2 of the backend state vs the reference per step, log y-axis; refresh steps as
    vertical lines, the gate as a dashed line. Exact matches (0) sit on the bottom edge and
    non-finite values on the top edge with a red mark, so the polyline keeps one point per step."""
    vals = [None if v is None or not math.isfinite(float(v)) else float(v) for v in drift.get("rel_l2") or []]
    steps = list(drift.get("steps") or range(len(vals)))[:len(vals)]
    vals = vals[:len(steps)]
    W, H, L, R, T, B = 680, 320, 78, 24, 18, 52
    pw, ph = W - L - R, H - T - B
    positive = [v for v in vals if v is not None and v > 0]
    if gate_rel_l2 is not None and gate_rel_l2 > 0:
        positive.append(float(gate_rel_l2))
    d_lo, d_hi = _decades(positive or [1e-8, 1.0])
    if any(v == 0 for v in vals):
        d_lo -= 1                                       # room below the data for the exact matches
    steps = [int(s) for s in steps]
    s0, s1 = (min(steps), max(steps)) if steps else (0, 1)
    xs = lambda s: L + (s - s0) / max(s1 - s0, 1) * pw
    pad = 0.15       # of a decade: keeps a value on a whole decade (often the gate) off the frame
    ys = lambda v: T + (d_hi + pad - math.log10(v)) / (d_hi - d_lo + 2 * pad) * ph
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="drift-chart" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" role="img" aria-labelledby="drift-title">',
           '<title id="drift-title">Drift: rel-L2 of the backend state vs the reference per sampling step</title>',
           f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="#fff" stroke="#888"/>']
    every = max(1, math.ceil((d_hi - d_lo) / 8))       # at most ~8 labelled decades
    for k in range(int(d_lo), int(d_hi) + 1, every):
        y = ys(10.0 ** k)
        out.append(f'<line class="grid" x1="{L}" x2="{L + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">1e{k}</text>')
    tick = max(1, math.ceil((s1 - s0 + 1) / 12))
    for s in range(s0, s1 + 1, tick):
        out.append(f'<line x1="{xs(s):.1f}" x2="{xs(s):.1f}" y1="{T + ph}" y2="{T + ph + 4}" stroke="#888"/>'
                   f'<text x="{xs(s):.1f}" y="{T + ph + 17}" text-anchor="middle" font-size="11">{s}</text>')
    for s in drift.get("refresh_steps") or []:
        if s0 <= s <= s1:
            out.append(f'<line class="refresh" data-step="{int(s)}" x1="{xs(s):.1f}" x2="{xs(s):.1f}" y1="{T}" '
                       f'y2="{T + ph}" stroke="#e08a00" stroke-width="1.5">'
                       f'<title>encoder refresh at step {int(s)}</title></line>')
    if gate_rel_l2 is not None and gate_rel_l2 > 0:
        y = ys(float(gate_rel_l2))
        label = html.escape(f"gate {_fmt(gate_rel_l2, 'g')}" + (f" ({gate_name})" if gate_name else ""))
        out.append(f'<line class="gate" x1="{L}" x2="{L + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c0392b" '
                   f'stroke-dasharray="6 4"/><text x="{L + pw - 4}" y="{y - 5:.1f}" text-anchor="end" '
                   f'font-size="11" fill="#c0392b">{label}</text>')
    pts, marks = [], []
    for s, v in zip(steps, vals):
        y = T if v is None else (T + ph if v == 0 else ys(v))
        pts.append(f"{xs(s):.1f},{y:.1f}")
        shown = "non-finite" if v is None else ("0 (exact match)" if v == 0 else _fmt(v))
        colour = "#d00" if v is None else "#1f5fa8"
        marks.append(f'<circle cx="{xs(s):.1f}" cy="{y:.1f}" r="{4 if v is None else 2.5}" fill="{colour}">'
                     f'<title>step {s}: rel-L2 {shown}</title></circle>')
    out.append(f'<polyline class="drift" fill="none" stroke="#1f5fa8" stroke-width="1.8" points="{" ".join(pts)}"/>')
    out.extend(marks)
    out.append(f'<text x="{L + pw / 2}" y="{H - 10}" text-anchor="middle" font-size="12">sampling step</text>'
               f'<text transform="translate(16 {T + ph / 2}) rotate(-90)" text-anchor="middle" font-size="12">'
               'rel-L2 of z vs reference (log scale)</text></svg>')
    return "\n".join(out)


# --------------------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;
padding:0 16px}
h1{font-size:22px;margin:0 0 8px} h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:15px;margin:20px 0 4px}
.verdict{display:inline-block;padding:4px 14px;border-radius:4px;color:#fff;font-weight:700;letter-spacing:.05em}
.v-passed{background:#1e8449} .v-failed{background:#c0392b} .v-not_run{background:#7f8c8d}
.badge{display:inline-block;padding:1px 8px;border-radius:3px;font-size:12px;font-weight:700}
.b-passed{background:#d5f5e3;color:#145a32} .b-failed{background:#fadbd8;color:#922b21}
.b-not_run{background:#eaecee;color:#424949;border:1px dashed #7f8c8d} .b-error{background:#fcf3cf;color:#7d6608}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f6f7} td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.fail td{background:#fdedec} tr.pass td:last-child{color:#145a32}
.kv td:first-child{font-weight:600;white-space:nowrap} code{font-size:12px;word-break:break-all}
.notrun{border:1px dashed #7f8c8d;background:#f8f9f9;padding:8px 12px;color:#424949}
.warn{color:#922b21;font-weight:600} .muted{color:#666;font-size:12px} .desc{color:#555;margin:0 0 6px}
.images{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start} figure{margin:0}
figure img{image-rendering:pixelated;border:1px solid #ccc;display:block} figcaption{font-size:12px;color:#444;max-width:420px}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


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
             ("requested precision", t.get("requested_precision")), ("effective precision", t.get("effective_precision")),
             ("reference", result.get("reference"))]
    if t.get("note"):
        rows.append(("target note", t["note"]))
    rows += [(f"artifact {name} sha256", h) for name, h in (t.get("artifacts") or {}).items()]
    rows += [(f"shape {k}", v) for k, v in (result.get("shapes") or {}).items()]
    gname, gate = _gate(result)
    rows.append(("gate", _gate_text(gname, gate)))
    return [(k, "\u2014" if v is None else str(v)) for k, v in rows]


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


def _header_html(result: dict[str, Any]) -> str:
    verdict = str(result.get("verdict") or "unknown")
    cls = {"PASSED": "passed", "FAILED": "failed"}.get(verdict, "not_run")
    t = result.get("target") or {}
    precision = t.get("effective_precision") or t.get("requested_precision") or ""
    parts = [f'<h1>dualrate validate: {_e(t.get("backend", "?"))} {_e(precision)}'
             f' <span class="verdict v-{cls}" id="verdict">{_e(verdict)}</span></h1>']
    if verdict == "FAILED":
        parts.append(f'<p class="warn">First failure: {_e(_first_failure_text(result))}</p>')
    elif verdict == "NOT RUN":
        parts.append(f'<p class="notrun">Not run: {_e(_not_run_reason(result))}. Not run is never counted as passed.</p>')
    req, eff = t.get("requested_precision"), t.get("effective_precision")
    if req and eff and req != eff:
        parts.append(f'<p class="warn">The backend ran at {_e(eff)}, not the requested {_e(req)}; '
                     f'gates key on the effective precision.</p>')
    rows = "".join(f"<tr><td>{_e(k)}</td><td><code>{_e(v)}</code></td></tr>" for k, v in _provenance(result)
                   if k not in ("verdict",))
    parts.append(f'<table class="kv">{rows}</table>')
    return "\n".join(parts)


def _layer_reason(result: dict[str, Any], name: str) -> str | None:
    layer = next((l for l in _layers(result) if l.get("layer") == name), None)
    if layer is None:
        return f"the results document has no {name} layer"
    return layer.get("reason") if layer.get("status") == "not_run" else None


def _images_html(result: dict[str, Any], arrays: dict[str, np.ndarray], out: Path,
                 data_range: tuple[float, float], decoded_range: tuple[float, float] | None = None) -> str:
    """The final samples, then (for a bundle with a decoder) the decoded outputs."""
    parts = [_image_section(result, arrays, out, data_range, "final")]
    decoded = _image_section(result, arrays, out, _decoded_range(result, decoded_range), "decoded")
    if decoded:
        parts.append(decoded)
    return "\n".join(parts)


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
                   data_range: tuple[float, float], which: str) -> str:
    files, ref_key, got_key = IMAGE_SETS[which]
    head = "<h2>Final samples</h2>" if which == "final" else "<h2>Decoded output</h2>"
    if not arrays or ref_key not in arrays or got_key not in arrays:
        for f in files.values():                 # never let a previous run's images sit beside this page
            (out / f).unlink(missing_ok=True)
        if which == "decoded" and not _has_decoder(result):
            return ""                            # no decoder: nothing to decode, no section
        why = _layer_reason(result, "free_running") or (
            "no final samples were recorded" if which == "final" else "no decoded outputs were recorded")
        return f'{head}<p class="notrun">not run: {_e(why)}</p>'
    try:
        info = _write_images(result, arrays, out, data_range, which)
    except ValueError as exc:                    # a bad array must not cost the rest of the report
        for f in files.values():
            (out / f).unlink(missing_ok=True)
        return f'{head}<p class="warn">images not shown: {_e(exc)}</p>'
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
    figs = []
    for key, cap in (("reference", "reference"), ("backend", f"backend ({_e((result.get('target') or {}).get('backend', '?'))})"),
                     ("heatmap", _e(heat))):
        w, h = info["sizes"][key]
        figs.append(f'<figure><img src="{files[key]}" width="{w}" height="{h}" alt="{which} {key}">'
                    f"<figcaption>{cap}</figcaption></figure>")
    return (f'{head}<p class="muted">{_e(note)}; {info["differing_u8"]} of {info["pixels_u8"]} 8-bit pixel values '
            f'differ after quantisation.</p><div class="images">{"".join(figs)}</div>')


def _drift_html(result: dict[str, Any]) -> str:
    head = "<h2>Drift (free-running sampler)</h2>"
    drift = result.get("drift")
    if not drift or not drift.get("rel_l2"):
        why = _layer_reason(result, "free_running") or "no drift curve was recorded"
        return f'{head}<p class="notrun">not run: {_e(why)}</p>'
    gname, gate = _gate(result)
    traj = f" ({_e(drift['trajectory'])})" if drift.get("trajectory") else ""
    return (f'{head}<p class="desc">rel-L2 of the backend state vs the reference state after each step{traj}; '
            f'orange lines: encoder refresh steps {_e(list(drift.get("refresh_steps") or []))}; '
            f'dashed red: the per-step gate.</p>' + drift_svg(drift, (gate or {}).get("rel_l2"), gname))


def _check_row(c: dict[str, Any]) -> str:
    m = c.get("metrics") or {}
    cls = "pass" if c.get("passed") else "fail"
    result = "passed" if c.get("passed") else "FAILED: " + "; ".join(str(r) for r in c.get("reasons") or ["failed"])
    atol = _fmt(m.get("min_atol_at_rtol")) + (f" @ rtol {_fmt(m.get('rtol'), 'g')}" if m.get("rtol") is not None else "")
    detail = ", ".join([n for n in (_worst_step_note(c),) if n] + [f"{k}={v}" for k, v in _detail_items(c.get("detail"))])
    cells = [_e(_check_name(c)), _e(_fmt(c.get("step")))]
    cells += [_e(x) for x in ((_fmt(m.get("rel_l2")), _fmt(m.get("cosine"), ".8f"), _psnr_text(m),
                               _fmt(m.get("max_abs")), atol) if m else ("\u2014",) * 5)]
    tds = "".join(f'<td class="num">{x}</td>' if i else f"<td>{x}</td>" for i, x in enumerate(cells))
    return (f'<tr class="{cls}">{tds}<td>{_e(result)}'
            + (f'<div class="muted">{_e(detail)}</div>' if detail else "") + "</td></tr>")


def _layer_html(layer: dict[str, Any]) -> str:
    name, status = str(layer.get("layer")), layer.get("status")
    title, desc = LAYER_INFO.get(name, (name, ""))
    label = STATUS_TEXT.get(status, str(status))
    badge = f'<span class="badge b-{_e(status if status in STATUS_TEXT else "error")}">{_e(label)}</span>'
    parts = [f'<h3 id="layer-{_e(name)}">{_e(title)} {badge}</h3>', f'<p class="desc">{_e(desc)}</p>' if desc else ""]
    checks = layer.get("checks") or []
    if status == "not_run":
        parts.append(f'<p class="notrun">not run: {_e(layer.get("reason") or "no reason given")}</p>')
        return "\n".join(parts)
    if layer.get("reason"):
        parts.append(f"<p>{_e(layer['reason'])}</p>")
    if not checks:
        parts.append('<p class="notrun">no checks were reported for this layer (not evidence of parity)</p>')
        return "\n".join(parts)
    head = "".join(f"<th>{h}</th>" for h in ("check", "step", "rel-L2", "cosine", "PSNR", "max abs",
                                              "min atol that passes", "result"))
    parts.append(f"<table><tr>{head}</tr>{''.join(_check_row(c) for c in checks)}</table>")
    return "\n".join(parts)


def render_html(result: dict[str, Any], images_html: str) -> str:
    title = f"dualrate validate: {result.get('verdict', 'unknown')}"
    layers = "\n".join(_layer_html(l) for l in _layers(result))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>\n<body>\n'
            f"{_header_html(result)}\n{images_html}\n{_drift_html(result)}\n<h2>Layers</h2>\n{layers}\n"
            f'<p class="muted">Full metrics, gates and provenance: the JSON results document.</p>\n</body></html>\n')


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
    page = render_html(result, _images_html(result, arrays or {}, out, tuple(data_range),
                                            None if decoded_range is None else tuple(decoded_range)))
    path = out / "report.html"
    atomic_write_bytes(path, page.encode("utf-8"))
    return path
