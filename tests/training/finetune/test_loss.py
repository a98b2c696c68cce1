"""The fine-tuning objective, config and data position, without Ray (fast)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from pydantic import ValidationError

from t2i_rlhf.samples import parquet_files
from t2i_rlhf.training.finetune.config import FinetuneConfig
from t2i_rlhf.training.finetune.data import micro_batches
from t2i_rlhf.training.finetune.loss import denoising_errors, finetune_loss
from t2i_rlhf.training.finetune.trainer import cpus_needed
from t2i_rlhf.training.finetune.worker import amp_dtype, drop_captions, sample_timesteps, steps_for


def test_loss_matches_hand_computed_value():
    model_err = torch.tensor([0.5, 2.0, 4.0])
    rewards = torch.tensor([1.0, 0.25, 0.0])
    pretrain_err = torch.tensor([1.0, 3.0])
    terms = finetune_loss(model_err, rewards, pretrain_err, beta=0.5)
    # (1·0.5 + 0.25·2 + 0·4) / 3 + 0.5 · (1 + 3) / 2
    assert terms.model.item() == pytest.approx(1.0 / 3)
    assert terms.pretrain.item() == pytest.approx(2.0)
    assert terms.total.item() == pytest.approx(1.0 / 3 + 1.0)


class ConstantUNet(torch.nn.Module):
    """Predicts a fixed ε̂ everywhere, so ‖ε − ε̂‖² can be computed by hand."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x, t, encoder_hidden_states=None, return_dict=False):
        return (torch.full_like(x, self.value),)


def test_denoising_error_is_the_per_example_mean_squared_error():
    sched = DDPMScheduler(num_train_timesteps=1000)
    noise = torch.stack([torch.full((4, 2, 2), 1.0), torch.full((4, 2, 2), -1.0)])
    err = denoising_errors(ConstantUNet(0.5), sched, torch.zeros(2, 4, 2, 2), torch.zeros(2, 3, 8), noise,
                           torch.tensor([10, 500]))
    assert err.tolist() == pytest.approx([0.25, 2.25])  # (1 − 0.5)², (−1 − 0.5)²


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
        attention_head_dim=2, norm_num_groups=8,
    )


def _grads(unet, x0, rewards, pre_x0, beta):
    sched = DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([x0, pre_x0]).requires_grad_(True)
    noise = torch.randn(x.shape, generator=g)
    t = torch.full((len(x),), 300)
    emb = torch.randn(len(x), 5, 16, generator=g)
    unet.zero_grad()
    err = denoising_errors(unet, sched, x, emb, noise, t)
    n = len(x0)
    finetune_loss(err[:n], rewards, err[n:], beta).total.backward()
    return x.grad, [p.grad.clone() for p in unet.parameters() if p.grad is not None]


def test_zero_reward_samples_contribute_no_gradient(tiny_unet):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 8, 8, generator=g)
    pre = torch.randn(1, 4, 8, 8, generator=g)
    rewards = torch.tensor([1.0, 0.0])
    x_grad, params = _grads(tiny_unet, x0, rewards, pre, beta=1.0)
    assert x_grad[1].abs().max() == 0  # nothing flows back to the r = 0 sample
    assert x_grad[0].abs().max() > 0
    # the r = 0 sample's content does not change the weight gradient at all
    other = x0.clone()
    other[1] = torch.randn(4, 8, 8, generator=g) * 3
    _, params_other = _grads(tiny_unet, other, rewards, pre, beta=1.0)
    for a, b in zip(params, params_other, strict=True):
        torch.testing.assert_close(a, b)


