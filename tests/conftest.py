"""Shared fixtures. One local Ray instance serves the whole test session (Ray start-up costs
seconds; a TorchTrainer run ~20 s more), so Ray-heavy tests stay few and share it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SD_MODEL = REPO / "models" / "shapes-sd"
CLIP_MODEL = REPO / "models" / "shapes-clip"


@pytest.fixture(scope="session")
def sd_model_dir() -> Path:
    """The shipped tiny Stable-Diffusion-format base model."""
    assert (SD_MODEL / "model_index.json").exists(), f"missing shipped model at {SD_MODEL}"
    return SD_MODEL


@pytest.fixture(scope="session")
def clip_model_dir() -> Path:
    """The shipped shapes-CLIP dual encoder (the reward model's frozen backbone)."""
    assert (CLIP_MODEL / "config.json").exists(), f"missing shipped model at {CLIP_MODEL}"
    return CLIP_MODEL


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray instance shared by every test that needs one. Logical CPUs exceed the two
    real cores so a few 1-CPU actors and a 2-worker Ray Train group fit side by side."""
    import ray

    ray.init(
        num_cpus=6, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}},
    )
    yield ray
    ray.shutdown()
