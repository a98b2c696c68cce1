"""The steps of one round, each named as in the paper and each safe to repeat.

A step reads what earlier steps left (the buffer's Parquet, the feedback service, version
directories) and returns a small dict that the driver records in the run state."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray
from tqdm.auto import tqdm

from t2i_rlhf.actors.buffer import load_round
from t2i_rlhf.actors.restarts import ActorGroup, call_each, restart_options, scorer_group
from t2i_rlhf.actors.rollout import RolloutActors, run_generation_round
from t2i_rlhf.actors.scorer import RewardScorerActor
from t2i_rlhf.config import ExperimentConfig
from t2i_rlhf.evaluation import EvalResult, eval_prompts, score_images
from t2i_rlhf.model_version import BASE_VERSION
from t2i_rlhf.online.eval_results import SPLIT_NAMES, SPLIT_SEED_OFFSET, clean_warnings
from t2i_rlhf.online.hindsight import relabel_samples
from t2i_rlhf.online.resources import get_when_scheduled
from t2i_rlhf.online.state import RunState
from t2i_rlhf.ray_runtime import resource_bundle
from t2i_rlhf.samples import decode_png
from t2i_rlhf.services.client import FeedbackClient, aggregate_labels
from t2i_rlhf.services.reliability import labeller_weights
from t2i_rlhf.shapes.prompts import Prompt, sample_prompts

log = logging.getLogger(__name__)


@dataclass
class LoopContext:
    """What every step may use: the config, the run directory, the actors, the service."""

    cfg: ExperimentConfig
    run_dir: Path
    actors: RolloutActors
    feedback: FeedbackClient
    state: RunState
    # reward scorer actors, created once a reward model exists
    scorers: ActorGroup = field(default_factory=lambda: scorer_group([], None))

    def round_dir(self, round: int) -> Path:
        return self.run_dir / f"round-{round:04d}"

    @property
    def samples_root(self) -> str:
        return str(self.run_dir / "samples")


def round_items(cfg: ExperimentConfig, round: int) -> list[tuple[str, int]]:
    """The round's (prompt, seed) pairs: a fixed function of the config and the round."""
    r = cfg.rollout
    n_prompts = -(-r.samples_per_round // r.seeds_per_prompt)
    seed = cfg.run.seed * 1_000_003 + round
    if r.prompts_file:
        lines = [s.strip() for s in Path(r.prompts_file).read_text().splitlines() if s.strip()]
        rng = np.random.default_rng(seed)
        prompts = [lines[i] for i in rng.integers(0, len(lines), n_prompts)]
    else:
        cats = tuple(r.category_weights) if r.category_weights else None
        kw = {"categories": cats, "weights": tuple(r.category_weights.values())} if cats else {}
        prompts = [p.text for p in sample_prompts(n_prompts, split=r.prompt_split, seed=seed, **kw)]
    items = [(p, round * 1_000_000 + i * r.seeds_per_prompt + j)
             for i, p in enumerate(prompts) for j in range(r.seeds_per_prompt)]
    return items[: r.samples_per_round]


# --- 1. generate and score ---------------------------------------------------------------------

def generate_samples(ctx: LoopContext, round: int) -> dict:
    """Images for the round's prompts from the current model, scored by the current reward
    model (if any), streamed into the buffer. Re-running adds only what is missing."""
    summary = run_generation_round(
        round, round_items(ctx.cfg, round), ctx.actors.generators, ctx.scorers, ctx.actors.buffer,
        batch_size=ctx.cfg.rollout.generation.batch_size,
    )
    ray.get(ctx.actors.buffer.release_round.remote(round))
    out = asdict(summary)
    out["overlap_s"] = summary.overlap_s
    out["generator_nodes"] = actor_nodes(ctx.actors.generators)
    return out


def _node_id(actor_self) -> str:
    return ray.get_runtime_context().get_node_id()


def actor_nodes(actors: list) -> list[str]:
    """The Ray node each actor runs on: where a round's work was placed."""
    return ray.get([a.__ray_call__.remote(_node_id) for a in actors])


# --- 2. human feedback ---------------------------------------------------------------------------

def publish_for_labelling(ctx: LoopContext, round: int) -> dict:
    """Choose the samples people should label (random, or those the reward model is least sure
    about) and publish them to the feedback service. Publishing twice is a no-op."""
    lab = ctx.cfg.labelling
    strategy = lab.selection if ctx.scorers else "random"
    chosen = ray.get(ctx.actors.buffer.unlabelled.remote(
        lab.labels_per_round, strategy=strategy, round=round, seed=ctx.cfg.run.seed + round,
        columns=["sample_id", "round", "prompt", "category", "model_version", "image"]))
    result = ctx.feedback.publish_tasks(chosen)
    log.info("round %d: published %d samples for labelling (%s)", round, chosen.num_rows, strategy)
    return {"published": chosen.num_rows, "selection": strategy, **result}


def collect_labels(ctx: LoopContext, round: int) -> dict:
    """Wait until enough of the round's tasks are labelled (or the timeout), then pull every
    label of the round and attach each sample's mean (good=1, bad=0; skips excluded)."""
    lab = ctx.cfg.labelling
    wanted = ctx.state.done(round, "publish")["published"]
    target = int(np.ceil(lab.min_fraction * wanted))
    deadline = time.monotonic() + lab.timeout_s
    with tqdm(total=wanted, desc=f"round {round} labels", mininterval=2) as bar:
        while True:
            rows = ctx.feedback.stats(round=round)["rounds"]
            done = rows[0]["complete"] if rows else 0
            bar.update(done - bar.n)
            if done >= target or time.monotonic() > deadline:
                break
            time.sleep(lab.poll_s)
    if done < target:
        log.warning("round %d: labelling timed out with %d/%d labelled; going on", round, done, wanted)
    rows, _ = ctx.feedback.export_labels()  # every round's: earlier rounds are re-synced below
    labels = [r for r in rows if r["round"] == round]
    weights = reliability_weights(ctx)
    per_sample = aggregate_labels(labels, weights)
    ray.get(ctx.actors.buffer.attach_labels.remote(per_sample))
    kinds = {k: sum(1 for r in labels if r["label"] == k) for k in ("good", "bad", "skip")}
    return {"labelled_samples": len(per_sample), "labels": len(labels), **kinds,
            "down_weighted_labellers": sorted(n for n, w in weights.items() if w < 1),
            "earlier_rounds_changed": resync_earlier_labels(ctx, round, rows, weights)}


def reliability_weights(ctx: LoopContext) -> dict[str, float]:
    """labeller -> weight by accuracy on gold tasks (`labelling.reliability`); {} when off."""
    rel = ctx.cfg.labelling.reliability
    if rel.mode == "off":
        return {}
    return labeller_weights(ctx.feedback.stats()["labellers"], **rel.model_dump())


def resync_earlier_labels(ctx: LoopContext, round: int, rows: list[dict],
                          weights: dict[str, float] | None = None) -> int:
    """Bring earlier rounds' labels up to date with the service's live labels `rows` (its export):
    a label posted after its round was pulled, or one undone since, would otherwise be
    acknowledged and then ignored. The reward model of this round then trains on every live
    label. Returns the samples whose label changed."""
    if round == 0:
        return 0
    live = aggregate_labels((r for r in rows if r["round"] < round), weights)
    buffer = ctx.actors.buffer
    changed: dict[str, tuple[float | None, int]] = {}
    for r in range(round):
        held = ray.get(buffer.samples.remote(r, ["sample_id", "label", "n_labels"])).to_pylist()
        for row in held:
            now = live.get(row["sample_id"], (None, 0))
            same_n = (row["n_labels"] or 0) == now[1]
            if not same_n or (now[1] and abs(row["label"] - now[0]) > 1e-6):  # label is float32
                changed[row["sample_id"]] = now
    if changed:
        ray.get(buffer.attach_labels.remote(changed))
        log.info("round %d: %d earlier samples' labels changed since they were pulled (late or undone)",
                 round, len(changed))
    return len(changed)


# --- 3. reward model -----------------------------------------------------------------------------

LABELLED_COLUMNS = ["prompt", "image", "label", "n_labels"]


def labelled_table(ctx: LoopContext, upto_round: int) -> pa.Table:
    """Every labelled sample so far, with what the reward model reads (not the latents)."""
    tables = [load_round(ctx.samples_root, r, LABELLED_COLUMNS) for r in range(upto_round + 1)]
    table = pa.concat_tables(tables)
    return table.filter(pc.is_valid(table.column("label")))


def train_reward(ctx: LoopContext, round: int) -> dict:
    """r(x, z) on every label so far: MSE + λ · prompt classification (a Ray task)."""
    from t2i_rlhf.training.reward.train import train_reward_model_remote

    version = f"rm-r{round:04d}"
    out = ctx.run_dir / "reward_models" / version
    data = labelled_table(ctx, round)
    cache = ctx.run_dir / "cache" / "reward-embeddings.npz"
    config = ctx.cfg.reward.model_copy(update={"embedding_cache": str(cache)})
    metrics = get_when_scheduled(train_reward_model_remote(data, config, out, version),
                                 what=f"round {round}: the reward-model task",
                                 need=resource_bundle(config.num_cpus, config.num_gpus),
                                 warn_after_s=ctx.cfg.run.resource_wait_warn_s)
    if ctx.scorers:
        ctx.scorers.update(version, str(out))
    else:
        ctx.scorers = start_scorers(ctx.cfg, str(out), version)
    return {"version": version, "location": str(out), "n_labelled": data.num_rows,
            "heldout": metrics["heldout"], "train": metrics["train"]}


def start_scorers(cfg: ExperimentConfig, location: str, version: str) -> ActorGroup:
    """The run's scorer actors on a reward model; they live until the run ends (counted as held
    by online/resources.py from the same fields). Ray restarts one that dies."""
    r = cfg.rollout
    options = {"num_cpus": r.scorer_num_cpus, "num_gpus": r.scorer_num_gpus, **restart_options(r.max_restarts)}
    return scorer_group([RewardScorerActor.options(**options).remote(location, version) for _ in range(r.scorers)],
                        version, timeout_s=r.ready_timeout_s)


def rescore_samples(ctx: LoopContext, round: int) -> dict:
    """Score what this round fine-tunes on with the new reward model: the r_i of the loss. That is
    the round's samples, or with `run.finetune_from: base` every round's so far."""
    first = 0 if ctx.cfg.run.finetune_from == "base" else round
    table = pa.concat_tables(load_round(ctx.samples_root, r) for r in range(first, round + 1))
    batches = table.to_batches(max_chunksize=64)
    scorers = ctx.scorers
    scored = pa.Table.from_batches(call_each(
        scorers, batches, lambda s, b: s.score_batch.remote(b, expect_version=scorers.version)))
    path = ctx.round_dir(round) / "scored.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_whole(scored, path)
    reward = scored.column("reward").to_numpy()
    out = {"path": str(path), "n": scored.num_rows, "reward_mean": float(reward.mean()),
           "reward_std": float(reward.std()), "reward_hist": np.histogram(reward, 10, (0, 1))[0].tolist()}
    if ctx.cfg.hindsight.enabled:
        relabelled, summary = relabel_samples(scored, ctx.cfg, scorers)
        extra = ctx.round_dir(round) / "hindsight.parquet"
        write_whole(relabelled, extra)
        out["hindsight"] = {"path": str(extra), **summary}
    return out


def write_whole(table: pa.Table, path: Path) -> None:
    """Write Parquet through a temporary file, so a killed driver never leaves half a file."""
    pq.write_table(table, path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


# --- 4. reward-weighted fine-tuning ----------------------------------------------------------------

def finetune(ctx: LoopContext, round: int, base: str, pretrain_data: str) -> dict:
    """mean r_i·‖ε − ε_θ‖² + β·NLL on the Ray Train group; re-running resumes the same run."""
    from t2i_rlhf.training.finetune.trainer import finetune_round

    version = f"r{round:04d}"
    out = ctx.run_dir / "models" / version
    rescored = ctx.state.done(round, "rescore")
    samples = [rescored["path"], *([rescored["hindsight"]["path"]] if "hindsight" in rescored else [])]
    manifest = finetune_round(
        ctx.cfg.finetune, samples=samples, pretrain_data=pretrain_data, base=base,
        out_dir=out, round=round, version=version, storage_path=ctx.run_dir / "ray_train",
    )
    return {"version": version, "location": str(out), "steps": manifest.steps, "metrics": manifest.metrics}


def push_weights(ctx: LoopContext, version: str, location: str | None) -> None:
    """New weights to every generator; samples from now on carry `version`."""
    if location is None or version == BASE_VERSION:
        return
    ctx.actors.generators.update(version, location)
    log.info("generators now at model version %s", version)


# --- 5. evaluation ---------------------------------------------------------------------------------

def generate_with_actors(ctx: LoopContext, items: list[tuple[str, int]], chunk: int = 16) -> np.ndarray:
    """Images for (prompt, seed) pairs from the generator actors (current weights), in order,
    sampled with the evaluation's steps and guidance (the rollout may sample differently)."""
    gens, ev = ctx.actors.generators, ctx.cfg.eval
    chunks = [items[s : s + chunk] for s in range(0, len(items), chunk)]
    batches = call_each(gens, chunks, lambda g, c: g.generate.remote(
        -1, c, ev.steps, ev.guidance, expect_version=gens.version))
    return np.stack([decode_png(b) for batch in batches for b in batch.column("image").to_pylist()])


def split_items(cfg: ExperimentConfig, split: str) -> list[tuple[Prompt, int]]:
    """A split's evaluation (prompt, seed) pairs: the same for every model of the run."""
    items = eval_prompts(cfg.eval.per_category, split, seed=cfg.run.seed)
    return [(p, s + SPLIT_SEED_OFFSET[split]) for p, s in items]


def evaluate_current_model(ctx: LoopContext, label: str) -> dict:
    """Judged alignment per category, clean rate and fidelity of the generators' current weights,
    on each of `eval.splits` apart (seen and unseen prompts, as the paper reports them); the same
    prompts and seeds every time. Both splits' images are generated in one batch of calls, so the
    generators stay busy across the split boundary."""
    by_split = {split: split_items(ctx.cfg, split) for split in ctx.cfg.eval.splits}
    flat = [item for items in by_split.values() for item in items]
    images = generate_with_actors(ctx, [(p.text, s) for p, s in flat])
    out, start = {}, 0
    for split, items in by_split.items():
        result: EvalResult = score_images(label, [p for p, _ in items], images[start : start + len(items)],
                                          [s for _, s in items], ctx.cfg.model.clip)
        start += len(items)
        result.extra = {"split": split, "seed_offset": SPLIT_SEED_OFFSET[split]}
        log.info("evaluation of %s on %s:\n%s", label, SPLIT_NAMES[split], result.table())
        out[split] = result.to_dict()
    evaluation = {"model": label, "splits": out}
    for line in clean_warnings(evaluation):
        log.warning("%s", line)
    return evaluation
