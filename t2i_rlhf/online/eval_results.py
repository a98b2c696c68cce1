"""The shape of an evaluation in the run state, and the checks read off it.

An evaluation (the base's `base_eval`, each round's `evaluate` step) is kept per prompt split:
`{"model": ..., "splits": {"heldout": EvalResult dict, "train": EvalResult dict}}`, so seen and
unseen prompts are reported apart, as the paper does. Code before seen/unseen evaluation wrote one
held-out EvalResult dict (`categories`, `overall`, `fid`) instead; such a dict is read as a
held-out-only evaluation, which is exactly what it measured, so a run or base-evaluation cache
written by the old code loads, resumes and reports the splits it has. Nothing is recomputed, except
the base on a missing split while the generators still hold it (`run.ensure_base_eval`)."""

from __future__ import annotations

SPLIT_NAMES = {"heldout": "unseen (held-out prompts)", "train": "seen (training prompts)"}

# Added to a split's evaluation seeds (`online/steps.py:split_items`). `evaluation.eval_prompts`
# gives seeds in [run.seed·1,000,003, + 300,000 + per_category): the training split's are moved
# past the held-out ones and below the next run seed's, so seen and unseen items never share a
# seed, nor meet a rollout's (round·1,000,000 + i, i < 500,000). The held-out split keeps offset
# 0: its items are those of earlier runs and of `t2i-rlhf eval`, so figures stay comparable.
SPLIT_SEED_OFFSET = {"heldout": 0, "train": 500_000}

# Below this share of clean images (recognisable objects on a scene colour) an objective is
# likely being gamed: reward hacking in diffusion RL shows as grid artefacts, brightening and
# collapse, which the judge sees as unclean long before alignment numbers say anything is wrong.
MIN_CLEAN = 0.85


def eval_splits(ev: dict | None) -> dict[str, dict]:
    """split -> EvalResult dict of an evaluation in either shape; {} for none. An old-shape dict
    (one EvalResult, held-out prompts only) is the held-out split."""
    if not ev:
        return {}
    if "splits" in ev:
        return dict(ev["splits"])
    return {"heldout": ev}


def normalise_eval(ev: dict | None) -> dict | None:
    """An evaluation in the per-split shape (old held-out-only dicts are wrapped, not recomputed)."""
    if not ev or "splits" in ev:
        return ev
    inner = dict(ev)
    seconds = inner.pop("seconds", None)  # the driver's timing of the step, not a figure
    out = {"model": inner.get("model"), "splits": eval_splits(inner)}
    if seconds is not None:
        out["seconds"] = seconds
    return out


def clean_warnings(ev: dict | None, label: str | None = None) -> list[str]:
    """One loud line per split whose clean rate is below MIN_CLEAN; [] when all are clean enough."""
    name = label or (ev or {}).get("model") or "the model"
    lines = []
    for split, result in eval_splits(ev).items():
        clean = result["overall"]["clean"]
        if clean < MIN_CLEAN:
            lines.append(f"REWARD HACKING LIKELY: {name} drew only {100 * clean:.1f}% clean images on "
                         f"{SPLIT_NAMES.get(split, split)} (below {100 * MIN_CLEAN:.0f}%); its alignment "
                         "figures are not to be trusted: look at the grid")
    return lines
