"""A fine-tuning round on a local Ray Train group of 2 CPU workers: checkpoints, a worker failure,
a re-run that resumes at an epoch boundary, export, and the result loading back into a pipeline
that generates. Kept to two TorchTrainer runs: each costs ~20 s of start-up (minutes when busy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from t2i_rlhf.evaluation import load_pipeline
from t2i_rlhf.model_version import read_manifest
from t2i_rlhf.samples import SAMPLE_SCHEMA, png_bytes
from t2i_rlhf.shapes.captions import write_pretrain_parquet
from t2i_rlhf.shapes.prompts import sample_prompts
from t2i_rlhf.training.finetune.config import FinetuneConfig
from t2i_rlhf.training.finetune.model import export_version, load_unet, materialize_pipeline, resolve_base
from t2i_rlhf.training.finetune.model import save_weights as save_unet_weights
from t2i_rlhf.training.finetune.trainer import CLOCK_KEYS


def write_samples(path: Path, n: int, seed: int = 0, seeds_per_prompt: int = 1) -> Path:
    """n scored samples in SAMPLE_SCHEMA with random latents (model quality is irrelevant here),
    `seeds_per_prompt` of them per prompt."""
    rng = np.random.default_rng(seed)
    prompts = [p for p in sample_prompts(n // seeds_per_prompt, seed=seed) for _ in range(seeds_per_prompt)]
    rows = [{
        "sample_id": f"s{i}", "round": 1, "prompt": p.text, "category": p.category, "seed": i,
        "model_version": "base", "image": png_bytes(np.zeros((32, 32, 3), np.uint8)),
        "latents": rng.standard_normal(4 * 16 * 16).astype(np.float32).tolist(), "latent_shape": [4, 16, 16],
        "reward": float(rng.random()), "reward_model_version": "rm0",
        "label": None if i % 2 else 1.0, "n_labels": 0 if i % 2 else 1,
    } for i, p in enumerate(prompts)]
    pq.write_table(pa.Table.from_pylist(rows, schema=SAMPLE_SCHEMA), path)
    return path


def _generate(pipe_dir: Path) -> np.ndarray:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(pipe_dir, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe("two red circles", num_inference_steps=2, guidance_scale=2.0, output_type="np",
                generator=torch.Generator().manual_seed(0)).images


def test_full_unet_version_exports_and_materialises(tmp_path, sd_model_dir):
    """Without Ray: a full-UNet checkpoint becomes a version that loads as a whole pipeline."""
    start = resolve_base(sd_model_dir)
    unet = load_unet(start, FinetuneConfig())
    assert all(p.requires_grad for p in unet.parameters())
    save_unet_weights(unet, tmp_path / "ckpt", lora=False)
    from t2i_rlhf.model_version import ModelManifest

    export_version(tmp_path / "ckpt", tmp_path / "v", ModelManifest(
        "r0001", 1, "base", 1, "h", kind="unet", base_model=start.pipeline_dir))
    images = _generate(materialize_pipeline(tmp_path / "v", tmp_path / "pipe"))
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
    assert resolve_base(tmp_path / "v").parent_kind == "unet"
    # `t2i-rlhf eval --model <version>` loads the version itself, as the merged pipeline generates
    direct = load_pipeline(tmp_path / "v")
    again = direct("two red circles", num_inference_steps=2, guidance_scale=2.0, output_type="np",
                   generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_allclose(again, images, atol=1e-5)


def test_ema_is_exported_and_resumes_with_the_trained_weights(tmp_path, sd_model_dir):
    """Without Ray: with ema_decay the checkpoint keeps the trained weights (to resume from) and
    their average under ema/ (what the version exports); the EMA state survives a resume."""
    from safetensors.torch import load_file

    from t2i_rlhf.model_version import ModelManifest
    from t2i_rlhf.training.finetune.worker import Finetuner

    cfg = FinetuneConfig(ema_decay=0.5, lr=1e-3, beta=0.0, batch_size=2)
    start = resolve_base(sd_model_dir)
    tuner = Finetuner(cfg, start, torch.device("cpu"))
    batch = _model_batch([1.0, 0.5])
    for step in range(3):
        tuner.step(step, [(batch, None)], rank=0)
    tuner.write_checkpoint_weights(tmp_path / "ckpt")
    state = tuner.state_dict(3)
    name = "unet/diffusion_pytorch_model.safetensors"
    base, raw, ema = (load_file(d / name) for d in (Path(sd_model_dir), tmp_path / "ckpt", tmp_path / "ckpt/ema"))
    key = "conv_in.weight"
    assert not torch.equal(raw[key], ema[key]) and not torch.equal(ema[key], base[key])
    assert (ema[key] - base[key]).norm() < (raw[key] - base[key]).norm()  # the average lags behind

    resumed = Finetuner(cfg, start, torch.device("cpu"), resume_dir=tmp_path / "ckpt")
    assert resumed.load_state_dict(state) == 3
    assert torch.equal(dict(resumed.unet.named_parameters())[key].detach(), raw[key])
    assert all(torch.equal(a, b) for a, b in zip(resumed.ema.shadow_params, tuner.ema.shadow_params, strict=True))
    export_version(tmp_path / "ckpt", tmp_path / "v", ModelManifest(
        "r0001", 1, "base", 3, "h", kind="unet", base_model=start.pipeline_dir))
    assert torch.equal(load_file(tmp_path / "v" / name)[key], ema[key])


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(1800)  # two TorchTrainer start-ups; minutes each when the machine is busy
def test_round_checkpoints_restarts_resumes_and_loads(ray_session, sd_model_dir, tmp_path):
    from t2i_rlhf.training.finetune.trainer import finetune_round

    samples = write_samples(tmp_path / "samples.parquet", 8, seeds_per_prompt=4)
    pretrain = tmp_path / "pretrain"
    write_pretrain_parquet(pretrain, 16, first_seed=123)
    storage = tmp_path / "ray"
    # 2 workers × 4 samples each, 2 model + 2 pre-training examples a micro-batch: 2 steps an
    # epoch, 2 epochs -> 4 steps, checkpoints at 2 and 4. A worker dies at step 3 and there are no
    # restarts left, so the fit fails; re-running the round resumes from the checkpoint at step 2,
    # an epoch boundary — the place where resumes train zero steps or count steps twice. The
    # negative-aware objective with per-prompt rewards runs here (its old policy must stay the
    # parent across the resume); the loop's tests run the paper's objective through Ray Train.
    cfg = FinetuneConfig(num_workers=2, batch_size=4, epochs=2, checkpoint_every=2, log_every=1, lora=True,
                         lora_rank=4, lora_lr=1e-3, latent_cache=tmp_path / "cache", max_failures=0,
                         objective="negative_aware", reward_normalization="prompt")
    kwargs = dict(samples=samples, pretrain_data=pretrain, base=sd_model_dir, round=1, storage_path=storage)
    with pytest.raises(Exception):  # noqa: B017 - Ray's TrainingFailedError; its text varies by version
        finetune_round(cfg, out_dir=tmp_path / "r0001", fail_at_step=3, **kwargs)
    assert (storage / "finetune-r0001" / ".injected_failure").read_text() == "3"
    assert [json.loads(p.read_text())["step"] for p in storage.rglob("progress.json")] == [2]
    assert not (tmp_path / "r0001").exists()
    assert any((tmp_path / "cache").rglob("*.parquet"))  # pre-training latents cached once

    manifest = finetune_round(cfg, out_dir=tmp_path / "r0001", fail_at_step=3, **kwargs)
    assert (manifest.version, manifest.round, manifest.parent_version, manifest.kind) == ("r0001", 1, "base", "lora")
    assert manifest.steps == 4 and manifest.config_hash == cfg.config_hash()
    assert read_manifest(tmp_path / "r0001") == manifest
    # the resumed run's clock: where its wall time went outside its 2 steps
    clock = manifest.metrics
    assert all(clock[k] >= 0 for k in CLOCK_KEYS) and 0 < clock["steps_s"] < clock["fit_s"]
    assert clock["model_load_s"] > 0 and clock["worker_start_s"] > 0
    assert (tmp_path / "r0001" / "lora" / "pytorch_lora_weights.safetensors").exists()
    progress = {int(json.loads(p.read_text())["step"]): p for p in storage.rglob("progress.json")}
    assert set(progress) == {2, 4}
    last = json.loads(progress[4].read_text())
    # resumed at step 2: trained steps 3 and 4, in epoch 1 — not 0 steps, not 4
    assert (last["steps_this_run"], last["epoch"], last["epochs_done"]) == (2, 1, 2.0)
    assert np.isfinite(last["loss"]) and last["pretrain_loss"] > 0 and 0 < last["reward_mean"] < 1
    with pytest.raises(ValueError, match="different job"):
        finetune_round(cfg.model_copy(update={"beta": 0.5}), out_dir=tmp_path / "x", **kwargs)

    # The version merges into a full pipeline that from_pretrained loads and that generates.
    images = _generate(materialize_pipeline(tmp_path / "r0001", tmp_path / "merged"))
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_fixed_cost_line_accounts_for_the_whole_fit():
    """What the clocks saw plus 'other Ray Train' is the fit's wall time outside its steps."""
    from t2i_rlhf.training.finetune.trainer import fixed_cost_line

    line = fixed_cost_line({"fit_s": 100.0, "steps_s": 60.0, "worker_start_s": 10.0, "model_load_s": 2.0,
                            "first_batch_s": 8.0, "checkpoint_s": 5.0, "export_s": 1.0})
    assert line.startswith("60.0 s of steps, 41.0 s outside them (")
    assert "other Ray Train 15.0 s" in line and "export 1.0 s" in line


