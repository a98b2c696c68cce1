"""The run report without Ray: the seen/unseen paper table with paired changes, the per-round
clean and FD lines, the clean-rate warning, the per-split evaluation step (generation faked), the
base-evaluation cache key, and run states and caches written by the held-out-only code."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from t2i_rlhf.config import load_config
from t2i_rlhf.evaluation import CategoryResult, EvalResult, eval_prompts, paired_change
from t2i_rlhf.online.eval_results import MIN_CLEAN, clean_warnings, eval_splits
from t2i_rlhf.online.report import paper_table, round_lines, run_warnings, write_metrics, write_report
from t2i_rlhf.online.state import RunState, StateStore
from t2i_rlhf.shapes.vocab import CATEGORIES

REPO = Path(__file__).resolve().parents[2]
CI_CONFIG = REPO / "configs" / "shapes-ci.yaml"


def eval_result(model: str, bits: dict[str, str], clean: float = 0.95, fid: float = 2.0) -> EvalResult:
    """An EvalResult as the judge makes it, from each category's per-image verdicts."""
    rows = [CategoryResult(c, len(b), b.count("1") / len(b), clean, b) for c, b in bits.items()]
    every = "".join(bits.values())
    overall = CategoryResult("overall", len(every), every.count("1") / len(every), clean, every)
    return EvalResult(model, rows, overall, fid=fid)


def result(model: str, bits: dict[str, str], clean: float = 0.95, fid: float = 2.0) -> dict:
    """The EvalResult dict the run state keeps."""
    return eval_result(model, bits, clean, fid).to_dict()


def per_split(model: str, heldout: dict, train: dict) -> dict:
    return {"model": model, "splits": {"heldout": heldout, "train": train}}


BASE_BITS = {"count": "0011" * 25, "colour": "0111" * 25, "background": "0111" * 25, "combination": "0001" * 25}
TUNED_BITS = {"count": "0111" * 25, "colour": "0111" * 25, "background": "1111" * 25, "combination": "0011" * 25}


def run_state(tuned_train_clean: float = 0.95) -> RunState:
    """Base and two evaluated rounds, both splits; the seen split of the tuned model at `tuned_train_clean`."""
    base = per_split("base", result("base", BASE_BITS, fid=2.0), result("base", TUNED_BITS, fid=1.8))
    mid = per_split("r0000", result("r0000", BASE_BITS, fid=2.1), result("r0000", TUNED_BITS, fid=1.9))
    tuned = per_split("r0001", result("r0001", TUNED_BITS, fid=2.2),
                      result("r0001", {**TUNED_BITS, "count": "1111" * 25}, clean=tuned_train_clean, fid=1.9))
    state = RunState(model_version="r0001", base_eval=base)
    for k, ev in ((0, mid), (1, tuned)):
        state.mark(k, "finetune", {"version": f"r{k:04d}"})
        state.mark(k, "labels", {"labels": 32, "good": 20, "bad": 12, "skip": 0})
        state.mark(k, "rescore", {"reward_mean": 0.6, "reward_hist": [0, 1, 2, 3, 4, 5, 4, 3, 2, 1]})
        state.mark(k, "evaluate", {**ev, "seconds": 27.0})
    return state


