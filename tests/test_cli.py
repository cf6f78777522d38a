"""The ``dualrate`` command end to end: help, init, sample, spec import, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO, run_cli


def test_help_runs_without_optional_backends_imported():
    code = ("import sys; from dualrate.cli import build_parser; build_parser().format_help(); "
            "import dualrate.exporter.spec, dualrate.exporter.sampling, dualrate.exporter.checkpoint, dualrate.validation.png; "
            "bad = [m for m in ('openvino', 'coremltools', 'tensorrt', 'diffusers', 'sklearn') if m in sys.modules]; "
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"
    res = run_cli("--help")
    assert res.returncode == 0 and "exit codes: 0 ok, 1 parity failure, 2 bad input, 3 backend" in res.stdout


def test_no_command_is_a_usage_error():
    assert run_cli().returncode == 2


def test_sample_writes_identical_png_for_the_same_seed(tmp_path, tiny_checkpoint):
    args = ["sample", str(tiny_checkpoint), "--class", "0,1", "-n", "3", "--steps", "6", "--guidance", "2"]
    a = run_cli(*args, "--seed", "5", "-o", str(tmp_path / "a.png"))
    assert a.returncode == 0, a.stderr
    assert "2 classes x 3 samples, 6 steps, encoder ran at 2 steps" in a.stdout
    b = run_cli(*args, "--seed", "5", "-o", str(tmp_path / "b.png"))
    c = run_cli(*args, "--seed", "6", "-o", str(tmp_path / "c.png"))
    data = (tmp_path / "a.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data == (tmp_path / "b.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    again = run_cli(*args, "--seed", "5", "-o", str(tmp_path / "a.png"))
    assert again.returncode == 2 and "already exists; pass --force" in again.stderr


@pytest.mark.parametrize("flags,message", [
    (["--class", "12"], "class id 12 is out of range; this model has classes 0..9"),
    (["--class", "x"], "--class 'x': expected comma-separated integers"),
    (["--refresh-steps", "1,2"], "must start with step 0"),
    (["--steps", "0"], "sampler.num_steps is 0"),
    (["--eta", "0.5"], "--eta 0.5 was given with the ancestral sampler"),
    (["--sampler", "ddim", "--eta", "2"], "sampler.eta is 2.0"),
    (["-n", "0"], "-n 0: expected at least 1"),
])
def test_sample_bad_options_exit_2_with_one_message(tmp_path, tiny_checkpoint, flags, message):
    res = run_cli("sample", str(tiny_checkpoint), "-o", str(tmp_path / "g.png"), "--steps", "4", *flags) \
        if "--steps" not in flags else run_cli("sample", str(tiny_checkpoint), "-o", str(tmp_path / "g.png"), *flags)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "g.png").exists()


def test_init_writes_a_loadable_checkpoint(tmp_path):
    res = run_cli("init", "--config", "tiny", "-o", str(tmp_path / "t"), "--seed", "3")
    assert res.returncode == 0 and "encoder 0.10M" in res.stdout
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["format"] == "dualrate-checkpoint" and cfg["model"]["size"] == "tiny"
    assert run_cli("sample", str(tmp_path / "t"), "--steps", "2", "-n", "1", "-o", str(tmp_path / "g.png")).returncode == 0


def test_spec_from_diffusers_and_check(tmp_path):
    cfg = tmp_path / "scheduler_config.json"
    cfg.write_text(json.dumps({"_class_name": "DDPMScheduler", "beta_schedule": "linear", "clip_sample": False,
                               "prediction_type": "v_prediction", "num_train_timesteps": 1000}))
    res = run_cli("spec", "from-diffusers", str(cfg), "--steps", "20", "-o", str(tmp_path / "spec.json"))
    assert res.returncode == 0, res.stderr
    assert "ancestral (eta 1.0), 20 steps, prediction v" in res.stdout
    assert "placeholder" in res.stderr
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert spec["sampler"]["final_step"] == "return_x0" and spec["process"]["schedule"]["family"] == "discrete"
    chk = run_cli("spec", "check", str(tmp_path / "spec.json"), "--strict")
    assert chk.returncode == 0 and "valid spec 1.0.0; ancestral" in chk.stdout


def test_spec_from_diffusers_unrepresentable_exits_2(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"_class_name": "DDPMScheduler", "thresholding": True}))
    res = run_cli("spec", "from-diffusers", str(cfg), "--steps", "20", "-o", str(tmp_path / "spec.json"))
    assert res.returncode == 2 and "thresholding" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "spec.json").exists()


def test_spec_check_reports_bad_spec(tmp_path):
    (tmp_path / "s.json").write_text('{"spec": "dualrate-sampler", "spec_version": "3.1.0"}')
    res = run_cli("spec", "check", str(tmp_path / "s.json"))
    assert res.returncode == 2 and "spec_version 3.1.0 has major version 3" in res.stderr
