"""The fine-tuning objectives, each as its paper writes it.

Reward-weighted likelihood (Lee et al. 2023, eq. (2)), with the diffusion NLL bound:

    L(θ) = mean_i  r_i · ‖ε − ε_θ(x_t, t, z_i)‖²   over model samples (x_i, z_i) with reward r_i
         + β · mean_j  ‖ε − ε_θ(x_t, t, z_j)‖²     over pre-training examples (x_j, z_j)

Negative-aware fine-tuning (DiffusionNFT, arXiv 2509.16117), on the same data,
with v_old the frozen prediction of the policy that drew the samples and s its strength:

    v⁺ = (1 − s)·v_old + s·v_θ                 the implicit positive policy
    v⁻ = (1 + s)·v_old − s·v_θ                 the implicit negative policy (v_old reflected)
    L(θ) = mean_i  r_i·‖v⁺ − v‖² + (1 − r_i)·‖v⁻ − v‖²     r_i ∈ [0, 1]
         + β · mean_j  ‖v − v_θ‖²              the same pre-training term

‖·‖² is taken as the mean over latent elements (diffusers' MSE), i.e. the paper's squared norm
divided by the latent size: a constant factor that the learning rate absorbs. v is the denoising
target of the scheduler's parameterisation (ε or the velocity); both mixes are affine in the
network output, so the objective is the same whichever one the network predicts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import DDPMScheduler

from t2i_rlhf.diffusion.targets import denoising_target


@dataclass
class LossTerms:
    total: torch.Tensor  # what is back-propagated
    model: torch.Tensor  # the model-sample term, e.g. mean_i r_i·err_i (detached)
    pretrain: torch.Tensor  # mean_j err_j, before β (detached)


def denoising_prediction(unet: torch.nn.Module, scheduler: DDPMScheduler, x0: torch.Tensor,
                         text_emb: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε_θ(x_t, t, z), its target) for x_t = add_noise(x0, noise, t). x_t is elementwise in each
    example, so calling it again on a slice of the batch gives that slice's x_t exactly."""
    x_t = scheduler.add_noise(x0, noise, t)
    pred = unet(x_t, t, encoder_hidden_states=text_emb, return_dict=False)[0]  # DDP-friendly
    return pred, denoising_target(scheduler, x0, noise, t)


def squared_errors(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-example ‖target − pred‖² (mean over elements, in float32), shape (B,)."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)


def denoising_errors(unet: torch.nn.Module, scheduler: DDPMScheduler, x0: torch.Tensor,
                     text_emb: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-example ‖ε − ε_θ(x_t, t, z)‖² (mean over elements), shape (B,)."""
    return squared_errors(*denoising_prediction(unet, scheduler, x0, text_emb, noise, t))


def _pretrain_term(pretrain_err: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    if pretrain_err is None or pretrain_err.numel() == 0:
        return like.new_zeros(())
    return pretrain_err.mean()


def finetune_loss(model_err: torch.Tensor, rewards: torch.Tensor, pretrain_err: torch.Tensor | None,
                  beta: float) -> LossTerms:
    """Reward-weighted denoising loss on model samples + β · plain denoising loss on pre-training
    data. A sample with r = 0 contributes nothing, so its gradient is exactly zero."""
    model_term = (rewards.to(model_err.dtype) * model_err).mean()
    pretrain_term = _pretrain_term(pretrain_err, model_err)
    total = model_term + beta * pretrain_term
    return LossTerms(total=total, model=model_term.detach(), pretrain=pretrain_term.detach())


def negative_aware_loss(pred: torch.Tensor, old_pred: torch.Tensor, target: torch.Tensor,
                        rewards: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-example r·‖v⁺ − v‖² + (1 − r)·‖v⁻ − v‖², shape (B,); pred = v_θ, old_pred = v_old
    (treated as a constant), target = v, strength = s (DiffusionNFT's β).

    Why it pushes away from bad images: at v_θ = v_old (the start of a round),

        ∂L/∂v_θ = 2s·r·(v_old − v) − 2s·(1 − r)·(v_old − v) = s·(2r − 1) · ∂‖v_θ − v‖²/∂v_θ,

    so a good sample (r = 1) is pulled towards as plain fine-tuning would with weight s, a bad one
    (r = 0) is pushed away with weight s, and r = 1/2 does nothing. In the reward-weighted loss
    r = 0 gives zero gradient: nothing there moves the model away from what it got wrong."""
    old = old_pred.detach().float()
    pred = pred.float()
    positive = (1.0 - strength) * old + strength * pred
    negative = (1.0 + strength) * old - strength * pred
    r = rewards.to(pred.dtype)
    return r * squared_errors(positive, target) + (1.0 - r) * squared_errors(negative, target)


def negative_aware_finetune_loss(model_loss: torch.Tensor, pretrain_err: torch.Tensor | None,
                                 beta: float) -> LossTerms:
    """mean_i of negative_aware_loss's per-example terms + β · plain denoising loss on
    pre-training data, the same regulariser as in finetune_loss."""
    model_term = model_loss.mean()
    pretrain_term = _pretrain_term(pretrain_err, model_loss)
    total = model_term + beta * pretrain_term
    return LossTerms(total=total, model=model_term.detach(), pretrain=pretrain_term.detach())
