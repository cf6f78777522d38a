"""Checkpoint loading: formats, and one clear error per kind of bad checkpoint."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from dualrate.exporter.checkpoint import load_checkpoint, make_config, save_checkpoint
from dualrate.exporter.errors import CheckpointError
from tests.conftest import run_cli


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_directory_round_trip(tiny_checkpoint, pair):
    ck = load_checkpoint(tiny_checkpoint)
    assert _same_weights(ck.pair, pair)
    assert len(ck.sha256) == 64 and ck.config["model"]["size"] == "tiny"
    assert not ck.pair.encoder.training


def test_pt_state_dict_with_embedded_config(tmp_path, tiny_checkpoint, pair):
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    path = tmp_path / "model.pt"
    torch.save({"config": cfg, "state_dict": pair.state_dict()}, path)
    assert _same_weights(load_checkpoint(path).pair, pair)


def test_bare_pt_with_config_beside_it_or_a_preset(tmp_path, tiny_checkpoint, pair):
    path = tmp_path / "weights.pth"
    torch.save(pair.state_dict(), path)
    with pytest.raises(CheckpointError, match="config.json not found"):
        load_checkpoint(path)
    assert _same_weights(load_checkpoint(path, config_name="tiny").pair, pair)
    shutil.copy(tiny_checkpoint / "config.json", tmp_path / "config.json")
    assert _same_weights(load_checkpoint(path).pair, pair)


class _RunsCode:
    """Pickles to a call of os.system: loading it with plain pickle would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="never executes pickled code"):
        load_checkpoint(path, config_name="tiny")
    assert not marker.exists()
    # the control: the same file really does run code under an unsafe loader
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.fixture()
def ckdir(tmp_path, tiny_checkpoint):
    out = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, out)
    return out


def _rewrite_weights(ckdir, edit):
    from safetensors.torch import load_file, save_file
    state = load_file(str(ckdir / "model.safetensors"))
    edit(state)
    save_file(state, str(ckdir / "model.safetensors"))


def test_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"checkpoint .*nope not found"):
        load_checkpoint(tmp_path / "nope")


def test_empty_truncated_and_corrupt_weights(ckdir):
    w = ckdir / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\)"):
        load_checkpoint(ckdir)
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(ckdir)
    w.write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(ckdir)


def test_truncated_pt(tmp_path, pair):
    path = tmp_path / "m.pt"
    torch.save(pair.state_dict(), path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path, config_name="tiny")


def test_missing_and_unexpected_keys_are_named(ckdir):
    def edit(state):
        state.pop("denoiser.head.bias")
        state["encoder.extra.weight"] = torch.zeros(2)
    _rewrite_weights(ckdir, edit)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckdir)
    assert "missing keys denoiser.head.bias" in str(info.value)
    assert "unexpected keys encoder.extra.weight" in str(info.value)


def test_shape_mismatch_names_both_shapes(ckdir):
    _rewrite_weights(ckdir, lambda s: s.__setitem__("encoder.body.stem.weight", torch.zeros(16, 1, 5, 5)))
    with pytest.raises(CheckpointError, match=r"encoder.body.stem.weight: checkpoint \(16, 1, 5, 5\) vs model \(16, 1, 3, 3\)"):
        load_checkpoint(ckdir)


def test_non_finite_weights_are_named(ckdir):
    def edit(state):
        state["denoiser.head.weight"][0, 0, 0, 0] = float("nan")
    _rewrite_weights(ckdir, edit)
    with pytest.raises(CheckpointError, match=r"non-finite \(NaN/Inf\) values in denoiser.head.weight"):
        load_checkpoint(ckdir)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["model"].update(dropout=0.1), r"unknown model config field\(s\) \['dropout'\]"),
    (lambda c: c["model"]["encoder"].update(kernel=5), r"unknown field\(s\) \['kernel'\] in model.encoder"),
    (lambda c: c.update(optimizer={}), r"unknown top-level field\(s\) \['optimizer'\]"),
    (lambda c: c["model"].pop("image_size"), "lacks required field 'image_size'"),
    (lambda c: c["model"].update(prediction="score"), "prediction is 'score'"),
    (lambda c: c.update(format_version=9), "format_version 9 is newer"),
    (lambda c: c["model"].update(family="unet"), "model.family is 'unet'"),
])
def test_bad_config_fields(ckdir, edit, message):
    cfg = json.loads((ckdir / "config.json").read_text())
    edit(cfg)
    (ckdir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckdir)


def test_config_not_json(ckdir):
    (ckdir / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="is not valid JSON"):
        load_checkpoint(ckdir)


def test_custom_factory_needs_opt_in(tmp_path):
    from tests.custom_pair import make_pair
    pair = make_pair()
    model = {"family": "custom", "factory": "tests.custom_pair:make_pair", "kwargs": {}}
    save_checkpoint(pair, make_config(model), tmp_path / "custom")
    with pytest.raises(CheckpointError, match="--allow-factory"):
        load_checkpoint(tmp_path / "custom")
    ck = load_checkpoint(tmp_path / "custom", allow_factory=True)
    assert ck.pair.prediction == "eps" and _same_weights(ck.pair, pair)
    assert ck.pair.sample_shape == pair.sample_shape and ck.pair.conditioning == pair.conditioning


@pytest.mark.parametrize("case", ["missing", "corrupt", "evil"])
def test_cli_bad_checkpoint_exits_2_without_traceback(tmp_path, ckdir, case):
    if case == "missing":
        src = tmp_path / "missing"
    elif case == "corrupt":
        (ckdir / "model.safetensors").write_bytes(b"garbage")
        src = ckdir
    else:
        src = tmp_path / "evil.pt"
        torch.save({"x": _RunsCode(tmp_path / "pwned")}, src)
    res = run_cli("sample", str(src), "-o", str(tmp_path / "g.png"), "--steps", "2")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert res.stderr.startswith("dualrate sample: error: checkpoint")
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "pwned").exists()


def test_cli_unknown_size(tmp_path):
    res = run_cli("init", "--config", "gigantic", "-o", str(tmp_path / "x"))
    assert res.returncode == 2 and "unknown model size 'gigantic'; known sizes: tiny, digits" in res.stderr
    assert not (tmp_path / "x").exists()
