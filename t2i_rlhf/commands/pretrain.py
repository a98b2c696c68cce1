"""`t2i-rlhf pretrain`: rebuild the shipped base models from scratch (resumable)."""

from __future__ import annotations

import argparse
from pathlib import Path

STAGES = ("vae", "clip", "unet")
NUMBERS = ("vae_steps", "clip_steps", "clip_batch", "clip_negative_steps", "unet_steps", "unet_vsnr_steps",
           "unet_examples", "batch", "seed", "threads")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pretrain", help="pre-train the tiny SD pipeline and shapes-CLIP (resumable)",
                       description="Defaults are those of t2i_rlhf.models.pretrain.PretrainConfig.")
    p.add_argument("--out", type=Path, default=None, help="where shapes-sd and shapes-clip go (models/)")
    p.add_argument("--work", type=Path, default=None, help="checkpoints (runs/pretrain); re-run to resume")
    p.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of vae,clip,unet")
    for name in NUMBERS:
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    p.add_argument("--unet-count-wrong-p", type=float, default=None,
                   help="how often a UNet caption's count word is wrong (0.5)")
    p.add_argument("--unet-count-p", type=float, default=None,
                   help="how often a UNet caption names the count at all (0.45)")
    p.add_argument("--unet-layout", choices=("slots", "scatter"), default=None,
                   help="how the UNet's images place their objects (slots; shapes/render.py)")
    p.add_argument("--unet-init", type=Path, default=None,
                   help="warm-start the UNet stage from this pipeline directory's UNet and VAE")
    p.add_argument("--unet-bf16", action="store_true", default=None,
                   help="bf16 autocast in the UNet stage (1.4x faster on CPUs with AVX512-BF16)")
    p.add_argument("--snapshot", type=Path, default=None, metavar="DIR",
                   help="train nothing: write the UNet stage's latest EMA weights (fp16) as a pipeline at DIR, "
                        "to probe it or to commit so that --unet-init DIR continues on another machine")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from t2i_rlhf.models.pretrain import PretrainConfig, pretrain, snapshot_unet

    stages = tuple(s.strip() for s in args.stages.split(",") if s.strip())
    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    names = ("out", "work", "unet_count_wrong_p", "unet_count_p", "unet_layout", "unet_init", "unet_bf16", *NUMBERS)
    given = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    if args.snapshot is not None:
        snapshot_unet(PretrainConfig(**given), args.snapshot)
        return 0
    pretrain(PretrainConfig(**given), stages)
    return 0
