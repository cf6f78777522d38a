"""Reduced-precision gate calibration, deferred: computed once when first needed, stored outside the
hashed payload, verified before use, never half-written; and the stage progress/timings of long runs."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dualrate.exporter import precision_calibration as pc
from dualrate.exporter.bundle import open_bundle, write_manifest
from dualrate.exporter.checkpoint import load_checkpoint
from dualrate.exporter.errors import BundleError
from dualrate.exporter.export import ExportOptions
from dualrate.exporter.golden import graph_calls, write_npz
from dualrate.exporter.progress import Event, Stages, console
from dualrate.exporter.spec_builder import SamplerOptions
from dualrate.validation.export_check import export_bundle
from dualrate.validation.validate import ValidateOptions, validate
from tests.conftest import REPO, run_cli

pytestmark = pytest.mark.slow
OPTS = ExportOptions(sampler=SamplerOptions(num_steps=6, guidance=2.0, refresh_params={"k": 3, "phase": 0}))
# ONNX Runtime runs fp32 only; judging it with the bf16 gates exercises the calibration on any CPU
BF16_GATES = ValidateOptions(reference="golden", gate_precision="bf16")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint):
    return export_bundle(tiny_checkpoint, tmp_path_factory.mktemp("cal") / "bundle", OPTS)


@pytest.fixture
def bundle(exported, tmp_path):
    """A fresh copy of the exported bundle (no calibration, no compile cache) per test."""
    out = tmp_path / "bundle"
    shutil.copytree(exported.bundle.path, out, ignore=shutil.ignore_patterns("targets", "calibration"))
    return out


def old_calibration(model, bundle) -> dict[str, np.ndarray]:
    """What export used to store as golden/calibration.npz (the code as it was in golden.capture)."""
    import torch

    from dualrate.exporter.torch_runner import TorchReferenceRunner

    runner = TorchReferenceRunner(model, bundle.spec)
    out = {}
    for pname, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        for graph, bound in runner.bound.items():
            names = [o.name for o in runner.graphs[graph].outputs]
            worst: dict[str, list[float]] = {}
            for inputs, outputs in graph_calls(bundle.golden(f"{graph}_io")):
                flat = [torch.from_numpy(np.ascontiguousarray(inputs[n])) for n, _ in bound.inputs]
                with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
                    got = dict(zip(names, bound(*flat)))
                for name, ref in outputs.items():
                    a = got[name].float().numpy().astype(np.float64).ravel()
                    r = ref.astype(np.float64).ravel()
                    rel = float(np.linalg.norm(a - r) / max(np.linalg.norm(r), 1e-30))
                    cos = float(a @ r / max(np.linalg.norm(a) * np.linalg.norm(r), 1e-30))
                    w = worst.setdefault(name, [0.0, 0.0])
                    w[0], w[1] = max(w[0], rel), max(w[1], 1.0 - cos)
            for name, (rel, omc) in worst.items():
                out[f"{pname}/{graph}/{name}"] = np.array([rel, omc], np.float64)
    return out


def legacy_copy(src, dst, model):
    """``src`` as an older export made it: golden/calibration.npz inside the hashed payload."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("targets", "calibration"))
    write_npz(dst / "golden" / "calibration.npz", old_calibration(model, open_bundle(dst)))
    manifest = json.loads((dst / "manifest.json").read_text())
    write_manifest(dst, {k: v for k, v in manifest.items() if k not in ("files", "format", "format_version")})
    return dst


