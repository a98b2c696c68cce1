"""docs/configuration.md, rendered from the experiment config's pydantic models.

Every key's meaning is its field's `description=`; this module only walks `ExperimentConfig`
(nested models become sections with dotted keys) and writes one Markdown table per section. The
output depends on nothing but the models, so `t2i-rlhf config reference --check` and
tests/test_config_reference.py can tell when the committed file is out of date.

pydantic, PyYAML and the config modules only: no torch.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

COMMAND = "t2i-rlhf config reference"
DEFAULT_OUT = Path("docs/configuration.md")

_NONE = type(None)


@dataclass(frozen=True)
class Leaf:
    """A config key that holds a value (not a section)."""

    key: str  # dotted, from the top of the experiment config
    field: FieldInfo


@dataclass(frozen=True)
class Section:
    """A nested model: its keys and sub-sections are written under their own heading."""

    key: str  # dotted; "" for the top level
    model: type[BaseModel]
    field: FieldInfo | None  # the field that holds the section (None for the top level)
    leaves: tuple[Leaf, ...]


def section_model(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, if it holds one (`Model` or `Model | None`), else None."""
    if get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not _NONE]
        annotation = args[0] if len(args) == 1 else None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def sections(model: type[BaseModel] | None = None, prefix: str = "",
             field: FieldInfo | None = None) -> Iterator[Section]:
    """Depth-first, in field order: a section, then its sub-sections."""
    if model is None:
        from t2i_rlhf.config import ExperimentConfig

        model = ExperimentConfig
    leaves, nested = [], []
    for name, f in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        sub = section_model(f.annotation)
        if sub is None:
            leaves.append(Leaf(key, f))
        else:
            nested.append((sub, key, f))
    yield Section(prefix, model, field, tuple(leaves))
    for sub, key, f in nested:
        yield from sections(sub, key, f)


def leaves() -> list[Leaf]:
    """Every key of the experiment config that holds a value, in the reference's order."""
    return [leaf for section in sections() for leaf in section.leaves]


# --- rendering -----------------------------------------------------------------------------------

def yaml_value(value: Any) -> str:
    """A value as it would be written in the YAML config (flow style: `[a, b]`, `{k: 1}`, `null`)."""
    text = yaml.safe_dump(to_jsonable_python(value), default_flow_style=True, allow_unicode=True,
                          sort_keys=False, width=1 << 30).strip()
    return text[: -len("...")].strip() if text.endswith("\n...") else text


def type_text(annotation: Any) -> str:
    """`int`, `str | None`, `dict[str, float]`, `"a" | "b"` (a choice lists its values)."""
    if annotation is _NONE:
        return "None"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return type_text(args[0])
    if origin is Literal:
        return " | ".join(json.dumps(a, ensure_ascii=False) for a in args)
    if origin in (Union, types.UnionType):
        ordered = [a for a in args if a is not _NONE] + [a for a in args if a is _NONE]
        return " | ".join(type_text(a) for a in ordered)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_text(a) for a in args)}]" if args else name
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "path"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation)


