"""GRPO terms alone, on hand-made tensors."""

import math

import pytest
import torch
from torch import nn

from ranke.train.policy import ema_update, grpo_advantages, policy_loss



def test_advantages_normalise_per_group_with_unbiased_std():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0])
    a = grpo_advantages(r, group_size=4)
    std = torch.tensor([1.0, 2.0, 3.0, 4.0]).std(unbiased=True)  # 1.2910
    assert torch.allclose(a[:4], (torch.tensor([1.0, 2, 3, 4]) - 2.5) / std)
    assert abs(float(std) - math.sqrt(5 / 3)) < 1e-6
    # a zero-std group carries no signal: exactly zero, not nan
    assert torch.equal(a[4:], torch.zeros(4))


def test_advantages_tiny_std_group_is_zero_and_clip_binds():
    r = torch.tensor([0.0, 0.0, 0.0, 1e-5])  # std ~5e-6 <= 1e-4
    assert torch.equal(grpo_advantages(r, 4), torch.zeros(4))
    r = torch.tensor([0.0] * 49 + [1.0])  # outlier: (1 - 0.02) / 0.1414 = 6.93 -> 5
    a = grpo_advantages(r, 50)
    assert float(a[-1]) == 5.0
    assert float(grpo_advantages(-r, 50)[-1]) == -5.0


def test_uniform_advantages():
    assert torch.equal(grpo_advantages(torch.randn(8), 4, uniform=True), torch.ones(8))


def test_ratio_is_one_at_first_epoch_and_loss_is_minus_mean_advantage():
    logp = torch.log(torch.rand(4, 6)).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 0.5, 2.0])
    t = policy_loss(logp, logp.detach(), None, adv, kl_coef=0.0)
    assert float(t.ratio_mean) == 1.0 and float(t.clip_frac) == 0.0
    assert torch.allclose(t.loss_pg, -adv.mean())
    t.loss.backward()
    # d/dlogp of -rho*A at rho=1 is -A / (N*L): REINFORCE with token averaging
    assert torch.allclose(logp.grad, -adv.view(-1, 1).expand(4, 6) / 24)


def test_ppo_clip_binds_outside_the_trust_region():
    logp_old = torch.zeros(2, 1)
    logp = torch.log(torch.tensor([[1.5], [0.5]]))  # ratios 1.5 and 0.5
    adv = torch.tensor([1.0, -1.0])
    t = policy_loss(logp, logp_old, None, adv, clip_eps=0.2, kl_coef=0.0)
    # min(1.5*1, 1.2*1) = 1.2 ; min(0.5*-1, 0.8*-1) = -0.8 -> loss = -(1.2 - 0.8)/2
    assert torch.allclose(t.loss_pg, torch.tensor(-0.2))
    assert float(t.clip_frac) == 1.0


def test_kl_term_value_and_coefficient():
    logp = torch.tensor([[-1.0, -2.0], [-3.0, -0.5]])
    ref = torch.tensor([[-1.5, -2.0], [-1.0, -0.5]])
    t = policy_loss(logp, logp, ref, torch.zeros(2), kl_coef=0.05)
    expected_kl = 0.5 * (0.25 + 0 + 4.0 + 0) / 4
    assert torch.allclose(t.kl, torch.tensor(expected_kl))
    assert torch.allclose(t.loss, 0.05 * torch.tensor(expected_kl))


def test_ema_update_moves_parameters_not_buffers():
    model, ema = nn.BatchNorm1d(3), nn.BatchNorm1d(3)
    with torch.no_grad():
        model.weight.fill_(2.0)
        ema.weight.fill_(1.0)
        model.running_mean.fill_(5.0)
    ema_update(ema, model, decay=0.99)
    assert torch.allclose(ema.weight, torch.full((3,), 0.99 * 1.0 + 0.01 * 2.0))
    assert torch.equal(ema.running_mean, torch.zeros(3))
    with pytest.raises(ValueError):
        grpo_advantages(torch.zeros(7), 4)


def test_gradient_checkpointing_gives_the_same_logprobs_and_gradients(monkeypatch):
    import copy

    from ranke.models.backbone import build_gpt
    from ranke.sampling import teacher_forced_logprobs
    from ranke.train.round import enable_gradient_checkpointing

    torch.manual_seed(0)
    gpt = build_gpt({"dim": 32, "n_layer": 2, "n_head": 2, "caption_dim": 8, "multiple_of": 32}, 16, 16, 4)
    torch.nn.init.normal_(gpt.output.weight, std=0.2)
    ck = copy.deepcopy(gpt)
    calls = {"n": 0}
    block = type(gpt.layers[0])
    orig = block.forward

    def counting(self, *a, **k):
        calls["n"] += 1
        return orig(self, *a, **k)

    monkeypatch.setattr(block, "forward", counting)
    enable_gradient_checkpointing(ck)
    assert ck.state_dict().keys() == gpt.state_dict().keys()
    emb, mask = torch.randn(3, 4, 8), torch.ones(3, 4, dtype=torch.bool)
    codes = torch.randint(0, 16, (3, 16))
    a = teacher_forced_logprobs(gpt, emb, mask, codes)
    b = teacher_forced_logprobs(ck, emb, mask, codes)
    assert torch.allclose(a, b, atol=1e-6)
    a.sum().backward()
    calls["n"] = 0
    b = teacher_forced_logprobs(ck, emb, mask, codes)
    b.sum().backward()
    assert calls["n"] == 4  # 2 blocks, each run again in the backward pass
    for (n, p), q in zip(gpt.named_parameters(), ck.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-6), n
