"""Generation throughput: a plain single-process diffusers loop using every core vs the Ray path
(`run_generation_round` with N one-thread generator actors, storing into a SampleBuffer).

Same model, prompts, seeds, batch size and steps for every path; each path is warmed up with one
batch first (model load and first-call costs are not counted). Prints images/s per path and the
ratio Ray / plain. Run it on an otherwise idle machine:

    HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/bench_generation.py \
        --images 128 --batch 8 --steps 20 --actors 1,2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch

from t2i_rlhf.shapes import sample_prompts

REPO = Path(__file__).resolve().parents[1]


def workload(n: int) -> list[tuple[str, int]]:
    return [(p.text, seed) for seed, p in enumerate(sample_prompts(n, seed=0))]


def plain_loop(model: Path, items: list[tuple[str, int]], batch: int, steps: int, threads: int,
               guidance: float) -> float:
    """images/s of StableDiffusionPipeline called batch by batch in this process."""
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(threads)
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def run(chunk: list[tuple[str, int]]) -> None:
        pipe([p for p, _ in chunk], num_inference_steps=steps, guidance_scale=guidance, height=32, width=32,
             generator=[torch.Generator().manual_seed(s) for _, s in chunk], output_type="np")

    run(items[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(items), batch):
        run(items[i : i + batch])
    return len(items) / (time.perf_counter() - start)


def ray_path(model: Path, items: list[tuple[str, int]], batch: int, steps: int, n_actors: int,
             guidance: float) -> float:
    """images/s of run_generation_round with n one-thread generator actors (unscored)."""
    import ray

    from t2i_rlhf.actors.rollout import run_generation_round, start_actors

    config = {"steps": steps, "batch_size": batch, "num_cpus": 1, "torch_threads": 1,
              "guidance_scale": guidance}
    with tempfile.TemporaryDirectory() as storage:
        actors = start_actors(model, storage, n_generators=n_actors, config=config,
                              capacity=len(items) + batch)
        try:
            ray.get([g.generate.remote(-1, items[:batch]) for g in actors.generators])  # warm-up
            summary = run_generation_round(0, items, actors.generators, [], actors.buffer, batch_size=batch)
            assert summary.added == len(items), summary
            return summary.images_per_s
        finally:
            actors.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=REPO / "models" / "shapes-sd")
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--actors", default="1,2", help="comma-separated generator-actor counts")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads of the plain loop")
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    items = workload(args.images)
    counts = [int(n) for n in args.actors.split(",") if n.strip()]

    import ray

    ray.init(num_cpus=max([*counts, 1]), include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}})
    results = {f"ray_{n}_actors": ray_path(args.model, items, args.batch, args.steps, n, args.guidance)
               for n in counts}
    ray.shutdown()
    results = {"plain": plain_loop(args.model, items, args.batch, args.steps, args.threads, args.guidance),
               **results}

    print(f"{args.images} images, batch {args.batch}, {args.steps} steps, {os.cpu_count()} cores; "
          f"plain loop with {args.threads} threads")
    for name, ips in results.items():
        ratio = ips / results["plain"]
        print(f"  {name:<14} {ips:7.2f} img/s   ratio to plain {ratio:5.2f}x")
    if args.json:
        print(json.dumps({"images": args.images, "batch": args.batch, "steps": args.steps, **results}))


if __name__ == "__main__":
    main()
