"""The online objectives benchmark (issue 23): the paper's reward-weighted likelihood against the
negative-aware objective (DiffusionNFT form), round after round, from the same base and the same
rollouts' seeds.

Per round r = 1..R and per arm (an arm is a `finetune.objective`):
1. Rollouts: the arm's current model (the base at r = 1, its version r − 1 after) draws --prompts
   training prompts × --seeds-per-prompt seeds, unguided, with the pipeline's own scheduler, at
   --gen-steps steps (bench_finetune_alignment.judged_rows, as the generator actors sample). The
   (prompt, seed) pairs depend on r and --rollout-seed only, as online/steps.py:round_items does,
   so the arms draw the same prompts with the same noise; at r = 1 they share the very samples.
2. Rewards (objectives_rewards.py): --reward oracle, r = the judge's verdict; --reward model, the
   loop's reward model trained on every simulated label of the arm so far (judge's verdict flipped
   with probability --label-noise), scoring the round's samples.
3. One `finetune_round` (Ray Train) from the arm's previous version on the round's samples only.
   reward_weighted: r as it is (the paper). negative_aware: reward_normalization='prompt' (r' in
   [0, 1] within each prompt's group of seeds), v_old = the parent version, frozen for the round.
4. Judging the new version (t2i_rlhf.evaluation): --eval-per-category images per category on
   training and on held-out prompts at --eval-seed, unguided; SE, clean rate, FD.
A table per round (ceiling, base, then arm × split) and a results JSON after every round.

Each step is cached under --work, keyed by what determines it: re-running with another
--eval-seed only re-judges (settings chosen on one seed, reported on another), more --rounds
extend a run, and an interrupted fine-tuning round resumes from its Ray Train checkpoint.

    HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled nice -n 10 .venv/bin/python benchmarks/bench_objectives.py \
        --reward oracle --rounds 4 --prompts 64 --seeds-per-prompt 16 --out runs/objectives-pipelines \
        [--ceiling runs/bench-ceiling/ceiling-seed0.json]        # then --eval-seed 1 to report
About 50 min on 2 free cores for these 4 rounds (a round and arm: ~3 min of rollouts, ~1 min of
fine-tuning, ~2.5 min of judging; --reward model adds ~0.5 min); --eval-every 2 saves a third.
A smoke test (-v keeps Ray's and the libraries' INFO lines):
    --rounds 2 --prompts 4 --seeds-per-prompt 2 --batch-size 4 --max-steps 2 --eval-per-category 2 --gen-steps 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from bench_finetune_alignment import judged_rows, write_samples
from objectives_report import Row, ceiling_rows, load_eval, row_dict, table, warn_low_clean
from objectives_rewards import model_rewards

from t2i_rlhf.evaluation import EvalResult, eval_prompts, generate, grid_items, load_pipeline, save_grid, score_images
from t2i_rlhf.logs import QUIET_ENV, quiet_diffusers_loading
from t2i_rlhf.shapes.captions import load_policy, write_pretrain_parquet
from t2i_rlhf.shapes.prompts import Prompt, sample_prompts
from t2i_rlhf.training.finetune.config import FinetuneConfig
from t2i_rlhf.training.finetune.model import materialize_pipeline
from t2i_rlhf.training.finetune.trainer import finetune_round

log = logging.getLogger("bench_objectives")
OBJECTIVES = ("reward_weighted", "negative_aware")
GUIDANCE = 1.0  # rollouts and judging alike: unguided, as the loop's configs sample and judge


def quiet_libraries() -> None:
    """Library chatter off, as the loop's entry points have it (t2i_rlhf.logs): the environment
    reaches the Ray workers (init_ray passes it on), where Ray Data's and Ray Train's lines come from,
    so the per-round tables are not lost among them."""
    from transformers.utils import logging as transformers_logging

    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    quiet_diffusers_loading()
    transformers_logging.disable_progress_bar()  # imported before the environment was set
    transformers_logging.set_verbosity_error()


def short_hash(*parts: object) -> str:
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]


def cached(path: Path, fn: Callable[..., dict], *args: object) -> dict:
    """fn(*args)'s record, with its wall seconds, computed once: the record is written after the
    step's files, so its presence means the step is complete and a re-run reads it back."""
    if path.exists():
        return json.loads(path.read_text())
    t0 = time.perf_counter()
    record = fn(*args)
    record["seconds"] = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=str))
    return record


