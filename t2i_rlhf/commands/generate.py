"""`t2i-rlhf generate`: one generation round on Ray (generators -> scorers -> sample buffer),
outside the full loop: to fill a run's sample store, or to try placement and throughput."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from t2i_rlhf.actors.generation_config import GenerationConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate (and score) one round of samples into a sample store")
    p.add_argument("--model", type=Path, default=Path("models/shapes-sd"), help="diffusers pipeline dir")
    p.add_argument("--storage", required=True, help="sample store: a directory or a pyarrow filesystem URI")
    p.add_argument("--round", type=int, default=0)
    p.add_argument("--prompts", type=int, default=64, help="shapes-world prompts to sample")
    p.add_argument("--prompt-file", type=Path, default=None, help="one prompt per line instead")
    p.add_argument("--seeds-per-prompt", type=int, default=1)
    p.add_argument("--seed", type=int, default=0, help="seed of the prompt sampler")
    p.add_argument("--split", default="train", help="prompt split of the shapes world")
    p.add_argument("--weights", type=Path, default=None, help="a model-version dir to load first")
    p.add_argument("--generators", type=int, default=1)
    p.add_argument("--scorer", default="judge", help="'judge' (oracle), 'none', or a reward-model dir")
    p.add_argument("--scorers", type=int, default=1)
    p.add_argument("--capacity", type=int, default=4096)
    d = GenerationConfig()
    for name in ("steps", "guidance_scale", "batch_size", "num_cpus", "num_gpus", "torch_threads"):
        p.add_argument("--" + name.replace("_", "-"), type=type(getattr(d, name)), default=getattr(d, name))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import ray

    from t2i_rlhf.actors.rollout import run_generation_round, start_actors
    from t2i_rlhf.actors.scorer import judge_reward
    from t2i_rlhf.model_version import read_manifest
    from t2i_rlhf.ray_runtime import init_ray
    from t2i_rlhf.shapes import sample_prompts

    if args.prompt_file:
        prompts = [line.strip() for line in args.prompt_file.read_text().splitlines() if line.strip()]
    else:
        prompts = [p.text for p in sample_prompts(args.prompts, split=args.split, seed=args.seed)]
    k = args.seeds_per_prompt
    items = [(p, args.round * 1_000_000 + i * k + j) for i, p in enumerate(prompts) for j in range(k)]
    scorer = {"judge": judge_reward, "none": None}.get(args.scorer, args.scorer)
    config = GenerationConfig(**{n: getattr(args, n) for n in (
        "steps", "guidance_scale", "batch_size", "num_cpus", "num_gpus", "torch_threads")})
    init_ray(min_cpus=args.generators + args.scorers)
    actors = start_actors(
        args.model, args.storage, n_generators=args.generators, config=config, scorer_model=scorer,
        scorer_version="judge" if args.scorer == "judge" else None, n_scorers=args.scorers,
        capacity=args.capacity,
    )
    try:
        if args.weights:
            version = read_manifest(args.weights).version
            actors.generators.update(version, str(args.weights))
        summary = run_generation_round(args.round, items, actors.generators, actors.scorers, actors.buffer,
                                       batch_size=config.batch_size)
    finally:
        actors.shutdown()
        ray.shutdown()
    print(json.dumps({**asdict(summary), "overlap_s": summary.overlap_s}, indent=2))
    return 0
