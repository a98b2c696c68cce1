"""`t2i-rlhf run --config configs/<name>.yaml`: the online RLHF experiment (what `ray job submit`
runs). The driver itself lives in t2i_rlhf/run.py and is imported only when the command runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run an online RLHF experiment (what `ray job submit` runs)")
    p.add_argument("--config", type=Path, required=True, help="experiment YAML (configs/*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set run.rounds=2 (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from t2i_rlhf.config import load_config
    from t2i_rlhf.run import parse_overrides, run_experiment

    run_experiment(load_config(args.config, parse_overrides(args.set)))
    return 0
