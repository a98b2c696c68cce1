"""The simulated labellers' rate in the experiment config: off by default (the configs that ship
are unchanged), and bad values are errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from t2i_rlhf.config import load_config

REPO = Path(__file__).resolve().parents[1]
CI_CONFIG = REPO / "configs" / "shapes-ci.yaml"


def test_the_rate_is_off_unless_asked() -> None:
    sim = load_config(CI_CONFIG).labelling.simulate
    assert sim is not None and sim.labels_per_s is None and sim.rate_spread == 0.5
    sim = load_config(CI_CONFIG, overrides={"labelling.simulate.labels_per_s": 0.25,
                                            "labelling.simulate.rate_spread": 0}).labelling.simulate
    assert sim.labels_per_s == 0.25 and sim.rate_spread == 0


@pytest.mark.parametrize("key,value,message", [
    ("labels_per_s", -0.5, "labelling.simulate.labels_per_s: Input should be greater than or equal to 0"),
    ("labels_per_s", ".inf", "labelling.simulate.labels_per_s: Input should be a finite number"),
    ("labels_per_s", "fast", "labelling.simulate.labels_per_s: Input should be a valid number"),
    ("rate_spread", -1, "labelling.simulate.rate_spread: Input should be greater than or equal to 0"),
    ("rate_spread", 50, "labelling.simulate.rate_spread: Input should be less than or equal to 5"),
    ("labels_per_sec", 1, "labelling.simulate.labels_per_sec: Extra inputs are not permitted"),
])
def test_bad_rates_are_clear_errors(key: str, value: object, message: str) -> None:
    import yaml

    with pytest.raises(ValueError, match=message):
        load_config(CI_CONFIG, overrides={f"labelling.simulate.{key}": yaml.safe_load(str(value))})
