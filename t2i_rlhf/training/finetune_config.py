"""Every hyper-parameter of one fine-tuning round, in one validated object (CleanRL style).

The config is hashed into the model version's manifest and into the Ray Train run directory, so a
re-run of a round with a different config is refused instead of silently resuming the wrong run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class FinetuneConfig(BaseModel):
    """Fine-tuning on scored model samples with NLL regularisation (Lee et al. 2023, section 4.3),
    by reward-weighted likelihood or by the negative-aware objective of DiffusionNFT."""

    model_config = ConfigDict(extra="forbid")

    # --- the objective: mean_i ℓ(r_i, sample i) + beta · mean_j ‖ε − ε_θ‖² (finetune_loss.py) ---
    # "reward_weighted": ℓ = r·‖ε − ε_θ‖², the paper's (Lee et al. 2023, arXiv 2302.12192);
    # "negative_aware": ℓ = r·‖v⁺ − v‖² + (1 − r)·‖v⁻ − v‖² against the frozen parent, which also
    # pushes away from bad samples (DiffusionNFT, arXiv 2509.16117); needs r ∈ [0, 1]
    objective: Literal["reward_weighted", "negative_aware"] = "reward_weighted"
    nft_strength: float = Field(1.0, gt=0.0)  # DiffusionNFT's β: how far v± sit from the parent
    reward_source: Literal["reward", "label"] = "reward"  # reward-model score or mean human label
    # "prompt": r' = 1/2 + 1/2·clip((r − mean of r over its prompt's samples) / std of r over the
    # round, ±reward_clip) / reward_clip, in [0, 1] (DiffusionNFT's group normalisation); "none": r
    reward_normalization: Literal["none", "prompt"] = "none"
    reward_clip: float = Field(1.0, gt=0.0)  # c above, in round-wide standard deviations
    beta: float = Field(1.0, ge=0.0)  # weight of the pre-training (NLL) term; 0 turns it off
    model_fraction: float = Field(0.5, gt=0.0, le=1.0)  # share of each batch from model samples
    # pre-training captions replaced by "" as in the base model's own pre-training, so that the
    # unconditional prediction classifier-free guidance subtracts stays anchored to the base's
    caption_dropout: float = Field(0.1, ge=0.0, lt=1.0)

    # --- what is trained ---
    lora: bool = False  # False: the whole UNet; True: a peft LoRA adapter on its attention
    lora_rank: int = Field(8, ge=1)
    lora_alpha: float | None = None  # None: equal to the rank (scale 1)
    lora_targets: list[str] = ["to_q", "to_k", "to_v", "to_out.0"]

    # --- optimisation ---
    batch_size: int = Field(16, ge=1)  # examples per micro-batch per worker, both sources together
    grad_accum: int = Field(1, ge=1)  # micro-batches per optimizer step
    epochs: float = Field(1.0, gt=0.0)  # passes over the round's model samples
    max_steps: int | None = Field(None, ge=1)  # if set, overrides `epochs`
    lr: float = Field(1e-5, gt=0.0)
    lora_lr: float = Field(1e-4, gt=0.0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.01, ge=0.0)
    max_grad_norm: float | None = Field(1.0, gt=0.0)
    # > 0: the exported version is an exponential moving average of the trained weights, started
    # at the parent's. A base model released as an EMA (SD, shapes-sd) sits below the noise floor
    # of raw optimizer steps: measured on shapes-sd, 32 raw steps at lr 2e-5 raise its denoising
    # loss on held-out renders by 4% (to the raw pre-training weights' level) and an EMA of 0.98
    # keeps it within 0.2%. Leave it off only at learning rates too small to add that noise.
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"  # auto: bf16/fp16 on GPU only
    seed: int = 0

    # --- Ray Train ---
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    threads_per_worker: int = Field(1, ge=1)  # torch threads and CPUs reserved per worker
    resources_per_worker: dict[str, float] | None = None  # None: {"CPU": threads_per_worker}
    max_failures: int = Field(2, ge=-1)  # worker-group restarts from the last checkpoint
    checkpoint_every: int = Field(50, ge=1)  # optimizer steps between checkpoints
    checkpoints_to_keep: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1)

    # --- data ---
    latent_cache: Path = Path("runs/cache/pretrain-latents")  # VAE latents of the pre-training set
    shuffle_buffer: int = Field(256, ge=0)  # local shuffle buffer per worker (0: no shuffling)
    # a worker's shard of a source at most this large (uncompressed) is read once and shuffled in
    # memory each epoch; larger ones stream through Ray Data every epoch. 0: always stream
    shard_memory_mb: float = Field(1024.0, ge=0.0)

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.uses_pretrain and self.pretrain_batch < 1:
            raise ValueError(
                f"batch_size={self.batch_size} with model_fraction={self.model_fraction} leaves no room "
                "for pre-training examples; raise batch_size or set model_fraction=1 / beta=0"
            )
        return self

    @property
    def model_batch(self) -> int:
        """Model samples per micro-batch (the rest are pre-training examples)."""
        if not self.uses_pretrain:
            return self.batch_size
        return max(1, round(self.batch_size * self.model_fraction))

    @property
    def pretrain_batch(self) -> int:
        return self.batch_size - self.model_batch if self.uses_pretrain else 0

    @property
    def uses_pretrain(self) -> bool:
        """beta = 0 makes the pre-training term vanish, so its examples are not even loaded."""
        return self.beta > 0 and self.model_fraction < 1.0

    @property
    def workers_resources(self) -> dict[str, float]:
        return self.resources_per_worker or {"CPU": float(self.threads_per_worker)}

    def config_hash(self) -> str:
        """Short stable hash of every field: what the manifest records as `config_hash`."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> FinetuneConfig:
        """Load from YAML: the whole file, or its `finetune:` section; bad keys are errors."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of fine-tuning settings")
        if isinstance(data.get("finetune"), dict):
            data = data["finetune"]
        return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}})
