"""``dualrate report merge``: one parity matrix from the reports of several validate runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_report_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="work with validate reports (merge them into one parity matrix)",
                       description="Work with the JSON reports of dualrate validate.")
    verbs = p.add_subparsers(dest="report_command", metavar="VERB")
    m = verbs.add_parser("merge", help="merge reports of one bundle into a parity matrix (HTML, JSON, JUnit)",
                         description="Merge validate reports (--json) of one bundle, made on any machines, into one "
                                     "parity matrix: targets x precisions x layers, the worst metric per cell, "
                                     "machine, runtime version and verdict. Writes DIR/matrix.html, matrix.json and "
                                     "matrix.junit.xml. Reports of different bundles are refused (exit 2, nothing "
                                     "written). Exit 0 all PASSED, 1 any FAILED, 3 any NOT RUN (none failed).")
    m.add_argument("reports", nargs="+", type=Path, metavar="REPORT.json")
    m.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    m.set_defaults(handler=_merge)
    p.set_defaults(handler=lambda args: (p.print_help(), 2)[1])


def _merge(args: argparse.Namespace) -> int:
    from dualrate.validation.merge import merge, summary

    matrix = merge(args.reports, args.output)
    print(f"matrix: {args.output / 'matrix.html'}", file=sys.stderr)
    print(summary(matrix))
    return int(matrix["exit_code"])
