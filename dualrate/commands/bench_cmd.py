"""``dualrate bench``: sampling speed of a compiled bundle against its FLOP model and PyTorch eager."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_bench_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure sampling speed on a backend against the FLOP-model bound",
                       description="Time BUNDLE on --target after a warm-up, interleaved, medians over repeats: "
                                   "per-graph latency and GFLOP/s (encoder, denoiser, and the decoder where the "
                                   "bundle has one), the spec's dual-rate sampler, the same backend refreshing at "
                                   "every step, the PyTorch eager reference, the loop overhead and this machine's "
                                   "fp32 matmul rate. FLOPs are counted on the source checkpoint's modules "
                                   "(verified by sha256); a bundle exported from a Python model has no checkpoint, "
                                   "so its FLOPs and eager row are reported as not run.")
    p.add_argument("bundle", type=Path)
    p.add_argument("--target", required=True, help="onnxruntime, openvino, coreml or tensorrt")
    p.add_argument("--precision", default="fp32", help="fp32, fp16 or bf16 (per backend)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the results document")
    p.add_argument("--batch", type=int, default=4, help="samples per sampler run (default 4)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; medians are reported (default 3)")
    p.add_argument("--threads", type=int, default=0, help="backend and torch threads (default: every core)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="the source checkpoint (default: the manifest's path, verified by sha256)")
    p.add_argument("--no-single-rate", action="store_true", help="skip the refresh-every-step run")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager reference run")
    p.set_defaults(handler=_bench)


def _bench(args: argparse.Namespace) -> int:
    from dualrate.api import bench
    from dualrate.validation.bench import console_table

    from dualrate.exporter.progress import console

    doc = bench(args.bundle, target=args.target, precision=args.precision, batch=args.batch, repeats=args.repeats,
                threads=args.threads, seed=args.seed, checkpoint=args.checkpoint,
                single_rate=not args.no_single_rate, torch_eager=not args.no_torch, progress=console())
    if args.json:
        from dualrate.validation.reports import write_json
        write_json(doc, args.json)
    print(console_table(doc))
    return 0
