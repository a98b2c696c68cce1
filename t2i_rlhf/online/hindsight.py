"""Hindsight relabelling: a round's bad images, fine-tuned on as good images of the prompt they do
show.

An image drawn for "two circles" that shows three is a wrong answer to its prompt and a right
answer to "three circles". Hindsight experience replay (Andrychowicz et al. 2017) turns a failed
episode into a success for the goal it reached; the same holds here, and the paper's reward model
is already trained for the question it needs: its auxiliary term teaches r(x, z) to prefer the
true prompt of an image over the same prompt with its count, colour, shape or scene swapped
(Lee et al. 2023, §4.2). So for each image the fine-tuning would give no weight (the reward model
or its labels call it bad), the scorers score it against those swapped prompts, and the best one
scoring at least `hindsight.threshold` becomes an extra sample: the same latents, that prompt, r = its
score, no label. The reward-weighted loss then trains on it as on any good sample
(finetune/loss.py); nothing else in the round changes.

Only prompts the rollout itself draws from are named (under `rollout.prompt_split: train` the
held-out prompts stay unseen), so the held-out figures still measure generalisation."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from t2i_rlhf.actors.restarts import ActorGroup, call_each
from t2i_rlhf.config import ExperimentConfig
from t2i_rlhf.samples import SAMPLE_SCHEMA
from t2i_rlhf.shapes.prompts import is_heldout, parse_prompt
from t2i_rlhf.training.reward.data import resolve_perturbation

log = logging.getLogger(__name__)

SUFFIX = "~hindsight"  # appended to a sample id for its relabelled copy


def rollout_prompts(cfg: ExperimentConfig) -> Callable[[str], bool]:
    """Whether the rollout could draw a prompt: a line of `rollout.prompts_file`, or a prompt of
    the shapes grammar in `rollout.prompt_split`."""
    r = cfg.rollout
    if r.prompts_file:
        lines = {s.strip() for s in Path(r.prompts_file).read_text().splitlines() if s.strip()}
        return lines.__contains__

    @cache
    def drawn(text: str) -> bool:
        try:
            p = parse_prompt(text)
        except ValueError:
            return False
        return r.prompt_split == "all" or not is_heldout(p)

    return drawn


def alternatives(prompt: str, perturb: Callable[[str, int, int], list[str]],
                 drawn: Callable[[str], bool], n: int) -> list[str]:
    """Up to n prompts like `prompt` with one or more attributes swapped (the reward model's own
    perturbations, seed 0), only those the rollout could draw."""
    return [q for q in dict.fromkeys(perturb(prompt, n, 0)) if q != prompt and drawn(q)]


def needs_relabel(table: pa.Table, threshold: float) -> np.ndarray:
    """The rows the fine-tuning's verdict calls bad: scored below `threshold` (the verdict's τ) by
    the reward model, or labelled bad (mean label below 0.5)."""
    reward = table.column("reward").to_numpy(zero_copy_only=False).astype(np.float64)
    label = pc.fill_null(table.column("label"), 1.0).to_numpy(zero_copy_only=False)
    return (reward < threshold) | (label < 0.5)


def relabelled_rows(table: pa.Table, rows: list[int], prompts: list[str], rewards: list[float]) -> pa.Table:
    """Copies of `table`'s `rows` (SAMPLE_SCHEMA) with new prompts and rewards and no labels; each
    sample id gets SUFFIX, so a copy never collides with a sample."""
    out = table.select(SAMPLE_SCHEMA.names).take(pa.array(rows, pa.int64()))
    n = out.num_rows
    for name, values in {
        "sample_id": pc.binary_join_element_wise(out.column("sample_id"), pa.scalar(SUFFIX), ""),
        "prompt": pa.array(prompts, pa.string()), "reward": pa.array(rewards, pa.float32()),
        "label": pa.nulls(n, pa.float32()), "n_labels": pa.array([0] * n, pa.int32()),
    }.items():
        out = out.set_column(SAMPLE_SCHEMA.get_field_index(name), SAMPLE_SCHEMA.field(name), values)
    return out


def relabel_candidates(table: pa.Table, cfg: ExperimentConfig) -> dict[int, list[str]]:
    """Row -> the prompts to score it against, for every row the fine-tuning's verdict calls bad
    that has any (`hindsight.prompts` perturbations at most, only prompts the rollout draws)."""
    perturb = resolve_perturbation(cfg.reward.perturbation)
    if perturb is None:
        raise ValueError("hindsight relabelling needs a perturbation function (reward.perturbation is 'none')")
    drawn = rollout_prompts(cfg)
    prompts = table.column("prompt").to_pylist()
    options = {int(i): alternatives(prompts[i], perturb, drawn, cfg.hindsight.prompts)
               for i in np.flatnonzero(needs_relabel(table, cfg.finetune.verdict_threshold))}
    return {i: row for i, row in options.items() if row}


def best_prompts(options: dict[int, list[str]], scores: list[list[float]],
                 threshold: float) -> tuple[list[int], list[str], list[float]]:
    """(rows, new prompts, their scores) where a row's best-scoring prompt reaches `threshold`;
    `scores` are in the order of `options`."""
    picked: tuple[list[int], list[str], list[float]] = ([], [], [])
    for (i, row), s in zip(options.items(), scores, strict=True):
        best = int(np.argmax(s))
        if s[best] >= threshold:
            for part, value in zip(picked, (i, row[best], float(s[best])), strict=True):
                part.append(value)
    return picked


def relabel_samples(table: pa.Table, cfg: ExperimentConfig, scorers: ActorGroup,
                    chunk: int = 64) -> tuple[pa.Table, dict]:
    """The relabelled copies of `table`'s bad samples (SAMPLE_SCHEMA rows) and a summary."""
    options = relabel_candidates(table, cfg)
    rows = list(options)
    images = table.column("image").take(pa.array(rows, pa.int64())).to_pylist() if rows else []
    chunks = [list(range(s, min(s + chunk, len(rows)))) for s in range(0, len(rows), chunk)]
    scored = call_each(scorers, chunks, lambda s, c: s.score_prompts.remote(
        [images[j] for j in c], [options[rows[j]] for j in c], expect_version=scorers.version))
    out = relabelled_rows(table, *best_prompts(options, [row for part in scored for row in part],
                                               cfg.hindsight.threshold))
    summary = {"candidates": len(rows), "relabelled": out.num_rows,
               "by_category": dict(sorted(Counter(out.column("category").to_pylist()).items()))}
    log.info("hindsight: %d of %d bad samples relabelled to a prompt they show (%s)", out.num_rows, len(rows),
             summary["by_category"])
    return out, summary
