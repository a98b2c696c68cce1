"""The reward model's loss (Lee et al. 2023, eq. 1 and 2):

    L(θ) = E_(x,z,y)[ (y − r_θ(x, z))² ]  +  λ · L_pc(θ)

    L_pc(θ) = E_(x,z): y=1 [ −log  exp(r_θ(x, z)/T) / Σ_{i=1..N} exp(r_θ(x, z_i)/T) ]

where z_1 = z is the true prompt and z_2..z_N are perturbations of it (count, colour, shape or
scene swapped). The auxiliary prompt-classification term teaches r what in the prompt the image
must agree with, which is what lets it generalise to unseen prompts. The squared error may weigh
samples unequally (train.py: labels held-out heads contradict weigh less)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def mse_term(r: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """E[(y − r(x, z))²] over labelled samples, y the mean of good=1 / bad=0 labels; with
    `weight`, the weighted mean."""
    if weight is None:
        return F.mse_loss(r, y)
    return (weight * (r - y) ** 2).sum() / weight.sum().clamp_min(1e-8)


def prompt_classification_term(
    r_candidates: torch.Tensor, valid: torch.Tensor, temperature: float
) -> torch.Tensor:
    """L_pc for a batch of good images: `r_candidates[b, 0]` is r(x_b, true prompt), the rest
    r(x_b, perturbed prompts); `valid` masks padding where a prompt has fewer than N−1
    perturbations. Zero (with grad) when there are no good images."""
    if r_candidates.shape[0] == 0:
        return r_candidates.sum()
    logits = (r_candidates / temperature).masked_fill(~valid, float("-inf"))
    target = torch.zeros(r_candidates.shape[0], dtype=torch.long, device=r_candidates.device)
    return F.cross_entropy(logits, target)


def reward_loss(
    r: torch.Tensor,
    y: torch.Tensor,
    r_candidates: torch.Tensor,
    valid: torch.Tensor,
    lam: float = 0.5,
    temperature: float = 2.0,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = MSE + λ · L_pc (the MSE weighted by `weight`, if given); returns the loss and its
    parts (floats, for logging)."""
    mse = mse_term(r, y, weight)
    pc = prompt_classification_term(r_candidates, valid, temperature) if lam > 0 else torch.zeros_like(mse)
    loss = mse + lam * pc
    return loss, {"loss": float(loss.detach()), "mse": float(mse.detach()), "prompt_ce": float(pc.detach())}
