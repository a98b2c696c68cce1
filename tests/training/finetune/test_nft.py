"""The negative-aware objective (DiffusionNFT), its reward normalisation and its frozen parent,
without Ray (fast: pure tensors, a tiny Parquet file, the shipped ~15 MB UNet on CPU)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from diffusers import DDPMScheduler
from pydantic import ValidationError
from safetensors.torch import load_file

from t2i_rlhf.training.finetune.config import FinetuneConfig
from t2i_rlhf.training.finetune.loss import (
    denoising_prediction,
    finetune_loss,
    negative_aware_finetune_loss,
    negative_aware_loss,
    squared_errors,
)
from t2i_rlhf.training.finetune.rewards import (
    check_unit_interval,
    fit_prompt_normalization,
    normalize_reward_column,
    read_prompt_normalization,
)

# --- the loss ------------------------------------------------------------------------------------


def test_negative_aware_loss_matches_hand_computed_value():
    pred = torch.tensor([[3.0, 2.0], [2.0, 0.0]])
    old = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    rewards = torch.tensor([1.0, 0.25])
    per_sample = negative_aware_loss(pred, old, target, rewards, strength=0.5)
    # 1: v⁺ = ½·[1, 0] + ½·[3, 2] = [2, 1], ‖v⁺ − v‖² = (4 + 1)/2 = 2.5, r = 1
    # 2: v⁺ = [1, 1] = v (0); v⁻ = 1.5·[0, 2] − ½·[2, 0] = [−1, 3], ((−2)² + 2²)/2 = 4; ¼·0 + ¾·4 = 3
    assert per_sample.tolist() == pytest.approx([2.5, 3.0])
    terms = negative_aware_finetune_loss(per_sample, torch.tensor([1.0, 3.0]), beta=0.5)
    assert terms.model.item() == pytest.approx(2.75)
    assert terms.pretrain.item() == pytest.approx(2.0)
    assert terms.total.item() == pytest.approx(2.75 + 0.5 * 2.0)
    # s = 1, r = 1: v⁺ is v_θ itself, so the loss is the plain denoising error
    plain = negative_aware_loss(pred, old, target, torch.ones(2), strength=1.0)
    torch.testing.assert_close(plain, squared_errors(pred, target))
    assert negative_aware_finetune_loss(per_sample, None, beta=1.0).pretrain.item() == 0.0


@pytest.mark.parametrize("strength", [0.5, 1.0, 2.0])
def test_at_the_parent_the_gradient_is_s_times_2r_minus_1_times_plain_finetuning(strength):
    g = torch.Generator().manual_seed(0)
    rewards = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    target = torch.randn(5, 3, 2, 2, generator=g)
    pred = torch.randn(5, 3, 2, 2, generator=g).requires_grad_(True)
    old = pred.detach().clone()  # v_θ = v_old
    negative_aware_loss(pred, old, target, rewards, strength).sum().backward()
    plain = pred.detach().clone().requires_grad_(True)
    squared_errors(plain, target).sum().backward()
    factor = (strength * (2 * rewards - 1)).view(-1, 1, 1, 1)
    torch.testing.assert_close(pred.grad, factor * plain.grad)
    assert pred.grad[2].abs().max() < 1e-6  # r = 1/2: no pull, no push (up to rounding of the mix)
    assert (pred.grad[0] * plain.grad[0]).sum() < 0  # r = 0: pushed away from the bad sample

    # through a tiny linear "network" and its frozen copy: the same identity on the weights
    torch.manual_seed(1)
    net = torch.nn.Linear(4, 4)
    frozen = copy.deepcopy(net).requires_grad_(False)
    x, v = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    negative_aware_finetune_loss(negative_aware_loss(net(x), frozen(x), v, rewards, strength), None, 0.0
                                 ).total.backward()
    nft = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    finetune_loss(squared_errors(net(x), v), strength * (2 * rewards - 1), None, 0.0).total.backward()
    for a, b in zip(nft, [p.grad for p in net.parameters()], strict=True):
        torch.testing.assert_close(a, b)


class LinearUNet(torch.nn.Module):
    """ε_θ(x_t) = w·x_t: enough to see that the parameterisation's target is used."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t, encoder_hidden_states=None, return_dict=False):
        return (self.w * x,)


