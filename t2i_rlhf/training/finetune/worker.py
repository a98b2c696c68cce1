"""`train_loop_per_worker`: one Ray Train worker's fine-tuning loop, a pure function of its config.

It knows nothing of HTTP, labelling or actors: it reads its two dataset shards, minimises the
configured objective (the paper's finetune_loss, or negative_aware_loss against the frozen parent),
and reports metrics and checkpoints through `ray.train.report`.

Resume: the checkpoint persists the global optimizer step; the data position (epoch, micro-batch)
and every random draw (noise, timesteps) are derived from it. A run restored at step s therefore
trains steps s+1 .. total exactly once, whether s falls inside an epoch or on its boundary.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from transformers import CLIPTextModel, CLIPTokenizer

from t2i_rlhf.logs import quiet_ray_train_reports
from t2i_rlhf.training.finetune.config import FinetuneConfig
from t2i_rlhf.training.finetune.data import batch_latents, micro_batches
from t2i_rlhf.training.finetune.loss import (
    denoising_prediction,
    finetune_loss,
    negative_aware_finetune_loss,
    negative_aware_loss,
    squared_errors,
)
from t2i_rlhf.training.finetune.model import EMA_DIR, StartingPoint, load_unet, save_weights, unwrap
from t2i_rlhf.training.finetune.rewards import require_unit_interval

log = logging.getLogger(__name__)

TRAIN_STATE = "train_state.pt"  # optimizer + scaler + EMA + global step
PROGRESS = "progress.json"  # the global step alone, cheap to read for the driver


class Finetuner:
    """The models and one optimizer step, shared by the Ray Train loop and the plain-PyTorch
    baseline of the step-time benchmark (so both time exactly the same computation)."""

    def __init__(self, cfg: FinetuneConfig, start: StartingPoint, device: torch.device,
                 resume_dir: Path | None = None, wrap=None) -> None:
        self.cfg, self.device = cfg, device
        pipe = Path(start.pipeline_dir)
        self.tokenizer = CLIPTokenizer.from_pretrained(pipe / "tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(pipe / "text_encoder").to(device).eval()
        self.text_encoder.requires_grad_(False)  # frozen, as is the VAE (never loaded here)
        self.scheduler = DDPMScheduler.from_pretrained(pipe, subfolder="scheduler")
        unet = load_unet(start, cfg, resume_dir).to(device).train()
        self.unet = wrap(unet) if wrap else unet
        self.old_unet = old_policy(start, cfg, device) if cfg.objective == "negative_aware" else None
        self.params = [p for p in self.unet.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=cfg.lora_lr if cfg.lora else cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.amp_dtype = amp_dtype(cfg.mixed_precision, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.base_lr = self.optimizer.param_groups[0]["lr"]
        self.ema = None
        if cfg.ema_decay:
            # a fixed decay (min_decay = decay): diffusers' default ramps it as (1+n)/(10+n), so
            # over a round of a few hundred steps the "average" would track the raw weights and
            # their step-to-step noise, which is what it is there to remove. Its first step copies
            # the weights: take that step now, on the parent's, so the average starts there.
            self.ema = EMAModel(self.params, decay=cfg.ema_decay, min_decay=cfg.ema_decay)
            self.ema.step(self.params)

    def state_dict(self, step: int) -> dict:
        return {"step": step, "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema else None, "config_hash": self.cfg.config_hash()}

    def load_state_dict(self, state: dict) -> int:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        return int(state["step"])

    def write_checkpoint_weights(self, directory: Path) -> None:
        """The trained weights (what a resume continues from) and, with EMA, their average under
        `ema/` (what the version exports)."""
        unet = unwrap(self.unet)
        save_weights(unet, directory, self.cfg.lora)
        if self.ema is not None:
            self.ema.store(self.params)
            self.ema.copy_to(self.params)
            save_weights(unet, directory / EMA_DIR, self.cfg.lora)
            self.ema.restore(self.params)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.device)
        return self.text_encoder(ids)[0]

    def micro_step(self, model: dict, pretrain: dict | None, gen: torch.Generator, scale: float):
        """Forward + backward of one micro-batch: model samples and pre-training examples go
        through the UNet together; the loss splits them again. With the negative-aware objective
        the frozen parent also predicts on the model samples' x_t, t and text embedding."""
        cfg = self.cfg
        r = np.asarray(model[reward_column(cfg)], dtype=np.float32)
        if self.old_unet is not None:
            require_unit_interval(float(r.min()), float(r.max()), "this batch's rewards")
        rewards = torch.tensor(r, device=self.device)
        latents, texts = [batch_latents(model)], list(model["prompt"])
        if pretrain is not None:
            latents.append(batch_latents(pretrain))
            texts += drop_captions(list(pretrain["caption"]), cfg.caption_dropout, gen)
        x0 = torch.cat(latents).to(self.device)
        noise = torch.randn(x0.shape, generator=gen).to(self.device)
        t = sample_timesteps(len(x0), self.scheduler.config.num_train_timesteps, cfg.timestep_range, gen)
        t = t.to(self.device)
        n = len(rewards)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            emb = self.encode_text(texts)
            pred, target = denoising_prediction(self.unet, self.scheduler, x0, emb, noise, t)
            err = squared_errors(pred, target)
            if self.old_unet is not None:
                with torch.no_grad():  # v_old: the same x_t (add_noise is per example), t and z
                    old, _ = denoising_prediction(self.old_unet, self.scheduler, x0[:n], emb[:n], noise[:n], t[:n])
        pretrain_err = err[n:] if pretrain is not None else None
        if self.old_unet is None:
            terms = finetune_loss(err[:n], rewards, pretrain_err, cfg.beta)
        else:
            per_sample = negative_aware_loss(pred[:n], old, target[:n], rewards, cfg.nft_strength)
            terms = negative_aware_finetune_loss(per_sample, pretrain_err, cfg.beta)
        self.scaler.scale(terms.total * scale).backward()
        return terms, rewards

    def step(self, step: int, batches: list[tuple[dict, dict | None]], rank: int) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches; returns its metrics."""
        cfg = self.cfg
        lr = self.base_lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else self.base_lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        totals = {"loss": 0.0, "model_loss": 0.0, "pretrain_loss": 0.0, "reward_mean": 0.0}
        for i, (model, pretrain) in enumerate(batches):
            # noise and timesteps are a function of (seed, step, micro-batch, rank): resumable
            gen = torch.Generator().manual_seed(((cfg.seed * 1_000_003 + step) * 64 + i) * 4096 + rank)
            last = i == len(batches) - 1
            defer = not last and hasattr(self.unet, "no_sync")  # DDP: all-reduce on the last only
            with self.unet.no_sync() if defer else contextlib.nullcontext():
                terms, rewards = self.micro_step(model, pretrain, gen, 1.0 / len(batches))
            for key, value in (("loss", terms.total.detach()), ("model_loss", terms.model),
                               ("pretrain_loss", terms.pretrain), ("reward_mean", rewards.mean())):
                totals[key] += float(value) / len(batches)
        self.scaler.unscale_(self.optimizer)
        if cfg.max_grad_norm:
            totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.step(self.params)
        self.optimizer.zero_grad(set_to_none=True)
        totals["lr"] = lr
        return totals


def old_policy(start: StartingPoint, cfg: FinetuneConfig, device: torch.device) -> torch.nn.Module:
    """v_old of the negative-aware loss: the model that drew the round's samples, i.e. the round's
    starting point, frozen. Loaded with resume_dir=None so that a resumed run still measures against
    the parent, not against its own checkpoint; with lora=False, so a parent LoRA is fused in and no
    adapter of this run's is attached (a fresh one starts at zero: the same function)."""
    unet = load_unet(start, cfg.model_copy(update={"lora": False}), None)
    unet.requires_grad_(False)
    return unet.to(device).eval()