def test_ema_averages_with_its_decay_from_the_first_step(sd_model_dir):
    """The exported average must damp the optimizer's noise from step one: after one step it is
    decay·parent + (1 − decay)·trained (diffusers' default would ramp the decay up from 0.1)."""
    from t2i_rlhf.training.finetune.worker import Finetuner

    cfg = FinetuneConfig(ema_decay=0.9, lr=1e-3, beta=0.0, batch_size=2)
    tuner = Finetuner(cfg, resolve_base(sd_model_dir), torch.device("cpu"))
    parent = [p.detach().clone() for p in tuner.params]
    batch = _model_batch([1.0, 1.0])
    tuner.step(0, [(batch, None)], rank=0)
    moved = 0
    for p0, p1, avg in zip(parent, tuner.params, tuner.ema.shadow_params, strict=True):
        torch.testing.assert_close(avg, 0.9 * p0 + 0.1 * p1.detach())
        moved += int(not torch.equal(p0, p1.detach()))
    assert moved > 0


def _model_batch(rewards: list[float]) -> dict:
    """A micro-batch of model samples as a worker's shard yields it: random latents, two prompts."""
    latents = np.random.default_rng(0).standard_normal((len(rewards), 4 * 16 * 16)).astype(np.float32)
    return {"latents": list(latents), "latent_shape": [[4, 16, 16]] * len(rewards),
            "prompt": ["two red circles", "a blue square"][: len(rewards)], "reward": rewards}
