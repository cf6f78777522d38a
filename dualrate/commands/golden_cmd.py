"""``dualrate golden``: conformance vectors for native re-implementations of the sampler loop."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_golden_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("golden", help="write conformance vectors for native sampler runtimes",
                       description="Write DIR/README.md and, per spec variant (ancestral K=4, DDIM eta=0, guidance "
                                   "with a log-SNR interval, guidance with clipping, diffusers timesteps, text-like "
                                   "conditioning with stored nulls, a latent with a decoder), DIR/<variant>/spec.json, "
                                   "vectors.npz, the same tensors as little-endian .bin files indexed by "
                                   "vectors.json, and any stored null tensors: Philox draws, z after every step and "
                                   "the refresh audit of the reference loop run on analytic mock networks that read "
                                   "their inputs by role. The variants keep BUNDLE's prediction type and sample "
                                   "shape (and its class input, where it has one); the graphs are not used.")
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle directory (verified), or a spec.json")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="directory to create")
    p.add_argument("--seed", type=int, default=None,
                   help="Philox seed in [0, 2^64) (default 0x000ABCDE12345678: both key words non-zero)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.set_defaults(handler=_golden)


def _golden(args: argparse.Namespace) -> int:
    from dualrate.exporter.atomic import check_output
    from dualrate.exporter.errors import BadInputError

    # refuse before any work, and before the heavy imports (the conformance module pulls in torch)
    check_output(args.output, args.force)
    if args.seed is not None and not 0 <= args.seed < 2 ** 64:
        raise BadInputError(f"--seed {args.seed}: expected an integer in [0, 2^64)")
    from dualrate.exporter.bundle import open_bundle
    from dualrate.exporter.conformance import DEFAULT_SEED, write_conformance
    from dualrate.exporter.spec import Spec

    seed = DEFAULT_SEED if args.seed is None else args.seed
    source = Spec.load(args.bundle)[0] if args.bundle.is_file() else open_bundle(args.bundle)
    start = time.perf_counter()
    written = write_conformance(source, args.output, seed=seed, force=args.force)
    for v in written:
        print(f"  {v.name:18s} {_summary(v)} -> {v.path}/")
    print(f"wrote {args.output} ({len(written)} variants, seed {seed}, README.md) in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


def _summary(v) -> str:
    """One line per variant: sampler, what the networks take, the refresh audit, guidance, decoder."""
    from dualrate.exporter.spec import roles

    s, m = v.spec.sampler, v.spec.model
    time_in = roles(m.denoiser).get("time")
    parts = [f"{s.type} eta={s.eta:g}, {s.num_steps} steps, time {time_in.dtype if time_in else 'none'} "
             f"({m.time_input})"]
    for c in m.conditioning:
        parts.append(f"{c.name} null {c.null_file if c.null_kind == 'file' else f'{c.null_value:g}'}")
    parts.append(f"encoder cond {v.refresh['cond']}" + (f", uncond {v.refresh['uncond']}" if v.refresh["uncond"] else ""))
    if v.guided_steps:
        parts.append(f"guided steps {v.guided_steps[0]}..{v.guided_steps[-1]}")
    if m.decoder is not None:
        parts.append(f"decoded {list(m.decoder.output_shape)}")
    return ", ".join(parts)
