"""Probe what one fine-tuning run does to the base model, in one process and in minutes.

It runs the real optimizer step (`Finetuner`, as the Ray Train workers do) on a SAMPLE_SCHEMA
Parquet of model samples (or renders, `bench_finetune_alignment.py --train-data renders`), half
of each batch pre-training latents when beta > 0, and reports at intervals:

- the denoising loss on renders of held-out prompts with their exact prompts, at four fixed
  timesteps and with fixed noise: the raw weights and, with --ema, their average;
- at the end, the judged alignment of the (averaged) model on --split prompts (and held-out ones)
  and its diffusion-classifier count accuracy: for renders of every count prompt, which count word
  gives the lowest denoising loss. It is what the conditional model knows about counts,
  whatever the sampler makes of it.

Example (2 cores: ~0.45 s a step):
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/probe_finetune.py \
        --samples runs/bench-ft-renders/renders.parquet --steps 128 --every 32 --lr 2e-5 --ema 0.98
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline

from t2i_rlhf.diffusion.latents import encode_images
from t2i_rlhf.evaluation import eval_prompts, generate, judge_table
from t2i_rlhf.samples import parquet_files
from t2i_rlhf.shapes import sample_prompts
from t2i_rlhf.shapes.prompts import category_prompts, format_caption, is_heldout
from t2i_rlhf.shapes.render import render
from t2i_rlhf.training.finetune.config import FinetuneConfig
from t2i_rlhf.training.finetune.loss import denoising_errors
from t2i_rlhf.training.finetune.model import StartingPoint
from t2i_rlhf.training.finetune.worker import Finetuner

TIMESTEPS = (50, 200, 450, 800)


@torch.no_grad()
def render_loss(tuner: Finetuner, x0: torch.Tensor, emb: torch.Tensor, noise: torch.Tensor) -> list[float]:
    """Mean denoising error (ε or v, as the model predicts) over the renders at each of TIMESTEPS."""
    tuner.unet.eval()
    out = [float(errors_at(tuner, x0, emb, noise[i], t).mean()) for i, t in enumerate(TIMESTEPS)]
    tuner.unet.train()
    return out


def errors_at(tuner: Finetuner, x0: torch.Tensor, emb: torch.Tensor, noise: torch.Tensor, t: int) -> torch.Tensor:
    """Per-example denoising error at one timestep: the training loss's own function."""
    return denoising_errors(tuner.unet, tuner.scheduler, x0, emb, noise, torch.full((len(x0),), t))


