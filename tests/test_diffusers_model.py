"""A Dual-Rate model built from diffusers' own blocks goes through the public API end to end.

``examples/diffusers_dual_rate.py``: ControlNet encoder (down/mid residuals as features),
UNet2DConditionModel denoiser with text cross-attention and a mask, DDIM timesteps
(trailing, steps_offset 1, set_alpha_to_one False), a VAE decoder; validated on ONNX
Runtime and OpenVINO with every layer passing, Core ML structurally.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

pytest.importorskip("diffusers")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("diffusers")
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "diffusers_dual_rate.py"), "--out", str(out),
                           "--encoder-layers", "1", "--steps", "5"], capture_output=True, text=True, timeout=1500)
    return out, proc


def test_example_passes_every_layer_on_onnxruntime_and_openvino(run):
    out, proc = run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for target in ("onnxruntime", "openvino"):
        doc = json.loads((out / f"report-{target}" / "report.json").read_text())
        assert doc["verdict"] == "PASSED"
        assert [layer["status"] for layer in doc["layers"] if layer["layer"] != "structural"] == ["passed"] * 5
        graphs = {c["graph"] for layer in doc["layers"] for c in layer["checks"]}
        assert {"encoder", "denoiser", "decoder"} <= graphs          # the decoder is gated too
        worst = max(c["metrics"]["rel_l2"] for layer in doc["layers"] for c in layer["checks"] if c["metrics"])
        assert worst < 1e-4


def test_bundle_binds_inputs_by_role_with_timesteps_text_and_decoder(run):
    out, _ = run
    spec = json.loads((out / "bundle" / "spec.json").read_text())
    model = spec["model"]
    roles = {i["name"]: i["feeds"] for i in model["denoiser"]["inputs"]}
    assert roles["encoder_hidden_states"] == "cond:text" and roles["encoder_attention_mask"] == "cond:text_mask"
    assert "time_ctx" not in roles.values()                          # the UNet ignores the refresh time
    assert roles["mid_block_res_sample"] == "feature:mid_block_res_sample"
    enc = {i["name"]: i["feeds"] for i in model["encoder"]["inputs"]}
    assert enc == {"sample": "sample", "timestep": "time", "encoder_hidden_states": "cond:text"}
    assert model["time_input"] == "timestep" and model["sample_shape"] == [4, 8, 12]
    assert model["decoder"]["output_shape"] == [3, 16, 24]
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                          beta_end=0.012, timestep_spacing="trailing", steps_offset=1, set_alpha_to_one=False)
    sched.set_timesteps(5)
    assert spec["sampler"]["tables"]["model_time"] == [float(t) for t in sched.timesteps]
    assert (out / "bundle" / "conditioning" / "text.null.npy").is_file()


def test_coreml_converts_all_three_graphs_structurally(run):
    out, proc = run
    pytest.importorskip("coremltools")
    assert "coreml NOT RUN" in proc.stdout or "coreml PASSED" in proc.stdout
    doc = json.loads((out / "report-coreml" / "report.json").read_text())
    structural = next(layer for layer in doc["layers"] if layer["layer"] == "structural")
    assert structural["status"] == "passed", structural
    assert {c["graph"] for c in structural["checks"]} >= {"encoder", "denoiser", "decoder"}


def test_decoded_samples_are_written(run):
    out, _ = run
    decoded = np.load(out / "decoded.npy")
    assert decoded.shape == (4, 3, 16, 24) and np.all(np.isfinite(decoded))
    assert (out / "decoded.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_readme_example_runs_as_written(tmp_path):
    """The README's "Export your own model" block, unchanged, from the repository root."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Export your own model", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "(2, 3, 16, 24) PASSED"
