"""The generator: a diffusers pipeline that turns (prompt, seed) pairs into sample batches.

It is a plain class so it can be used in-process (benchmarks, notebooks) and as a Ray actor
(`GeneratorActor`). Every sample records the model version that made it; `update_weights` swaps
UNet or LoRA weights in place, so a long-lived actor follows the fine-tuning rounds without a
restart. (When Ray does restart it, it comes back with its constructor's weights, and
actors/restarts.py brings it to the current version.) Images are deterministic per sample: each
sample's initial noise comes from its own `torch.Generator` seeded with its seed, so the same seed
and weights give the same image whatever else is in the batch (up to float round-off of batched
kernels).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch

from t2i_rlhf.actors.generation_config import GenerationConfig
from t2i_rlhf.actors.restarts import check_version
from t2i_rlhf.diffusion.latents import decode_latents, encode_images
from t2i_rlhf.logs import quiet_diffusers_loading
from t2i_rlhf.model_version import BASE_VERSION, MANIFEST, read_manifest
from t2i_rlhf.samples import SAMPLE_SCHEMA, png_bytes
from t2i_rlhf.shapes import parse_prompt

log = logging.getLogger(__name__)

TIMELINE_LENGTH = 10_000  # recent calls kept for round summaries

OTHER_CATEGORY = "other"  # prompts outside the shapes grammar (a user's own model and prompts)


def sample_id(round: int, seed: int, prompt: str) -> str:
    """Deterministic id: a (round, prompt, seed) triple names exactly one sample of a run."""
    return f"r{round}-s{seed}-{hashlib.sha1(prompt.encode()).hexdigest()[:8]}"


def prompt_category(prompt: str) -> str:
    try:
        return parse_prompt(prompt).category
    except ValueError:
        return OTHER_CATEGORY


def check_pipeline_dir(model_dir: str | Path) -> Path:
    """Fail early and clearly on a path that is not a diffusers pipeline directory."""
    path = Path(model_dir)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(
            f"no diffusers pipeline at {str(model_dir)!r}: model_index.json is missing "
            "(expected a StableDiffusionPipeline directory such as models/shapes-sd)"
        )
    return path


def _in_ray_actor() -> bool:
    return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None


class Generator:
    """Holds a StableDiffusionPipeline and generates SAMPLE_SCHEMA batches."""

    def __init__(
        self, model_dir: str | Path, config: GenerationConfig | dict | None = None,
        version: str = BASE_VERSION,
    ) -> None:
        from diffusers import StableDiffusionPipeline

        self.config = GenerationConfig.model_validate(config or {})
        self.model_dir = check_pipeline_dir(model_dir)
        if _in_ray_actor():  # only own processes: in-process users keep their thread setting
            torch.set_num_threads(self.config.torch_threads)
        use_cuda = self.config.num_gpus > 0 and torch.cuda.is_available()
        self.device = torch.device("cuda" if use_cuda else "cpu")
        quiet_diffusers_loading()
        self.pipe = StableDiffusionPipeline.from_pretrained(
            self.model_dir, dtype=getattr(torch, self.config.dtype),
            safety_checker=None, requires_safety_checker=False,
        ).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self._version = version
        self._unet_is_base = True  # False once full UNet weights have been swapped in
        self._lora_loaded = False
        self._timeline: deque[tuple[float, float, int]] = deque(maxlen=TIMELINE_LENGTH)
        log.info("generator ready: %s on %s (%s)", self.model_dir, self.device, version)

    def version(self) -> str:
        return self._version

    def timeline(self) -> list[tuple[float, float, int]]:
        """(start, end, n_samples) of every generate call: lets a round show that stages overlap."""
        return list(self._timeline)

    # --- generation ----------------------------------------------------------------------------

    def generate(self, round: int, items: list[tuple[str, int]], steps: int | None = None,
                 guidance_scale: float | None = None, *, expect_version: str | None = None) -> pa.RecordBatch:
        """Images for (prompt, seed) pairs, in order, as one SAMPLE_SCHEMA batch (unscored).
        `steps` / `guidance_scale` override the configured sampling for this call only: the
        evaluation samples as it is configured to, whatever the rollout's settings. With
        `expect_version`, a generator holding another version (Ray restarted it with its
        constructor's weights) raises StaleVersionError instead of drawing samples."""
        check_version("generator", self._version, expect_version)
        if not items:
            raise ValueError("generate() needs at least one (prompt, seed) pair")
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if guidance_scale is not None and guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
        for prompt, seed in items:
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"prompts must be non-empty strings, got {prompt!r}")
            if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
                raise ValueError(f"seeds must be integers, got {seed!r}")
        start = time.time()
        latents, images = [], []
        bs = self.config.batch_size
        for i in range(0, len(items), bs):
            lat, img = self._run_pipeline(items[i : i + bs], steps or self.config.steps,
                                          self.config.guidance_scale if guidance_scale is None else guidance_scale)
            latents.append(lat)
            images.append(img)
        lat = np.concatenate(latents)
        img = np.concatenate(images)
        batch = self._to_batch(round, items, lat, img)
        self._timeline.append((start, time.time(), len(items)))
        return batch

    @torch.inference_mode()
    def _run_pipeline(self, items: list[tuple[str, int]], steps: int,
                      guidance_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Scaled x0 latents and uint8 images for one chunk. The latents are the VAE encoding of
        the decoded image (see diffusion/latents.py): what is judged and labelled is the image, so
        that is what fine-tuning learns from, exactly as pre-training data is encoded."""
        cfg = self.config
        prompts = [p for p, _ in items]
        generators = [torch.Generator("cpu").manual_seed(int(s)) for _, s in items]
        out = self.pipe(
            prompts, num_inference_steps=steps, guidance_scale=guidance_scale, eta=cfg.eta,
            height=cfg.height, width=cfg.width, generator=generators, output_type="latent",
        )
        images = decode_latents(self.pipe.vae, out.images)
        latents = encode_images(self.pipe.vae, images)
        return latents.float().cpu().numpy(), images

    def _to_batch(
        self, round: int, items: list[tuple[str, int]], latents: np.ndarray, images: np.ndarray
    ) -> pa.RecordBatch:
        n = len(items)
        flat = latents.reshape(n, -1).astype(np.float32)
        shape = list(latents.shape[1:])
        columns = {
            "sample_id": [sample_id(round, int(s), p) for p, s in items],
            "round": [round] * n,
            "prompt": [p for p, _ in items],
            "category": [prompt_category(p) for p, _ in items],
            "seed": [int(s) for _, s in items],
            "model_version": [self._version] * n,
            "image": [png_bytes(im) for im in images],
            "latents": pa.FixedSizeListArray.from_arrays(flat.ravel(), flat.shape[1]).cast(
                pa.list_(pa.float32())
            ),
            "latent_shape": [shape] * n,
            "reward": pa.nulls(n, pa.float32()),
            "reward_model_version": pa.nulls(n, pa.string()),
            "label": pa.nulls(n, pa.float32()),
            "n_labels": pa.nulls(n, pa.int32()),
        }
        arrays = [pa.array(columns[f.name], type=f.type) if not isinstance(columns[f.name], pa.Array)
                  else columns[f.name] for f in SAMPLE_SCHEMA]
        return pa.RecordBatch.from_arrays(arrays, schema=SAMPLE_SCHEMA)

    # --- weights -------------------------------------------------------------------------------

    def update_weights(self, version: str, location: str | Path) -> str:
        """Swap in the weights of model version `location` (see t2i_rlhf.model_version) and tag
        every later sample with `version`. A pipeline directory (no manifest) restores its UNet."""
        location = Path(location)
        if not (location / MANIFEST).exists() and (location / "model_index.json").exists():
            kind = "unet"
        else:
            manifest = read_manifest(location)  # clear FileNotFoundError for a wrong path
            if manifest.version != version:
                raise ValueError(
                    f"version {version!r} does not match the manifest at {location} ({manifest.version!r})"
                )
            kind = manifest.kind
        if kind == "unet":
            self._load_unet(location / "unet")
            self._unet_is_base = location.resolve() == self.model_dir.resolve()
        elif kind == "lora":
            self._load_lora(location / "lora")
        else:
            raise ValueError(f"unknown model-version kind {kind!r} at {location}")
        previous, self._version = self._version, version
        log.info("generator weights %s -> %s (%s from %s)", previous, version, kind, location)
        return version

    def _load_unet(self, unet_dir: Path) -> None:
        from diffusers import UNet2DConditionModel

        if not unet_dir.is_dir():
            raise FileNotFoundError(f"no UNet weights at {unet_dir}")
        new = UNet2DConditionModel.from_pretrained(unet_dir).state_dict()
        if self._lora_loaded:
            self.pipe.unload_lora_weights()
            self._lora_loaded = False
        current = self.pipe.unet.state_dict()
        missing = sorted(set(current) - set(new))
        unexpected = sorted(set(new) - set(current))
        mismatched = [
            f"{k}: {tuple(new[k].shape)} vs model {tuple(current[k].shape)}"
            for k in current if k in new and new[k].shape != current[k].shape
        ]
        if missing or unexpected or mismatched:
            raise ValueError(
                f"UNet weights at {unet_dir} do not fit this pipeline's UNet: "
                f"{len(mismatched)} shape mismatches {mismatched[:3]}, missing {missing[:3]}, "
                f"unexpected {unexpected[:3]}"
            )
        self.pipe.unet.load_state_dict(new)

    def _load_lora(self, lora_dir: Path) -> None:
        """LoRA versions apply to the base pipeline's UNet (restored first if full weights were
        swapped in), replacing any LoRA loaded before."""
        if not lora_dir.is_dir():
            raise FileNotFoundError(f"no LoRA weights at {lora_dir}")
        if self._lora_loaded:
            self.pipe.unload_lora_weights()
            self._lora_loaded = False
        if not self._unet_is_base:
            self._load_unet(self.model_dir / "unet")
            self._unet_is_base = True
        try:
            self.pipe.load_lora_weights(lora_dir)
        except (RuntimeError, ValueError, KeyError) as e:
            raise ValueError(f"LoRA weights at {lora_dir} do not fit this pipeline's UNet: {e}") from e
        self._lora_loaded = True


GeneratorActor = ray.remote(Generator)
