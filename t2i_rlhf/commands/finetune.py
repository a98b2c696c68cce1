"""`t2i-rlhf finetune`: one round of reward-weighted fine-tuning on given Parquet inputs.

Re-running the same command (same --storage-path and --version) resumes the round from its last
checkpoint instead of starting over.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from t2i_rlhf.training.finetune.config import FinetuneConfig

# flag -> FinetuneConfig field, for the settings most often changed from the command line
OVERRIDES = {
    "beta": float, "reward_source": str, "num_workers": int, "threads_per_worker": int,
    "batch_size": int, "grad_accum": int, "epochs": float, "max_steps": int, "lr": float,
    "lora_rank": int, "seed": int, "mixed_precision": str,
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune the diffusion model on one round's scored samples")
    p.add_argument("--samples", type=Path, nargs="+", required=True,
                   help="Parquet file(s) or directories of scored samples (SAMPLE_SCHEMA)")
    p.add_argument("--pretrain-data", type=Path, nargs="+",
                   help="Parquet of the pre-training set (write_pretrain_parquet); needed when beta > 0")
    p.add_argument("--base", type=Path, required=True, help="pipeline directory or parent version directory")
    p.add_argument("--out", type=Path, required=True, help="the new model version directory")
    p.add_argument("--round", type=int, required=True)
    p.add_argument("--version", help="version name (default r<round>, zero-padded)")
    p.add_argument("--storage-path", type=Path, default=Path("runs/finetune"),
                   help="Ray Train storage (checkpoints); the same path and version resume a round")
    p.add_argument("--config", type=Path, help="YAML of FinetuneConfig fields (or a `finetune:` section)")
    p.add_argument("--lora", action=argparse.BooleanOptionalAction, default=None,
                   help="train a LoRA adapter instead of the full UNet")
    p.add_argument("--use-gpu", action=argparse.BooleanOptionalAction, default=None)
    for name, kind in OVERRIDES.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> FinetuneConfig:
    """The YAML config (if any) with command-line flags on top; flags not given keep its values."""
    overrides = {name: getattr(args, name) for name in [*OVERRIDES, "lora", "use_gpu"]}
    if args.config:
        return FinetuneConfig.from_yaml(args.config, **overrides)
    return FinetuneConfig(**{k: v for k, v in overrides.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from t2i_rlhf.training.finetune.trainer import finetune_round

    manifest = finetune_round(
        config_from_args(args), samples=args.samples, pretrain_data=args.pretrain_data, base=args.base,
        out_dir=args.out, round=args.round, version=args.version, storage_path=args.storage_path,
    )
    print(json.dumps(asdict(manifest), indent=2, sort_keys=True))
    return 0
