"""`t2i-rlhf pretrain`: reproduce the shipped base models from scratch, resumably.

Three stages, each checkpointed every few hundred steps under `--work` so an interrupted run
picks up where it stopped:
  1. vae  - AutoencoderKL on rendered images; L1 + MSE with pixels near edges weighted up,
            because blurred triangle tips and rounded square corners are what the judge fails.
  2. clip - the shapes-CLIP dual encoder, contrastive on the noisy captions, then fine-tuned
            with a hard negative caption per image (NegCLIP, Yuksekgonul et al. 2023).
  3. unet - the UNet on cached VAE latents of the noisy-caption data, conditioned on shapes-CLIP's
            text tower, frozen, as SD is trained on a frozen CLIP; caption dropout for
            classifier-free guidance and an EMA of the weights: first with SD's ε-prediction
            schedule, then moved to v-prediction with zero terminal SNR (Lin et al. 2024).
            `unet_init` warm-starts it from an existing pipeline's UNet and VAE instead.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm
from transformers import CLIPImageProcessor, CLIPModel, CLIPTextModel, CLIPTokenizer

from t2i_rlhf.diffusion.latents import encode_images, images_to_tensor, tensor_to_images
from t2i_rlhf.diffusion.targets import denoising_target
from t2i_rlhf.models import architecture as arch
from t2i_rlhf.models.tokenizer import build_char_tokenizer
from t2i_rlhf.shapes.captions import CaptionPolicy, hard_negative_caption, make_example, save_policy
from t2i_rlhf.shapes.judge import judge
from t2i_rlhf.shapes.prompts import Prompt

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    out: Path = Path("models")
    work: Path = Path("runs/pretrain")
    vae_steps: int = 1300
    clip_steps: int = 2000
    clip_batch: int = 512  # contrastive: a larger batch holds more negatives that differ only in count
    clip_negative_steps: int = 1000  # then NegCLIP: each caption also competes with a contradiction of itself
    unet_steps: int = 5000
    unet_vsnr_steps: int = 3000  # then v-prediction with zero terminal SNR
    unet_examples: int = 50_000
    # The UNet's captions name a wrong count this often when they name one (CLIP's: CaptionPolicy's
    # 0.2). With a text encoder that reads counts, that noise is what keeps the base's counting
    # SD-like (below 50%) while the count word still predicts the count: P(n | "n") = 1 - p.
    unet_count_wrong_p: float = 0.5
    # How often a UNet caption names the count at all (CLIP's: CaptionPolicy's 0.45). A rarer but
    # more reliable count word (0.3, wrong 0.15) made a from-scratch UNet read the word more, but
    # count no better and learn no more from perfect data (docs/experiments.md, 2026-12-02).
    unet_count_p: float = 0.45
    # How the UNet's images place their objects (shapes/render.py LAYOUTS). "slots" gives the count
    # word one arrangement for every shape, which fine-tuning then teaches across shapes.
    unet_layout: str = "slots"
    unet_init: Path | None = None  # a pipeline directory to warm-start the UNet (and take the VAE) from
    batch: int = 64
    # bf16 autocast for the UNet stage's forward pass: 1.4x the steps per second on CPUs with
    # AVX512-BF16 (benchmarks/bench_unet_step.py). Off by default: the shipped base was trained in fp32.
    unet_bf16: bool = False
    seed: int = 0
    threads: int = 2


# The VAE and shapes-CLIP learn from scattered objects, a superset of the slots the UNet learns
# from (shapes/render.py): the shipped VAE and CLIP predate the slots, and `pretrain` reproduces them.
SCATTER = CaptionPolicy(layout="scatter")


def examples(first_seed: int, n: int, policy: CaptionPolicy = SCATTER) -> list[dict]:
    return [make_example(first_seed + i, policy) for i in range(n)]


class Checkpointer:
    """Saves and restores a stage's training state so `pretrain` can be resumed."""

    def __init__(self, path: Path, **objects) -> None:
        self.path, self.objects = path, objects

    def load(self) -> int:
        if not self.path.exists():
            return 0
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        for name, obj in self.objects.items():
            obj.load_state_dict(state[name])
        log.info("resumed %s at step %d", self.path, state["step"])
        return int(state["step"])

    def save(self, step: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        torch.save({"step": step, **{k: o.state_dict() for k, o in self.objects.items()}}, tmp)
        tmp.replace(self.path)


def run_steps(name: str, ckpt: Checkpointer, total: int, step_fn, every: int = 200) -> None:
    start = ckpt.load()
    bar = tqdm(range(start, total), desc=f"pretrain {name}", initial=start, total=total, mininterval=5)
    for step in bar:
        loss = step_fn(step)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss:.4f}")
        if (step + 1) % every == 0 or step + 1 == total:
            ckpt.save(step + 1)


def lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


# --- stage 1: VAE ------------------------------------------------------------------------------

def edge_weights(x: torch.Tensor, weight: float = 4.0) -> torch.Tensor:
    """1 everywhere, 1 + weight on pixels whose colour differs from a neighbour's."""
    diff = torch.zeros_like(x[:, :1])
    dy = (x[:, :, 1:] - x[:, :, :-1]).abs().sum(1, keepdim=True) > 0
    dx = (x[..., 1:] - x[..., :-1]).abs().sum(1, keepdim=True) > 0
    diff[:, :, 1:] += dy
    diff[:, :, :-1] += dy
    diff[..., 1:] += dx
    diff[..., :-1] += dx
    return 1.0 + weight * (diff > 0).float()


def pretrain_vae(cfg: PretrainConfig) -> Path:
    torch.manual_seed(cfg.seed)
    vae = arch.make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    ckpt = Checkpointer(cfg.work / "vae.pt", vae=vae, opt=opt)

    def step_fn(step: int) -> float:
        set_lr(opt, lr_at(step, cfg.vae_steps, 1e-3))
        x = images_to_tensor([e["image"] for e in examples(10_000_000 + step * cfg.batch, cfg.batch)])
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        w = edge_weights(x)
        err = recon - x
        loss = (w * (err.abs() + err.pow(2))).mean() + 1e-6 * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    run_steps("vae", ckpt, cfg.vae_steps, step_fn)
    vae.eval()
    with torch.no_grad():
        batch = examples(20_000_000, 2048)
        lat = vae.encode(images_to_tensor([e["image"] for e in batch])).latent_dist.mode()
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    out = cfg.work / "vae"
    vae.save_pretrained(out)
    rate = vae_judge_pass_rate(vae, n=1000)
    log.info("VAE reconstructions pass the judge: %.1f%%", 100 * rate)
    print(f"VAE reconstructions judged good: {100 * rate:.1f}% (target >= 97%)")
    return out


@torch.no_grad()
def vae_judge_pass_rate(vae, n: int = 1000, first_seed: int = 30_000_000) -> float:
    """How often the judge still accepts a rendered image after a VAE round trip."""
    good = 0
    for start in range(0, n, 250):
        batch = examples(first_seed + start, min(250, n - start))
        x = images_to_tensor([e["image"] for e in batch])
        recon = tensor_to_images(vae.decode(vae.encode(x).latent_dist.mode()).sample)
        for e, img in zip(batch, recon, strict=True):
            p = Prompt(shape=e["shape"], count=e["count"], colour=e["colour"], scene=e["scene"])
            good += judge(img, p).good
    return good / n


# --- stage 2: CLIP -----------------------------------------------------------------------------

