"""Data for fine-tuning: the two Ray Data sources and how a worker walks through its shard.

- Model samples: the round's scored samples (SAMPLE_SCHEMA). Their `latents` are already the
  scaled x0 latents, so no VAE is needed; rows without the chosen r (`reward` or `label`) are
  dropped, and r is normalised within each prompt or weighted by its category's rate if asked (rewards.py).
- Pre-training examples: PNG images + captions (write_pretrain_parquet). The frozen VAE encodes
  them ONCE, with Ray Data, into a latent cache keyed by the input files and the VAE weights; every
  later round and every epoch reads the cache. Encoding on the workers instead would redo the same
  VAE forward each step for a frozen result.

Both sources are walked as endless streams of fixed-size micro-batches whose position is a function
of the persisted global step, which is what makes a resume neither repeat nor skip steps.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import torch

from t2i_rlhf.fingerprint import files_fingerprint
from t2i_rlhf.samples import parquet_files
from t2i_rlhf.training.finetune.rewards import RewardTransform, normalize_reward_column

log = logging.getLogger(__name__)

MODEL_COLUMNS = ["latents", "latent_shape", "prompt"]
PRETRAIN_COLUMNS = ["latents", "latent_shape", "caption"]


def count_scored(files: list[Path], column: str) -> int:
    """Rows whose r column is set; read from the one column only."""
    table = pads.dataset([str(f) for f in files], format="parquet").to_table(columns=[column])
    return table.num_rows - table.column(column).null_count


def count_rows(files: list[Path]) -> int:
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def model_columns(column: str, normalization: RewardTransform | None) -> list[str]:
    """The columns a round's samples are read with: MODEL_COLUMNS, r, and what the transform
    reads besides (the labels, for `reward_source: agreement`)."""
    return [*MODEL_COLUMNS, column, *(normalization.columns if normalization else ())]


def model_samples_dataset(files: list[Path], column: str, normalization: RewardTransform | None = None,
                          small: bool = False):
    """The round's scored samples as a Ray Dataset: latents, latent_shape, prompt and r, with r
    replaced by its transformed value when `normalization` is given (rewards.py; its statistics
    are the driver's, over the whole round, so every block is transformed alike).

    small: the round fits in memory (a few thousand samples), so the driver reads, filters and
    transforms it itself and hands Ray Data the table: the same rows, without starting read and
    map tasks, which on a small node cost more than the whole pass (13-15 s for 2,048 rows)."""
    import ray.data
    from ray.data.expressions import col

    columns = model_columns(column, normalization)
    if small:
        table = pa.concat_tables(pq.read_table(f, columns=columns) for f in files)
        table = table.filter(pc.is_valid(table.column(column)))
        if normalization is not None:
            table = normalize_reward_column(table, column, normalization)
        return ray.data.from_arrow(table)
    ds = ray.data.read_parquet([str(f) for f in files], columns=columns)
    ds = ds.filter(expr=col(column).is_not_null())
    if normalization is not None:
        ds = ds.map_batches(normalize_reward_column, fn_kwargs={"column": column, "norm": normalization},
                            batch_format="pyarrow")
    return ds


def pretrain_dataset(files: list[Path]):
    import ray.data

    return ray.data.read_parquet([str(f) for f in files], columns=PRETRAIN_COLUMNS)


# --- the latent cache of the pre-training set ------------------------------------------------


def _fingerprint(files: list[Path], vae_dir: Path) -> str:
    """The input files' contents (not their paths: a run re-renders the same set) and the VAE's."""
    named = [(f"input{i}", f) for i, f in enumerate(files)]
    vae = [(f"vae/{f.name}", f) for f in sorted(vae_dir.iterdir()) if f.is_file()]
    return files_fingerprint([*named, *vae])[:16]


@functools.lru_cache(maxsize=1)
def _frozen_vae(vae_dir: str):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(vae_dir, local_files_only=True).eval()


def encode_batch(batch: pa.Table, vae_dir: str) -> pa.Table:
    """Ray Data task: PNG images -> scaled VAE latents (mode of the posterior, as the base model's
    pre-training used), flattened in SAMPLE_SCHEMA's layout. A task, not an actor: the VAE is
    small enough to load once per worker process (cached), and a task is retried where it failed
    without the actor-restart caveats of constructor arguments held in the object store."""
    from t2i_rlhf.diffusion.latents import encode_images  # no_grad inside
    from t2i_rlhf.samples import decode_png

    images = [decode_png(b) for b in batch.column("image").to_pylist()]
    lat = encode_images(_frozen_vae(vae_dir), images).float().numpy()
    shape = list(lat.shape[1:])
    return pa.table({
        "latents": pa.array(list(lat.reshape(len(lat), -1)), type=pa.list_(pa.float32())),
        "latent_shape": pa.array([shape] * len(lat), type=pa.list_(pa.int32())),
        "caption": batch.column("caption"),
    })


def pretrain_latent_files(pretrain_data: str | Path | list, pipeline_dir: Path, cache_root: Path,
                          batch_size: int = 256) -> list[Path]:
    """Parquet files of (latents, latent_shape, caption) for the pre-training set: the input
    itself if it already holds latents, else a cache filled once by Ray Data with the VAE."""
    import ray.data

    files = parquet_files(pretrain_data)
    if "latents" in pq.read_schema(files[0]).names:
        return files
    vae_dir = Path(pipeline_dir) / "vae"
    out = Path(cache_root).resolve() / _fingerprint(files, vae_dir)
    if (out / "_SUCCESS").exists():
        return parquet_files(out)
    log.info("encoding %d pre-training files with the frozen VAE into %s (once)", len(files), out)
    tmp = out.with_name(f"{out.name}.tmp-{uuid.uuid4().hex[:8]}")
    ds = ray.data.read_parquet([str(f) for f in files], columns=["image", "caption"])
    ds = ds.map_batches(encode_batch, fn_kwargs={"vae_dir": str(vae_dir)}, batch_size=batch_size,
                        batch_format="pyarrow", num_cpus=1)
    ds.write_parquet(str(tmp))
    (tmp / "_SUCCESS").write_text(json.dumps({"inputs": [str(f) for f in files], "vae": str(vae_dir)}))
    if out.exists():  # another process finished first; theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.rename(out)
    return parquet_files(out)


# --- what a worker does with its shard ---------------------------------------------------------


def batch_latents(batch: dict[str, np.ndarray]) -> torch.Tensor:
    """The flattened `latents` column of a numpy batch -> a (B, C, H, W) float tensor."""
    shape = [int(s) for s in batch["latent_shape"][0]]
    flat = np.stack([np.asarray(v, dtype=np.float32) for v in batch["latents"]])
    return torch.from_numpy(flat.reshape(len(flat), *shape))


def parquet_bytes(files: list[Path], columns: list[str]) -> int:
    """Uncompressed size of `columns` in `files`, from the Parquet footers (nothing is read)."""
    total = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                chunk = group.column(c)
                if chunk.path_in_schema.split(".")[0] in columns:
                    total += chunk.total_uncompressed_size
    return total


def load_shard(shard, chunk: int = 4096) -> dict[str, np.ndarray]:
    """A worker's whole shard as numpy columns (`latents` as one 2-D float32 array)."""
    parts: dict[str, list[np.ndarray]] = {}
    for batch in shard.iter_batches(batch_size=chunk, batch_format="numpy"):
        for name, values in batch.items():
            if name == "latents":
                values = np.stack([np.asarray(v, dtype=np.float32) for v in values])
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(v) for name, v in parts.items()}


