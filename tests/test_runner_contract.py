"""One contract, every target: each runner that can execute here behaves the same way.

The contract passes inputs by name (``encode(feeds) -> {output name: feature}``,
``denoise(feeds) -> numpy``, ``features_to_numpy(dict) -> dict``); ``BaseRunner`` checks
the feeds against the spec and turns runtime errors into one-line ``BadInputError``s.
Targets that cannot execute here are skipped with the target's own reason (and the
validator reports them as not run, see tests/test_validate.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from dualrate.exporter.errors import BadInputError
from dualrate.exporter.runner import BaseRunner, graph_feeds, role_values
from dualrate.exporter.sampling import sample, spec_noise
from dualrate.exporter.torch_runner import TorchReferenceRunner
from dualrate.targets.base import BACKENDS, get_target
from dualrate.validation.gates import gate_for
from dualrate.validation.metrics import compare

pytestmark = pytest.mark.slow
PRECISION = {"onnxruntime": "fp32", "openvino": "fp32", "coreml": "fp32", "tensorrt": "fp32"}


@pytest.fixture(params=sorted(BACKENDS))
def target_runner(request, tiny_bundle):
    target = get_target(request.param)
    reason = target.available() or target.numeric_unavailable()
    if reason:
        pytest.skip(f"{request.param}: {reason}")
    compiled = target.compile(tiny_bundle, PRECISION[request.param])
    return target, compiled, target.open_runner(tiny_bundle, compiled)


def _values(spec, rows, seed=0):
    """Role values for ``rows`` rows: a sample, a time and a time_ctx per row, class ids."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, *spec.model.sample_shape)).astype(np.float32)
    lam = np.linspace(-4, 4, rows)
    cls = (np.arange(rows) % spec.model.condition("class_id").num_classes).astype(np.int64)
    return z, lam, {"class_id": cls}


def _enc_feeds(spec, z, lam, cond):
    return graph_feeds(spec.model.encoder, role_values(z, lam, None, cond))


def _den_feeds(spec, z, lam, lam_ctx, cond, feats):
    return graph_feeds(spec.model.denoiser, role_values(z, lam, lam_ctx, cond, feats))


def test_feeds_are_built_by_role_and_named_like_the_graph_inputs(tiny_bundle):
    spec = tiny_bundle.spec
    z, lam, cond = _values(spec, 3)
    feeds = _den_feeds(spec, z, lam, lam - 1, cond, {"feat0": "F0", "feat1": "F1"})
    assert list(feeds) == ["z", "logsnr", "logsnr_ctx", "class_id", "feat0", "feat1"]
    assert feeds["z"] is z and feeds["class_id"] is cond["class_id"] and (feeds["feat0"], feeds["feat1"]) == ("F0", "F1")
    assert feeds["logsnr"].dtype == feeds["logsnr_ctx"].dtype == np.float32          # cast to the graph input's dtype
    np.testing.assert_array_equal(feeds["logsnr_ctx"], (lam - 1).astype(np.float32))


def test_encode_and_denoise_shapes_and_dtypes(target_runner, tiny_bundle):
    _, _, runner = target_runner
    assert isinstance(runner, BaseRunner)
    spec = tiny_bundle.spec
    for rows in (1, 4):
        z, lam, cond = _values(spec, rows)
        feats = runner.encode(_enc_feeds(spec, z, lam, cond))
        assert list(feats) == [o.name for o in spec.model.encoder.outputs]
        host = runner.features_to_numpy(feats)
        assert {k: v.shape for k, v in host.items()} == {o.name: (rows, *o.shape[1:]) for o in spec.model.encoder.outputs}
        assert all(v.dtype == np.float32 for v in host.values())
        out = runner.denoise(_den_feeds(spec, z, lam, lam, cond, feats))
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == z.shape


