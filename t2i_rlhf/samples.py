"""The sample record: the one schema that generation, the buffer, labelling and training share.

Each sample carries its lineage (DESIGN.md): id, round, prompt, category, seed, the model
version that made it, the reward-model version that scored it, its reward and its labels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

SAMPLE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),  # unique across the run
        pa.field("round", pa.int32(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),  # count | colour | background | combination
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),  # PNG bytes
        pa.field("latents", pa.list_(pa.float32()), nullable=False),  # final x0 latents, flattened,
        pa.field("latent_shape", pa.list_(pa.int32()), nullable=False),  # pre-scaled (vae scaling)
        pa.field("reward", pa.float32()),  # null until scored
        pa.field("reward_model_version", pa.string()),  # null until scored
        pa.field("label", pa.float32()),  # mean of good=1 / bad=0 labels; null if none (skips excluded)
        pa.field("n_labels", pa.int32()),  # good+bad labels behind `label`
    ]
)


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 HxWx3 array -> PNG bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 HxWx3 array."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def validate_batch(batch: pa.RecordBatch | pa.Table) -> None:
    """Raise a clear ValueError if a batch does not follow SAMPLE_SCHEMA."""
    missing = [f.name for f in SAMPLE_SCHEMA if f.name not in batch.schema.names]
    if missing:
        raise ValueError(f"sample batch is missing columns {missing}; expected SAMPLE_SCHEMA")
    for f in SAMPLE_SCHEMA:
        got = batch.schema.field(f.name).type
        if got != f.type:
            raise ValueError(f"sample column {f.name!r} has type {got}, expected {f.type}")


def parquet_files(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """Parquet files named directly or found under directories (recursively), sorted and
    absolute; names starting with '_' or '.' (in-flight writes, markers) are skipped, as
    pyarrow's dataset reader skips them. A clear FileNotFoundError if there are none."""
    items = [paths] if isinstance(paths, str | Path) else list(paths)
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            files += sorted(f for f in item.rglob("*.parquet") if not f.name.startswith(("_", ".")))
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"no Parquet file or directory at {item}")
    if not files:
        raise FileNotFoundError(f"no .parquet files under {[str(p) for p in items]}")
    return [f.resolve() for f in files]