def test_denoising_prediction_uses_the_scheduler_target_and_slices_exactly():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    t, emb = torch.tensor([10, 400, 900]), torch.zeros(3, 2, 8)
    for kind in ("epsilon", "v_prediction"):
        sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=kind)
        pred, target = denoising_prediction(LinearUNet(), sched, x0, emb, noise, t)
        expected = noise if kind == "epsilon" else sched.get_velocity(x0, noise, t)
        torch.testing.assert_close(target, expected)
        # the old policy's call on the model samples' slice sees the same x_t
        part, _ = denoising_prediction(LinearUNet(), sched, x0[:2], emb[:2], noise[:2], t[:2])
        assert torch.equal(part, pred[:2])


# --- the reward normalisation --------------------------------------------------------------------


def test_prompt_normalisation_centres_per_prompt_scales_globally_and_clips():
    prompts = ["a", "a", "b", "b"]
    rewards = np.array([0.0, 1.0, 0.5, 0.7])
    norm = fit_prompt_normalization(prompts, rewards, clip=1.0)
    assert norm.means == pytest.approx({"a": 0.5, "b": 0.6})
    # the global (population) std: mean 0.55, squared deviations .3025 .2025 .0025 .0225 -> .1325
    std = np.sqrt(0.1325)
    assert norm.std == pytest.approx(std)
    z = np.array([-0.5, 0.5, -0.1, 0.1]) / std  # per-prompt centred, in global stds: ±1.37, ±0.27
    np.testing.assert_allclose(norm.apply(prompts, rewards), [0.0, 1.0, 0.5 + 0.5 * z[2], 0.5 + 0.5 * z[3]])
    wide = fit_prompt_normalization(prompts, rewards, clip=2.0).apply(prompts, rewards)
    np.testing.assert_allclose(wide, 0.5 + 0.5 * z / 2.0)  # nothing clipped at c = 2
    out = fit_prompt_normalization(prompts, rewards * 7 - 3, clip=0.5).apply(prompts, rewards * 7 - 3)
    assert out.min() >= 0.0 and out.max() <= 1.0  # any scale of r maps into [0, 1]
    # a prompt whose images all score alike sits at 1/2; so does a round without any spread
    assert fit_prompt_normalization(["a", "a", "b"], [0.2, 0.2, 0.9], 1.0).apply(["a", "a"], [0.2, 0.2]).tolist() \
        == [0.5, 0.5]
    flat = fit_prompt_normalization(["a", "b", "b"], [0.3, 0.3, 0.3], 1.0)
    assert flat.std == 0.0 and flat.apply(["a", "b", "b"], [0.3, 0.3, 0.3]).tolist() == [0.5, 0.5, 0.5]
    with pytest.raises(KeyError, match="no reward mean"):
        norm.apply(["c"], [0.1])


def _samples(path: Path, prompts: list[str], rewards: list[float | None]) -> Path:
    table = pa.table({"prompt": prompts, "reward": pa.array(rewards, type=pa.float32()),
                      "latents": pa.array([[0.0, 1.0]] * len(prompts), type=pa.list_(pa.float32()))})
    pq.write_table(table, path)
    return path


def test_normalisation_from_parquet_skips_nulls_and_rewrites_only_the_reward(tmp_path):
    files = [_samples(tmp_path / "a.parquet", ["a", "a", "b"], [0.0, 1.0, None]),
             _samples(tmp_path / "b.parquet", ["b", "b"], [0.5, 0.7])]
    norm = read_prompt_normalization(files, "reward", clip=1.0)
    assert norm.means == pytest.approx({"a": 0.5, "b": 0.6}) and norm.std == pytest.approx(np.sqrt(0.1325))
    batch = pq.read_table(files[1])
    out = normalize_reward_column(batch, "reward", norm)
    assert out.schema == batch.schema and out.column("latents").equals(batch.column("latents"))
    np.testing.assert_allclose(out.column("reward").to_numpy(), 0.5 + 0.5 * np.array([-0.1, 0.1]) / np.sqrt(0.1325),
                               rtol=1e-6)


def test_negative_aware_rewards_must_lie_in_the_unit_interval(tmp_path):
    check_unit_interval([_samples(tmp_path / "ok.parquet", ["a", "b"], [0.0, None])], "reward")
    check_unit_interval([_samples(tmp_path / "none.parquet", ["a"], [None])], "reward")
    with pytest.raises(ValueError, match=r"in \[0, 1\].*reward_normalization='prompt'"):
        check_unit_interval([_samples(tmp_path / "bad.parquet", ["a", "b"], [0.5, 1.5])], "reward")


