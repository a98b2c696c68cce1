"""The fine-tuning objective of Lee et al. (2023), eq. (2), with the diffusion NLL bound:

    L(θ) = mean_i  r_i · ‖ε − ε_θ(x_t, t, z_i)‖²   over model samples (x_i, z_i) with reward r_i
         + β · mean_j  ‖ε − ε_θ(x_t, t, z_j)‖²     over pre-training examples (x_j, z_j)

‖·‖² is taken as the mean over latent elements (diffusers' MSE), i.e. the paper's squared norm
divided by the latent size: a constant factor that the learning rate absorbs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler


@dataclass
class LossTerms:
    total: torch.Tensor  # what is back-propagated
    model: torch.Tensor  # mean_i r_i·err_i (detached)
    pretrain: torch.Tensor  # mean_j err_j, before β (detached)


def denoising_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor,
                     t: torch.Tensor) -> torch.Tensor:
    """ε for ε-prediction models (SD 1.x, shapes-sd); v for v-prediction ones (SD 2.x)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r}; expected 'epsilon' or 'v_prediction'")


def denoising_errors(unet: torch.nn.Module, scheduler: DDPMScheduler, x0: torch.Tensor,
                     text_emb: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-example ‖ε − ε_θ(x_t, t, z)‖² (mean over elements), shape (B,)."""
    x_t = scheduler.add_noise(x0, noise, t)
    pred = unet(x_t, t, encoder_hidden_states=text_emb, return_dict=False)[0]  # DDP-friendly
    target = denoising_target(scheduler, x0, noise, t)
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def finetune_loss(model_err: torch.Tensor, rewards: torch.Tensor, pretrain_err: torch.Tensor | None,
                  beta: float) -> LossTerms:
    """Reward-weighted denoising loss on model samples + β · plain denoising loss on pre-training
    data. A sample with r = 0 contributes nothing, so its gradient is exactly zero."""
    model_term = (rewards.to(model_err.dtype) * model_err).mean()
    if pretrain_err is None or pretrain_err.numel() == 0:
        pretrain_term = model_err.new_zeros(())
    else:
        pretrain_term = pretrain_err.mean()
    total = model_term + beta * pretrain_term
    return LossTerms(total=total, model=model_term.detach(), pretrain=pretrain_term.detach())
