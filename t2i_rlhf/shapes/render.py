"""Renderer: attributes + seed -> a 32x32 RGB image that follows DESIGN.md exactly.

Two layouts place the objects:
  - "scatter": anywhere, uniformly, without touching. The shipped VAE and shapes-CLIP learnt from
    it (a superset of the slots), as did the base before the slots;
  - "slots": n objects sit in the one arrangement of n slots (one: the centre; two: side by side;
    three: a triangle, apex up; four: a 2x2 grid), each slot jittered by a few pixels, sizes drawn
    at random and larger than scattered ones. The world's layout (LAYOUT): renders, evaluation's
    references and fine-tuning data follow it, and `t2i-rlhf pretrain` trains the UNet on it.

Why slots: with scattered objects, perfect data taught the tiny UNets this project can train on
two cores to count pair by pair, never the count word: "three squares" improved, "three circles"
did not. A count that fixes the arrangement gives the count word one spatial meaning shared by
every shape, as "two dogs" is shared by every breed. Fine-tuning on perfect data of training
prompts (the ceiling, docs/results.md) took held-out count from 26% to 29% with scattered
objects, from 21% to 34% with two arrangements per count and small objects, and from 33% to 73%
with these slots. Real photographs do not come in slots; SD learns that sharing from scale,
which a 2-core miniature does not have.
"""

from __future__ import annotations

import numpy as np

from t2i_rlhf.shapes.prompts import Prompt
from t2i_rlhf.shapes.vocab import COLOURS, IMAGE_SIZE, SCENES, SHAPES

# Scattered objects' bounding-box side in pixels, by how many share the image (slots: SLOT_SIZE_RANGE).
SIZE_RANGE = {1: (8, 12), 2: (7, 10), 3: (7, 9), 4: (6, 8)}
GAP = 2  # minimum free pixels between two objects' bounding boxes, and to the border (1)

LAYOUTS = ("slots", "scatter")
LAYOUT = "slots"  # the world's: what render() draws, for evaluation and fine-tuning data
_LO, _MID, _HI = 0.25, 0.5, 0.75
# One arrangement per count, as slot centres in (row, column) fractions of the image side: the
# count word then names one layout for every shape. Two arrangements for a count (a pair side by
# side or stacked; a triangle apex up or down) were blended by the model into the union of their
# slots, three drawn as four (docs/experiments.md, 2026-12-02, late).
ARRANGEMENTS: dict[int, tuple[tuple[float, float], ...]] = {
    1: ((_MID, _MID),),
    2: ((_MID, _LO), (_MID, _HI)),
    3: ((_LO, _MID), (_HI, _LO), (_HI, _HI)),
    4: ((_LO, _LO), (_LO, _HI), (_HI, _LO), (_HI, _HI)),
}
# Slots leave room for larger objects than scattering does: at 6-8 px a square whose corners the
# model softens by a pixel fills < 0.9 of its box and is judged a circle.
SLOT_SIZE_RANGE = {1: (11, 14), 2: (10, 12), 3: (9, 11), 4: (8, 10)}
SLOT_JITTER = 2  # pixels a slot's centre may move either way, along each axis


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean size x size mask of a circle, a square, or an upward-pointing triangle."""
    centre = size / 2.0
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        return (xx - centre) ** 2 + (yy - centre) ** 2 <= centre**2
    if shape == "triangle":
        half_width = yy / size * centre  # apex at the top, base at the bottom
        return np.abs(xx - centre) <= half_width + 0.25
    raise ValueError(f"unknown shape {shape!r}")


def _apart(boxes: list[tuple[int, int, int]], y: int, x: int, s: int) -> bool:
    return all(
        y + s + GAP <= by or by + bs + GAP <= y or x + s + GAP <= bx or bx + bs + GAP <= x
        for by, bx, bs in boxes
    )


def _scatter_boxes(n_objects: int, size: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    lo, hi = SIZE_RANGE[n_objects]
    boxes: list[tuple[int, int, int]] = []
    while len(boxes) < n_objects:
        boxes.clear()
        for _ in range(200):
            s = int(rng.integers(lo, hi + 1))
            y, x = (int(v) for v in rng.integers(1, size - s, size=2))
            if _apart(boxes, y, x, s):
                boxes.append((y, x, s))
                if len(boxes) == n_objects:
                    break
        hi = max(lo, hi - 1)  # crowded: retry with smaller objects
    return boxes


def _slot_boxes(n_objects: int, size: int, rng: np.random.Generator) -> list[tuple[int, int, int]]:
    lo, hi = SLOT_SIZE_RANGE[n_objects]
    slots = ARRANGEMENTS[n_objects]
    jitter = SLOT_JITTER
    while True:
        boxes: list[tuple[int, int, int]] = []
        for fy, fx in slots:
            s = int(rng.integers(lo, hi + 1))
            dy, dx = (int(v) for v in rng.integers(-jitter, jitter + 1, size=2))
            y = min(max(round(fy * size - s / 2) + dy, 1), size - 1 - s)
            x = min(max(round(fx * size - s / 2) + dx, 1), size - 1 - s)
            if not _apart(boxes, y, x, s):
                break
            boxes.append((y, x, s))
        if len(boxes) == n_objects:
            return boxes
        jitter = max(0, jitter - 1)  # too close: retry nearer the slot centres


def render_attributes(
    shape: str, n_objects: int, colour: str, scene: str, seed: int, size: int = IMAGE_SIZE,
    layout: str = LAYOUT,
) -> np.ndarray:
    """Draw `n_objects` non-touching shapes of one colour on a flat scene colour."""
    if shape not in SHAPES or colour not in COLOURS or scene not in SCENES or layout not in LAYOUTS:
        raise ValueError(f"unknown attributes {(shape, colour, scene, layout)}")
    if n_objects not in SIZE_RANGE:
        raise ValueError(f"n_objects must be 1-4, got {n_objects}")
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = SCENES[scene]
    place = _slot_boxes if layout == "slots" else _scatter_boxes
    for y, x, s in place(n_objects, size, rng):
        img[y : y + s, x : x + s][shape_mask(shape, s)] = COLOURS[colour]
    return img


def fill_unnamed(prompt: Prompt, seed: int) -> tuple[str, str]:
    """A prompt without a colour or scene allows any: pick them from the seed."""
    rng = np.random.default_rng([seed, 7919])
    colour = prompt.colour or str(rng.choice(list(COLOURS)))
    scene = prompt.scene or str(rng.choice(list(SCENES)))
    return colour, scene


def render(prompt: Prompt, seed: int, layout: str = LAYOUT) -> np.ndarray:
    """An image that matches `prompt` (unnamed colour/scene chosen by the seed)."""
    colour, scene = fill_unnamed(prompt, seed)
    return render_attributes(prompt.shape, prompt.n_objects, colour, scene, seed, layout=layout)
