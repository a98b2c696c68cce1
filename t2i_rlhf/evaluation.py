"""Evaluation in the shapes world: the paper's table in miniature.

Alignment: the oracle judge's verdict on images generated for held-out prompts, per category,
with the binomial standard error next to each figure (with 96 images a category it is about
+-5 points, so a change must clear that to mean anything).
Fidelity: the Fréchet distance between generated and rendered images in the shapes-CLIP
image-embedding space (FID's recipe with CLIP features instead of Inception's).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from scipy import linalg
from tqdm.auto import tqdm

from t2i_rlhf.shapes.judge import judge
from t2i_rlhf.shapes.prompts import Prompt, category_prompts
from t2i_rlhf.shapes.render import render
from t2i_rlhf.shapes.vocab import CATEGORIES

log = logging.getLogger(__name__)


@dataclass
class CategoryResult:
    category: str
    n: int
    good: float  # fraction judged good
    clean: float  # fraction with recognisable objects on a scene colour
    # each image's verdict ("1" good), in the order of the evaluation's (prompt, seed) items: two
    # models judged on the same items give the change's standard error from paired differences
    verdicts: str = ""

    @property
    def stderr(self) -> float:
        return float(np.sqrt(self.good * (1 - self.good) / max(1, self.n)))


@dataclass
class EvalResult:
    model: str
    categories: list[CategoryResult]
    overall: CategoryResult
    fid: float | None = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["overall"]["stderr"] = self.overall.stderr
        for c, r in zip(d["categories"], self.categories, strict=True):
            c["stderr"] = r.stderr
        return d

    def table(self) -> str:
        lines = [f"model: {self.model}", f"{'category':<12} {'n':>5} {'judged good':>16} {'clean':>7}"]
        for r in [*self.categories, self.overall]:
            lines.append(
                f"{r.category:<12} {r.n:>5} {100 * r.good:>8.1f}% ± {100 * r.stderr:4.1f} {100 * r.clean:>6.1f}%"
            )
        if self.fid is not None:
            lines.append(f"fidelity: Fréchet distance to rendered images (shapes-CLIP) = {self.fid:.3f}")
        return "\n".join(lines)


def eval_prompts(per_category: int, split: str = "heldout", seed: int = 0) -> list[tuple[Prompt, int]]:
    """`per_category` (prompt, seed) pairs per category, cycling through the split's prompts so
    every prompt is used about equally. Seeds are fixed so two models see the same noise."""
    items = []
    for c_i, category in enumerate(CATEGORIES):
        prompts = category_prompts(category, split)
        for i in range(per_category):
            items.append((prompts[i % len(prompts)], seed * 1_000_003 + c_i * 100_000 + i))
    return items


def load_pipeline(model: str | Path, threads: int | None = None):
    """A StableDiffusionPipeline from a local directory (never the hub): a diffusers pipeline, or
    a model version the loop wrote (runs/<name>/models/rNNNN), on its base pipeline."""
    from t2i_rlhf.training.finetune.model import version_pipeline

    if threads:
        torch.set_num_threads(threads)
    pipe = version_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe, items: list[tuple[Prompt | str, int]], steps: int = 20, guidance: float = 5.0,
             batch: int = 32, progress: bool = True) -> np.ndarray:
    """uint8 images for (prompt, seed) pairs; each image's noise comes from its own seed, so the
    result does not depend on batching."""
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    out = []
    for start in tqdm(range(0, len(items), batch), desc="generate", disable=not progress, mininterval=5):
        chunk = items[start : start + batch]
        gens = [torch.Generator().manual_seed(int(s)) for _, s in chunk]
        imgs = pipe([str(p) for p, _ in chunk], height=size, width=size, num_inference_steps=steps,
                    guidance_scale=guidance, generator=gens, output_type="np").images
        out.append((imgs * 255).round().astype(np.uint8))
    return np.concatenate(out)


@torch.no_grad()
def clip_image_features(clip_dir: str | Path, images: np.ndarray, batch: int = 256) -> np.ndarray:
    from transformers import CLIPImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    processor = CLIPImageProcessor.from_pretrained(clip_dir, local_files_only=True)
    feats = []
    for start in range(0, len(images), batch):
        px = processor(images=list(images[start : start + batch]), return_tensors="pt").pixel_values
        out = model.get_image_features(pixel_values=px)
        feats.append((out if isinstance(out, torch.Tensor) else out.pooler_output).float().numpy())
    return np.concatenate(feats)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """‖μa − μb‖² + Tr(Σa + Σb − 2 (Σa Σb)^½), as FID computes it."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


