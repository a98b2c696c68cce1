"""One generation round as a stream: generators -> scorers -> buffer.

Each chunk of (prompt, seed) pairs becomes a chain of three actor calls whose object refs are
handed straight to the next stage, so a chunk is scored as soon as it is generated (while the
generators work on the next chunks) and data never passes through the driver. The driver only
keeps each generator busy, bounds the chunks in flight (so a full buffer, which makes puts wait,
stops new generation instead of piling up results), and collects small put receipts.

Actors are placed in one placement group with a bundle per actor, built from the per-actor
resources in the config: `num_gpus=1` gives each generator a GPU on a cluster, `num_cpus=1`
a CPU here, with the same code. Ray restarts a generator or scorer that dies (`max_restarts`); a
chunk it failed is stored again once the actor is back at the driver's version (actors/restarts.py),
and the buffer's dedup by sample id keeps every sample once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from t2i_rlhf.actors.buffer import SampleBufferActor
from t2i_rlhf.actors.generator import GenerationConfig, GeneratorActor, check_pipeline_dir
from t2i_rlhf.actors.restarts import (
    MAX_ATTEMPTS,
    ActorGroup,
    as_group,
    generator_group,
    is_recoverable,
    restart_options,
    scorer_group,
    stale_role,
)
from t2i_rlhf.actors.scorer import RewardScorerActor, ScoreFn
from t2i_rlhf.model_version import BASE_VERSION
from t2i_rlhf.ray_runtime import resource_bundle

log = logging.getLogger(__name__)


@dataclass
class RoundSummary:
    """What a round produced, how fast, and how the reward model saw it."""

    round: int
    requested: int
    generated: int  # samples that reached the buffer (added + duplicates)
    added: int
    duplicates: int
    scored: int
    wall_s: float
    images_per_s: float
    reward_mean: float | None
    reward_std: float | None
    reward_min: float | None
    reward_max: float | None
    model_versions: list[str]
    reward_model_versions: list[str]
    first_score_start: float | None  # wall-clock time (time.time()) in the scorer processes
    last_generation_end: float | None
    resubmitted: int = 0  # chunks submitted again after a generator or scorer was lost

    @property
    def overlap_s(self) -> float:
        """How long scoring ran alongside generation (> 0 means the stages streamed)."""
        if self.first_score_start is None or self.last_generation_end is None:
            return 0.0
        return max(0.0, self.last_generation_end - self.first_score_start)


def _check_items(items: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    items = [(str(p), int(s)) for p, s in items]
    if not items:
        raise ValueError("the prompt list is empty: a generation round needs at least one (prompt, seed)")
    empty = [p for p, _ in items if not p.strip()]
    if empty:
        raise ValueError(f"{len(empty)} prompts are empty strings")
    if len(set(items)) != len(items):
        raise ValueError("the round repeats (prompt, seed) pairs; each pair makes one sample id")
    return items


def run_generation_round(
    round: int,
    items: Sequence[tuple[str, int]],
    generators: Sequence,
    scorers: Sequence,
    buffer,
    *,
    batch_size: int = 8,
    max_in_flight: int = 2,
    put_timeout_s: float | None = 300.0,
    stall_timeout_s: float = 600.0,
) -> RoundSummary:
    """Generate, score and store every (prompt, seed) of a round as a stream.

    generators / scorers are ActorGroups (see actors/restarts.py; a plain list of handles expects
    no version), buffer a SampleBufferActor; with no scorers, samples are stored unscored (round 0
    of the paper has no reward model yet). `max_in_flight` chunks are queued per generator. A chunk
    failed by a lost or restarted actor is submitted again once that actor is back at its group's
    version. Raises the failing stage's error, or TimeoutError if nothing finishes for
    `stall_timeout_s`.
    """
    items = _check_items(items)
    generators = as_group(generators, generator_group)
    scorers = as_group(scorers, scorer_group)
    if not generators:
        raise ValueError("run_generation_round needs at least one generator")
    if batch_size < 1 or max_in_flight < 1:
        raise ValueError("batch_size and max_in_flight must be >= 1")
    chunks = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    start = time.time()
    todo = deque(range(len(chunks)))  # chunk indices to submit, resubmissions first
    attempts = [0] * len(chunks)
    next_scorer = 0
    busy = [0] * len(generators)
    gen_refs: dict[ray.ObjectRef, int] = {}  # generate() ref -> generator index
    put_refs: dict[ray.ObjectRef, tuple[int, int, int | None]] = {}  # put() ref -> (chunk, generator, scorer)
    max_chains = max_in_flight * len(generators) + len(scorers)
    receipts: list[dict] = []

    def submit(g: int) -> None:
        nonlocal next_scorer
        c = todo.popleft()
        attempts[c] += 1
        ref = generators[g].generate.remote(round, chunks[c], expect_version=generators.version)
        gen_refs[ref] = g
        busy[g] += 1
        s = None
        if scorers:
            s = next_scorer % len(scorers)
            ref = scorers[s].score_batch.remote(ref, expect_version=scorers.version)
            next_scorer += 1
        put_refs[buffer.put.remote(ref, put_timeout_s)] = (c, g, s)

    def recover(error: Exception, c: int, g: int, s: int | None) -> None:
        """Bring the chain's restarted actor back to its group's version and queue the chunk again;
        re-raise what no restart explains. Nothing of a failed chain was stored: its put did not run."""
        if not is_recoverable(error) or attempts[c] >= MAX_ATTEMPTS:
            raise error
        role = stale_role(error)
        log.warning("round %d: chunk %d failed (%s: %s); resubmitting it", round, c, type(error).__name__,
                    str(error).splitlines()[0] if str(error) else "")
        if role != "scorer":
            generators.resync(g)
        if role != "generator" and s is not None:
            scorers.resync(s)
        todo.appendleft(c)

    resubmitted = 0
    while todo or put_refs:
        while todo and len(put_refs) < max_chains:
            g = int(np.argmin(busy))
            if busy[g] >= max_in_flight:
                break
            submit(g)
        ready, _ = ray.wait([*gen_refs, *put_refs], num_returns=1, timeout=stall_timeout_s)
        if not ready:
            raise TimeoutError(
                f"round {round}: no generation, scoring or buffer call finished in {stall_timeout_s:.0f} s "
                f"({len(receipts)}/{len(chunks)} chunks stored); is an actor stuck or the buffer full?"
            )
        for ref in ready:
            if ref in gen_refs:
                busy[gen_refs.pop(ref)] -= 1
                continue
            chain = put_refs.pop(ref)
            try:
                receipts.append(ray.get(ref))  # re-raises a failure of any stage of this chain
            except Exception as e:
                recover(e, *chain)
                resubmitted += 1
    wall = time.time() - start

    rewards = np.array([r for rec in receipts for r in rec["rewards"] if r is not None], np.float64)
    added = sum(rec["added"] for rec in receipts)
    duplicates = sum(rec["duplicates"] for rec in receipts)
    gen_times = [t for tl in ray.get([g.timeline.remote() for g in generators]) for t in tl if t[0] >= start]
    score_times = [t for tl in ray.get([s.timeline.remote() for s in scorers]) for t in tl if t[0] >= start]
    summary = RoundSummary(
        round=round, requested=len(items), generated=added + duplicates, added=added, duplicates=duplicates,
        scored=int(rewards.size), wall_s=wall, images_per_s=(added + duplicates) / wall if wall > 0 else 0.0,
        reward_mean=float(rewards.mean()) if rewards.size else None,
        reward_std=float(rewards.std()) if rewards.size else None,
        reward_min=float(rewards.min()) if rewards.size else None,
        reward_max=float(rewards.max()) if rewards.size else None,
        model_versions=sorted(set(ray.get([g.version.remote() for g in generators]))),
        reward_model_versions=sorted({str(v) for v in ray.get([s.version.remote() for s in scorers])}),
        first_score_start=min((t[0] for t in score_times), default=None),
        last_generation_end=max((t[1] for t in gen_times), default=None),
        resubmitted=resubmitted,
    )
    log.info("round %d: %d samples (%d new) in %.1f s, %.2f img/s, reward mean %s%s",
             round, summary.generated, added, wall, summary.images_per_s, summary.reward_mean,
             f", {resubmitted} chunks resubmitted after lost actors" if resubmitted else "")
    return summary


@dataclass
class RolloutActors:
    """The actors of a rollout and the placement group that holds their resources."""

    generators: ActorGroup
    scorers: ActorGroup
    buffer: object
    placement_group: PlacementGroup | None = None
    owned: list = field(default_factory=list)  # actors to kill on shutdown (not a shared buffer)

    def shutdown(self) -> None:
        for actor in self.owned:
            ray.kill(actor)
        if self.placement_group is not None:
            remove_placement_group(self.placement_group)
            self.placement_group = None


def _bundle(num_cpus: float, num_gpus: float, extra: dict[str, float] | None = None) -> dict[str, float]:
    if num_cpus <= 0 and num_gpus <= 0:
        raise ValueError("every actor needs some CPU or GPU in its bundle (num_cpus or num_gpus > 0)")
    return resource_bundle(num_cpus, num_gpus, extra)


def start_actors(
    model_dir: str | Path,
    storage: str | Path,
    *,
    n_generators: int = 1,
    config: GenerationConfig | dict | None = None,
    scorer_model: ScoreFn | str | Path | None = None,
    scorer_version: str | None = None,
    n_scorers: int = 1,
    scorer_num_cpus: float = 1.0,
    scorer_num_gpus: float = 0.0,
    buffer=None,
    capacity: int = 4096,
    model_version: str = BASE_VERSION,
    strategy: str = "PACK",
    ready_timeout_s: float = 300.0,
    resources: dict[str, float] | None = None,
    max_restarts: int = 3,
) -> RolloutActors:
    """Start N generators and M scorers in one placement group (plus a buffer unless one is
    given), and wait until they are ready, so that bad paths fail here with their own error.
    Ray restarts a generator or scorer up to `max_restarts` times (-1: always, 0: never)."""
    cfg = GenerationConfig.model_validate(config or {})
    check_pipeline_dir(model_dir)
    if n_generators < 1:
        raise ValueError("n_generators must be >= 1")
    n_scorers = n_scorers if scorer_model is not None else 0
    # `resources`: custom Ray resources per generator, e.g. {"gen_node": 0.01} pins generation
    # to the nodes that advertise them.
    bundles = [_bundle(cfg.num_cpus, cfg.num_gpus, resources)] * n_generators
    bundles += [_bundle(scorer_num_cpus, scorer_num_gpus)] * n_scorers
    pg = placement_group(bundles, strategy=strategy)
    try:
        ray.get(pg.ready(), timeout=ready_timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise RuntimeError(
            f"could not reserve {bundles} ({strategy}) within {ready_timeout_s:.0f} s; "
            f"cluster resources available: {ray.available_resources()}"
        ) from None

    def placed(i: int) -> PlacementGroupSchedulingStrategy:
        return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i)

    restarts = restart_options(max_restarts)
    generators = generator_group([
        GeneratorActor.options(
            num_cpus=cfg.num_cpus, num_gpus=cfg.num_gpus, resources=resources or None,
            scheduling_strategy=placed(i), **restarts,
        ).remote(str(model_dir), cfg.model_dump(), model_version)
        for i in range(n_generators)
    ], model_version, ready_timeout_s)
    scorers = scorer_group([
        RewardScorerActor.options(
            num_cpus=scorer_num_cpus, num_gpus=scorer_num_gpus, scheduling_strategy=placed(n_generators + j),
            **restarts,
        ).remote(scorer_model, scorer_version)
        for j in range(n_scorers)
    ], scorer_version, ready_timeout_s)
    owned = [*generators, *scorers]
    if buffer is None:
        buffer = SampleBufferActor.remote(str(storage), capacity)
        owned.append(buffer)
    actors = RolloutActors(generators, scorers, buffer, pg, owned)
    try:
        ray.get([g.version.remote() for g in generators] + [s.version.remote() for s in scorers]
                + [buffer.stats.remote()], timeout=ready_timeout_s)
    except Exception:
        actors.shutdown()
        raise
    log.info("started %d generators, %d scorers (%s)", n_generators, n_scorers, bundles)
    return actors

