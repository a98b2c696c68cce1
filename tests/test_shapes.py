"""The shapes world: grammar, perturbations, renderer, judge, pre-training captions."""

from __future__ import annotations

import collections
import hashlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import ndimage

from t2i_rlhf.samples import decode_png
from t2i_rlhf.shapes import (
    CATEGORIES,
    COLOURS,
    SCENES,
    SHAPES,
    Prompt,
    category_prompts,
    is_heldout,
    judge,
    parse_prompt,
    perturb,
    render,
    sample_prompts,
)
from t2i_rlhf.shapes.captions import (
    POLICY_FILE,
    PRETRAIN_SCHEMA,
    CaptionPolicy,
    hard_negative_caption,
    load_policy,
    make_example,
    save_policy,
    write_pretrain_parquet,
)
from t2i_rlhf.shapes.render import ARRANGEMENTS, SLOT_JITTER, render_attributes
from t2i_rlhf.shapes.vocab import COUNTS

ROOT = Path(__file__).resolve().parents[1]
MODELS, CONFIGS = ROOT / "models", ROOT / "configs"


def test_grammar_examples_from_the_design():
    assert parse_prompt("two dogs".replace("dogs", "circles")) == Prompt("circle", count=2)
    assert Prompt("circle", colour="red").text == "a red circle"
    assert Prompt("circle", scene="forest").text == "a circle in the forest"
    assert Prompt("triangle", 2, "blue", "city").text == "two blue triangles in the city"
    assert Prompt("square", 3).text == "three squares"
    assert Prompt("circle", scene="space").text == "a circle in space"
    assert [Prompt("circle", 1).category, Prompt("circle", colour="red").category,
            Prompt("circle", scene="sea").category, Prompt("circle", 2, "red", "sea").category] == list(CATEGORIES)


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_prompt_parses_back(category):
    for p in category_prompts(category):
        assert parse_prompt(p.text) == p
        assert p.category == category


@pytest.mark.parametrize("bad", ["", "two", "a pink circle", "five squares", "a circle on the moon", "dogs"])
def test_unparseable_prompts_are_clear_errors(bad):
    with pytest.raises(ValueError, match="cannot parse prompt"):
        parse_prompt(bad)


def test_sampler_is_balanced_and_covers_every_category():
    prompts = sample_prompts(400, split="train", seed=3)
    counts = collections.Counter(p.category for p in prompts)
    assert set(counts) == set(CATEGORIES)
    assert all(v == 100 for v in counts.values())
    assert not any(is_heldout(p) for p in prompts)
    assert sample_prompts(50, seed=1) == sample_prompts(50, seed=1)


@pytest.mark.parametrize("category", CATEGORIES)
def test_heldout_split_is_fixed_disjoint_and_nonempty(category):
    train, held = set(category_prompts(category, "train")), set(category_prompts(category, "heldout"))
    assert train and held and not (train & held)
    assert train | held == set(category_prompts(category, "all"))
    assert all(is_heldout(p) for p in sample_prompts(40, split="heldout", seed=2))


@pytest.mark.parametrize("text,n", [("two circles", 7), ("a red circle", 9), ("a circle in the forest", 9),
                                    ("two blue triangles in the city", 15)])
def test_perturbations_are_distinct_edits_of_the_same_template(text, n):
    p = parse_prompt(text)
    out = perturb(p, n, seed=0)
    assert len(out) == n == len(set(out))
    assert p not in out
    assert all(q.template == p.template for q in out)
    changed = [sum(getattr(q, a) != getattr(p, a) for a in ("shape", "count", "colour", "scene")) for q in out]
    assert changed == sorted(changed) and changed[0] == 1  # single swaps first


def test_perturbation_asks_for_too_many_is_an_error():
    with pytest.raises(ValueError, match="perturbations"):
        perturb(parse_prompt("two circles"), 12)


