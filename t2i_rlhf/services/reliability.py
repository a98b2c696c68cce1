"""Labeller reliability: how much each labeller's labels count, from their accuracy on gold tasks.

`labeller_weights(stats["labellers"], mode=...)` turns the per-labeller rows of `/v1/stats` into
weights for `client.aggregate_labels(rows, weights)`. A labeller who flips a share p of their
verdicts has gold accuracy a = 1 - p; of their label, 2a - 1 = 1 - 2p is signal (their expected
vote is 0.5 + (1 - 2p)(truth - 0.5)), so a labeller at chance carries none. Accuracy is smoothed
(Laplace: (correct + 1) / (graded + 2)) so a handful of gold labels cannot give a weight of 0 or
1 by luck, and a labeller with fewer than `min_gold` graded gold labels is not judged (weight 1).

- `off`: every label weighs 1 (no weights);
- `drop`: labels of labellers whose smoothed accuracy is below `min_accuracy` are left out;
- `weight`: each label weighs max(0, 2a - 1), so a sample's label is the weighted mean of its
  votes. With one label per sample a weighted mean of one vote is that vote: only labellers at or
  below chance (weight 0) change anything, so use `drop` there.

Pure functions of plain dicts: no Ray, no torch, so the loop, a notebook or a test can call them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

Mode = Literal["off", "drop", "weight"]
MODES: tuple[str, ...] = ("off", "drop", "weight")


def smoothed_accuracy(correct: int, graded: int) -> float:
    """Laplace-smoothed accuracy: 0.5 with no evidence, the raw share as evidence grows."""
    return (correct + 1) / (graded + 2)


def labeller_weights(
    labellers: Iterable[Mapping[str, Any]],
    mode: Mode = "off",
    min_gold: int = 5,
    min_accuracy: float = 0.75,
) -> dict[str, float]:
    """labeller -> weight in [0, 1] from `/v1/stats` rows (labeller, gold_labelled, gold_correct);
    labellers not in the result weigh 1. `off` returns {}."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if min_gold < 1 or not 0.0 <= min_accuracy <= 1.0:
        raise ValueError("min_gold must be >= 1 and min_accuracy in [0, 1]")
    if mode == "off":
        return {}
    out: dict[str, float] = {}
    for s in labellers:
        graded = int(s.get("gold_labelled") or 0)
        if graded < min_gold:
            continue  # not enough gold to judge: counts fully
        acc = smoothed_accuracy(int(s.get("gold_correct") or 0), graded)
        if mode == "drop":
            out[s["labeller"]] = 0.0 if acc < min_accuracy else 1.0
        else:
            out[s["labeller"]] = max(0.0, 2.0 * acc - 1.0)
    return out
