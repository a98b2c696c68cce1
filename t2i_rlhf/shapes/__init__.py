"""The shapes world: the project's embedded default (DESIGN.md)."""

from t2i_rlhf.shapes.judge import Verdict, judge
from t2i_rlhf.shapes.prompts import (
    Prompt,
    category_prompts,
    is_heldout,
    parse_prompt,
    perturb,
    sample_prompts,
)
from t2i_rlhf.shapes.render import render, render_attributes
from t2i_rlhf.shapes.vocab import CATEGORIES, COLOURS, COUNTS, SCENES, SHAPES

__all__ = [
    "CATEGORIES", "COLOURS", "COUNTS", "SCENES", "SHAPES", "Prompt", "Verdict", "category_prompts",
    "is_heldout", "judge", "parse_prompt", "perturb", "render", "render_attributes", "sample_prompts",
]