def micro_batches(shard, batch_size: int, rows_per_worker: int, start: int, seed: int,
                  shuffle_buffer: int = 0, skip: bool = True,
                  in_memory: bool = False) -> Iterator[tuple[int, dict]]:
    """Endless (epoch, numpy batch) stream over a worker's shard, starting at micro-batch `start`
    (global step × grad_accum). Epoch e is shuffled with seed + e, so the stream is a function of
    the step: with `skip`, a resume replays the same epoch and skips what was already consumed;
    without it (the large pre-training set, a regulariser) it starts a fresh pass instead.

    in_memory: read the shard once and walk it from memory, every epoch a full permutation (a
    round's samples are small). Streaming it again each epoch re-runs the Ray Data pipeline,
    which on a small CPU node costs more than the training step it feeds. Otherwise each epoch
    streams with a local shuffle buffer of `shuffle_buffer` rows."""
    per_epoch = rows_per_worker // batch_size
    if per_epoch < 1:
        raise ValueError(f"a worker's shard has {rows_per_worker} rows, fewer than one micro-batch of "
                         f"{batch_size}; lower batch_size or num_workers, or add data")
    epoch, offset = divmod(start, per_epoch)
    if not skip:
        offset = 0
    rows = load_shard(shard) if in_memory else None
    n = len(next(iter(rows.values()))) if rows else 0
    while True:
        if rows is not None:
            order = np.random.default_rng(seed + epoch).permutation(n) if shuffle_buffer else np.arange(n)
            batches = ({k: v[order[i * batch_size:(i + 1) * batch_size]] for k, v in rows.items()}
                       for i in range(per_epoch))
        else:
            batches = shard.iter_batches(
                batch_size=batch_size, batch_format="numpy", drop_last=True,
                local_shuffle_buffer_size=shuffle_buffer or None,
                local_shuffle_seed=(seed + epoch) if shuffle_buffer else None,
            )
        for i, batch in enumerate(batches):
            if i >= offset:
                yield epoch, batch
        offset = 0
        epoch += 1
