"""The base model's evaluation, kept across runs.

Every run starts by evaluating the base model on the same prompts and seeds; with the
same weights, judge and settings the result is the same, so a second experiment on one base
(another config, a re-run after deleting the run directory) reuses it instead of regenerating
hundreds of images. The key covers what the figures depend on: the base and CLIP directories'
files, the evaluation and generation settings, the run seed, and the source of the judge, the
renderer, the prompts and the evaluation itself. The evaluated splits are in the key (as a set,
each with its seed offset: a split's items do not depend on the order), and so is the shape of
eval.json: entries stored by code before seen/unseen evaluation (held-out only, one EvalResult
dict) sit under keys no current config computes, and are read as held-out only should one be
loaded anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import uuid
from pathlib import Path

import t2i_rlhf
from t2i_rlhf.config import ExperimentConfig
from t2i_rlhf.fingerprint import tree_fingerprint
from t2i_rlhf.online.eval_results import SPLIT_SEED_OFFSET, normalise_eval

log = logging.getLogger(__name__)

_FORMAT = 2  # eval.json per split (online/eval_results.py); 1: one held-out EvalResult dict
_CODE = ("evaluation.py", "shapes/judge.py", "shapes/render.py", "shapes/prompts.py", "shapes/vocab.py")


def base_eval_key(cfg: ExperimentConfig) -> str:
    h = hashlib.sha256()
    ev = cfg.eval.model_dump(mode="json", exclude={"threads", "every_round", "cache_base", "shipped_base_evals"})
    ev["splits"] = {s: SPLIT_SEED_OFFSET[s] for s in sorted(ev["splits"])}  # each with its seed offset
    settings = {"eval": ev, "generation": cfg.rollout.generation.model_dump(mode="json"), "seed": cfg.run.seed,
                "format": _FORMAT}
    h.update(json.dumps(settings, sort_keys=True).encode())
    package = Path(t2i_rlhf.__file__).parent
    for name in _CODE:
        h.update((package / name).read_bytes())
    h.update(tree_fingerprint(cfg.model.base).encode())
    h.update(tree_fingerprint(cfg.model.clip).encode())
    return h.hexdigest()[:20]


def cache_dirs(cfg: ExperimentConfig) -> tuple[Path | None, list[Path]]:
    """Where this config's base evaluation is kept, and where it may be read from: that place,
    then each of `eval.shipped_base_evals`. (None, []) where caching is off or the weights are
    not local directories (nothing to fingerprint them by); the run's own store is None where
    its storage is not local."""
    if not cfg.eval.cache_base or not all(Path(p).is_dir() for p in (cfg.model.base, cfg.model.clip)):
        return None, []
    key = base_eval_key(cfg)
    store = None if "://" in cfg.run.storage else Path(cfg.run.storage).absolute() / "cache" / "base-eval" / key
    shipped = [Path(d).absolute() / key for d in cfg.eval.shipped_base_evals]
    return store, [d for d in (store, *shipped) if d is not None]


def load_base_eval(where: Path | None, grid_to: Path) -> dict | None:
    """The evaluation cached at `where` (a `cache_dir`; its grid is copied to `grid_to`), or None."""
    if where is None or not (where / "eval.json").exists():
        return None
    shutil.copyfile(where / "grid.png", grid_to)
    log.info("base model evaluation reused from %s (same weights, judge and settings)", where)
    return normalise_eval(json.loads((where / "eval.json").read_text()))


def store_base_eval(where: Path | None, result: dict, grid: Path) -> None:
    if where is None or where.exists():
        return
    tmp = where.with_name(f"{where.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    shutil.copyfile(grid, tmp / "grid.png")
    (tmp / "eval.json").write_text(json.dumps(result, indent=2))
    try:
        tmp.rename(where)
    except OSError:  # another run stored the same result first
        shutil.rmtree(tmp, ignore_errors=True)