def test_export_stores_no_calibration_and_its_fp32_content_does_not_depend_on_it(exported, tiny_checkpoint,
                                                                                  tmp_path):
    root = exported.bundle.path
    assert not (root / "calibration").exists() and "calibration" not in exported.bundle.golden_names()
    assert exported.calibration == []
    assert {"load", "spec", "reference", "export_encoder", "export_denoiser", "parity"} <= set(exported.timings)
    assert all(isinstance(v, float) and v >= 0 for v in exported.timings.values())
    again = export_bundle(tiny_checkpoint, tmp_path / "b", OPTS, calibrate_precisions=True)
    assert [(c["precision"], c["status"]) for c in again.calibration] == [
        ("fp32", "computed"), ("bf16", "computed"), ("fp16", "computed")]
    assert sorted(p.name for p in (tmp_path / "b" / "calibration").iterdir() if not p.name.startswith(".")) == [
        "bf16.json", "bf16.npz", "fp16.json", "fp16.npz", "fp32.json", "fp32.npz"]
    assert {"calibrate_fp32", "calibrate_bf16", "calibrate_fp16"} <= set(again.timings)
    for rel in [*exported.bundle.manifest["files"], "manifest.json"]:      # every hashed byte is the same
        assert (root / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    open_bundle(tmp_path / "b")           # calibration/ is outside the manifest, like targets/
    # the values are the ones export used to compute
    old = old_calibration(load_checkpoint(tiny_checkpoint).pair, again.bundle)
    for p in ("bf16", "fp16"):
        got = pc.stored(again.bundle, p)
        assert set(got) == {k for k in old if k.startswith(p + "/")}
        for k, v in got.items():
            np.testing.assert_array_equal(v, old[k])


def test_deferred_calibration_is_computed_once_then_reused(bundle, monkeypatch):
    calls = []
    measure = pc.measure
    monkeypatch.setattr(pc, "measure", lambda *a, **k: calls.append(a[2]) or measure(*a, **k))
    first, _ = validate(bundle, BF16_GATES)
    cal = first["gates"]["calibration"]
    assert cal["status"] == "computed" and calls == ["bf16"], cal
    assert first["gates"]["per_call_calibrated"] and "notes" not in first
    npz = bundle / "calibration" / "bf16.npz"
    stamp, digest = npz.stat().st_mtime_ns, npz.read_bytes()
    second, _ = validate(bundle, BF16_GATES)
    assert second["gates"]["calibration"]["status"] == "stored" and calls == ["bf16"]
    assert npz.stat().st_mtime_ns == stamp and npz.read_bytes() == digest
    assert second["gates"]["per_call_calibrated"] == first["gates"]["per_call_calibrated"]
    # fp32 never pays for it: an fp32 validate measures the fp32 floor only, once
    fp32, _ = validate(bundle, ValidateOptions(reference="golden"))
    assert fp32["gates"]["calibration"]["status"] == "computed" and calls == ["bf16", "fp32"]
    assert fp32["gates"]["kind"] == "floor-calibrated" and "per_call_calibrated" not in fp32["gates"]
    fp32, _ = validate(bundle, ValidateOptions(reference="golden"))
    assert fp32["gates"]["calibration"]["status"] == "stored" and calls == ["bf16", "fp32"]
    assert not (bundle / "calibration" / "fp16.json").exists()


def test_fp32_floor_at_validate_equals_the_one_export_stored_and_the_one_export_used_to_hash(
        bundle, exported, tiny_checkpoint, tmp_path, pair):
    """The float64 floor moved out of export: the same bytes whether export (asked) or the first
    validate measures it, the same gates and verdicts as a bundle that carries it in the hashed
    golden/fp32_floor.npz (as exports between issue 12 and this change did), which is still read."""
    from dualrate.exporter import fp32_floor

    asked = export_bundle(tiny_checkpoint, tmp_path / "asked", OPTS, calibrate_precisions=["fp32"])
    assert [(c["precision"], c["status"]) for c in asked.calibration] == [("fp32", "computed")]
    fresh, _ = validate(bundle, ValidateOptions(reference="golden"))
    assert fresh["gates"]["calibration"]["status"] == "computed"
    assert (bundle / "calibration" / "fp32.npz").read_bytes() == (tmp_path / "asked" / "calibration" / "fp32.npz").read_bytes()
    # a hashed golden/fp32_floor.npz, as the export measured it in memory
    legacy = tmp_path / "legacy"
    shutil.copytree(bundle, legacy, ignore=shutil.ignore_patterns("targets", "calibration"))
    b = open_bundle(legacy)
    write_npz(legacy / "golden" / "fp32_floor.npz",
              fp32_floor.measure(pair, b.spec, fp32_floor.needed_vectors(b), b.nulls()))
    manifest = json.loads((legacy / "manifest.json").read_text())
    write_manifest(legacy, {k: v for k, v in manifest.items() if k not in ("files", "format", "format_version")})
    old, _ = validate(legacy, ValidateOptions(reference="golden"))
    assert old["gates"]["calibration"]["status"] == "stored"
    assert old["gates"]["calibration"]["path"].endswith("golden/fp32_floor.npz")
    assert (legacy / "golden" / "fp32_floor.npz").read_bytes() == (bundle / "calibration" / "fp32.npz").read_bytes()
    assert {k: v for k, v in old["gates"].items() if k != "calibration"} == \
           {k: v for k, v in fresh["gates"].items() if k != "calibration"}
    assert old["verdict"] == fresh["verdict"] == "PASSED"
    # the floor belongs to the PyTorch model: it does not depend on the graphs, so a changed graph
    # is judged by its model's gates (and a tampered value is refused by name)
    assert not any(rel.endswith(".onnx") for rel in pc.sources(open_bundle(bundle), "fp32"))
    npz = bundle / "calibration" / "fp32.npz"
    npz.write_bytes(npz.read_bytes()[:-1] + b"x")
    with pytest.raises(BundleError, match="calibration/fp32.npz has sha256"):
        pc.stored(open_bundle(bundle), "fp32")


def test_verdicts_and_gates_equal_the_calibration_export_used_to_store(bundle, tmp_path, pair):
    legacy = legacy_copy(bundle, tmp_path / "legacy", pair)
    old, _ = validate(legacy, BF16_GATES)
    new, _ = validate(bundle, BF16_GATES)
    assert old["gates"]["calibration"]["status"] == "stored"
    assert old["gates"]["calibration"]["path"].endswith("golden/calibration.npz")
    assert new["gates"]["calibration"]["status"] == "computed"
    assert new["gates"]["per_call_calibrated"] == old["gates"]["per_call_calibrated"]
    assert new["verdict"] == old["verdict"]
    for a, b in zip(new["layers"], old["layers"]):
        assert [(c["output"], c["passed"], c["metrics"]) for c in a["checks"]] == \
               [(c["output"], c["passed"], c["metrics"]) for c in b["checks"]]


def test_bf16_openvino_verdicts_equal_the_old_behaviour(bundle, tmp_path, pair):
    ov = pytest.importorskip("openvino")
    from dualrate.targets.base import get_target

    if get_target("openvino").available():
        pytest.skip(get_target("openvino").available())
    if "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no native bf16; OpenVINO would run fp32")
    legacy = legacy_copy(bundle, tmp_path / "legacy", pair)
    opts = ValidateOptions(target="openvino", precision="bf16", reference="golden")
    old, _ = validate(legacy, opts)
    new, _ = validate(bundle, opts)
    assert new["target"]["effective_precision"] == "bf16"
    assert new["gates"]["calibration"]["status"] == "computed"
    assert new["gates"]["per_call_calibrated"] == old["gates"]["per_call_calibrated"]
    assert new["verdict"] == old["verdict"]
    assert [[c["passed"] for c in layer["checks"]] for layer in new["layers"]] == \
           [[c["passed"] for c in layer["checks"]] for layer in old["layers"]]


