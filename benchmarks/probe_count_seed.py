"""Does a model's drawn count follow the prompt's count word, or the initial noise?

Each of the 12 count prompts ("one circle" ... "four triangles") is sampled with the same seeds,
unguided, as the loop samples. The judge counts the objects in every image. The variance of
the drawn count is then split the way a two-way analysis of variance splits it: the share
explained by the prompt (its row means) and the share explained by the seed (its column means).

A model that reads the count word has a large prompt share and a small seed share. A model
whose layout comes from the noise has the reverse. This is what limits the ceiling: fine-tuning
cannot fix a count that the text hardly touches (docs/experiments.md, 2026-12-02).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/probe_count_seed.py models/shapes-sd --seeds 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from t2i_rlhf.diffusion.latents import decode_latents
from t2i_rlhf.shapes.judge import judge
from t2i_rlhf.shapes.prompts import category_prompts


def drawn_counts(model: Path, seeds: int, first_seed: int, steps: int) -> tuple[list, np.ndarray, np.ndarray]:
    """The judge's object count and verdict for every (count prompt, seed)."""
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, local_files_only=True,
                                                   dtype=torch.float32)  # a snapshot is fp16
    pipe.set_progress_bar_config(disable=True)
    prompts = list(category_prompts("count", "all"))
    counts, good = np.zeros((len(prompts), seeds)), np.zeros((len(prompts), seeds))
    for i, p in enumerate(prompts):
        gens = [torch.Generator().manual_seed(first_seed + s) for s in range(seeds)]
        with torch.inference_mode():
            lat = pipe([p.text] * seeds, num_inference_steps=steps, guidance_scale=1.0, generator=gens,
                       output_type="latent", height=32, width=32).images
        for s, img in enumerate(decode_latents(pipe.vae, lat)):
            verdict = judge(img, p)
            counts[i, s], good[i, s] = verdict.count, verdict.good
    return prompts, counts, good


def variance_shares(counts: np.ndarray) -> tuple[float, float]:
    """Shares of the count's variance explained by the prompt (rows) and by the seed (columns)."""
    total = counts.var()
    by_prompt = np.broadcast_to(counts.mean(1, keepdims=True), counts.shape).var() / total
    by_seed = np.broadcast_to(counts.mean(0, keepdims=True), counts.shape).var() / total
    return float(by_prompt), float(by_seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", type=Path, nargs="+", help="pipeline directories")
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--first-seed", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | count good | prompt share | seed share | corr(drawn, asked) | mean drawn for 1 / 2 / 3 / 4 |")
    print("|---|---|---|---|---|---|")
    for model in args.models:
        prompts, counts, good = drawn_counts(model, args.seeds, args.first_seed, args.steps)
        asked = np.array([p.n_objects for p in prompts], dtype=float)[:, None].repeat(args.seeds, 1)
        by_prompt, by_seed = variance_shares(counts)
        corr = float(np.corrcoef(counts.ravel(), asked.ravel())[0, 1])
        means = " / ".join(f"{counts[asked[:, 0] == n].mean():.2f}" for n in range(1, 5))
        se = np.sqrt(good.mean() * (1 - good.mean()) / good.size)
        print(f"| {model} | {100 * good.mean():.1f} ± {100 * se:.1f} | {by_prompt:.2f} | {by_seed:.2f} | "
              f"{corr:.2f} | {means} |", flush=True)


if __name__ == "__main__":
    main()
