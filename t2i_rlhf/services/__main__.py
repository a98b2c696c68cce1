"""`python -m t2i_rlhf.services feedback serve ...` / `... label simulate ...`: the same commands as
`t2i-rlhf`, without importing the training stack (torch) first — starts in about a second, which
matters for restarts in the durability test and benchmark."""

from __future__ import annotations

import argparse
import logging
import sys

from t2i_rlhf.commands import feedback


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m t2i_rlhf.services")
    feedback.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