def test_compile_calibrates_a_reduced_precision_target(bundle, monkeypatch):
    import dualrate
    from dualrate.exporter.progress import Event as Ev
    from dualrate.targets.base import get_target

    if get_target("openvino").available():
        pytest.skip(get_target("openvino").available())
    seen: list[Ev] = []
    fp32 = dualrate.compile(bundle, target="openvino", precision="fp32", progress=seen.append)
    assert fp32.calibration == {"precision": "fp32", "status": "not_needed"} and "compile" in fp32.timings
    assert not (bundle / "calibration").exists()
    compiled = dualrate.compile(bundle, target="openvino", precision="bf16", progress=seen.append)
    if compiled.effective_precision not in pc.LOW_PRECISIONS:
        pytest.skip(f"OpenVINO runs bf16 as {compiled.effective_precision} here")
    assert compiled.calibration["status"] == "computed" and (bundle / "calibration" / "bf16.json").is_file()
    assert [(e.kind, e.stage) for e in seen if e.kind != "advance"][-2:] == [("start", "calibrate_bf16"),
                                                                           ("end", "calibrate_bf16")]
    again = dualrate.compile(bundle, target="openvino", precision="bf16")
    assert again.calibration["status"] == "stored"


def test_a_changed_calibration_is_refused_naming_the_file(bundle):
    validate(bundle, BF16_GATES)
    npz = bundle / "calibration" / "bf16.npz"
    values = dict(np.load(npz))
    values = {k: v * 10 for k, v in values.items()}           # loosen every gate tenfold
    buf = io.BytesIO()
    write_npz(buf, values)
    npz.write_bytes(buf.getvalue())
    with pytest.raises(BundleError, match=r"calibration/bf16\.npz has sha256 [0-9a-f]{12}…, calibration/bf16\.json "
                                          r"says [0-9a-f]{12}…; the file was changed after calibration"):
        validate(bundle, BF16_GATES)
    res = run_cli("validate", str(bundle), "--target", "onnxruntime", "--reference", "golden", "--gate-precision",
                  "bf16")
    assert res.returncode == 2 and "calibration/bf16.npz has sha256" in res.stderr and "Traceback" not in res.stderr
    # a record computed from other bundle files (copied from elsewhere) is stale: recomputed, never trusted
    npz.unlink()
    record = json.loads((bundle / "calibration" / "bf16.json").read_text())
    record["sources"]["spec.json"] = "0" * 64
    (bundle / "calibration" / "bf16.json").write_text(json.dumps(record))
    doc, _ = validate(bundle, BF16_GATES)
    assert doc["gates"]["calibration"]["status"] == "computed"


