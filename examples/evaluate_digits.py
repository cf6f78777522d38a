"""Class accuracy of samples from a digits checkpoint, judged by a classifier trained on the real digits.

    python examples/evaluate_digits.py examples/checkpoints/dr-uvit-digits --per-class 50

Samples every class with the dual-rate reference loop, downsamples to the 8x8
grid of the source data and classifies with a logistic regression fitted on the
real digits (its held-out accuracy is printed for scale).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dualrate.exporter.checkpoint import load_checkpoint  # noqa: E402
from dualrate.exporter.digits_data import downsample_to_8x8, fit_digit_classifier  # noqa: E402
from dualrate.exporter.sampling import sample, spec_noise  # noqa: E402
from dualrate.exporter.spec_builder import SamplerOptions, make_spec  # noqa: E402
from dualrate.exporter.torch_runner import TorchReferenceRunner  # noqa: E402


def evaluate(checkpoint: Path, per_class: int, opts: SamplerOptions, seed: int = 0) -> dict:
    ck = load_checkpoint(checkpoint)
    runner = TorchReferenceRunner(ck.pair)
    info = ck.pair.info
    feats = runner.encode(np.zeros((1, *info.sample_shape), np.float32), np.zeros(1, np.float32), np.zeros(1, np.int64))
    spec = make_spec(info, [tuple(f.shape[1:]) for f in feats], opts, runner=runner)
    labels = np.repeat(np.arange(10), per_class)
    start = time.perf_counter()
    x = sample(runner, spec, labels, spec_noise(spec, len(labels), seed)).x
    seconds = time.perf_counter() - start
    clf, real_acc = fit_digit_classifier()
    pred = clf.predict(downsample_to_8x8(x))
    return {"accuracy": float(np.mean(pred == labels)), "classifier_real_accuracy": real_acc,
            "per_class": [float(np.mean(pred[labels == c] == c)) for c in range(10)],
            "samples": int(len(labels)), "steps": opts.num_steps, "refresh_every": opts.refresh_params.get("k"),
            "guidance": opts.guidance, "sampling_seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--refresh-every", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    opts = SamplerOptions(num_steps=a.steps, refresh_params={"k": a.refresh_every, "phase": 0}, guidance=a.guidance)
    print(json.dumps(evaluate(a.checkpoint, a.per_class, opts, a.seed), indent=1))


if __name__ == "__main__":
    main()