@dataclass
class Arm:
    """One objective's lineage: its config, its directory, and where it stands."""

    objective: str
    cfg: FinetuneConfig
    dir: Path
    model: Path  # the current version (the base pipeline before round 1)
    labelled: list[Path] = field(default_factory=list)  # every round's labelled samples (--reward model)
    labels: int = 0
    samples: int = 0
    minutes: float = 0.0
    _pipe: tuple[Path, object] | None = None

    def pipe(self, threads: int):
        """The current model's pipeline, loaded once per version (rollouts and judging share it)."""
        if self._pipe is None or self._pipe[0] != self.model:
            self._pipe = (self.model, load_pipeline(self.model, threads))
        return self._pipe[1]


def arm_config(objective: str, args: argparse.Namespace, cache: Path) -> FinetuneConfig:
    """Everything but the objective is the same for every arm; the NFT arm normalises per prompt."""
    lr = args.lr if args.lr is not None else (3e-4 if args.lora else 5e-5)
    nft = objective == "negative_aware"
    return FinetuneConfig(
        objective=objective, reward_normalization="prompt" if nft else "none", nft_strength=args.nft_strength,
        reward_clip=args.reward_clip, beta=args.beta, batch_size=args.batch_size, epochs=args.epochs,
        max_steps=args.steps_per_round, lr=lr, lora_lr=lr, lora=args.lora, lora_rank=args.lora_rank,
        ema_decay=args.ema_decay, mixed_precision=args.mixed_precision, threads_per_worker=args.threads,
        latent_cache=cache / "pretrain-latents", checkpoint_every=50)


def rollout_items(args: argparse.Namespace, round: int) -> list[tuple[Prompt, int]]:
    """The round's (prompt, seed) pairs: a function of the round and --rollout-seed, not of the arm."""
    prompts = sample_prompts(args.prompts, split="train", seed=args.rollout_seed * 1_000_003 + round)
    k = args.seeds_per_prompt
    return [(p, round * 1_000_000 + i * k + j) for i, p in enumerate(prompts) for j in range(k)]


def rollouts(pipe, args: argparse.Namespace, round: int, out: Path, source: str) -> dict:
    rows = judged_rows(pipe, rollout_items(args, round), args.gen_steps, GUIDANCE, source, batch=args.gen_batch,
                       round=round, id_prefix=f"{out.parent.parent.name}-r{round}")
    write_samples(rows, out)
    good = float(np.mean([r["reward"] for r in rows]))
    log.info("round %d rollouts from %s: %d samples, %.1f%% judged good", round, source, len(rows), 100 * good)
    return {"n": len(rows), "judged_good": good, "source": source}