def test_a_calibration_that_links_out_of_the_bundle_is_refused(bundle, tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (bundle / "calibration").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(BundleError, match=r"calibration is a link; the calibration must be plain files"):
        validate(bundle, BF16_GATES)
    assert list((tmp_path / "elsewhere").iterdir()) == []          # nothing written through it


def _point_manifest_at(bundle, checkpoint) -> None:
    """Record another checkpoint path in the manifest (not itself hashed): the model is there or not."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    for key in ("source", "source_checkpoint"):
        manifest[key]["path"] = str(checkpoint)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def test_without_a_model_the_gates_are_default_and_the_report_says_so(bundle, tiny_checkpoint, tmp_path):
    _point_manifest_at(bundle, tmp_path / "gone")         # the checkpoint the manifest records is not here
    doc, _ = validate(bundle, BF16_GATES)
    cal = doc["gates"]["calibration"]
    assert cal["status"] == "uncalibrated" and "is not here" in cal["reason"]
    assert "per_call_calibrated" not in doc["gates"]
    assert doc["notes"] == [f"per-call bf16 gates are uncalibrated (the default bf16 gate for every call): "
                            f"{cal['reason']}"]
    out = run_cli("validate", str(bundle), "--target", "onnxruntime", "--gate-precision", "bf16")
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 0, out.stdout + out.stderr
    assert lines[-1] == "PASSED" and lines[-2].startswith("note: per-call bf16 gates are uncalibrated")
    # once computed (the checkpoint back), the stored calibration is used without the model
    _point_manifest_at(bundle, tiny_checkpoint)
    assert validate(bundle, BF16_GATES)[0]["gates"]["calibration"]["status"] == "computed"
    _point_manifest_at(bundle, tmp_path / "gone")
    doc, _ = validate(bundle, BF16_GATES)
    assert doc["gates"]["calibration"]["status"] == "stored" and "notes" not in doc


KILLED = r"""
import sys, time
from pathlib import Path
from dualrate.exporter import precision_calibration as pc
from dualrate.exporter.bundle import open_bundle
from dualrate.exporter.checkpoint import load_checkpoint

where = sys.argv[2]
bundle = open_bundle(sys.argv[1])
if where == "measuring":
    real = pc.measure
    def slow(model, b, p, on_call=lambda: None):
        def call():
            on_call()
            print("measuring", flush=True)
            time.sleep(0.5)
        return real(model, b, p, on_call=call)
    pc.measure = slow
else:                     # after the values are written, before the record that makes them trusted
    real = pc.atomic_write_bytes
    def stop(path, data, force=True):
        real(path, data, force)
        if Path(path).suffix == ".npz":
            print("npz written", flush=True)
            time.sleep(600)
    pc.atomic_write_bytes = stop
pc.ensure(bundle, sys.argv[4], model=load_checkpoint(sys.argv[3]).pair)
"""


@pytest.mark.parametrize("where,precision", [("measuring", "bf16"), ("between_files", "bf16"),
                                             ("measuring", "fp32")])
def test_sigkill_mid_calibration_leaves_nothing_trusted(bundle, tiny_checkpoint, where, precision):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", KILLED, str(bundle), where, str(tiny_checkpoint), precision], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    line = proc.stdout.readline()
    assert line.strip() in ("measuring", "npz written"), proc.stderr.read()
    assert time.monotonic() < deadline
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (bundle / "calibration" / f"{precision}.json").exists()
    b = open_bundle(bundle)             # the bundle itself is untouched and verified
    assert pc.stored(b, precision) is None
    doc, _ = validate(bundle, BF16_GATES if precision == "bf16" else ValidateOptions(reference="golden"))
    assert doc["gates"]["calibration"]["status"] == "computed"
    assert pc.stored(open_bundle(bundle), precision) is not None


# --------------------------------------------------------------------------- progress and timings

def test_stages_time_and_report_each_stage():
    seen: list[Event] = []
    ticks = iter([0.0, 1.0, 1.5, 4.0, 10.0, 10.25, 20.0, 21.0])
    stages = Stages(seen.append, clock=lambda: next(ticks))
    with stages("reference", "reference trajectories", total=2) as step:
        step()
        step()
    with stages("write"):
        pass
    with pytest.raises(KeyError):
        with stages("write"):
            raise KeyError("x")
    assert stages.timings == {"reference": 4.0, "write": 1.25}
    assert [(e.kind, e.stage, e.done) for e in seen] == [
        ("start", "reference", 0), ("advance", "reference", 1), ("advance", "reference", 2),
        ("end", "reference", 2), ("start", "write", 0), ("end", "write", 0), ("start", "write", 0),
        ("fail", "write", 0)]
    assert seen[3] == "reference trajectories: 4.0 s" and seen[4] == "write ..."   # plain str lines


def test_console_prints_stage_lines_without_a_terminal_and_bars_with_one():
    class Stream(io.StringIO):
        def __init__(self, tty: bool):
            super().__init__()
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    plain, term = Stream(False), Stream(True)
    for stream in (plain, term):
        stages = Stages(console(stream, delay=0))
        with stages("reference", "reference trajectories", total=3) as step:
            for _ in range(3):
                step()
        stages.note("a note")
    lines = plain.getvalue().splitlines()
    assert lines[0] == "  reference trajectories ..." and lines[-1] == "  a note"
    assert lines[1].startswith("  reference trajectories: ") and lines[1].endswith(" s") and len(lines) == 3
    shown = term.getvalue()
    assert "reference trajectories" in shown and "3/3" in shown and "\r" in shown and "a note" in shown
    # plain lines are for what takes time: a quick stage (or one failing at once) prints nothing,
    # a slow one is announced while it runs, and says how it ended
    quiet = Stream(False)
    stages = Stages(console(quiet, delay=0.3))
    with stages("open", "verifying the bundle"):
        pass
    with pytest.raises(ValueError):
        with stages("compile", "compiling"):
            raise ValueError("no")
    assert quiet.getvalue() == ""
    with stages("slow", "a slow stage"):
        time.sleep(0.6)
        assert quiet.getvalue() == "  a slow stage ...\n"
    with pytest.raises(ValueError):
        with stages("slow_failing", "another"):
            time.sleep(0.6)
            raise ValueError("no")
    lines = quiet.getvalue().splitlines()
    assert len(lines) == 4 and lines[2] == "  another ..."
    assert re.fullmatch(r"  a slow stage: \d+\.\d s", lines[1]) and \
        re.fullmatch(r"  another: stopped after \d+\.\d s", lines[3]), lines


def test_cli_shows_stages_and_json_records_their_seconds(exported, tiny_checkpoint, tmp_path):
    res = run_cli("export", str(tiny_checkpoint), "-o", str(tmp_path / "b"), "--steps", "3")
    assert res.returncode == 0, res.stderr
    lines = res.stderr.splitlines()
    # tracing takes seconds even for tiny: announced while it runs, then its seconds
    assert "  exporting encoder to ONNX (opset 18) ..." in lines, res.stderr
    assert any(re.fullmatch(r"  exporting encoder to ONNX \(opset 18\): \d+\.\d s", line) for line in lines)
    assert "\r" not in res.stderr
    timings = next(line for line in res.stdout.splitlines() if line.startswith("  timings: "))
    for stage in ("load", "spec", "reference", "export_encoder", "check_encoder", "export_denoiser", "write",
                  "verify", "parity"):
        assert re.search(rf"\b{stage} \d+\.\d s\b", timings), timings
    res = run_cli("validate", str(exported.bundle.path), "--target", "onnxruntime", "--reference", "golden",
                  "--json", str(tmp_path / "r.json"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "\r" not in res.stderr
    timings = json.loads((tmp_path / "r.json").read_text())["timings"]
    assert {"open", "compile", "golden", "graph", "teacher_forced", "free_running", "cache_equivalence"} <= set(timings)
    assert all(isinstance(v, float) and v >= 0 for v in timings.values())
