"""The ceiling: what the project's own fine-tuning makes of perfect data, base vs tuned.

Is the shapes world learnable at all? Fine-tune the base on exact-caption renders of *training*
prompts (what a perfect generator would draw, each with reward 1, no pre-training term) through
the same Ray Train round the loop runs (`finetune_round`), then judge base and tuned on training
and on held-out prompts: alignment per category with standard errors, clean rate, Fréchet
distance. Every objective's gain is bounded by this row.

Targets (the learnable-world issue): after at most 20 minutes of fine-tuning on 2 cores, >= 90%
on training prompts and >= 80% on held-out prompts in every category, clean >= 90%, FD at most
10% above the base's.

    HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/bench_ceiling.py \
        --out runs/ceiling-pipeline            # ~25 min on 2 cores; --seed 1 for a fresh set
A smoke test: --train-samples 64 --max-steps 2 --per-category 2 --gen-steps 2
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from bench_finetune_alignment import rendered_samples

from t2i_rlhf.evaluation import EvalResult, evaluate_model, paired_change
from t2i_rlhf.run import parse_overrides
from t2i_rlhf.shapes.vocab import CATEGORIES
from t2i_rlhf.training.finetune.config import FinetuneConfig
from t2i_rlhf.training.finetune.model import materialize_pipeline
from t2i_rlhf.training.finetune.trainer import finetune_round

log = logging.getLogger("bench_ceiling")


def table(results: dict[tuple[str, str], EvalResult]) -> str:
    """One row per (model, split): judged good ± SE per category and overall, clean, FD, and the
    overall change against the base on the same items with its paired SE."""
    head = f"| model | prompts | {' | '.join(CATEGORIES)} | overall | change | clean | FD |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (model, split), r in results.items():
        cells = [f"{100 * c.good:.1f} ± {100 * c.stderr:.1f}" for c in r.categories]
        base = results.get(("base", split))
        change = paired_change(base.overall.verdicts, r.overall.verdicts) if base and model != "base" else None
        delta = f"{100 * change[0]:+.1f} ± {100 * change[1]:.1f}" if change else ""
        lines.append(f"| {model} | {split} | {' | '.join(cells)} | {100 * r.overall.good:.1f} ± "
                     f"{100 * r.overall.stderr:.1f} | {delta} | {100 * r.overall.clean:.1f}% | {r.fid:.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=Path("models/shapes-sd"))
    ap.add_argument("--clip", type=Path, default=Path("models/shapes-clip"))
    ap.add_argument("--work", type=Path, default=Path("runs/bench-ceiling"), help="renders, runs, evaluations")
    ap.add_argument("--out", type=Path, help="save the tuned pipeline here as a full diffusers directory")
    ap.add_argument("--train-samples", type=int, default=8192, help="renders of training prompts, r = 1")
    ap.add_argument("--max-steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--ema-decay", type=float, default=0.995)
    ap.add_argument("--per-category", type=int, default=96, help="judged images per category and split")
    ap.add_argument("--seed", type=int, default=0, help="evaluation seed (prompts and noise)")
    ap.add_argument("--gen-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-base", action="store_true", help="judge the tuned model only")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other fine-tuning field, e.g. --set mixed_precision=bf16 (repeatable)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work, model = args.work.resolve(), args.model.resolve()

    results: dict[tuple[str, str], EvalResult] = {}

    def judge_model(label: str, path: Path) -> None:
        for split in ("train", "heldout"):
            results[(label, split)] = evaluate_model(
                path, args.clip, work / "eval" / f"{label}-{split}-seed{args.seed}", per_category=args.per_category,
                split=split, steps=args.gen_steps, guidance=1.0, seed=args.seed, threads=args.threads)
        print(table(results), flush=True)

    if not args.skip_base:
        judge_model("base", model)  # first: a base that already fails its own targets is seen at once
    samples = rendered_samples(args.train_samples, work / f"renders-{args.train_samples}.parquet", model)
    cfg = FinetuneConfig(beta=0.0, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                         ema_decay=args.ema_decay, threads_per_worker=args.threads, checkpoint_every=250,
                         **parse_overrides(args.set))
    name = f"ceiling-{cfg.config_hash()[:8]}-{args.train_samples}"
    t0 = time.perf_counter()
    manifest = finetune_round(cfg, samples, None, model, work / "versions" / name, round=1, version=name,
                              storage_path=work / "ray")
    minutes = (time.perf_counter() - t0) / 60
    tuned = materialize_pipeline(work / "versions" / name, args.out or work / "pipelines" / name)
    print(f"fine-tuning: {manifest.steps} steps in {minutes:.1f} min (Ray Train, {args.threads} threads); "
          f"tuned pipeline in {tuned}", flush=True)
    judge_model("tuned", tuned)
    summary = {"args": vars(args), "finetune_minutes": minutes, "steps": manifest.steps,
               "results": {f"{m}/{s}": r.to_dict() for (m, s), r in results.items()}}
    (work / f"ceiling-seed{args.seed}.json").write_text(json.dumps(summary, indent=2, default=str))


if __name__ == "__main__":
    main()
