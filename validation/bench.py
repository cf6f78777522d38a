"""``dualrate bench``: how fast a compiled bundle samples, and how close that is to what it could be.

One run measures, after a warm-up and interleaved per repeat (so background load hits
every contender alike), medians over the repeats of: the spec's dual-rate sampler on the
backend, the same backend with a refresh at every step (single rate), the PyTorch peers a
user would pick instead at the backend's precision (eager and ``torch.compile``, bf16/fp16
under autocast: ``bench_peers``), and for an int8 or mixed plan the same backend at fp32.
Every row names the precision of each graph and ratios are formed like for like
(``bench_rows``); the document also has each compiled graph's size on disk, and on OpenVINO
a cross-check of the per-graph latency with ``benchmark_app`` on the same IR (``bench_ov``),
run before and after the repeats. Every graph call (encoder, denoiser, and the decoder where the
spec has one: once per sampler run, on the final samples) is timed by wrapping the
runner, which gives the per-graph latency and the loop overhead (wall time not spent in
graph calls). FLOPs are counted once on the model's ``BoundGraph`` modules
(``FlopCounterMode``: matmuls and convolutions) with inputs built from the spec's roles
(its conditioning as ``example_conditioning`` makes it, guidance's null rows, the spec's
time values) at the rows per call the loop uses. The FLOP-model bound of the speedup is
the FLOP ratio of the two call plans, single rate over dual rate; when guidance is on at
every step or at none it is ``(N F_E + N F_g + F_D) / (M F_E + N F_g + F_D)`` (per-call
FLOPs; F_D = 0 without a decoder), M = encoder calls in the spec's call plan. The
machine's fp32 matmul rate (numpy and torch sgemm, the faster one counts) puts the
achieved GFLOP/s in scale, and gives a ceiling for ``vs_torch_eager``: the eager time
over the time the dual-rate run's FLOPs would take at that rate. A backend doing the same
arithmetic at the same precision can approach that ceiling, not pass it by much (tuned
conv kernels run a few % above sgemm), so a ratio target above it takes less arithmetic
or a lower precision, not better scheduling.

The PyTorch model comes from the source checkpoint (the manifest's, or ``checkpoint``,
verified by sha256) or, for a bundle exported from a model handed over in Python, from
``BenchOptions.model`` (verified by its weights' sha256). Without one, the FLOP count and
the PyTorch rows are reported as not run, with the reason (``not_run``), and the
backend is still timed.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from dualrate.exporter.bundle import Bundle, load_source_checkpoint, open_bundle, recorded_checkpoint
from dualrate.exporter.conditioning import group_conditioning
from dualrate.exporter.errors import BackendUnavailableError, BadInputError
from dualrate.exporter.golden import example_conditioning
from dualrate.exporter.runner import graph_feeds, role_values
from dualrate.exporter.sampling import (ArrayNoise, NoiseSource, call_plan, decoder_input, sample, spec_noise,
                                        tile_rows, time_values)
from dualrate.exporter.spec import FEATURE_PREFIX, ROLE_SAMPLE, Spec
from dualrate.exporter.spec_builder import every_step

from .bench_rows import (FP32, Contender, artifact_sizes, comparisons, graph_precisions, latency_at_rows, precision_text,
                         uniform)

MATMUL_N = 4096                     # large enough to run at the machine's sgemm peak (2048: ~8% below)
COUNTED_WITH = "torch.utils.flop_counter.FlopCounterMode (matmul + convolution)"
Progress = Callable[[str], None]     # receives ``dualrate.exporter.progress.Event``s (str subclasses)


@dataclass
class BenchOptions:
    target: str = "onnxruntime"
    precision: str = "fp32"
    batch: int = 4                  # samples per sampler run (x2 rows per call under batched guidance)
    repeats: int = 3
    threads: int = 0                # 0: the backend's default (every core); torch gets the same count
    seed: int = 0
    checkpoint: Path | None = None  # default: the manifest's source checkpoint (verified by sha256)
    single_rate: bool = True
    torch_eager: bool = True
    torch_compile: bool = True      # the torch.compile peer (inductor; compiled during the warm-up)
    backend_fp32: bool = True       # int8 / mixed plans: the same backend at fp32 in the same run
    benchmark_app: bool = True      # OpenVINO: cross-check per-graph latency with OpenVINO's benchmark_app
    benchmark_app_seconds: float = 10.0
    model: Any = None               # a DualRateModel (Python API): the bundle's source, checked by weights sha256


def call_rows(feeds: Mapping[str, Any]) -> int:
    """Rows of one graph call: axis 0 of its inputs (numpy arrays, tensors, ``ov.Tensor``s, or
    ``OrtValue``s, whose ``shape`` is a method); 0 if none says."""
    for value in feeds.values():
        shape = getattr(value, "shape", None)
        shape = shape() if callable(shape) else shape
        if shape is not None and len(shape):
            return int(shape[0])
    return 0


class TimedRunner:
    """Pass-through runner that records the wall time of every graph call (encode, denoise, decode);
    anything else (``features_to_numpy``, ``spec``...) is the wrapped runner's."""

    def __init__(self, inner: Any, graphs: tuple[str, ...] | list[str] = ("encoder", "denoiser")):
        self.inner = inner
        self.graphs = tuple(graphs)
        self.times: dict[str, list[float]] = {}
        self.reset()

    def _timed(self, graph: str, fn: Callable[[Any], Any], feeds: Any) -> Any:
        start = time.perf_counter()
        out = fn(feeds)
        self.times.setdefault(graph, []).append(time.perf_counter() - start)
        # rows of the call (axis 0 of every input): benchmark_app's cross-check is at one row count
        self.rows.setdefault(graph, []).append(call_rows(feeds))
        return out

    def encode(self, feeds):
        return self._timed("encoder", self.inner.encode, feeds)

    def denoise(self, feeds):
        return self._timed("denoiser", self.inner.denoise, feeds)

    def decode(self, feeds):
        return self._timed("decoder", self.inner.decode, feeds)

    def __getattr__(self, name: str) -> Any:
        if name == "inner":             # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def reset(self) -> None:
        self.times = {g: [] for g in self.graphs}
        self.rows: dict[str, list[int]] = {g: [] for g in self.graphs}

    def graph_seconds(self) -> float:
        return sum(sum(v) for v in self.times.values())


