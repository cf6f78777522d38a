"""``dualrate export`` and the ONNX Runtime target: bundle contents, checks, parity, safe writes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
import torch

from dualrate.exporter.bundle import open_bundle
from dualrate.exporter.checkpoint import load_checkpoint
from dualrate.exporter.errors import BadInputError, BundleError, ParityError
from dualrate.exporter.export import ExportOptions
from dualrate.exporter.sampling import sample, spec_noise
from dualrate.exporter.spec_builder import SamplerOptions
from dualrate.exporter.torch_runner import TorchReferenceRunner
from dualrate.targets.base import get_target
from tests.conftest import REPO, run_cli
from dualrate.validation.export_check import export_bundle
from dualrate.validation.metrics import compare

pytestmark = pytest.mark.slow
OPTS = ExportOptions(sampler=SamplerOptions(num_steps=8, guidance=2.0, refresh_params={"k": 3, "phase": 0}))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("b") / "bundle"
    res = export_bundle(tiny_checkpoint, out, OPTS)
    return res


def test_bundle_layout_and_manifest(bundle, tiny_checkpoint):
    root = bundle.bundle.path
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    # no gate calibration (the fp32 floor, bf16/fp16): computed where first needed (calibration/)
    assert names == ["denoiser.onnx", "encoder.onnx", "golden/denoiser_io.npz",
                     "golden/encoder_io.npz",
                     "golden/every_step_seed0.npz",
                     "golden/trajectory_seed0.npz", "golden/trajectory_seed1.npz", "manifest.json", "spec.json"]
    man = json.loads((root / "manifest.json").read_text())
    assert man["format"] == "dualrate-bundle" and man["format_version"] == 2
    assert set(man["files"]) == set(names) - {"manifest.json"}
    ckpt = load_checkpoint(tiny_checkpoint)
    assert man["source"] == {"kind": "checkpoint", "name": "tiny", "sha256": ckpt.sha256,
                             "path": str(tiny_checkpoint.resolve())}
    assert man["source_checkpoint"] == man["source"]
    assert bundle.bundle.spec.provenance == {"source_sha256": ckpt.sha256, "source": "tiny"}
    assert {"dualrate", "torch", "onnx", "numpy"} <= set(man["versions"])
    assert man["export_options"]["sampler"]["num_steps"] == 8
    traj = bundle.bundle.golden("trajectory_seed1")
    assert traj["z"].shape == (8, 2, 1, 8, 8) and list(traj["refresh_cond"]) == [0, 3, 6]
    assert list(traj["refresh_uncond"]) == [0, 3, 6] and list(traj["cond.class_id"]) == [2, 3]
    assert traj["cond.class_id"].dtype == np.int64 and "decoded" not in traj


def test_graphs_keep_the_declared_signature_with_a_dynamic_batch(bundle):
    spec = bundle.bundle.spec
    for graph, io in (("encoder", spec.model.encoder), ("denoiser", spec.model.denoiser)):
        m = onnx.load(str(bundle.bundle.graph(graph)))
        assert [i.name for i in m.graph.input] == [i.name for i in io.inputs]
        assert all(i.type.tensor_type.shape.dim[0].dim_param for i in m.graph.input)
    assert [(i.name, i.feeds) for i in spec.model.denoiser.inputs] == [
        ("z", "sample"), ("logsnr", "time"), ("logsnr_ctx", "time_ctx"), ("class_id", "cond:class_id"),
        ("feat0", "feature:feat0"), ("feat1", "feature:feat1")]
    assert not (bundle.bundle.path / "decoder.onnx").exists() and bundle.bundle.graph_names() == ["encoder", "denoiser"]


def test_export_parity_figures_pass_fp32_gates(bundle):
    assert {(r.graph, r.output) for r in bundle.parity} == {("encoder", "feat0"), ("encoder", "feat1"),
                                                             ("denoiser", "prediction")}
    for r in bundle.parity:
        assert r.passed and r.metrics.rel_l2 <= 1e-4 and r.metrics.cosine >= 0.99999


def test_export_is_deterministic(bundle, tiny_checkpoint, tmp_path):
    again = export_bundle(tiny_checkpoint, tmp_path / "again", OPTS).bundle.path
    for rel in ("spec.json", "encoder.onnx", "denoiser.onnx", "manifest.json", "golden/denoiser_io.npz"):
        assert (again / rel).read_bytes() == (bundle.bundle.path / rel).read_bytes(), rel


def test_ort_runner_keeps_features_as_ort_values(bundle):
    import onnxruntime as ort
    target = get_target("onnxruntime")
    runner = target.open_runner(bundle.bundle, target.compile(bundle.bundle))
    spec = bundle.bundle.spec
    z, t, cls = np.zeros((2, 1, 8, 8), np.float32), np.zeros(2, np.float32), np.zeros(2, np.int64)
    feats = runner.encode({"z": z, "logsnr": t, "class_id": cls})
    assert list(feats) == ["feat0", "feat1"] and all(isinstance(f, ort.OrtValue) for f in feats.values())
    out = runner.denoise({"z": z, "logsnr": t, "logsnr_ctx": t, "class_id": cls, **feats})
    assert isinstance(out, np.ndarray) and out.shape == (2, 1, 8, 8) and out.dtype == np.float32
    host = runner.features_to_numpy(feats)
    assert {k: v.shape for k, v in host.items()} == {"feat0": (2, 16, 8, 8), "feat1": (2, 32, 4, 4)}
    # inputs are checked by name against the spec before ONNX Runtime sees them: one line each
    bad = {"shape": ({"z": np.zeros((2, 3, 8, 8), np.float32), "logsnr": t, "class_id": cls},
                     "encoder: input 'z' has shape [2, 3, 8, 8]; the graph takes ['batch', 1, 8, 8]"),
           "dtype": ({"z": z.astype(np.float64), "logsnr": t, "class_id": cls},
                     "encoder: input 'z' has dtype float64; the graph takes float32"),
           "missing": ({"z": z, "logsnr": t}, "encoder: input(s) ['class_id'] were not fed"),
           "extra": ({"z": z, "logsnr": t, "class_id": cls, "label": cls},
                     "encoder: fed ['label'], which the graph does not take"),
           "rows": ({"z": z, "logsnr": np.zeros(3, np.float32), "class_id": cls},
                    "encoder: input 'logsnr' has 3 rows; other inputs have 2")}
    for case, (feeds, message) in bad.items():
        with pytest.raises(BadInputError) as info:
            runner.encode(feeds)
        assert message in str(info.value) and "\n" not in str(info.value), (case, str(info.value))
    # what only the runtime can see (a cached OrtValue of another batch) is one line naming the runtime and graph
    feats3 = runner.encode({"z": np.zeros((3, 1, 8, 8), np.float32), "logsnr": np.zeros(3, np.float32),
                            "class_id": np.zeros(3, np.int64)})
    with pytest.raises(BadInputError, match=r"^onnxruntime could not run the denoiser graph: ") as info:
        runner.denoise({"z": z, "logsnr": t, "logsnr_ctx": t, "class_id": cls, **feats3})
    assert "\n" not in str(info.value)
    assert spec.model.encoder.outputs[0].name == "feat0"


def test_ort_samples_match_pytorch_at_60_db(bundle, pair):
    b = bundle.bundle
    target = get_target("onnxruntime")
    runner = target.open_runner(b, target.compile(b))
    labels = np.arange(6) % 10
    ort_x = sample(runner, b.spec, labels, spec_noise(b.spec, 6, seed=3)).x
    ref_x = sample(TorchReferenceRunner(pair, b.spec), b.spec, labels, spec_noise(b.spec, 6, seed=3)).x
    m = compare(ort_x, ref_x)
    assert m.psnr_db >= 60.0, m


def test_compile_cache_is_reused_and_tampering_is_caught(bundle):
    b = bundle.bundle
    target = get_target("onnxruntime")
    first = target.compile(b)
    mtime = (first.path / "encoder.onnx").stat().st_mtime_ns
    assert target.compile(b).path == first.path and (first.path / "encoder.onnx").stat().st_mtime_ns == mtime
    data = (first.path / "encoder.onnx").read_bytes()
    (first.path / "encoder.onnx").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(BundleError, match="changed or missing file encoder.onnx"):
        target.compile(b)
    target.compile(b, force=True)


def test_sample_cli_on_onnxruntime_is_reproducible(bundle, tmp_path):
    args = ["sample", str(bundle.bundle.path), "--target", "onnxruntime", "--class", "1,2", "-n", "2"]
    a = run_cli(*args, "-o", str(tmp_path / "a.png"))
    assert a.returncode == 0, a.stderr
    assert "on onnxruntime (fp32)" in a.stdout
    run_cli(*args, "-o", str(tmp_path / "b.png"))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    bad = run_cli(*args, "--steps", "4", "-o", str(tmp_path / "c.png"))
    assert bad.returncode == 2 and "--steps cannot change a bundle" in bad.stderr


@pytest.mark.parametrize("damage", ["changed", "missing", "extra"])
def test_tampered_bundle_is_refused_with_exit_2(bundle, tmp_path, damage):
    copy = tmp_path / "b"
    shutil.copytree(bundle.bundle.path, copy, ignore=shutil.ignore_patterns("targets"))
    if damage == "changed":
        data = (copy / "denoiser.onnx").read_bytes()
        (copy / "denoiser.onnx").write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
        message = "denoiser.onnx has sha256"
    elif damage == "missing":
        (copy / "encoder.onnx").unlink()
        message = "['encoder.onnx'] listed in the manifest are missing"
    else:
        (copy / "evil.onnx").write_bytes(b"x")
        message = "['evil.onnx'] are not in the manifest"
    with pytest.raises(BundleError, match=message.replace("[", r"\[").replace("]", r"\]")):
        open_bundle(copy)
    res = run_cli("sample", str(copy), "--target", "onnxruntime", "-o", str(tmp_path / "g.png"))
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr
    assert not (copy / "targets").exists() and not (tmp_path / "g.png").exists()


def test_existing_output_is_refused_and_force_replaces_only_after_success(bundle, tiny_checkpoint, tmp_path):
    out = tmp_path / "b"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = run_cli("export", str(tiny_checkpoint), "-o", str(out), "--steps", "4")
    assert res.returncode == 2 and "already exists; pass --force" in res.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_parity_failure_writes_nothing(tiny_checkpoint, tmp_path, monkeypatch):
    import dualrate.validation.export_check as ec
    from dualrate.validation.gates import Gate
    monkeypatch.setattr(ec, "gate_for", lambda p: Gate(rel_l2=0.0, cosine=1.1, psnr_db=1e9))
    with pytest.raises(ParityError, match=r"export parity failed: encoder output feat0 .*nothing was written"):
        export_bundle(tiny_checkpoint, tmp_path / "b", ExportOptions(sampler=SamplerOptions(num_steps=2)))
    assert list(tmp_path.iterdir()) == []


def test_pruned_input_is_caught(tmp_path):
    """The TorchScript exporter drops inputs the model ignores; the signature check must see it."""
    import warnings

    from dualrate.exporter.export import spec_for_model
    from dualrate.exporter.onnx_export import check_graph
    from tests.custom_pair import make_pair

    class IgnoresContext(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z, logsnr, logsnr_ctx, class_id, feat):
            return self.inner(z, logsnr, logsnr, class_id, feat)     # logsnr_ctx unused

    pair = make_pair()
    spec = spec_for_model(pair, SamplerOptions(num_steps=2), {})
    den_io = spec.model.denoiser
    assert [i.name for i in den_io.inputs] == ["z", "logsnr", "logsnr_ctx", "class_id", "feat0"]
    pair.denoiser = IgnoresContext(pair.denoiser)
    bound = pair.bound_denoiser(["feat0"])
    args = (torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.zeros(2), torch.zeros(2, dtype=torch.int64),
            torch.zeros(2, 4, 8, 8))
    path = tmp_path / "denoiser.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(bound, args, str(path), dynamo=False, input_names=[i.name for i in den_io.inputs],
                          output_names=["prediction"],
                          dynamic_axes={n.name: {0: "batch"} for n in (*den_io.inputs, *den_io.outputs)})
    with pytest.raises(BadInputError, match=r"denoiser: declared input\(s\) \['logsnr_ctx', 'class_id'\] did not survive export"):
        check_graph(path, den_io, dynamic_batch=True, batch=2)


def test_forced_external_data_and_static_batch(tiny_checkpoint, tmp_path):
    opts = ExportOptions(sampler=SamplerOptions(num_steps=4), external_data=True, static_batch=3)
    res = export_bundle(tiny_checkpoint, tmp_path / "b", opts)
    root = res.bundle.path
    assert (root / "encoder.onnx.data").stat().st_size > (root / "encoder.onnx").stat().st_size
    assert json.loads((root / "manifest.json").read_text())["external_data"] == {"encoder": True, "denoiser": True}
    m = onnx.load(str(root / "encoder.onnx"), load_external_data=False)
    assert [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim] == [3, 1, 8, 8]
    assert res.bundle.spec.model.encoder.inputs[0].shape == (3, 1, 8, 8)
    assert all(r.passed for r in res.parity)
    target = get_target("onnxruntime")
    compiled = target.compile(res.bundle)
    runner = target.open_runner(res.bundle, compiled)
    x = sample(runner, res.bundle.spec, [0, 1, 2], spec_noise(res.bundle.spec, 3)).x
    assert np.all(np.isfinite(x))
    with pytest.raises(BadInputError, match=r"encoder: input 'z' has shape \[2, 1, 8, 8\]; the graph takes \[3, 1, 8, 8\]"):
        sample(runner, res.bundle.spec, [0, 1], spec_noise(res.bundle.spec, 2))


def test_interrupted_export_leaves_nothing_and_keeps_the_previous_bundle(bundle, tiny_checkpoint, tmp_path):
    out = tmp_path / "b"
    shutil.copytree(bundle.bundle.path, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "dualrate", "export", str(tiny_checkpoint), "-o", str(out),
                             "--force", "--steps", "4"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:       # wait until the export is writing its staging directory
        staged = [p for p in tmp_path.iterdir() if p.name.startswith(".b.partial-")]
        if staged and any(f.suffix == ".onnx" for f in staged[0].iterdir()):
            break
        time.sleep(0.05)
    else:
        pytest.fail("export never started writing")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    open_bundle(out)    # still a complete, verified bundle
