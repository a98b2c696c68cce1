"""Generator: determinism by seed, the sample batch it returns, and weight updates (in-process;
the Ray path is covered in test_rollout.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from t2i_rlhf.actors.generator import GenerationConfig, Generator, sample_id
from t2i_rlhf.diffusion.latents import encode_images
from t2i_rlhf.model_version import ModelManifest, write_manifest
from t2i_rlhf.samples import SAMPLE_SCHEMA, decode_png, validate_batch

ITEMS = [("two circles", 11), ("a square in the sea", 12), ("a blue triangle", 13)]


@pytest.fixture(scope="module")
def generator(sd_model_dir: Path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in an actor; oversubscribed threads crawl on a busy machine
    yield Generator(sd_model_dir, GenerationConfig(steps=3, batch_size=2))
    torch.set_num_threads(threads)


def images(batch) -> list[np.ndarray]:
    return [decode_png(b) for b in batch.column("image").to_pylist()]


def latents(batch) -> np.ndarray:
    shape = batch.column("latent_shape")[0].as_py()
    return np.array(batch.column("latents").to_pylist(), np.float32).reshape(-1, *shape)


def save_version(root: Path, version: str, kind: str, save) -> Path:
    directory = root / version
    save(directory / kind)
    write_manifest(directory, ModelManifest(version=version, round=1, parent_version="base", steps=1,
                                            config_hash="test", kind=kind))
    return directory


def test_batch_follows_the_schema_and_names_its_lineage(generator: Generator) -> None:
    batch = generator.generate(4, ITEMS)
    validate_batch(batch)
    assert batch.schema.equals(SAMPLE_SCHEMA)
    rows = batch.to_pylist()
    assert [r["sample_id"] for r in rows] == [
        f"r4-s{s}-{hashlib.sha1(p.encode()).hexdigest()[:8]}" for p, s in ITEMS
    ] == [sample_id(4, s, p) for p, s in ITEMS]
    assert [r["category"] for r in rows] == ["count", "background", "colour"]
    assert {r["model_version"] for r in rows} == {"base"} and {r["round"] for r in rows} == {4}
    assert all(r["reward"] is None and r["label"] is None for r in rows)
    assert latents(batch).shape == (3, 4, 16, 16)
    assert all(im.shape == (32, 32, 3) and im.dtype == np.uint8 for im in images(batch))


def test_latents_are_the_encoding_of_the_stored_image(generator: Generator) -> None:
    """Fine-tuning learns from what was judged: the image, encoded as pre-training data is."""
    batch = generator.generate(0, ITEMS[:2])
    expected = encode_images(generator.pipe.vae, images(batch)).numpy()
    np.testing.assert_allclose(latents(batch), expected, atol=1e-5)


def test_same_seed_same_image_whatever_the_batch(generator: Generator) -> None:
    a = generator.generate(0, ITEMS)
    b = generator.generate(0, ITEMS)
    assert all(np.array_equal(x, y) for x, y in zip(images(a), images(b), strict=True))
    assert np.array_equal(latents(a), latents(b))
    # Alone instead of in a batch: per-sample noise, so the same sample up to batched round-off
    # (which can move a pixel by one level, and the latent of the image with it).
    alone = generator.generate(0, [ITEMS[1]])
    assert np.abs(images(alone)[0].astype(int) - images(a)[1]).max() <= 1
    np.testing.assert_allclose(latents(alone)[0], latents(a)[1], atol=2e-2)
    # Another seed is another image.
    other = generator.generate(0, [(ITEMS[1][0], 99)])
    assert np.abs(latents(other)[0] - latents(a)[1]).mean() > 0.05


def test_update_weights_swaps_unet_and_tags_samples(generator: Generator, sd_model_dir: Path,
                                                    tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    before = generator.generate(0, ITEMS[:1])
    unet = UNet2DConditionModel.from_pretrained(sd_model_dir / "unet")
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    v1 = save_version(tmp_path, "r0001", "unet", unet.save_pretrained)
    assert generator.update_weights("r0001", str(v1)) == "r0001"
    after = generator.generate(0, ITEMS[:1])
    assert generator.version() == "r0001" and after.column("model_version").to_pylist() == ["r0001"]
    assert not np.allclose(latents(after), latents(before), atol=1e-3)
    # The pipeline directory itself restores the base UNet: same seed, same image again.
    generator.update_weights("base", sd_model_dir)
    again = generator.generate(0, ITEMS[:1])
    assert again.column("model_version").to_pylist() == ["base"]
    np.testing.assert_array_equal(latents(again), latents(before))


def test_update_weights_loads_lora(generator: Generator, sd_model_dir: Path, tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict

    before = generator.generate(0, ITEMS[:1])
    unet = UNet2DConditionModel.from_pretrained(sd_model_dir / "unet")
    unet.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))  # random B: the LoRA changes outputs
    layers = get_peft_model_state_dict(unet)

    def save(d: Path) -> None:
        StableDiffusionPipeline.save_lora_weights(d, unet_lora_layers=layers)

    v2 = save_version(tmp_path, "r0002", "lora", save)
    generator.update_weights("r0002", v2)
    lora = generator.generate(0, ITEMS[:1])
    assert lora.column("model_version").to_pylist() == ["r0002"]
    assert not np.allclose(latents(lora), latents(before), atol=1e-3)
    generator.update_weights("base", generator.model_dir)  # unloads the LoRA
    np.testing.assert_allclose(latents(generator.generate(0, ITEMS[:1])), latents(before), atol=1e-5)


def test_sampling_override_applies_to_one_call_only(generator: Generator) -> None:
    """The loop evaluates with its own steps and guidance while the rollout samples differently."""
    configured = generator.generate(0, ITEMS[:2])
    same = generator.generate(0, ITEMS[:2], steps=generator.config.steps,
                              guidance_scale=generator.config.guidance_scale)
    assert np.array_equal(latents(configured), latents(same))
    unguided = generator.generate(0, ITEMS[:2], guidance_scale=1.0)
    more_steps = generator.generate(0, ITEMS[:2], steps=5)
    for other in (unguided, more_steps):
        assert np.abs(latents(other) - latents(configured)).mean() > 0.01
    assert np.array_equal(latents(generator.generate(0, ITEMS[:2])), latents(configured))  # config kept


def test_bad_input_is_a_clear_error(generator: Generator, sd_model_dir: Path, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    with pytest.raises(FileNotFoundError, match="model_index.json"):
        Generator(tmp_path / "no-such-model")
    with pytest.raises(ValueError, match="at least one"):
        generator.generate(0, [])
    with pytest.raises(ValueError, match="non-empty"):
        generator.generate(0, [("  ", 1)])
    with pytest.raises(ValueError, match="steps must be"):
        generator.generate(0, ITEMS, steps=0)
    with pytest.raises(ValueError, match="guidance_scale must be"):
        generator.generate(0, ITEMS, guidance_scale=-1.0)
    with pytest.raises(ValueError, match="extra"):
        GenerationConfig(stepz=3)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        generator.update_weights("r0009", tmp_path)
    config = dict(UNet2DConditionModel.load_config(sd_model_dir / "unet"))
    config["block_out_channels"] = [32, 64]
    small = UNet2DConditionModel.from_config(config)
    v3 = save_version(tmp_path, "r0003", "unet", small.save_pretrained)
    with pytest.raises(ValueError, match="do not match|does not match"):
        generator.update_weights("r0004", v3)  # wrong version tag for this directory
    with pytest.raises(ValueError, match="shape mismatch"):
        generator.update_weights("r0003", v3)
    assert generator.version() == "base"  # a failed update leaves the model as it was