# ----------------------------------------------------------------------------- the FLOP model

def widest_branches(spec: Spec) -> tuple[str, ...]:
    """The branch group of the widest graph call of the loop ((cond, uncond) under batched guidance)."""
    return max((call.branches for step in call_plan(spec) for call in step), key=len)


def rows_per_call(spec: Spec, batch: int) -> int:
    """Rows of the widest graph call of the loop (2B when both guidance branches run batched)."""
    return len(widest_branches(spec)) * batch


def loop_values(spec: Spec, rows: int, batch: int, seed: int = 0,
                nulls: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Role values of one widest call of the loop at step 0: a ``rows``-row sample, the spec's
    time (and context time) of step 0, and the conditioning rows of the widest branch group
    (``example_conditioning`` for the cond rows, the declared nulls for the uncond rows)."""
    branches = widest_branches(spec)
    if rows == batch * len(branches):
        cond = group_conditioning(spec, example_conditioning(spec, seed, batch, dict(nulls or {})), nulls, branches)
    else:                               # a row count the loop does not use: conditional rows only
        cond = example_conditioning(spec, seed, rows, dict(nulls or {}))
    z = np.random.default_rng(seed).standard_normal((rows, *spec.model.sample_shape)).astype(np.float32)
    t = np.full(rows, time_values(spec)[0])
    return role_values(z, t, t, cond)


def count_graph_flops(model: Any, spec: Spec, rows: int, batch: int | None = None, *, seed: int = 0,
                      nulls: Mapping[str, np.ndarray] | None = None) -> dict[str, int]:
    """FLOPs of one encoder and one denoiser call of ``rows`` rows (and of one decoder call of
    ``batch`` rows, the final samples, where the spec has a decoder), counted on the model's
    ``BoundGraph`` modules: exactly the call the exporter traced and the reference runs.

    ``batch`` defaults to ``rows`` over the widest call's branch count; ``nulls`` to the model's.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    m = spec.model
    batch = batch or max(1, rows // len(widest_branches(spec)))
    nulls = model.nulls() if nulls is None else nulls
    model.eval()
    values = loop_values(spec, rows, batch, seed, nulls)
    names = [o.name for o in m.encoder.outputs]
    bound = {"encoder": model.bound_encoder(), "denoiser": model.bound_denoiser(names)}
    out: dict[str, int] = {}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            feats = bound["encoder"](*_flat(bound["encoder"], m.encoder, values))
        out["encoder"] = int(counter.get_total_flops())
        values.update({FEATURE_PREFIX + n: f for n, f in zip(names, feats)})
        with FlopCounterMode(display=False) as counter:
            bound["denoiser"](*_flat(bound["denoiser"], m.denoiser, values))
        out["denoiser"] = int(counter.get_total_flops())
        if m.decoder is not None:
            dec = model.bound_decoder()
            x = np.random.default_rng(seed + 1).standard_normal((batch, *m.sample_shape)).astype(np.float32)
            with FlopCounterMode(display=False) as counter:
                dec(*_flat(dec, m.decoder.graph, {ROLE_SAMPLE: decoder_input(spec, x)}))
            out["decoder"] = int(counter.get_total_flops())
    return out


def _flat(bound: Any, gio: Any, values: Mapping[str, Any]) -> list[Any]:
    """The flat tensor inputs of a ``BoundGraph`` from role values (as the PyTorch reference runner feeds it)."""
    import torch

    feeds = graph_feeds(gio, values)
    flat = []
    for name, _ in bound.inputs:
        v = feeds[name]
        t = v if isinstance(v, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(v))
        flat.append(t.float() if t.is_floating_point() and t.dtype != torch.float32 else t)
    return flat


def per_row_flops(flops: Mapping[str, int], rows: int, batch: int) -> dict[str, float]:
    """FLOPs per row of each graph (the decoder's call has ``batch`` rows, the others ``rows``)."""
    return {g: f / (batch if g == "decoder" else rows) for g, f in flops.items()}


def sampler_flops(spec: Spec, batch: int, flops_per_row: Mapping[str, float]) -> float:
    """FLOPs of one sampler run: every call of the spec's call plan, at its own row count, and the
    decoder once on the ``batch`` final samples where there is one."""
    total = 0.0
    for step in call_plan(spec):
        for call in step:
            rows = len(call.branches) * batch
            total += rows * flops_per_row["denoiser"] + (rows * flops_per_row["encoder"] if call.refresh else 0.0)
    if spec.model.decoder is not None and "decoder" in flops_per_row:
        total += batch * flops_per_row["decoder"]
    return total


def encoder_calls(spec: Spec) -> int:
    """M: encoder calls in the spec's call plan (one per refresh group)."""
    return sum(call.refresh for step in call_plan(spec) for call in step)


def speedup_bound(num_steps: int, encoder_call_count: int, f_encoder: float, f_denoiser: float,
                  f_decoder: float = 0.0) -> float:
    """The FLOP-model bound (N F_E + N F_g + F_D) / (M F_E + N F_g + F_D) with per-call FLOPs (the
    x2 of batched guidance cancels; F_D: the one decoder call of a run, 0 without a decoder)."""
    n, m = num_steps, encoder_call_count
    return (n * f_encoder + n * f_denoiser + f_decoder) / (m * f_encoder + n * f_denoiser + f_decoder)


# ----------------------------------------------------------------------------- measurements

def matmul_gflops(n: int = MATMUL_N, repeats: int = 3) -> dict[str, float]:
    """fp32 n x n sgemm GFLOP/s of this machine, median over ``repeats``, via numpy and torch."""
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out = {}
    for name, fn in (("numpy", lambda: a @ b), ("torch", lambda: torch.mm(ta, tb))):
        fn()
        out[name] = 2.0 * n ** 3 / _median_seconds(fn, repeats) / 1e9
    return out


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_noise(spec: Spec, batch: int, seed: int) -> NoiseSource:
    """The spec's own generator; seeded normal tensors where the spec's noise is external."""
    if spec.noise.rng.kind != "external":
        return spec_noise(spec, batch, seed)
    rng = np.random.default_rng(seed)
    shape = (batch, *spec.model.sample_shape)
    return ArrayNoise(rng.standard_normal(shape, dtype=np.float32),
                      rng.standard_normal((spec.sampler.num_steps, *shape), dtype=np.float32))


def timed_sample(runner: TimedRunner, spec: Spec, cond: Mapping[str, np.ndarray], nulls: Mapping[str, np.ndarray],
                 batch: int, seed: int) -> dict[str, Any]:
    """One sampler run (with the decoder where the spec has one): wall time, time inside graph
    calls, each call's latency, and the final samples ``x`` (``decoded``: the decoder's output or
    None), which ``dualrate tune`` scores."""
    runner.reset()
    noise = bench_noise(spec, batch, seed)
    start = time.perf_counter()
    result = sample(runner, spec, cond, noise, nulls=nulls)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "graph_s": runner.graph_seconds(), "calls": {g: list(v) for g, v in runner.times.items()},
            "rows": {g: list(v) for g, v in runner.rows.items()}, "x": result.x, "decoded": result.decoded}


def warm_up(runner: Any, spec: Spec, cond: Mapping[str, np.ndarray], nulls: Mapping[str, np.ndarray],
            batch: int, seed: int) -> None:
    """At every row count the loop uses: one encoder and two denoiser calls; then one decoder call
    where there is one (lets runtimes pick and cache kernels)."""
    m = spec.model
    z = np.random.default_rng(seed).standard_normal((batch, *m.sample_shape)).astype(np.float32)
    t = time_values(spec)[0]
    seen = set()
    for step in call_plan(spec):
        for call in step:
            if call.branches in seen:
                continue
            seen.add(call.branches)
            rows = batch * len(call.branches)
            z_in, t_in = tile_rows(z, len(call.branches)), np.full(rows, t)
            grouped = group_conditioning(spec, cond, nulls, call.branches)
            feats = runner.encode(graph_feeds(m.encoder, role_values(z_in, t_in, None, grouped)))
            for _ in range(2):
                runner.denoise(graph_feeds(m.denoiser, role_values(z_in, t_in, t_in, grouped, feats)))
    if m.decoder is not None:
        runner.decode(graph_feeds(m.decoder.graph, {ROLE_SAMPLE: decoder_input(spec, z)}))


def back_to_back_ms(runner: Any, spec: Spec, cond: Mapping[str, np.ndarray], nulls: Mapping[str, np.ndarray],
                    batch: int, seed: int, graph: str, seconds: float) -> float:
    """Median latency (ms) of ``graph`` called back to back on one call's feeds at the loop's widest row
    count (the decoder: ``batch`` rows) for ``seconds`` (at least 3 calls): benchmark_app's calling
    pattern, through this runner. Next to a benchmark_app run it separates the runner's own cost from
    what the sampler loop around the calls (and the load of the moment) adds."""
    m = spec.model
    branches = widest_branches(spec)
    rows = batch * len(branches)
    z = np.random.default_rng(seed).standard_normal((batch, *m.sample_shape)).astype(np.float32)
    z_in, t_in = tile_rows(z, len(branches)), np.full(rows, time_values(spec)[0])
    grouped = group_conditioning(spec, cond, nulls, branches)
    feeds = graph_feeds(m.encoder, role_values(z_in, t_in, None, grouped))
    call = runner.encode
    if graph == "denoiser":
        feeds, call = graph_feeds(m.denoiser, role_values(z_in, t_in, t_in, grouped, runner.encode(feeds))), runner.denoise
    elif graph == "decoder":
        feeds, call = graph_feeds(m.decoder.graph, {ROLE_SAMPLE: decoder_input(spec, z)}), runner.decode
    call(feeds)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < end:
        start = time.perf_counter()
        call(feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


# ----------------------------------------------------------------------------- the run

def open_backend(bundle: Bundle, opts: BenchOptions) -> tuple[Any, Any, Any]:
    """(target, compiled, runner) for the bundle on ``opts.target``; unusable here -> BackendUnavailableError."""
    from dualrate.targets.base import get_target

    target = get_target(opts.target)
    target.check_precision(opts.precision)
    target.require()
    reason = target.numeric_unavailable()      # before compiling: nothing to time, so nothing to build
    if reason:
        raise BackendUnavailableError(f"target {target.name} cannot run here: {reason}")
    compiled = target.compile(bundle, opts.precision)
    return target, compiled, target.open_runner(bundle, compiled, threads=opts.threads)


def check_options(opts: BenchOptions) -> None:
    for name in ("batch", "repeats"):
        value = getattr(opts, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise BadInputError(f"--{name} {value!r}: expected a positive integer")
    if opts.threads < 0:
        raise BadInputError(f"--threads {opts.threads}: expected 0 (every core) or a positive count")


PURPOSE = "bench counts FLOPs and times eager on the PyTorch modules"


def bench_model(bundle: Bundle, opts: BenchOptions) -> tuple[Any, str | None]:
    """(the bundle's PyTorch model, None) or (None, why there is none).

    A model handed over (``opts.model``) or a checkpoint the caller names must be the bundle's
    source (BadInputError otherwise); the manifest's recorded checkpoint is used when it is
    there. A bundle exported from a Python model, or whose recorded checkpoint is gone, gives
    no model: the FLOP count and the eager row are then not run, with this reason.
    """
    if opts.model is not None:
        from .export_check import model_source

        want = (bundle.manifest.get("source") or {}).get("sha256")
        got = model_source(opts.model)["sha256"]
        if want != got:
            raise BadInputError(f"the model's weights have sha256 {got[:12]}…, but bundle {bundle.path} was exported "
                                f"from weights with sha256 {str(want)[:12]}…; pass the model it was exported from")
        return opts.model, None
    if opts.checkpoint is None:
        if not bundle.manifest.get("source_checkpoint"):
            source = bundle.manifest.get("source") or {}
            return None, (f"bundle {bundle.path} was exported from a model handed over in Python "
                          f"({source.get('name', 'no checkpoint')}), so there is no checkpoint to load; to count "
                          "FLOPs and time PyTorch eager, pass the model in Python (BenchOptions(model=...)) or "
                          "export the bundle from a checkpoint")
        path = recorded_checkpoint(bundle)
        if path is None or not path.exists():
            try:
                load_source_checkpoint(bundle, None, PURPOSE)
            except BadInputError as exc:       # the message says where it was looked for and what to pass
                return None, str(exc)
    return load_source_checkpoint(bundle, opts.checkpoint, PURPOSE).pair, None


def bench(bundle_path: str | Path, opts: BenchOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Measure ``opts.target`` on the bundle; returns the results document (see module docstring),
    with ``timings`` (stage -> seconds of this run)."""
    import torch

    from dualrate.exporter.progress import Stages

    stages = Stages(progress)
    check_options(opts)
    with stages("open", "verifying the bundle (hashes, graph checks)"):
        bundle = open_bundle(bundle_path)
    with stages("compile", f"compiling for {opts.target} {opts.precision} (or reusing the cache)"):
        target, compiled, backend_runner = open_backend(bundle, opts)
    with stages("model", "loading the PyTorch model"):
        model, no_model = bench_model(bundle, opts)
    threads = opts.threads or os.cpu_count() or 1
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)          # the eager reference gets the cores the backend gets
    try:
        doc = _measure(bundle, opts, target, compiled, backend_runner, model, no_model, threads, stages)
    finally:
        torch.set_num_threads(previous)
    doc["timings"] = dict(stages.timings)
    return doc


def _measure(bundle: Bundle, opts: BenchOptions, target: Any, compiled: Any, backend_runner: Any, model: Any,
             no_model: str | None, threads: int, stages: Any) -> dict[str, Any]:
    """Warm up every contender (timed: the compile of ``torch.compile`` happens here), then the
    interleaved repeats, bracketed by OpenVINO's benchmark_app where it applies; see ``bench``."""
    spec = bundle.spec
    graphs = tuple(bundle.graph_names())
    nulls = bundle.nulls()
    cond = example_conditioning(spec, opts.seed, opts.batch, nulls)
    rows = rows_per_call(spec, opts.batch)
    not_run: dict[str, str] = {}
    flops = None
    if model is not None:
        with stages("flops", "counting FLOPs on the PyTorch modules"):
            flops = count_graph_flops(model, spec, rows, opts.batch, seed=opts.seed, nulls=nulls)
    else:
        not_run["flops"] = no_model
    contenders, compiled_by_row = _contenders(bundle, opts, target, compiled, backend_runner, model, no_model,
                                              not_run, stages)
    what = "warming up" + (" (torch.compile compiles here)" if "torch_compile" in contenders else "")
    with stages("warm_up", what, total=len(contenders)) as advance:
        for c in contenders.values():
            start = time.perf_counter()
            warm_up(c.runner.inner, c.spec, cond, nulls, opts.batch, opts.seed)
            c.info["compile_s" if c.info.get("compile") else "warm_up_s"] = time.perf_counter() - start
            advance()
    app = _benchmark_app_plan(opts, target, compiled, graphs, rows, threads, not_run)
    app_runs: dict[str, list[dict[str, Any]]] = {g: [] for g in app}
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    matmul: list[dict[str, float]] = []
    # benchmark_app runs before and after the repeats: load drifting during the run hits both sides
    def ours(graph: str) -> float:
        return back_to_back_ms(backend_runner, spec, cond, nulls, opts.batch, opts.seed, graph,
                               opts.benchmark_app_seconds)

    _run_benchmark_app(app, app_runs, opts, not_run, stages, "before", ours)
    with stages("repeats", f"{opts.repeats} timed repeats of {', '.join(contenders)} + matmul",
                total=opts.repeats * (len(contenders) + 1)) as advance:
        for _ in range(opts.repeats):
            for name, c in contenders.items():      # interleaved: load drifts hit all alike
                results[name].append(timed_sample(c.runner, c.spec, cond, nulls, opts.batch, opts.seed))
                advance()
            matmul.append(matmul_gflops())
            advance()
    _run_benchmark_app(app, app_runs, opts, not_run, stages, "after", ours)
    doc = summarize(bundle, spec, opts, target, compiled, flops, rows, results, matmul, threads, not_run)
    _add_rows(doc, contenders, compiled_by_row, results, graphs)
    if app_runs and all(app_runs.values()):
        from .bench_ov import cross_check

        in_loop = {g: _ms(latency_at_rows(results["dual_rate"], g, r)) for g, (_, r, _) in app.items()}
        doc["benchmark_app"] = {"tool": "OpenVINO benchmark_app (sync API, 1 infer request, latency hint, 1 stream, "
                                        "the runner's properties)",
                                "seconds_per_run": opts.benchmark_app_seconds, "bracketing": "one run before the "
                                "repeats and one after, medians averaged; each right after the runner's own "
                                "back-to-back calls of the same graph for as long", "graphs": cross_check(in_loop, app_runs)}
    return doc


def _contenders(bundle: Bundle, opts: BenchOptions, target: Any, compiled: Any, backend_runner: Any, model: Any,
                no_model: str | None, not_run: dict[str, str], stages: Any) -> tuple[dict[str, Contender], dict]:
    """The rows of this run: the backend (dual and single rate), the same backend at fp32 for an int8
    or mixed plan, and the PyTorch peers at the precision of the backend row they are compared with."""
    from .bench_peers import NO_INT8_PEER, TORCH_PRECISIONS, peer_runner, peers_for

    spec, graphs = bundle.spec, tuple(bundle.graph_names())
    precisions = graph_precisions(compiled, graphs)
    backend = {"runtime": f"{target.name} {target.runtime_version()}", "graph_precisions": precisions,
               "precision": precision_text(precisions), "target_dir": compiled.path.name}
    out = {"dual_rate": Contender("dual_rate", f"{target.name} dual-rate (spec)", TimedRunner(backend_runner, graphs),
                                  spec, {**backend, "schedule": "dual-rate"})}
    compiled_by_row = {"dual_rate": compiled}
    if opts.single_rate:
        out["single_rate"] = Contender("single_rate", f"{target.name} single-rate (refresh every step)",
                                       TimedRunner(backend_runner, graphs), every_step(spec),
                                       {**backend, "schedule": "single-rate"})
        compiled_by_row["single_rate"] = compiled
    else:
        not_run["single_rate"] = "skipped (--no-single-rate)"
    peer_precision = uniform(precisions) if uniform(precisions) in TORCH_PRECISIONS else None
    if peer_precision is None:             # int8 / a mixed plan: PyTorch has no peer at this precision
        not_run["torch_int8"] = NO_INT8_PEER
        if opts.backend_fp32:
            with stages("compile_fp32", f"compiling {target.name} fp32 (or reusing the cache) for the int8 comparison"):
                fp32 = target.compile(bundle, "fp32")
            fp32_precisions = graph_precisions(fp32, graphs)
            out["backend_fp32"] = Contender(
                "backend_fp32", f"{target.name} dual-rate (spec), fp32", TimedRunner(
                    target.open_runner(bundle, fp32, threads=opts.threads), graphs), spec,
                {**backend, "graph_precisions": fp32_precisions, "precision": precision_text(fp32_precisions),
                 "target_dir": fp32.path.name, "schedule": "dual-rate"})
            compiled_by_row["backend_fp32"] = fp32
            peer_precision = FP32          # the peers are compared with the backend's fp32 row
        else:
            not_run["backend_fp32"] = "skipped (--no-backend-fp32)"
    wanted = {"torch_eager": opts.torch_eager, "torch_compile": opts.torch_compile}
    for key, on in wanted.items():
        if not on:
            not_run[key] = f"skipped (--no-{key.replace('_', '-').replace('torch-eager', 'torch')})"
        elif model is None:
            not_run[key] = no_model or "no PyTorch model"
        elif peer_precision is None:
            not_run[key] = f"no row at a precision PyTorch runs ({', '.join(TORCH_PRECISIONS)}) to compare it with"
    if model is not None and peer_precision is not None:
        for peer in peers_for(peer_precision, compiled=opts.torch_compile):
            if wanted[peer.key]:
                out[peer.key] = Contender(peer.key, f"{peer.label}, dual-rate", TimedRunner(
                    peer_runner(model, spec, peer), graphs), spec,
                    {**peer.describe(), "graph_precisions": {g: peer.precision for g in graphs},
                     "schedule": "dual-rate"})
    return out, compiled_by_row


def _benchmark_app_plan(opts: BenchOptions, target: Any, compiled: Any, graphs: tuple[str, ...], rows: int,
                        threads: int, not_run: dict[str, str]) -> dict[str, tuple[Path, int, dict[str, str]]]:
    """graph -> (IR the runner loads, rows per call, the runner's properties) for the benchmark_app
    cross-check; empty (with the reason in ``not_run``) where it does not apply."""
    if target.name != "openvino":
        return {}
    if not opts.benchmark_app:
        not_run["benchmark_app"] = "skipped (--no-benchmark-app)"
        return {}
    from .bench_ov import benchmark_app_command, graph_properties

    if benchmark_app_command() is None:
        not_run["benchmark_app"] = "OpenVINO's benchmark_app is not installed beside this Python or on PATH"
        return {}
    plan = {}
    for g in graphs:
        xml = compiled.path / f"{g}.xml"
        if not xml.is_file():
            not_run["benchmark_app"] = f"the compiled target has no {xml.name}"
            return {}
        plan[g] = (xml, opts.batch if g == "decoder" else rows, graph_properties(compiled.record, g, threads))
    return plan


def _run_benchmark_app(plan: Mapping[str, tuple[Path, int, dict[str, str]]], runs: dict[str, list[dict[str, Any]]],
                       opts: BenchOptions, not_run: dict[str, str], stages: Any, when: str,
                       ours: Callable[[str], float]) -> None:
    """One benchmark_app run per graph, each right after ``ours(graph)`` (the runner's back-to-back median)."""
    if not plan or "benchmark_app" in not_run:
        return
    from .bench_ov import run_benchmark_app

    with stages(f"benchmark_app_{when}", f"OpenVINO benchmark_app on the same IR ({when} the repeats)",
                total=len(plan)) as advance:
        for g, (xml, rows, props) in plan.items():
            try:
                mine = ours(g)
                runs[g].append({**run_benchmark_app(xml, rows, props, opts.benchmark_app_seconds),
                                "ours_back_to_back_ms": mine})
            except (RuntimeError, ValueError, OSError, subprocess.TimeoutExpired) as exc:
                not_run["benchmark_app"] = str(exc)
                return
            advance()


def _add_rows(doc: dict[str, Any], contenders: Mapping[str, Contender], compiled_by_row: Mapping[str, Any],
              results: Mapping[str, list[dict[str, Any]]], graphs: tuple[str, ...]) -> None:
    """Every row with its precision, time and per-graph latency; the like-for-like ratios; sizes on disk."""
    doc["rows"] = {}
    for key, c in contenders.items():
        lat = graph_latency(results[key], graphs)
        doc["rows"][key] = {"label": c.label, **c.info, "time_s": _median_wall(results[key]),
                            "latency_ms": {g: _ms(lat[g]) for g in graphs},
                            "loop_overhead": loop_overhead(results[key])}
        doc["times_s"][key] = doc["rows"][key]["time_s"]
    doc["comparisons"] = comparisons(doc["rows"])
    for peer in ("torch_eager", "torch_compile"):
        if peer in doc["rows"] and doc["rows"][peer]["precision"] != FP32:
            doc.pop(f"vs_{peer}_ceiling", None)      # the fp32 matmul-rate ceiling says nothing about bf16 work
    for cmp in doc["comparisons"]:
        if cmp["row"] == "dual_rate":
            doc[cmp["name"]] = cmp["ratio"]
    doc["sizes"] = {}
    for key, compiled in compiled_by_row.items():
        name = compiled.path.name
        if name not in doc["sizes"]:
            doc["sizes"][name] = {"bytes": artifact_sizes(compiled, graphs),
                                  "graph_precisions": doc["rows"][key]["graph_precisions"]}
    if "backend_fp32" in compiled_by_row:
        small = doc["sizes"][compiled_by_row["dual_rate"].path.name]["bytes"]
        big = doc["sizes"][compiled_by_row["backend_fp32"].path.name]["bytes"]
        doc["size_ratio_fp32_over_this"] = {g: big[g] / small[g] for g in (*graphs, "total") if small[g]}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


# ----------------------------------------------------------------------------- the document

def graph_latency(runs: list[dict[str, Any]], graphs: tuple[str, ...] = ("encoder", "denoiser")
                  ) -> dict[str, float | None]:
    """Median latency (s) of each graph's calls over every repeat."""
    out = {}
    for g in graphs:
        times = [t for run in runs for t in run["calls"].get(g, [])]
        out[g] = statistics.median(times) if times else None
    return out


def loop_overhead(runs: list[dict[str, Any]]) -> float:
    """Median fraction of sampler wall time spent outside graph calls."""
    return statistics.median(max(0.0, run["wall_s"] - run["graph_s"]) / run["wall_s"] for run in runs)


def _median_wall(runs: list[dict[str, Any]]) -> float:
    return statistics.median(run["wall_s"] for run in runs)


def summarize(bundle: Bundle, spec: Spec, opts: BenchOptions, target: Any, compiled: Any,
              flops: dict[str, int] | None, rows: int, results: dict[str, list[dict[str, Any]]],
              matmul: list[dict[str, float]], threads: int, not_run: dict[str, str] | None = None) -> dict[str, Any]:
    import torch

    from dualrate.exporter.version import __version__

    graphs = tuple(bundle.graph_names())
    n = spec.sampler.num_steps
    m = encoder_calls(spec)
    groups = rows // opts.batch
    dual = results["dual_rate"]
    latency = graph_latency(dual, graphs)
    mm = {k: statistics.median(x[k] for x in matmul) for k in matmul[0]}
    mm_source = max(mm, key=mm.get)
    dual_s = _median_wall(dual)
    f = {g: None if flops is None else flops[g] for g in graphs}
    per_row = None if flops is None else per_row_flops(flops, rows, opts.batch)
    counted = None
    if per_row is not None:
        counted = {"dual_rate_run": sampler_flops(spec, opts.batch, per_row),
                   "single_rate_run": sampler_flops(every_step(spec), opts.batch, per_row)}
    flop_doc: dict[str, Any] = {
        "encoder_call": f["encoder"], "denoiser_call": f["denoiser"],
        "encoder_per_sample": None if per_row is None else per_row["encoder"] * groups,
        "denoiser_per_sample": None if per_row is None else per_row["denoiser"] * groups,
        "dual_rate_run": counted and counted["dual_rate_run"],
        "single_rate_run": counted and counted["single_rate_run"],
        "counted_with": COUNTED_WITH if flops is not None else None}
    if "decoder" in graphs:           # once per sampler run, on the final samples (batch rows)
        flop_doc["decoder_call"] = f["decoder"]
        flop_doc["decoder_per_sample"] = None if per_row is None else per_row["decoder"]
    doc: dict[str, Any] = {
        "tool": "dualrate bench", "format_version": 1,
        "bundle": str(bundle.path),
        "target": {"backend": target.name, "requested_precision": opts.precision,
                   "effective_precision": compiled.effective_precision, "runtime_version": target.runtime_version()},
        "setup": {"batch": opts.batch, "rows_per_call": rows, "num_steps": n, "encoder_calls": m,
                  "guidance": spec.guidance.scale, "refresh_steps": list(spec.dual_rate.resolved_refresh_steps),
                  "conditioning": [c.name for c in spec.model.conditioning], "graphs": list(graphs),
                  "repeats": opts.repeats, "seed": opts.seed, "threads": threads,
                  "torch_threads": torch.get_num_threads()},
        "flops": flop_doc,
        "latency_ms": {g: None if latency[g] is None else latency[g] * 1e3 for g in graphs},
        **{f"{g}_gflops": _rate(f[g], latency[g]) for g in graphs},
        "matmul_gflops": mm[mm_source],
        "matmul": {"source": f"{mm_source} sgemm {MATMUL_N}x{MATMUL_N} fp32", "gflops": mm,
                   "threads": {"torch": torch.get_num_threads(), "numpy": "BLAS default"}},
        "times_s": {"dual_rate": dual_s},
        # the FLOP ratio of the two call plans (single over dual): the speedup a zero-overhead backend gets
        "speedup_bound": None if counted is None else counted["single_rate_run"] / counted["dual_rate_run"],
        "loop_overhead": loop_overhead(dual),
        "runs": {name: [{"wall_s": run["wall_s"], "graph_s": run["graph_s"]} for run in runs]
                 for name, runs in results.items()},
        "not_run": dict(not_run or {}),
        "machine": machine_info(),
        "versions": {"dualrate": __version__, "runtime": target.runtime_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
    }
    doc["dual_rate_gflops"] = None if counted is None else counted["dual_rate_run"] / dual_s / 1e9
    doc["dual_rate_fraction_of_matmul"] = (None if counted is None
                                           else doc["dual_rate_gflops"] / doc["matmul_gflops"])
    if "single_rate" in results:
        doc["times_s"]["single_rate"] = _median_wall(results["single_rate"])
        doc["speedup_realized"] = doc["times_s"]["single_rate"] / dual_s
        doc["speedup_fraction_of_bound"] = (None if doc["speedup_bound"] is None
                                            else doc["speedup_realized"] / doc["speedup_bound"])
    for peer in ("torch_eager", "torch_compile"):
        if peer not in results:
            continue
        runs = results[peer]
        doc["times_s"][peer] = _median_wall(runs)
        t_lat = graph_latency(runs, graphs)
        doc[peer] = {"latency_ms": {g: None if t_lat[g] is None else t_lat[g] * 1e3 for g in graphs},
                     **{f"{g}_gflops": _rate(f[g], t_lat[g]) for g in graphs},
                     "loop_overhead": loop_overhead(runs)}
        if counted is not None:
            # the best any backend could do with these FLOPs at fp32: every one at the measured matmul rate
            # (only quoted where the peer and the backend both compute in fp32; see console_table)
            doc[f"vs_{peer}_ceiling"] = doc["times_s"][peer] / (counted["dual_rate_run"] / (doc["matmul_gflops"] * 1e9))
    return doc


def _rate(flop: float | None, seconds: float | None) -> float | None:
    return None if not seconds or flop is None else flop / seconds / 1e9


def machine_info() -> dict[str, Any]:
    """CPU model (as lscpu names it), logical CPUs, OS and architecture."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "logical_cpus": os.cpu_count(), "machine": platform.machine(),
            "system": f"{platform.system()} {platform.release()}"}


def console_table(doc: dict[str, Any]) -> str:
    """The results as a readable table; every row names its precision, and ratios are like for like."""
    from .bench_rows import benchmark_app_table, rows_table, sizes_table

    s, t = doc["setup"], doc["target"]
    not_run = doc.get("not_run", {})
    rows = doc.get("rows", {})
    mine = rows.get("dual_rate", {}).get("graph_precisions", {})
    size = doc.get("sizes", {}).get(rows.get("dual_rate", {}).get("target_dir"), {}).get("bytes", {})
    peer_prec = {k: precision_text(rows[k]["graph_precisions"]) for k in ("torch_eager", "torch_compile") if k in rows}
    lines = [f"dualrate bench: {t['backend']} {t['effective_precision']} (runtime {t['runtime_version']}), "
             f"{doc['machine']['cpu']}, {s['threads']} threads",
             f"  {s['num_steps']} steps, {s['encoder_calls']} encoder calls, guidance {s['guidance']}, batch "
             f"{s['batch']} ({s['rows_per_call']} rows per call), medians over {s['repeats']} repeats",
             "",
             f"  {'graph':<10}{'precision':>10}{'GFLOP/call':>12}{'latency ms':>12}{'GFLOP/s':>10}{'size MB':>9}"
             + "".join(f"{(k.replace('torch_', 'torch ') + ' ms (' + p + ')'):>26}" for k, p in peer_prec.items())]
    for g in doc["latency_ms"]:
        gflop = doc["flops"].get(g + "_call")
        lines.append(f"  {g:<10}{mine.get(g, t['effective_precision']):>10}"
                     f"{_num(None if gflop is None else gflop / 1e9, '.2f'):>12}"
                     f"{_num(doc['latency_ms'][g], '.1f'):>12}{_num(doc.get(g + '_gflops'), '.1f'):>10}"
                     f"{_num(None if g not in size else size[g] / 1e6, '.1f'):>9}"
                     + "".join(f"{_num(doc[k]['latency_ms'].get(g), '.1f'):>26}" for k in peer_prec))
    if "decoder" in doc["latency_ms"]:
        lines.append(f"  (decoder: once per sampler run, on the {s['batch']} final samples)")
    share = ("" if doc.get("encoder_gflops") is None
             else f" (encoder at {doc['encoder_gflops'] / doc['matmul_gflops']:.0%} of it)")
    lines.append(f"  matmul    {doc['matmul']['source']}: {doc['matmul_gflops']:.1f} GFLOP/s{share}")
    if "flops" in not_run:
        lines.append(f"  FLOPs not counted: {not_run['flops']}")
    lines += ["", *rows_table(doc)]
    for name in ("single_rate", "backend_fp32", "torch_eager", "torch_compile", "torch_int8", "benchmark_app"):
        if name in not_run:
            lines.append(f"  {name.replace('_', ' ')} not run: {not_run[name]}")
    lines.append("")
    bound = doc.get("speedup_bound")
    if "speedup_realized" in doc and bound is not None:
        lines.append(f"  speedup realized {doc['speedup_realized']:.2f}x of bound {bound:.2f}x "
                     f"({doc['speedup_fraction_of_bound']:.0%})")
    elif "speedup_realized" in doc:
        lines.append(f"  speedup realized {doc['speedup_realized']:.2f}x (FLOP bound not counted)")
    elif bound is not None:
        lines.append(f"  speedup bound {bound:.2f}x (single rate not measured)")
    for peer in ("torch_eager", "torch_compile"):
        key, ceiling = f"vs_{peer}", doc.get(f"vs_{peer}_ceiling")
        if key not in doc:
            continue
        what = peer.replace("_", " ").replace("torch compile", "torch.compile")
        if ceiling is not None and peer_prec.get(peer) == "fp32":
            lines.append(f"  vs {what:<14}{doc[key]:.2f}x at fp32 (ceiling {ceiling:.2f}x: every FLOP at the "
                         f"matmul rate; this run: {doc['dual_rate_fraction_of_matmul']:.0%} of it)")
        else:                           # the fp32 ceiling does not apply to reduced-precision arithmetic
            lines.append(f"  vs {what:<14}{doc[key]:.2f}x, both computing in {peer_prec[peer]}")
    lines.append(f"  loop overhead    {doc['loop_overhead']:.1%} of sampler wall time")
    for extra in (sizes_table(doc), benchmark_app_table(doc)):
        if extra:
            lines += ["", *extra]
    return "\n".join(lines)


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)