def test_final_table_is_the_papers_table_seen_and_unseen_apart(tmp_path):
    state = run_state()
    table = paper_table(state.base_eval, state.done(1, "evaluate"), "after 2 rounds")
    lines = table.splitlines()
    assert lines[0] == ("| prompts | model | count | colour | background | combination | overall | clean | "
                        "FD (lower is better) |")
    # held-out (unseen) first, then seen; base, tuned, change for each
    assert [ln.split(" | ")[:2] for ln in lines[2:]] == [
        ["| unseen (held-out prompts)", "base"], ["| unseen (held-out prompts)", "after 2 rounds"],
        ["| unseen (held-out prompts)", "change (± paired SE)"],
        ["| seen (training prompts)", "base"], ["| seen (training prompts)", "after 2 rounds"],
        ["| seen (training prompts)", "change (± paired SE)"]]
    assert lines[2] == ("| unseen (held-out prompts) | base | 50.0% ± 5.0 | 75.0% ± 4.3 | 75.0% ± 4.3 | "
                        "25.0% ± 4.3 | 56.2% ± 2.5 | 95.0% | 2.000 |")
    change, se = paired_change(BASE_BITS["count"], TUNED_BITS["count"])
    overall = paired_change("".join(BASE_BITS.values()), "".join(TUNED_BITS.values()))
    assert lines[4].startswith(f"| unseen (held-out prompts) | change (± paired SE) | +{100 * change:.1f} ± "
                               f"{100 * se:.1f} | +0.0 ± 0.0 |")
    assert f"| +{100 * overall[0]:.1f} ± {100 * overall[1]:.1f} | +0.0 | +10.0% |" in lines[4]
    # seen: the tuned model's count went from 75% to 100%, FD 1.8 -> 1.9
    assert lines[7].startswith("| seen (training prompts) | change (± paired SE) | +25.0 ± 4.4 |")
    assert lines[7].endswith("| +0.0 | +5.6% |")
    print(table)


def test_report_has_the_table_and_clean_and_fd_every_round(tmp_path):
    state = run_state()
    write_metrics(tmp_path, state)
    for name in ("grid_base.png", "grid_final.png"):
        (tmp_path / name).write_bytes(b"png")
    path = write_report(tmp_path, state, tmp_path / "grid_base.png", tmp_path / "grid_final.png", wall_s=60)
    text = path.read_text()
    assert "### Same prompts and seeds, before (base model)" in text and "](grid_final.png)" in text
    assert "## Judged alignment, base vs tuned, on unseen and seen prompts" in text
    assert "| seen (training prompts) | after 2 rounds |" in text and "WARNING" not in text
    assert round_lines(state) == [
        "- base: unseen (held-out prompts) 56.2% ± 2.5, clean 95.0%, FD 2.000; "
        "seen (training prompts) 75.0% ± 2.2, clean 95.0%, FD 1.800",
        "- after 1 round (r0000): unseen (held-out prompts) 56.2% ± 2.5, clean 95.0%, FD 2.100; "
        "seen (training prompts) 75.0% ± 2.2, clean 95.0%, FD 1.900",
        "- after 2 rounds (r0001): unseen (held-out prompts) 75.0% ± 2.2, clean 95.0%, FD 2.200; "
        "seen (training prompts) 81.2% ± 2.0, clean 95.0%, FD 1.900"]
    assert all(line in text for line in round_lines(state))
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [-1, 0, 1] and set(eval_splits(records[-1]["evaluate"])) == {
        "heldout", "train"}
    print(text)


def test_a_clean_rate_below_85_percent_is_marked_loudly():
    assert not run_warnings(run_state(tuned_train_clean=MIN_CLEAN))  # at the threshold: fine
    state = run_state(tuned_train_clean=0.80)
    warnings = run_warnings(state)
    assert len(warnings) == 1 and warnings[0].startswith(
        "REWARD HACKING LIKELY: after 2 rounds (r0001) drew only 80.0% clean images on seen (training prompts)")
    table = paper_table(state.base_eval, state.done(1, "evaluate"), "after 2 rounds")
    assert "| seen (training prompts) | after 2 rounds | " in table and "| 80.0% ⚠ | 1.900 |" in table
    assert "clean 80.0% ⚠ below 85%" in round_lines(state)[-1]


def test_a_clean_rate_warning_is_in_the_report(tmp_path):
    text = write_report(tmp_path, run_state(tuned_train_clean=0.5), None, None).read_text()
    marked = [line for line in text.splitlines() if line.startswith("> **⚠ WARNING: REWARD HACKING LIKELY")]
    assert len(marked) == 1 and "50.0% clean images" in marked[0]
    assert text.index(marked[0]) < text.index("## Judged alignment")  # before the table: seen first


