"""Prompt grammar of the shapes world: the paper's four categories, a balanced sampler,
a fixed held-out split, and the perturbations used by the reward model's auxiliary loss."""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from functools import cache

from t2i_rlhf.shapes.vocab import CATEGORIES, COLOURS, COUNT_WORDS, COUNTS, PLURALS, SCENES, SHAPES


@dataclass(frozen=True, order=True)
class Prompt:
    """A prompt's attributes. A missing count means exactly one object; a missing colour or
    scene means any."""

    shape: str
    count: int | None = None
    colour: str | None = None
    scene: str | None = None

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.count is not None and self.count not in COUNT_WORDS:
            raise ValueError(f"count must be one of {sorted(COUNT_WORDS)}, got {self.count!r}")
        if self.colour is not None and self.colour not in COLOURS:
            raise ValueError(f"unknown colour {self.colour!r}; expected one of {list(COLOURS)}")
        if self.scene is not None and self.scene not in SCENES:
            raise ValueError(f"unknown scene {self.scene!r}; expected one of {list(SCENES)}")

    @property
    def n_objects(self) -> int:
        return 1 if self.count is None else self.count

    @property
    def template(self) -> tuple[bool, bool, bool]:
        """Which attributes the prompt names: (count, colour, scene)."""
        return (self.count is not None, self.colour is not None, self.scene is not None)

    @property
    def category(self) -> str:
        named = sum(self.template)
        if named >= 2:
            return "combination"
        if self.count is not None:
            return "count"
        if self.colour is not None:
            return "colour"
        if self.scene is not None:
            return "background"
        raise ValueError("a prompt names at least one of count, colour or scene")

    @property
    def text(self) -> str:
        return format_caption(self.shape, self.n_objects, self.count is not None, self.colour, self.scene)

    def __str__(self) -> str:
        return self.text


def scene_phrase(scene: str) -> str:
    return "in space" if scene == "space" else f"in the {scene}"


def format_caption(
    shape: str, n_objects: int, say_count: bool, colour: str | None, scene: str | None
) -> str:
    """Words for a set of attributes. Without a count word one object reads "a <shape>" and
    several read as a bare plural ("circles"), as captions in the wild do."""
    noun = shape if n_objects == 1 else PLURALS[shape]
    words = [COUNT_WORDS[n_objects]] if say_count else (["a"] if n_objects == 1 else [])
    if colour is not None:
        words.append(colour)
    words.append(noun)
    if scene is not None:
        words.append(scene_phrase(scene))
    return " ".join(words)


_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
_PROMPT_RE = re.compile(
    r"^(?:(?P<count>" + "|".join(COUNTS) + r")|(?P<a>a|an))?\s*"
    r"(?P<colour>" + "|".join(COLOURS) + r")?\s*"
    r"(?P<shape>" + "|".join(sorted(_SHAPE_WORDS, key=len, reverse=True)) + r")"
    r"(?:\s+in\s+(?:the\s+)?(?P<scene>" + "|".join(SCENES) + r"))?$"
)


def parse_prompt(text: str) -> Prompt:
    """Parse a prompt of the grammar back into attributes; a clear ValueError otherwise."""
    m = _PROMPT_RE.match(" ".join(text.lower().split()))
    if m is None:
        raise ValueError(
            f"cannot parse prompt {text!r}: expected e.g. 'two circles', 'a red circle', "
            "'a circle in the forest' or 'two blue triangles in the city'"
        )
    count = COUNTS[m["count"]] if m["count"] else None
    return Prompt(shape=_SHAPE_WORDS[m["shape"]], count=count, colour=m["colour"], scene=m["scene"])


# --- The four categories ---------------------------------------------------------------------

_TEMPLATES: dict[str, tuple[bool, bool, bool]] = {
    "count": (True, False, False),
    "colour": (False, True, False),
    "background": (False, False, True),
    "combination": (True, True, True),
}


