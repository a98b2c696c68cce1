"""Which sampler and guidance give the cleanest, suitably aligned base images.

Swaps the pipeline's scheduler for others built `from_config` on the shipped one (so every arm
keeps its v-prediction, zero-terminal-SNR schedule and trailing timesteps) and judges each arm on
the same held-out (prompt, seed) items: overall judged good, count, clean, seconds. The shipped
scheduler is the baseline arm, run in the same process.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_samplers.py                  # all arms, 96/cat
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_samplers.py --arms shipped,ddim \
        --guidance 1 2 --per-category 256 --seed 1                                   # a fresh set
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    UniPCMultistepScheduler,
)

from t2i_rlhf.evaluation import eval_prompts, generate, judge_table, load_pipeline

# DDIM's own defaults clip x0 to [-1, 1], which is wrong for latents: the pipeline shipped with these
DDIM_KW = {"clip_sample": False, "set_alpha_to_one": True}
ARMS = {  # name -> (scheduler class, extra config, steps)
    "shipped": (None, {}, 20),  # SDE-DPM-Solver++ (models/architecture.make_sample_scheduler)
    "ddim": (DDIMScheduler, DDIM_KW, 20),
    "ddim-50": (DDIMScheduler, DDIM_KW, 50),
    "dpm++": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "final_sigmas_type": "zero"}, 20),
    "unipc": (UniPCMultistepScheduler, {"final_sigmas_type": "zero"}, 20),
    "euler-ancestral-30": (EulerAncestralDiscreteScheduler, {}, 30),
    "sde-dpm++-1st": (DPMSolverMultistepScheduler,
                      {"algorithm_type": "sde-dpmsolver++", "solver_order": 1, "final_sigmas_type": "zero"}, 20),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/shapes-sd"))
    ap.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated, of: {', '.join(ARMS)}")
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0])
    ap.add_argument("--per-category", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    unknown = [a for a in args.arms.split(",") if a not in ARMS]
    if unknown:
        ap.error(f"unknown arms {unknown}; choose from {list(ARMS)}")

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model)
    shipped = pipe.scheduler
    items = eval_prompts(args.per_category, "heldout", args.seed)
    prompts = [p for p, _ in items]
    for name in args.arms.split(","):
        cls, extra, steps = ARMS[name]
        pipe.scheduler = shipped if cls is None else cls.from_config(shipped.config, **extra)
        for guidance in args.guidance:
            start = time.time()
            result = judge_table(name, prompts, generate(pipe, items, steps, guidance, progress=False))
            row = {"arm": name, "scheduler": type(pipe.scheduler).__name__, "steps": steps, "guidance": guidance,
                   "overall": round(100 * result.overall.good, 1), "clean": round(100 * result.overall.clean, 1),
                   **{c.category: round(100 * c.good, 1) for c in result.categories},
                   "seconds": round(time.time() - start, 1)}
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