def sample_timesteps(n: int, steps: int, share: tuple[float, float], gen: torch.Generator) -> torch.Tensor:
    """n timesteps uniform on [lo·steps, hi·steps): the whole schedule by default, or the part of it
    `timestep_range` names. The pre-training term's examples draw from the same range, so β anchors
    the same noise levels the model term moves."""
    lo = round(share[0] * steps)
    return torch.randint(lo, max(lo + 1, round(share[1] * steps)), (n,), generator=gen)


def drop_captions(captions: list[str], p: float, gen: torch.Generator) -> list[str]:
    """Each caption replaced by "" with probability p (classifier-free guidance's dropout)."""
    drop = (torch.rand(len(captions), generator=gen) < p).tolist()
    return ["" if d else c for c, d in zip(captions, drop, strict=True)]


def reward_column(cfg: FinetuneConfig) -> str:
    """The SAMPLE_SCHEMA column r is read from: `reward` or `label` (agreement rewrites `reward`)."""
    return "reward" if cfg.reward_source == "agreement" else cfg.reward_source


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision where the device supports it: bf16 (or fp16) autocast on CUDA; none on
    CPU unless bf16 is asked for explicitly."""
    if mode == "no" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "fp16" and device.type != "cuda":
        raise ValueError("mixed_precision='fp16' needs a CUDA device; use 'bf16' or 'no' on CPU")
    if mode in ("bf16", "auto") and (device.type != "cuda" or torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float16


def _mean_across_workers(metrics: dict[str, float]) -> dict[str, float]:
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return metrics
    keys = sorted(metrics)
    t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    torch.distributed.all_reduce(t)
    return dict(zip(keys, (t / torch.distributed.get_world_size()).tolist(), strict=True))


def train_loop_per_worker(config: dict) -> None:
    """config: {"finetune": FinetuneConfig fields, "start": StartingPoint fields, "total_steps",
    "model_rows_per_worker", "pretrain_rows_per_worker", "in_memory": {source: bool}} (built by
    trainer.py)."""
    import ray.train
    import ray.train.torch

    entered = time.time()
    quiet_ray_train_reports()
    cfg = FinetuneConfig(**config["finetune"])
    start = StartingPoint(**config["start"])
    total = int(config["total_steps"])
    torch.set_num_threads(cfg.threads_per_worker)
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()

    # where the round's wall time goes outside its steps (reported with the last step; trainer.py
    # adds the driver's side): the worker's start, loading the models, the data's first batch
    clock = {"worker_start_s": entered - config["fit_started_at"]} if config.get("fit_started_at") else {}
    clock.update(model_load_s=time.perf_counter(), first_batch_s=0.0, steps_s=0.0, checkpoint_s=0.0)
    checkpoint = ray.train.get_checkpoint()
    with checkpoint.as_directory() if checkpoint else contextlib.nullcontext(None) as ckpt_dir:
        resume = Path(ckpt_dir) if ckpt_dir else None
        tuner = Finetuner(cfg, start, device, resume, wrap=ray.train.torch.prepare_model)
        step = tuner.load_state_dict(torch.load(resume / TRAIN_STATE, weights_only=False)) if resume else 0
    clock["model_load_s"] = time.perf_counter() - clock["model_load_s"]
    if resume:
        log.info("worker %d resumed at step %d of %d", rank, step, total)

    micro = step * cfg.grad_accum  # micro-batches already consumed: the data position
    in_memory = config.get("in_memory", {})
    model_stream = micro_batches(ray.train.get_dataset_shard("model"), cfg.model_batch,
                                 config["model_rows_per_worker"], micro, cfg.seed, cfg.shuffle_buffer,
                                 in_memory=in_memory.get("model", False))
    pre_stream = None
    if cfg.uses_pretrain:
        pre_stream = micro_batches(ray.train.get_dataset_shard("pretrain"), cfg.pretrain_batch,
                                   config["pretrain_rows_per_worker"], micro, cfg.seed + 7919,
                                   cfg.shuffle_buffer, skip=False, in_memory=in_memory.get("pretrain", False))
    per_epoch = config["model_rows_per_worker"] // cfg.model_batch / cfg.grad_accum
    window: list[dict[str, float]] = []
    first = step
    while step < total:
        t0 = time.perf_counter()
        batches = []
        for _ in range(cfg.grad_accum):
            epoch, model = next(model_stream)
            batches.append((model, next(pre_stream)[1] if pre_stream else None))
        if step == first:  # the first batch waits for the Ray Data pipeline to start: not a step
            clock["first_batch_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
        metrics = tuner.step(step, batches, rank)
        step += 1
        metrics["step_time"] = time.perf_counter() - t0
        clock["steps_s"] += metrics["step_time"]
        window.append(metrics)
        _maybe_inject_failure(config, step, rank)
        save = step % cfg.checkpoint_every == 0 or step == total
        if save or step % cfg.log_every == 0:
            report = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
            if step == total:
                report.update(clock)
            report = _mean_across_workers(report)
            report.update(step=step, epoch=epoch, epochs_done=step / per_epoch, total_steps=total,
                          steps_this_run=step - first)
            window = []
            t_save = time.perf_counter()
            _report(report, tuner, step, rank, save)
            if save:
                clock["checkpoint_s"] += time.perf_counter() - t_save


def _maybe_inject_failure(config: dict, step: int, rank: int) -> None:
    """Fault injection for tests and drills: rank 0 dies once at `fail_at_step` (a marker file
    makes it once), so the FailureConfig restart from the last checkpoint can be exercised."""
    marker = config.get("fail_marker")
    if rank == 0 and marker and step == config.get("fail_at_step") and not Path(marker).exists():
        Path(marker).write_text(str(step))
        raise RuntimeError(f"injected failure at step {step}")


def _report(metrics: dict, tuner: Finetuner, step: int, rank: int, save: bool) -> None:
    """Every worker reports (it is a barrier); only rank 0 writes the checkpoint's files."""
    import ray.train

    if not save:
        ray.train.report(metrics)
        return
    tmp = Path(tempfile.mkdtemp(prefix="finetune-ckpt-")) if rank == 0 else None
    try:
        checkpoint = None
        if tmp is not None:
            tuner.write_checkpoint_weights(tmp)
            torch.save(tuner.state_dict(step), tmp / TRAIN_STATE)
            (tmp / PROGRESS).write_text(json.dumps({"step": step, **metrics}))
            checkpoint = ray.train.Checkpoint.from_directory(str(tmp))
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=f"checkpoint_{step:07d}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def steps_for(cfg: FinetuneConfig, model_rows_per_worker: int) -> int:
    """Optimizer steps of a round: `max_steps`, or `epochs` passes over the model samples."""
    if cfg.max_steps:
        return cfg.max_steps
    per_epoch = model_rows_per_worker // cfg.model_batch
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))