def prompts_with_template(template: tuple[bool, bool, bool]) -> list[Prompt]:
    """Every prompt naming exactly the attributes in `template` (count, colour, scene)."""
    counts = list(COUNT_WORDS) if template[0] else [None]
    colours = list(COLOURS) if template[1] else [None]
    scenes = list(SCENES) if template[2] else [None]
    return [
        Prompt(shape=s, count=n, colour=c, scene=b)
        for s, n, c, b in itertools.product(SHAPES, counts, colours, scenes)
    ]


# --- Held-out split --------------------------------------------------------------------------
# A prompt is held out (never used to train the reward model or fine-tune) when it contains one
# of these attribute pairs; which pair is looked at depends on its category, so every category
# has unseen prompts to evaluate on.
HELDOUT_COUNT_SHAPE = {(2, "triangle"), (3, "circle"), (4, "square")}
HELDOUT_COLOUR_SHAPE = {
    ("red", "triangle"), ("green", "circle"), ("blue", "square"),
    ("yellow", "triangle"), ("purple", "circle"), ("white", "square"),
}
HELDOUT_SCENE_SHAPE = {
    ("sea", "square"), ("forest", "triangle"), ("desert", "circle"), ("city", "triangle"),
    ("space", "square"),
}
HELDOUT_SCENE_COUNT = {("sea", 3), ("forest", 2), ("desert", 4), ("city", 1), ("space", 2)}


def is_heldout(p: Prompt) -> bool:
    cat = p.category
    if cat == "count":
        return (p.count, p.shape) in HELDOUT_COUNT_SHAPE
    if cat == "colour":
        return (p.colour, p.shape) in HELDOUT_COLOUR_SHAPE
    if cat == "background":
        return (p.scene, p.shape) in HELDOUT_SCENE_SHAPE
    return (p.scene, p.count) in HELDOUT_SCENE_COUNT


SPLITS = ("train", "heldout", "all")


@cache
def category_prompts(category: str, split: str = "all") -> tuple[Prompt, ...]:
    """The prompts of one category in a split ('train', 'heldout' or 'all')."""
    if category not in _TEMPLATES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    prompts = prompts_with_template(_TEMPLATES[category])
    if split != "all":
        prompts = [p for p in prompts if is_heldout(p) == (split == "heldout")]
    return tuple(prompts)


def sample_prompts(
    n: int,
    split: str = "train",
    seed: int = 0,
    categories: tuple[str, ...] = CATEGORIES,
    weights: tuple[float, ...] | None = None,
) -> list[Prompt]:
    """A category-balanced sample: categories in equal shares (or by `weights`), then prompts
    uniformly within the category."""
    if n < 0:
        raise ValueError("n must be >= 0")
    if weights is not None and len(weights) != len(categories):
        raise ValueError("weights must have one entry per category")
    rng = random.Random(seed)
    if weights is None:
        # Exactly balanced: cycle the categories, then shuffle.
        cats = [categories[i % len(categories)] for i in range(n)]
        rng.shuffle(cats)
    else:
        cats = rng.choices(categories, weights=weights, k=n)
    return [rng.choice(category_prompts(c, split)) for c in cats]


def perturb(prompt: Prompt, n: int, seed: int = 0) -> list[Prompt]:
    """`n` distinct prompts that differ from `prompt` by swapping its count, colour, shape or
    scene (the attributes it names). Single swaps come first, in random order, then double
    swaps, and so on; never the original, never a repeat."""
    rng = random.Random(seed)
    others = [p for p in prompts_with_template(prompt.template) if p != prompt]
    if n > len(others):
        raise ValueError(f"{prompt.text!r} has only {len(others)} perturbations, {n} were asked for")

    def n_changed(p: Prompt) -> int:
        return sum(getattr(p, a) != getattr(prompt, a) for a in ("shape", "count", "colour", "scene"))

    rng.shuffle(others)
    others.sort(key=n_changed)
    return others[:n]
