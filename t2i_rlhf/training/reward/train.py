"""Reward-model training: labelled samples -> a versioned reward-model checkpoint + metrics.

The backbone is frozen, so every image and prompt (true and perturbed) is embedded once up
front; an epoch then only runs the small MLP over cached tensors. That makes extra heads cheap:
before the final head, one head per fold of prompts predicts the labels of the others
(cross-fitting), and each label weighs by how well that prediction agrees with it, so labels
the rest of the data contradicts (people's slips and disagreements) count less, in the spirit
of confident learning (Northcutt et al. 2021). Runs in-process or as a Ray task
(`train_reward_model_remote`, a GPU on a cluster when `num_gpus` > 0)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import pyarrow as pa
import torch

from t2i_rlhf.training.reward.backbone import ClipBackbone, check_backbone_dir
from t2i_rlhf.training.reward.config import RewardTrainingConfig
from t2i_rlhf.training.reward.data import (
    LabelledData,
    LabelledSet,
    heldout_mask,
    perturbation_table,
    prompt_bucket,
    read_labelled,
    resolve_perturbation,
)
from t2i_rlhf.training.reward.loss import mse_term, prompt_classification_term, reward_loss
from t2i_rlhf.training.reward.margin import PromptMargin
from t2i_rlhf.training.reward.metrics import score_metrics
from t2i_rlhf.training.reward.model import (
    RewardMLP,
    RewardModel,
    RewardModelSpec,
    load_reward_model,
    save_reward_model,
)

log = logging.getLogger(__name__)


class EmbeddedSet:
    """Labelled samples as cached embeddings: x (images), z (prompts) and, per sample, indices of
    its true + perturbed prompts into a table of distinct prompt embeddings."""

    def __init__(self, data: LabelledSet, backbone: ClipBackbone, cfg: RewardTrainingConfig) -> None:
        # Perturbations are embedded even when λ = 0, so the ablation still reports the task.
        fn = resolve_perturbation(cfg.perturbation)
        cands = perturbation_table(data.prompts, cfg.n_prompts - 1, fn, seed=cfg.seed)
        texts = list(dict.fromkeys(t for row in cands for t in row))
        index = {t: i for i, t in enumerate(texts)}
        self.text_table = backbone.embed_texts(texts)
        self.x = backbone.embed_images(data.images)
        self.z = self.text_table[[index[t] for t in data.prompts]]
        self.y = torch.from_numpy(data.labels).float()
        self.weight = torch.ones_like(self.y)  # of each label in the MSE (agreement_weights)
        self.cand = torch.zeros(len(data), cfg.n_prompts, dtype=torch.long)
        self.valid = torch.zeros(len(data), cfg.n_prompts, dtype=torch.bool)
        for i, row in enumerate(cands):
            self.cand[i, : len(row)] = torch.tensor([index[t] for t in row])
            self.valid[i, : len(row)] = True
        # The auxiliary term covers images labelled good whose prompt has perturbations.
        self.aux = (self.y > 0.5) & self.valid[:, 1:].any(dim=1)
        # The prompt margin of every (image, candidate) pair; column 0 is the true prompt's.
        self.margin = torch.full(self.cand.shape, torch.nan)
        self.prompt_margin = margin_of(cfg)
        if self.prompt_margin is not None:
            rows = [row + [row[0]] * (cfg.n_prompts - len(row)) for row in cands]
            self.margin = self.prompt_margin(backbone, self.x, rows)

    def to(self, device: torch.device) -> EmbeddedSet:
        for name in ("text_table", "x", "z", "y", "weight", "cand", "valid", "aux", "margin"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def scores(self, mlp: RewardMLP, idx: torch.Tensor, candidates: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """r of samples `idx` with their true prompts; the good images among them (those in the
        auxiliary term), and their r against all their candidate prompts (none if not asked)."""
        r = mlp(self.x[idx], self.z[idx], self.margin[idx, 0])
        good = idx[self.aux[idx]] if candidates else idx[:0]
        r_cand = mlp(self.x[good].unsqueeze(1), self.text_table[self.cand[good]], self.margin[good])
        return r, good, r_cand

    def batch_loss(
        self, mlp: RewardMLP, idx: torch.Tensor, cfg: RewardTrainingConfig
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """The paper's loss on samples `idx`: MSE on all (by label weight), prompt classification
        on the good ones."""
        r, good, r_cand = self.scores(mlp, idx, candidates=cfg.lambda_aux > 0)
        return reward_loss(r, self.y[idx], r_cand, self.valid[good], cfg.lambda_aux, cfg.temperature,
                           self.weight[idx])

    @torch.no_grad()
    def evaluate(self, mlp: RewardMLP, mask: torch.Tensor, cfg: RewardTrainingConfig) -> dict:
        """Loss parts, accuracy at 0.5, ROC AUC, and how often the true prompt outranks its
        perturbations (the auxiliary task, reported even when trained without it)."""
        idx = torch.nonzero(mask).squeeze(1)
        if len(idx) == 0:
            return {"n": 0}
        r, good, r_cand = self.scores(mlp, idx)
        mse = float(mse_term(r, self.y[idx]))
        out = {**score_metrics(r.cpu().numpy(), self.y[idx].cpu().numpy()), "mse": mse}
        if len(good):
            pc = float(prompt_classification_term(r_cand, self.valid[good], cfg.temperature))
            # Strictly above every perturbation: a saturated r that ties them all does not count.
            best_neg = r_cand[:, 1:].masked_fill(~self.valid[good][:, 1:], -math.inf).max(dim=1).values
            out.update(prompt_ce=pc, prompt_accuracy=float((r_cand[:, 0] > best_neg).float().mean()))
        out["loss"] = mse + cfg.lambda_aux * out.get("prompt_ce", 0.0)
        return out


def margin_of(cfg: RewardTrainingConfig) -> PromptMargin | None:
    """The prompt-margin input, if configured and there is a perturbation function to give it."""
    if not cfg.prompt_margin or cfg.perturbation == "none":
        return None
    return PromptMargin(cfg.perturbation, cfg.margin_prompts)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def train_reward_model(
    labelled: LabelledData, config: RewardTrainingConfig, out_dir: str | Path, version: str
) -> dict:
    """Train r(x, z) on labelled samples (a Table or Parquet files/dirs) and write checkpoint
    `out_dir` with `version`. Returns metrics for the train and held-out samples."""
    t0 = time.monotonic()
    check_backbone_dir(config.backbone)  # fail before any data is read
    data = read_labelled(labelled)
    if not len(data):
        raise ValueError("no labelled samples to train the reward model on (skips do not count)")
    if config.threads:
        torch.set_num_threads(config.threads)
    device = pick_device(config.device)
    backbone = ClipBackbone(config.backbone, device=str(device), views=config.views)
    if config.embedding_cache:
        backbone.load_cache(config.embedding_cache)
    emb = EmbeddedSet(data, backbone, config)
    if config.embedding_cache:
        backbone.save_cache(config.embedding_cache)
    t_embed = time.monotonic() - t0
    held = torch.from_numpy(heldout_mask(data.prompts, config.heldout, config.heldout_fraction, config.seed))
    emb.to(device)
    held = held.to(device)
    train_idx = torch.nonzero(~held).squeeze(1)
    if len(train_idx) == 0:
        raise ValueError("every labelled sample is held out; nothing left to train on")

    if config.label_folds:
        emb.weight = agreement_weights(emb, train_idx, data.prompts, config, device)
    mlp = fit_head(emb, train_idx, config, device, config.seed)

    w = emb.weight[train_idx]
    metrics = {
        "version": version,
        "n_train": int(len(train_idx)),
        "n_heldout": int(held.sum()),
        "label_weights": {"folds": config.label_folds, "mean": float(w.mean()),
                          "below_half": float((w < 0.5).float().mean())},
        "train": emb.evaluate(mlp, ~held, config),
        "heldout": emb.evaluate(mlp, held, config),
        "embed_seconds": round(t_embed, 2),
        "seconds": round(time.monotonic() - t0, 2),
    }
    margin = emb.prompt_margin
    spec = RewardModelSpec(
        # Absolute, so a scorer actor loads it whatever its working directory.
        version=version, backbone=str(Path(config.backbone).resolve()), embed_dim=backbone.dim,
        hidden=config.hidden, features=config.features, dropout=config.dropout,
        margin_perturbation=margin.perturbation if margin else None, margin_prompts=config.margin_prompts,
        views=config.views,
        metrics={**metrics, "config": config.model_dump()},
    )
    save_reward_model(out_dir, spec, mlp.cpu())
    log.info("reward model %s -> %s: %s", version, out_dir, _summary(metrics))
    return metrics


def fit_head(emb: EmbeddedSet, idx: torch.Tensor, config: RewardTrainingConfig, device: torch.device,
             seed: int) -> RewardMLP:
    """Train a fresh MLP on samples `idx` of `emb` (standardised by their statistics); eval mode."""
    torch.manual_seed(seed)
    mlp = RewardMLP(emb.x.shape[1], config.hidden, config.features, config.dropout,
                    emb.prompt_margin is not None).to(device)
    mlp.fit_standardisation(emb.x[idx], emb.z[idx], emb.margin[idx, 0])
    opt = torch.optim.AdamW(mlp.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    for epoch in range(config.epochs):
        mlp.train()
        order = idx[torch.randperm(len(idx), generator=gen).to(device)]
        for batch in order.split(config.batch_size):
            loss, parts = emb.batch_loss(mlp, batch, config)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if epoch == 0 or (epoch + 1) % max(1, config.epochs // 5) == 0:
            log.debug("reward epoch %d/%d: loss %.4f", epoch + 1, config.epochs, parts["loss"])
    return mlp.eval()


def agreement_weights(emb: EmbeddedSet, train_idx: torch.Tensor, prompts: list[str],
                      config: RewardTrainingConfig, device: torch.device) -> torch.Tensor:
    """Per sample, 1 − |y − r̂|: r̂ is the score of a head trained on the other folds of prompts
    (so it never saw the label, nor another image of the prompt). All 1 when the training
    prompts cannot fill two folds."""
    weight = torch.ones_like(emb.y)
    # Salted apart from the held-out split's hash, which would otherwise all land in fold 0.
    salt = f"label-folds:{config.seed}"
    fold = torch.tensor([int(prompt_bucket(p, salt) * config.label_folds) for p in prompts],
                        device=device)[train_idx]
    if len(fold.unique()) < 2:
        log.info("label weights need prompts in two folds; every label weighs 1")
        return weight
    for k in fold.unique().tolist():
        head = fit_head(emb, train_idx[fold != k], config, device, config.seed + 1 + k)
        own = train_idx[fold == k]
        with torch.no_grad():
            weight[own] = 1 - (head(emb.x[own], emb.z[own], emb.margin[own, 0]) - emb.y[own]).abs()
    log.info("label weights from %d folds: mean %.3f, %.1f%% below 0.5", len(fold.unique()),
             weight[train_idx].mean(), 100 * (weight[train_idx] < 0.5).float().mean())
    return weight


def _summary(m: dict) -> str:
    def part(name: str) -> str:
        d = m[name]
        if not d.get("n"):
            return f"{name} n=0"
        return f"{name} n={d['n']} mse={d['mse']:.3f} acc={d['accuracy']:.3f} auc={d['auc']:.3f}"
    return ", ".join(part(k) for k in ("train", "heldout"))


def evaluate_reward_model(model: RewardModel | str | Path, labelled: LabelledData) -> dict:
    """MSE, accuracy at 0.5 and ROC AUC of a checkpoint on labelled samples."""
    rm = model if isinstance(model, RewardModel) else load_reward_model(model)
    data = read_labelled(labelled)
    scores = rm.score(data.images, data.prompts)
    return {"version": rm.version, **score_metrics(scores, data.labels)}


def train_reward_model_remote(
    labelled: LabelledData, config: RewardTrainingConfig, out_dir: str | Path, version: str
):
    """Submit `train_reward_model` as a Ray task (resources from the config); returns its
    ObjectRef. Paths that exist here are made absolute, since a worker's cwd may differ."""
    import ray

    if Path(config.backbone).exists():
        config = config.model_copy(update={"backbone": str(Path(config.backbone).resolve())})
    if isinstance(labelled, str | Path):
        labelled = str(Path(labelled).resolve())
    elif not isinstance(labelled, pa.Table):
        labelled = [str(Path(p).resolve()) for p in labelled]
    task = ray.remote(train_reward_model).options(
        num_cpus=config.num_cpus, num_gpus=config.num_gpus, name="train_reward_model"
    )
    return task.remote(labelled, config, str(Path(out_dir).resolve()), version)