def tokenize(tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


def pretrain_clip(cfg: PretrainConfig) -> Path:
    torch.manual_seed(cfg.seed)
    out = cfg.out / "shapes-clip"
    tokenizer = build_char_tokenizer(cfg.work / "tokenizer")
    clip = arch.make_clip(tokenizer)
    opt = torch.optim.AdamW(clip.parameters(), lr=1e-3, weight_decay=0.05)
    ckpt = Checkpointer(cfg.work / "clip.pt", clip=clip, opt=opt)
    batch = cfg.clip_batch

    def step_fn(step: int) -> float:
        set_lr(opt, lr_at(step, cfg.clip_steps, 1e-3))
        ex = examples(40_000_000 + step * batch, batch)
        outputs = clip(input_ids=tokenize(tokenizer, [e["caption"] for e in ex]),
                       pixel_values=images_to_tensor([e["image"] for e in ex]), return_loss=True)
        opt.zero_grad(set_to_none=True)
        outputs.loss.backward()
        opt.step()
        return outputs.loss.item()

    run_steps("clip", ckpt, cfg.clip_steps, step_fn)
    if cfg.clip_negative_steps:
        finetune_clip_on_hard_negatives(cfg, clip, tokenizer)
    clip.save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(
        do_resize=False, do_center_crop=False, do_rescale=True, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    ).save_pretrained(out)
    return out


def finetune_clip_on_hard_negatives(cfg: PretrainConfig, clip: CLIPModel, tokenizer: CLIPTokenizer) -> None:
    """Image-to-text contrast over the batch's captions plus one hard negative per caption.

    Plain contrastive training on noisy captions leaves CLIP a bag of words: a batch rarely holds
    two captions that differ only in count, so it never has to read the count. The reward model
    needs exactly that, to rank a prompt over its perturbations. Text-to-image keeps the plain
    contrast: a negative caption describes no image in the batch."""
    opt = torch.optim.AdamW(clip.parameters(), lr=3e-4, weight_decay=0.05)
    ckpt = Checkpointer(cfg.work / "clip_negatives.pt", clip=clip, opt=opt)
    batch = cfg.clip_batch
    target = torch.arange(batch)

    def step_fn(step: int) -> float:
        set_lr(opt, lr_at(step, cfg.clip_negative_steps, 3e-4, warmup=50))
        ex = examples(60_000_000 + step * batch, batch)
        rng = np.random.default_rng([cfg.seed, step])
        captions = [e["caption"] for e in ex]
        negatives = [hard_negative_caption(c, rng) for c in captions]
        logits = clip(input_ids=tokenize(tokenizer, captions + negatives),
                      pixel_values=images_to_tensor([e["image"] for e in ex])).logits_per_image
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits[:, :batch].T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    run_steps("clip-negatives", ckpt, cfg.clip_negative_steps, step_fn)


# --- stage 3: UNet -----------------------------------------------------------------------------

@torch.no_grad()
def cache_latents(vae, n: int, first_seed: int, policy: CaptionPolicy,
                  batch: int = 500) -> tuple[torch.Tensor, list[str]]:
    latents, captions = [], []
    for start in tqdm(range(0, n, batch), desc="encode latents", mininterval=5):
        ex = examples(first_seed + start, min(batch, n - start), policy)
        latents.append(encode_images(vae, [e["image"] for e in ex]))
        captions += [e["caption"] for e in ex]
    return torch.cat(latents), captions


def frozen_text_encoder(clip_dir: Path) -> tuple[CLIPTokenizer, CLIPTextModel]:
    """shapes-CLIP's text tower as the pipeline's text encoder, never trained further.

    SD conditions on a frozen CLIP, and so does our miniature: a text encoder trained along with
    the UNet on noisy captions learns to ignore what the captions get wrong. The first base did
    that and came to tell count words apart faintly (the count explains 7% of its hidden states'
    variance, a colour 34%; in this tower 27% and 39%: `benchmarks/probe_text_encoder.py`). That
    alone did not make the base learn to count: the UNet still hardly uses the count
    (docs/results.md)."""
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir)
    text_encoder = CLIPTextModel(arch.text_config(tokenizer))
    text_encoder.load_state_dict(CLIPModel.from_pretrained(clip_dir).text_model.state_dict())
    return tokenizer, text_encoder.eval().requires_grad_(False)


