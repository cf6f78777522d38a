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
    assert "2 row(s) x 3 samples, 6 steps, encoder ran at 2 steps, on torch reference" in a.stdout
    b = run_cli(*args, "--seed", "5", "-o", str(tmp_path / "b.png"))
    c = run_cli(*args, "--seed", "6", "-o", str(tmp_path / "c.png"))
    data = (tmp_path / "a.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data == (tmp_path / "b.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    again = run_cli(*args, "--seed", "5", "-o", str(tmp_path / "a.png"))
    assert again.returncode == 2 and "already exists; pass --force" in again.stderr


@pytest.mark.parametrize("flags,message", [
    (["--class", "12"], "class id 12 is out of range for 'class_id'; this model has classes 0..9 "
                        "(id 10 is the null class used for guidance)"),
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
    assert chk.returncode == 0 and "valid spec 2.0.0; ancestral" in chk.stdout


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


def test_spec_check_refuses_a_v1_spec_with_one_line_to_re_export(tmp_path, tiny_bundle):
    data = json.loads((tiny_bundle.path / "spec.json").read_text())
    data["spec_version"] = "1.0.0"
    (tmp_path / "s.json").write_text(json.dumps(data))
    res = run_cli("spec", "check", str(tmp_path / "s.json"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert res.stderr.startswith("dualrate spec: error: spec_version 1.0.0 ") and "Re-export the bundle" in res.stderr


# --------------------------------------------------------------------------- sample -o FILE.npy, --conditioning

def test_sample_bundle_writes_raw_float32_nchw_npy(tmp_path, tiny_bundle):
    import numpy as np

    import dualrate

    res = run_cli("sample", str(tiny_bundle.path), "--class", "1,2", "-n", "3", "--seed", "4",
                  "-o", str(tmp_path / "x.npy"))
    assert res.returncode == 0, res.stderr
    assert "2 row(s) x 3 samples, 8 steps" in res.stdout and "on onnxruntime (fp32)" in res.stdout
    x = np.load(tmp_path / "x.npy", allow_pickle=False)
    assert x.dtype == np.float32 and x.shape == (6, 1, 8, 8)         # [N, C, H, W], N = rows x n, grid order
    assert np.all(np.isfinite(x)) and x.std() > 0
    # the same samples the Python API gives for the same classes and seed, row by row
    api = dualrate.sample(tiny_bundle.path, conditioning={"class_id": np.repeat([1, 2], 3)}, seed=4).x
    np.testing.assert_allclose(x, api, rtol=0, atol=1e-6)
    # --conditioning FILE.npz: one row per entry, each sampled -n times, is the same run
    np.savez(tmp_path / "c.npz", class_id=np.array([1, 2], np.int64))
    res = run_cli("sample", str(tiny_bundle.path), "--conditioning", str(tmp_path / "c.npz"), "-n", "3",
                  "--seed", "4", "-o", str(tmp_path / "y.npy"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "y.npy").read_bytes() == (tmp_path / "x.npy").read_bytes()


@pytest.mark.parametrize("arrays,message", [
    ({"class_id": [[1, 2, 3], [4, 5, 6]]}, "conditioning 'class_id' has shape [6, 3]; expected [batch]"),
    ({"class_id": [0.5, 1.0]}, "conditioning 'class_id' has dtype float64 with non-integer values; expected int64"),
    ({"label": [1, 2]}, "conditioning 'label' is not an input of this model; it takes 'class_id'"),
    ({"class_id": [1, 2], "mask": [1, 1, 1]}, "arrays must share one first axis (rows); found [2, 3]"),
])
def test_sample_bad_conditioning_file_exits_2_naming_the_input(tmp_path, tiny_bundle, arrays, message):
    import numpy as np

    np.savez(tmp_path / "c.npz", **{k: np.asarray(v) for k, v in arrays.items()})
    res = run_cli("sample", str(tiny_bundle.path), "--conditioning", str(tmp_path / "c.npz"), "-n", "3",
                  "-o", str(tmp_path / "x.npy"))
    assert res.returncode == 2, res.stdout + res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert message in res.stderr, res.stderr
    assert not (tmp_path / "x.npy").exists()


def test_sample_conditioning_and_class_together_or_unreadable_exit_2(tmp_path, tiny_bundle):
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    for extra, message in ((["--class", "1"], "give either --class or --conditioning, not both"),
                           ([], "cannot be read as .npz without pickles")):
        res = run_cli("sample", str(tiny_bundle.path), "--conditioning", str(tmp_path / "c.npz"), *extra,
                      "-o", str(tmp_path / "x.npy"))
        assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x.npy").exists()
