"""Bad input through the real CLI, one case each: exit code, one message naming the problem,
no traceback, nothing written or overwritten.

(Per-module tests pin the same errors through the Python API; this is the user's view.)
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from dualrate.exporter.checkpoint import make_config, save_checkpoint
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def _assert_clean_error(res, code, *needles):
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr
    lines = [line for line in res.stderr.strip().splitlines() if line.startswith("dualrate ")]
    assert len(lines) == 1, res.stderr
    for needle in needles:
        assert needle in res.stderr, (needle, res.stderr)


def _checkpoint_case(case, tmp_path, tiny_checkpoint, pair):
    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck)
    weights = ck / "model.safetensors"
    cfg = json.loads((ck / "config.json").read_text())
    if case == "missing":
        return tmp_path / "nope", "not found"
    if case == "empty":
        weights.write_bytes(b"")
        return ck, "is empty (0 bytes)"
    if case == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
        return ck, "truncated or corrupt"
    if case == "corrupt":
        weights.write_bytes(bytes(range(256)) * 8)
        return ck, "truncated or corrupt"
    if case.startswith("pt-"):
        pt = tmp_path / "m.pt"
        torch.save({"config": cfg, "state_dict": pair.state_dict()}, pt)
        data = pt.read_bytes()
        if case == "pt-empty":
            pt.write_bytes(b"")
            return pt, "is empty (0 bytes)"
        if case == "pt-truncated":
            pt.write_bytes(data[: len(data) // 3])
            return pt, "truncated or corrupt"
        if case == "pt-corrupt":
            pt.write_bytes(b"\x00" * 512)
            return pt, "truncated or corrupt"
    from safetensors.torch import load_file, save_file
    state = load_file(str(weights))
    if case == "missing-key":
        del state["encoder.c_emb.weight"]
        save_file(state, str(weights))
        return ck, "missing keys encoder.c_emb.weight"
    if case == "unexpected-key":
        state["denoiser.bonus"] = torch.zeros(3)
        save_file(state, str(weights))
        return ck, "unexpected keys denoiser.bonus"
    if case == "shape":
        state["encoder.c_emb.weight"] = torch.zeros(3, 32)
        save_file(state, str(weights))
        return ck, "encoder.c_emb.weight: checkpoint (3, 32) vs model (11, 32)"
    if case == "nan":
        state["encoder.c_emb.weight"][2, 5] = float("nan")
        save_file(state, str(weights))
        return ck, "non-finite (NaN/Inf) values in encoder.c_emb.weight"
    if case == "unknown-size":
        (ck / "config.json").write_text(json.dumps({"format": "dualrate-checkpoint", "format_version": 1,
                                                    "model": {"family": "dr-uvit", "size": "enormous"}}))
        return ck, "unknown model size 'enormous'; known sizes: tiny, digits, small-32, small-64"
    raise AssertionError(case)


CHECKPOINT_CASES = ["missing", "empty", "truncated", "corrupt", "pt-empty", "pt-truncated", "pt-corrupt",
                    "missing-key", "unexpected-key", "shape", "nan", "unknown-size"]


@pytest.mark.parametrize("case", CHECKPOINT_CASES)
@pytest.mark.parametrize("verb", ["export", "sample"])
def test_bad_checkpoint(case, verb, tmp_path, tiny_checkpoint, pair):
    src, needle = _checkpoint_case(case, tmp_path, tiny_checkpoint, pair)
    out = tmp_path / ("out.png" if verb == "sample" else "bundle")
    _assert_clean_error(run_cli(verb, str(src), "-o", str(out), "--steps", "2"), 2, needle)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]     # no staging leftovers


def test_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "ran"
    pt = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "x": RunsCode(marker)}, pt)
    _assert_clean_error(run_cli("export", str(pt), "-o", str(tmp_path / "b")), 2, "never executes pickled code")
    assert not marker.exists()


SPEC_CASES = {
    "wrong-type": (("sampler", "num_steps"), "8", "sampler.num_steps: expected an integer"),
    "non-monotone": (("sampler", "tables", "t"), "swap", "sampler.tables.t must decrease strictly"),
    "table-length": (("sampler", "tables", "coef_x0"), "short", "sampler.tables.coef_x0 has 7 entries; expected 8"),
    "refresh-no-0": (("dual_rate", "resolved_refresh_steps"), [2, 4], "must start with step 0"),
    "refresh-range": (("dual_rate", "resolved_refresh_steps"), [0, 8], "out of range for 8 steps"),
    "major-version": (("spec_version",), "2.1.0", "spec_version 2.1.0 has major version 2"),
    "unknown-field": (("guidance", "rescale"), 0.7, "guidance.rescale: unknown field (strict mode)"),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_bad_spec(case, tmp_path, tiny_bundle):
    path, value, needle = SPEC_CASES[case]
    data = json.loads((tiny_bundle.path / "spec.json").read_text())
    node = data
    for key in path[:-1]:
        node = node[key]
    if value == "swap":
        node[path[-1]][2], node[path[-1]][3] = node[path[-1]][3], node[path[-1]][2]
    elif value == "short":
        node[path[-1]] = node[path[-1]][:-1]
    else:
        node[path[-1]] = value
    (tmp_path / "spec.json").write_text(json.dumps(data))
    _assert_clean_error(run_cli("spec", "check", str(tmp_path / "spec.json"), "--strict"), 2, needle)


@pytest.mark.parametrize("damage", ["changed", "missing", "extra"])
@pytest.mark.parametrize("verb", ["sample", "validate", "compile"])
def test_tampered_bundle(damage, verb, tmp_path, tiny_bundle):
    b = tmp_path / "b"
    shutil.copytree(tiny_bundle.path, b, ignore=shutil.ignore_patterns("targets"))
    if damage == "changed":
        (b / "spec.json").write_text((b / "spec.json").read_text().replace('"scale": 2.0', '"scale": 2.5'))
        needle = "spec.json has sha256"
    elif damage == "missing":
        (b / "golden" / "encoder_io.npz").unlink()
        needle = "['golden/encoder_io.npz'] listed in the manifest are missing"
    else:
        (b / "golden" / "extra.npz").write_bytes(b"PK")
        needle = "['golden/extra.npz'] are not in the manifest"
    args = {"sample": ["-o", str(tmp_path / "g.png")], "validate": [], "compile": []}[verb]
    _assert_clean_error(run_cli(verb, str(b), "--target", "onnxruntime", *args), 2, needle)
    assert not (b / "targets").exists() and not (tmp_path / "g.png").exists()


def test_wrong_batch_for_a_static_bundle_at_run_time(tmp_path, tiny_checkpoint):
    res = run_cli("export", str(tiny_checkpoint), "-o", str(tmp_path / "b"), "--steps", "2", "--static-batch", "2")
    assert res.returncode == 0, res.stderr
    _assert_clean_error(run_cli("sample", str(tmp_path / "b"), "--target", "onnxruntime", "--class", "1,2,3",
                                "-n", "1", "-o", str(tmp_path / "g.png")), 2, "onnxruntime rejected the encoder inputs")
    assert not (tmp_path / "g.png").exists()


def test_runner_yielding_nan_names_the_step_and_graph(tmp_path):
    from dualrate.exporter.spec_builder import SamplerOptions, make_spec
    from tests.custom_pair import make_nan_pair

    pair = make_nan_pair(threshold=0.0)
    model = {"family": "custom", "factory": "tests.custom_pair:make_nan_pair", "kwargs": {"threshold": 0.0}}
    save_checkpoint(pair, make_config(model), tmp_path / "ck")
    spec = make_spec(pair.info, [(4, 8, 8)], SamplerOptions(num_steps=8))
    k = int(np.argmax(np.asarray(spec.sampler.tables.logsnr) > 0.0))       # first step with logsnr > 0
    res = run_cli("sample", str(tmp_path / "ck"), "--allow-factory", "--steps", "8", "-o", str(tmp_path / "g.png"))
    _assert_clean_error(res, 1, f"non-finite values (NaN/Inf) in the denoiser output at step {k}")
    assert not (tmp_path / "g.png").exists()


@pytest.mark.parametrize("verb", ["init", "export", "sample", "spec"])
def test_existing_output_needs_force(verb, tmp_path, tiny_checkpoint):
    out = tmp_path / "exists"
    out.write_text("keep me")
    args = {"init": ["init", "--config", "tiny", "-o", str(out)],
            "export": ["export", str(tiny_checkpoint), "-o", str(out)],
            "sample": ["sample", str(tiny_checkpoint), "-o", str(out)],
            "spec": ["spec", "from-diffusers", str(tmp_path / "missing.json"), "--steps", "4", "-o", str(out)]}[verb]
    _assert_clean_error(run_cli(*args), 2, "already exists; pass --force")
    assert out.read_text() == "keep me"
