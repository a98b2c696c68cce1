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
from t2i_rlhf.training.finetune.config import FinetuneConfig
from t2i_rlhf.training.reward.config import RewardTrainingConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description=(
        "Name of the run's directory under `storage`: letters, digits, `_`, `.` and `-`."))
    storage: str = Field("runs", description="Local path or URI; everything the run writes lives under it.")
    rounds: int = Field(..., ge=1, description=(
        "Rounds of the online loop (generate, label, train the reward model, fine-tune, evaluate)."))
    seed: int = Field(0, description=(
        "Seed of the rounds' prompts and sample seeds, the labelling selection, the simulated labellers "
        "and the evaluation's seeds."))
    finetune_from: Literal["previous", "base"] = Field("previous", description=(
        "What each round fine-tunes: the previous round's model on the round's samples, or the base model "
        "on every round's samples so far, all re-scored by the latest reward model (as ReST-EM does, so "
        "that one round's drift does not compound)."))
    resource_check: Literal["error", "warn", "off"] = Field("error", description=(
        "Before any actor starts, compare what the run reserves at once (its generators and scorers, held for "
        "the whole run, plus its largest step: the reward-model task, or the training workers and a Ray Data "
        "task) with the Ray cluster's totals per resource, and each single actor's, worker's or task's "
        "resources with the nodes. `error` stops the run with what is short and how to fix it (Ray would "
        "otherwise queue the step forever); `warn` logs that and goes on, for a cluster with an autoscaler "
        "that adds nodes on demand; `off` skips the check."))
    resource_wait_warn_s: float = Field(60.0, gt=0, description=(
        "Seconds the reward-model task may wait to be scheduled before the run logs a warning with what it "
        "needs and what the cluster has free (again every as many seconds while it waits). The fine-tuning "
        "group's wait is Ray Train's own: it times out after `RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S` (60 s) "
        "with its own message."))


class ModelSection(_Strict):
    base: str = Field(..., description=(
        "Diffusers StableDiffusion pipeline directory (local or mounted; must hold model_index.json)."))
    clip: str = Field(..., description=(
        "CLIPModel directory (must hold config.json): the reward model's frozen backbone, and the image "
        "features of the evaluation's Fréchet distance."))
    validate_paths: bool = Field(True, description=(
        "Check on load that the directories exist; off for configs validated away from the cluster that "
        "holds the models."))


class RolloutSection(_Strict):
    generators: int = Field(2, ge=1, description="Generator actors, each with its own copy of the pipeline.")
    scorers: int = Field(1, ge=1, description="Reward-scorer actors that score samples as they are generated.")
    scorer_num_cpus: float = Field(1.0, ge=0, description="Ray CPUs reserved per scorer actor.")
    scorer_num_gpus: float = Field(0.0, ge=0, description="Ray GPUs per scorer actor; above 0 it scores on CUDA.")
    samples_per_round: int = Field(..., ge=1, description="Samples generated each round.")
    seeds_per_prompt: int = Field(1, ge=1, description="Images per prompt (distinct seeds) each round.")
    prompt_split: Literal["train", "all"] = Field("train", description=(
        "Which shapes-grammar prompts are sampled: `train` leaves the held-out evaluation prompts out; "
        "`all` does not."))
    prompts_file: str | None = Field(None, description=(
        "File of prompts, one per line, sampled each round; null: the shapes grammar."))
    category_weights: dict[str, float] | None = Field(None, description=(
        "Shapes-grammar categories (count, colour, background, combination) to sample, with their weights; "
        "null: every category in equal shares."))
    buffer_capacity: int = Field(4096, ge=1, description=(
        "Samples the shared sample buffer holds at once; generators wait while it is full."))
    ready_timeout_s: float = Field(900, gt=0, description="Seconds for the actors to load their models.")
    max_restarts: int = Field(3, ge=-1, description=(
        "Times Ray restarts a generator or scorer actor that dies (a lost node, a killed process); -1: without "
        "limit, 0: never. A restarted actor is set to the current model or reward-model version before it gets "
        "work again, and the chunk it lost is generated again, so every sample is stored once."))
    generation: GenerationConfig = Field(GenerationConfig(), description=(
        "Sampling and placement options of each generator actor."))
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field("PACK", description=(
        "Ray placement-group strategy of the generator actors."))
    generator_resources: dict[str, float] = Field(default_factory=dict, description=(
        "Custom Ray resources per generator, e.g. `{gen_node: 0.01}` to pin generation to the nodes that "
        "advertise them."))


