"""Bad input through the real CLI, one case each: exit code, one message naming the problem,
no traceback, nothing written or overwritten.

(Per-module tests pin the same errors through the Python API; this is the user's view.)
The last section is the Python entrance: ``dualrate.export(model, ...)`` of a model declared
in code, refused with a typed one-line error before anything is written.
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
    "major-version": (("spec_version",), "3.1.0", "spec_version 3.1.0 has major version 3"),
    "v1-spec": (("spec_version",), "1.0.0", "spec_version 1.0.0 was written by an earlier dualrate (inputs bound by "
                "position); this dualrate reads 2.x with inputs bound by role. Re-export the bundle"),
    "unknown-role": (("model", "encoder", "inputs", 1, "feeds"), "timestep", "model.encoder input 'logsnr' is fed 'timestep'"),
    "time-rank": (("model", "denoiser", "inputs", 2, "shape"), ["batch", 1],
                  "model.denoiser input 'logsnr_ctx' (time_ctx) is float32 ['batch', 1]; a time input is [batch]"),
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
                                "-n", "1", "-o", str(tmp_path / "g.png")), 2,
                        "encoder: input 'z' has shape [3, 1, 8, 8]; the graph takes [2, 1, 8, 8]")
    assert not (tmp_path / "g.png").exists()


def test_runner_yielding_nan_names_the_step_and_graph(tmp_path):
    from dualrate.exporter.export import spec_for_model
    from dualrate.exporter.spec_builder import SamplerOptions
    from tests.custom_pair import make_nan_pair

    pair = make_nan_pair(threshold=0.0)
    model = {"family": "custom", "factory": "tests.custom_pair:make_nan_pair", "kwargs": {"threshold": 0.0}}
    save_checkpoint(pair, make_config(model), tmp_path / "ck")
    spec = spec_for_model(pair, SamplerOptions(num_steps=8), {})
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


# --------------------------------------------------------------------------- the Python entrance: dualrate.export(model)

class TextEncoder(torch.nn.Module):
    """encoder(z, t, text) -> {"mid": ...}; ``text`` is an embedding [L=3, D=5]."""

    def __init__(self, length: int = 3, dim: int = 5, width: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, width, 3, padding=1)
        self.lin = torch.nn.Linear(length * dim, width)

    def forward(self, z, t, text):
        return {"mid": torch.tanh(self.conv(z) + self.lin(text.flatten(1))[:, :, None, None] + t[:, None, None, None] / 15)}


class TextDenoiser(torch.nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = torch.nn.Conv2d(1 + width, 1, 3, padding=1)

    def forward(self, z, t, t_ctx, text, mid):
        return (self.conv(torch.cat([z, mid], 1)) * (1 + (t - t_ctx)[:, None, None, None] / 30)
                + text.mean((1, 2))[:, None, None, None])


class RGBDecoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, latent):
        return torch.tanh(self.conv(latent))


class NaNDecoder(RGBDecoder):
    def forward(self, latent):
        return super().forward(latent) * float("nan")


def text_model(**overrides):
    """A tiny text-conditioned model with a stored null embedding and an RGB decoder; each bad
    case below changes one thing of it."""
    import dualrate

    torch.manual_seed(0)
    args = dict(encoder=TextEncoder(), denoiser=TextDenoiser(),
                encoder_inputs={"z": dualrate.SAMPLE, "t": dualrate.TIME, "text": dualrate.cond("text")},
                denoiser_inputs={"z": dualrate.SAMPLE, "t": dualrate.TIME, "t_ctx": dualrate.TIME_CTX,
                                 "text": dualrate.cond("text"), "mid": dualrate.feature("mid")},
                sample_shape=(1, 8, 8), prediction="eps",
                conditioning=[dualrate.Conditioning("text", (3, 5), "float32", null=np.zeros((3, 5), np.float32))],
                decoder=dualrate.Decoder(RGBDecoder(), input="latent", scaling_factor=0.5))
    args.update(overrides)
    return dualrate.DualRateModel(**args)


def test_the_text_model_itself_is_accepted():
    """The control: the unmodified model describes (graphs probed, spec validated) with guidance on."""
    from dualrate.exporter.export import spec_for_model
    from dualrate.exporter.spec_builder import SamplerOptions

    spec = spec_for_model(text_model(), SamplerOptions(num_steps=2, guidance=2.0), {})
    assert [(i.name, i.feeds) for i in spec.model.denoiser.inputs] == [
        ("z", "sample"), ("t", "time"), ("t_ctx", "time_ctx"), ("text", "cond:text"), ("mid", "feature:mid")]
    assert spec.model.conditioning[0].null_kind == "file" and spec.model.decoder.output_shape == (3, 8, 8)


def _cond(**kw):
    import dualrate
    return [dualrate.Conditioning("text", **{"shape": (3, 5), "dtype": "float32", "null": 0.0, **kw})]


def _dec(module, **kw):
    import dualrate
    return dualrate.Decoder(module, input="latent", **kw)


def _den_inputs(mid):
    import dualrate
    return {"z": dualrate.SAMPLE, "t": dualrate.TIME, "t_ctx": dualrate.TIME_CTX, "text": dualrate.cond("text"),
            "mid": mid}


def _api_cases():
    import dualrate

    return {
        # a forward that does not take what was declared
        "forward-lacks-input": (
            dict(encoder_inputs={"z": dualrate.SAMPLE, "timestep": dualrate.TIME, "text": dualrate.cond("text")}), {},
            dualrate.BadInputError,
            "encoder: input 'timestep' was declared, but TextEncoder.forward does not accept it "
            "(its parameters: z, t, text)"),
        "forward-input-undeclared": (
            dict(denoiser_inputs={k: v for k, v in _den_inputs(dualrate.feature("mid")).items() if k != "t_ctx"}), {},
            dualrate.BadInputError,
            "denoiser: TextDenoiser.forward requires 't_ctx', which was not declared; bind it to a role"),
        # conditioning the module cannot take: the probe names every input with its dtype and shape
        "conditioning-shape": (
            dict(conditioning=_cond(shape=(4, 5))), {}, dualrate.BadInputError,
            "the encoder (TextEncoder.forward) failed on its declared inputs (z: float32 [1, 1, 8, 8], t: float32 [1], "
            "text: float32 [1, 4, 5]): RuntimeError: mat1 and mat2 shapes cannot be multiplied"),
        "conditioning-dtype": (
            dict(conditioning=_cond(dtype="int64", null=0)), {}, dualrate.BadInputError,
            "the encoder (TextEncoder.forward) failed on its declared inputs (z: float32 [1, 1, 8, 8], t: float32 [1], "
            "text: int64 [1, 3, 5]): RuntimeError"),
        # conditioning rows for the golden trajectories that do not fit the declaration
        "examples-shape": (
            {}, dict(examples={"text": np.zeros((2, 4, 5), np.float32)}), dualrate.BadInputError,
            "conditioning 'text' has shape [2, 4, 5]; expected [batch, 3, 5]"),
        "examples-non-finite": (
            {}, dict(examples={"text": np.full((2, 3, 5), np.nan, np.float32)}), dualrate.BadInputError,
            "conditioning 'text' contains NaN or Inf"),
        # guidance needs the unconditional branch's input
        "missing-null-under-guidance": (
            dict(conditioning=_cond(null=None)), dict(guidance=2.0), dualrate.SpecError,
            "guidance.scale is 2.0 but conditioning 'text' declares no null value for the unconditional branch; "
            "declare one (a value or a stored tensor) or sample without guidance (scale 1)"),
        # a feature the denoiser declares and the encoder does not produce
        "feature-not-produced": (
            dict(denoiser_inputs=_den_inputs(dualrate.feature("middle"))), {}, dualrate.BadInputError,
            "denoiser input 'mid' is fed feature 'middle', which the encoder does not produce (its outputs: ['mid'])"),
        "features-match-none": (
            dict(denoiser_inputs=_den_inputs(dualrate.features("up.*"))), {}, dualrate.BadInputError,
            "denoiser input 'mid' is fed features ['up.*'], which match none of the encoder's outputs ['mid']"),
        # a decoder whose output is non-finite
        "decoder-non-finite": (
            dict(decoder=_dec(NaNDecoder())), {}, dualrate.BadInputError,
            "the decoder (NaNDecoder.forward) returned NaN/Inf for input 'latent' = sample / 1.0 + 0.0 (float32 "
            "[1, "),
    }


API_CASES = ["forward-lacks-input", "forward-input-undeclared", "conditioning-shape", "conditioning-dtype",
             "examples-shape", "examples-non-finite", "missing-null-under-guidance", "feature-not-produced",
             "features-match-none", "decoder-non-finite"]


def _refused_by_export(tmp_path, model, export_kw, exc_type, needle):
    import dualrate

    out = tmp_path / "bundle"
    with pytest.raises(dualrate.DualrateError) as info:
        dualrate.export(model, out, steps=2, **export_kw)
    err = info.value
    assert type(err) is exc_type and isinstance(err, dualrate.BadInputError) and err.exit_code == 2, repr(err)
    assert "\n" not in str(err) and needle in str(err), str(err)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []             # no staging directory left beside it either
    return str(err)


@pytest.mark.parametrize("case", API_CASES)
def test_export_of_a_python_model_refuses_bad_input(case, tmp_path):
    overrides, export_kw, exc_type, needle = _api_cases()[case]
    _refused_by_export(tmp_path, text_model(**overrides), export_kw, exc_type, needle)


def test_bad_input_through_the_python_api_leaves_an_existing_bundle_alone(tmp_path):
    """force=True replaces only after success: a refused export keeps the previous output intact."""
    import dualrate

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(dualrate.BadInputError, match="does not produce"):
        dualrate.export(text_model(denoiser_inputs=_den_inputs(dualrate.feature("middle"))), out, steps=2, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"] and (out / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("rows,needle", [
    (np.full((2, 3, 5), "a"), "conditioning 'text' has dtype <U1; expected float32"),
    (np.zeros((0, 3, 5), np.float32), "conditioning holds no samples"),
])
def test_examples_of_the_wrong_dtype_or_empty_are_refused(tmp_path, rows, needle):
    import dualrate

    _refused_by_export(tmp_path, text_model(), dict(examples={"text": rows}), dualrate.BadInputError, needle)


def test_examples_naming_an_unknown_input_are_refused(tmp_path):
    import dualrate

    _refused_by_export(tmp_path, text_model(), dict(examples={"prompt": np.zeros((2, 3, 5), np.float32)}),
                       dualrate.BadInputError, "'prompt' is not an input of this model; it takes 'text'")


def test_a_decoder_scaling_factor_of_zero_is_refused_when_the_model_is_declared():
    import dualrate

    with pytest.raises(dualrate.BadInputError, match=r"decoder scaling_factor/shift_factor are 0.0/0.0; the decoder "
                       r"is fed sample / scaling_factor \+ shift_factor: expected finite numbers and a non-zero"):
        text_model(decoder=_dec(RGBDecoder(), scaling_factor=0.0))
