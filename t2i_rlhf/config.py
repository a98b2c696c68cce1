"""The experiment config: one YAML file, validated on load (unknown keys, wrong types and
missing model paths are clear errors before anything starts).

Each section is the config model of the component it drives, so a key means the same thing in
`t2i-rlhf finetune`, `t2i-rlhf reward train` and `t2i-rlhf run`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from t2i_rlhf.actors.generation_config import GenerationConfig
from t2i_rlhf.training.finetune_config import FinetuneConfig
from t2i_rlhf.training.reward_config import RewardTrainingConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="run directory under `storage`")
    storage: str = Field("runs", description="local path or URI; everything the run writes lives under it")
    rounds: int = Field(..., ge=1)
    seed: int = 0
    finetune_from: Literal["previous", "base"] = Field(
        "previous", description="what each round fine-tunes: the previous round's model on the round's "
        "samples, or the base model on every round's samples so far, all re-scored by the latest reward "
        "model (as ReST-EM does, so that one round's drift does not compound)")


class ModelSection(_Strict):
    base: str = Field(..., description="diffusers StableDiffusion pipeline directory (local or mounted)")
    clip: str = Field(..., description="CLIPModel directory: the reward model's frozen backbone")
    validate_paths: bool = Field(True, description="check the directories exist on load (off for "
                                 "configs validated away from the cluster that holds the models)")


class RolloutSection(_Strict):
    generators: int = Field(2, ge=1)
    scorers: int = Field(1, ge=1)
    scorer_num_cpus: float = Field(1.0, ge=0)
    scorer_num_gpus: float = Field(0.0, ge=0)
    samples_per_round: int = Field(..., ge=1)
    seeds_per_prompt: int = Field(1, ge=1, description="images per prompt (distinct seeds) each round")
    prompt_split: Literal["train", "all"] = "train"
    prompts_file: str | None = Field(None, description="one prompt per line; default: the shapes grammar")
    category_weights: dict[str, float] | None = None
    buffer_capacity: int = Field(4096, ge=1)
    ready_timeout_s: float = Field(900, gt=0, description="for actors to load their models")
    generation: GenerationConfig = GenerationConfig()
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    generator_resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per generator, e.g. {gen_node: 0.01}")


class SimulatedLabellers(_Strict):
    workers: int = Field(4, ge=1)
    noise: float = Field(0.1, ge=0, le=1, description="fraction of verdicts flipped")


class LabellingSection(_Strict):
    url: str | None = Field(None, description="feedback service; None starts one locally for the run")
    admin_token_env: str = "T2I_FEEDBACK_ADMIN_TOKEN"
    labeller_token_env: str = "T2I_FEEDBACK_LABELLER_TOKEN"
    labels_per_round: int = Field(..., ge=1, description="samples published for labelling each round")
    selection: Literal["random", "uncertainty"] = "random"
    min_fraction: float = Field(1.0, gt=0, le=1, description="go on once this share is labelled")
    timeout_s: float = Field(3600, gt=0, description="then go on with what has arrived")
    poll_s: float = Field(2.0, gt=0)
    simulate: SimulatedLabellers | None = Field(None, description="start simulated labellers (demo/CI)")


class EvalSection(_Strict):
    per_category: int = Field(96, ge=1)
    steps: int = Field(20, ge=1)
    guidance: float = Field(1.0, ge=0)  # as the shapes rollouts sample; SD is usually sampled at 7.5
    every_round: bool = True
    threads: int | None = None
    # reuse the base model's evaluation from an earlier run with the same weights, judge and
    # settings (kept under <storage>/cache/base-eval/)
    cache_base: bool = True


class ExperimentConfig(_Strict):
    run: RunSection
    model: ModelSection
    rollout: RolloutSection
    labelling: LabellingSection
    reward: RewardTrainingConfig = RewardTrainingConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    pretrain_data: str | None = Field(None, description="pre-training Parquet for the β term; None: "
                                      "render the shapes world's into the run directory")
    pretrain_examples: int = Field(4096, ge=1)
    eval: EvalSection = EvalSection()

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.labelling.labels_per_round > self.rollout.samples_per_round:
            raise ValueError(f"labelling.labels_per_round ({self.labelling.labels_per_round}) exceeds "
                             f"rollout.samples_per_round ({self.rollout.samples_per_round})")
        if self.model.validate_paths:
            if not (Path(self.model.base) / "model_index.json").exists():
                raise ValueError(f"model.base: {self.model.base} is not a diffusers pipeline directory "
                                 "(no model_index.json)")
            if not (Path(self.model.clip) / "config.json").exists():
                raise ValueError(f"model.clip: {self.model.clip} is not a CLIPModel directory "
                                 "(no config.json)")
        return self

    @field_validator("pretrain_data")
    @classmethod
    def _expand(cls, v: str | None) -> str | None:
        return os.path.expandvars(v) if v else v

    @property
    def run_dir(self) -> str:
        storage = self.run.storage
        if "://" not in storage:
            storage = str(Path(storage).absolute())
        return f"{storage}/{self.run.name}"


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Read and validate a YAML experiment config; errors name the file and the bad key."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping with sections run, model, rollout, labelling, ...")
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    # The reward model's backbone defaults to the experiment's CLIP.
    data.setdefault("reward", {}).setdefault("backbone", (data.get("model") or {}).get("clip"))
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ValueError(f"{path}: invalid config:\n  " + "\n  ".join(lines)) from None
