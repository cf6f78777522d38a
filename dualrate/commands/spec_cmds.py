"""``dualrate spec``: import a diffusers scheduler config, check a spec file."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_spec_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spec", help="work with portable sampler specs")
    ss = p.add_subparsers(dest="spec_command", metavar="ACTION", required=True)
    d = ss.add_parser("from-diffusers", help="import a diffusers DDPM/DDIM scheduler_config.json",
                      description="Import a diffusers DDPMScheduler/DDIMScheduler config into a spec.json; "
                                  "prints what cannot be represented.")
    d.add_argument("config", type=Path, help="scheduler_config.json")
    d.add_argument("--steps", type=int, required=True, help="number of inference steps N")
    d.add_argument("--eta", type=float, default=None, help="DDIM eta (default 0)")
    d.add_argument("--image-size", type=int, default=64)
    d.add_argument("--channels", type=int, default=4)
    d.add_argument("--refresh-every", type=int, default=1, metavar="K")
    d.add_argument("-o", "--output", type=Path, required=True)
    d.add_argument("--force", action="store_true")
    d.set_defaults(handler=_from_diffusers)

    c = ss.add_parser("check", help="validate a spec.json and print a summary")
    c.add_argument("spec", type=Path)
    c.add_argument("--strict", action="store_true", help="unknown fields are errors")
    c.set_defaults(handler=_check)


def _from_diffusers(args: argparse.Namespace) -> int:
    from dualrate.exporter.atomic import check_output
    from dualrate.exporter.diffusers_spec import spec_from_diffusers

    check_output(args.output, args.force)
    spec, notes = spec_from_diffusers(args.config, args.steps, eta=args.eta, image_size=args.image_size,
                                      channels=args.channels, refresh_every=args.refresh_every)
    spec.save(args.output)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {args.output}: {spec.sampler.type} (eta {spec.sampler.eta}), {spec.sampler.num_steps} steps, "
          f"prediction {spec.model.prediction}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from dualrate.exporter.spec import Spec

    spec, warns = Spec.load(args.spec, strict=args.strict)
    for w in warns:
        print(f"warning: {w}", file=sys.stderr)
    s = spec.sampler
    print(f"{args.spec}: valid spec {spec.spec_version}; {s.type} eta={s.eta}, {s.num_steps} steps, "
          f"{len(spec.dual_rate.resolved_refresh_steps)} refreshes {list(spec.dual_rate.resolved_refresh_steps)}, "
          f"guidance {spec.guidance.scale}")
    return 0
