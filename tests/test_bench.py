"""``dualrate bench`` on the tiny bundle: the document is complete, finite and self-consistent.

No timing thresholds here: performance claims live in docs/benchmarks.md, measured by the
benchmark itself on the benchmark config. Every row names its precision, ratios are only formed
like for like, sizes are the files' sizes, and OpenVINO's benchmark_app report is parsed.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from dualrate.exporter.errors import BackendUnavailableError, BadInputError
from dualrate.exporter.sampling import call_plan
from dualrate.validation.bench import BenchOptions, bench, console_table, count_graph_flops, speedup_bound

from tests.conftest import tiny_spec

KEYS = ("speedup_realized", "speedup_bound", "loop_overhead", "vs_torch_eager", "encoder_gflops", "matmul_gflops")


@pytest.fixture(scope="module")
def doc(tiny_bundle):
    # torch.compile has its own (slow: it compiles C++) test below
    return bench(tiny_bundle.path, BenchOptions(target="onnxruntime", batch=2, repeats=2, threads=1,
                                                torch_compile=False))


def _numbers(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _numbers(v, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def test_document_has_the_keys_and_only_finite_numbers(doc):
    for key in KEYS:
        assert isinstance(doc[key], float), key
    for path, value in _numbers(doc):
        assert math.isfinite(value), path
    assert doc["latency_ms"]["encoder"] > 0 and doc["latency_ms"]["denoiser"] > 0
    assert set(doc["times_s"]) == {"dual_rate", "single_rate", "torch_eager"}
    json.dumps(doc, allow_nan=False)


def test_flops_are_counted_on_the_checkpoint_modules_at_the_loop_rows(doc, tiny_bundle, pair):
    spec = tiny_bundle.spec
    rows = doc["setup"]["rows_per_call"]
    assert rows == 2 * doc["setup"]["batch"]          # guidance everywhere: both branches batched
    assert count_graph_flops(pair, spec, rows) == {"encoder": doc["flops"]["encoder_call"],
                                                    "denoiser": doc["flops"]["denoiser_call"]}


def test_speedup_bound_follows_the_flop_model(doc, tiny_bundle):
    spec = tiny_bundle.spec
    n = spec.sampler.num_steps
    m = sum(call.refresh for step in call_plan(spec) for call in step)
    assert m == doc["setup"]["encoder_calls"] == len(spec.dual_rate.resolved_refresh_steps)
    f_e, f_g = doc["flops"]["encoder_call"], doc["flops"]["denoiser_call"]
    want = (n * f_e + n * f_g) / (m * f_e + n * f_g)
    assert doc["speedup_bound"] == pytest.approx(want, rel=1e-12)
    # the same bound from the total FLOPs of both sampler runs (every call of each plan)
    assert doc["flops"]["single_rate_run"] / doc["flops"]["dual_rate_run"] == pytest.approx(want, rel=1e-12)
    assert speedup_bound(n, n, f_e, f_g) == pytest.approx(1.0)


def test_derived_numbers_agree_with_the_measured_ones(doc):
    t = doc["times_s"]
    assert doc["speedup_realized"] == pytest.approx(t["single_rate"] / t["dual_rate"])
    assert doc["vs_torch_eager"] == pytest.approx(t["torch_eager"] / t["dual_rate"])
    assert doc["speedup_fraction_of_bound"] == pytest.approx(doc["speedup_realized"] / doc["speedup_bound"])
    assert doc["encoder_gflops"] == pytest.approx(doc["flops"]["encoder_call"] / doc["latency_ms"]["encoder"] / 1e6)
    assert doc["denoiser_gflops"] == pytest.approx(doc["flops"]["denoiser_call"] / doc["latency_ms"]["denoiser"] / 1e6)
    assert doc["matmul_gflops"] == max(doc["matmul"]["gflops"].values()) > 0
    at_matmul_rate = doc["flops"]["dual_rate_run"] / (doc["matmul_gflops"] * 1e9)
    assert doc["vs_torch_eager_ceiling"] == pytest.approx(t["torch_eager"] / at_matmul_rate)
    assert doc["dual_rate_fraction_of_matmul"] == pytest.approx(at_matmul_rate / t["dual_rate"])
    assert 0.0 <= doc["loop_overhead"] < 1.0
    for runs in doc["runs"].values():
        assert len(runs) == 2
        for run in runs:
            assert 0 < run["graph_s"] <= run["wall_s"]


def test_console_table_names_the_headline_numbers(doc):
    text = console_table(doc)
    for word in ("encoder", "denoiser", "speedup realized", "vs torch eager", "loop overhead", "matmul"):
        assert word in text
    assert f"ceiling {doc['vs_torch_eager_ceiling']:.2f}x" in text
    # the ceiling is for fp32 arithmetic: a bf16 comparison is not held to it, nor credited against it
    rows = {k: {**r, "graph_precisions": {g: "bf16" for g in r["graph_precisions"]}, "precision": "bf16"}
            for k, r in doc["rows"].items()}
    bf16 = {**doc, "rows": rows, "target": {**doc["target"], "effective_precision": "bf16"}}
    text = console_table(bf16)
    assert "both computing in bf16" in text and "ceiling" not in text


def _run_command(*argv):
    from dualrate.commands.bench_cmd import add_bench_command

    parser = argparse.ArgumentParser()
    add_bench_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *argv])
    return args.handler(args)


def test_command_writes_json_and_returns_0(tiny_bundle, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert _run_command(str(tiny_bundle.path), "--target", "onnxruntime", "--batch", "1", "--repeats", "1",
                        "--threads", "1", "--no-single-rate", "--no-torch", "--json", str(out)) == 0
    data = json.loads(out.read_text())
    assert data["target"]["backend"] == "onnxruntime" and "speedup_realized" not in data
    assert "loop overhead" in capsys.readouterr().out


@pytest.mark.parametrize("flag,value", [("--batch", "0"), ("--repeats", "0"), ("--threads", "-1")])
def test_bad_numbers_are_bad_input(tiny_bundle, flag, value):
    with pytest.raises(BadInputError, match=flag):
        _run_command(str(tiny_bundle.path), "--target", "onnxruntime", flag, value)


def test_unknown_target_and_precision_are_bad_input(tiny_bundle):
    with pytest.raises(BadInputError, match="unknown target"):
        _run_command(str(tiny_bundle.path), "--target", "nope")
    with pytest.raises(BadInputError, match="precision"):
        _run_command(str(tiny_bundle.path), "--target", "onnxruntime", "--precision", "fp16")


def test_unavailable_target_exits_3(tiny_bundle):
    from dualrate.targets.base import get_target

    if get_target("tensorrt").available() is None:
        pytest.skip("TensorRT is usable here")
    with pytest.raises(BackendUnavailableError) as info:
        _run_command(str(tiny_bundle.path), "--target", "tensorrt")
    assert info.value.exit_code == 3


def test_wrong_checkpoint_is_refused(tiny_bundle, tmp_path):
    from dualrate.exporter.checkpoint import make_config, save_checkpoint
    from dualrate.exporter.model_config import preset

    from tests.conftest import tiny_pair

    other = save_checkpoint(tiny_pair(seed=1), make_config({"family": "dr-uvit", **preset("tiny").to_dict()}),
                            tmp_path / "other")
    with pytest.raises(BadInputError, match="sha256"):
        bench(tiny_bundle.path, BenchOptions(target="onnxruntime", batch=1, repeats=1, checkpoint=other))


# -- any conditioning, a decoder, a bundle exported from a model handed over in Python ---------------------

class _TextEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.proj = nn.Linear(6, 4)

    def forward(self, x, t, text):
        h = self.conv(x) + self.proj(text.mean(1))[:, :, None, None] + t[:, None, None, None] / 15
        return {"mid": torch.tanh(h)}


class _TextDenoiser(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(5, 1, 3, padding=1)
        self.proj = nn.Linear(6, 1)

    def forward(self, x, t, t_ctx, text, mid):
        scale = 1 + (t - t_ctx)[:, None, None, None] / 30
        return self.conv(torch.cat([x, mid], 1)) * scale + self.proj(text.mean(1))[:, :, None, None]


class _Upsampler(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.ConvTranspose2d(1, 3, 2, stride=2)

    def decode(self, latent):
        return (torch.tanh(self.conv(latent)),)


def text_model(seed: int = 0):
    """Embedding conditioning [3, 6] with a stored (file) null, a decoder, features by name."""
    from dualrate.exporter.model_pair import SAMPLE, TIME, TIME_CTX, Conditioning, Decoder, DualRateModel, cond, feature

    torch.manual_seed(seed)
    return DualRateModel(
        _TextEncoder(), _TextDenoiser(),
        encoder_inputs={"x": SAMPLE, "t": TIME, "text": cond("text")},
        denoiser_inputs={"x": SAMPLE, "t": TIME, "t_ctx": TIME_CTX, "text": cond("text"), "mid": feature("mid")},
        sample_shape=(1, 8, 8), prediction="eps",
        conditioning=[Conditioning("text", (3, 6), "float32",
                                   null=np.linspace(-1, 1, 18, dtype=np.float32).reshape(3, 6))],
        decoder=Decoder(_Upsampler(), input="latent", method="decode", scaling_factor=0.5)).eval()


@pytest.fixture(scope="module")
def fast_matmul(monkeypatch_module):
    from dualrate.validation import bench as bench_mod

    full = bench_mod.matmul_gflops
    monkeypatch_module.setattr(bench_mod, "matmul_gflops", lambda: full(256, 1))


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def _export_text(out, **sampler):
    from dualrate.exporter.export import ExportOptions
    from dualrate.exporter.spec_builder import SamplerOptions
    from dualrate.validation.export_check import export_bundle

    model = text_model()
    opts = ExportOptions(sampler=SamplerOptions(num_steps=6, refresh_params={"k": 3, "phase": 0}, **sampler))
    return model, export_bundle(model, out, opts).bundle


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory):
    return _export_text(tmp_path_factory.mktemp("text") / "bundle", guidance=2.0)


@pytest.fixture(scope="module")
def text_doc(text_bundle, fast_matmul):
    model, bundle = text_bundle
    return bench(bundle.path, BenchOptions(target="onnxruntime", batch=2, repeats=2, threads=1, model=model,
                                           torch_compile=False))


def test_decoder_and_embedding_conditioning_are_timed_and_counted(text_doc, text_bundle):
    model, bundle = text_bundle
    spec, doc = bundle.spec, text_doc
    assert bundle.manifest["source_checkpoint"] is None and spec.model.decoder is not None
    for key in KEYS:
        assert isinstance(doc[key], float), key
    for path, value in _numbers(doc):
        assert math.isfinite(value), path
    assert set(doc["latency_ms"]) == {"encoder", "denoiser", "decoder"} and doc["latency_ms"]["decoder"] > 0
    assert doc["torch_eager"]["latency_ms"]["decoder"] > 0 and doc["not_run"] == {"torch_compile": "skipped (--no-torch-compile)"}
    batch, rows = doc["setup"]["batch"], doc["setup"]["rows_per_call"]
    assert rows == 2 * batch
    flops = count_graph_flops(model, spec, rows, batch, nulls=bundle.nulls())
    assert flops == {"encoder": doc["flops"]["encoder_call"], "denoiser": doc["flops"]["denoiser_call"],
                     "decoder": doc["flops"]["decoder_call"]}
    assert min(flops.values()) > 0
    # the decoder runs once per sampler run, on the batch final samples, in both call plans
    n, m = spec.sampler.num_steps, doc["setup"]["encoder_calls"]
    f_e, f_g, f_d = flops["encoder"], flops["denoiser"], flops["decoder"]
    assert doc["flops"]["dual_rate_run"] == pytest.approx(m * f_e + n * f_g + f_d, rel=1e-12)
    assert doc["flops"]["single_rate_run"] == pytest.approx(n * f_e + n * f_g + f_d, rel=1e-12)
    assert doc["speedup_bound"] == pytest.approx(speedup_bound(n, m, f_e, f_g, f_d), rel=1e-12)
    assert doc["decoder_gflops"] == pytest.approx(f_d / doc["latency_ms"]["decoder"] / 1e6)
    for run in doc["runs"]["dual_rate"]:
        assert 0 < run["graph_s"] <= run["wall_s"]
    text = console_table(doc)
    assert "decoder" in text and "once per sampler run" in text and "vs torch eager" in text


def test_python_bundle_without_its_model_reports_eager_and_flops_as_not_run(tmp_path, fast_matmul):
    # a guidance interval: the branches run as separate calls at some steps (B rows and 2B rows)
    _, bundle = _export_text(tmp_path / "bundle", guidance=2.0, guidance_interval=(-1.0, 4.0))
    doc = bench(bundle.path, BenchOptions(target="onnxruntime", batch=1, repeats=1, threads=1))
    assert set(doc["not_run"]) == {"flops", "torch_eager", "torch_compile"}
    assert "handed over in Python" in doc["not_run"]["torch_eager"]
    assert "handed over in Python" in doc["not_run"]["torch_compile"]
    assert set(doc["times_s"]) == {"dual_rate", "single_rate"} and "vs_torch_eager" not in doc
    assert doc["speedup_bound"] is None and doc["flops"]["encoder_call"] is None
    assert isinstance(doc["speedup_realized"], float) and doc["latency_ms"]["decoder"] > 0
    json.dumps(doc, allow_nan=False)
    text = console_table(doc)
    assert "not run" in text and "FLOPs not counted" in text and "loop overhead" in text


def test_a_model_that_is_not_the_bundles_source_is_refused(text_bundle):
    _, bundle = text_bundle
    with pytest.raises(BadInputError, match="sha256"):
        bench(bundle.path, BenchOptions(target="onnxruntime", batch=1, repeats=1, model=text_model(seed=1)))


# -- peers at the same precision, sizes on disk, OpenVINO's benchmark_app ------------------------------------

def test_every_row_names_its_precision_and_ratios_are_like_for_like(doc, tiny_bundle):
    graphs = list(tiny_bundle.graph_names())
    rows = doc["rows"]
    assert set(rows) == {"dual_rate", "single_rate", "torch_eager"}
    for key, row in rows.items():
        assert row["graph_precisions"] == {g: "fp32" for g in graphs}, key
        assert row["precision"] == "fp32" and row["time_s"] == doc["times_s"][key]
    assert rows["torch_eager"]["autocast"] is None and rows["torch_eager"]["runtime"].startswith("torch ")
    assert [c["name"] for c in doc["comparisons"]] == ["vs_torch_eager"]
    cmp = doc["comparisons"][0]
    assert cmp["like_for_like"] and cmp["precision"] == cmp["against_precision"] == "fp32"
    assert cmp["ratio"] == pytest.approx(doc["vs_torch_eager"])
    text = console_table(doc)
    assert "torch eager ms (fp32)" in text and "precision" in text and "(same precision)" in text
    assert "torch compile not run: skipped (--no-torch-compile)" in text


def test_sizes_are_the_compiled_files_sizes(doc, tiny_bundle):
    graphs = list(tiny_bundle.graph_names())
    folder = tiny_bundle.path / "targets" / doc["rows"]["dual_rate"]["target_dir"]
    sizes = doc["sizes"][folder.name]
    assert sizes["graph_precisions"] == {g: "fp32" for g in graphs}
    on_disk = {g: sum(p.stat().st_size for p in folder.iterdir() if p.name.split(".")[0] == g) for g in graphs}
    assert all(on_disk.values())
    assert {g: sizes["bytes"][g] for g in graphs} == on_disk
    assert sizes["bytes"]["total"] == sum(on_disk.values()) + sizes["bytes"]["other"]
    assert "compiled target" in console_table(doc) and folder.name in console_table(doc)


def test_comparisons_never_pair_unlike_precisions():
    from dualrate.validation.bench_rows import comparisons

    def row(precision, t, **graphs):
        return {"graph_precisions": {"encoder": graphs.get("encoder", precision),
                                     "denoiser": graphs.get("denoiser", precision)}, "time_s": t}

    # an int8 plan: the peers (fp32) go against the backend's fp32 row, int8 against fp32 is named as such
    rows = {"dual_rate": row("int8", 1.0, denoiser="fp32"), "single_rate": row("int8", 3.0, denoiser="fp32"),
            "backend_fp32": row("fp32", 2.0), "torch_eager": row("fp32", 4.0), "torch_compile": row("fp32", 3.0)}
    got = {c["name"]: c for c in comparisons(rows)}
    assert set(got) == {"backend_fp32_vs_torch_eager", "backend_fp32_vs_torch_compile", "vs_backend_fp32"}
    assert got["backend_fp32_vs_torch_eager"]["ratio"] == 2.0 and got["backend_fp32_vs_torch_eager"]["like_for_like"]
    assert got["vs_backend_fp32"]["ratio"] == 2.0 and not got["vs_backend_fp32"]["like_for_like"]
    assert got["vs_backend_fp32"]["precision"] == "encoder=int8,denoiser=fp32"
    # a bf16 backend row and an fp32 torch row: no ratio at all
    assert comparisons({"dual_rate": row("bf16", 1.0), "torch_eager": row("fp32", 2.0)}) == []


def test_peers_follow_the_backend_precision(pair):
    from dualrate.validation.bench_peers import BEST_COMPILE, TorchPeer, peer_runner, peers_for

    assert peers_for("fp32") == [TorchPeer("fp32"), TorchPeer("fp32", BEST_COMPILE)]
    assert peers_for("bf16", compiled=False) == [TorchPeer("bf16")]
    assert peers_for("int8") == [] and peers_for("encoder=int8,denoiser=fp32") == []
    assert TorchPeer("bf16", "freezing").label == "torch.compile (freezing), autocast bfloat16"
    # bf16 autocast really computes in bf16: the encoder's features come out bf16
    spec = tiny_spec(pair)
    runner = peer_runner(pair, spec, TorchPeer("bf16"))
    z = np.zeros((2, *spec.model.sample_shape), np.float32)
    from dualrate.exporter.golden import example_conditioning
    from dualrate.exporter.runner import graph_feeds, role_values

    cond = example_conditioning(spec, 0, 2, pair.nulls())
    feats = runner.encode(graph_feeds(spec.model.encoder, role_values(z, np.ones(2), None, cond)))
    assert any(f.dtype == torch.bfloat16 for f in feats.values())


@pytest.mark.slow
def test_torch_compile_peer_is_timed_with_its_compile_time_apart(tiny_bundle, fast_matmul):
    doc = bench(tiny_bundle.path, BenchOptions(target="onnxruntime", batch=1, repeats=1, threads=1,
                                               single_rate=False))
    row = doc["rows"]["torch_compile"]
    assert row["precision"] == "fp32" and row["compile"]["backend"] == "inductor" and row["compile"]["dynamic"] is False
    assert row["compile_s"] > 0 and "warm_up_s" not in row
    assert doc["vs_torch_compile"] == pytest.approx(doc["times_s"]["torch_compile"] / doc["times_s"]["dual_rate"])
    assert "torch.compile" in console_table(doc)


BENCHMARK_APP_REPORT = {"execution_results": {
    "read model time (ms)": "29.43", "compile model time (ms)": "195.91", "first inference time (ms)": "14.60",
    "total execution time (ms)": "3000.24", "total number of iterations": "4566", "latency (ms)": "0.24",
    "avg latency": "0.64", "min latency": "0.19", "max latency": "12.09", "throughput": "6087.52"}}
BENCHMARK_APP_LOG = """[Step 8/11] Querying optimal runtime parameters
[ INFO ] Model:
[ INFO ]   NETWORK_NAME: Model1
[ INFO ]   NUM_STREAMS: 1
[ INFO ]   INFERENCE_NUM_THREADS: 2
[ INFO ]   PERF_COUNT: NO
[ INFO ]   INFERENCE_PRECISION_HINT: <Type: 'float32'>
[ INFO ]   PERFORMANCE_HINT: LATENCY
"""


def test_benchmark_app_report_and_log_are_parsed():
    from dualrate.validation.bench_ov import cross_check, parse_config, parse_report

    got = parse_report(BENCHMARK_APP_REPORT)
    assert got == {"median_ms": 0.24, "average_ms": 0.64, "min_ms": 0.19, "max_ms": 12.09, "iterations": 4566,
                   "compile_ms": 195.91}
    assert parse_config(BENCHMARK_APP_LOG) == {"NUM_STREAMS": "1", "INFERENCE_NUM_THREADS": "2",
                                               "INFERENCE_PRECISION_HINT": "<Type: 'float32'>",
                                               "PERFORMANCE_HINT": "LATENCY"}
    check = cross_check({"encoder": 0.26}, {"encoder": [{**got, "rows": 4, "ours_back_to_back_ms": 0.3},
                                                        {**got, "median_ms": 0.28, "rows": 4, "ours_back_to_back_ms": 0.32}]})
    assert check["encoder"]["benchmark_app_median_ms"] == pytest.approx(0.26)
    assert check["encoder"]["ratio"] == pytest.approx(1.0) and check["encoder"]["within_10pct"]
    assert check["encoder"]["ours_back_to_back_ms"] == pytest.approx(0.31)
    assert check["encoder"]["ratio_back_to_back"] == pytest.approx(0.31 / 0.26)
    assert not check["encoder"]["back_to_back_within_10pct"]


def test_openvino_latency_is_cross_checked_with_benchmark_app(tiny_bundle, fast_matmul):
    from dualrate.targets.base import get_target
    from dualrate.validation.bench_ov import benchmark_app_command

    if get_target("openvino").available() is not None:
        pytest.skip(f"OpenVINO is not usable here: {get_target('openvino').available()}")
    if benchmark_app_command() is None:
        pytest.skip("OpenVINO's benchmark_app is not installed")
    doc = bench(tiny_bundle.path, BenchOptions(target="openvino", batch=2, repeats=1, threads=1, single_rate=False,
                                               torch_eager=False, torch_compile=False, benchmark_app_seconds=1))
    check = doc["benchmark_app"]["graphs"]
    assert set(check) == set(tiny_bundle.graph_names())
    for graph, c in check.items():
        assert len(c["runs"]) == 2                                   # bracketing the repeats
        for run in c["runs"]:
            assert run["rows"] == doc["setup"]["rows_per_call"] and run["iterations"] > 0
            assert run["median_ms"] > 0 and run["average_ms"] > 0
            # benchmark_app compiled with the runner's properties
            assert run["config"]["NUM_STREAMS"] == "1" and run["config"]["INFERENCE_NUM_THREADS"] == "1"
            assert run["config"]["PERFORMANCE_HINT"] == "LATENCY"
            assert f"{graph}.xml" in run["command"] and "-api sync" in run["command"]
            assert run["ours_back_to_back_ms"] > 0
        assert c["ratio"] == pytest.approx(c["ours_ms"] / c["benchmark_app_median_ms"])
        assert c["ratio_back_to_back"] == pytest.approx(c["ours_back_to_back_ms"] / c["benchmark_app_median_ms"])
    assert "benchmark_app (same IR)" in console_table(doc)


def test_call_rows_reads_axis_0_of_any_runtime_value():
    import onnxruntime as ort

    from dualrate.validation.bench import call_rows

    assert call_rows({"x": np.zeros((3, 2), np.float32)}) == 3
    assert call_rows({"x": ort.OrtValue.ortvalue_from_numpy(np.zeros((5, 2), np.float32))}) == 5   # shape()
    assert call_rows({"t": torch.zeros(7)}) == 7 and call_rows({}) == 0
