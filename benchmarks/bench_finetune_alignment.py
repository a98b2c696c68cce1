"""The paper's experiment in miniature, with the oracle judge as the reward.

1. The base model generates images for training prompts; the judge's verdict (good = 1, bad = 0)
   is each sample's r (a perfect reward model, so this measures the fine-tuning step alone).
2. One round of reward-weighted fine-tuning with beta = 0 and with beta > 0 (pre-training data).
3. On held-out prompts: judged alignment per category (t2i_rlhf.evaluation) and the Fréchet
   distance to rendered images in shapes-CLIP space, for base / beta = 0 / beta > 0. The paper:
   alignment up; the pre-training term keeps fidelity (FID 26.6 without it, 16.8 with it).

Needs the pretrained base model (random placeholder weights make every number meaningless).
A full run (a few hours on 2 contended cores):
    HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled nice -n 10 .venv/bin/python \
        benchmarks/bench_finetune_alignment.py --train-samples 2048 --per-category 96 --epochs 4
The objectives on the same samples (the samples are cached under --out, so each arm only trains
and judges; ~8 min an arm on 2 cores at 384 steps):
    ... --beta 0 --only-beta --skip-base --max-steps 384 --lr 1e-4 --ema-decay 0.95 [--objective negative_aware]
Any other fine-tuning setting with --set (named in the arm), judged on two evaluation seeds:
    ... --set 'timestep_range=[0.5,1]' --set mixed_precision=bf16 --eval-seeds 0 1
A smoke test: --train-samples 32 --per-category 2 --max-steps 2 --gen-steps 2
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import yaml

from t2i_rlhf.diffusion.latents import decode_latents, encode_images
from t2i_rlhf.evaluation import evaluate_model, load_pipeline
from t2i_rlhf.samples import SAMPLE_SCHEMA, png_bytes
from t2i_rlhf.shapes import judge, sample_prompts
from t2i_rlhf.shapes.captions import load_policy, write_pretrain_parquet
from t2i_rlhf.shapes.prompts import Prompt
from t2i_rlhf.shapes.render import render
from t2i_rlhf.training.finetune.config import FinetuneConfig
from t2i_rlhf.training.finetune.model import materialize_pipeline
from t2i_rlhf.training.finetune.trainer import finetune_round

log = logging.getLogger("bench_finetune_alignment")


def judged_samples(model: Path, n: int, out: Path, steps: int, guidance: float, batch: int = 32,
                   seed: int = 0) -> Path:
    """Base-model samples of training prompts, in SAMPLE_SCHEMA, with r = the judge's verdict."""
    if out.exists():
        return out
    prompts = sample_prompts(n, split="train", seed=seed)
    items = [(p, seed * 1_000_003 + i) for i, p in enumerate(prompts)]
    rows = judged_rows(load_pipeline(model), items, steps, guidance, source="base", batch=batch)
    write_samples(rows, out)
    log.info("%d base samples, %.1f%% judged good", n, 100 * np.mean([r["reward"] for r in rows]))
    return out


