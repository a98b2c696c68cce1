"""`t2i-rlhf pretrain`: rebuild the shipped base models from scratch (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

from t2i_rlhf.models.pretrain import STAGES, PretrainConfig, pretrain


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train the tiny SD pipeline and shapes-CLIP (resumable)")
    d = PretrainConfig()
    p.add_argument("--out", type=Path, default=d.out, help="where models/shapes-sd and shapes-clip go")
    p.add_argument("--work", type=Path, default=d.work, help="checkpoints; re-run to resume")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of vae,clip,unet")
    for name in ("vae_steps", "clip_steps", "unet_steps", "unet_examples", "batch", "seed", "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    cfg = PretrainConfig(
        out=args.out, work=args.work, vae_steps=args.vae_steps, clip_steps=args.clip_steps,
        unet_steps=args.unet_steps, unet_examples=args.unet_examples, batch=args.batch,
        seed=args.seed, threads=args.threads,
    )
    pretrain(cfg, stages)
    return 0