def test_renderer_follows_the_vocabulary():
    for i, p in enumerate(sample_prompts(300, split="all", seed=5)):
        img = render(p, i)
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
        colours = {tuple(c) for c in img.reshape(-1, 3)}
        assert len(colours) == 2  # one scene colour and one object colour
        assert colours <= set(COLOURS.values()) | set(SCENES.values())
        if p.scene:
            assert tuple(img[0, 0]) in {SCENES[p.scene]} | set(COLOURS.values())
        obj = np.array([tuple(c) in set(COLOURS.values()) for c in img.reshape(-1, 3)]).reshape(32, 32)
        if p.colour:
            assert {tuple(c) for c in img[obj]} == {COLOURS[p.colour]}
        # objects never touch, even diagonally: 8-connected components == count
        assert ndimage.label(obj, structure=np.ones((3, 3)))[1] == p.n_objects
    assert (render(Prompt("square", 3), 11) == render(Prompt("square", 3), 11)).all()


def test_judge_is_right_on_renders():
    prompts = sample_prompts(2000, split="all", seed=11)
    good = [judge(render(p, 1000 + i), p).good for i, p in enumerate(prompts)]
    assert np.mean(good) >= 0.99


@pytest.mark.parametrize("truth,asked,reason", [
    (Prompt("circle", 3), Prompt("circle", 2), "count"),
    (Prompt("circle", 1), Prompt("circle", 4), "count"),
    (Prompt("square", colour="red"), Prompt("square", colour="blue"), "colour"),
    (Prompt("triangle", scene="sea"), Prompt("triangle", scene="desert"), "scene"),
    (Prompt("triangle", 2), Prompt("square", 2), "shape"),
    (Prompt("circle", 2), Prompt("square", 2), "shape"),
])
def test_judge_rejects_wrong_prompts_with_reasons(truth, asked, reason):
    for seed in range(20):
        v = judge(render(truth, seed), asked)
        assert not v.good
        assert any(r.startswith(reason) for r in v.reasons), v.reasons


def test_judge_finds_no_scene_in_noise():
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    v = judge(noise, "a red circle")
    assert not v.good and not v.clean


def test_caption_policy_rates():
    policy = CaptionPolicy()
    ex = [make_example(i, policy) for i in range(4000)]
    with_count = [e for e in ex if e["caption"].split()[0] in ("one", "two", "three", "four")]
    assert abs(len(with_count) / len(ex) - policy.count_p) < 0.03
    wrong = np.mean([parse_prompt(e["caption"]).count != e["count"] for e in with_count])
    assert abs(wrong - policy.count_wrong_p) < 0.04
    with_colour = np.mean([parse_prompt(e["caption"]).colour is not None for e in ex])
    assert abs(with_colour - policy.colour_p) < 0.03
    # every caption parses in the prompt grammar's words
    assert all(parse_prompt(e["caption"]).shape == e["shape"] for e in ex)


def test_hard_negative_captions_contradict_one_thing_the_caption_says():
    """Each negative is a caption of the grammar that changes exactly one attribute the caption
    names (one-versus-several where it has no count word) and never adds one."""
    rng = np.random.default_rng(0)
    edits = collections.Counter()
    for seed in range(400):
        caption = make_example(seed)["caption"]
        negative = hard_negative_caption(caption, rng)
        said, contradicted = parse_prompt(caption), parse_prompt(negative)
        changed = [a for a in ("count", "shape", "colour", "scene") if getattr(said, a) != getattr(contradicted, a)]
        if not changed:  # no count word: "a circle" <-> "circles"
            assert said.count is None and (caption.split()[0] == "a") != (negative.split()[0] == "a")
            changed = ["one-or-several"]
        assert len(changed) == 1, (caption, negative)
        assert changed[0] == "one-or-several" or getattr(said, changed[0]) is not None, (caption, negative)
        edits[changed[0]] += 1
    assert set(edits) == {"count", "one-or-several", "shape", "colour", "scene"}


def test_pretrain_parquet_roundtrip(tmp_path):
    files = write_pretrain_parquet(tmp_path / "pre", 50, first_seed=100, rows_per_file=20)
    assert len(files) == 3
    table = pq.read_table(tmp_path / "pre")
    assert table.schema.equals(PRETRAIN_SCHEMA) and table.num_rows == 50
    row = table.slice(7, 1).to_pylist()[0]
    ex = make_example(107)
    assert row["caption"] == ex["caption"] and row["seed"] == 107
    assert (decode_png(row["image"]) == ex["image"]).all()


