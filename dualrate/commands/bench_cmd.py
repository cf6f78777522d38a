"""``dualrate bench``: sampling speed of a compiled bundle against its FLOP model and the PyTorch peers."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_bench_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure sampling speed on a backend against the FLOP-model bound",
                       description="Time BUNDLE on --target after a warm-up, interleaved, medians over repeats: "
                                   "per-graph latency and GFLOP/s (encoder, denoiser, and the decoder where the "
                                   "bundle has one), the spec's dual-rate sampler, the same backend refreshing at "
                                   "every step, the PyTorch peers at the same precision (eager and torch.compile; "
                                   "bf16/fp16 under autocast), for an int8 or mixed plan the same backend at fp32, "
                                   "the size on disk of each compiled graph, on OpenVINO a cross-check with "
                                   "benchmark_app on the same IR, the loop overhead and this machine's fp32 matmul "
                                   "rate. Every row names its precision; ratios compare like with like. FLOPs are "
                                   "counted on the source checkpoint's modules (verified by sha256); a bundle "
                                   "exported from a Python model has no checkpoint, so its FLOPs and PyTorch rows "
                                   "are reported as not run.")
    p.add_argument("bundle", type=Path)
    p.add_argument("--target", required=True, help="onnxruntime, openvino, coreml or tensorrt")
    p.add_argument("--precision", default=None,
                   help="fp32, fp16, bf16, int8, int8-weights (per backend), or a per-graph plan such as "
                        "encoder=int8,denoiser=fp32; default: the plan `dualrate tune` recorded in the bundle for the target, else fp32")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results document")
    p.add_argument("--batch", type=int, default=4, help="samples per sampler run (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; medians are reported (default 3)")
    p.add_argument("--threads", type=int, default=0, help="backend and torch threads (default: every core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="the source checkpoint (default: the manifest's path, verified by sha256)")
    p.add_argument("--no-single-rate", action="store_true", help="skip the refresh-every-step run")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch peers (eager and torch.compile)")
    p.add_argument("--no-torch-compile", action="store_true",
                   help="skip the torch.compile peer (its compile takes minutes for large models)")
    p.add_argument("--no-backend-fp32", action="store_true",
                   help="int8 / mixed plans: skip the same backend at fp32 (what their speed is compared with)")
    p.add_argument("--no-benchmark-app", action="store_true",
                   help="OpenVINO: skip the cross-check with OpenVINO's benchmark_app on the same IR")
    p.add_argument("--benchmark-app-seconds", type=float, default=10.0,
                   help="duration of each benchmark_app run (two per graph, bracketing the repeats; default 10)")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from dualrate.api import bench
    from dualrate.validation.bench import console_table

    from dualrate.exporter.progress import console

    doc = bench(args.bundle, target=args.target, precision=args.precision, batch=args.batch, repeats=args.repeats,
                threads=args.threads, seed=args.seed, checkpoint=args.checkpoint,
                single_rate=not args.no_single_rate, torch_eager=not args.no_torch,
                torch_compile=not (args.no_torch or args.no_torch_compile), backend_fp32=not args.no_backend_fp32,
                benchmark_app=not args.no_benchmark_app, benchmark_app_seconds=args.benchmark_app_seconds,
                progress=console())
    if args.json:
        from dualrate.validation.reports import write_json
        write_json(doc, args.json)
    print(console_table(doc))
    return 0