class SimulatedLabellers(_Strict):
    workers: int = Field(4, ge=1, description="Simulated labellers posting at once.")
    noise: float = Field(0.1, ge=0, le=1, description="Fraction of verdicts flipped.")
    labels_per_s: float | None = Field(None, ge=0, allow_inf_nan=False, description=(
        "Each simulated labeller's mean rate, as a person labels (e.g. 0.25: 4 s a label), each label "
        "posted as it is made; null or 0: as fast as the service answers. A round's labelling then takes "
        "about `labels_per_round` / (`workers` · `labels_per_s`) seconds."))
    rate_spread: float = Field(0.5, ge=0, le=5, allow_inf_nan=False, description=(
        "Coefficient of variation of each label's think time, drawn from a lognormal with mean "
        "1 / `labels_per_s`, reproducibly from `run.seed`, the labeller and the sample; 0: every label "
        "takes the mean. Read only with `labels_per_s`."))


class LabellerReliability(_Strict):
    mode: Literal["off", "drop", "weight"] = Field("off", description=(
        "How a label counts by its labeller's accuracy on the feedback service's gold tasks "
        "(`t2i_rlhf.services.reliability`): `off`, all alike; `drop`, labels of labellers below "
        "`min_accuracy` are left out; `weight`, each label weighs 2·accuracy − 1 in its sample's mean (with one "
        "label per sample that only drops labellers at chance: use `drop`). Needs gold tasks published "
        "on the service; labellers with fewer than `min_gold` graded gold labels count fully."))
    min_gold: int = Field(5, ge=1, description=(
        "Graded (good/bad) gold labels a labeller needs before their accuracy is used."))
    min_accuracy: float = Field(0.75, ge=0, le=1, description=(
        "With `drop`: labellers whose smoothed gold accuracy, (correct + 1) / (graded + 2), is below this "
        "are left out."))


class LabellingSection(_Strict):
    url: str | None = Field(None, description="Feedback service URL; null starts one locally for the run.")
    admin_token_env: str = Field("T2I_FEEDBACK_ADMIN_TOKEN", description=(
        "Environment variable with the feedback service's admin token. Unless it and `labeller_token_env` "
        "are both set, tokens are generated once per run and kept in the run directory."))
    labeller_token_env: str = Field("T2I_FEEDBACK_LABELLER_TOKEN", description=(
        "Environment variable with the labellers' token (see `admin_token_env`)."))
    labels_per_round: int = Field(..., ge=1, description=(
        "Samples published for labelling each round; at most `rollout.samples_per_round`."))
    selection: Literal["random", "uncertainty"] = Field("random", description=(
        "Which samples are published: `random`, or `uncertainty` (reward closest to 0.5 first; random while "
        "there is no reward model yet)."))
    min_fraction: float = Field(1.0, gt=0, le=1, description=(
        "Go on once this share of the published samples is labelled."))
    timeout_s: float = Field(3600, gt=0, description=(
        "Seconds to wait for labels; then the round goes on with what has arrived."))
    poll_s: float = Field(2.0, gt=0, description="Seconds between checks of the labelling progress.")
    simulate: SimulatedLabellers | None = Field(None, description="Start simulated labellers (demo/CI).")
    reliability: LabellerReliability = Field(LabellerReliability(), description=(
        "Weigh or drop labels by their labeller's accuracy on gold tasks, when the loop pulls them."))