def _number(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def constraints_text(field: FieldInfo) -> str:
    """The field's bounds and pattern: `≥ 1`, `0 ≤ x < 1`, matching `^…$`."""
    lo = hi = None
    parts = []
    for item in field.metadata:
        for attr, op in (("ge", "≥"), ("gt", ">")):
            if getattr(item, attr, None) is not None:
                lo = (op, getattr(item, attr))
        for attr, op in (("le", "≤"), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                hi = (op, getattr(item, attr))
        if getattr(item, "pattern", None) is not None:
            parts.append(f"matching `{item.pattern}`")
        for attr, word in (("min_length", "length ≥"), ("max_length", "length ≤"), ("multiple_of", "multiple of")):
            if getattr(item, attr, None) is not None:
                parts.append(f"{word} {_number(getattr(item, attr))}")
    if lo and hi:
        flip = {"≥": "≤", ">": "<"}
        bound = f"{_number(lo[1])} {flip[lo[0]]} x {hi[0]} {_number(hi[1])}"
    elif lo or hi:
        op, x = lo or hi
        bound = f"{op} {_number(x)}"
    else:
        bound = ""
    return ", ".join([bound, *parts] if bound else parts)


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    return f"`{yaml_value(field.get_default(call_default_factory=True))}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _row(leaf: Leaf) -> str:
    kind = f"`{type_text(leaf.field.annotation)}`"
    bounds = constraints_text(leaf.field)
    cells = [f"`{leaf.key}`", f"{kind}, {bounds}" if bounds else kind, default_text(leaf.field),
             leaf.field.description or "—"]
    return "| " + " | ".join(_cell(c) for c in cells) + " |"


def _section_note(section: Section) -> str:
    """What the section is, whether it must be given, and the model that defines it."""
    f = section.field
    parts = [f.description.strip()] if f is not None and f.description else []
    if f is not None:
        if f.is_required():
            parts.append("Required section.")
        else:
            default = f.get_default(call_default_factory=True)
            if default is None:
                no_required = not any(x.is_required() for x in section.model.model_fields.values())
                parts.append("Default: `null` (off); give the section"
                             + (" (`{}` for the defaults below)" if no_required else "") + " to turn it on.")
            elif isinstance(default, BaseModel) and _differs_from_class_defaults(default):
                parts.append(f"Default when the section is left out: `{yaml_value(default)}`.")
    m = section.model
    parts.append(f"Model: `{m.__module__}.{m.__qualname__}`.")
    return " ".join(parts)


def _differs_from_class_defaults(instance: BaseModel) -> bool:
    try:
        plain = type(instance)()
    except Exception:  # the model has required fields: the instance's values are the defaults
        return True
    return plain.model_dump(mode="json") != instance.model_dump(mode="json")


_HEADER = """\
# Configuration reference

<!-- Generated by `t2i-rlhf config reference`; do not edit by hand. -->

This file is generated by `t2i-rlhf config reference` from the experiment config's pydantic models
(`t2i_rlhf.config.ExperimentConfig` and the models it embeds); do not edit it by hand. A key's meaning
is the `description=` of its field: change it there and regenerate. `t2i-rlhf config reference --check`
(and tests/test_config_reference.py) fails while this file is out of date.

An experiment config is one YAML file (configs/*.yaml), **validated on load**: unknown keys, wrong
types, out-of-range values and missing required keys are errors, reported with the key, before anything
starts. **Any key can be overridden** on the command line with
`t2i-rlhf run --config <file> --set key=value` (repeatable; the key dotted as in the tables below, the
value read as YAML), e.g. `--set rollout.generation.steps=10 --set labelling.simulate.noise=0`.

The `reward` and `finetune` sections also configure the standalone commands:
`t2i-rlhf finetune --config` reads a `finetune:` section, and `t2i-rlhf reward train` takes most of
the `reward` keys as flags.

In the tables, **default** is the value a key takes when it is left out, written as YAML reads it
(`null` is none); *required* keys have no default. **type** lists a choice's allowed values (quoted),
writes a key that may be `null` as `X | None`, and gives its bounds and pattern after it.
"""


def render_reference() -> str:
    """The whole of docs/configuration.md."""
    out = [_HEADER]
    for section in sections():
        depth = section.key.count(".") + 1 if section.key else 1
        title = f"`{section.key}`" if section.key else "Top-level keys"
        out.append(f"{'#' * (depth + 1)} {title}\n")
        note = _section_note(section) if section.key else (
            "Keys at the top of the file; each section below is a mapping under its key.")
        out.append(note + "\n")
        if section.leaves:
            out.append("| key | type | default | meaning |\n| --- | --- | --- | --- |\n"
                       + "\n".join(_row(leaf) for leaf in section.leaves) + "\n")
    return "\n".join(out)


def check_reference(path: str | Path = DEFAULT_OUT) -> str | None:
    """None when the file at `path` is what `render_reference()` writes, else why it is not."""
    path = Path(path)
    if not path.exists():
        return f"{path} does not exist; run `{COMMAND} --out {path}` to generate it"
    if path.read_text(encoding="utf-8") != render_reference():
        return (f"{path} is out of date with the config models; run `{COMMAND} --out {path}` to "
                "regenerate it and commit the result")
    return None


def write_reference(path: str | Path = DEFAULT_OUT) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_reference(), encoding="utf-8")
    return path
