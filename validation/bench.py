"""``dualrate bench``: how fast a compiled bundle samples, and how close that is to what it could be.

One run measures, after a warm-up and interleaved per repeat (so background load hits
every contender alike), medians over the repeats of: the spec's dual-rate sampler on the
backend, the same backend with a refresh at every step (single rate), and the PyTorch
eager reference sampler. Graph calls are timed by wrapping the runner, which gives the
per-graph latency and the loop overhead (wall time not spent in graph calls). FLOPs are
counted once from the checkpoint's modules (``FlopCounterMode``: matmuls and
convolutions) at the rows per call the loop uses; the FLOP-model bound of the speedup is
``(N F_E + N F_g) / (M F_E + N F_g)`` (both x2 under guidance), M = encoder calls in the
spec's call plan. The machine's fp32 matmul rate (numpy and torch sgemm, the faster one
counts) puts the achieved GFLOP/s in scale, and gives a ceiling for ``vs_torch_eager``:
the eager time over the time the dual-rate run's FLOPs would take at that rate. A
backend doing the same arithmetic at the same precision can approach that ceiling, not
pass it by much (tuned conv kernels run a few % above sgemm), so a ratio target above
it takes less arithmetic or a lower precision, not better scheduling.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dualrate.exporter.bundle import GRAPHS, Bundle, load_source_checkpoint, open_bundle
from dualrate.exporter.errors import BackendUnavailableError, BadInputError
from dualrate.exporter.sampling import call_plan, group_labels, sample, spec_noise
from dualrate.exporter.spec import Spec
from dualrate.exporter.spec_builder import every_step

MATMUL_N = 4096                     # large enough to run at the machine's sgemm peak (2048: ~8% below)
Progress = Callable[[str], None]


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


class TimedRunner:
    """Pass-through runner that records the wall time of every graph call."""

    def __init__(self, inner: Any):
        self.inner = inner
        self.times: dict[str, list[float]] = {g: [] for g in GRAPHS}

    def encode(self, z, logsnr, class_id):
        start = time.perf_counter()
        out = self.inner.encode(z, logsnr, class_id)
        self.times["encoder"].append(time.perf_counter() - start)
        return out

    def denoise(self, z, logsnr, logsnr_ctx, class_id, features):
        start = time.perf_counter()
        out = self.inner.denoise(z, logsnr, logsnr_ctx, class_id, features)
        self.times["denoiser"].append(time.perf_counter() - start)
        return out

    def features_to_numpy(self, features: Any) -> list[np.ndarray]:
        return self.inner.features_to_numpy(features)

    def reset(self) -> None:
        self.times = {g: [] for g in GRAPHS}

    def graph_seconds(self) -> float:
        return sum(sum(v) for v in self.times.values())


# ----------------------------------------------------------------------------- the FLOP model

def rows_per_call(spec: Spec, batch: int) -> int:
    """Rows of the widest graph call of the loop (2B when both guidance branches run batched)."""
    return max(len(call.branches) for step in call_plan(spec) for call in step) * batch


def count_graph_flops(pair: Any, spec: Spec, rows: int) -> dict[str, int]:
    """FLOPs of one encoder and one denoiser call of ``rows`` rows, counted on the PyTorch modules."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    shape = tuple(spec.model.sample_shape)
    z = torch.randn(rows, *shape, generator=torch.Generator().manual_seed(0))
    lam = torch.zeros(rows)
    cls = torch.zeros(rows, dtype=torch.int64)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as enc:
            feats = pair.encoder(z, lam, cls)
        with FlopCounterMode(display=False) as den:
            pair.denoiser(z, lam, lam, cls, *feats)
    return {"encoder": int(enc.get_total_flops()), "denoiser": int(den.get_total_flops())}


def sampler_flops(spec: Spec, batch: int, flops_per_row: dict[str, float]) -> float:
    """FLOPs of one sampler run: every call of the spec's call plan, at its own row count."""
    total = 0.0
    for step in call_plan(spec):
        for call in step:
            rows = len(call.branches) * batch
            total += rows * flops_per_row["denoiser"] + (rows * flops_per_row["encoder"] if call.refresh else 0.0)
    return total


