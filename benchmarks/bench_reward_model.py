"""Reward-model accuracy on unseen prompts vs. number of labels, with and without the auxiliary
prompt-classification loss (the paper's ablation).

Images come from the base model (models/shapes-sd) for training-split prompts (labelled by the
oracle judge with a share of labels flipped, a stand-in for human disagreement) and for held-out
prompts (scored against the judge's true verdicts). Generated images are cached under
runs/bench_reward/, keyed by the model's weights, so reruns only train.

    nice -n 10 .venv/bin/python benchmarks/bench_reward_model.py            # full: 500/1000/2000
    nice -n 10 .venv/bin/python benchmarks/bench_reward_model.py --tiny     # smoke run
    nice -n 10 .venv/bin/python benchmarks/bench_reward_model.py --careless --labels 2000 --lambdas 0.5

`--careless` (issue 25) asks instead whether reliability weighting rescues a careless labeller.
Four simulated labellers label the same training images in every arm: (1) all careful (`--flip`
each); (2) three careful and one flipping `--careless-noise` (0.5: at chance), unweighted; (3)
the same with labels left out (`drop`) or weighed (`weight`) by gold accuracy. The labels are
simulated in-process, like the rest of this benchmark's (it starts no feedback server), but they
count as the service makes them count: each labeller also labels `--gold` gold tasks (other
training-split images, the oracle judge's verdict their known answer); `labeller_weights` turns
the `/v1/stats` gold columns into weights with the config's default `min_gold` and
`min_accuracy`; `aggregate_labels` turns the export-shaped rows into the training table. A flip
is drawn as `simulate.py` draws it (one uniform per seed, labeller and sample id) and who labels
a sample is drawn per replicate, independent of the noise, so the arms differ only in the
careless labeller's noise and the weighting (the careful arm's flips are a subset of the
careless arm's). Each of the `--head-seeds` replicates redraws flips, the sharing-out and the
head's seed; the table gives mean ± SE over replicates and, paired by replicate, the difference
to the all-careful arm (what issue 25's "within 2 points" is about).
With one label per sample (`--labels-per-sample 1`, the service's default) a weighted mean of one
vote is that vote, so `weight` only changes anything for a labeller at or below chance.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from t2i_rlhf.config import LabellerReliability
from t2i_rlhf.samples import png_bytes
from t2i_rlhf.services.client import aggregate_labels
from t2i_rlhf.services.reliability import labeller_weights
from t2i_rlhf.shapes import judge, perturb, render, sample_prompts
from t2i_rlhf.training.reward.metrics import score_metrics
from t2i_rlhf.training.reward.model import RewardModel, load_reward_model
from t2i_rlhf.training.reward.train import RewardTrainingConfig, train_reward_model
from t2i_rlhf.training.reward.views import ImageViews

log = logging.getLogger("bench_reward_model")
CHUNK = 32  # images per generation call; prompts are drawn per chunk so a longer run extends a cache
LABELLERS = 4  # simulated labellers in the careless experiment; the last is the careless one


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


def labelled_table(images: np.ndarray, prompts: list[str], labels: np.ndarray,
                   n_labels: np.ndarray | None = None, ids: Sequence[str] | None = None) -> pa.Table:
    """The reward trainer's input, one row per sample (one label each unless `n_labels` says)."""
    return pa.table({
        "sample_id": list(ids) if ids is not None else [f"b{i}" for i in range(len(prompts))],
        "prompt": prompts, "image": [png_bytes(im) for im in images], "label": labels.astype(np.float32),
        "n_labels": np.ones(len(prompts), np.int32) if n_labels is None else n_labels.astype(np.int32),
    })


def flipped(seed: int, worker: int, sample_id: str, noise: float) -> bool:
    """Whether labeller `worker` flips its verdict on `sample_id`, drawn as simulate.py draws it:
    one uniform per (seed, labeller, sample), so a noisier labeller flips a superset."""
    return random.Random(f"{seed}:{worker}:{sample_id}").random() < noise


def simulated_export(truth: np.ndarray, gold_truth: np.ndarray, noise: Sequence[float],
                     per_sample: int, seed: int) -> list[dict]:
    """Label rows shaped like /v1/export's (label_id, sample_id, labeller, label, gold): every
    labeller labels every gold task (the service mixes them into every queue), and each sample
    `b<i>` gets `per_sample` distinct labellers drawn at random (whoever leases it first)."""
    names = [f"sim-{w}" for w in range(len(noise))]
    rows: list[dict] = []

    def add(sample_id: str, w: int, good: bool, gold: str | None) -> None:
        good = good != flipped(seed, w, sample_id, noise[w])
        rows.append({"label_id": len(rows) + 1, "sample_id": sample_id, "labeller": names[w],
                     "label": "good" if good else "bad", "gold": gold})

    for j, t in enumerate(gold_truth):
        for w in range(len(noise)):
            add(f"g{j}", w, bool(t), "good" if t else "bad")
    rng = np.random.default_rng(seed)
    for i, t in enumerate(truth):
        for w in rng.permutation(len(noise))[:per_sample]:
            add(f"b{i}", int(w), bool(t), None)
    return rows


