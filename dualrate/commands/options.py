"""Shared CLI options: sampler flags map 1:1 onto ``SamplerOptions``."""

from __future__ import annotations

import argparse


def add_sampler_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampler")
    g.add_argument("--steps", type=int, default=None, help="sampling steps N (default 32)")
    r = g.add_mutually_exclusive_group()
    r.add_argument("--refresh-every", type=int, metavar="K", help="run the encoder every K steps (default 4)")
    r.add_argument("--refresh-steps", metavar="0,4,..", help="explicit comma-separated refresh steps (must include 0)")
    r.add_argument("--refresh-calibrated", type=float, metavar="T",
                   help="refresh when the encoder's features have drifted by more than T (relative L2), measured "
                        "on the model over a 4-sample calibration run")
    g.add_argument("--sampler", choices=("ancestral", "ddim"), default=None, help="default ancestral")
    g.add_argument("--eta", type=float, default=None, help="DDIM eta in [0, 1] (ddim only; default 0)")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale w (default 1 = off)")
    g.add_argument("--guidance-interval", metavar="LO,HI", help="apply guidance only where LO <= logsnr <= HI")
    g.add_argument("--clip-x0", type=float, default=None, help="clip x0 estimates to [-C, C]")


SAMPLER_FLAGS = ("steps", "refresh_every", "refresh_steps", "refresh_calibrated", "sampler", "eta", "guidance", "guidance_interval", "clip_x0")


def given_sampler_flags(args: argparse.Namespace) -> list[str]:
    """The sampler flags the user actually passed."""
    return ["--" + f.replace("_", "-") for f in SAMPLER_FLAGS if getattr(args, f, None) is not None]


def sampler_options(args: argparse.Namespace):
    """Turn parsed flags into ``SamplerOptions``; bad values are BadInputError."""
    from dualrate.exporter.errors import BadInputError
    from dualrate.exporter.spec_builder import SamplerOptions

    if args.refresh_steps:
        try:
            steps = [int(s) for s in args.refresh_steps.split(",") if s.strip()]
        except ValueError:
            raise BadInputError(f"--refresh-steps {args.refresh_steps!r}: expected comma-separated integers") from None
        refresh, params = "explicit", {"steps": steps}
    elif args.refresh_calibrated is not None:
        refresh, params = "calibrated", {"threshold": args.refresh_calibrated}
    else:
        refresh, params = "every_k", {"k": args.refresh_every or 4, "phase": 0}
    interval = None
    if args.guidance_interval:
        try:
            lo, hi = (float(x) for x in args.guidance_interval.split(","))
        except ValueError:
            raise BadInputError(f"--guidance-interval {args.guidance_interval!r}: expected LO,HI") from None
        interval = (lo, hi)
    sampler = args.sampler or "ancestral"
    eta = args.eta if args.eta is not None else (1.0 if sampler == "ancestral" else 0.0)
    return SamplerOptions(num_steps=32 if args.steps is None else args.steps, sampler=sampler, eta=eta,
                          refresh=refresh, refresh_params=params,
                          guidance=1.0 if args.guidance is None else args.guidance,
                          guidance_interval=interval, clip_x0=args.clip_x0)
