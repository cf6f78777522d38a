"""int8 calibration data recorded from the bundle's own two-rate sampler (no PyTorch).

Static int8 fixes each activation's range from examples, so the examples must be what the graphs
see when the compiled bundle samples: the encoder's inputs at refresh steps, and the denoiser's
inputs at *every* step together with the cached, stale features it really receives (made by the
*quantized* encoder when the encoder is int8: the backend quantizes the encoder first and then runs
this sampler with the quantized encoder and the float denoiser). Both guidance branches come as the
sampler feeds them (batched ``[cond; uncond]`` rows, or one branch per call).

A compile records at most ``max_calls`` calls per graph, stratified over the steps: run ``s`` of
``samples`` keeps ``ceil(max_calls / samples)`` of its calls, evenly spaced and shifted by ``s``, so
together the runs cover the whole trajectory (early, high-noise steps and late ones) rather than a
block of it. Run ``s`` uses noise seed ``seed + s`` and ``golden.example_conditioning`` (class ids
vary per run): same bundle, options and seed give the same data, hence the same artifacts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from .errors import BadInputError, NonFiniteError
from .golden import example_conditioning
from .sampling import call_plan, sample, spec_noise
from .spec import Spec

CALIBRATED_GRAPHS = ("encoder", "denoiser", "decoder")


@dataclass(frozen=True)
class CalibrationOptions:
    """How much of the sampler the calibration records (these decide the artifacts: cache key)."""

    samples: int = 4          # sampler runs, one noise seed each
    batch: int = 2            # samples per run (rows per call: 2x where guidance batches both branches)
    max_calls: int = 32       # recorded calls per graph over all runs
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("samples", "batch", "max_calls"):
            if int(getattr(self, name)) < 1:
                raise BadInputError(f"int8 calibration: {name} must be at least 1, got {getattr(self, name)}")

    def as_dict(self) -> dict[str, int]:
        return {"samples": self.samples, "batch": self.batch, "max_calls": self.max_calls, "seed": self.seed}

    def record(self, runtime: str) -> dict[str, Any]:
        """What a compile record says about its calibration: these options and the runtime that ran the sampler."""
        return {**self.as_dict(), "source": f"the bundle's dual-rate sampler on {runtime} (int8_calibration)"}


def options_from(calibration_samples: int | None = None, calibration_seed: int | None = None) -> CalibrationOptions:
    """The options a backend's compile was given (its ``calibration_*`` keywords; ``None`` keeps the default)."""
    given = {"samples": calibration_samples, "seed": calibration_seed}
    return CalibrationOptions(**{k: v for k, v in given.items() if v is not None})


def graph_calls_per_run(spec: Spec, graph: str) -> int:
    """How many times one sampler run calls ``graph`` (from the static call plan)."""
    if graph == "decoder":
        return 1
    plan = call_plan(spec)
    return sum(1 for step in plan for call in step if graph == "denoiser" or call.refresh)


def picked_calls(n_calls: int, run: int, options: CalibrationOptions) -> list[int]:
    """Indices of the calls run ``run`` keeps: evenly spaced, shifted per run (stratified over steps)."""
    k = min(n_calls, math.ceil(options.max_calls / options.samples))
    shift = (run + 0.5) / options.samples
    return sorted({min(n_calls - 1, int((j + shift) * n_calls / k)) for j in range(k)})


class _Recorder:
    """Runner wrapper keeping the host copies of the feeds of the picked calls of one graph."""

    def __init__(self, inner: Any, graph: str):
        self.inner, self.graph = inner, graph
        self.keep: set[int] = set()
        self.count = 0
        self.records: list[dict[str, np.ndarray]] = []

    def _see(self, graph: str, feeds: Mapping[str, Any]) -> None:
        if graph != self.graph:
            return
        if self.count in self.keep:
            self.records.append({k: np.array(v) if isinstance(v, np.ndarray) else self.inner.to_numpy(v)
                                 for k, v in feeds.items()})
        self.count += 1

    def encode(self, feeds):
        self._see("encoder", feeds)
        return self.inner.encode(feeds)

    def denoise(self, feeds):
        self._see("denoiser", feeds)
        return self.inner.denoise(feeds)

    def decode(self, feeds):
        self._see("decoder", feeds)
        return self.inner.decode(feeds)

    def features_to_numpy(self, features):
        return self.inner.features_to_numpy(features)


def collect(runner: Any, spec: Spec, nulls: Mapping[str, np.ndarray] | None, graph: str,
            options: CalibrationOptions) -> list[dict[str, np.ndarray]]:
    """The recorded feeds (input name -> array) of ``graph`` over the calibration runs of ``runner``.

    ``runner`` is what the compiled bundle will run, up to ``graph``: for the denoiser, the
    (quantized, where the plan says so) encoder is already in it. A run that turns non-finite, or a
    recorded input that is, would give a non-finite int8 range: ``BadInputError`` naming it.
    """
    if graph not in CALIBRATED_GRAPHS:
        raise ValueError(graph)
    rec = _Recorder(runner, graph)
    n_calls = graph_calls_per_run(spec, graph)
    for run in range(options.samples):
        seed = options.seed + run
        rec.keep = {rec.count + i for i in picked_calls(n_calls, run, options)}
        cond = example_conditioning(spec, seed, options.batch, dict(nulls or {}))
        try:
            sample(rec, spec, cond, spec_noise(spec, options.batch, seed), nulls=nulls,
                   decode_final=graph == "decoder")
        except NonFiniteError as exc:
            raise BadInputError(f"int8 calibration of the {graph} graph: the sampler run with seed {seed} went "
                                f"non-finite, so the activation ranges would be too ({exc})") from None
    for i, feeds in enumerate(rec.records):
        for name, value in feeds.items():
            if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
                raise BadInputError(f"int8 calibration of the {graph} graph: input {name!r} of recorded call {i} "
                                    "is non-finite, so its int8 range would be too; check the graphs feeding it")
    return rec.records


def check_ranges(graph: str, ranges: Mapping[str, Any]) -> None:
    """Refuse quantization parameters that came out non-finite (``tensor name -> values``)."""
    bad = sorted(name for name, value in ranges.items() if not np.all(np.isfinite(np.asarray(value, np.float64))))
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise BadInputError(f"int8 calibration of the {graph} graph gave non-finite ranges for {shown}; the graph "
                            "computes NaN/Inf on the sampler's own inputs")