def judge_model(pipe, label: str, split: str, args: argparse.Namespace, out: Path, grid: bool) -> EvalResult:
    """evaluation.evaluate_model on an already loaded pipeline, the grid only where asked (it costs
    96 more images), cached by eval.json."""
    cached_result = load_eval(out / "eval.json")
    if cached_result is not None:
        return cached_result
    items = eval_prompts(args.eval_per_category, split, args.eval_seed)
    images = generate(pipe, items, args.gen_steps, GUIDANCE, args.gen_batch, progress=False)
    result = score_images(label, [p for p, _ in items], images, [s for _, s in items], args.clip)
    result.extra = {"split": split, "steps": args.gen_steps, "guidance": GUIDANCE, "seed": args.eval_seed}
    out.mkdir(parents=True, exist_ok=True)
    if grid:
        g_items = grid_items(split)
        g_images = generate(pipe, g_items, args.gen_steps, GUIDANCE, args.gen_batch, progress=False)
        save_grid(out / "grid.png", [str(p) for p, _ in g_items[::8]], g_images)
    (out / "eval.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result


def eval_dir(root: Path, split: str, args: argparse.Namespace) -> Path:
    return root / f"eval-{split}-pc{args.eval_per_category}-st{args.gen_steps}-seed{args.eval_seed}"


def run_round(arm: Arm, round: int, args: argparse.Namespace, shared: Path, pretrain: Path | None) -> dict:
    """Rollouts, rewards and one fine-tuning round for one arm; returns the round's records."""
    lineage = shared if round == 1 else arm.dir  # round 1: the same base, so the same samples
    d = lineage / f"round-{round:04d}"
    mine = arm.dir / f"round-{round:04d}"
    source = "base" if round == 1 else f"{arm.objective}-r{round - 1:04d}"
    roll = cached(d / "rollouts.json", lambda: rollouts(arm.pipe(args.threads), args, round, d / "rollouts.parquet",
                                                        source))
    if args.reward == "oracle":
        rew, scored = {"labels": 0}, d / "rollouts.parquet"
    else:
        rew = cached(d / "rewards.json", model_rewards, d / "rollouts.parquet", list(arm.labelled), d, args.clip,
                     args.labels_per_round, args.label_noise, [args.rollout_seed, round], args.threads,
                     args.work / "cache" / "reward-embeddings.npz")
        arm.labelled.append(d / "labelled.parquet")
        scored = d / "scored.parquet"
    cfg = arm.cfg.model_copy(update={"seed": round})  # fresh noise and order each round, the same in every arm
    version = f"{arm.dir.name}-r{round:04d}"

    def tune() -> dict:
        m = finetune_round(cfg, scored, pretrain, arm.model, mine / "model", round=round, version=version,
                           storage_path=args.work / "ray")
        return {"version": version, "parent": str(arm.model), "steps": m.steps, "metrics": m.metrics}

    ft = cached(mine / "finetune.json", tune)
    arm.model = mine / "model"
    arm.samples += roll["n"]
    arm.labels += rew["labels"]
    arm.minutes += (roll["seconds"] + rew.get("seconds", 0.0) + ft["seconds"]) / 60
    log.info("%s round %d: %d steps; rollouts %.0f s, rewards %.0f s, fine-tuning %.0f s", arm.objective, round,
             ft["steps"], roll["seconds"], rew.get("seconds", 0.0), ft["seconds"])
    return {"rollouts": roll, "rewards": rew, "finetune": ft}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 epilog="See the module docstring for what each arm does.")
    ap.add_argument("--model", type=Path, default=Path("models/shapes-sd"), help="the base diffusers pipeline")
    ap.add_argument("--clip", type=Path, default=Path("models/shapes-clip"), help="FD space, reward backbone")
    ap.add_argument("--work", type=Path, default=Path("runs/bench-objectives"), help="samples, versions, caches")
    ap.add_argument("--out", type=Path, help="save each arm's final model here as a full diffusers directory")
    ap.add_argument("--ceiling", type=Path, help="bench_ceiling.py's result JSON: the upper rows")
    ap.add_argument("--arms", default=",".join(OBJECTIVES), help="comma-separated objectives")
    ap.add_argument("--reward", choices=["oracle", "model"], default="oracle")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=64, help="training prompts per round")
    ap.add_argument("--seeds-per-prompt", type=int, default=16)
    ap.add_argument("--rollout-seed", type=int, default=0, help="seed of the rounds' prompts")
    ap.add_argument("--gen-steps", type=int, default=20, help="sampling steps, rollouts and judging")
    ap.add_argument("--gen-batch", type=int, default=32)
    ap.add_argument("--labels-per-round", type=int, help="--reward model: samples labelled a round (default all)")
    ap.add_argument("--label-noise", type=float, default=0.1, help="--reward model: share of verdicts flipped")
    ap.add_argument("--lr", type=float, help="learning rate (default 5e-5; 3e-4 with --lora)")
    ap.add_argument("--epochs", type=float, default=2.0, help="passes over a round's samples")
    ap.add_argument("--steps-per-round", "--max-steps", type=int, help="optimizer steps a round (overrides --epochs)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--nft-strength", type=float, default=1.0, help="negative_aware: DiffusionNFT's beta")
    ap.add_argument("--reward-clip", type=float, default=1.0, help="negative_aware: per-prompt clip, in stds")
    ap.add_argument("--beta", type=float, default=0.0, help="weight of the paper's pre-training NLL term")
    ap.add_argument("--pretrain", type=int, default=4096, help="pre-training examples when --beta > 0")
    ap.add_argument("--ema-decay", type=float, default=0.0, help="export an EMA of the weights (0: raw)")
    ap.add_argument("--lora", action="store_true", help="train a LoRA adapter instead of the whole UNet")
    ap.add_argument("--lora-rank", type=int, default=32)
    ap.add_argument("--mixed-precision", choices=["auto", "no", "bf16"], default="bf16",
                    help="bf16 trains ~1.6x faster on CPU; auto is fp32 on CPU, as the loop's configs")
    ap.add_argument("--eval-per-category", type=int, default=96, help="judged images per category and split")
    ap.add_argument("--eval-seed", type=int, default=0, help="evaluation prompts' and noise's seed")
    ap.add_argument("--eval-every", type=int, default=1, help="judge every k-th round (the last always)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("-v", "--verbose", action="store_true", help="keep Ray's and the libraries' INFO lines")
    args = ap.parse_args()
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if not args.arms or set(args.arms) - set(OBJECTIVES):
        ap.error(f"--arms takes a comma-separated subset of {', '.join(OBJECTIVES)}")
    return args


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.verbose:
        quiet_libraries()
    args.work, args.model, args.clip = args.work.resolve(), args.model.resolve(), args.clip.resolve()
    cache = args.work / "cache"
    rollout_key = short_hash(str(args.model), str(args.clip), args.prompts, args.seeds_per_prompt, args.rollout_seed,
                             args.gen_steps, args.reward, args.labels_per_round, args.label_noise)
    shared = args.work / f"shared-{args.reward}-{rollout_key}"
    pretrain = None
    if args.beta > 0:
        policy = load_policy(args.model)  # the base's own pre-training captions, as the run's β term
        pretrain = args.work / f"pretrain-{args.pretrain}-{policy.key}"
        if not pretrain.exists():
            write_pretrain_parquet(pretrain, args.pretrain, first_seed=70_000_000, policy=policy)
    arms = []
    for objective in args.arms:
        cfg = arm_config(objective, args, cache)
        arm_dir = args.work / f"{objective}-{args.reward}-{short_hash(rollout_key, cfg.config_hash())}"
        arms.append(Arm(objective, cfg, arm_dir, args.model))
        arm_dir.mkdir(parents=True, exist_ok=True)
        (arm_dir / "config.json").write_text(cfg.model_dump_json(indent=2))
    results_path = args.work / f"results-{args.reward}-{rollout_key}-seed{args.eval_seed}.json"

    base_dir = args.work / f"base-{short_hash(str(args.model), str(args.clip))}"
    base = {s: judge_model(arms[0].pipe(args.threads), "base", s, args, eval_dir(base_dir, s, args), grid=True)
            for s in ("train", "heldout")}
    top = ceiling_rows(args.ceiling, args.eval_per_category, args.eval_seed) if args.ceiling else []
    top += [Row("base", 0, s, r) for s, r in base.items()]
    print(table(top), flush=True)
    if args.ceiling:
        print(f"(ceiling: {args.ceiling}; its change is against its own base's rows in that file)")

    history, warnings = [], []
    for rnd in range(1, args.rounds + 1):
        rows, records = [], {}
        for arm in arms:
            records[arm.objective] = run_round(arm, rnd, args, shared, pretrain)
            if rnd % args.eval_every and rnd != args.rounds:
                continue
            mine = arm.dir / f"round-{rnd:04d}"
            for split in ("train", "heldout"):
                t0 = time.perf_counter()
                result = judge_model(arm.pipe(args.threads), f"{arm.objective}-r{rnd:04d}", split, args,
                               eval_dir(mine, split, args), grid=rnd == args.rounds)
                records[arm.objective][f"eval_{split}_s"] = time.perf_counter() - t0
                rows.append(Row(arm.objective, rnd, split, result, base[split],
                                None if args.reward == "oracle" else arm.labels, arm.samples, arm.minutes))
        warnings += warn_low_clean(rows)
        if rows:
            print(f"\nround {rnd} ({args.reward} reward; labels and minutes are the arm's totals so far, "
                  "evaluation excluded)", flush=True)
            print(table(top + rows), flush=True)
        history.append({"round": rnd, "arms": records, "rows": [row_dict(r) for r in rows]})
        results_path.write_text(json.dumps({
            "args": vars(args), "configs": {a.objective: a.cfg.model_dump(mode="json") for a in arms},
            "top": [row_dict(r) for r in top], "rounds": history, "low_clean": warnings,
        }, indent=2, default=str))
    if args.out:
        for arm in arms:
            path = materialize_pipeline(arm.model, args.out.resolve() / arm.objective)
            print(f"{arm.objective}: final model ({arm.model.name} of {arm.dir.name}) saved as {path}")
    print(f"results: {results_path}")
    if warnings:
        print(f"!!! {len(warnings)} judged row(s) below the clean floor (⚠ LOW in the tables; listed in the JSON's "
              "low_clean): their alignment figures mislead")


if __name__ == "__main__":
    main()