def test_beta_scales_the_pretraining_term(tiny_unet):
    err = torch.tensor([1.0, 2.0])
    r = torch.tensor([0.5, 1.0])
    pre = torch.tensor([4.0, 6.0])
    loss0, loss2 = (finetune_loss(err, r, pre, b).total.item() for b in (0.0, 2.0))
    assert loss0 == pytest.approx((0.5 + 2.0) / 2)
    assert loss2 - loss0 == pytest.approx(2.0 * 5.0)
    g = torch.Generator().manual_seed(2)
    x0, pre_x0 = torch.randn(1, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    x_grad0, _ = _grads(tiny_unet, x0, torch.ones(1), pre_x0, beta=0.0)
    x_grad1, _ = _grads(tiny_unet, x0, torch.ones(1), pre_x0, beta=1.0)
    assert x_grad0[1:].abs().max() == 0 and x_grad1[1:].abs().max() > 0


def test_config_batches_hash_and_strictness():
    cfg = FinetuneConfig(batch_size=16)
    assert (cfg.model_batch, cfg.pretrain_batch) == (8, 8)  # half of each batch from each source
    no_pre = FinetuneConfig(batch_size=16, beta=0.0)
    assert (no_pre.model_batch, no_pre.pretrain_batch, no_pre.uses_pretrain) == (16, 0, False)
    assert cfg.config_hash() == FinetuneConfig(batch_size=16).config_hash() != no_pre.config_hash()
    with pytest.raises(ValidationError, match="extra"):
        FinetuneConfig(betta=1.0)
    with pytest.raises(ValidationError, match="no room"):
        FinetuneConfig(batch_size=1, beta=1.0)
    assert amp_dtype("auto", torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    with pytest.raises(ValidationError, match="caption_dropout"):
        FinetuneConfig(caption_dropout=1.5)


def test_a_round_reserves_a_cpu_for_ray_data_beyond_the_workers():
    assert cpus_needed(FinetuneConfig(threads_per_worker=2)) == 3
    assert cpus_needed(FinetuneConfig(num_workers=2, threads_per_worker=1)) == 3
    assert cpus_needed(FinetuneConfig(use_gpu=True, resources_per_worker={"CPU": 4, "GPU": 1})) == 5


def test_caption_dropout_blanks_pretraining_captions_at_its_rate():
    captions = [f"caption {i}" for i in range(2000)]
    assert drop_captions(captions, 0.0, torch.Generator().manual_seed(0)) == captions
    dropped = drop_captions(captions, 0.1, torch.Generator().manual_seed(0))
    assert all(d in ("", c) for d, c in zip(dropped, captions, strict=True))
    assert 0.08 < dropped.count("") / len(captions) < 0.12
    assert dropped == drop_captions(captions, 0.1, torch.Generator().manual_seed(0))  # resumable
    assert set(drop_captions(captions, 1.0, torch.Generator().manual_seed(0))) == {""}  # unconditional β term


def test_timesteps_are_drawn_from_the_configured_share_of_the_schedule():
    full = sample_timesteps(4000, 1000, (0.0, 1.0), torch.Generator().manual_seed(3))
    # the default is the draw every run made before the option existed: resumes and seeds unchanged
    assert torch.equal(full, torch.randint(0, 1000, (4000,), generator=torch.Generator().manual_seed(3)))
    high = sample_timesteps(4000, 1000, (0.5, 1.0), torch.Generator().manual_seed(3))
    assert int(high.min()) == 500 and int(high.max()) == 999
    assert 700 < float(high.float().mean()) < 800
    assert set(sample_timesteps(50, 1000, (0.3, 0.3001), torch.Generator()).tolist()) == {300}
    with pytest.raises(ValidationError, match="timestep_range"):
        FinetuneConfig(timestep_range=(0.6, 0.4))
    with pytest.raises(ValidationError, match="timestep_range"):
        FinetuneConfig(timestep_range=(0.0, 1.5))


class FakeShard:
    """iter_batches over `rows` integers, in order (no shuffling), like a dataset shard."""

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def iter_batches(self, batch_size, drop_last=False, **_):
        stop = self.rows - self.rows % batch_size if drop_last else self.rows
        for i in range(0, stop, batch_size):
            yield {"x": list(range(i, min(i + batch_size, stop)))}


def _take(stream, n):
    return [(epoch, batch["x"][0]) for epoch, batch in (next(stream) for _ in range(n))]


def test_data_position_is_a_function_of_the_step():
    # 10 rows, batches of 3: 3 batches an epoch (the last row is dropped)
    fresh = _take(micro_batches(FakeShard(10), 3, 10, start=0, seed=0), 7)
    assert fresh == [(0, 0), (0, 3), (0, 6), (1, 0), (1, 3), (1, 6), (2, 0)]
    # resuming at an epoch boundary starts the next epoch: neither zero batches nor a repeat
    assert _take(micro_batches(FakeShard(10), 3, 10, start=3, seed=0), 4) == fresh[3:7]
    assert _take(micro_batches(FakeShard(10), 3, 10, start=5, seed=0), 2) == fresh[5:7]
    assert _take(micro_batches(FakeShard(10), 3, 10, start=5, seed=0, skip=False), 1) == [(1, 0)]
    with pytest.raises(ValueError, match="fewer than one micro-batch"):
        next(micro_batches(FakeShard(2), 3, 2, start=0, seed=0))
    assert steps_for(FinetuneConfig(batch_size=4, epochs=2, grad_accum=2), 9) == 4  # 4 batches/epoch
    assert steps_for(FinetuneConfig(max_steps=7), 9) == 7


def test_in_memory_shard_walks_like_the_stream_and_resumes_exactly():
    streamed = _take(micro_batches(FakeShard(10), 3, 10, start=0, seed=0), 7)
    assert _take(micro_batches(FakeShard(10), 3, 10, start=0, seed=0, in_memory=True), 7) == streamed

    def epochs(start, n):  # full micro-batches, shuffled in memory
        stream = micro_batches(FakeShard(12), 3, 12, start=start, seed=5, shuffle_buffer=1, in_memory=True)
        return [(e, list(b["x"])) for e, b in (next(stream) for _ in range(n))]

    fresh = epochs(0, 12)
    for e in range(3):  # each epoch a permutation of every row, and a different one
        assert sorted(x for epoch, b in fresh if epoch == e for x in b) == list(range(12))
    assert [b for _, b in fresh[:4]] != [b for _, b in fresh[4:8]]
    assert epochs(4, 8) == fresh[4:]  # a resume at an epoch boundary: next epoch, no repeat
    assert epochs(6, 2) == fresh[6:8]  # mid-epoch: the same permutation, skipping what was done


def test_cli_flags_override_the_yaml_config(tmp_path):
    import argparse

    from t2i_rlhf.commands import finetune

    parser = argparse.ArgumentParser()
    finetune.register(parser.add_subparsers())
    (tmp_path / "exp.yaml").write_text("finetune:\n  beta: 0.3\n  lora: true\n  batch_size: 8\n")
    args = parser.parse_args(["finetune", "--samples", "s.parquet", "--base", "m", "--out", "o", "--round", "2",
                              "--config", str(tmp_path / "exp.yaml"), "--batch-size", "4", "--no-lora"])
    cfg = finetune.config_from_args(args)
    assert (cfg.beta, cfg.lora, cfg.batch_size, cfg.reward_source) == (0.3, False, 4, "reward")
    (tmp_path / "bad.yaml").write_text("finetune:\n  betta: 1\n")
    args.config = tmp_path / "bad.yaml"
    with pytest.raises(ValidationError, match="betta"):
        finetune.config_from_args(args)


def test_pretrain_latent_cache_is_keyed_by_content_not_path(tmp_path):
    from t2i_rlhf.shapes.captions import write_pretrain_parquet
    from t2i_rlhf.training.finetune.data import _fingerprint

    vae = tmp_path / "vae"
    vae.mkdir()
    (vae / "config.json").write_text("{}")
    a = parquet_files(write_pretrain_parquet(tmp_path / "a", 8, first_seed=3))
    b = parquet_files(write_pretrain_parquet(tmp_path / "b", 8, first_seed=3))  # a run re-renders it
    c = parquet_files(write_pretrain_parquet(tmp_path / "c", 8, first_seed=4))
    key = _fingerprint(a, vae)
    assert key == _fingerprint(b, vae) != _fingerprint(c, vae)
    (vae / "config.json").write_text('{"scaling_factor": 1}')  # another VAE: encode again
    assert _fingerprint(a, vae) != key
