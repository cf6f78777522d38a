"""``dualrate golden``: conformance vectors for native re-implementations of the sampler loop."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_golden_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("golden", help="write conformance vectors for native sampler runtimes",
                       description="Write DIR/README.md and, per spec variant (ancestral K=4, DDIM eta=0, guidance "
                                   "with a log-SNR interval, guidance with clipping), DIR/<variant>/spec.json and "
                                   "vectors.npz: Philox draws, z after every step and the refresh audit of the "
                                   "reference loop run on analytic mock networks. The variants keep BUNDLE's "
                                   "sample shape, classes and prediction type; the graphs are not used.")
    p.add_argument("bundle", type=Path, metavar="BUNDLE", help="bundle directory (verified), or a spec.json")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="directory to create")
    p.add_argument("--seed", type=int, default=None,
                   help="Philox seed in [0, 2^64) (default 0x000ABCDE12345678: both key words non-zero)")
    p.add_argument("--force", action="store_true", help="replace an existing output directory")
    p.set_defaults(handler=_golden)


def _golden(args: argparse.Namespace) -> int:
    from dualrate.exporter.atomic import check_output
    from dualrate.exporter.bundle import open_bundle
    from dualrate.exporter.conformance import DEFAULT_SEED, write_conformance
    from dualrate.exporter.errors import BadInputError
    from dualrate.exporter.spec import Spec

    check_output(args.output, args.force)     # refuse before any work
    seed = DEFAULT_SEED if args.seed is None else args.seed
    if not 0 <= seed < 2 ** 64:
        raise BadInputError(f"--seed {seed}: expected an integer in [0, 2^64)")
    source = Spec.load(args.bundle)[0] if args.bundle.is_file() else open_bundle(args.bundle)
    start = time.perf_counter()
    written = write_conformance(source, args.output, seed=seed, force=args.force)
    for v in written:
        s = v.spec.sampler
        guided = f", guided steps {v.guided_steps[0]}..{v.guided_steps[-1]}" if v.guided_steps else ""
        print(f"  {v.name:16s} {s.type} eta={s.eta:g}, {s.num_steps} steps, encoder cond {v.refresh['cond']}"
              + (f", uncond {v.refresh['uncond']}" if v.refresh["uncond"] else "") + guided
              + f" -> {v.path}/spec.json, vectors.npz")
    print(f"wrote {args.output} ({len(written)} variants, seed {seed}, README.md) in "
          f"{time.perf_counter() - start:.1f} s")
    return 0