@torch.no_grad()
def caption_embeddings(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                       captions: list[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """The frozen encoder's states for each distinct caption, each caption's row among them, and
    the empty caption's row (for caption dropout): the grammar has a few thousand captions, the
    data tens of thousands, so each is encoded once."""
    distinct, index = np.unique(np.array(captions + [""]), return_inverse=True)
    table = torch.cat([text_encoder(tokenize(tokenizer, list(distinct[i:i + 512])))[0]
                       for i in range(0, len(distinct), 512)])
    return table, torch.as_tensor(index[:-1]), int(index[-1])


@dataclass(frozen=True)
class UnetPhase:
    """One phase of UNet training, checkpointed on its own; a later phase starts from the EMA
    weights of the one before, as SD 2 was moved to v-prediction by fine-tuning."""

    name: str
    steps: int
    lr: float
    warmup: int
    zero_snr: bool


def unet_phases(cfg: PretrainConfig) -> tuple[UnetPhase, ...]:
    return (
        UnetPhase("unet", cfg.unet_steps, 3e-4, 200, zero_snr=False),
        UnetPhase("unet-vsnr", cfg.unet_vsnr_steps, 1e-4, 100, zero_snr=True),
    )


def initial_vae_and_unet(cfg: PretrainConfig) -> tuple:
    """The UNet stage's VAE and starting UNet: `unet_init`'s, else the VAE stage's and a fresh
    UNet. float32 whatever the directory holds: a snapshot (snapshot_unet) is fp16."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    vae = AutoencoderKL.from_pretrained((cfg.unet_init or cfg.work) / "vae", dtype=torch.float32).eval()
    if cfg.unet_init is None:
        return vae, arch.make_unet()
    return vae, UNet2DConditionModel.from_pretrained(cfg.unet_init / "unet", dtype=torch.float32)


def pretrain_unet(cfg: PretrainConfig) -> Path:
    torch.manual_seed(cfg.seed)
    vae, unet = initial_vae_and_unet(cfg)
    tokenizer, text_encoder = frozen_text_encoder(cfg.out / "shapes-clip")
    policy = CaptionPolicy(count_p=cfg.unet_count_p, count_wrong_p=cfg.unet_count_wrong_p,
                           layout=cfg.unet_layout)
    cache = cfg.work / (f"latents-{cfg.unet_examples}-count{policy.count_p:g}"
                        f"-wrong{policy.count_wrong_p:g}-{policy.layout}.pt")  # a resume skips encoding
    if cache.exists():
        latents, captions = torch.load(cache, weights_only=False)
    else:
        latents, captions = cache_latents(vae, cfg.unet_examples, first_seed=0, policy=policy)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save((latents, captions), cache)
    table, rows, empty = caption_embeddings(text_encoder, tokenizer, captions)
    params = list(unet.parameters())
    gen = torch.Generator().manual_seed(cfg.seed)
    phases = [ph for ph in unet_phases(cfg) if ph.steps > 0]
    if not phases:
        raise ValueError("no UNet phase has steps; set unet_steps or unet_vsnr_steps")
    ema: EMAModel | None = None
    for index, phase in enumerate(phases):
        if ema is not None:
            ema.copy_to(params)  # the next phase starts from the previous phase's average
        noise_scheduler = arch.make_train_scheduler(phase.zero_snr)
        opt = torch.optim.AdamW(params, lr=phase.lr, weight_decay=0.01)
        ema = EMAModel(params, decay=0.999)
        ckpt = Checkpointer(cfg.work / f"{phase.name}.pt", unet=unet, opt=opt, ema=ema)

        def step_fn(step: int, phase=phase, index=index, noise_scheduler=noise_scheduler, opt=opt, ema=ema) -> float:
            set_lr(opt, lr_at(step, phase.steps, phase.lr, warmup=phase.warmup))
            # Resumable: randomness is a function of the phase and the step.
            gen.manual_seed(cfg.seed * 1_000_003 + index * 10_000_000 + step)
            idx = torch.randint(0, len(latents), (cfg.batch,), generator=gen)
            x0, row = latents[idx], rows[idx].clone()
            row[torch.rand(cfg.batch, generator=gen) < 0.1] = empty  # caption dropout for CFG
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (cfg.batch,), generator=gen)
            xt = noise_scheduler.add_noise(x0, noise, t)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.unet_bf16):
                pred = unet(xt, t, table[row]).sample
            loss = F.mse_loss(pred.float(), denoising_target(noise_scheduler, x0, noise, t))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            ema.step(params)
            return loss.item()

        run_steps(phase.name, ckpt, phase.steps, step_fn)  # restores a finished phase's state
    ema.copy_to(params)
    out = cfg.out / "shapes-sd"
    _pipeline(vae, text_encoder, tokenizer, unet, phases[-1].zero_snr).save_pretrained(out)
    save_policy(policy, out)  # what a run's β term renders (run.ensure_pretrain_data)
    return out


def _pipeline(vae, text_encoder, tokenizer, unet, zero_snr: bool) -> StableDiffusionPipeline:
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=arch.make_sample_scheduler(zero_snr), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def snapshot_unet(cfg: PretrainConfig, out: Path) -> Path:
    """The UNet stage's latest averaged (EMA) weights, in fp16, as a pipeline at `out`, without
    training. A pre-training that outlives a session commits this: `--unet-init out` continues
    from it on a fresh machine (fp16 weights are enough to go on from; the optimiser state and
    the exact step are lost), and `probe_count_seed.py out` judges it half-way."""
    done = [ph for ph in unet_phases(cfg) if (cfg.work / f"{ph.name}.pt").exists()]
    if not done:
        raise FileNotFoundError(f"no UNet checkpoint under {cfg.work}")
    phase = done[-1]
    vae, unet = initial_vae_and_unet(cfg)
    ema = EMAModel(list(unet.parameters()), decay=0.999)
    state = torch.load(cfg.work / f"{phase.name}.pt", map_location="cpu", weights_only=False)
    ema.load_state_dict(state["ema"])
    ema.copy_to(unet.parameters())
    tokenizer, text_encoder = frozen_text_encoder(cfg.out / "shapes-clip")
    pipe = _pipeline(vae, text_encoder, tokenizer, unet, phase.zero_snr).to(torch.float16)
    pipe.save_pretrained(out)
    log.info("snapshot of %s at step %d (EMA, fp16) in %s", phase.name, state["step"], out)
    return out


STAGES = ("vae", "clip", "unet")  # keep in step with commands/pretrain.py


def pretrain(cfg: PretrainConfig, stages: tuple[str, ...] = STAGES) -> None:
    torch.set_num_threads(cfg.threads)
    t0 = time.time()
    for stage in stages:
        s0 = time.time()
        {"vae": pretrain_vae, "clip": pretrain_clip, "unet": pretrain_unet}[stage](cfg)
        print(f"stage {stage}: {(time.time() - s0) / 60:.1f} min")
    print(f"pretrain done in {(time.time() - t0) / 60:.1f} min; models in {cfg.out}")
