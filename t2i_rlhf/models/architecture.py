"""Configurations of the tiny base models. They are ordinary diffusers / transformers classes,
so everything downstream treats them as it would SD 1.5 and CLIP ViT-L/14."""

from __future__ import annotations

from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from t2i_rlhf.models.tokenizer import BOS, EOS, MAX_LENGTH

TEXT_HIDDEN = 64


def text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_HIDDEN, intermediate_size=4 * TEXT_HIDDEN,
        num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
        projection_dim=64, bos_token_id=tokenizer.convert_tokens_to_ids(BOS),
        eos_token_id=tokenizer.convert_tokens_to_ids(EOS), pad_token_id=tokenizer.convert_tokens_to_ids(EOS),
    )


def make_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    return CLIPTextModel(text_config(tokenizer))


def make_clip(tokenizer: CLIPTokenizer) -> CLIPModel:
    """Dual encoder: a 3-layer ViT on 4x4 patches of 32x32 images and the char-level text tower."""
    vision = dict(
        image_size=32, patch_size=4, hidden_size=96, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_channels=3,
    )
    cfg = CLIPConfig(text_config=text_config(tokenizer).to_dict(), vision_config=vision, projection_dim=64)
    return CLIPModel(cfg)


def make_vae() -> AutoencoderKL:
    """32x32x3 <-> 4x16x16, as SD's VAE maps 512x512x3 <-> 4x64x64 (one downsampling here)."""
    return AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=16,
        sample_size=32, mid_block_add_attention=False,
    )


def make_unet() -> UNet2DConditionModel:
    """Cross-attention at 8x8 and in the middle block; attention_head_dim=2 (diffusers' name
    for the number of heads) is ~2x faster on CPU than 8."""
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=2, norm_num_groups=32,
    )


SCHEDULER_KW = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
# Lin et al. 2024, "Common diffusion noise schedules and sample steps are flawed": SD's schedule
# leaves signal in x_T, so a model sampled from pure noise never learnt to choose a colour or a
# scene from nothing and blends them. Zero terminal SNR needs v-prediction and trailing steps.
ZERO_SNR_KW = dict(rescale_betas_zero_snr=True, prediction_type="v_prediction")


def make_train_scheduler(zero_snr: bool = False) -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULER_KW, **(ZERO_SNR_KW if zero_snr else {}))


def make_sample_scheduler(zero_snr: bool = False) -> DDIMScheduler | DPMSolverMultistepScheduler:
    """The pipeline's sampler. With zero terminal SNR: SDE-DPM-Solver++ (2nd order), whose fresh
    noise at each step corrects what a deterministic sampler carries to the end: at 20 steps and
    no guidance the shipped base drew 90–91% clean images with it against 83–86% with DDIM
    (docs/experiments.md). Noise comes from the caller's generators, so seeds still fix images."""
    if zero_snr:
        return DPMSolverMultistepScheduler(**SCHEDULER_KW, **ZERO_SNR_KW, algorithm_type="sde-dpmsolver++",
                                           timestep_spacing="trailing", final_sigmas_type="zero",
                                           steps_offset=1)  # unused with trailing steps; keeps diffusers quiet
    return DDIMScheduler(**SCHEDULER_KW, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
