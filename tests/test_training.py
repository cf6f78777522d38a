"""Training smoke test: a few steps of ``tiny`` on the digits produce a loadable checkpoint."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("sklearn")

from dualrate.exporter.checkpoint import load_checkpoint  # noqa: E402
from dualrate.exporter.training import TrainConfig, train_checkpoint  # noqa: E402


def test_tiny_trains_and_loss_drops(tmp_path):
    logs: list[str] = []
    out, summary = train_checkpoint("tiny", tmp_path / "t", TrainConfig(steps=60, batch_size=32, lr=2e-3, warmup=5),
                                    log=logs.append)
    assert summary["steps_done"] == 60 and math.isfinite(summary["final_loss"])
    ck = load_checkpoint(out)
    assert ck.config["training"]["steps_done"] == 60
    assert "sklearn digits 8x8" in ck.config["training"]["data"]
    # loss after 60 steps is below the loss of the untrained head (v target variance ~ 1)
    assert summary["final_loss"] < 0.9


def test_rgb_size_cannot_train_on_digits(tmp_path):
    from dualrate.exporter.errors import BadInputError
    with pytest.raises(BadInputError, match="needs a 1-channel size"):
        train_checkpoint("small-32", tmp_path / "x", TrainConfig(steps=1))


def test_digits_classifier_is_accurate():
    from dualrate.exporter.digits_data import fit_digit_classifier
    _, acc = fit_digit_classifier()
    assert acc > 0.9
