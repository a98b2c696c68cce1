"""`t2i-rlhf demo`: what `make demo` runs on the embedded default (the shapes world)."""

from __future__ import annotations

import argparse
from pathlib import Path

from t2i_rlhf.commands.evaluate import DEFAULT_CLIP, DEFAULT_MODEL
from t2i_rlhf.evaluation import evaluate_model


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the main job on the embedded shapes world")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--per-category", type=int, default=96)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    print(f"Base model {DEFAULT_MODEL}: judged alignment on held-out prompts, per category")
    result = evaluate_model(DEFAULT_MODEL, DEFAULT_CLIP, args.out / "base", per_category=args.per_category)
    print(result.table())
    print(f"sample grid: {args.out / 'base' / 'grid.png'}")
    return 0
