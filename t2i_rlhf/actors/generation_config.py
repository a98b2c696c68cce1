"""A generator's sampling and placement options: pydantic only, so configs and the CLI validate
them without importing torch, diffusers or Ray."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GenerationConfig(BaseModel):
    """Sampling and placement options of a generator (from the experiment config)."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(20, ge=1, description="Denoising steps per image.")
    guidance_scale: float = Field(5.0, ge=0.0, description="Classifier-free guidance scale; 1 or less "
                                  "disables guidance.")
    eta: float = Field(0.0, ge=0.0, le=1.0, description="DDIM eta (0: deterministic); other schedulers "
                       "ignore it.")
    height: int = Field(32, ge=8, description="Image height in pixels.")
    width: int = Field(32, ge=8, description="Image width in pixels.")
    batch_size: int = Field(8, ge=1, description="Samples per pipeline call.")
    num_cpus: float = Field(1.0, ge=0.0, description="Ray CPUs reserved per generator actor.")
    num_gpus: float = Field(0.0, ge=0.0, description="Ray GPUs per generator actor; above 0 the pipeline "
                            "runs on CUDA.")
    torch_threads: int = Field(1, ge=1, description="Torch intra-op threads per generator actor.")
    dtype: Literal["float32", "float16", "bfloat16"] = Field("float32", description="Torch dtype the "
                                                             "pipeline is loaded and sampled in.")
