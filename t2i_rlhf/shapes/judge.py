"""Oracle judge: reads an image's pixels and says whether it matches a prompt, with reasons.

It never sees how an image was made: background = the scene colour most pixels sit closest
to; objects = connected components of pixels closer to a palette colour than to the
background; an object's colour is its pixels' majority palette colour and its shape comes from
how much of its bounding box it fills (square ~1, circle ~0.79, triangle ~0.5) and whether it
narrows towards the top."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from t2i_rlhf.shapes.prompts import Prompt, parse_prompt
from t2i_rlhf.shapes.vocab import COLOURS, SCENES

_SCENE_NAMES = list(SCENES)
_SCENE_RGB = np.array(list(SCENES.values()), dtype=np.float32)
_COLOUR_NAMES = list(COLOURS)
_COLOUR_RGB = np.array(list(COLOURS.values()), dtype=np.float32)

SCENE_TOLERANCE = 45.0  # max RGB distance between the background and its scene colour
MIN_OBJECT_AREA = 6  # components smaller than this are specks, not objects
MAX_SPECK_AREA = 6  # more speck pixels than this in total makes an image unclean
CORE_DISTANCE = 60.0  # a pixel this close to a palette colour counts towards an object's colour


@dataclass
class DetectedObject:
    colour: str | None
    shape: str | None
    area: int
    fill: float


@dataclass
class Verdict:
    good: bool
    clean: bool
    scene: str | None
    objects: list[DetectedObject]
    reasons: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.objects)


def _classify_shape(mask: np.ndarray) -> tuple[str | None, float]:
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    box = mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    fill = float(mask.sum()) / float(h * w)
    if max(h, w) > 1.6 * min(h, w):
        return None, fill
    if fill >= 0.9:
        return "square", fill
    rows = box.sum(axis=1)
    third = max(1, h // 3)
    narrows_up = rows[:third].mean() < 0.6 * rows[-third:].mean()
    if narrows_up and fill < 0.75:
        return "triangle", fill
    if 0.66 <= fill < 0.9 and not narrows_up:
        return "circle", fill
    return None, fill


def analyse(image: np.ndarray) -> tuple[str | None, list[DetectedObject], int]:
    """(scene or None, objects found, speck pixels) for an HxWx3 uint8 image."""
    px = np.asarray(image, dtype=np.float32)[..., :3]
    flat = px.reshape(-1, 3)
    d_scene = np.linalg.norm(flat[:, None, :] - _SCENE_RGB[None], axis=-1)
    votes = np.bincount(d_scene.argmin(axis=1), minlength=len(_SCENE_NAMES))
    bg_idx = int(votes.argmax())
    bg_rgb = _SCENE_RGB[bg_idx]
    # Background pixels: closer to the scene colour than to any palette colour.
    d_bg = np.linalg.norm(flat - bg_rgb, axis=-1)
    d_pal = np.linalg.norm(flat[:, None, :] - _COLOUR_RGB[None], axis=-1)
    nearest_pal = d_pal.argmin(axis=1)
    fg = (d_pal.min(axis=1) < d_bg).reshape(image.shape[:2])
    bg_pixels = flat[~fg.reshape(-1)]
    scene = None
    if len(bg_pixels) and np.linalg.norm(np.median(bg_pixels, axis=0) - bg_rgb) <= SCENE_TOLERANCE:
        scene = _SCENE_NAMES[bg_idx]
    labels, n = ndimage.label(fg, structure=np.ones((3, 3)))
    objects: list[DetectedObject] = []
    specks = 0
    pal_img = nearest_pal.reshape(image.shape[:2])
    core_img = (d_pal.min(axis=1) <= CORE_DISTANCE).reshape(image.shape[:2])
    for i in range(1, n + 1):
        comp = labels == i
        area = int(comp.sum())
        if area < MIN_OBJECT_AREA:
            specks += area
            continue
        # Colour from the object's core pixels (near a palette colour): blurred edges blend
        # with the background and would otherwise vote for a neighbouring colour.
        core = comp & core_img
        colour = None
        if core.sum() >= 0.3 * area:
            colour_votes = np.bincount(pal_img[core], minlength=len(_COLOUR_NAMES))
            top = int(colour_votes.argmax())
            if colour_votes[top] >= 0.8 * core.sum():
                colour = _COLOUR_NAMES[top]
        shape, fill = _classify_shape(comp)
        objects.append(DetectedObject(colour=colour, shape=shape, area=area, fill=fill))
    return scene, objects, specks


def judge(image: np.ndarray, prompt: Prompt | str) -> Verdict:
    """Good iff the image shows exactly the prompt's count of objects, each of its shape (and
    colour, if named), on its scene (if named), with nothing unrecognisable."""
    if isinstance(prompt, str):
        prompt = parse_prompt(prompt)
    scene, objects, specks = analyse(image)
    reasons: list[str] = []
    clean = scene is not None and bool(objects) and specks <= MAX_SPECK_AREA
    clean = clean and all(o.colour is not None and o.shape is not None for o in objects)
    if scene is None:
        reasons.append("background is not a scene colour")
    if len(objects) != prompt.n_objects:
        reasons.append(f"count: found {len(objects)}, wanted {prompt.n_objects}")
    wrong_shapes = sorted({str(o.shape) for o in objects if o.shape != prompt.shape})
    if wrong_shapes:
        reasons.append(f"shape: found {', '.join(wrong_shapes)}, wanted {prompt.shape}")
    if prompt.colour is not None:
        wrong = sorted({str(o.colour) for o in objects if o.colour != prompt.colour})
        if wrong:
            reasons.append(f"colour: found {', '.join(wrong)}, wanted {prompt.colour}")
    elif any(o.colour is None for o in objects):
        reasons.append("colour: an object has no vocabulary colour")
    if prompt.scene is not None and scene != prompt.scene:
        reasons.append(f"scene: found {scene}, wanted {prompt.scene}")
    if specks > MAX_SPECK_AREA:
        reasons.append(f"{specks} pixels of specks")
    return Verdict(good=not reasons, clean=clean, scene=scene, objects=objects, reasons=reasons)