def encoder_calls(spec: Spec) -> int:
    """M: encoder calls in the spec's call plan (one per refresh group)."""
    return sum(call.refresh for step in call_plan(spec) for call in step)


def speedup_bound(num_steps: int, encoder_call_count: int, f_encoder: float, f_denoiser: float) -> float:
    """The FLOP-model bound (N F_E + N F_g) / (M F_E + N F_g); the x2 of guidance cancels."""
    n, m = num_steps, encoder_call_count
    return (n * f_encoder + n * f_denoiser) / (m * f_encoder + n * f_denoiser)


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


def timed_sample(runner: TimedRunner, spec: Spec, labels: np.ndarray, seed: int) -> dict[str, Any]:
    """One sampler run: wall time, time inside graph calls, and each call's latency."""
    runner.reset()
    noise = spec_noise(spec, len(labels), seed)
    start = time.perf_counter()
    sample(runner, spec, labels, noise)
    wall = time.perf_counter() - start
    return {"wall_s": wall, "graph_s": runner.graph_seconds(), "calls": {g: list(v) for g, v in runner.times.items()}}


def warm_up(runner: Any, spec: Spec, labels: np.ndarray, seed: int) -> None:
    """One encoder and two denoiser calls at the loop's shapes (lets runtimes pick and cache kernels)."""
    rows = rows_per_call(spec, len(labels))
    cls = group_labels(labels, spec.model.null_class, ("cond", "uncond"))[:rows]
    z = spec_noise(spec, rows, seed).draw(0, tuple(spec.model.sample_shape))
    lam = np.full(rows, spec.sampler.tables.logsnr[0], np.float32)
    feats = runner.encode(z, lam, cls)
    for _ in range(2):
        runner.denoise(z, lam, lam, cls, feats)


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


def bench(bundle_path: str | Path, opts: BenchOptions, progress: Progress = lambda _: None) -> dict[str, Any]:
    """Measure ``opts.target`` on the bundle; returns the results document (see module docstring)."""
    import torch

    check_options(opts)
    bundle = open_bundle(bundle_path)
    target, compiled, backend_runner = open_backend(bundle, opts)
    threads = opts.threads or os.cpu_count() or 1
    pair = load_source_checkpoint(bundle, opts.checkpoint, "bench counts FLOPs and times eager on the PyTorch "
                                  "modules").pair
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)          # the eager reference gets the cores the backend gets
    try:
        return _measure(bundle, opts, target, compiled, backend_runner, pair, threads, progress)
    finally:
        torch.set_num_threads(previous)


def _measure(bundle: Bundle, opts: BenchOptions, target: Any, compiled: Any, backend_runner: Any, pair: Any,
             threads: int, progress: Progress) -> dict[str, Any]:
    """Warm up, then the interleaved repeats; see ``bench``."""
    from dualrate.exporter.torch_runner import TorchReferenceRunner

    spec = bundle.spec
    labels = np.arange(opts.batch, dtype=np.int64) % spec.model.num_classes
    rows = rows_per_call(spec, opts.batch)
    flops = count_graph_flops(pair, spec, rows)
    single_spec = every_step(spec)

    runs: dict[str, tuple[TimedRunner, Spec]] = {"dual_rate": (TimedRunner(backend_runner), spec)}
    if opts.single_rate:
        runs["single_rate"] = (TimedRunner(backend_runner), single_spec)
    if opts.torch_eager:
        runs["torch_eager"] = (TimedRunner(TorchReferenceRunner(pair)), spec)
    progress("warming up")
    for runner, run_spec in runs.values():
        warm_up(runner.inner, run_spec, labels, opts.seed)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    matmul: list[dict[str, float]] = []
    for r in range(opts.repeats):
        for name, (runner, run_spec) in runs.items():      # interleaved: load drifts hit all alike
            progress(f"repeat {r + 1}/{opts.repeats}: {name}")
            results[name].append(timed_sample(runner, run_spec, labels, opts.seed))
        matmul.append(matmul_gflops())
    return summarize(bundle, spec, opts, target, compiled, flops, rows, results, matmul, threads)


# ----------------------------------------------------------------------------- the document

