"""The reward model r(x, z) of Lee et al. (2023): frozen CLIP image and text embeddings into a
trainable 2-layer MLP whose sigmoid output in [0, 1] estimates how likely a person says image x
matches prompt z.

A checkpoint is a directory:
  reward_model.json  - version, backbone path (a reference, not a copy), MLP shape, training metrics
  mlp.safetensors    - the MLP's weights
Training stores the backbone's absolute path (a scorer actor's working directory may differ);
`load_reward_model(path, backbone=...)` overrides it, e.g. with a cluster's copy."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors.torch import load_file, save_file
from torch import nn

from t2i_rlhf.training.reward.backbone import ClipBackbone, check_backbone_dir
from t2i_rlhf.training.reward.config import Features
from t2i_rlhf.training.reward.margin import PromptMargin
from t2i_rlhf.training.reward.views import ImageViews

log = logging.getLogger(__name__)

CONFIG_FILE = "reward_model.json"
WEIGHTS_FILE = "mlp.safetensors"

class RewardModelSpec(BaseModel):
    """What a checkpoint needs to rebuild the model (saved as reward_model.json)."""

    model_config = ConfigDict(extra="forbid")

    version: str
    backbone: str
    embed_dim: int
    hidden: int = 1024
    features: Features = "concat_product"
    dropout: float = 0.0
    # The zero-shot prompt margin input (margin.py): its perturbation function and how many
    # perturbations it compares with; None for a model without it.
    margin_perturbation: str | None = None
    margin_prompts: int = 16
    # The image views the embeddings average (a checkpoint from before views: one view).
    views: ImageViews = Field(default_factory=ImageViews.single)
    metrics: dict = {}

    def prompt_margin(self) -> PromptMargin | None:
        if self.margin_perturbation is None:
            return None
        return PromptMargin(self.margin_perturbation, self.margin_prompts)


class RewardMLP(nn.Module):
    """2-layer MLP on (image, text) embeddings, and optionally the prompt margin, -> r in [0, 1].
    Broadcasts leading dims, so one image against N prompts ([B, 1, d] with [B, N, d]) gives [B, N].

    Inputs are standardised per dimension with statistics of the training embeddings (buffers,
    saved with the weights): CLIP embeddings share a large common component, and what tells
    images apart lives in small deviations from it."""

    def __init__(self, embed_dim: int, hidden: int = 1024, features: Features = "concat_product",
                 dropout: float = 0.0, margin: bool = False) -> None:
        super().__init__()
        self.features, self.margin = features, margin
        for name in ("x_mean", "z_mean"):
            self.register_buffer(name, torch.zeros(embed_dim))
        for name in ("x_std", "z_std"):
            self.register_buffer(name, torch.ones(embed_dim))
        if margin:
            self.register_buffer("m_mean", torch.zeros(()))
            self.register_buffer("m_std", torch.ones(()))
        n_in = embed_dim * (3 if features == "concat_product" else 2) + int(margin)
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )

    @torch.no_grad()
    def fit_standardisation(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                            margin: torch.Tensor | None = None) -> None:
        """Set the input statistics from training embeddings (before training)."""
        for prefix, e in (("x", image_emb), ("z", text_emb)):
            getattr(self, f"{prefix}_mean").copy_(e.mean(0))
            std = e.std(0) if len(e) > 1 else torch.ones_like(e[0])
            getattr(self, f"{prefix}_std").copy_(std.clamp_min(1e-6))
        if self.margin and margin is not None:
            known = margin[~torch.isnan(margin)]
            if len(known) > 1:
                self.m_mean.copy_(known.mean())
                self.m_std.copy_(known.std().clamp_min(1e-6))

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor,
                margin: torch.Tensor | None = None) -> torch.Tensor:
        x = (image_emb - self.x_mean) / self.x_std
        z = (text_emb - self.z_mean) / self.z_std
        x, z = torch.broadcast_tensors(x, z)
        parts = [x, z, x * z] if self.features == "concat_product" else [x, z]
        if self.margin:
            if margin is None:
                raise ValueError("this reward model takes the prompt margin as an input")
            # Unknown (no perturbations): the training mean, i.e. no evidence either way.
            m = torch.nan_to_num((margin - self.m_mean) / self.m_std, nan=0.0)
            parts.append(m.expand(x.shape[:-1]).unsqueeze(-1))
        return torch.sigmoid(self.net(torch.cat(parts, dim=-1)).squeeze(-1))


class RewardModel:
    """A frozen backbone plus a trained MLP; what the scorer actor holds."""

    def __init__(self, spec: RewardModelSpec, mlp: RewardMLP, backbone: ClipBackbone) -> None:
        self.spec = spec
        self.mlp = mlp.eval()
        self.backbone = backbone
        self.margin = spec.prompt_margin()

    @property
    def version(self) -> str:
        return self.spec.version

    @torch.no_grad()
    def score(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> np.ndarray:
        """r(x, z) in [0, 1] for uint8 HxWx3 images and their prompts, as float32."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        return self._score_rows(images, [[p] for p in prompts]).reshape(-1)

    @torch.no_grad()
    def score_each(self, images: Sequence[np.ndarray], prompts: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """r(x_b, z) for every prompt z of prompts[b], as one float32 array per image (rows may
        differ in length). Each image is embedded once however many prompts it is scored against."""
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} rows of prompts")
        out = [np.zeros(0, np.float32) for _ in prompts]
        for width in sorted({len(row) for row in prompts} - {0}):  # the margin takes rows of one length
            idx = [i for i, row in enumerate(prompts) if len(row) == width]
            for i, row in zip(idx, self._score_rows([images[i] for i in idx], [prompts[i] for i in idx]), strict=True):
                out[i] = row
        return out

    def _score_rows(self, images: Sequence[np.ndarray], prompts: Sequence[Sequence[str]]) -> np.ndarray:
        """[B, N] scores of image b against prompts[b] (rows of one length N)."""
        width = len(prompts[0]) if len(prompts) else 0
        if not len(images) or not width:
            return np.zeros((len(images), width), np.float32)
        x = self.backbone.embed_images(images, cache=False)
        z = self.backbone.embed_texts([p for row in prompts for p in row]).view(len(images), width, -1)
        m = self.margin(self.backbone, x, prompts) if self.margin else None
        device = next(self.mlp.parameters()).device
        m = m.to(device) if m is not None else None
        r = self.mlp(x.to(device).unsqueeze(1), z.to(device), m)
        return r.float().cpu().numpy().astype(np.float32)


