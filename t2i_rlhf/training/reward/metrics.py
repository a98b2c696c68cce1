"""Classification metrics for reward scores against (mean) labels, without scikit-learn.

A sample counts as good when its mean label is above 0.5 and bad when below; a 50/50 tie has no
majority and is left out of accuracy and AUC (it still counts in the MSE)."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata


def binarise(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is_good, has_majority) for mean labels in [0, 1]."""
    y = np.asarray(labels, dtype=np.float64)
    return y > 0.5, y != 0.5


def accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5) -> float:
    """Share of majority-labelled samples where (score > threshold) agrees with the majority."""
    good, keep = binarise(labels)
    if not keep.any():
        return math.nan
    return float(((np.asarray(scores) > threshold) == good)[keep].mean())


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic: P(score of a good sample > score of a bad one),
    ties counting half. NaN when one class is missing."""
    good, keep = binarise(labels)
    s, g = np.asarray(scores, dtype=np.float64)[keep], good[keep]
    n_pos, n_neg = int(g.sum()), int((~g).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)
    u = ranks[g].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def score_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """MSE, accuracy at 0.5 and ROC AUC of scores against mean labels."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels, np.float64)
    return {
        "n": int(len(y)),
        "mse": float(np.mean((s - y) ** 2)) if len(y) else math.nan,
        "accuracy": accuracy(s, y),
        "auc": roc_auc(s, y),
        "good_rate": float((y > 0.5).mean()) if len(y) else math.nan,
    }