class EvalSection(_Strict):
    per_category: int = Field(96, ge=1, description=(
        "(prompt, seed) pairs judged per category, in each of `splits`."))
    splits: list[Literal["heldout", "train"]] = Field(
        default_factory=lambda: ["heldout", "train"], min_length=1, description=(
            "Prompt splits judged, each reported apart as in the paper: `heldout` (unseen: prompts the rollouts "
            "leave out under `rollout.prompt_split: train`) and `train` (seen: the training split's prompts, "
            "at seeds no rollout uses). Each split costs `per_category` images a category per evaluation; "
            "`[heldout]` halves the evaluation's time."))
    steps: int = Field(20, ge=1, description="Denoising steps of the evaluation's images.")
    guidance: float = Field(1.0, ge=0, description=(
        "Classifier-free guidance scale of the evaluation's images; the default samples as the shapes "
        "rollouts do (SD is usually sampled at 7.5)."))
    every_round: bool = Field(True, description="Evaluate after every round; false: after the last only.")
    threads: int | None = Field(None, description=(
        "Torch CPU threads for evaluation; `t2i-rlhf run` evaluates on the generator actors and does not "
        "read it."))
    cache_base: bool = Field(True, description=(
        "Reuse the base model's evaluation from an earlier run with the same weights, judge and settings "
        "(kept under `<storage>/cache/base-eval/`; local storage only)."))
    shipped_base_evals: list[str] = Field(default_factory=list, description=(
        "Read-only directories of base evaluations stored as that cache stores them (`<dir>/<key>/eval.json`), "
        "read when the run's own cache has none: the repository ships the demo's in `models/base-eval`, so "
        "a fresh clone does not re-evaluate the unchanged base. An entry made by other weights, judge or "
        "settings has another key and is never read."))

    @field_validator("splits")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"each split at most once, got {v}")
        return v


class HindsightSection(_Strict):
    enabled: bool = Field(False, description=(
        "Fine-tune also on the round's bad images, each as a good image of the prompt the reward model says it "
        "shows (an image of three circles drawn for \"two circles\" becomes one of \"three circles\"): "
        "hindsight relabelling (online/hindsight.py). Only prompts the rollout draws are named."))
    threshold: float = Field(0.9, gt=0.0, lt=1.0, description=(
        "The score a perturbation of a bad sample's prompt needs for the sample to be relabelled with it. A "
        "sample is bad when its score is below `finetune.reward_threshold` (0.5 if unset) or its labels say "
        "bad. The reward model is less sure of prompts it was not asked about: 0.9 kept 80% of relabels "
        "right on a demo round, 0.5 73%."))
    prompts: int = Field(32, ge=1, description=(
        "Perturbations of the prompt (`reward.perturbation`) each bad image is scored against, at most (single "
        "swaps first)."))


class ExperimentConfig(_Strict):
    run: RunSection = Field(..., description="The run's name, storage, rounds and seed.")
    model: ModelSection = Field(..., description="The base diffusion model and the CLIP model.")
    rollout: RolloutSection = Field(..., description="Each round's samples, generated by Ray actors.")
    labelling: LabellingSection = Field(..., description=(
        "Human feedback: how many samples are labelled, which, where, and how long the round waits."))
    reward: RewardTrainingConfig = Field(RewardTrainingConfig(), description=(
        "The reward model trained each round (the options of `t2i-rlhf reward train`)."))
    finetune: FinetuneConfig = Field(FinetuneConfig(), description=(
        "The fine-tuning of each round (the options of `t2i-rlhf finetune`)."))
    hindsight: HindsightSection = Field(HindsightSection(), description=(
        "Bad images relabelled with the prompt they show, as extra fine-tuning samples."))
    pretrain_data: str | None = Field(None, description=(
        "Pre-training Parquet for the β term (environment variables are expanded); null: render the "
        "shapes world's into the run directory."))
    pretrain_examples: int = Field(4096, ge=1, description=(
        "Pre-training examples rendered when `pretrain_data` is null."))
    eval: EvalSection = Field(EvalSection(), description=(
        "Evaluation of each round's model on held-out (unseen) and training (seen) prompts."))

    @model_validator(mode="after")
    def _check(self) -> ExperimentConfig:
        if self.hindsight.enabled and self.finetune.reward_source == "label":
            raise ValueError("hindsight.enabled needs finetune.reward_source 'reward' or 'agreement': relabelled "
                             "samples have no labels, so with 'label' they would carry no r")
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
