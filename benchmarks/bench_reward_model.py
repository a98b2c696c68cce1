"""Reward-model accuracy on unseen prompts vs. number of labels, with and without the auxiliary
prompt-classification loss (the paper's ablation).

Images come from the base model (models/shapes-sd) for training-split prompts (labelled by the
oracle judge with a share of labels flipped, a stand-in for human disagreement) and for held-out
prompts (scored against the judge's true verdicts). Generated images are cached under
runs/bench_reward/, keyed by the model's weights, so reruns only train.

    nice -n 10 .venv/bin/python benchmarks/bench_reward_model.py            # full: 500/1000/2000
    nice -n 10 .venv/bin/python benchmarks/bench_reward_model.py --tiny     # smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from t2i_rlhf.samples import png_bytes
from t2i_rlhf.shapes import judge, perturb, render, sample_prompts
from t2i_rlhf.training.reward.metrics import score_metrics
from t2i_rlhf.training.reward.model import load_reward_model
from t2i_rlhf.training.reward.train import RewardTrainingConfig, train_reward_model
from t2i_rlhf.training.reward.views import ImageViews

log = logging.getLogger("bench_reward_model")
CHUNK = 32  # images per generation call; prompts are drawn per chunk so a longer run extends a cache


def model_fingerprint(model_dir: Path) -> str:
    h = hashlib.sha1()
    for f in sorted(model_dir.rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(model_dir)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def rendered_images(args: argparse.Namespace, split: str, n: int) -> tuple[np.ndarray, list[str]]:
    """n (image, prompt) pairs drawn by the renderer instead of the base model: half show their
    prompt, half a perturbation of it. Checks the backbone alone, before a base model exists."""
    prompts = sample_prompts(n, split, seed=args.seed)
    shown = [perturb(p, 1, seed=i)[0] if i % 2 else p for i, p in enumerate(prompts)]
    images = np.stack([render(q, seed=args.seed * 1_000_003 + i) for i, q in enumerate(shown)])
    return images, [p.text for p in prompts]


def generated_images(args: argparse.Namespace, split: str, n: int) -> tuple[np.ndarray, list[str]]:
    """n (image, prompt) pairs for `split` prompts, from the cache, generating what is missing."""
    from diffusers import StableDiffusionPipeline

    if args.source == "rendered":
        return rendered_images(args, split, n)

    key = f"{model_fingerprint(args.sd)}-{split}-s{args.seed}-st{args.steps}-g{args.guidance}"
    path = args.work / f"images-{key}.npz"
    images, prompts = np.zeros((0, 32, 32, 3), np.uint8), []
    if path.is_file():
        with np.load(path) as z:
            images, prompts = z["images"], z["prompts"].tolist()
    if len(prompts) >= n:
        return images[:n], prompts[:n]
    pipe = StableDiffusionPipeline.from_pretrained(args.sd, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    t0, start = time.monotonic(), len(prompts)
    new_images = [images]
    while len(prompts) < n:
        k = len(prompts) // CHUNK
        chunk = [p.text for p in sample_prompts(CHUNK, split, seed=args.seed * 100_003 + k)]
        gens = [torch.Generator().manual_seed(args.seed * 10_000_019 + k * CHUNK + i) for i in range(CHUNK)]
        with torch.no_grad():
            out = pipe(chunk, height=size, width=size, num_inference_steps=args.steps,
                       guidance_scale=args.guidance, generator=gens, output_type="np").images
        new_images.append((out * 255).round().astype(np.uint8))
        prompts += chunk
        images = np.concatenate(new_images)
        new_images = [images]
        args.work.mkdir(parents=True, exist_ok=True)
        np.savez(path.with_suffix(".tmp.npz"), images=images, prompts=np.array(prompts))
        path.with_suffix(".tmp.npz").replace(path)
        log.info("%s: %d/%d images (%.1f s)", split, len(prompts), n, time.monotonic() - t0)
    log.info("generated %d %s images in %.0f s", len(prompts) - start, split, time.monotonic() - t0)
    return images[:n], prompts[:n]


def labelled_table(images: np.ndarray, prompts: list[str], labels: np.ndarray) -> pa.Table:
    return pa.table({
        "sample_id": [f"b{i}" for i in range(len(prompts))], "prompt": prompts,
        "image": [png_bytes(im) for im in images], "label": labels.astype(np.float32),
        "n_labels": np.ones(len(prompts), np.int32),
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sd", type=Path, default=Path("models/shapes-sd"))
    ap.add_argument("--clip", type=Path, default=Path("models/shapes-clip"))
    ap.add_argument("--labels", default="500,1000,2000", help="label budgets (first N training images)")
    ap.add_argument("--heldout-images", type=int, default=800)
    ap.add_argument("--flip", type=float, default=0.1, help="share of training labels flipped")
    ap.add_argument("--lambdas", default="0.5,0", help="auxiliary-loss weights to compare")
    ap.add_argument("--source", choices=["model", "rendered"], default="model",
                    help="images from the base model (the benchmark) or the renderer (backbone check)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=1.0, help="guidance of the images (1: as the rollouts sample)")
    ap.add_argument("--epochs", type=int, default=None, help="override RewardTrainingConfig.epochs")
    ap.add_argument("--prompt-margin", action=argparse.BooleanOptionalAction, default=True,
                    help="the zero-shot prompt-margin input (--no-prompt-margin: the paper's inputs only)")
    ap.add_argument("--views", action=argparse.BooleanOptionalAction, default=True,
                    help="embed images as the mean over the default views (--no-views: one embedding)")
    ap.add_argument("--label-folds", type=int, default=None,
                    help="override RewardTrainingConfig.label_folds (0: every label weighs 1)")
    ap.add_argument("--head-seeds", type=int, default=3,
                    help="heads trained per setting (seeds differ); the table gives their mean and sd")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("runs/bench_reward"))
    ap.add_argument("--tiny", action="store_true", help="smoke run: 64/32 images, 3 steps, 5 epochs")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if args.tiny:
        args.labels, args.heldout_images, args.steps, args.epochs, args.head_seeds = "32,64", 32, 3, 5, 1
        args.work = args.work / "tiny"
    if args.source == "rendered":
        args.work = args.work / "rendered"
    budgets = sorted(int(b) for b in args.labels.split(","))
    lambdas = [float(v) for v in args.lambdas.split(",")]

    tr_images, tr_prompts = generated_images(args, "train", budgets[-1])
    ho_images, ho_prompts = generated_images(args, "heldout", args.heldout_images)
    truth_tr = np.array([judge(im, p).good for im, p in zip(tr_images, tr_prompts, strict=True)], np.float32)
    truth_ho = np.array([judge(im, p).good for im, p in zip(ho_images, ho_prompts, strict=True)], np.float32)
    flip = np.random.default_rng(args.seed).random(len(truth_tr)) < args.flip
    noisy = np.where(flip, 1.0 - truth_tr, truth_tr)
    log.info("base model: %.1f%% of train / %.1f%% of held-out images judged good; %d labels flipped",
             100 * truth_tr.mean(), 100 * truth_ho.mean(), flip.sum())

    rows = []
    overrides: dict = {"prompt_margin": args.prompt_margin}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.label_folds is not None:
        overrides["label_folds"] = args.label_folds
    if not args.views:
        overrides["views"] = ImageViews.single()
    views = overrides.get("views", RewardTrainingConfig().views)  # the config default otherwise
    cache = str(args.work / f"embeddings-{model_fingerprint(args.clip)}-v{views.count}.npz")
    for n in budgets:
        table = labelled_table(tr_images[:n], tr_prompts[:n], noisy[:n])
        for lam in lambdas:
            heads = []
            for k in range(args.head_seeds):
                cfg = RewardTrainingConfig(backbone=str(args.clip), lambda_aux=lam, heldout="none",
                                           seed=args.seed * 100 + k, embedding_cache=cache,
                                           threads=args.threads, **overrides)
                out = args.work / "models" / f"n{n}-lam{lam:g}-h{k}"
                t0 = time.monotonic()
                m = train_reward_model(table, cfg, out, out.name)
                model = load_reward_model(out)
                ho = score_metrics(model.score(list(ho_images), ho_prompts), truth_ho)
                tr_true = score_metrics(model.score(list(tr_images[:n]), tr_prompts[:n]), truth_tr[:n])
                heads.append({"heldout_accuracy": ho["accuracy"], "heldout_auc": ho["auc"],
                              "train_accuracy_vs_judge": tr_true["accuracy"],
                              "train_prompt_accuracy": m["train"].get("prompt_accuracy", float("nan")),
                              "seconds": time.monotonic() - t0})
                log.info("n=%d λ=%g head %d: %s", n, lam, k, heads[-1])
            rows.append({"labels": n, "lambda": lam, "heads": heads,
                         **{key: float(np.mean([h[key] for h in heads])) for key in heads[0]},
                         **{f"{key}_sd": float(np.std([h[key] for h in heads]))
                            for key in ("heldout_accuracy", "heldout_auc")}})

    print(f"\nreward model on held-out prompts ({len(ho_prompts)} {args.source} images, judge truth; "
          f"training labels {100 * args.flip:.0f}% flipped; backbone {args.clip} with {views.count} "
          f"view(s), images {args.sd}; mean ± sd of {args.head_seeds} head(s))")
    print(f"{'labels':>7} {'lambda':>7} {'acc':>14} {'auc':>14} {'train acc':>10} {'prompt rank':>12} {'s':>6}")
    for r in rows:
        print(f"{r['labels']:>7} {r['lambda']:>7g} {r['heldout_accuracy']:>7.3f} ± {r['heldout_accuracy_sd']:.3f}"
              f" {r['heldout_auc']:>7.3f} ± {r['heldout_auc_sd']:.3f} {r['train_accuracy_vs_judge']:>10.3f} "
              f"{r['train_prompt_accuracy']:>12.3f} {r['seconds']:>6.1f}")
    print(f"(held-out images judged good: {100 * truth_ho.mean():.1f}%; always-'bad' accuracy "
          f"{100 * (1 - truth_ho.mean()):.1f}%)")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
              "heldout_good_rate": float(truth_ho.mean()), "train_good_rate": float(truth_tr.mean())}
    (args.work / "results.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