def test_config_of_the_objective():
    cfg = FinetuneConfig()
    assert (cfg.objective, cfg.nft_strength, cfg.reward_normalization, cfg.reward_clip) == \
        ("reward_weighted", 1.0, "none", 1.0)
    FinetuneConfig(objective="negative_aware", reward_normalization="prompt", nft_strength=0.1)
    FinetuneConfig(objective="reward_weighted", reward_normalization="prompt")  # either objective
    assert FinetuneConfig(objective="negative_aware").config_hash() != cfg.config_hash()
    for bad in ({"objective": "dpo"}, {"nft_strength": 0.0}, {"nft_strength": -1.0}, {"reward_clip": 0.0},
                {"reward_normalization": "batch"}):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            FinetuneConfig(**bad)


# --- the frozen parent in the Finetuner ----------------------------------------------------------

UNET_FILE = "unet/diffusion_pytorch_model.safetensors"


def _model_batch(rewards: list[float]) -> dict:
    latents = np.random.default_rng(0).standard_normal((len(rewards), 4 * 16 * 16)).astype(np.float32)
    return {"latents": list(latents), "latent_shape": [[4, 16, 16]] * len(rewards),
            "prompt": ["two red circles", "a blue square"][: len(rewards)], "reward": rewards}


def test_old_policy_stays_the_parent_when_a_run_resumes(tmp_path, sd_model_dir):
    from t2i_rlhf.training.finetune.model import StartingPoint, load_unet, save_weights
    from t2i_rlhf.training.finetune.worker import Finetuner

    cfg = FinetuneConfig(objective="negative_aware", beta=0.0, batch_size=2)
    start = StartingPoint(pipeline_dir=str(sd_model_dir))
    moved = load_unet(start, cfg)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.01)
    save_weights(moved, tmp_path / "ckpt", lora=False)  # a checkpoint's layout: ckpt/unet/
    tuner = Finetuner(cfg, start, torch.device("cpu"), resume_dir=tmp_path / "ckpt")
    parent, resumed = load_file(Path(sd_model_dir) / UNET_FILE), load_file(tmp_path / "ckpt" / UNET_FILE)
    trained, old = tuner.unet.state_dict(), tuner.old_unet.state_dict()
    assert set(old) == set(parent)
    assert all(torch.equal(old[k], parent[k]) for k in parent)  # the parent, not the checkpoint
    assert all(torch.equal(trained[k], resumed[k]) for k in resumed)
    assert not any(p.requires_grad for p in tuner.old_unet.parameters()) and not tuner.old_unet.training
    assert all(p.requires_grad for p in tuner.unet.parameters())
    with pytest.raises(ValueError, match=r"rewards in \[0, 1\]"):
        tuner.micro_step(_model_batch([0.5, 2.0]), None, torch.Generator().manual_seed(0), 1.0)

    lora = cfg.model_copy(update={"lora": True, "lora_rank": 2})
    lora_tuner = Finetuner(lora, start, torch.device("cpu"))
    assert not any("lora" in k for k in lora_tuner.old_unet.state_dict())
    assert all(torch.equal(lora_tuner.old_unet.state_dict()[k], parent[k]) for k in parent)


def test_a_finetuner_step_at_the_parent_pushes_by_s_times_2r_minus_1(sd_model_dir):
    """At the round's start (v_θ = v_old) the negative-aware gradient on the real UNet is the
    reward-weighted one with weights s·(2r − 1): the loss is wired to the same x_t, t and z."""
    from t2i_rlhf.training.finetune.model import resolve_base
    from t2i_rlhf.training.finetune.worker import Finetuner

    start = resolve_base(sd_model_dir)
    s, r = 0.5, [1.0, 0.0]

    def grads(cfg: FinetuneConfig, rewards: list[float]) -> list[torch.Tensor]:
        tuner = Finetuner(cfg, start, torch.device("cpu"))
        tuner.micro_step(_model_batch(rewards), None, torch.Generator().manual_seed(3), 1.0)
        return [p.grad.clone() for p in tuner.params]

    nft = grads(FinetuneConfig(objective="negative_aware", nft_strength=s, beta=0.0, batch_size=2), r)
    weighted = grads(FinetuneConfig(beta=0.0, batch_size=2), [s * (2 * x - 1) for x in r])
    assert sum(float(g.abs().sum()) for g in nft) > 0
    for a, b in zip(nft, weighted, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
