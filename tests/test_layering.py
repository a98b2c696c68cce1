"""The import layering of t2i_rlhf (docs/architecture.md, "Layering"), checked from the source.

Every module of the package belongs to one component of LAYERS (the longest prefix that names it),
and may import only from its own component or from a component of a lower layer; components of
one layer are independent of each other. A production module may import nothing named for testing.
Imports are read with `ast`, at module level and inside functions alike (a lazy import is still a
dependency), so this needs no imports of the package and runs in a fraction of a second.
Dynamic imports (importlib with a computed name, Ray's string hooks) are not seen.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "t2i_rlhf"

# Lowest first. A component is a module or package path under t2i_rlhf.
LAYERS: tuple[tuple[str, ...], ...] = (
    # what every stage shares: the sample record, model versions, fingerprints, who sees which log
    # line, and the latent-diffusion codec and target
    ("samples", "model_version", "fingerprint", "logs", "diffusion"),
    # how an entry point gets Ray (its workers get the log settings); the shapes world: vocabulary,
    # prompts, renderer, oracle judge
    ("ray_runtime", "shapes"),
    # independent of each other: the feedback service (a leaf: no Ray, no torch, no training),
    # the reward model, and one fine-tuning round
    ("services", "training.reward", "training.finetune"),
    # generation, scoring and the sample buffer; the scorer loads the reward model
    ("actors",),
    # the experiment config (its sections are the actors' and training's own models) and evaluation
    ("config", "evaluation"),
    # the two jobs, the online loop and pre-training of the base models (so nothing the loop runs
    # can import pre-training code), and the generated config reference
    ("online", "models", "config_reference"),
    # the driver
    ("run",),
    # the t2i-rlhf CLI: one module per command group, then the console script
    ("commands",),
    ("cli",),
)
# Packages whose __init__ only documents their sub-packages: importable by any layer, they import
# nothing of t2i_rlhf themselves.
CONTAINERS = ("", "training")

TEST_NAMES = {"test", "tests", "testing", "conftest", "pytest", "unittest"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "actors.scorer"
    target: str  # the module it imports, dotted from the top, e.g. "t2i_rlhf.training.reward.model"
    line: int
    named: str  # the name as written, with what a `from` import takes: "numpy.testing"

    def where(self) -> str:
        base = PACKAGE.joinpath(*self.module.split(".")) if self.module else PACKAGE
        path = base / "__init__.py" if (base / "__init__.py").exists() else base.with_suffix(".py")
        return f"{path.relative_to(PACKAGE.parent)}:{self.line}"


def modules() -> dict[str, Path]:
    """Every module of the package by its dotted name under t2i_rlhf ("" is the package itself)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: set[str]) -> list[Import]:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(name, alias.name, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                source = ".".join(["t2i_rlhf", *base, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"  # `from pkg import module` imports that module
                inner = sub.removeprefix("t2i_rlhf.")
                target = sub if sub.startswith("t2i_rlhf.") and inner in known else source
                found.append(Import(name, target, node.lineno, sub))
    return found


def component(name: str) -> str | None:
    """The longest component of LAYERS that is `name` or contains it."""
    best = None
    for layer in LAYERS:
        for comp in layer:
            if (name == comp or name.startswith(comp + ".")) and (best is None or len(comp) > len(best)):
                best = comp
    return best


def layer_of(comp: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if comp in layer)


def named_for_testing(dotted: str) -> bool:
    return any(part in TEST_NAMES or part.startswith("test_") or part.endswith(("_test", "_tests", "_testing"))
               for part in dotted.split("."))


def problems() -> list[str]:
    mods = modules()
    known = set(mods)
    out = []
    for comp in (c for layer in LAYERS for c in layer):
        if not any(m == comp or m.startswith(comp + ".") for m in known):
            out.append(f"LAYERS names {comp!r}, which is no module of t2i_rlhf")
    for name, path in mods.items():
        if named_for_testing(name):
            out.append(f"t2i_rlhf/{path.relative_to(PACKAGE)} is named for testing: test code lives in tests/")
        own = component(name)
        if own is None and name not in CONTAINERS:
            out.append(f"t2i_rlhf/{path.relative_to(PACKAGE)} is in no layer: add its package to LAYERS")
            continue
        for imp in dict.fromkeys(imports(name, path, known)):  # one entry per (line, target)
            if named_for_testing(imp.named):
                out.append(f"{imp.where()}: {name or 't2i_rlhf'} imports {imp.named}, named for testing")
            if imp.target != "t2i_rlhf" and not imp.target.startswith("t2i_rlhf."):
                continue
            target = imp.target.removeprefix("t2i_rlhf").removeprefix(".")
            if target in CONTAINERS:
                continue
            if own is None:  # a container's __init__
                out.append(f"{imp.where()}: the package {name or 't2i_rlhf'} imports {imp.target}")
                continue
            theirs = component(target)
            if theirs is None or theirs == own:
                continue
            if layer_of(theirs) >= layer_of(own):
                kind = "a peer" if layer_of(theirs) == layer_of(own) else "a higher layer"
                out.append(f"{imp.where()}: {name} ({own}, layer {layer_of(own)}) imports {imp.target} "
                           f"({theirs}, layer {layer_of(theirs)}): {kind}")
    return out


def test_every_import_goes_down_the_layers() -> None:
    found = problems()
    assert not found, "import layering broken:\n  " + "\n  ".join(found)


def test_the_check_sees_what_it_must() -> None:
    """The parser finds lazy and `from pkg import module` imports, and a component's layer is that
    of its longest prefix: the checks above would pass vacuously otherwise."""
    known = set(modules())
    scorer = {i.target for i in imports("actors.scorer", PACKAGE / "actors" / "scorer.py", known)}
    assert "t2i_rlhf.training.reward.model" in scorer  # imported inside a method
    assert component("training.reward.model") == "training.reward" and component("cli") == "cli"
    assert layer_of("shapes") < layer_of("actors") < layer_of("online") < layer_of("commands")
    assert named_for_testing("t2i_rlhf.services.testing") and named_for_testing("tests.services.helpers")
    assert named_for_testing("numpy.testing") and not named_for_testing("t2i_rlhf.services.local_server")
