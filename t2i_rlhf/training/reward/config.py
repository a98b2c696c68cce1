"""The reward model's training options: pydantic and numpy only, so configs and the CLI
validate them without importing torch or the backbone."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from t2i_rlhf.training.reward.views import ImageViews

# The head's input (meaning: RewardTrainingConfig.features).
Features = Literal["concat", "concat_product"]


class RewardTrainingConfig(BaseModel):
    """Loss defaults follow the paper (1024 hidden, λ = 0.5, T = 2). Dropout, 20 epochs and the
    label weights keep the head from learning the labels people disagree on; the views and the
    prompt margin make more of a small backbone (docs/experiments.md)."""

    model_config = ConfigDict(extra="forbid")

    backbone: str = Field("models/shapes-clip", description=(
        "Hugging Face CLIPModel directory: the reward model's frozen backbone. In an experiment config "
        "it defaults to `model.clip`."))
    hidden: int = Field(1024, gt=0, description="Hidden units of the reward head (an MLP on the embeddings).")
    features: Features = Field("concat_product", description=(
        "The head's input: `concat` is the paper's [x, z] (image and prompt embeddings); `concat_product` "
        "adds x ⊙ z, the per-dimension agreement CLIP's similarity is built from, so a small MLP judges "
        "unseen prompt/image pairs from few labels."))
    dropout: float = Field(0.5, ge=0, lt=1, description="Dropout rate in the reward head.")
    lambda_aux: float = Field(0.5, ge=0, description=(
        "Weight λ of the prompt-classification term; 0 trains on the MSE only."))
    temperature: float = Field(2.0, gt=0, description=(
        "Temperature T of the prompt-classification term (the rewards are divided by it before the softmax)."))
    n_prompts: int = Field(8, ge=2, description=(
        "N, the prompts the classification term chooses among: the true prompt and N − 1 perturbations."))
    perturbation: str = Field("shapes", description=(
        "How wrong prompts are made: `shapes` swaps count, colour, shape or scene of a shapes-grammar "
        "prompt; `none` turns the prompt-classification term off; `package.module:function` names a "
        "function f(prompt, n, seed) returning up to n distinct wrong prompts."))
    prompt_margin: bool = Field(True, description=(
        "Input the backbone's zero-shot margin of the prompt over its perturbations to the head; needs a "
        "perturbation function."))
    margin_prompts: int = Field(16, ge=1, description="Perturbations the prompt margin compares with, at most.")
    views: ImageViews = Field(ImageViews(), description=(
        "Embed each image as the mean of the backbone's embeddings of these views, alike in training and "
        "scoring; `{flip: false, shift: 0}` is the paper's single embedding."))
    label_folds: int = Field(5, ge=0, description=(
        "Weigh each label by 1 − |y − r̂|, r̂ from heads trained on the other `label_folds` − 1 folds of "
        "prompts, so labels the rest of the data contradicts count less; 0 weighs every label 1 "
        "(1 is not allowed)."))
    epochs: int = Field(20, gt=0, description="Passes over the labelled training examples.")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of the head.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay of the head.")
    batch_size: int = Field(64, gt=0, description="Labelled examples per optimizer step.")
    heldout: Literal["shapes", "fraction", "none"] = Field("fraction", description=(
        "How prompts are held out for evaluation, per prompt so held-out prompts are unseen: `shapes` holds "
        "out the shapes world's fixed held-out prompts; `fraction` a seeded hash sets about "
        "`heldout_fraction` of distinct prompts aside; `none` trains on everything."))
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description=(
        "Share of distinct prompts held out when `heldout` is `fraction`."))
    seed: int = Field(0, description="Seed of the head's initialisation, batch order, held-out split and folds.")
    device: str = Field("auto", description="Torch device to train on; `auto` is CUDA when available, else CPU.")
    num_gpus: float = Field(0, ge=0, description="Ray GPUs reserved for the reward-training task.")
    num_cpus: float = Field(1, ge=0, description="Ray CPUs reserved for the reward-training task.")
    threads: int | None = Field(None, gt=0, description=(
        "Torch CPU threads; null keeps torch's default (1 is fastest for this small MLP)."))
    embedding_cache: str | None = Field(None, description=(
        "`.npz` file that keeps the backbone's embeddings across runs; null: no cache."))

    @field_validator("label_folds")
    @classmethod
    def _folds(cls, v: int) -> int:
        if v == 1:
            raise ValueError("label_folds must be 0 (no label weights) or at least 2")
        return v
