"""Model versions: what fine-tuning produces and generator actors load.

A version is a directory holding `manifest.json` and either
  - `unet/`  : a full diffusers UNet2DConditionModel (save_pretrained), or
  - `lora/`  : LoRA weights in diffusers format (`pipe.load_lora_weights(dir / "lora")`).
The manifest records lineage so every sample can name the weights that made it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

MANIFEST = "manifest.json"
BASE_VERSION = "base"


@dataclass
class ModelManifest:
    version: str  # e.g. "r0003"; "base" for the shipped model
    round: int
    parent_version: str
    steps: int  # optimizer steps that produced it
    config_hash: str  # hash of the fine-tuning config
    kind: str = "unet"  # "unet" (full weights) or "lora"
    base_model: str = ""  # the pipeline directory the weights apply to
    metrics: dict = field(default_factory=dict)


def write_manifest(directory: str | Path, manifest: ModelManifest) -> Path:
    if manifest.kind not in ("unet", "lora"):
        raise ValueError(f"manifest kind must be 'unet' or 'lora', got {manifest.kind!r}")
    path = Path(directory) / MANIFEST
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def read_manifest(directory: str | Path) -> ModelManifest:
    path = Path(directory) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"no model version at {directory}: {MANIFEST} is missing")
    return ModelManifest(**json.loads(path.read_text()))
