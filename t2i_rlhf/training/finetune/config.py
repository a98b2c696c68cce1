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

# CPUs Ray Data needs beside the worker group: its read tasks (default num_cpus=1) feed the
# workers, and the one-off VAE encoding of the pre-training set (data.pretrain_latent_files) is a
# num_cpus=1 task too. Without one free, the dataset never starts and the workers wait forever.
RAY_DATA_CPUS = 1


class FinetuneConfig(BaseModel):
    """Fine-tuning on scored model samples with NLL regularisation (Lee et al. 2023, section 4.3),
    by reward-weighted likelihood or by the negative-aware objective of DiffusionNFT."""

    model_config = ConfigDict(extra="forbid")

    # --- the objective: mean_i ℓ(r_i, sample i) + beta · mean_j ‖ε − ε_θ‖² (loss.py) ---
    objective: Literal["reward_weighted", "negative_aware"] = Field("reward_weighted", description=(
        "The loss ℓ on each model sample: `reward_weighted` is the paper's ℓ = r·‖ε − ε_θ‖² (Lee et al. "
        "2023, arXiv 2302.12192); `negative_aware` is ℓ = r·‖v⁺ − v‖² + (1 − r)·‖v⁻ − v‖² against the "
        "frozen parent, which also pushes away from bad samples (DiffusionNFT, arXiv 2509.16117) and "
        "needs r ∈ [0, 1]."))
    nft_strength: float = Field(1.0, gt=0.0, description=(
        "DiffusionNFT's β for `negative_aware`: how far v⁺ and v⁻ sit from the parent."))
    reward_source: Literal["reward", "label", "agreement"] = Field("reward", description=(
        "What r is: the reward model's score (`reward`), the sample's mean human label (`label`), or "
        "`agreement`: 1 where the score is ≥ `reward_threshold` (0.5 if unset) and the sample's labels, "
        "if it has any, say good too (mean ≥ 0.5), else 0, so that the reward model and the labellers "
        "filter each other's errors (rewards.py)."))
    reward_normalization: Literal["none", "prompt", "category"] = Field("none", description=(
        "`none` uses r as it is; `prompt` uses r' = 1/2 + 1/2·clip((r − mean of r over its prompt's "
        "samples) / std of r over the round, ±c) / c with c = `reward_clip`, in [0, 1] (DiffusionNFT's "
        "group normalisation); `category` (reward_weighted only) uses r' = r · (mean r of the round) / "
        "(mean r of the sample's category), so each category weighs by its share of the prompts, not by "
        "how often the model already gets it right (rewards.py derives it)."))
    reward_threshold: float | None = Field(None, gt=0.0, description=(
        "If set, r becomes 1 where r ≥ this and 0 elsewhere, before `reward_normalization` (fit on the "
        "result): the reward model's score read as its verdict, so the images it calls bad get no weight "
        "instead of their score (rewards.py derives it). null: r as it is."))
    reward_clip: float = Field(1.0, gt=0.0, description=(
        "c of `reward_normalization: prompt`, in round-wide standard deviations."))
    beta: float = Field(1.0, ge=0.0, description=(
        "Weight β of the pre-training (NLL) term; 0 turns it off and its examples are not loaded."))
    model_fraction: float = Field(0.5, gt=0.0, le=1.0, description=(
        "Share of each batch from model samples, the rest pre-training examples; `batch_size` must leave "
        "room for at least one of those unless `beta` is 0 or this is 1."))
    timestep_range: tuple[float, float] = Field((0.0, 1.0), description=(
        "The share of the noise schedule the loss samples t from, uniformly: [lo, hi) of "
        "num_train_timesteps (1 is pure noise). Where the layout (an image's count, its objects' "
        "places) is decided, at high noise, a range such as [0.5, 1] spends every step there, and leaves "
        "the low-noise detail (colours, edges) as the parent drew it."))
    caption_dropout: float = Field(0.1, ge=0.0, le=1.0, description=(
        "Share of pre-training captions replaced by \"\", as in the base model's own pre-training, so that "
        "the unconditional prediction classifier-free guidance subtracts stays anchored to the base's. "
        "1: an unconditional β term, which anchors what the images look like (their colours, scenes, "
        "variety) and says nothing of what the captions claim, e.g. their noisy count words."))

    # --- what is trained ---
    lora: bool = Field(False, description=(
        "Train a peft LoRA adapter on the UNet's attention instead of the whole UNet."))
    lora_rank: int = Field(8, ge=1, description="Rank of the LoRA adapter.")
    lora_alpha: float | None = Field(None, description="LoRA alpha; null: equal to the rank (scale 1).")
    lora_targets: list[str] = Field(["to_q", "to_k", "to_v", "to_out.0"], description=(
        "UNet modules the LoRA adapter is added to."))

    # --- optimisation ---
    batch_size: int = Field(16, ge=1, description=(
        "Examples per micro-batch per worker, model samples and pre-training examples together."))
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    epochs: float = Field(1.0, gt=0.0, description="Passes over the round's model samples.")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; if set, overrides `epochs`.")
    lr: float = Field(1e-5, gt=0.0, description="AdamW learning rate when the whole UNet is trained.")
    lora_lr: float = Field(1e-4, gt=0.0, description="AdamW learning rate when a LoRA adapter is trained.")
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear learning-rate warm-up; 0: none.")
    weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay.")
    max_grad_norm: float | None = Field(1.0, gt=0.0, description=(
        "Clip the gradient norm to this; null: no clipping."))
    # A base model released as an EMA (SD, shapes-sd) sits below the noise floor of raw optimizer
    # steps: measured on shapes-sd, 32 raw steps at lr 2e-5 raise its denoising loss on held-out
    # renders by 4% (to the raw pre-training weights' level) and an EMA of 0.98 keeps it within 0.2%.
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "Above 0, the exported version is an exponential moving average of the trained weights with this "
        "decay, started at the parent's; 0 exports the raw weights. Raw optimizer steps add noise to a "
        "base released as an EMA (SD, shapes-sd): leave it off only at learning rates too small to add "
        "that noise."))
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = Field("auto", description=(
        "Autocast dtype; `auto`: bf16 (fp16 where bf16 is unsupported) on GPU, none on CPU."))
    seed: int = Field(0, description="Seed of the noise, timesteps and data order.")

    # --- Ray Train ---
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel).")
    use_gpu: bool = Field(False, description="Give each Ray Train worker a GPU.")
    threads_per_worker: int = Field(1, ge=1, description="Torch threads per worker, and the CPUs reserved for it.")
    resources_per_worker: dict[str, float] | None = Field(None, description=(
        "Ray resources per worker; null: `{CPU: threads_per_worker}`."))
    max_failures: int = Field(2, ge=-1, description=(
        "Worker-group restarts from the last checkpoint before the round fails; -1: unlimited."))
    checkpoint_every: int = Field(50, ge=1, description="Optimizer steps between checkpoints.")
    checkpoints_to_keep: int = Field(2, ge=1, description="Ray Train checkpoints kept.")
    log_every: int = Field(10, ge=1, description="Optimizer steps between metric reports.")

    # --- data ---
    latent_cache: Path = Field(Path("runs/cache/pretrain-latents"), description=(
        "Directory that caches the VAE latents of the pre-training set."))
    shuffle_buffer: int = Field(256, ge=0, description="Local shuffle buffer per worker, in examples; 0: no shuffling.")
    shard_memory_mb: float = Field(1024.0, ge=0.0, description=(
        "A worker's shard of a source at most this large (MB, uncompressed) is read once and shuffled in "
        "memory each epoch; larger ones stream through Ray Data every epoch. 0: always stream."))

    @model_validator(mode="after")
    def _check(self) -> FinetuneConfig:
        if self.objective == "negative_aware" and self.reward_normalization == "category":
            raise ValueError("reward_normalization='category' is for objective='reward_weighted': its r' can "
                             "exceed 1, and the negative-aware loss reads r as a probability; use 'prompt'")
        lo, hi = self.timestep_range
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"timestep_range={list(self.timestep_range)} must satisfy 0 <= lo < hi <= 1")
        if self.uses_pretrain and self.pretrain_batch < 1:
            raise ValueError(
                f"batch_size={self.batch_size} with model_fraction={self.model_fraction} leaves no room "
                "for pre-training examples; raise batch_size or set model_fraction=1 / beta=0"
            )
        return self

    @property
    def verdict_threshold(self) -> float:
        """τ of `reward_source: agreement`: `reward_threshold`, or 0.5 where it is unset."""
        return 0.5 if self.reward_threshold is None else self.reward_threshold

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

    @property
    def worker_bundle(self) -> dict[str, float]:
        """What each Ray Train worker reserves, as ScalingConfig reads it: `workers_resources`
        without zeros, plus one GPU with `use_gpu` unless a GPU count is given. The trainer passes
        exactly this, so the run's resource check (online/resources.py) counts what is asked."""
        bundle = {k: float(v) for k, v in self.workers_resources.items() if v != 0}
        if self.use_gpu:
            bundle.setdefault("GPU", 1.0)
        return bundle

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
