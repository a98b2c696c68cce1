"""`t2i-rlhf reward train|eval`: train a reward model on labelled samples, or measure one."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from t2i_rlhf.training.reward.config import RewardTrainingConfig

# Config fields exposed as flags (the rest keep their defaults).
_FLAGS = ("backbone", "hidden", "features", "dropout", "lambda_aux", "temperature", "n_prompts", "perturbation",
          "margin_prompts", "label_folds", "epochs", "lr", "weight_decay", "batch_size", "heldout",
          "heldout_fraction", "seed", "device", "embedding_cache", "threads")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("reward", help="train or evaluate the reward model r(x, z)")
    cmds = p.add_subparsers(dest="reward_command", required=True)

    t = cmds.add_parser("train", help="train on labelled samples (Parquet) and write a checkpoint")
    t.add_argument("--data", type=Path, nargs="+", required=True, help="Parquet files or directories")
    t.add_argument("--out", type=Path, required=True, help="checkpoint directory to write")
    t.add_argument("--version", default=None, help="reward-model version (default: the --out name)")
    t.add_argument("--metrics", type=Path, default=None, help="also write the metrics JSON here")
    fields = RewardTrainingConfig.model_fields
    for name in _FLAGS:
        f = fields[name]
        kind = type(f.default) if f.default is not None and not isinstance(f.default, str) else str
        kind = int if name == "threads" else kind
        t.add_argument("--" + name.replace("_", "-"), type=kind, default=f.default)
    t.add_argument("--prompt-margin", action=argparse.BooleanOptionalAction,
                   default=fields["prompt_margin"].default,
                   help="input the backbone's zero-shot margin of the prompt over its perturbations")
    views = fields["views"].default
    t.add_argument("--view-flip", action=argparse.BooleanOptionalAction, default=views.flip,
                   help="average in the mirror image (off when prompts name left or right)")
    t.add_argument("--view-shift", type=float, default=views.shift,
                   help="average in shifts by this fraction of the side (0: none)")
    t.set_defaults(func=run_train)

    e = cmds.add_parser("eval", help="score labelled samples with a checkpoint: MSE, accuracy, AUC")
    e.add_argument("--model", type=Path, required=True, help="reward-model checkpoint directory")
    e.add_argument("--data", type=Path, nargs="+", required=True, help="Parquet files or directories")
    e.add_argument("--backbone", default=None, help="override the checkpoint's backbone path")
    e.set_defaults(func=run_eval)


def run_train(args: argparse.Namespace) -> int:
    from t2i_rlhf.training.reward.train import train_reward_model

    cfg = RewardTrainingConfig(**{name: getattr(args, name) for name in (*_FLAGS, "prompt_margin")},
                               views={"flip": args.view_flip, "shift": args.view_shift})
    metrics = train_reward_model(args.data, cfg, args.out, args.version or args.out.name)
    text = json.dumps(metrics, indent=2, default=float)
    if args.metrics:
        args.metrics.parent.mkdir(parents=True, exist_ok=True)
        args.metrics.write_text(text)
    print(text)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from t2i_rlhf.training.reward.model import load_reward_model
    from t2i_rlhf.training.reward.train import evaluate_reward_model

    model = load_reward_model(args.model, backbone=args.backbone)
    print(json.dumps(evaluate_reward_model(model, args.data), indent=2, default=float))
    return 0
