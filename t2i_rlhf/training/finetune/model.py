"""Which weights a round starts from, what it trains, and how the result is saved.

A fine-tuning checkpoint holds the weights in exactly the model-version layout (`unet/` as
UNet save_pretrained, or `lora/` as diffusers LoRA weights) plus the optimizer state, so
resuming, exporting a version and starting the next round from it all read the same files.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from t2i_rlhf.model_version import BASE_VERSION, MANIFEST, ModelManifest, read_manifest, write_manifest
from t2i_rlhf.training.finetune.config import FinetuneConfig

log = logging.getLogger(__name__)

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' name in `lora/`
EMA_DIR = "ema"  # a checkpoint's averaged weights (FinetuneConfig.ema_decay), in the same layout


@dataclass
class StartingPoint:
    """Where a round starts: a diffusers pipeline and, optionally, a parent model version."""

    pipeline_dir: str  # vae, text_encoder, tokenizer, scheduler (and the base unet)
    parent_version: str = BASE_VERSION
    parent_kind: str | None = None  # None: the pipeline itself; else the parent's 'unet' | 'lora'
    version_dir: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_base(base: str | Path) -> StartingPoint:
    """`base` is a pipeline directory (model_index.json) or a model version directory."""
    path = Path(base).resolve()
    if (path / "model_index.json").exists():
        return StartingPoint(pipeline_dir=str(path))
    if (path / MANIFEST).exists():
        m = read_manifest(path)
        pipeline = Path(m.base_model)
        if not (pipeline / "model_index.json").exists():
            raise FileNotFoundError(f"version {m.version} at {path} names base model {pipeline}, "
                                    "which is not a diffusers pipeline directory")
        return StartingPoint(str(pipeline), m.version, m.kind, str(path))
    raise FileNotFoundError(f"{path} is neither a diffusers pipeline (model_index.json) nor a model "
                            f"version ({MANIFEST})")


def _mark_trainable(unet: UNet2DConditionModel, lora: bool) -> None:
    unet.requires_grad_(not lora)
    if lora:
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.requires_grad_(True)


def load_unet(start: StartingPoint, cfg: FinetuneConfig, resume_dir: Path | None = None
              ) -> UNet2DConditionModel:
    """The UNet to train, on CPU: the parent's weights (or the checkpoint's, when resuming),
    with a trainable LoRA adapter when `cfg.lora` and every other weight frozen then."""
    if start.parent_kind == "unet" and cfg.lora:
        raise ValueError(f"parent version {start.parent_version} is a full UNet; a LoRA on it would not "
                         "load onto the base pipeline. Materialise it (materialize_pipeline) and use "
                         "that directory as --base, or fine-tune the full UNet")
    if resume_dir is not None and not cfg.lora:
        unet = UNet2DConditionModel.from_pretrained(resume_dir / "unet")
    elif start.parent_kind == "unet":
        unet = UNet2DConditionModel.from_pretrained(Path(start.version_dir) / "unet")
    else:
        unet = UNet2DConditionModel.from_pretrained(start.pipeline_dir, subfolder="unet")
    parent_lora = Path(start.version_dir) / "lora" if start.parent_kind == "lora" else None
    if parent_lora is not None and not cfg.lora and resume_dir is None:
        unet.load_lora_adapter(str(parent_lora), prefix="unet", adapter_name="parent",
                               weight_name=LORA_WEIGHTS)
        unet.fuse_lora()
        unet.unload_lora()  # keeps the fused weights, drops the adapter
    if cfg.lora:
        adapter = resume_dir / "lora" if resume_dir is not None else parent_lora
        if adapter is not None:  # continue the same adapter, so the version stays base + one LoRA
            unet.load_lora_adapter(str(adapter), prefix="unet", adapter_name="default",
                                   weight_name=LORA_WEIGHTS)
        else:
            from peft import LoraConfig

            unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                        init_lora_weights="gaussian", target_modules=cfg.lora_targets))
    _mark_trainable(unet, cfg.lora)
    return unet


def save_weights(unet: UNet2DConditionModel, directory: Path, lora: bool) -> None:
    """The model-version layout: `unet/` or `lora/` under `directory`."""
    if lora:
        from diffusers.utils import convert_state_dict_to_diffusers
        from peft.utils import get_peft_model_state_dict

        layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet, adapter_name="default"))
        StableDiffusionPipeline.save_lora_weights(
            directory / "lora", unet_lora_layers=layers,
            unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
        )
    else:
        unet.save_pretrained(directory / "unet")


def export_version(checkpoint_dir: Path, out_dir: Path, manifest: ModelManifest) -> Path:
    """Copy a checkpoint's weights (their EMA if it has one) into a model version directory with
    its manifest, atomically (a reader never sees a half-written version)."""
    out_dir = Path(out_dir).resolve()
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    averaged = Path(checkpoint_dir) / EMA_DIR / manifest.kind
    source = averaged if averaged.exists() else Path(checkpoint_dir) / manifest.kind
    shutil.copytree(source, tmp / manifest.kind)
    write_manifest(tmp, manifest)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def version_pipeline(version_or_pipeline: str | Path) -> StableDiffusionPipeline:
    """The pipeline a model version generates with: its base pipeline with the version's UNet,
    or with its LoRA fused in. A pipeline directory loads as it is."""
    start = resolve_base(version_or_pipeline)
    pipe = StableDiffusionPipeline.from_pretrained(start.pipeline_dir, local_files_only=True)
    if start.parent_kind == "unet":
        pipe.unet = UNet2DConditionModel.from_pretrained(Path(start.version_dir) / "unet")
    elif start.parent_kind == "lora":
        pipe.load_lora_weights(str(Path(start.version_dir) / "lora"), weight_name=LORA_WEIGHTS)
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    return pipe


def materialize_pipeline(version_or_pipeline: str | Path, out_dir: str | Path) -> Path:
    """A complete pipeline directory for a model version (its UNet, or the base UNet with its LoRA
    merged in) that `StableDiffusionPipeline.from_pretrained(out_dir)` loads on its own."""
    out = Path(out_dir)
    version_pipeline(version_or_pipeline).save_pretrained(out)
    log.info("materialised %s into %s", version_or_pipeline, out)
    return out


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside a DDP wrapper (prepare_model wraps only when there are 2+ workers)."""
    return model.module if hasattr(model, "module") else model
