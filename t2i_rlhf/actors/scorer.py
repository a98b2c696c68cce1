"""The reward scorer: fills `reward` and `reward_model_version` of generated batches.

It wraps either any `score(images, prompts) -> float32 array` callable with a version string
(tests, the oracle judge, before a reward model exists) or a trained reward model directory,
loaded lazily with `t2i_rlhf.training.reward.model.load_reward_model` so that the import, and
the model's memory, are paid only where scoring runs. `update_reward_model` swaps models between
batches, so one long-lived actor serves every round.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray

from t2i_rlhf.actors.restarts import check_version
from t2i_rlhf.samples import SAMPLE_SCHEMA, decode_png, validate_batch
from t2i_rlhf.shapes import judge

log = logging.getLogger(__name__)

TIMELINE_LENGTH = 10_000  # recent calls kept for round summaries

ScoreFn = Callable[[list[np.ndarray], list[str]], np.ndarray]


def judge_reward(images: list[np.ndarray], prompts: list[str]) -> np.ndarray:
    """Oracle reward: 1.0 where the shapes judge says the image matches its prompt, else 0.0.
    An upper bound for a learned reward model, and a scorer that needs no training."""
    return np.array([float(judge(im, p).good) for im, p in zip(images, prompts, strict=True)], np.float32)


def as_sample_batch(batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
    """One RecordBatch with exactly SAMPLE_SCHEMA's columns, in order (extra columns dropped)."""
    validate_batch(batch)
    return pa.RecordBatch.from_arrays(
        [batch.column(f.name) if isinstance(batch, pa.RecordBatch) else batch.column(f.name).combine_chunks()
         for f in SAMPLE_SCHEMA],
        schema=SAMPLE_SCHEMA,
    )


def _device() -> str:
    """CUDA where Ray gave this actor a GPU (scorer_num_gpus > 0 on a cluster), else CPU."""
    in_actor = ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    return "cuda" if in_actor and ray.get_gpu_ids() else "cpu"


class RewardScorer:
    """Scores SAMPLE_SCHEMA batches with a callable or a reward-model directory."""

    def __init__(self, model: ScoreFn | str | Path, version: str | None = None) -> None:
        self._fn: ScoreFn | None = None
        self._model = None  # the RewardModel behind _fn, for a reward-model directory
        self._path: Path | None = None
        self._version: str | None = None
        self._timeline: deque[tuple[float, float, int]] = deque(maxlen=TIMELINE_LENGTH)
        self._set(model, version)

    def _set(self, model: ScoreFn | str | Path, version: str | None) -> None:
        if callable(model):
            if not version:
                raise ValueError("a scoring callable needs a version string")
            self._fn, self._model, self._path, self._version = model, None, None, version
            return
        path = Path(model)
        if not path.exists():
            raise FileNotFoundError(f"no reward model at {str(model)!r}")
        self._fn, self._model, self._path, self._version = None, None, path, version  # loaded on first use

    def _scorer(self) -> ScoreFn:
        if self._fn is None:
            from t2i_rlhf.training.reward.model import load_reward_model

            assert self._path is not None
            model = load_reward_model(self._path, device=_device())
            if self._version and model.version != self._version:
                log.warning("reward model at %s reports version %r, using %r as asked",
                            self._path, model.version, self._version)
            self._version = self._version or model.version
            self._fn, self._model = model.score, model
            log.info("reward model %s loaded from %s", self._version, self._path)
        return self._fn

    def version(self) -> str | None:
        """The version tag of the current reward model (None until a lazy model is loaded and
        no version was given)."""
        return self._version

    def timeline(self) -> list[tuple[float, float, int]]:
        """(start, end, n_samples) of every score_batch call."""
        return list(self._timeline)

    def update_reward_model(self, version: str, location: ScoreFn | str | Path) -> str:
        """Score later batches with the model at `location` (a directory or a callable)."""
        self._set(location, version)
        log.info("scorer now uses reward model %s", version)
        return version

    def score_batch(self, batch: pa.RecordBatch | pa.Table, expect_version: str | None = None) -> pa.RecordBatch:
        """The batch with `reward` and `reward_model_version` filled in. With `expect_version`, a
        scorer holding another reward model (Ray restarted it with its constructor's) raises
        StaleVersionError instead of scoring."""
        check_version("scorer", self._version, expect_version)
        start = time.time()
        batch = as_sample_batch(batch)
        n = batch.num_rows
        if n == 0:
            return batch
        score = self._scorer()
        images = [decode_png(b) for b in batch.column("image").to_pylist()]
        prompts = batch.column("prompt").to_pylist()
        rewards = np.asarray(score(images, prompts), dtype=np.float32).reshape(-1)
        if rewards.shape[0] != n:
            raise ValueError(f"reward model {self._version} gave {rewards.shape[0]} scores for {n} samples")
        if not np.all(np.isfinite(rewards)):
            raise ValueError(f"reward model {self._version} returned non-finite scores")
        names = SAMPLE_SCHEMA.names
        arrays = list(batch.columns)
        arrays[names.index("reward")] = pa.array(rewards, pa.float32())
        arrays[names.index("reward_model_version")] = pa.array([self._version] * n, pa.string())
        self._timeline.append((start, time.time(), n))
        return pa.RecordBatch.from_arrays(arrays, schema=SAMPLE_SCHEMA)

    def score_prompts(self, images: list[bytes], prompts: list[list[str]],
                      expect_version: str | None = None) -> list[list[float]]:
        """r(x_i, z) for each PNG image x_i and every prompt z of prompts[i] (other prompts than
        the one it was drawn for: hindsight relabelling). A reward-model directory embeds each
        image once; a callable is called on the pairs."""
        check_version("scorer", self._version, expect_version)
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} lists of prompts")
        decoded = [decode_png(b) for b in images]
        score = self._scorer()
        if self._model is not None:
            return [row.tolist() for row in self._model.score_each(decoded, prompts)]
        if not any(prompts):
            return [[] for _ in prompts]
        flat = score([im for im, row in zip(decoded, prompts, strict=True) for _ in row],
                     [z for row in prompts for z in row])
        ends = np.cumsum([len(row) for row in prompts])[:-1]
        return [part.tolist() for part in np.split(np.asarray(flat, np.float32).reshape(-1), ends)]


RewardScorerActor = ray.remote(RewardScorer)
