"""``dualrate sample``: sample a class grid and write a PNG (bundle on a backend, or a checkpoint)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_sampler_flags, given_sampler_flags, sampler_options


def add_sample_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="sample a grid of images and write a PNG",
                       description="Sample with the dual-rate loop. SOURCE is a bundle (run on --target, with "
                                   "the bundle's sampler) or a checkpoint (PyTorch reference; sampler flags apply).")
    p.add_argument("source", type=Path, help="bundle directory, or checkpoint directory / .pt / .safetensors")
    p.add_argument("--target", default=None, help="onnxruntime, openvino, ... for a bundle; torch for a checkpoint")
    p.add_argument("--precision", default="fp32", help="compiled precision (bundle targets)")
    p.add_argument("--class", dest="classes", default=None, metavar="C[,C..]",
                   help="class ids, comma-separated (default: every class, up to 10)")
    p.add_argument("-n", type=int, default=8, help="samples per class (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=0, help="pixel upscaling in the PNG (default: to >= 48 px)")
    p.add_argument("-o", "--output", type=Path, required=True, help="PNG file")
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.add_argument("--allow-factory", action="store_true", help="allow a checkpoint's custom model factory to run")
    add_sampler_flags(p)
    p.set_defaults(handler=_sample)


def parse_classes(text: str | None, num_classes: int) -> list[int]:
    from dualrate.exporter.errors import BadInputError

    if text is None:
        return list(range(min(num_classes, 10)))
    try:
        return [int(c) for c in text.split(",") if c.strip()]
    except ValueError:
        raise BadInputError(f"--class {text!r}: expected comma-separated integers") from None


def open_source(args: argparse.Namespace):
    """(runner, spec, description) for a bundle on a backend or a checkpoint on the reference."""
    import numpy as np

    from dualrate.exporter.bundle import MANIFEST, open_bundle
    from dualrate.exporter.checkpoint import load_checkpoint
    from dualrate.exporter.errors import BadInputError
    from dualrate.exporter.spec_builder import make_spec
    from dualrate.exporter.torch_runner import TorchReferenceRunner

    if (args.source / MANIFEST).is_file():
        from dualrate.targets.base import get_target

        flags = given_sampler_flags(args)
        if flags:
            raise BadInputError(f"{', '.join(flags)} cannot change a bundle: its sampler was fixed at export "
                                "(spec.json). Re-export with those options, or sample the checkpoint instead")
        bundle = open_bundle(args.source)
        target = get_target(args.target or "onnxruntime")
        compiled = target.compile(bundle, args.precision)
        return target.open_runner(bundle, compiled), bundle.spec, f"{target.name} ({compiled.effective_precision})"
    if args.target not in (None, "torch"):
        raise BadInputError(f"--target {args.target} needs a bundle; {args.source} is a checkpoint. "
                            "Run `dualrate export` first, or use --target torch")
    ckpt = load_checkpoint(args.source, allow_factory=args.allow_factory)
    runner = TorchReferenceRunner(ckpt.pair)
    info = ckpt.pair.info
    feats = runner.encode(np.zeros((1, *info.sample_shape), np.float32), np.zeros(1, np.float32),
                          np.zeros(1, np.int64))
    spec = make_spec(info, [tuple(f.shape[1:]) for f in feats], sampler_options(args),
                     {"checkpoint_sha256": ckpt.sha256}, runner=runner)
    return runner, spec, "torch reference"


def _sample(args: argparse.Namespace) -> int:
    import numpy as np

    from dualrate.exporter.atomic import check_output
    from dualrate.exporter.errors import BadInputError
    from dualrate.exporter.sampling import sample, spec_noise
    from dualrate.validation.png import grid, to_uint8, write_png

    check_output(args.output, args.force)
    if args.n < 1:
        raise BadInputError(f"-n {args.n}: expected at least 1 sample per class")
    runner, spec, where = open_source(args)
    classes = parse_classes(args.classes, spec.model.num_classes)
    labels = np.repeat(np.asarray(classes, dtype=np.int64), args.n)
    result = sample(runner, spec, labels, spec_noise(spec, len(labels), args.seed),
                    on_step=_progress(spec.sampler.num_steps))
    size = spec.model.sample_shape[-1]
    scale = args.scale or max(1, -(-48 // size))
    write_png(args.output, grid(to_uint8(result.x, spec.model.data_range), rows=len(classes), scale=scale))
    print(f"wrote {args.output}: {len(classes)} classes x {args.n} samples, {spec.sampler.num_steps} steps, "
          f"encoder ran at {len(result.refresh_log['cond'])} steps, on {where}")
    return 0


def _progress(total: int):
    """Step counter on stderr when it is a terminal (CI logs stay clean)."""
    if not sys.stderr.isatty():
        return None

    def show(i: int) -> None:
        print(f"\rsampling step {i + 1}/{total}", end="" if i + 1 < total else "\n", file=sys.stderr)
    return show
