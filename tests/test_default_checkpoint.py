"""The shipped default checkpoint: loads, and its samples are the requested digits."""

from __future__ import annotations

import importlib.util

import pytest

from dualrate.exporter.checkpoint import load_checkpoint
from dualrate.exporter.spec_builder import SamplerOptions
from tests.conftest import DEFAULT_CHECKPOINT, REPO

pytest.importorskip("sklearn")


def test_shipped_checkpoint_is_small_and_loads():
    size = sum(p.stat().st_size for p in DEFAULT_CHECKPOINT.iterdir())
    assert size <= 20 * 2 ** 20
    ck = load_checkpoint(DEFAULT_CHECKPOINT)
    assert ck.config["model"]["size"] == "digits" and ck.pair.conditioning[0].num_classes == 10
    assert ck.pair.sample_shape == (1, 16, 16) and ck.pair.conditioning[0].null == 10
    assert ck.config["training"]["minutes"] <= 30


@pytest.mark.slow
def test_samples_are_classified_as_the_requested_digit():
    spec = importlib.util.spec_from_file_location("evaluate_digits", REPO / "examples" / "evaluate_digits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.evaluate(DEFAULT_CHECKPOINT, per_class=6, seed=11,
                       opts=SamplerOptions(num_steps=32, refresh_params={"k": 4, "phase": 0}))
    assert res["accuracy"] >= 0.8, res
