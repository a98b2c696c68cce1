"""Labelled samples for reward training: read from the buffer's Parquet (or a pyarrow Table),
split into train / held-out by prompt, and the prompt perturbations of the auxiliary loss.

Perturbations are pluggable because they are world-specific: "shapes" swaps count, colour, shape
or scene of a shapes-grammar prompt (prompts outside the grammar get none, so their auxiliary
term is skipped); "none" turns the term off; "package.module:function" names any function
`f(prompt: str, n: int, seed: int) -> list[str]` returning up to n distinct wrong prompts, e.g.
attribute swaps for a real-world prompt set."""

from __future__ import annotations

import hashlib
import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from t2i_rlhf.samples import decode_png, parquet_files
from t2i_rlhf.shapes.prompts import is_heldout, parse_prompt, perturb, prompts_with_template

log = logging.getLogger(__name__)

PerturbFn = Callable[[str, int, int], list[str]]
LabelledData = pa.Table | str | Path | Sequence[str | Path]
_COLUMNS = ("sample_id", "prompt", "image", "label", "n_labels")


@dataclass
class LabelledSet:
    """Decoded labelled samples; `labels` are mean good=1 / bad=0 labels."""

    images: list[np.ndarray]
    prompts: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, mask: np.ndarray) -> LabelledSet:
        idx = np.flatnonzero(mask)
        return LabelledSet([self.images[i] for i in idx], [self.prompts[i] for i in idx], self.labels[idx])


def read_labelled(data: LabelledData) -> LabelledSet:
    """Samples with a label. Skips and unlabelled samples (label null) are excluded; several
    labels on one sample are already combined into their mean by the buffer."""
    if isinstance(data, pa.Table):
        table = data
    else:
        files = parquet_files(data)
        cols = [c for c in _COLUMNS if c in pq.read_schema(files[0]).names]
        table = pa.concat_tables([pq.read_table(f, columns=cols) for f in files], promote_options="default")
    missing = {"prompt", "image", "label"} - set(table.column_names)
    if missing:
        raise ValueError(f"labelled data is missing columns {sorted(missing)} (see SAMPLE_SCHEMA)")
    keep = pc.is_valid(table["label"])
    if "n_labels" in table.column_names:
        keep = pc.and_(keep, pc.greater(pc.fill_null(table["n_labels"], 0), 0))
    table = table.filter(keep)
    labels = table["label"].to_numpy().astype(np.float32)
    if len(labels) and (labels.min() < 0 or labels.max() > 1):
        raise ValueError("labels must lie in [0, 1] (mean of good=1 / bad=0)")
    images = [decode_png(b) for b in table["image"].to_pylist()]
    return LabelledSet(images, table["prompt"].to_pylist(), labels)


def heldout_mask(prompts: Sequence[str], mode: str, fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Which samples are held out, decided per prompt so held-out prompts are unseen:
    "shapes" - the shapes world's fixed held-out prompts (others, and non-grammar prompts, train);
    "fraction" - a seeded hash puts about `fraction` of distinct prompts aside;
    "none" - train on everything."""
    if mode == "none":
        return np.zeros(len(prompts), dtype=bool)
    if mode == "shapes":
        def held(text: str) -> bool:
            try:
                return is_heldout(parse_prompt(text))
            except ValueError:
                return False
        return np.array([held(t) for t in prompts], dtype=bool)
    if mode == "fraction":
        return np.array([prompt_bucket(t, seed) < fraction for t in prompts], dtype=bool)
    raise ValueError(f"unknown held-out mode {mode!r}; expected 'shapes', 'fraction' or 'none'")


def prompt_bucket(text: str, seed: int | str = 0) -> float:
    """A seeded hash of a prompt in [0, 1): splits by prompt that do not depend on sample order
    (give each kind of split its own seed, so one split does not repeat another)."""
    h = hashlib.sha1(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def shapes_perturbations(prompt: str, n: int, seed: int) -> list[str]:
    """Up to n perturbed shapes-grammar prompts (all there are if fewer); [] off the grammar."""
    try:
        p = parse_prompt(prompt)
    except ValueError:
        return []
    n = min(n, len(prompts_with_template(p.template)) - 1)
    return [q.text for q in perturb(p, n, seed=seed)]


def resolve_perturbation(name: str) -> PerturbFn | None:
    """"shapes", "none" (no auxiliary term) or an import path "package.module:function"."""
    if name == "shapes":
        return shapes_perturbations
    if name == "none":
        return None
    module, _, attr = name.partition(":")
    if not attr:
        raise ValueError(f"perturbation must be 'shapes', 'none' or 'module:function', got {name!r}")
    fn = getattr(importlib.import_module(module), attr, None)
    if not callable(fn):
        raise ValueError(f"perturbation {name!r} does not name a function")
    return fn


def perturbation_table(
    prompts: Sequence[str], n_negatives: int, fn: PerturbFn | None, seed: int = 0
) -> list[list[str]]:
    """Per sample, its true prompt followed by up to n_negatives perturbations (fixed per sample
    so their text embeddings are computed once). Samples whose prompt has none get [prompt]."""
    out: list[list[str]] = []
    n_without = 0
    for i, text in enumerate(prompts):
        negs = [q for q in dict.fromkeys(fn(text, n_negatives, seed + i) if fn else []) if q != text]
        negs = negs[:n_negatives]
        n_without += not negs
        out.append([text, *negs])
    if fn is not None and n_without:
        log.info("%d of %d prompts have no perturbations; their auxiliary term is skipped",
                 n_without, len(prompts))
    return out
