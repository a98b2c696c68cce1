"""Pre-training data, "LAION-like": rendered images with noisy, partial captions.

Caption policy (why the base model is imperfectly aligned, as SD is): each image's caption is
built from its true attributes, but
  - the count word appears in COUNT_P of captions, and is wrong in COUNT_WRONG_P of those;
    without it one object reads "a circle" and several a bare plural ("circles");
  - the colour appears in COLOUR_P of captions (wrong in COLOUR_WRONG_P of those);
  - the scene appears in SCENE_P of captions (wrong in SCENE_WRONG_P of those).
Counts, colours, shapes and scenes are drawn uniformly. Everything is a function of the seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from t2i_rlhf.samples import png_bytes
from t2i_rlhf.shapes.prompts import format_caption
from t2i_rlhf.shapes.render import LAYOUT, render_attributes
from t2i_rlhf.shapes.vocab import COLOURS, COUNT_WORDS, PLURALS, SCENES, SHAPES

_COUNT_OF = {word: n for n, word in COUNT_WORDS.items()}
_SHAPE_OF = {**{s: s for s in SHAPES}, **{plural: s for s, plural in PLURALS.items()}}


@dataclass(frozen=True)
class CaptionPolicy:
    count_p: float = 0.45
    count_wrong_p: float = 0.2
    colour_p: float = 0.8
    colour_wrong_p: float = 0.05
    scene_p: float = 0.7
    scene_wrong_p: float = 0.05
    layout: str = LAYOUT  # how the images place their objects (render.LAYOUTS)

    @property
    def key(self) -> str:
        """A short stable name of every field, for caches of data rendered with this policy."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:8]


log = logging.getLogger(__name__)

# Written beside a pre-trained pipeline's model_index.json: the captions its UNet learnt from, so
# that the paper's β term (which replays the base's pre-training data) renders the same kind of
# data, not a cleaner one whose count words could teach the count instead of the labels.
POLICY_FILE = "pretrain_captions.json"


def save_policy(policy: CaptionPolicy, model_dir: str | Path) -> Path:
    path = Path(model_dir) / POLICY_FILE
    path.write_text(json.dumps(asdict(policy), indent=2, sort_keys=True) + "\n")
    return path


def load_policy(model_dir: str | Path) -> CaptionPolicy:
    """The caption policy `model_dir` was pre-trained with; CaptionPolicy() if it records none
    (a model from elsewhere), said in the log. A malformed file is an error, not a default."""
    path = Path(model_dir) / POLICY_FILE
    if not path.is_file():
        log.warning("%s records no pre-training captions (%s): the β term's data uses the default "
                    "CaptionPolicy", model_dir, POLICY_FILE)
        return CaptionPolicy()
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    known = {f.name for f in fields(CaptionPolicy)}
    if not isinstance(values, dict) or set(values) - known:
        extra = sorted(set(values) - known) if isinstance(values, dict) else values
        raise ValueError(f"{path}: expected an object with keys among {sorted(known)}, got {extra!r}")
    return CaptionPolicy(**values)


PRETRAIN_SCHEMA = pa.schema(
    [
        ("image", pa.binary()),  # PNG bytes, 32x32 RGB
        ("caption", pa.string()),
        ("count", pa.int8()),
        ("colour", pa.string()),
        ("shape", pa.string()),
        ("scene", pa.string()),
        ("seed", pa.int64()),
    ]
)


def _other(rng: np.random.Generator, options: list, value):
    return options[(options.index(value) + int(rng.integers(1, len(options)))) % len(options)]


def make_example(seed: int, policy: CaptionPolicy = CaptionPolicy()) -> dict:
    """One pre-training example: the image, its true attributes and its noisy caption."""
    rng = np.random.default_rng([seed, 104729])
    n = int(rng.integers(1, 5))
    colour = str(rng.choice(list(COLOURS)))
    shape = str(rng.choice(list(SHAPES)))
    scene = str(rng.choice(list(SCENES)))
    image = render_attributes(shape, n, colour, scene, seed, layout=policy.layout)

    say_count = rng.random() < policy.count_p
    cap_n = n
    if say_count and rng.random() < policy.count_wrong_p:
        cap_n = _other(rng, list(COUNT_WORDS), n)
    cap_colour = None
    if rng.random() < policy.colour_p:
        cap_colour = _other(rng, list(COLOURS), colour) if rng.random() < policy.colour_wrong_p else colour
    cap_scene = None
    if rng.random() < policy.scene_p:
        cap_scene = _other(rng, list(SCENES), scene) if rng.random() < policy.scene_wrong_p else scene
    caption = format_caption(shape, cap_n, say_count, cap_colour, cap_scene)
    return {"image": image, "caption": caption, "count": n, "colour": colour, "shape": shape,
            "scene": scene, "seed": seed}


def hard_negative_caption(caption: str, rng: np.random.Generator) -> str:
    """`caption` contradicted in one thing it says: its count (or one-versus-several when it has
    no count word), its shape, or its colour or scene if it names them, chosen uniformly.

    These are NegCLIP's text-only hard negatives (Yuksekgonul et al. 2023): made from the caption's
    words alone, with no knowledge of the image, they make a contrastive model tell "three" from
    "two" instead of treating a caption as a bag of words."""
    words = caption.split()
    say_count = words[0] in _COUNT_OF
    i = int(say_count or words[0] == "a")
    colour = words[i] if words[i] in COLOURS else None
    i += colour is not None
    shape = _SHAPE_OF[words[i]]
    n = _COUNT_OF[words[0]] if say_count else (1 if words[i] == shape else 2)  # bare plural: several
    scene = words[-1] if words[-1] in SCENES else None
    edits = ["count", "shape"] + ["colour"] * (colour is not None) + ["scene"] * (scene is not None)
    edit = edits[int(rng.integers(len(edits)))]
    if edit == "count":
        n = _other(rng, list(COUNT_WORDS), n) if say_count else (2 if n == 1 else 1)
    elif edit == "shape":
        shape = _other(rng, list(SHAPES), shape)
    elif edit == "colour":
        colour = _other(rng, list(COLOURS), colour)
    else:
        scene = _other(rng, list(SCENES), scene)
    return format_caption(shape, n, say_count, colour, scene)


def write_pretrain_parquet(
    path: str | Path, n: int, first_seed: int = 0, policy: CaptionPolicy = CaptionPolicy(),
    rows_per_file: int = 20_000,
) -> list[Path]:
    """Write `n` examples as Parquet files under directory `path`; returns the files."""
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for start in range(0, n, rows_per_file):
        rows = [make_example(first_seed + i, policy) for i in range(start, min(n, start + rows_per_file))]
        table = pa.Table.from_pylist(
            [{**r, "image": png_bytes(r["image"])} for r in rows], schema=PRETRAIN_SCHEMA
        )
        f = out / f"part-{start // rows_per_file:05d}.parquet"
        pq.write_table(table, f)
        files.append(f)
    return files
