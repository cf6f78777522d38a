"""``dualrate sample``: sample a grid and write a PNG or the raw samples (bundle on a backend, or a checkpoint)."""

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
    p.add_argument("--precision", default=None,
                   help="compiled precision or per-graph plan, e.g. int8 or encoder=int8,denoiser=fp32 (bundle "
                        "targets; default: the plan `dualrate tune` recorded in the bundle for the target, else fp32)")
    p.add_argument("--class", dest="classes", default=None, metavar="C[,C..]",
                   help="class ids, comma-separated (default: every class, up to 10)")
    p.add_argument("--conditioning", type=Path, default=None, metavar="FILE.npz",
                   help="conditioning arrays by input name, one row per grid row (text embeddings, masks, ...)")
    p.add_argument("-n", type=int, default=8, help="samples per class / conditioning row (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--scale", type=int, default=0, help="pixel upscaling in the PNG (default: to >= 48 px)")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="PNG grid, or FILE.npy for the raw float32 samples [N, C, H, W] in grid order")
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
    """(runner, spec, nulls, description) for a bundle on a backend or a checkpoint on the reference."""
    from dualrate.exporter.bundle import MANIFEST, open_bundle
    from dualrate.exporter.errors import BadInputError

    if (args.source / MANIFEST).is_file():
        from dualrate.api import open_runner

        flags = given_sampler_flags(args)
        if flags:
            raise BadInputError(f"{', '.join(flags)} cannot change a bundle: its sampler was fixed at export "
                                "(spec.json). Re-export with those options, or sample the checkpoint instead")
        bundle = open_bundle(args.source)
        from dualrate.exporter.precision_default import resolve_precision

        precision = resolve_precision(bundle, args.target or "onnxruntime", args.precision)
        runner = open_runner(bundle, target=args.target or "onnxruntime", precision=precision)
        return runner, bundle.spec, bundle.nulls(), f"{runner.name} ({precision})"
    if args.target not in (None, "torch"):
        raise BadInputError(f"--target {args.target} needs a bundle; {args.source} is a checkpoint. "
                            "Run `dualrate export` first, or use --target torch")
    from dualrate.exporter.optional import require

    require("torch", "sampling a checkpoint (the PyTorch reference)")
    from dualrate.exporter.checkpoint import load_checkpoint
    from dualrate.exporter.export import spec_for_model
    from dualrate.exporter.torch_runner import TorchReferenceRunner

    ckpt = load_checkpoint(args.source, allow_factory=args.allow_factory)
    spec = spec_for_model(ckpt.pair, sampler_options(args), {"source_sha256": ckpt.sha256})
    return TorchReferenceRunner(ckpt.pair, spec), spec, ckpt.pair.nulls(), "torch reference"


def read_conditioning(args: argparse.Namespace, spec) -> tuple[dict, int]:
    """Conditioning for the run and the number of grid rows: ``--conditioning FILE.npz`` (one row
    per entry, each sampled ``-n`` times) or ``--class`` ids for a class-conditional model."""
    import numpy as np

    from dualrate.exporter.conditioning import class_input
    from dualrate.exporter.errors import BadInputError
    from dualrate.exporter.jsonio import read_npz

    if args.conditioning is not None:
        if args.classes is not None:
            raise BadInputError("give either --class or --conditioning, not both")
        data = read_npz(args.conditioning, "--conditioning")
        rows = {len(v) for v in data.values() if np.ndim(v) > 0}
        if len(rows) != 1:
            raise BadInputError(f"--conditioning {args.conditioning}: arrays must share one first axis (rows); "
                                f"found {sorted(rows)}")
        m = rows.pop()
        return {k: np.repeat(np.asarray(v), args.n, axis=0) for k, v in data.items()}, m
    cls = class_input(spec)
    if cls is None:
        if spec.model.conditioning:
            names = ", ".join(c.name for c in spec.model.conditioning)
            raise BadInputError(f"this model is conditioned on {names}: pass --conditioning FILE.npz with those arrays")
        return {}, 1
    classes = parse_classes(args.classes, cls.num_classes)
    return {cls.name: np.repeat(np.asarray(classes, dtype=np.int64), args.n)}, len(classes)


def _sample(args: argparse.Namespace) -> int:
    import numpy as np

    from dualrate.exporter.atomic import atomic_write_bytes, check_output
    from dualrate.exporter.errors import BadInputError
    from dualrate.exporter.sampling import sample, spec_noise
    from dualrate.validation.png import grid, to_uint8, write_png

    check_output(args.output, args.force)
    if args.n < 1:
        raise BadInputError(f"-n {args.n}: expected at least 1 sample per class")
    runner, spec, nulls, where = open_source(args)
    cond, rows = read_conditioning(args, spec)
    batch = len(next(iter(cond.values()))) if cond else args.n
    result = sample(runner, spec, cond, spec_noise(spec, batch, args.seed), nulls=nulls,
                    on_step=_progress(spec.sampler.num_steps))
    decoded = result.decoded is not None
    images = result.decoded if decoded else result.x
    data_range = spec.model.decoder.data_range if decoded else spec.model.data_range
    if args.output.suffix == ".npy":
        # raw float32 [N, C, H, W] in grid order (decoded where the model has a decoder), for anyone to score
        import io
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(images, np.float32), allow_pickle=False)
        atomic_write_bytes(args.output, buf.getvalue())
    else:
        size = images.shape[-1]
        scale = args.scale or max(1, -(-48 // size))
        write_png(args.output, grid(to_uint8(images[:, :3], data_range), rows=rows, scale=scale))
    print(f"wrote {args.output}: {rows} row(s) x {args.n} samples, {spec.sampler.num_steps} steps, "
          f"encoder ran at {len(result.refresh_log['cond'])} steps{', decoded' if decoded else ''}, on {where}")
    return 0


def _progress(total: int):
    """Step counter on stderr when it is a terminal (CI logs stay clean)."""
    if not sys.stderr.isatty():
        return None

    def show(i: int) -> None:
        print(f"\rsampling step {i + 1}/{total}", end="" if i + 1 < total else "\n", file=sys.stderr)
    return show