def graph_latency(runs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Median latency (s) of each graph's calls over every repeat."""
    out = {}
    for g in GRAPHS:
        times = [t for run in runs for t in run["calls"][g]]
        out[g] = statistics.median(times) if times else None
    return out


def loop_overhead(runs: list[dict[str, Any]]) -> float:
    """Median fraction of sampler wall time spent outside graph calls."""
    return statistics.median(max(0.0, run["wall_s"] - run["graph_s"]) / run["wall_s"] for run in runs)


def _median_wall(runs: list[dict[str, Any]]) -> float:
    return statistics.median(run["wall_s"] for run in runs)


def summarize(bundle: Bundle, spec: Spec, opts: BenchOptions, target: Any, compiled: Any, flops: dict[str, int],
              rows: int, results: dict[str, list[dict[str, Any]]], matmul: list[dict[str, float]],
              threads: int) -> dict[str, Any]:
    import torch

    from dualrate.exporter.version import __version__

    n = spec.sampler.num_steps
    m = encoder_calls(spec)
    per_row = {g: flops[g] / rows for g in GRAPHS}
    dual = results["dual_rate"]
    latency = graph_latency(dual)
    mm = {k: statistics.median(x[k] for x in matmul) for k in matmul[0]}
    mm_source = max(mm, key=mm.get)
    dual_s = _median_wall(dual)
    doc: dict[str, Any] = {
        "tool": "dualrate bench", "format_version": 1,
        "bundle": str(bundle.path),
        "target": {"backend": target.name, "requested_precision": opts.precision,
                   "effective_precision": compiled.effective_precision, "runtime_version": target.runtime_version()},
        "setup": {"batch": opts.batch, "rows_per_call": rows, "num_steps": n, "encoder_calls": m,
                  "guidance": spec.guidance.scale, "refresh_steps": list(spec.dual_rate.resolved_refresh_steps),
                  "repeats": opts.repeats, "seed": opts.seed, "threads": threads,
                  "torch_threads": torch.get_num_threads()},
        "flops": {"encoder_call": flops["encoder"], "denoiser_call": flops["denoiser"],
                  "encoder_per_sample": per_row["encoder"] * (rows // opts.batch),
                  "denoiser_per_sample": per_row["denoiser"] * (rows // opts.batch),
                  "dual_rate_run": sampler_flops(spec, opts.batch, per_row),
                  "single_rate_run": sampler_flops(every_step(spec), opts.batch, per_row),
                  "counted_with": "torch.utils.flop_counter.FlopCounterMode (matmul + convolution)"},
        "latency_ms": {g: None if latency[g] is None else latency[g] * 1e3 for g in GRAPHS},
        "encoder_gflops": _rate(flops["encoder"], latency["encoder"]),
        "denoiser_gflops": _rate(flops["denoiser"], latency["denoiser"]),
        "matmul_gflops": mm[mm_source],
        "matmul": {"source": f"{mm_source} sgemm {MATMUL_N}x{MATMUL_N} fp32", "gflops": mm,
                   "threads": {"torch": torch.get_num_threads(), "numpy": "BLAS default"}},
        "times_s": {"dual_rate": dual_s},
        "speedup_bound": speedup_bound(n, m, flops["encoder"], flops["denoiser"]),
        "loop_overhead": loop_overhead(dual),
        "runs": {name: [{"wall_s": run["wall_s"], "graph_s": run["graph_s"]} for run in runs]
                 for name, runs in results.items()},
        "machine": machine_info(),
        "versions": {"dualrate": __version__, "runtime": target.runtime_version(), "torch": torch.__version__,
                     "numpy": np.__version__, "python": platform.python_version()},
    }
    doc["dual_rate_gflops"] = doc["flops"]["dual_rate_run"] / dual_s / 1e9
    doc["dual_rate_fraction_of_matmul"] = doc["dual_rate_gflops"] / doc["matmul_gflops"]
    if "single_rate" in results:
        doc["times_s"]["single_rate"] = _median_wall(results["single_rate"])
        doc["speedup_realized"] = doc["times_s"]["single_rate"] / dual_s
        doc["speedup_fraction_of_bound"] = doc["speedup_realized"] / doc["speedup_bound"]
    if "torch_eager" in results:
        eager = results["torch_eager"]
        doc["times_s"]["torch_eager"] = _median_wall(eager)
        doc["vs_torch_eager"] = doc["times_s"]["torch_eager"] / dual_s
        # the best any backend could do with these FLOPs: every one at the measured matmul rate
        doc["vs_torch_eager_ceiling"] = doc["times_s"]["torch_eager"] / (doc["flops"]["dual_rate_run"]
                                                                          / (doc["matmul_gflops"] * 1e9))
        t_lat = graph_latency(eager)
        doc["torch_eager"] = {"latency_ms": {g: t_lat[g] * 1e3 for g in GRAPHS},
                              "encoder_gflops": _rate(flops["encoder"], t_lat["encoder"]),
                              "denoiser_gflops": _rate(flops["denoiser"], t_lat["denoiser"]),
                              "loop_overhead": loop_overhead(eager)}
    return doc


def _rate(flop: float, seconds: float | None) -> float | None:
    return None if not seconds else flop / seconds / 1e9


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
    """The results as a readable table."""
    s, t = doc["setup"], doc["target"]
    lines = [f"dualrate bench: {t['backend']} {t['effective_precision']} (runtime {t['runtime_version']}), "
             f"{doc['machine']['cpu']}, {s['threads']} threads",
             f"  {s['num_steps']} steps, {s['encoder_calls']} encoder calls, guidance {s['guidance']}, batch "
             f"{s['batch']} ({s['rows_per_call']} rows per call), medians over {s['repeats']} repeats",
             "",
             f"  {'graph':<10}{'GFLOP/call':>12}{'latency ms':>12}{'GFLOP/s':>10}{'torch ms':>10}{'torch GFLOP/s':>15}"]
    eager = doc.get("torch_eager", {})
    for g in GRAPHS:
        lines.append(f"  {g:<10}{doc['flops'][g + '_call'] / 1e9:>12.2f}{_num(doc['latency_ms'][g], '.1f'):>12}"
                     f"{_num(doc[g + '_gflops'], '.1f'):>10}{_num(eager.get('latency_ms', {}).get(g), '.1f'):>10}"
                     f"{_num(eager.get(g + '_gflops'), '.1f'):>15}")
    lines.append(f"  matmul    {doc['matmul']['source']}: {doc['matmul_gflops']:.1f} GFLOP/s "
                 f"(encoder at {doc['encoder_gflops'] / doc['matmul_gflops']:.0%} of it)")
    lines += ["", f"  {'sampler run':<34}{'time s':>9}"]
    for name, label in (("dual_rate", "dual-rate (spec)"), ("single_rate", "single-rate (refresh every step)"),
                        ("torch_eager", "torch eager, dual-rate")):
        if name in doc["times_s"]:
            lines.append(f"  {label:<34}{doc['times_s'][name]:>9.2f}")
    lines.append("")
    if "speedup_realized" in doc:
        lines.append(f"  speedup realized {doc['speedup_realized']:.2f}x of bound {doc['speedup_bound']:.2f}x "
                     f"({doc['speedup_fraction_of_bound']:.0%})")
    else:
        lines.append(f"  speedup bound {doc['speedup_bound']:.2f}x (single rate not measured)")
    if "vs_torch_eager" in doc and t["effective_precision"] == "fp32":
        lines.append(f"  vs torch eager   {doc['vs_torch_eager']:.2f}x (ceiling {doc['vs_torch_eager_ceiling']:.2f}x: "
                     f"every FLOP at the matmul rate; this run: {doc['dual_rate_fraction_of_matmul']:.0%} of it)")
    elif "vs_torch_eager" in doc:       # the ceiling is fp32 arithmetic; this run did less precise, cheaper work
        lines.append(f"  vs torch eager   {doc['vs_torch_eager']:.2f}x (computing in {t['effective_precision']} against "
                     f"fp32 eager; the fp32 ceiling {doc['vs_torch_eager_ceiling']:.2f}x does not apply)")
    lines.append(f"  loop overhead    {doc['loop_overhead']:.1%} of sampler wall time")
    return "\n".join(lines)


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)
