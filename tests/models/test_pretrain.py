"""`pretrain`'s UNet stage: the ε phase, then the v-prediction / zero-terminal-SNR phase that starts
from its average, each checkpointed so a re-run resumes; and the shipped model is what it makes."""

from __future__ import annotations

import shutil

import numpy as np
import torch
from diffusers import DDPMScheduler, StableDiffusionPipeline
from transformers import CLIPModel

from t2i_rlhf.evaluation import generate
from t2i_rlhf.models.pretrain import PretrainConfig, pretrain_unet, snapshot_unet
from t2i_rlhf.shapes.captions import CaptionPolicy, load_policy


def test_unet_stage_runs_both_phases_resumes_and_saves_a_zero_snr_pipeline(sd_model_dir, clip_model_dir,
                                                                             tmp_path):
    work, out = tmp_path / "work", tmp_path / "models"
    shutil.copytree(sd_model_dir / "vae", work / "vae")
    shutil.copytree(clip_model_dir, out / "shapes-clip")
    cfg = PretrainConfig(out=out, work=work, unet_steps=2, unet_vsnr_steps=2, unet_examples=16, batch=4,
                         threads=1)
    pretrain_unet(cfg)
    eps, vsnr = (torch.load(work / f"{name}.pt", weights_only=False) for name in ("unet", "unet-vsnr"))
    assert eps["step"] == 2 and vsnr["step"] == 2

    # The v phase starts from the ε phase's average: its first average step mixes them.
    assert not torch.equal(eps["ema"]["shadow_params"][0], vsnr["ema"]["shadow_params"][0])

    sched = DDPMScheduler.from_pretrained(out / "shapes-sd" / "scheduler")
    assert sched.config.prediction_type == "v_prediction" and float(sched.alphas_cumprod[-1]) == 0.0
    pipe = StableDiffusionPipeline.from_pretrained(out / "shapes-sd", local_files_only=True)
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    images = generate(pipe, [("a red circle", 0)], steps=2, progress=False)
    assert images.shape == (1, 32, 32, 3)
    # It records the captions its UNet learnt from: the run's β term renders the same.
    assert load_policy(out / "shapes-sd") == CaptionPolicy(count_p=cfg.unet_count_p,
                                                           count_wrong_p=cfg.unet_count_wrong_p,
                                                           layout=cfg.unet_layout)

    # The text encoder is shapes-CLIP's text tower, frozen: SD's recipe.
    tower = CLIPModel.from_pretrained(out / "shapes-clip").text_model.eval()
    ids = pipe.tokenizer(["two red circles", ""], padding="max_length", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(pipe.text_encoder(ids)[0], tower(ids)[0])

    # Complete checkpoints: a re-run trains nothing more and writes the same weights.
    before = pipe.unet.state_dict()
    pretrain_unet(cfg)
    after = StableDiffusionPipeline.from_pretrained(out / "shapes-sd", local_files_only=True).unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.load(work / "unet-vsnr.pt", weights_only=False)["step"] == 2

    # A snapshot is the same weights in fp16, a pipeline that a fresh machine continues from.
    snap = snapshot_unet(cfg, tmp_path / "snapshot")
    half = StableDiffusionPipeline.from_pretrained(snap, local_files_only=True, dtype=torch.float32)
    assert half.scheduler.config.prediction_type == "v_prediction"
    assert all(torch.equal(before[k].half().float(), v) for k, v in half.unet.state_dict().items())


def test_unet_stage_warm_starts_from_a_pipeline(sd_model_dir, clip_model_dir, tmp_path):
    """`--unet-init`: the stage starts from that pipeline's UNet and takes its VAE (no VAE stage),
    and its captions follow `unet_count_wrong_p`, keyed into the latent cache's name."""
    out = tmp_path / "models"
    shutil.copytree(clip_model_dir, out / "shapes-clip")
    cfg = PretrainConfig(out=out, work=tmp_path / "work", unet_steps=0, unet_vsnr_steps=2, unet_examples=8,
                         batch=4, threads=1, unet_init=sd_model_dir, unet_count_wrong_p=0.5, unet_count_p=0.3)
    pretrain_unet(cfg)
    assert (cfg.work / "latents-8-count0.3-wrong0.5-slots.pt").exists() and not (cfg.work / "unet.pt").exists()
    init = StableDiffusionPipeline.from_pretrained(sd_model_dir, local_files_only=True)
    made = StableDiffusionPipeline.from_pretrained(out / "shapes-sd", local_files_only=True)
    assert all(torch.equal(v, made.vae.state_dict()[k]) for k, v in init.vae.state_dict().items())
    moved = [float((made.unet.state_dict()[k] - v).norm() / (v.norm() + 1e-8))
             for k, v in init.unet.state_dict().items() if v.dtype.is_floating_point]
    assert max(moved) < 0.2 and sum(moved) > 0  # two small steps from the init, not a fresh UNet


def test_unet_stage_in_bf16_keeps_fp32_weights(sd_model_dir, clip_model_dir, tmp_path):
    """`--unet-bf16` autocasts the forward pass only: the saved UNet is fp32, finite, and moved."""
    out = tmp_path / "models"
    shutil.copytree(clip_model_dir, out / "shapes-clip")
    cfg = PretrainConfig(out=out, work=tmp_path / "work", unet_steps=0, unet_vsnr_steps=2, unet_examples=8,
                         batch=4, threads=1, unet_init=sd_model_dir, unet_bf16=True)
    pretrain_unet(cfg)
    init = StableDiffusionPipeline.from_pretrained(sd_model_dir, local_files_only=True).unet.state_dict()
    made = StableDiffusionPipeline.from_pretrained(out / "shapes-sd", local_files_only=True).unet.state_dict()
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in made.values())
    assert any(not torch.equal(v, made[k]) for k, v in init.items())


