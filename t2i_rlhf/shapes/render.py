"""Renderer: attributes + seed -> a 32x32 RGB image that follows DESIGN.md exactly."""

from __future__ import annotations

import numpy as np

from t2i_rlhf.shapes.prompts import Prompt
from t2i_rlhf.shapes.vocab import COLOURS, IMAGE_SIZE, SCENES, SHAPES

# Object bounding-box side in pixels, by how many objects share the image.
SIZE_RANGE = {1: (8, 12), 2: (7, 10), 3: (7, 9), 4: (6, 8)}
GAP = 2  # minimum free pixels between two objects' bounding boxes, and to the border (1)


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


def render_attributes(
    shape: str, n_objects: int, colour: str, scene: str, seed: int, size: int = IMAGE_SIZE
) -> np.ndarray:
    """Draw `n_objects` non-touching shapes of one colour on a flat scene colour."""
    if shape not in SHAPES or colour not in COLOURS or scene not in SCENES:
        raise ValueError(f"unknown attributes {(shape, colour, scene)}")
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = SCENES[scene]
    lo, hi = SIZE_RANGE[n_objects]
    boxes: list[tuple[int, int, int]] = []
    while len(boxes) < n_objects:
        boxes.clear()
        for _ in range(200):
            s = int(rng.integers(lo, hi + 1))
            y, x = (int(v) for v in rng.integers(1, size - s, size=2))
            if all(
                y + s + GAP <= by or by + bs + GAP <= y or x + s + GAP <= bx or bx + bs + GAP <= x
                for by, bx, bs in boxes
            ):
                boxes.append((y, x, s))
                if len(boxes) == n_objects:
                    break
        hi = max(lo, hi - 1)  # crowded: retry with smaller objects
    for y, x, s in boxes:
        img[y : y + s, x : x + s][shape_mask(shape, s)] = COLOURS[colour]
    return img


def fill_unnamed(prompt: Prompt, seed: int) -> tuple[str, str]:
    """A prompt without a colour or scene allows any: pick them from the seed."""
    rng = np.random.default_rng([seed, 7919])
    colour = prompt.colour or str(rng.choice(list(COLOURS)))
    scene = prompt.scene or str(rng.choice(list(SCENES)))
    return colour, scene


def render(prompt: Prompt, seed: int) -> np.ndarray:
    """An image that matches `prompt` (unnamed colour/scene chosen by the seed)."""
    colour, scene = fill_unnamed(prompt, seed)
    return render_attributes(prompt.shape, prompt.n_objects, colour, scene, seed)
