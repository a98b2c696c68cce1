"""The online RLHF driver: what `t2i-rlhf run --config ...` and `ray job submit ... -- t2i-rlhf
run` execute. One round reads top to bottom in `run_round`; each step is in online/steps.py.

Every step's result is recorded in the run's state.json once what it wrote is on disk, so the
same command after a crash resumes at the step that was running."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from t2i_rlhf import logs
from t2i_rlhf.actors.rollout import start_actors
from t2i_rlhf.config import ExperimentConfig
from t2i_rlhf.evaluation import grid_items, save_grid
from t2i_rlhf.online import steps
from t2i_rlhf.online.base_eval_cache import cache_dirs, load_base_eval, store_base_eval
from t2i_rlhf.online.eval_results import eval_splits
from t2i_rlhf.online.local_services import (
    labeller_token_hint,
    local_feedback_service,
    simulated_labellers,
    tokens,
)
from t2i_rlhf.online.report import (
    after_rounds,
    evaluation_line,
    paper_table,
    run_warnings,
    timing_line,
    timing_table,
    write_metrics,
    write_report,
)
from t2i_rlhf.online.resources import check_cluster, run_needs
from t2i_rlhf.online.state import RunState, StateStore
from t2i_rlhf.online.timing import timing_records
from t2i_rlhf.ray_runtime import init_ray
from t2i_rlhf.services.client import FeedbackClient
from t2i_rlhf.shapes.captions import load_policy, write_pretrain_parquet

log = logging.getLogger(__name__)


class Driver:
    def __init__(self, ctx: steps.LoopContext, store: StateStore) -> None:
        self.ctx, self.store = ctx, store

    @property
    def state(self) -> RunState:
        return self.ctx.state

    def step(self, round: int, name: str, fn: Callable[[], dict]) -> dict:
        """Run a step unless the state says it is done; record its result once it is."""
        done = self.state.done(round, name)
        if done is not None:
            log.info("round %d: %s already done", round, name)
            return done
        started, t0 = time.time(), time.monotonic()
        log.info("round %d: %s ...", round, name)
        result = fn()
        result["seconds"] = round_s(time.monotonic() - t0)
        result["started_at"] = float(np.round(started, 3))  # Unix time: comparable across a resume
        self.state.mark(round, name, result)
        self.state.timing = timing_records(self.state.rounds)
        self.store.save(self.state)
        return result


def round_s(x: float) -> float:
    return float(np.round(x, 1))


def run_round(d: Driver, k: int, pretrain_data: str) -> None:
    """One round of Lee et al. (2023): generate, get human feedback, learn the reward, fine-tune
    with reward-weighted likelihood + β·NLL, push the weights, evaluate."""
    ctx = d.ctx
    d.step(k, "generate", lambda: steps.generate_samples(ctx, k))
    d.step(k, "publish", lambda: steps.publish_for_labelling(ctx, k))
    d.step(k, "labels", lambda: steps.collect_labels(ctx, k))
    rm = d.step(k, "reward_model", lambda: steps.train_reward(ctx, k))
    d.state.reward_model_version, d.state.reward_model_location = rm["version"], rm["location"]
    d.step(k, "rescore", lambda: steps.rescore_samples(ctx, k))
    base = ctx.cfg.model.base
    if ctx.cfg.run.finetune_from == "previous":
        base = d.state.model_location or base
    tuned = d.step(k, "finetune", lambda: steps.finetune(ctx, k, base, pretrain_data))
    if d.state.model_version != tuned["version"]:
        steps.push_weights(ctx, tuned["version"], tuned["location"])
        d.state.model_version, d.state.model_location = tuned["version"], tuned["location"]
        d.store.save(d.state)
    if ctx.cfg.eval.every_round or k == ctx.cfg.run.rounds - 1:
        ev = d.step(k, "evaluate", lambda: steps.evaluate_current_model(ctx, tuned["version"]))
        log.info("round %d: %s", k, evaluation_line(f"{after_rounds(k + 1)} ({tuned['version']})", ev))
    if str(k) in d.state.timing:
        log.info("round %d: %s", k, timing_line(d.state.timing[str(k)]))
    write_metrics(ctx.run_dir, d.state)


@contextlib.contextmanager
def feedback_endpoint(cfg: ExperimentConfig, run_dir: Path) -> Iterator[FeedbackClient]:
    """The configured feedback service, or one started for the run (with simulated labellers
    if the config asks for them)."""
    lab = cfg.labelling
    admin, labeller = tokens(run_dir, lab.admin_token_env, lab.labeller_token_env)
    with contextlib.ExitStack() as stack:
        url = lab.url or stack.enter_context(local_feedback_service(
            run_dir / "feedback.db", admin, labeller, run_dir / "logs" / "feedback.log"))
        if sim := lab.simulate:
            stack.enter_context(simulated_labellers(url, labeller, sim.workers, sim.noise, cfg.run.seed,
                                                    run_dir / "logs" / "labellers.log",
                                                    labels_per_s=sim.labels_per_s, rate_spread=sim.rate_spread))
        client = stack.enter_context(FeedbackClient(url, admin))
        client.health()
        print(f"feedback service: {url}  (labelling page: {url}/)\n"
              f"labeller token: {labeller_token_hint(run_dir, lab.admin_token_env, lab.labeller_token_env)}",
              flush=True)
        yield client


def ensure_pretrain_data(cfg: ExperimentConfig, run_dir: Path) -> str:
    """The β-term data: the configured Parquet, or the shapes world's rendered once per run with
    the captions the base was pre-trained on (the paper replays the base's own pre-training data)."""
    if cfg.pretrain_data:
        return cfg.pretrain_data
    path = run_dir / "pretrain"
    if not (path / "_done").exists():
        write_pretrain_parquet(path, cfg.pretrain_examples, first_seed=50_000_000,
                               policy=load_policy(cfg.model.base))
        (path / "_done").write_text("ok\n")
    return str(path)


def run_experiment(cfg: ExperimentConfig) -> RunState:
    """The whole experiment, resuming where the run directory says. The console gets progress and
    the lines a person needs; <run>/logs/driver.log gets every log record, libraries' included."""
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with logs.to_file(run_dir / "logs" / "driver.log"):
        return _run_experiment(cfg, run_dir)


def _run_experiment(cfg: ExperimentConfig, run_dir: Path) -> RunState:
    t0 = time.monotonic()
    store = StateStore(run_dir)
    state = store.load()
    needs = run_needs(cfg)
    init_ray(min_cpus=needs.local_cpus())  # local: room for the actors and the largest step together
    check_cluster(cfg, needs)  # before any actor: a cluster too small is an error now, not a wait forever
    pretrain_data = ensure_pretrain_data(cfg, run_dir)
    r = cfg.rollout
    actors = start_actors(
        cfg.model.base, str(run_dir / "samples"), n_generators=r.generators, config=r.generation,
        capacity=r.buffer_capacity, strategy=r.placement_strategy, ready_timeout_s=r.ready_timeout_s,
        resources=r.generator_resources, max_restarts=r.max_restarts,
    )
    try:
        with feedback_endpoint(cfg, run_dir) as feedback:
            ctx = steps.LoopContext(cfg, run_dir, actors, feedback, state)
            d = Driver(ctx, store)
            if state.reward_model_location:  # resumed: the scorers take up the last reward model
                ctx.scorers = steps.start_scorers(cfg, state.reward_model_location, state.reward_model_version)
            steps.push_weights(ctx, state.model_version, state.model_location)
            grid = grid_items("heldout", per_category=2)
            ensure_base_eval(ctx, store, grid)
            for k in range(cfg.run.rounds):
                run_round(d, k, pretrain_data)
            save_grid(run_dir / "grid_final.png", [p.text for p, _ in grid[::8]],
                      steps.generate_with_actors(ctx, [(p.text, s) for p, s in grid]))
            state.finished = True
            store.save(state)
            write_metrics(run_dir, state)
            report = write_report(run_dir, state, run_dir / "grid_base.png", run_dir / "grid_final.png",
                                  wall_s=time.monotonic() - t0)
    finally:
        actors.shutdown()
    last = state.done(cfg.run.rounds - 1, "evaluate")
    if last:
        print("\nJudged alignment (oracle judge), base vs tuned, on seen and unseen prompts:\n")
        print(paper_table(state.base_eval, last, after_rounds(cfg.run.rounds)))
    if table := timing_table(state):
        print("\nWall time per round, and how much of it the labellers and the compute sat idle:\n")
        print(table)
    for line in run_warnings(state):
        log.warning("%s", line)
    print(f"\nreport: {report}\nlogs: {run_dir / 'logs'}\nwall time: {(time.monotonic() - t0) / 60:.1f} min",
          flush=True)
    return state


def ensure_base_eval(ctx: steps.LoopContext, store: StateStore, grid: list) -> None:
    """The base model's evaluation on every configured split, from the cache or generated, and
    its grid. Only while the generators still hold the base: a run resumed past round 0 whose
    base evaluation (written by older code) lacks a split keeps what it has, and its report
    shows the tuned model alone on that split (re-evaluating the base would mean reloading it)."""
    state, cfg, run_dir = ctx.state, ctx.cfg, ctx.run_dir
    missing = [s for s in cfg.eval.splits if s not in eval_splits(state.base_eval)]
    if not missing:
        return
    if state.model_version != "base":
        if state.base_eval is not None:
            log.warning("the base model was not evaluated on %s (run state from older code); the report "
                        "shows the tuned model alone there", ", ".join(missing))
        return
    cached_at, readable = cache_dirs(cfg)  # fingerprints the weights once, for the loads and the store
    state.base_eval = next(filter(None, (load_base_eval(d, run_dir / "grid_base.png") for d in readable)), None)
    if state.base_eval is None:
        state.base_eval = steps.evaluate_current_model(ctx, "base")
        save_grid(run_dir / "grid_base.png", [p.text for p, _ in grid[::8]],
                  steps.generate_with_actors(ctx, [(p.text, s) for p, s in grid]))
        store_base_eval(cached_at, state.base_eval, run_dir / "grid_base.png")
    log.info("%s", evaluation_line("base", state.base_eval))
    store.save(state)


def parse_overrides(pairs: list[str]) -> dict:
    import yaml

    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError(f"--set expects key.path=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out

