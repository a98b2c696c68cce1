"""Ray actors of the online loop: generation, reward scoring, the shared sample buffer, and the
round-level function that streams one into the next (DESIGN.md, architecture).

Names are imported lazily, so a process that only needs the buffer (an actor, the feedback
service) does not pay for torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "BufferFullError": "buffer", "SampleBuffer": "buffer", "SampleBufferActor": "buffer",
    "load_round": "buffer",
    "GenerationConfig": "generator", "Generator": "generator", "GeneratorActor": "generator",
    "sample_id": "generator",
    "ActorGroup": "restarts", "StaleVersionError": "restarts",
    "RolloutActors": "rollout", "RoundSummary": "rollout", "run_generation_round": "rollout",
    "start_actors": "rollout",
    "RewardScorer": "scorer", "RewardScorerActor": "scorer", "judge_reward": "scorer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
