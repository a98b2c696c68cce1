"""The `t2i-rlhf` console script."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from t2i_rlhf import logs

# One module per command group under t2i_rlhf/commands/.
COMMAND_MODULES = [
    "t2i_rlhf.commands.pretrain",
    "t2i_rlhf.commands.finetune",
    "t2i_rlhf.commands.reward",
    "t2i_rlhf.commands.feedback",
    "t2i_rlhf.commands.evaluate",
    "t2i_rlhf.commands.run",
    "t2i_rlhf.commands.generate",
    "t2i_rlhf.commands.config",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t2i-rlhf", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, with every library's own log lines and warnings")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # models load from local directories only
    args = build_parser().parse_args(argv)
    logs.configure(verbose=args.verbose)  # before any command imports transformers, diffusers or Ray
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:  # user errors: a message, not a traceback
        print(f"t2i-rlhf {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
