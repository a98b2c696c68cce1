"""docs/configuration.md is generated from the config models and must be kept in step with them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from t2i_rlhf.cli import main as cli_main
from t2i_rlhf.config_reference import COMMAND, leaves, render_reference, sections

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "configuration.md"

def test_committed_reference_is_up_to_date():
    assert DOC.exists(), f"{DOC.relative_to(REPO)} is missing; run `{COMMAND}` to generate it"
    assert DOC.read_text(encoding="utf-8") == render_reference(), (
        f"{DOC.relative_to(REPO)} is out of date with the config models; run `{COMMAND}` "
        "(from the repository root) and commit the result")


def test_every_leaf_field_has_a_description():
    missing = [leaf.key for leaf in leaves() if not (leaf.field.description or "").strip()]
    assert not missing, f"config keys without a description= in their Field(...): {missing}"


def test_every_section_field_has_a_description():
    missing = [s.key for s in sections() if s.key and not (s.field.description or "").strip()]
    assert not missing, f"config sections without a description=: {missing}"


def test_reference_lists_every_key_once():
    text = render_reference()
    keys = [leaf.key for leaf in leaves()]
    assert len(keys) == len(set(keys))
    for key in keys:
        assert text.count(f"| `{key}` |") == 1, key
    assert "| `rollout.generation.steps` | `int`, ≥ 1 | `20` |" in text
    assert "| `run.name` | `str`, matching `^[A-Za-z0-9_.-]+$` | required |" in text
    assert "| `labelling.url` | `str \\| None` | `null` |" in text
    assert '| `finetune.objective` | `"reward_weighted" \\| "negative_aware"` | `reward_weighted` |' in text
    assert "| `finetune.latent_cache` | `path` | `runs/cache/pretrain-latents` |" in text
    assert "### `labelling.simulate`" in text


def test_rendering_is_deterministic():
    assert render_reference() == render_reference()


def test_cli_writes_and_checks_the_reference(tmp_path, capsys):
    out = tmp_path / "docs" / "configuration.md"
    assert cli_main(["config", "reference", "--check", "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["config", "reference", "--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == render_reference()
    assert cli_main(["config", "reference", "--check", "--out", str(out)]) == 0
    out.write_text(out.read_text(encoding="utf-8") + "edited by hand\n", encoding="utf-8")
    assert cli_main(["config", "reference", "--check", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "out of date" in err and COMMAND in err


def test_cli_and_rendering_do_not_import_torch():
    code = ("import sys; from t2i_rlhf.cli import build_parser; build_parser(); "
            "from t2i_rlhf import config_reference; config_reference.render_reference(); "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0
