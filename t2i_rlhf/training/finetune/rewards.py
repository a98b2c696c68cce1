"""Rewards as each objective wants them, computed once per round on the driver.

Per-prompt group normalisation (`prompt`, the form DiffusionNFT, arXiv 2509.16117, uses), for the
negative-aware objective, with c the clip:

    r'_i = 1/2 + 1/2 · clip((r_i − mean_{j : z_j = z_i} r_j) / std_j r_j, −c, c) / c

The mean is over the round's samples of the same prompt z_i, so an image counts as good or bad
against the other images of its own prompt, not because its prompt is easy or hard for the reward
model. The std is one number over all the round's samples (population std), so a prompt whose
images all score alike stays near r' = 1/2, where the negative-aware loss neither pulls nor pushes.
A round whose rewards are all equal carries no preference at all: r' = 1/2 everywhere.

Success-rate weighting (`category`), for the reward-weighted objective. Reward-weighted likelihood
aims at p*(x | z) ∝ p_old(x | z) · r(x, z), the parent's images of prompt z re-weighted by their
reward. Its maximum-likelihood fit over the prompt distribution q(z) is

    max_θ E_{z~q} E_{x~p*(·|z)} log p_θ(x | z) = E_{z~q} E_{x~p_old(·|z)} [r / Z(z)] · log p_θ(x | z),
    Z(z) = E_{x~p_old(·|z)} r(x, z)   (the prompt's success rate),

while the paper's loss weights each sample by r alone, i.e. each prompt by its success rate Z(z):
the prompts the model already gets right dominate the round, and those it fails on, where a good
image teaches the most, weigh least. Dividing by Z restores the conditional target. With few
seeds per prompt Z(z) cannot be estimated per prompt, so it is taken over the prompt's category g
(the samples' `category` column; one group if it is empty), and scaled by the round's mean r̄ so
that the model term keeps the paper's overall scale against β's pre-training term:

    r'_i = r_i · r̄ / Z(g_i),   Z(g) = mean_{j : g_j = g} r_j

A category with Z = 0 has r = 0 everywhere and stays 0. r' may exceed 1, so it is for the
reward-weighted loss only.

A threshold (`reward_threshold` τ), before either: r_i ← 1[r_i ≥ τ]. The reward model's score
s(x, z) estimates P(good | x, z), so the paper's target p_old · s / Z keeps every bad image at its
score: on this project's rounds bad images score 0.18 on average against 0.97 for good ones, and in
a category the model gets right a third of the time a quarter of the weight then falls on bad
images. With the threshold the target is p_old restricted to {s ≥ τ}, the parent's images the
reward model calls good: the paper's target with a 0/1 reward, the reward model used as the
classifier it was trained as (rejection-sampling fine-tuning). The statistics above are then fit on
the thresholded r.

Label agreement (`reward_source: agreement`), where a round's samples carry both a reward-model
score s and human labels: r_i = 1[s_i ≥ τ] · 1[ȳ_i ≥ 1/2], with ȳ_i the sample's mean label (the
score alone where a sample has none). The reward model and the labellers err mostly on different
images (the model where its embedding is ambiguous, a labeller at random), so a positive both
agree on is rarely wrong: on a demo round's 2,048 samples 98% of those were judged good, against
90% for s ≥ 0.5 and 94% for ȳ ≥ 1/2, at a recall of 89%. For the paper's target, p_old restricted
to good images, a wrong positive is trained on, while a missed one is only left out.

The statistics are computed once on the driver, from the Parquet files, and applied to the reward
column in the Ray Data pipeline, so the workers read one reward column whatever the setting.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

log = logging.getLogger(__name__)


class _OnRewards:
    """A transform of r alone (given each sample's prompt): what it reads of a table."""

    columns: ClassVar[tuple[str, ...]] = ()  # columns it reads besides `prompt` and r

    def apply(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def of_table(self, table: pa.Table, column: str) -> np.ndarray:
        """The transformed r of each row of `table`, whose r is `column`."""
        return self.apply(table.column("prompt").to_pylist(), _floats(table, column))


@dataclass(frozen=True)
class PromptNormalization(_OnRewards):
    """The round's per-prompt reward means, its global reward std and the clip c."""

    means: dict[str, float]
    std: float
    clip: float

    def apply(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        """r' for each (prompt, r), as float64 in [0, 1]."""
        rewards = np.asarray(rewards, dtype=np.float64)
        if self.std == 0.0:
            return np.full(rewards.shape, 0.5)
        centred = rewards - _per_prompt(self.means, prompts, "reward mean", "normalised")
        z = np.clip(centred / self.std, -self.clip, self.clip)
        return 0.5 + 0.5 * z / self.clip


def fit_prompt_normalization(prompts: Sequence[str], rewards: np.ndarray, clip: float) -> PromptNormalization:
    """Per-prompt means and the global std of `rewards`."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if len(rewards) == 0:
        raise ValueError("no scored samples to normalise the rewards of")
    if clip <= 0:
        raise ValueError(f"reward_clip must be > 0, got {clip}")
    return PromptNormalization(means=_group_means(prompts, rewards), std=float(rewards.std()), clip=float(clip))


def read_prompt_normalization(files: list[Path], column: str, clip: float,
                              before: Verdict | None = None) -> PromptNormalization:
    """fit_prompt_normalization over the scored rows of the sample files (reads two columns), of
    their r after `before` if it is given."""
    table = _read_scored(files, column, "prompt", *(before.columns if before else ()))
    prompts = table.column("prompt").to_pylist()
    norm = fit_prompt_normalization(prompts, _rewards(table, column, before), clip)
    log.info("per-prompt %s normalisation: %d prompts, %d samples, std %.4g, clip %g",
             column, len(norm.means), table.num_rows, norm.std, clip)
    return norm


@dataclass(frozen=True)
class CategoryRateWeighting(_OnRewards):
    """The factor r̄ / Z(g) of each prompt's category g (module docstring), keyed by prompt."""

    factors: dict[str, float]

    def apply(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        """r' = r · r̄ / Z(g) for each (prompt, r), as float64."""
        return np.asarray(rewards, dtype=np.float64) * _per_prompt(self.factors, prompts, "category rate", "weighted")


def fit_category_weighting(prompts: Sequence[str], categories: Sequence[str], rewards: np.ndarray
                           ) -> CategoryRateWeighting:
    """Each category's mean reward Z(g) and the round's r̄, as one factor per prompt."""
    rewards = np.asarray(rewards, dtype=np.float64)
    if len(rewards) == 0:
        raise ValueError("no scored samples to weight the rewards of")
    of_prompt: dict[str, str] = {}
    for prompt, category in zip(prompts, categories, strict=True):
        if of_prompt.setdefault(prompt, category) != category:
            raise ValueError(f"prompt {prompt!r} has samples in categories {of_prompt[prompt]!r} and "
                             f"{category!r}; reward_normalization='category' needs one category per prompt")
    rates = _group_means(categories, rewards)
    overall = float(rewards.mean())
    factor = {c: (overall / z if z > 0 else 0.0) for c, z in rates.items()}
    log.info("category reward rates %s, round mean %.4g",
             ", ".join(f"{c or '(none)'} {z:.3g}" for c, z in rates.items()), overall)
    return CategoryRateWeighting(factors={p: factor[c] for p, c in of_prompt.items()})


def read_category_weighting(files: list[Path], column: str,
                            before: Verdict | None = None) -> CategoryRateWeighting:
    """fit_category_weighting over the scored rows of the sample files (reads three columns), of
    their r after `before` if it is given."""
    table = _read_scored(files, column, "prompt", "category", *(before.columns if before else ()))
    return fit_category_weighting(table.column("prompt").to_pylist(), table.column("category").to_pylist(),
                                  _rewards(table, column, before))


@dataclass(frozen=True)
class RewardThreshold(_OnRewards):
    """r' = 1[r ≥ τ]: the reward model's score read as its verdict (module docstring)."""

    tau: float

    def apply(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        return (np.asarray(rewards, dtype=np.float64) >= self.tau).astype(np.float64)


@dataclass(frozen=True)
class LabelAgreement:
    """r' = 1 where the score is ≥ τ and the sample's mean label, if it has one, is ≥ 1/2; else 0
    (module docstring). It reads the `label` column beside the score, so it can only be the first
    step of a chain."""

    tau: float
    columns: ClassVar[tuple[str, ...]] = ("label",)

    def verdicts(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """One 0/1 r per sample; a NaN label (none given) leaves the score's verdict alone."""
        labels = np.asarray(labels, dtype=np.float64)
        return ((np.asarray(scores, dtype=np.float64) >= self.tau) & ~(labels < 0.5)).astype(np.float64)

    def of_table(self, table: pa.Table, column: str) -> np.ndarray:
        return self.verdicts(_floats(table, column), _floats(table, "label"))


def _floats(table: pa.Table, column: str) -> np.ndarray:
    """A float column as float64, nulls as NaN."""
    return pc.fill_null(table.column(column).cast(pa.float64()), np.nan).to_numpy()


@dataclass(frozen=True)
class ChainedTransform:
    """Transforms applied in turn (a verdict, then a normalisation fit on its output); only the
    first reads the table, the rest transform what the one before gave."""

    steps: tuple[RewardThreshold | LabelAgreement | PromptNormalization | CategoryRateWeighting, ...]

    @property
    def columns(self) -> tuple[str, ...]:
        return self.steps[0].columns

    def apply(self, prompts: Sequence[str], rewards: np.ndarray) -> np.ndarray:
        for step in self.steps:
            rewards = step.apply(prompts, rewards)
        return rewards

    def of_table(self, table: pa.Table, column: str) -> np.ndarray:
        rewards = self.steps[0].of_table(table, column)
        prompts = table.column("prompt").to_pylist()
        for step in self.steps[1:]:
            rewards = step.apply(prompts, rewards)
        return rewards


RewardTransform = PromptNormalization | CategoryRateWeighting | RewardThreshold | LabelAgreement | ChainedTransform


def chain(*steps: RewardTransform | None) -> RewardTransform | None:
    """The given transforms in order, skipping None; None if there are none."""
    kept = tuple(s for s in steps if s is not None)
    return None if not kept else kept[0] if len(kept) == 1 else ChainedTransform(kept)


Verdict = RewardThreshold | LabelAgreement  # what r is read as before a normalisation is fit


def _rewards(table: pa.Table, column: str, before: Verdict | None) -> np.ndarray:
    return _floats(table, column) if before is None else before.of_table(table, column)


def _group_means(keys: Sequence[str], rewards: np.ndarray) -> dict[str, float]:
    """Mean reward of each distinct key (prompt or category), in sorted key order."""
    names, group = np.unique(np.asarray(keys, dtype=object).astype(str), return_inverse=True)
    means = np.bincount(group, weights=rewards) / np.bincount(group)
    return {str(n): float(m) for n, m in zip(names, means, strict=True)}


def _per_prompt(values: dict[str, float], prompts: Sequence[str], what: str, done: str) -> np.ndarray:
    """values[p] for each prompt; a prompt the round's statistics never saw is an error."""
    missing = sorted({p for p in prompts if p not in values})
    if missing:
        raise KeyError(f"no {what} for prompt(s) {missing[:3]}: the statistics were computed "
                       f"from other samples than the ones being {done}")
    return np.array([values[p] for p in prompts], dtype=np.float64)


def _read_scored(files: list[Path], column: str, *others: str) -> pa.Table:
    """The `others` columns and r of the rows whose r is set."""
    return pads.dataset([str(f) for f in files], format="parquet").to_table(
        columns=[*others, column], filter=pc.field(column).is_valid())


def normalize_reward_column(batch: pa.Table, column: str, norm: RewardTransform) -> pa.Table:
    """Ray Data map_batches function: `column` replaced by its transformed value, same type; the
    other columns the transform read (`norm.columns`, e.g. `label`) dropped, so the workers see
    the same columns whatever the setting."""
    index = batch.schema.get_field_index(column)
    field = batch.schema.field(index)
    out = batch.set_column(index, field, pa.array(norm.of_table(batch, column), type=field.type))
    return out.drop_columns(list(norm.columns))


def check_unit_interval(files: list[Path], column: str) -> None:
    """The negative-aware loss reads r as a probability of "good": refuse rewards outside [0, 1]."""
    values = pads.dataset([str(f) for f in files], format="parquet").to_table(columns=[column]).column(column)
    bounds = pc.min_max(values).as_py()  # nulls skipped
    if bounds["min"] is not None:
        require_unit_interval(bounds["min"], bounds["max"], f"these samples' {column!r}")


def require_unit_interval(low: float, high: float, what: str) -> None:
    """The one check and message for rewards outside [0, 1], on the driver and in the worker."""
    if low < 0.0 or high > 1.0:
        raise ValueError(f"objective='negative_aware' needs rewards in [0, 1]; {what} span [{low:.4g}, "
                         f"{high:.4g}]. Set reward_normalization='prompt' (maps them into [0, 1] within each "
                         "prompt) or rescale the reward")
