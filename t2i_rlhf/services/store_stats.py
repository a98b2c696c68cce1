"""The store's read-only aggregate queries: per-round progress and per-labeller quality.

Kept apart from `store.py` (which owns the connections and every write) so each stays small;
like it, this is SQL for the feedback store's schema and nothing else. Each function takes a
connection that is already inside a read transaction, so the caller gets one snapshot.

Gold tasks are quality control, not training data: the per-round counts cover ordinary tasks
(what the loop published and waits for) and report gold tasks and their labels separately.
"""

from __future__ import annotations

import sqlite3
from typing import Any


def round_stats(conn: sqlite3.Connection, k: int, round_: int | None) -> list[dict[str, Any]]:
    """Per round: published, labelled (>=1 good/bad), complete (>=k), label counts and pairwise
    agreement on ordinary tasks; gold_tasks and gold_labels beside them."""
    tw, args = ("WHERE round = ?", (round_,)) if round_ is not None else ("", ())
    per: dict[int, dict[str, Any]] = {}
    for r in conn.execute(
        "SELECT round, sum(gold IS NULL), sum(gold IS NULL AND votes > 0), sum(gold IS NULL AND votes >= ?), "
        f"sum(gold IS NOT NULL) FROM tasks {tw} GROUP BY round",
        (k, *args),
    ):
        per[r[0]] = {
            "round": r[0],
            "published": r[1],
            "labelled": r[2],
            "complete": r[3],
            "good": 0,
            "bad": 0,
            "skipped": 0,
            "agreeing_pairs": 0,
            "pairs": 0,
            "gold_tasks": r[4],
            "gold_labels": 0,
        }
    lw = "WHERE l.retracted_at IS NULL" + (" AND l.round = ?" if round_ is not None else "")
    joined = f"FROM labels l JOIN tasks t ON t.sample_id = l.sample_id {lw}"
    for rnd, label, gold, n in conn.execute(
        f"SELECT l.round, l.label, t.gold IS NOT NULL, count(*) {joined} GROUP BY l.round, l.label, t.gold IS NOT NULL",
        args,
    ):
        if rnd in per:
            if gold:
                per[rnd]["gold_labels"] += n
            else:
                per[rnd]["skipped" if label == "skip" else label] = n
    for rnd, g, b in conn.execute(
        f"SELECT l.round, sum(l.label = 'good'), sum(l.label = 'bad') {joined} AND l.label != 'skip' "
        "AND t.gold IS NULL GROUP BY l.round, l.sample_id HAVING count(*) >= 2",
        args,
    ):
        if rnd in per:
            per[rnd]["agreeing_pairs"] += g * (g - 1) // 2 + b * (b - 1) // 2
            per[rnd]["pairs"] += (g + b) * (g + b - 1) // 2
    for s in per.values():
        s["labels"] = s["good"] + s["bad"] + s["skipped"]
        s["agreement"] = s["agreeing_pairs"] / s["pairs"] if s["pairs"] else None
    return [per[r] for r in sorted(per)]


def _zero(name: str) -> dict[str, Any]:
    return {
        "labeller": name,
        "labels": 0,
        "good": 0,
        "bad": 0,
        "skipped": 0,
        "gold_labelled": 0,
        "gold_correct": 0,
        "gold_skipped": 0,
        "pairs": 0,
        "agreeing_pairs": 0,
    }


def labeller_stats(conn: sqlite3.Connection, round_: int | None, names: list[str]) -> list[dict[str, Any]]:
    """Per labeller (everyone with a live label, and every name in `names`): label counts; on gold
    tasks, good/bad labels given and how many match the known answer (skips are not graded);
    and agreement with other labellers: of the pairs (own good/bad label, another labeller's
    good/bad label on the same sample, gold or not), the share that agree."""
    rw, args = (" AND l.round = ?", (round_,)) if round_ is not None else ("", ())
    per: dict[str, dict[str, Any]] = {n: _zero(n) for n in names}
    for r in conn.execute(
        "SELECT l.labeller, count(*), sum(l.label = 'good'), sum(l.label = 'bad'), sum(l.label = 'skip'), "
        "sum(t.gold IS NOT NULL AND l.label != 'skip'), sum(t.gold IS NOT NULL AND l.label = t.gold), "
        "sum(t.gold IS NOT NULL AND l.label = 'skip') "
        f"FROM labels l JOIN tasks t ON t.sample_id = l.sample_id WHERE l.retracted_at IS NULL{rw} "
        "GROUP BY l.labeller",
        args,
    ):
        s = per.setdefault(r[0], _zero(r[0]))
        keys = ("labels", "good", "bad", "skipped", "gold_labelled", "gold_correct", "gold_skipped")
        s.update(zip(keys, r[1:], strict=True))
    for who, pairs, agree in conn.execute(
        "SELECT l.labeller, count(*), sum(l.label = o.label) FROM labels l "
        "JOIN labels o ON o.sample_id = l.sample_id AND o.labeller != l.labeller "
        "AND o.retracted_at IS NULL AND o.label != 'skip' "
        f"WHERE l.retracted_at IS NULL AND l.label != 'skip'{rw} GROUP BY l.labeller",
        args,
    ):
        per[who]["pairs"], per[who]["agreeing_pairs"] = pairs, agree
    for s in per.values():
        s["gold_accuracy"] = s["gold_correct"] / s["gold_labelled"] if s["gold_labelled"] else None
        s["agreement"] = s["agreeing_pairs"] / s["pairs"] if s["pairs"] else None
    return [per[n] for n in sorted(per)]
