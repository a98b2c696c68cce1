"""The fixed vocabulary of the shapes world (DESIGN.md): other code, tests and tools rely on it."""

from __future__ import annotations

COUNTS: dict[str, int] = {"one": 1, "two": 2, "three": 3, "four": 4}
COUNT_WORDS: dict[int, str] = {v: k for k, v in COUNTS.items()}

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 25, 25),
    "green": (30, 200, 50),
    "blue": (30, 60, 230),
    "yellow": (240, 220, 30),
    "purple": (160, 50, 200),
    "white": (245, 245, 245),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}

SCENES: dict[str, tuple[int, int, int]] = {
    "sea": (20, 50, 110),
    "forest": (25, 80, 35),
    "desert": (190, 160, 100),
    "city": (100, 100, 100),
    "space": (10, 10, 20),
}

# The paper's four prompt categories.
CATEGORIES: tuple[str, ...] = ("count", "colour", "background", "combination")

IMAGE_SIZE = 32
