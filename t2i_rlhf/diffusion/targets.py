"""The UNet's regression target, shared by pre-training and fine-tuning so the two train the same
parameterisation of the same model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from diffusers import DDPMScheduler


def denoising_target(scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor,
                     t: torch.Tensor) -> torch.Tensor:
    """ε for ε-prediction models (SD 1.x, shapes-sd); v for v-prediction ones (SD 2.x)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ValueError(f"unsupported prediction_type {kind!r}; expected 'epsilon' or 'v_prediction'")
