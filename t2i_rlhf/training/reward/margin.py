"""The reward model's zero-shot input: how much closer the frozen backbone puts an image to its
prompt than to the nearest of the prompt's perturbations.

    m(x, z) = cos(x, z) − max_{z' ∈ P(z)} cos(x, z')

This is CLIP's own answer to the auxiliary task (is this the prompt, or one like it with the
count, colour, shape or scene changed?), computed without any labels. The MLP sees the absolute
embeddings of a prompt it may never have been labelled on; m is relative to that prompt's
neighbours, so it carries over to unseen prompts, where the MLP alone is too cautious. The same
perturbation function as the auxiliary loss supplies P(z), with a fixed seed so that m is a
function of (x, z) alone. Prompts with no perturbations get NaN, which the MLP reads as "no
evidence" (the training mean)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from t2i_rlhf.training.reward.backbone import ClipBackbone
from t2i_rlhf.training.reward.data import resolve_perturbation


class PromptMargin:
    """m(x, z) for any prompts, with each prompt's perturbations looked up once."""

    def __init__(self, perturbation: str, n_prompts: int) -> None:
        self.perturbation, self.n_prompts = perturbation, n_prompts
        self._fn = resolve_perturbation(perturbation)
        self._neighbours: dict[str, list[str]] = {}

    def neighbours(self, prompt: str) -> list[str]:
        """P(prompt): up to `n_prompts` distinct perturbations, the same on every call."""
        if prompt not in self._neighbours:
            found = self._fn(prompt, self.n_prompts, 0) if self._fn else []
            self._neighbours[prompt] = [q for q in dict.fromkeys(found) if q != prompt][: self.n_prompts]
        return self._neighbours[prompt]

    @torch.no_grad()
    def __call__(self, backbone: ClipBackbone, image_emb: torch.Tensor,
                 prompts: Sequence[Sequence[str]], chunk: int = 256) -> torch.Tensor:
        """[B, N] margins of image b against prompts[b][0..N-1] (rows of equal length)."""
        rows = [list(row) for row in prompts]
        if len(rows) != len(image_emb):
            raise ValueError(f"got {len(image_emb)} images but {len(rows)} rows of prompts")
        width = len(rows[0]) if rows else 0
        if any(len(row) != width for row in rows):
            raise ValueError("every image needs the same number of prompts")
        if not rows:
            return torch.zeros(0, 0)
        # In chunks of images, so the similarity matrix stays small with many distinct prompts.
        return torch.cat([self._margins(backbone, image_emb[i : i + chunk], rows[i : i + chunk], width)
                          for i in range(0, len(rows), chunk)])

    def _margins(self, backbone: ClipBackbone, image_emb: torch.Tensor, rows: list[list[str]],
                 width: int) -> torch.Tensor:
        texts = list(dict.fromkeys(t for row in rows for p in row for t in (p, *self.neighbours(p))))
        index = {t: i for i, t in enumerate(texts)}
        table = backbone.embed_texts(texts).to(image_emb.device)
        k = max((len(self.neighbours(p)) for row in rows for p in row), default=0)
        own = torch.tensor([[index[p] for p in row] for row in rows], dtype=torch.long)
        near = torch.zeros(len(rows), width, max(k, 1), dtype=torch.long)
        valid = torch.zeros(len(rows), width, max(k, 1), dtype=torch.bool)
        for b, row in enumerate(rows):
            for j, p in enumerate(row):
                ids = [index[q] for q in self.neighbours(p)]
                near[b, j, : len(ids)] = torch.tensor(ids, dtype=torch.long)
                valid[b, j, : len(ids)] = True
        sims = image_emb.float() @ table.float().T  # [B, distinct texts]
        own_sim = sims.gather(1, own.to(sims.device))
        near_sim = sims.gather(1, near.view(len(rows), -1).to(sims.device)).view(near.shape)
        near_best = near_sim.masked_fill(~valid.to(sims.device), -torch.inf).max(dim=-1).values
        return torch.where(torch.isinf(near_best), torch.nan, own_sim - near_best)