def test_evaluation_step_judges_each_split_on_its_own_seeds(monkeypatch, caplog):
    from t2i_rlhf.online import steps

    cfg = load_config(CI_CONFIG)
    asked: list[tuple[str, int]] = []

    def fake_generate(ctx, items):
        asked.extend(items)
        return np.zeros((len(items), 4, 4, 3), np.uint8)

    def fake_score(model, prompts, images, seeds, clip_dir):
        assert len(prompts) == len(images) == len(seeds) == cfg.eval.per_category * len(CATEGORIES)
        bits = {c: "1" * cfg.eval.per_category for c in CATEGORIES}
        return eval_result(model, bits, clean=0.5)

    monkeypatch.setattr(steps, "generate_with_actors", fake_generate)
    monkeypatch.setattr(steps, "score_images", fake_score)
    with caplog.at_level(logging.WARNING, logger="t2i_rlhf.online.steps"):
        ev = steps.evaluate_current_model(SimpleNamespace(cfg=cfg), "r0000")
    assert ev["model"] == "r0000" and list(ev["splits"]) == ["heldout", "train"]
    assert ev["splits"]["train"]["extra"] == {"split": "train", "seed_offset": 500_000}
    n = cfg.eval.per_category * len(CATEGORIES)
    heldout, train = asked[:n], asked[n:]
    # held-out items are the old code's (earlier runs' figures stay comparable); seen ones never share a seed
    assert heldout == [(p.text, s) for p, s in eval_prompts(cfg.eval.per_category, "heldout", cfg.run.seed)]
    assert not {s for _, s in heldout} & {s for _, s in train}
    assert steps.split_items(cfg, "train") == steps.split_items(cfg, "train")  # the same every round
    assert [r.levelname for r in caplog.records].count("WARNING") == 2  # both splits at 50% clean
    assert "REWARD HACKING LIKELY" in caplog.records[0].getMessage()


# --- what the held-out-only code wrote ------------------------------------------------------------

def old_state(tmp_path: Path) -> Path:
    """A state.json as the code before seen/unseen evaluation wrote it: one EvalResult dict each."""
    old_base = result("base", BASE_BITS)
    old_round = {**result("r0000", TUNED_BITS, fid=2.3), "seconds": 27.4}
    state = {"model_version": "r0000", "model_location": None, "reward_model_version": "rm-r0000",
             "reward_model_location": None, "finished": False, "base_eval": old_base,
             "rounds": {"0": {"finetune": {"version": "r0000"}, "evaluate": old_round,
                              "labels": {"labels": 32, "good": 20, "bad": 12, "skip": 0},
                              "rescore": {"reward_mean": 0.6, "reward_hist": [1] * 10}}}}
    (tmp_path / "state.json").write_text(json.dumps(state))
    return tmp_path / "state.json"


def test_an_old_held_out_only_state_loads_and_reports(tmp_path):
    old_state(tmp_path)
    store = StateStore(tmp_path)
    state = store.load()
    assert set(state.base_eval) == {"model", "splits"} and list(eval_splits(state.base_eval)) == ["heldout"]
    ev = state.done(0, "evaluate")
    assert ev["seconds"] == 27.4 and "seconds" not in ev["splits"]["heldout"]
    assert ev["splits"]["heldout"]["overall"]["good"] == 0.75
    store.save(state)
    assert store.load() == state  # saved in the new shape: loading again changes nothing
    text = write_report(tmp_path, state, None, None).read_text()
    assert "| unseen (held-out prompts) | change (± paired SE) |" in text and "seen (training" not in text
    assert "## Judged alignment, base vs tuned, on unseen prompts" in text
    # resumed with the new code: the next rounds judge both splits, the base only had held-out
    state.mark(1, "finetune", {"version": "r0001"})
    state.mark(1, "evaluate", per_split("r0001", result("r0001", TUNED_BITS), result("r0001", TUNED_BITS)))
    table = paper_table(state.base_eval, state.done(1, "evaluate"), "after 2 rounds")
    assert "| seen (training prompts) | base | not judged on these prompts (run state from older code) |" in table
    assert "| seen (training prompts) | after 2 rounds |" in table
    assert "| seen (training prompts) | change" not in table and "| unseen (held-out prompts) | change" in table


