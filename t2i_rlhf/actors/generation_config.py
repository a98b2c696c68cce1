"""A generator's sampling and placement options: pydantic only, so configs and the CLI validate
them without importing torch, diffusers or Ray."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GenerationConfig(BaseModel):
    """Sampling and placement options of a generator (from the experiment config)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(20, ge=1, description="denoising steps")
    guidance_scale: float = Field(5.0, ge=0.0, description="classifier-free guidance; <=1 disables it")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM eta; other schedulers ignore it")
    height: int = Field(32, ge=8)
    width: int = Field(32, ge=8)
    batch_size: int = Field(8, ge=1, description="samples per pipeline call")
    num_cpus: float = Field(1.0, ge=0.0, description="Ray CPUs reserved per generator actor")
    num_gpus: float = Field(0.0, ge=0.0, description="Ray GPUs per actor; >0 runs the pipeline on CUDA")
    torch_threads: int = Field(1, ge=1, description="intra-op threads per actor")
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
