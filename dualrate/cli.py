"""The ``dualrate`` command: argument parsing, dispatch, exit codes, one clear error line.

Exit codes: 0 success/pass, 1 parity failure, 2 bad input or usage, 3 backend
unavailable. User errors (``DualrateError``) print one message and no traceback;
anything else is a bug and keeps its traceback. Heavy imports happen inside the
commands so ``dualrate --help`` needs only the core install.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from . import __version__
from .commands import (add_bench_command, add_doctor_command, add_export_commands, add_golden_command,
                       add_model_commands, add_report_command, add_sample_command, add_serve_command,
                       add_spec_commands, add_tune_command, add_validate_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dualrate",
        description="Export, compile and validate Dual-Rate Diffusion models.",
        epilog="exit codes: 0 ok, 1 parity failure, 2 bad input, 3 backend unavailable here")
    parser.add_argument("--version", action="version", version=f"dualrate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_model_commands(sub)
    add_export_commands(sub)
    add_spec_commands(sub)
    add_sample_command(sub)
    add_validate_command(sub)
    add_report_command(sub)
    add_golden_command(sub)
    add_doctor_command(sub)
    add_bench_command(sub)
    add_serve_command(sub)
    add_tune_command(sub)
    return parser


def quiet_openmp() -> None:
    """Let PyTorch's OpenMP threads sleep at a barrier instead of spinning (unless the environment
    already chooses): on a busy or shared machine (CI), a spinning thread starves the one it waits
    for. Read once, when PyTorch loads, so it is set before any command imports it. Measured on the
    reference trajectories of small-32 (2 cores, load average 10): 268 s spinning, 45 s sleeping,
    the same bytes (docs/benchmarks.md)."""
    import os

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: Sequence[str] | None = None) -> int:
    quiet_openmp()
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    from dualrate.exporter.errors import DualrateError

    try:
        return int(handler(args) or 0)
    except DualrateError as exc:
        print(f"dualrate {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"dualrate {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