@torch.no_grad()
def judged_rows(pipe, items: list[tuple[Prompt, int]], steps: int, guidance: float, source: str,
                batch: int = 32, round: int = 0, id_prefix: str = "bench") -> list[dict]:
    """SAMPLE_SCHEMA rows of `pipe`'s images for (prompt, seed) items, r = the judge's verdict.

    Sampled as the generator actors sample: latents from the pipeline's own scheduler, one
    torch.Generator per item (so batching does not change an image), decoded and re-encoded, so
    fine-tuning learns from the latents of the very image that was judged."""
    rows = []
    for start in range(0, len(items), batch):
        chunk = items[start : start + batch]
        latents = pipe([p.text for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance,
                       generator=[torch.Generator().manual_seed(s) for _, s in chunk], output_type="latent").images
        images = decode_latents(pipe.vae, latents)
        latents = encode_images(pipe.vae, images)  # as the generator actors store them
        for (p, s), lat, img in zip(chunk, latents, images, strict=True):
            rows.append(sample_row(f"{id_prefix}-{s}", source, p, s, img, lat, float(judge(img, p).good), round))
    return rows


def rendered_samples(n: int, out: Path, pipeline_dir: Path, seed: int = 0) -> Path:
    """The upper bound of what reward-weighted fine-tuning can teach: training prompts' own
    renders (what a perfect generator would draw), each with r = 1, in SAMPLE_SCHEMA."""
    if out.exists():
        return out
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae").eval()
    prompts = sample_prompts(n, split="train", seed=seed)
    seeds = [seed * 1_000_003 + i for i in range(n)]
    images = np.stack([render(p, s) for p, s in zip(prompts, seeds, strict=True)])
    latents = encode_images(vae, images)
    write_samples([sample_row(f"render-{s}", "renderer", p, s, img, lat, 1.0)
                   for p, s, lat, img in zip(prompts, seeds, latents, images, strict=True)], out)
    return out


def sample_row(sample_id: str, source: str, prompt: Prompt, seed: int, image: np.ndarray, latent: torch.Tensor,
               r: float, round: int = 0) -> dict:
    """One SAMPLE_SCHEMA row whose reward and label are both the oracle's r."""
    return {
        "sample_id": sample_id, "round": round, "prompt": prompt.text, "category": prompt.category, "seed": seed,
        "model_version": source, "image": png_bytes(image), "latents": latent.flatten().float().numpy(),
        "latent_shape": list(latent.shape), "reward": r, "reward_model_version": "oracle-judge",
        "label": r, "n_labels": 1,
    }


def write_samples(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/shapes-sd"))
    ap.add_argument("--clip", type=Path, default=Path("models/shapes-clip"))
    ap.add_argument("--out", type=Path, default=Path("runs/bench-finetune-alignment"))
    ap.add_argument("--train-samples", type=int, default=2048)
    ap.add_argument("--pretrain", type=int, default=20_000, help="pre-training examples for the beta term")
    ap.add_argument("--per-category", type=int, default=96, help="held-out evaluation images per category")
    ap.add_argument("--gen-steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=1.0, help="evaluation guidance (1: as the loop judges)")
    ap.add_argument("--sample-guidance", type=float, help="guidance of the training samples (default: --guidance)")
    ap.add_argument("--train-data", choices=["samples", "renders"], default="samples",
                    help="base-model samples judged by the oracle, or renders with r = 1 (the upper bound)")
    ap.add_argument("--beta", type=float, default=1.0, help="the beta > 0 arm")
    ap.add_argument("--only-beta", action="store_true", help="skip the beta = 0 arm")
    ap.add_argument("--skip-base", action="store_true", help="do not re-evaluate the base model")
    ap.add_argument("--split", choices=["heldout", "train"], default="heldout", help="evaluation prompts")
    ap.add_argument("--epochs", type=float, default=4.0)
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--objective", choices=["reward_weighted", "negative_aware"], default="reward_weighted",
                    help="negative_aware normalises r within each prompt's samples (DiffusionNFT)")
    ap.add_argument("--reward-normalization", choices=["none", "prompt", "category"],
                    help="default: prompt for negative_aware, none for reward_weighted")
    ap.add_argument("--lora", action="store_true", help="a LoRA adapter (rank --lora-rank, at --lr)")
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--ema-decay", type=float, default=0.0, help="export an EMA of the weights (0: off)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other FinetuneConfig field, VALUE in YAML (e.g. timestep_range=[0.5,1]); "
                         "named in the arm's name")
    ap.add_argument("--eval-seeds", type=int, nargs="+", default=[0],
                    help="evaluation seeds (prompts and noise); settings chosen on one, reported on another")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    out = args.out.resolve()
    model = args.model.resolve()

    if args.train_data == "renders":
        samples = rendered_samples(args.train_samples, out / "renders.parquet", model)
    else:
        samples = judged_samples(model, args.train_samples, out / "samples.parquet", args.gen_steps,
                                 args.sample_guidance or args.guidance)
    policy = load_policy(model)  # the base's own pre-training captions, as the run's β term
    pretrain = out / f"pretrain-{args.pretrain}-{policy.key}"
    if not pretrain.exists():
        write_pretrain_parquet(pretrain, args.pretrain, first_seed=70_000_000, policy=policy)

    extra = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    models = {} if args.skip_base else {"base": model}
    nft = args.objective == "negative_aware"
    norm = args.reward_normalization or ("prompt" if nft else "none")
    for beta in (args.beta,) if args.only_beta else (0.0, args.beta):
        cfg = FinetuneConfig(beta=beta, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
                             lr=args.lr, lora=args.lora, lora_rank=args.lora_rank, lora_lr=args.lr,
                             objective=args.objective, reward_normalization=norm,
                             ema_decay=args.ema_decay, num_workers=args.workers,
                             threads_per_worker=args.threads, latent_cache=out / "cache", checkpoint_every=100,
                             **extra)
        name = ("nft-" if nft else "") + ("raw-" if nft and norm == "none" else "") + (
            "cat-" if norm == "category" else "") + f"beta{beta:g}-lr{args.lr:g}" + (
            f"-lora{args.lora_rank}" if args.lora else "") + (f"-ema{args.ema_decay:g}" if args.ema_decay else "") + (
            f"-{args.max_steps}steps" if args.max_steps not in (None, 384) else "") + "".join(
            f"-{k}{v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}" for k, v in extra.items())
        manifest = finetune_round(cfg, samples, pretrain, model, out / "versions" / name, round=1,
                                  version=f"bench-{name}-{cfg.config_hash()[:6]}", storage_path=out / "ray")
        log.info("%s: %d steps, final metrics %s", name, manifest.steps, manifest.metrics)
        models[name] = materialize_pipeline(out / "versions" / name, out / "pipelines" / name)

    results = {}
    for name, path in models.items():
        for seed in args.eval_seeds:
            key = name if seed == 0 else f"{name}@seed{seed}"
            r = evaluate_model(path, args.clip, out / "eval" / key, per_category=args.per_category,
                               split=args.split, steps=args.gen_steps, guidance=args.guidance, seed=seed,
                               threads=args.threads)
            results[key] = r.to_dict()
            print(key, "\n", r.table(), "\n")
    summary = {key: {"judged_good": r["overall"]["good"], "stderr": r["overall"]["stderr"], "fid": r["fid"],
                     "per_category": {c["category"]: c["good"] for c in r["categories"]}}
               for key, r in results.items()}
    (out / "summary.json").write_text(json.dumps({"args": vars(args), "summary": summary}, indent=2, default=str))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