@torch.no_grad()
def count_classifier(tuner: Finetuner, vae, per_prompt: int = 32) -> dict[str, float]:
    """Diffusion-classifier accuracy on counts: argmin over count words of the summed loss."""
    prompts = [p for p in category_prompts("count", "all") for _ in range(per_prompt)]
    x0 = encode_images(vae, np.stack([render(p, 500 + i) for i, p in enumerate(prompts)]))
    noise = torch.randn((len(TIMESTEPS), *x0.shape), generator=torch.Generator().manual_seed(1))
    losses = np.zeros((len(prompts), 4))
    tuner.unet.eval()
    for j, n in enumerate(range(1, 5)):
        emb = tuner.encode_text([format_caption(p.shape, n, True, None, None) for p in prompts])
        for i, t in enumerate(TIMESTEPS):
            losses[:, j] += errors_at(tuner, x0, emb, noise[i], t).numpy()
    right = losses.argmin(1) + 1 == np.array([p.count for p in prompts])
    held = np.array([is_heldout(p) for p in prompts])
    return {"all": right.mean(), "train": right[~held].mean(), "heldout": right[held].mean()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/shapes-sd"))
    ap.add_argument("--samples", type=Path, required=True, help="SAMPLE_SCHEMA Parquet (r in `reward`)")
    ap.add_argument("--pretrain-latents", type=Path, default=Path("runs/bench-finetune-alignment/cache"),
                    help="the fine-tuning latent cache of the pre-training set (directory of Parquet)")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--every", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--beta", type=float, default=1.0)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--ema", type=float, default=0.0, help="fixed EMA decay (0: off)")
    ap.add_argument("--judge", type=int, default=64, help="judged images per category at the end (0: none)")
    ap.add_argument("--split", choices=["heldout", "train"], default="heldout")
    ap.add_argument("--eval-guidance", type=float, nargs="+", default=[1.0],
                    help="classifier-free guidance scales to judge at")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = FinetuneConfig(lr=args.lr, beta=args.beta, batch_size=args.batch_size, grad_accum=args.grad_accum,
                         ema_decay=args.ema)
    tuner = Finetuner(cfg, StartingPoint(pipeline_dir=str(args.model)), torch.device("cpu"))
    vae = AutoencoderKL.from_pretrained(args.model / "vae").eval()
    samples = pq.read_table(args.samples, columns=["latents", "latent_shape", "prompt", "reward"]).to_pandas()
    pretrain = None
    if cfg.uses_pretrain:
        pretrain = pq.read_table(parquet_files(args.pretrain_latents)[0]).to_pandas()

    prompts = sample_prompts(256, split="heldout", seed=5)
    x0 = encode_images(vae, np.stack([render(p, 10_000 + i) for i, p in enumerate(prompts)]))
    emb = tuner.encode_text([p.text for p in prompts])
    noise = torch.randn((len(TIMESTEPS), *x0.shape), generator=torch.Generator().manual_seed(0))

    def show(values: list[float]) -> str:
        return " ".join(f"{v:.4f}" for v in values) + f" (sum {sum(values):.4f})"

    print(f"held-out render loss at t={TIMESTEPS}: base {show(render_loss(tuner, x0, emb, noise))}", flush=True)
    rng = np.random.default_rng(0)

    def draw(frame, n: int, text: str) -> dict:
        rows = frame.iloc[rng.integers(0, len(frame), n)]
        batch = {"latents": list(rows["latents"]), "latent_shape": list(rows["latent_shape"]),
                 text: list(rows[text])}
        if "reward" in rows:
            batch["reward"] = rows["reward"].to_numpy()
        return batch

    t0 = time.perf_counter()
    for step in range(args.steps):
        batches = [(draw(samples, cfg.model_batch, "prompt"),
                    draw(pretrain, cfg.pretrain_batch, "caption") if pretrain is not None else None)
                   for _ in range(cfg.grad_accum)]
        tuner.step(step, batches, rank=0)
        if (step + 1) % args.every == 0:
            line = f"step {step + 1}: raw {show(render_loss(tuner, x0, emb, noise))}"
            if tuner.ema is not None:
                tuner.ema.store(tuner.params)
                tuner.ema.copy_to(tuner.params)
                line += f" | ema {show(render_loss(tuner, x0, emb, noise))}"
                tuner.ema.restore(tuner.params)
            print(f"{line}  [{time.perf_counter() - t0:.0f} s]", flush=True)

    if tuner.ema is not None:
        tuner.ema.copy_to(tuner.params)
    print("diffusion-classifier count accuracy:", {k: round(v, 3) for k, v in count_classifier(tuner, vae).items()})
    if args.judge:
        pipe = StableDiffusionPipeline.from_pretrained(args.model, unet=tuner.unet.eval(), local_files_only=True)
        pipe.set_progress_bar_config(disable=True)
        for split in dict.fromkeys([args.split, "heldout"]):
            items = eval_prompts(args.judge, split=split)
            for guidance in args.eval_guidance:
                images = generate(pipe, items, guidance=guidance, progress=False)
                table = judge_table("probe", [p for p, _ in items], images).table()
                print(f"--- {split} prompts, guidance {guidance:g}\n{table}", flush=True)


if __name__ == "__main__":
    main()