def gold_stats(rows: list[dict]) -> list[dict]:
    """The gold columns of /v1/stats' labeller rows (store_stats.labeller_stats): good/bad labels
    on gold tasks and how many match the known answer."""
    per: dict[str, dict] = {}
    for r in rows:
        s = per.setdefault(r["labeller"], {"labeller": r["labeller"], "gold_labelled": 0, "gold_correct": 0})
        if r["gold"] and r["label"] != "skip":
            s["gold_labelled"] += 1
            s["gold_correct"] += r["label"] == r["gold"]
    return [per[n] for n in sorted(per)]


def fit_head(args: argparse.Namespace, table: pa.Table, lam: float, seed: int, cache: str,
             overrides: dict, name: str) -> tuple[dict, RewardModel]:
    """Train one reward head on `table` -> (training metrics, the loaded model)."""
    cfg = RewardTrainingConfig(backbone=str(args.clip), lambda_aux=lam, heldout="none", seed=seed,
                               embedding_cache=cache, threads=args.threads, **overrides)
    out = args.work / "models" / name
    m = train_reward_model(table, cfg, out, out.name)
    return m, load_reward_model(out)


def mean_se(x: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error over replicates (nan SE with one)."""
    a = np.asarray(x, np.float64)
    return float(a.mean()), float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")


def careless_arms(args: argparse.Namespace) -> list[tuple[str, list[float], str]]:
    """(name, each labeller's flip probability, reliability mode) per arm."""
    careful, mixed = [args.flip] * LABELLERS, [args.flip] * (LABELLERS - 1) + [args.careless_noise]
    return [("careful", careful, "off"), ("careless", mixed, "off"),
            ("careless+drop", mixed, "drop"), ("careless+weight", mixed, "weight")]


def careless_experiment(args: argparse.Namespace, budgets: list[int], lam: float, cache: str,
                        overrides: dict) -> None:
    """Issue 25's arms on the same images and seeds; prints one table, writes careless.json."""
    per_sample = args.labels_per_sample
    if not 1 <= per_sample <= LABELLERS:
        raise SystemExit(f"--labels-per-sample must be 1..{LABELLERS}")
    n_samples = max(budgets) // per_sample
    images, prompts = generated_images(args, "train", n_samples + args.gold)
    ho_images, ho_prompts = generated_images(args, "heldout", args.heldout_images)
    truth = np.array([judge(im, p).good for im, p in zip(images, prompts, strict=True)], np.float32)
    truth_ho = np.array([judge(im, p).good for im, p in zip(ho_images, ho_prompts, strict=True)], np.float32)
    gold_truth, truth = truth[n_samples:], truth[:n_samples]
    rel = LabellerReliability()
    arms = careless_arms(args)
    rows = []
    for n in budgets:
        k = n // per_sample
        res: dict[str, list[dict]] = {a[0]: [] for a in arms}
        for r in range(args.head_seeds):
            seed = args.seed * 100 + r
            for name, noise, mode in arms:
                export = simulated_export(truth[:k], gold_truth, noise, per_sample, seed)
                weights = labeller_weights(gold_stats(export), mode, rel.min_gold, rel.min_accuracy)
                agg = aggregate_labels(export, weights or None)
                idx = np.array(sorted(int(s[1:]) for s in agg))
                y = np.array([agg[f"b{i}"][0] for i in idx], np.float32)
                votes = np.array([agg[f"b{i}"][1] for i in idx], np.int32)
                table = labelled_table(images[idx], [prompts[i] for i in idx], y, votes, [f"b{i}" for i in idx])
                t0 = time.monotonic()
                _, model = fit_head(args, table, lam, seed, cache, overrides, f"careless-n{n}-{name}-r{r}")
                ho = score_metrics(model.score(list(ho_images), ho_prompts), truth_ho)
                res[name].append({
                    "labels": int(votes.sum()), "label_accuracy": float(1 - np.abs(y - truth[idx]).mean()),
                    "heldout_accuracy": ho["accuracy"], "heldout_auc": ho["auc"],
                    "weights": [float(weights.get(f"sim-{w}", 1.0)) for w in range(LABELLERS)],
                    "seconds": time.monotonic() - t0})
                log.info("n=%d %s replicate %d: %s", n, name, r, res[name][-1])
        base = [h["heldout_accuracy"] for h in res["careful"]]
        for name, noise, mode in arms:
            heads = res[name]
            acc = [h["heldout_accuracy"] for h in heads]
            rows.append({"budget": n, "arm": name, "noise": noise, "mode": mode, "replicates": heads,
                         "labels": float(np.mean([h["labels"] for h in heads])),
                         "label_accuracy": float(np.mean([h["label_accuracy"] for h in heads])),
                         "heldout_accuracy": mean_se(acc),
                         "delta_vs_careful": mean_se([a - b for a, b in zip(acc, base, strict=True)]),
                         "weights": np.mean([h["weights"] for h in heads], axis=0).tolist()})

    print(f"\ncareless labeller: {LABELLERS} labellers, careful ones flip {100 * args.flip:.0f}%, the careless "
          f"one {100 * args.careless_noise:.0f}%; {per_sample} label(s) per sample, {args.gold} gold tasks each; "
          f"min_gold {rel.min_gold}, min_accuracy {rel.min_accuracy}; λ={lam:g}; held-out: {len(ho_prompts)} "
          f"{args.source} images, judge truth; mean ± SE over {args.head_seeds} replicate(s)")
    print(f"{'budget':>6} {'arm':<16} {'labels':>7} {'label acc':>9} {'held-out acc':>15} "
          f"{'Δ vs careful':>16}  weights")
    for r in rows:
        (a, a_se), (d, d_se) = r["heldout_accuracy"], r["delta_vs_careful"]
        print(f"{r['budget']:>6} {r['arm']:<16} {r['labels']:>7.0f} {r['label_accuracy']:>9.3f} "
              f"{a:>7.3f} ± {a_se:.3f} {100 * d:>+7.1f} ± {100 * d_se:.1f}pt  "
              + " ".join(f"{w:.2f}" for w in r["weights"]))
    print(f"(held-out images judged good: {100 * truth_ho.mean():.1f}%; Δ paired by replicate, in points)")
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
              "heldout_good_rate": float(truth_ho.mean())}
    (args.work / "careless.json").write_text(json.dumps(result, indent=2))


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
    ap.add_argument("--careless", action="store_true",
                    help="the careless-labeller experiment (issue 25) instead, at the first of --lambdas")
    ap.add_argument("--careless-noise", type=float, default=0.5, help="the careless labeller's flip share")
    ap.add_argument("--labels-per-sample", type=int, default=1,
                    help="--careless: distinct labellers per sample (a budget of N labels: N / this samples)")
    ap.add_argument("--gold", type=int, default=48, help="--careless: gold tasks every labeller labels")
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

    overrides: dict = {"prompt_margin": args.prompt_margin}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.label_folds is not None:
        overrides["label_folds"] = args.label_folds
    if not args.views:
        overrides["views"] = ImageViews.single()
    views = overrides.get("views", RewardTrainingConfig().views)  # the config default otherwise
    cache = str(args.work / f"embeddings-{model_fingerprint(args.clip)}-v{views.count}.npz")
    if args.careless:
        careless_experiment(args, budgets, lambdas[0], cache, overrides)
        return

    tr_images, tr_prompts = generated_images(args, "train", budgets[-1])
    ho_images, ho_prompts = generated_images(args, "heldout", args.heldout_images)
    truth_tr = np.array([judge(im, p).good for im, p in zip(tr_images, tr_prompts, strict=True)], np.float32)
    truth_ho = np.array([judge(im, p).good for im, p in zip(ho_images, ho_prompts, strict=True)], np.float32)
    flip = np.random.default_rng(args.seed).random(len(truth_tr)) < args.flip
    noisy = np.where(flip, 1.0 - truth_tr, truth_tr)
    log.info("base model: %.1f%% of train / %.1f%% of held-out images judged good; %d labels flipped",
             100 * truth_tr.mean(), 100 * truth_ho.mean(), flip.sum())

    rows = []
    for n in budgets:
        table = labelled_table(tr_images[:n], tr_prompts[:n], noisy[:n])
        for lam in lambdas:
            heads = []
            for k in range(args.head_seeds):
                t0 = time.monotonic()
                m, model = fit_head(args, table, lam, args.seed * 100 + k, cache, overrides, f"n{n}-lam{lam:g}-h{k}")
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
