"""Training-step time of the shipped UNet architecture: fp32 against bf16 autocast, same run.

What `t2i-rlhf pretrain --unet-bf16` buys on this machine's CPU (AVX512-BF16 makes oneDNN's bf16
convolutions and matmuls faster than fp32 ones; without it bf16 can be slower). Each mode runs
the same random batches; the figure is the mean of the steps after `--warmup`.

    .venv/bin/python benchmarks/bench_unet_step.py --steps 12 --batch 64
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from t2i_rlhf.models import architecture as arch


def step_seconds(bf16: bool, steps: int, warmup: int, batch: int, seed: int = 0) -> float:
    torch.manual_seed(seed)
    unet = arch.make_unet()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
    x = torch.randn(batch, 4, 16, 16)
    t = torch.randint(0, 1000, (batch,))
    text = torch.randn(batch, 16, arch.TEXT_HIDDEN)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            pred = unet(x, t, text).sample
        loss = pred.float().pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return sum(times[warmup:]) / len(times[warmup:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if args.steps <= args.warmup:
        ap.error("--steps must exceed --warmup")
    torch.set_num_threads(args.threads)
    fp32 = step_seconds(False, args.steps, args.warmup, args.batch)
    bf16 = step_seconds(True, args.steps, args.warmup, args.batch)
    print(json.dumps({"fp32_s": round(fp32, 4), "bf16_s": round(bf16, 4), "speed-up": round(fp32 / bf16, 2),
                      "batch": args.batch, "threads": args.threads}))


if __name__ == "__main__":
    main()