def save_reward_model(out_dir: str | Path, spec: RewardModelSpec, mlp: RewardMLP) -> Path:
    """Write a checkpoint directory; the config goes last so a half-written one never loads."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in mlp.state_dict().items()}, out / WEIGHTS_FILE)
    tmp = out / (CONFIG_FILE + ".tmp")
    tmp.write_text(spec.model_dump_json(indent=2))
    tmp.replace(out / CONFIG_FILE)
    return out


def read_spec(path: str | Path) -> RewardModelSpec:
    p = Path(path) / CONFIG_FILE
    if not p.is_file():
        raise FileNotFoundError(f"no reward model at {path}: {CONFIG_FILE} is missing")
    return RewardModelSpec.model_validate(json.loads(p.read_text()))


def load_reward_model(
    path: str | Path, backbone: str | Path | None = None, device: str = "cpu"
) -> RewardModel:
    """Load a checkpoint directory. `backbone` overrides the stored backbone path; a missing
    backbone directory is a FileNotFoundError that names it."""
    spec = read_spec(path)
    if backbone is not None:
        spec = spec.model_copy(update={"backbone": str(backbone)})
    check_backbone_dir(spec.backbone)
    mlp = RewardMLP(spec.embed_dim, spec.hidden, spec.features, spec.dropout, spec.margin_perturbation is not None)
    mlp.load_state_dict(load_file(Path(path) / WEIGHTS_FILE))
    enc = ClipBackbone(spec.backbone, device=device, views=spec.views)
    if enc.dim != spec.embed_dim:
        raise ValueError(
            f"reward model {path} was trained on {spec.embed_dim}-d embeddings but backbone "
            f"{spec.backbone} gives {enc.dim}-d ones"
        )
    log.info("loaded reward model %s (backbone %s)", spec.version, spec.backbone)
    return RewardModel(spec, mlp.to(device), enc)
