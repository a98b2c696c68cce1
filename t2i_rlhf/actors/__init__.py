"""Ray actors of the online loop: generation, reward scoring, the shared sample buffer, and the
round-level function that streams one into the next (DESIGN.md, architecture)."""

from t2i_rlhf.actors.buffer import BufferFullError, SampleBuffer, SampleBufferActor, load_round
from t2i_rlhf.actors.generator import GenerationConfig, Generator, GeneratorActor, sample_id
from t2i_rlhf.actors.rollout import RolloutActors, RoundSummary, run_generation_round, start_actors
from t2i_rlhf.actors.scorer import RewardScorer, RewardScorerActor, judge_reward

__all__ = [
    "BufferFullError", "GenerationConfig", "Generator", "GeneratorActor", "RewardScorer",
    "RewardScorerActor", "RolloutActors", "RoundSummary", "SampleBuffer", "SampleBufferActor",
    "judge_reward", "load_round", "run_generation_round", "sample_id", "start_actors",
]