def test_cached_features_survive_another_encode(target_runner, tiny_bundle):
    _, _, runner = target_runner
    spec = tiny_bundle.spec
    z, lam, cond = _values(spec, 4)
    first = runner.encode(_enc_feeds(spec, z, lam, cond))
    before = {k: v.copy() for k, v in runner.features_to_numpy(first).items()}
    runner.encode(_enc_feeds(spec, -z, lam + 1, {"class_id": cond["class_id"][::-1].copy()}))  # the other branch's refresh
    after = runner.features_to_numpy(first)
    assert list(after) == list(before)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])


def test_numpy_features_are_accepted_and_match_native_ones(target_runner, tiny_bundle):
    _, _, runner = target_runner
    spec = tiny_bundle.spec
    z, lam, cond = _values(spec, 2)
    feats = runner.encode(_enc_feeds(spec, z, lam, cond))
    native = runner.denoise(_den_feeds(spec, z, lam, lam - 1, cond, feats))
    host = {k: v.copy() for k, v in runner.features_to_numpy(feats).items()}
    np.testing.assert_array_equal(native, runner.denoise(_den_feeds(spec, z, lam, lam - 1, cond, host)))


def test_bad_feeds_are_one_line_errors_naming_graph_and_input(target_runner, tiny_bundle):
    _, _, runner = target_runner
    spec = tiny_bundle.spec
    z, lam, cond = _values(spec, 2)
    good = _enc_feeds(spec, z, lam, cond)
    cases = [({**good, "z": np.zeros((2, 3, 5, 5), np.float32)},
              "encoder: input 'z' has shape [2, 3, 5, 5]; the graph takes ['batch', 1, 8, 8]"),
             ({**good, "class_id": good["class_id"].astype(np.float32)},
              "encoder: input 'class_id' has dtype float32; the graph takes int64"),
             ({k: v for k, v in good.items() if k != "logsnr"}, "encoder: input(s) ['logsnr'] were not fed"),
             ({**good, "logsnr_ctx": good["logsnr"]}, "encoder: fed ['logsnr_ctx'], which the graph does not take"),
             ({**good, "class_id": np.zeros(3, np.int64)}, "encoder: input 'class_id' has 3 rows; other inputs have 2")]
    for feeds, message in cases:
        with pytest.raises(BadInputError) as info:
            runner.encode(feeds)
        assert str(info.value) == message or message in str(info.value), (message, str(info.value))
        assert "\n" not in str(info.value)


def test_a_runtime_failure_is_one_line_naming_the_graph(target_runner, tiny_bundle):
    """Native features of another batch get past the host checks; the runtime's error is wrapped."""
    target, _, runner = target_runner
    spec = tiny_bundle.spec
    z3, lam3, cond3 = _values(spec, 3)
    feats3 = runner.encode(_enc_feeds(spec, z3, lam3, cond3))
    z, lam, cond = _values(spec, 2)
    with pytest.raises(BadInputError) as info:
        runner.denoise(_den_feeds(spec, z, lam, lam, cond, feats3))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{runner.name} could not run the denoiser graph: "), msg


def test_decode_without_a_decoder_is_a_clear_error(target_runner):
    _, _, runner = target_runner
    with pytest.raises(BadInputError, match="this bundle has no decoder graph"):
        runner.decode({"z": np.zeros((1, 1, 8, 8), np.float32)})


def test_sampling_matches_the_reference_under_its_effective_gate(target_runner, tiny_bundle, pair):
    target, compiled, runner = target_runner
    spec = tiny_bundle.spec
    labels = np.array([0, 3, 7])
    got = sample(runner, spec, labels, spec_noise(spec, 3, seed=4))
    ref = sample(TorchReferenceRunner(pair, spec), spec, {"class_id": labels}, spec_noise(spec, 3, seed=4))
    assert got.refresh_log == ref.refresh_log == {"cond": [0, 3, 6], "uncond": [0, 3, 6]}
    m = compare(got.x, ref.x)
    assert not gate_for(compiled.effective_precision).check(m, final_sample=True), (target.name, m)
