"""The reward model's frozen backbone: a Hugging Face CLIPModel directory (shapes-CLIP by default,
e.g. a local openai/clip-vit-large-patch14 on a cluster) that turns images and prompts into
L2-normalised embeddings. It is never trained, so its embeddings are computed once and cached:
images by a hash of their pixels, prompts by their text. An image's embedding is the mean over
its views (views.py), one view by default."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from t2i_rlhf.fingerprint import tree_fingerprint
from t2i_rlhf.training.reward.views import ImageViews

log = logging.getLogger(__name__)


def check_backbone_dir(path: str | Path) -> Path:
    """The backbone directory, or a clear FileNotFoundError naming what is missing."""
    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"reward-model backbone {str(path)!r} not found: expected a Hugging Face CLIPModel "
            "directory (config.json, weights, tokenizer, preprocessor_config.json), e.g. "
            "models/shapes-clip or a local copy of openai/clip-vit-large-patch14"
        )
    return p


def backbone_fingerprint(path: str | Path) -> str:
    """Identifies the backbone's weights, so cached embeddings go stale when the weights change."""
    return tree_fingerprint(check_backbone_dir(path).resolve())[:16]


def image_key(image: np.ndarray) -> str:
    """Content hash of a uint8 image: the cache key of its embedding."""
    a = np.ascontiguousarray(image, dtype=np.uint8)
    return hashlib.sha1(str(a.shape).encode() + a.tobytes()).hexdigest()


def _features(out: torch.Tensor | object) -> torch.Tensor:
    # transformers >= 5 returns a model output whose pooler_output is the projection; 4.x a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]


class ClipBackbone:
    """Frozen CLIP dual encoder with in-memory embedding caches.

    Embeddings are the projected CLIP features, L2-normalised, as CLIP compares them; with
    several views, the normalised mean of the views' embeddings."""

    def __init__(self, path: str | Path, device: str = "cpu", batch_size: int = 256,
                 views: ImageViews | None = None) -> None:
        self.path = check_backbone_dir(path)
        self.views = views or ImageViews.single()
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.model = CLIPModel.from_pretrained(self.path).to(self.device).eval().requires_grad_(False)
        self.processor = AutoImageProcessor.from_pretrained(self.path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.dim = int(self.model.config.projection_dim)
        self._text: dict[str, torch.Tensor] = {}
        self._image: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def _encode_images(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        out = []
        step = max(1, self.batch_size // self.views.count)
        for i in range(0, len(images), step):
            # All views of a chunk in one forward pass, view-major: [views * chunk, ...].
            chunk = [self.views.of(np.asarray(im, dtype=np.uint8)) for im in images[i : i + step]]
            flat = [v[k] for k in range(self.views.count) for v in chunk]
            pixels = self.processor(images=flat, return_tensors="pt").pixel_values.to(self.device)
            feats = F.normalize(_features(self.model.get_image_features(pixel_values=pixels)), dim=-1)
            out.append(F.normalize(feats.view(self.views.count, len(chunk), -1).mean(0), dim=-1))
        return torch.cat(out).float().cpu()

    @torch.no_grad()
    def _encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(
                list(texts[i : i + self.batch_size]), padding=True, truncation=True, return_tensors="pt"
            ).to(self.device)
            feats = self.model.get_text_features(input_ids=tok.input_ids, attention_mask=tok.attention_mask)
            out.append(F.normalize(_features(feats), dim=-1))
        return torch.cat(out).float().cpu()

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """[len(texts), dim] embeddings; each distinct prompt is encoded once per backbone."""
        missing = list(dict.fromkeys(t for t in texts if t not in self._text))
        if missing:
            for t, e in zip(missing, self._encode_texts(missing), strict=True):
                self._text[t] = e
        if not texts:
            return torch.empty(0, self.dim)
        return torch.stack([self._text[t] for t in texts])

    def embed_images(self, images: Sequence[np.ndarray], cache: bool = True) -> torch.Tensor:
        """[len(images), dim] embeddings. With `cache`, keyed by pixel hash (training re-reads the
        same samples every round); the scorer passes cache=False since it sees each image once."""
        if not cache:
            return self._encode_images(images) if len(images) else torch.empty(0, self.dim)
        keys = [image_key(im) for im in images]
        todo = {k: im for k, im in zip(keys, images, strict=True) if k not in self._image}
        if todo:
            log.debug("encoding %d new images", len(todo))
            for k, e in zip(todo, self._encode_images(list(todo.values())), strict=True):
                self._image[k] = e
        if not keys:
            return torch.empty(0, self.dim)
        return torch.stack([self._image[k] for k in keys])

    def save_cache(self, path: str | Path) -> None:
        """Persist the caches (with the backbone's fingerprint) so a later run skips the encoder."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp.npz")
        np.savez(
            tmp, fingerprint=np.array(self._cache_id()),
            text_keys=np.array(list(self._text), dtype=object),
            text=_stack(list(self._text.values()), self.dim),
            image_keys=np.array(list(self._image), dtype=object),
            image=_stack(list(self._image.values()), self.dim),
        )
        tmp.replace(p)

    def load_cache(self, path: str | Path) -> bool:
        """Load a saved cache if it exists and was made by these exact weights."""
        p = Path(path)
        if not p.is_file():
            return False
        with np.load(p, allow_pickle=True) as z:
            if str(z["fingerprint"]) != self._cache_id():
                log.info("embedding cache %s is from other backbone weights or views; ignoring it", p)
                return False
            self._text.update(zip(z["text_keys"].tolist(), torch.from_numpy(z["text"]), strict=True))
            self._image.update(zip(z["image_keys"].tolist(), torch.from_numpy(z["image"]), strict=True))
        log.info("loaded %d image / %d text embeddings from %s", len(self._image), len(self._text), p)
        return True

    def _cache_id(self) -> str:
        """The weights' fingerprint, plus the views when there are several (a cache of one view
        keeps the id it had before views existed)."""
        fp = backbone_fingerprint(self.path)
        return fp if self.views == ImageViews.single() else f"{fp}:{self.views.model_dump_json()}"


def _stack(vectors: list[torch.Tensor], dim: int) -> np.ndarray:
    return torch.stack(vectors).numpy() if vectors else np.zeros((0, dim), np.float32)
