"""Class accuracy of samples from a digits checkpoint, judged by a classifier trained on the real digits.

    python examples/evaluate_digits.py examples/checkpoints/dr-uvit-digits --per-class 50

Samples every class with the dual-rate reference loop (the PyTorch modules behind the runner
contract, conditioned by name on ``class_id``), downsamples to the 8x8 grid of the source data
and classifies with a logistic regression fitted on the real digits (its held-out accuracy is
printed for scale). Needs the ``dualrate`` package installed (``pip install -e .``) and scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import dualrate
from dualrate.exporter.checkpoint import load_checkpoint
from dualrate.exporter.digits_data import downsample_to_8x8, fit_digit_classifier
from dualrate.exporter.export import spec_for_model
from dualrate.exporter.sampling import sample, spec_noise
from dualrate.exporter.spec_builder import SamplerOptions
from dualrate.exporter.torch_runner import TorchReferenceRunner


def evaluate(checkpoint: Path, per_class: int, opts: SamplerOptions, seed: int = 0) -> dict:
    ck = load_checkpoint(checkpoint)
    model = ck.pair
    classes = next((c for c in model.conditioning if c.num_classes is not None), None)
    if classes is None or classes.num_classes < 10:
        raise dualrate.BadInputError(f"{checkpoint}: expected a class-conditional digits model with 10 classes")
    # the spec of this checkpoint under opts: graph signatures found by running the model once, the tables
    spec = spec_for_model(model, opts, {"source": ck.path.name, "source_sha256": ck.sha256})
    runner = TorchReferenceRunner(model, spec)
    labels = np.repeat(np.arange(10), per_class).astype(np.int64)
    start = time.perf_counter()
    x = sample(runner, spec, {classes.name: labels}, spec_noise(spec, len(labels), seed), nulls=model.nulls()).x
    seconds = time.perf_counter() - start
    clf, real_acc = fit_digit_classifier()
    pred = clf.predict(downsample_to_8x8(x))
    return {"accuracy": float(np.mean(pred == labels)), "classifier_real_accuracy": real_acc,
            "per_class": [float(np.mean(pred[labels == c] == c)) for c in range(10)],
            "samples": int(len(labels)), "steps": opts.num_steps,
            "refresh_steps": list(spec.dual_rate.resolved_refresh_steps), "guidance": opts.guidance,
            "sampling_seconds": round(seconds, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--refresh-every", type=int, default=4)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    opts = dualrate.sampler_options(steps=a.steps, refresh_every=a.refresh_every, guidance=a.guidance)
    try:
        result = evaluate(a.checkpoint, a.per_class, opts, a.seed)
    except dualrate.DualrateError as exc:        # one line and the CLI's exit code, no traceback
        print(f"evaluate_digits: error: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