def judge_table(model: str, prompts: list[Prompt], images: np.ndarray) -> EvalResult:
    verdicts = [judge(img, p) for img, p in zip(images, prompts, strict=True)]
    rows = []
    for category in CATEGORIES:
        vs = [v for v, p in zip(verdicts, prompts, strict=True) if p.category == category]
        if vs:
            rows.append(CategoryResult(category, len(vs), float(np.mean([v.good for v in vs])),
                                       float(np.mean([v.clean for v in vs])), _bits(vs)))
    overall = CategoryResult("overall", len(verdicts), float(np.mean([v.good for v in verdicts])),
                             float(np.mean([v.clean for v in verdicts])), _bits(verdicts))
    return EvalResult(model=model, categories=rows, overall=overall)


def _bits(verdicts: list) -> str:
    return "".join("1" if v.good else "0" for v in verdicts)


def paired_change(base: str, tuned: str) -> tuple[float, float] | None:
    """Change in the fraction judged good between two models judged on the same items, and its
    standard error from the paired differences (smaller than the two SEs combined: the same
    prompt and seed tends to pass or fail for both). None if the items are not the same."""
    if not base or len(base) != len(tuned):
        return None
    d = np.array([int(t) - int(b) for b, t in zip(base, tuned, strict=True)], dtype=float)
    return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else 0.0


def score_images(model: str, prompts: list[Prompt], images: np.ndarray, seeds: list[int],
                 clip_dir: str | Path) -> EvalResult:
    """The judge's table plus the Fréchet distance to renders of the same prompts and seeds."""
    result = judge_table(model, prompts, images)
    rendered = np.stack([render(p, s) for p, s in zip(prompts, seeds, strict=True)])
    result.fid = frechet_distance(clip_image_features(clip_dir, images), clip_image_features(clip_dir, rendered))
    return result


def save_grid(path: str | Path, prompts: list[str], images: np.ndarray, per_row: int = 8,
              scale: int = 3) -> Path:
    """A PNG with one row per prompt (its text on the left) and `per_row` images beside it."""
    rows = [(p, images[i : i + per_row]) for i, p in zip(range(0, len(images), per_row), prompts, strict=False)]
    cell = images.shape[1] * scale
    text_w = 230
    grid = Image.new("RGB", (text_w + per_row * (cell + 2), len(rows) * (cell + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (prompt, imgs) in enumerate(rows):
        y = r * (cell + 2)
        draw.text((4, y + cell // 2 - 6), prompt, fill="black")
        for c, img in enumerate(imgs):
            tile = Image.fromarray(img).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (text_w + c * (cell + 2), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def grid_items(split: str = "heldout", per_category: int = 3, per_row: int = 8) -> list[tuple[Prompt, int]]:
    """A few prompts of each category, `per_row` seeds each: the same for every model."""
    items = []
    for category in CATEGORIES:
        for p in category_prompts(category, split)[:per_category]:
            items += [(p, 7_000 + j) for j in range(per_row)]
    return items


def evaluate_model(model: str | Path, clip_dir: str | Path, out_dir: str | Path, per_category: int = 96,
                   split: str = "heldout", steps: int = 20, guidance: float = 5.0, seed: int = 0,
                   batch: int = 32, threads: int | None = None, pipe=None) -> EvalResult:
    """Generate, judge, measure fidelity, save a grid and a JSON result under `out_dir`."""
    pipe = pipe or load_pipeline(model, threads)
    items = eval_prompts(per_category, split, seed)
    images = generate(pipe, items, steps, guidance, batch)
    result = score_images(str(model), [p for p, _ in items], images, [s for _, s in items], clip_dir)
    result.extra = {"split": split, "steps": steps, "guidance": guidance, "seed": seed}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    g_items = grid_items(split)
    g_images = generate(pipe, g_items, steps, guidance, batch, progress=False)
    save_grid(out / "grid.png", [str(p) for p, _ in g_items[::8]], g_images)
    (out / "eval.json").write_text(json.dumps(result.to_dict(), indent=2))
    return result