def test_shipped_model_trains_and_samples_with_the_same_schedule(sd_model_dir):
    """Fine-tuning builds its DDPM schedule from the pipeline's scheduler config: it must be the
    v-prediction, zero-terminal-SNR schedule the base was trained with, not SD's default."""
    train = DDPMScheduler.from_pretrained(sd_model_dir / "scheduler")
    assert train.config.prediction_type == "v_prediction"
    assert train.config.rescale_betas_zero_snr
    assert np.isclose(float(train.alphas_cumprod[-1]), 0.0)


def test_clip_stage_batches_by_clip_batch_then_fine_tunes_on_hard_negatives_and_resumes(
        tmp_path, clip_model_dir, monkeypatch):
    """The CLIP stage draws `--clip-batch` pairs a step whatever the UNet's `--batch`; its hard-negative
    phase starts from the contrastive weights and gives every caption one contradiction; both phases
    checkpoint, and the stage writes a CLIPModel directory the reward model's backbone loads."""
    from transformers import CLIPModel

    from t2i_rlhf.cli import main
    from t2i_rlhf.models import pretrain as pretrain_module
    from t2i_rlhf.training.reward.backbone import ClipBackbone

    drawn: list[int] = []
    real_examples, real_negative = pretrain_module.examples, pretrain_module.hard_negative_caption
    negatives: list[str] = []
    monkeypatch.setattr(pretrain_module, "examples", lambda first, n: drawn.append(n) or real_examples(first, n))
    monkeypatch.setattr(pretrain_module, "hard_negative_caption",
                        lambda c, rng: negatives.append(c) or real_negative(c, rng))
    argv = ["pretrain", "--stages", "clip", "--out", str(tmp_path / "models"), "--work", str(tmp_path / "work"),
            "--clip-steps", "2", "--clip-negative-steps", "1", "--clip-batch", "6", "--batch", "2", "--threads", "1"]
    assert main(argv) == 0
    assert drawn == [6, 6, 6] and len(negatives) == 6
    contrastive, fine_tuned = (torch.load(tmp_path / "work" / f"{n}.pt", weights_only=False)
                               for n in ("clip", "clip_negatives"))
    assert contrastive["step"] == 2 and fine_tuned["step"] == 1
    name = "text_projection.weight"
    assert not torch.equal(contrastive["clip"][name], fine_tuned["clip"][name])

    out = tmp_path / "models" / "shapes-clip"
    saved = CLIPModel.from_pretrained(out)
    assert torch.equal(saved.state_dict()[name], fine_tuned["clip"][name])
    shipped = CLIPModel.from_pretrained(clip_model_dir).config
    assert saved.config.vision_config.to_dict() == shipped.vision_config.to_dict()
    backbone = ClipBackbone(out)
    assert backbone.embed_texts(["two red circles"]).shape == (1, backbone.dim)

    assert main(argv) == 0  # complete checkpoints: a re-run trains nothing more
    assert drawn == [6, 6, 6]
