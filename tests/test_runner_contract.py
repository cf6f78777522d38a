"""One contract, every target: each runner that can execute here behaves the same way.

Targets that cannot execute here are skipped with the target's own reason (and the
validator reports them as not run, see tests/test_validate.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from dualrate.exporter.errors import BadInputError
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


def _inputs(spec, rows, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((rows, *spec.model.sample_shape)).astype(np.float32)
    lam = np.linspace(-4, 4, rows).astype(np.float32)
    cls = (np.arange(rows) % spec.model.num_classes).astype(np.int64)
    return z, lam, cls


def test_encode_and_denoise_shapes_and_dtypes(target_runner, tiny_bundle):
    _, _, runner = target_runner
    spec = tiny_bundle.spec
    for rows in (1, 4):
        z, lam, cls = _inputs(spec, rows)
        feats = runner.encode(z, lam, cls)
        host = runner.features_to_numpy(feats)
        assert [f.shape for f in host] == [(rows, *o.shape[1:]) for o in spec.model.encoder.outputs]
        out = runner.denoise(z, lam, lam, cls, feats)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == z.shape


def test_cached_features_survive_another_encode(target_runner, tiny_bundle):
    _, _, runner = target_runner
    z, lam, cls = _inputs(tiny_bundle.spec, 4)
    first = runner.encode(z, lam, cls)
    before = [f.copy() for f in runner.features_to_numpy(first)]
    runner.encode(-z, lam + 1, cls[::-1].copy())           # the other guidance branch's refresh
    for a, b in zip(before, runner.features_to_numpy(first)):
        np.testing.assert_array_equal(a, b)


def test_numpy_features_are_accepted_and_match_native_ones(target_runner, tiny_bundle):
    _, _, runner = target_runner
    z, lam, cls = _inputs(tiny_bundle.spec, 2)
    feats = runner.encode(z, lam, cls)
    native = runner.denoise(z, lam, lam - 1, cls, feats)
    host = runner.denoise(z, lam, lam - 1, cls, [f.copy() for f in runner.features_to_numpy(feats)])
    np.testing.assert_array_equal(native, host)


def test_bad_input_shape_is_a_clear_error(target_runner, tiny_bundle):
    _, _, runner = target_runner
    z, lam, cls = _inputs(tiny_bundle.spec, 2)
    with pytest.raises(BadInputError, match="rejected the encoder inputs"):
        runner.encode(np.zeros((2, 3, 5, 5), np.float32), lam, cls)


def test_sampling_matches_the_reference_under_its_effective_gate(target_runner, tiny_bundle, pair):
    target, compiled, runner = target_runner
    spec = tiny_bundle.spec
    labels = np.array([0, 3, 7])
    got = sample(runner, spec, labels, spec_noise(spec, 3, seed=4)).x
    ref = sample(TorchReferenceRunner(pair), spec, labels, spec_noise(spec, 3, seed=4)).x
    m = compare(got, ref)
    assert not gate_for(compiled.effective_precision).check(m, final_sample=True), (target.name, m)
