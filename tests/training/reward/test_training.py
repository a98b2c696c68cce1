"""Reward-model training on rendered shapes judged by the oracle: the MSE term fits the labels,
the auxiliary term ranks true prompts over perturbations, checkpoints serve a scorer, the CLI
and the Ray task run it, and a missing backbone fails clearly. Nothing here relies on the
backbone being any good: a random CLIP still gives distinct embeddings to fit."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from t2i_rlhf.cli import main as cli_main
from t2i_rlhf.samples import decode_png, png_bytes
from t2i_rlhf.shapes import judge, parse_prompt, perturb, render, sample_prompts
from t2i_rlhf.training.reward.backbone import ClipBackbone
from t2i_rlhf.training.reward.data import read_labelled
from t2i_rlhf.training.reward.model import load_reward_model
from t2i_rlhf.training.reward.train import (
    EmbeddedSet,
    RewardTrainingConfig,
    agreement_weights,
    evaluate_reward_model,
    train_reward_model,
    train_reward_model_remote,
)
from t2i_rlhf.training.reward.views import ImageViews

FAST = dict(hidden=256, epochs=30, lr=3e-3, heldout="none", threads=1)


def judged_table(n: int, seed: int, mismatch_every: int = 2) -> pa.Table:
    """Rendered images labelled by the judge: every `mismatch_every`-th shows a perturbed prompt
    (so is bad), the rest show their prompt (good); plus two skipped samples."""
    rows = []
    for i, p in enumerate(sample_prompts(n, "train", seed=seed)):
        shown = perturb(p, 1, seed=i)[0] if mismatch_every and i % mismatch_every == 1 else p
        img = render(shown, seed=seed * 10_000 + i)
        rows.append(dict(sample_id=f"s{seed}-{i}", prompt=p.text, image=png_bytes(img),
                         label=float(judge(img, p).good), n_labels=1))
    for j in range(2):  # skips: garbage images that must not influence anything
        rows.append(dict(sample_id=f"skip{j}", prompt="a red circle", image=png_bytes(np.zeros((32, 32, 3))),
                         label=None, n_labels=0))
    return pa.Table.from_pylist(rows)


@pytest.fixture(scope="module")
def judged() -> pa.Table:
    return judged_table(160, seed=1)


def test_mse_term_alone_moves_r_towards_labels(judged, clip_model_dir, tmp_path):
    cfg = RewardTrainingConfig(backbone=str(clip_model_dir), lambda_aux=0.0, **FAST)
    m = train_reward_model(judged, cfg, tmp_path / "rm", "mse-only")
    labels = np.array([v for v in judged["label"].to_pylist() if v is not None])
    assert m["n_train"] == len(labels) == 160 and m["n_heldout"] == 0  # skips excluded
    # Better than the best constant predictor (whose MSE is the labels' variance) by far.
    assert m["train"]["mse"] < 0.4 * labels.var()
    assert m["train"]["accuracy"] > 0.9 and m["train"]["auc"] > 0.95
    assert "prompt_ce" in m["train"]  # the auxiliary task is reported even when not trained


def test_auxiliary_term_ranks_true_prompt_over_perturbations(judged, clip_model_dir, tmp_path):
    m = {}
    for lam in (0.0, 0.5):
        # The paper's term on its own: the prompt-margin input would rank prompts without it.
        cfg = RewardTrainingConfig(backbone=str(clip_model_dir), lambda_aux=lam, n_prompts=4, prompt_margin=False,
                                   **{**FAST, "epochs": 60, "batch_size": 16})
        m[lam] = train_reward_model(judged, cfg, tmp_path / f"rm{lam}", f"lam{lam}")["train"]
    # The term it optimises drops, and the true prompt of most good images comes out on top.
    assert m[0.5]["prompt_ce"] < m[0.0]["prompt_ce"] - 0.02, m
    assert m[0.5]["prompt_accuracy"] > 0.75, m
    # Through the checkpoint and the scorer: the true prompt outscores its perturbations.
    model = load_reward_model(tmp_path / "rm0.5")
    rows = [r for r in judged.to_pylist() if r["label"] == 1.0][:16]
    wins = 0
    for i, r in enumerate(rows):
        negs = [q.text for q in perturb(parse_prompt(r["prompt"]), 3, seed=i)]
        s = model.score([decode_png(r["image"])] * 4, [r["prompt"], *negs])
        wins += int(s[0] > s[1:].max())
    assert wins >= 10, wins


def test_cli_train_and_eval_round_trip(judged, clip_model_dir, tmp_path, capsys):
    data = tmp_path / "buffer"
    data.mkdir()
    pq.write_table(judged.slice(0, 90), data / "round-0000.parquet")
    pq.write_table(judged.slice(90), data / "round-0001.parquet")
    out, cache = tmp_path / "rm-0001", tmp_path / "emb.npz"
    argv = ["reward", "train", "--data", str(data), "--out", str(out), "--backbone", str(clip_model_dir),
            "--hidden", "256", "--epochs", "20", "--heldout", "fraction", "--heldout-fraction", "0.2",
            "--embedding-cache", str(cache), "--threads", "1", "--metrics", str(tmp_path / "m.json")]
    assert cli_main(argv) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["version"] == "rm-0001" and metrics["n_train"] + metrics["n_heldout"] == 160
    assert metrics["n_heldout"] > 0 and 0 <= metrics["heldout"]["accuracy"] <= 1
    assert cache.is_file()
    assert json.loads((out / "reward_model.json").read_text())["margin_perturbation"] == "shapes"  # default input
    # The embedding cache is keyed to these backbone weights and views, and reused.
    assert ClipBackbone(clip_model_dir, views=ImageViews()).load_cache(cache)
    assert not ClipBackbone(clip_model_dir).load_cache(cache)  # one view: other embeddings
    capsys.readouterr()
    assert cli_main(["reward", "eval", "--model", str(out), "--data", str(data)]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["version"] == "rm-0001" and ev["n"] == 160  # skips excluded here too
    # The scorer reproduces the training-time numbers on the same samples.
    model = load_reward_model(out)
    train_only = judged.filter(pc.is_valid(judged["label"]))
    direct = evaluate_reward_model(model, train_only)
    assert direct["accuracy"] == pytest.approx(ev["accuracy"])
    n_tr, n_ho = metrics["n_train"], metrics["n_heldout"]
    pooled = (metrics["train"]["mse"] * n_tr + metrics["heldout"]["mse"] * n_ho) / (n_tr + n_ho)
    assert ev["mse"] == pytest.approx(pooled, rel=1e-4)


def test_missing_backbone_fails_clearly(judged, tmp_path, capsys):
    cfg = RewardTrainingConfig(backbone=str(tmp_path / "missing-clip"))
    with pytest.raises(FileNotFoundError, match=r"backbone .*missing-clip"):
        train_reward_model(judged, cfg, tmp_path / "rm", "v")
    pq.write_table(judged, tmp_path / "d.parquet")
    rc = cli_main(["reward", "train", "--data", str(tmp_path / "d.parquet"), "--out", str(tmp_path / "rm"),
                   "--backbone", str(tmp_path / "missing-clip")])
    assert rc == 2 and "missing-clip" in capsys.readouterr().err
    assert not (tmp_path / "rm").exists()
    with pytest.raises(ValueError, match="extra"):
        RewardTrainingConfig(lamda=0.5)  # a misspelt key is an error, not a silent default


@pytest.mark.ray
def test_trains_as_a_ray_task(ray_session, judged, clip_model_dir, tmp_path):
    pq.write_table(judged, tmp_path / "labelled.parquet")
    cfg = RewardTrainingConfig(backbone=str(clip_model_dir), **{**FAST, "epochs": 5})
    ref = train_reward_model_remote(tmp_path / "labelled.parquet", cfg, tmp_path / "rm-ray", "rm-ray")
    metrics = ray_session.get(ref, timeout=300)
    assert metrics["n_train"] == 160 and metrics["version"] == "rm-ray"
    assert load_reward_model(tmp_path / "rm-ray").version == "rm-ray"


def test_labels_the_other_prompts_contradict_weigh_less(judged, clip_model_dir):
    """Cross-fitted label weights: flip a fifth of the judge's labels, and the heads trained on
    the other folds of prompts give the flipped labels far less weight than the rest."""
    data = read_labelled(judged)
    flipped = np.random.default_rng(0).random(len(data)) < 0.2
    data.labels = np.where(flipped, 1 - data.labels, data.labels).astype(np.float32)
    cfg = RewardTrainingConfig(backbone=str(clip_model_dir), **FAST)
    emb = EmbeddedSet(data, ClipBackbone(clip_model_dir, views=cfg.views), cfg)
    w = agreement_weights(emb, torch.arange(len(data)), data.prompts, cfg, torch.device("cpu")).numpy()
    assert ((w >= 0) & (w <= 1)).all()
    assert w[flipped].mean() < w[~flipped].mean() - 0.3, (w[flipped].mean(), w[~flipped].mean())
    # One prompt cannot be split into folds: every label keeps weight 1.
    same = np.array([data.prompts[0]] * len(data))
    assert (agreement_weights(emb, torch.arange(len(data)), list(same), cfg, torch.device("cpu")) == 1).all()
    with pytest.raises(ValueError, match="label_folds"):
        RewardTrainingConfig(label_folds=1)
