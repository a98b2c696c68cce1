"""The reward model's training options: pydantic and numpy only, so configs and the CLI
validate them without importing torch or the backbone."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from t2i_rlhf.training.reward_views import ImageViews

# "concat" is the paper's input [x, z]; "concat_product" adds x ⊙ z, the per-dimension agreement
# CLIP's similarity is built from, so a small MLP judges unseen prompt/image pairs from few labels.
Features = Literal["concat", "concat_product"]


class RewardTrainingConfig(BaseModel):
    """Loss defaults follow the paper (1024 hidden, λ = 0.5, T = 2). Dropout, 20 epochs and the
    label weights keep the head from learning the labels people disagree on; the views and the
    prompt margin make more of a small backbone (README, "Reward model")."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = "models/shapes-clip"  # any Hugging Face CLIPModel directory
    hidden: int = Field(1024, gt=0)
    features: Features = "concat_product"
    dropout: float = Field(0.5, ge=0, lt=1)
    lambda_aux: float = Field(0.5, ge=0)  # weight of the prompt-classification term; 0 = MSE only
    temperature: float = Field(2.0, gt=0)
    n_prompts: int = Field(8, ge=2)  # N: the true prompt and N−1 perturbations
    perturbation: str = "shapes"  # "shapes" | "none" | "package.module:function" (see reward_data)
    # Input the backbone's zero-shot margin of the prompt over its perturbations (reward_margin);
    # needs a perturbation function, and compares with up to `margin_prompts` of them.
    prompt_margin: bool = True
    margin_prompts: int = Field(16, ge=1)
    # Embed each image as the mean over these views (reward_views); ImageViews.single() = one.
    views: ImageViews = ImageViews()
    # Weigh each label by 1 − |y − r̂|, r̂ from heads trained on the other `label_folds` − 1
    # folds of prompts, so labels the rest of the data contradicts count less; 0 = all weigh 1.
    label_folds: int = Field(5, ge=0)
    epochs: int = Field(20, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(64, gt=0)
    heldout: Literal["shapes", "fraction", "none"] = "fraction"  # how prompts are held out
    heldout_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    device: str = "auto"  # "auto" = cuda when available
    num_gpus: float = Field(0, ge=0)  # Ray resources of the training task
    num_cpus: float = Field(1, ge=0)
    threads: int | None = Field(None, gt=0)  # torch CPU threads; 1 is fastest for this small MLP
    embedding_cache: str | None = None  # .npz file to keep backbone embeddings across runs

    @field_validator("label_folds")
    @classmethod
    def _folds(cls, v: int) -> int:
        if v == 1:
            raise ValueError("label_folds must be 0 (no label weights) or at least 2")
        return v
