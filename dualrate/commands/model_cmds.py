"""``dualrate init`` (random checkpoint of any size) and ``dualrate train`` (digits data)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_model_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("init", help="write a randomly initialised checkpoint of a named size",
                       description="Write a randomly initialised DR-UViT checkpoint (config.json + model.safetensors).")
    p.add_argument("--config", required=True, metavar="SIZE", help="tiny, digits, small-32 or small-64")
    p.add_argument("-o", "--output", required=True, type=Path, help="checkpoint directory to create")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="replace an existing output")
    p.set_defaults(handler=_init)

    t = sub.add_parser("train", help="train a 1-channel size on the bundled scikit-learn digits",
                       description="Train a dual-rate pair on scikit-learn's 8x8 digits (upsampled); "
                                   "this is how the shipped default checkpoint was made.")
    t.add_argument("--config", default="digits", metavar="SIZE")
    t.add_argument("-o", "--output", required=True, type=Path)
    t.add_argument("--steps", type=int, default=100000)
    t.add_argument("--minutes", type=float, default=28.0, help="wall-clock limit (0 = none)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--lr", type=float, default=6e-4)
    t.add_argument("--ema-decay", type=float, default=0.998)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    t.add_argument("--force", action="store_true")
    t.set_defaults(handler=_train)


def _init(args: argparse.Namespace) -> int:
    from dualrate.exporter.optional import require

    require("torch", "dualrate init (building PyTorch modules)")
    import torch

    from dualrate.exporter.atomic import check_output
    from dualrate.exporter.checkpoint import make_config, save_checkpoint
    from dualrate.exporter.model_config import preset
    from dualrate.exporter.model_pair import build_pair

    check_output(args.output, args.force)
    torch.manual_seed(args.seed)
    model = {"family": "dr-uvit", **preset(args.config).to_dict()}
    pair = build_pair(model)
    save_checkpoint(pair, make_config(model, {"init": "random", "seed": args.seed}), args.output, force=args.force)
    n_enc = sum(p.numel() for p in pair.encoder.parameters())
    n_den = sum(p.numel() for p in pair.denoiser.parameters())
    print(f"wrote {args.output} ({args.config}: encoder {n_enc / 1e6:.2f}M, denoiser {n_den / 1e6:.2f}M parameters)")
    return 0


def _train(args: argparse.Namespace) -> int:
    from dualrate.exporter.optional import require

    require("torch", "dualrate train")
    import torch

    from dualrate.exporter.atomic import check_output
    from dualrate.exporter.training import TrainConfig, train_checkpoint

    check_output(args.output, args.force)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, ema_decay=args.ema_decay,
                      max_minutes=args.minutes, seed=args.seed)
    from dualrate.exporter.progress import console, note_to

    show = console()
    _, summary = train_checkpoint(args.config, args.output, cfg, force=args.force, log=note_to(show), progress=show)
    print(f"wrote {args.output}: {summary['steps_done']} steps in {summary['minutes']} min, "
          f"final loss {summary['final_loss']:.4f}")
    return 0
