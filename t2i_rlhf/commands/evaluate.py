"""`t2i-rlhf eval`: the per-category alignment table, fidelity, and a sample grid."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MODEL = Path("models/shapes-sd")
DEFAULT_CLIP = Path("models/shapes-clip")


def add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clip", type=Path, default=DEFAULT_CLIP, help="shapes-CLIP dir for the fidelity figure")
    p.add_argument("--per-category", type=int, default=96, help="images per category (>= 96 to see a change)")
    p.add_argument("--split", default="heldout", choices=["heldout", "train", "all"])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance (1 = none: as the shapes rollouts sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=Path("runs/eval"))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="judge a model's images per category; fidelity; sample grid")
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                   help="diffusers pipeline directory, or a model version the loop wrote (runs/<name>/models/rNNNN)")
    add_eval_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from t2i_rlhf.evaluation import evaluate_model

    if args.per_category < 1:
        raise ValueError("--per-category must be >= 1")
    result = evaluate_model(args.model, args.clip, args.out, args.per_category, args.split, args.steps,
                            args.guidance, args.seed, args.batch, args.threads)
    print(result.table())
    print(f"grid: {args.out / 'grid.png'}  result: {args.out / 'eval.json'}")
    return 0
