"""`t2i-rlhf config reference`: write docs/configuration.md, every experiment-config key with its
type, default and meaning, from the config models (`--check`: only say whether it is up to date)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="the experiment config: its reference documentation")
    cmds = p.add_subparsers(dest="config_command", required=True)

    r = cmds.add_parser("reference", help="write the config reference (every key: type, default, meaning)")
    r.add_argument("--out", type=Path, default=Path("docs/configuration.md"),
                   help="Markdown file to write (default: docs/configuration.md)")
    r.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if --out differs from what would be written")
    r.set_defaults(func=run_reference)


def run_reference(args: argparse.Namespace) -> int:
    from t2i_rlhf.config_reference import check_reference, write_reference

    if args.check:
        problem = check_reference(args.out)
        if problem:
            print(f"t2i-rlhf config reference: {problem}", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    print(f"wrote {write_reference(args.out)}")
    return 0