def test_the_beta_terms_data_has_the_shipped_bases_caption_noise(tmp_path):
    """The paper's β term replays the base's pre-training data. The shipped base learnt from count
    words wrong in half the captions naming one; a run's β data must be as noisy, or its cleaner
    count words, not the labels, could teach the count."""
    from t2i_rlhf.config import load_config
    from t2i_rlhf.models.pretrain import PretrainConfig
    from t2i_rlhf.run import ensure_pretrain_data

    shipped = load_policy(MODELS / "shapes-sd")
    defaults = PretrainConfig()  # what `t2i-rlhf pretrain` records when it rebuilds the base
    assert (shipped.count_p, shipped.count_wrong_p, shipped.layout) == (
        defaults.unet_count_p, defaults.unet_count_wrong_p, defaults.unet_layout)
    cfg = load_config(CONFIGS / "shapes.yaml", {"pretrain_examples": 600, "model.base": str(MODELS / "shapes-sd"),
                                               "model.clip": str(MODELS / "shapes-clip")})
    table = pq.read_table(ensure_pretrain_data(cfg, tmp_path)).to_pylist()
    with_count = [r for r in table if r["caption"].split()[0] in COUNTS]
    wrong = np.mean([parse_prompt(r["caption"]).count != r["count"] for r in with_count])
    assert len(table) == 600 and abs(wrong - shipped.count_wrong_p) < 0.08, wrong


def test_caption_policy_file_roundtrips_and_rejects_what_it_does_not_know(tmp_path):
    policy = CaptionPolicy(count_p=0.3, count_wrong_p=0.15, layout="scatter")
    save_policy(policy, tmp_path)
    assert load_policy(tmp_path) == policy
    assert policy.key == CaptionPolicy(count_p=0.3, count_wrong_p=0.15, layout="scatter").key
    assert policy.key != CaptionPolicy(count_p=0.3, count_wrong_p=0.15, layout="scatter", colour_p=0.5).key
    assert load_policy(tmp_path / "elsewhere") == CaptionPolicy()  # a model from elsewhere: the default
    (tmp_path / POLICY_FILE).write_text('{"count_p": 0.3, "count_wrongp": 0.1}')
    with pytest.raises(ValueError, match="count_wrongp"):
        load_policy(tmp_path)
    (tmp_path / POLICY_FILE).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_policy(tmp_path)


def test_slots_place_each_count_in_its_arrangement():
    """The slots layout: every object sits within the jitter (plus rounding) of a slot of its
    count's arrangement, whatever the shape, so the count word has one spatial meaning."""
    for seed in range(60):
        for n in (1, 2, 3, 4):
            shape = SHAPES[seed % 3]
            img = render_attributes(shape, n, "red", "sea", seed, layout="slots")
            labels, found = ndimage.label((img == COLOURS["red"]).all(-1), structure=np.ones((3, 3)))
            assert found == n
            boxes = ndimage.find_objects(labels)
            centres = [np.array([(b.start + b.stop) / 2 for b in box]) for box in boxes]
            slots = ARRANGEMENTS[n]
            assert all(min(np.abs(c - np.array(slot) * 32).max() for slot in slots) <= SLOT_JITTER + 1
                       for c in centres), (seed, n, centres)


def test_scatter_layout_is_the_first_bases_data():
    """The shipped VAE and shapes-CLIP learnt from scattered objects; `pretrain` must still draw
    exactly those images for them (a digest of the renderer before slots existed)."""
    digest = hashlib.sha256()
    for seed in range(200):
        for n in (1, 2, 3, 4):
            digest.update(render_attributes("triangle", n, "blue", "desert", seed, layout="scatter").tobytes())
    assert digest.hexdigest()[:16] == "d8f49601aa68c3ae"
    example = make_example(7, CaptionPolicy(layout="scatter"))
    attributes = (example[k] for k in ("shape", "count", "colour", "scene"))
    assert (example["image"] == render_attributes(*attributes, 7, layout="scatter")).all()


def test_render_attributes_rejects_unknown_values():
    with pytest.raises(ValueError):
        render_attributes("hexagon", 1, "red", "sea", 0)
    with pytest.raises(ValueError):
        render_attributes("circle", 1, "red", "sea", 0, layout="grid")
    with pytest.raises(ValueError):
        render_attributes("circle", 5, "red", "sea", 0)