def test_old_shape_dicts_count_as_held_out_and_warn_too():
    old = result("r0000", BASE_BITS, clean=0.7)
    assert eval_splits(old) == {"heldout": old} and eval_splits(None) == {}
    assert clean_warnings(old)[0].startswith("REWARD HACKING LIKELY: r0000 drew only 70.0% clean images on unseen")


def test_base_eval_cache_keys_on_the_splits_and_reads_old_entries(tmp_path):
    from t2i_rlhf.online.base_eval_cache import base_eval_key, cache_dirs, load_base_eval

    base, clip = tmp_path / "base", tmp_path / "clip"
    for d in (base, clip):
        d.mkdir()
        (d / "weights.bin").write_bytes(b"v1")
    ci = load_config(CI_CONFIG)

    def config(splits: list[str]):
        return ci.model_copy(update={
            "run": ci.run.model_copy(update={"storage": str(tmp_path / "runs")}),
            "model": ci.model.model_copy(update={"base": str(base), "clip": str(clip)}),
            "eval": ci.eval.model_copy(update={"splits": splits})})

    both = base_eval_key(config(["heldout", "train"]))
    assert both == base_eval_key(config(["train", "heldout"]))  # the same items either way
    assert both != base_eval_key(config(["heldout"])) != base_eval_key(config(["train"]))
    where = cache_dirs(config(["heldout"]))[0]  # an entry in the old shape loads as held-out only
    where.mkdir(parents=True)
    (where / "grid.png").write_bytes(b"png")
    (where / "eval.json").write_text(json.dumps(result("base", BASE_BITS)))
    loaded = load_base_eval(where, tmp_path / "grid.png")
    assert list(loaded["splits"]) == ["heldout"] and loaded["splits"]["heldout"]["overall"]["n"] == 400


@pytest.mark.parametrize("splits,message", [([], "eval.splits"), (["heldout", "heldout"], "at most once"),
                                            (["seen"], "eval.splits")])
def test_bad_splits_are_clear_errors(splits, message):
    with pytest.raises(ValueError, match=message):
        load_config(CI_CONFIG, overrides={"eval.splits": splits})
    assert load_config(CI_CONFIG).eval.splits == ["heldout", "train"]


def test_resume_evaluates_the_base_on_missing_splits_only_while_it_is_the_base(tmp_path, monkeypatch, caplog):
    from t2i_rlhf import run
    from t2i_rlhf.online import steps

    cfg = load_config(CI_CONFIG)
    cfg = cfg.model_copy(update={"eval": cfg.eval.model_copy(update={"cache_base": False})})
    calls = []
    monkeypatch.setattr(steps, "evaluate_current_model", lambda ctx, label: calls.append(label) or per_split(
        label, result(label, BASE_BITS), result(label, TUNED_BITS)))
    monkeypatch.setattr(steps, "generate_with_actors", lambda ctx, items: np.zeros((len(items), 4, 4, 3), np.uint8))
    monkeypatch.setattr(run, "save_grid", lambda path, prompts, images: calls.append("grid"))
    old_state(tmp_path)
    store = StateStore(tmp_path)
    state = store.load()  # tuned already: the base cannot be judged on the seen split any more
    ctx = SimpleNamespace(cfg=cfg, state=state, run_dir=tmp_path)
    with caplog.at_level(logging.WARNING, logger="t2i_rlhf.run"):
        run.ensure_base_eval(ctx, store, grid=[])
    assert calls == [] and list(eval_splits(state.base_eval)) == ["heldout"]
    assert "not evaluated on train" in caplog.text
    state.model_version = "base"  # stopped before its first fine-tuning: judge the base again, both splits
    run.ensure_base_eval(ctx, store, grid=[])
    assert calls == ["base", "grid"] and list(eval_splits(store.load().base_eval)) == ["heldout", "train"]
    run.ensure_base_eval(ctx, store, grid=[])  # complete: nothing more
    assert calls == ["base", "grid"]
