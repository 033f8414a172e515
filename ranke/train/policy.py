"""Stage 1 of a RankE step ("latent ranking"): the GRPO policy update.

Each term is a plain function of tensors so that it can be tested alone:

* `grpo_advantages`  group-normalised advantages, clipped, zero for a degenerate group
* `policy_loss`      PPO-clip surrogate on per-token ratios + beta * k2 KL anchor to a reference
* `ema_update`       in-place exponential moving average of parameters (policy EMA and decoder EMA)

Conventions follow the official RankE trainer (see docs: the digest of its code, section B.2):
rewards are grouped prompt-major (rollout i belongs to group i // G), the unbiased group std is used,
and every mean is over all tokens of all rollouts (token-averaged, not sequence-averaged).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


def grpo_advantages(
    rewards: torch.Tensor,
    group_size: int,
    *,
    clip: float = 5.0,
    std_eps: float = 1e-4,
    uniform: bool = False,
) -> torch.Tensor:
    """Per-rollout advantages A_i = clip((r_i - mean_g) / std_g, -clip, clip).

    `rewards` is (B*G,) ordered prompt-major. std_g is the unbiased sample std of the group; a group
    whose std is <= std_eps carries no ranking signal and gets A = 0 (instead of dividing by ~0).
    `uniform=True` is the "uniform advantages" ablation of the official code: every A_i = 1.
    """
    if rewards.dim() != 1 or rewards.numel() % group_size != 0:
        raise ValueError(f"rewards must be (B*G,) with G={group_size}, got shape {tuple(rewards.shape)}")
    if uniform:
        return torch.ones_like(rewards, dtype=torch.float32)
    r = rewards.detach().float().view(-1, group_size)
    mean = r.mean(dim=1, keepdim=True)
    if group_size > 1:
        std = r.std(dim=1, unbiased=True, keepdim=True)
    else:
        std = torch.zeros_like(mean)
    adv = (r - mean) / std.clamp_min(std_eps)
    adv = adv.clamp(-clip, clip)
    adv = torch.where(std > std_eps, adv, torch.zeros_like(adv))
    return adv.view(-1)


@dataclass
class PolicyLossTerms:
    loss: torch.Tensor  # what is back-propagated: loss_pg + beta * kl
    loss_pg: torch.Tensor  # clipped surrogate (sign: minimised)
    kl: torch.Tensor  # mean_tokens 0.5 * (logpi - logpi_ref)^2
    ratio_mean: torch.Tensor
    clip_frac: torch.Tensor


def policy_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    logp_ref: torch.Tensor | None,
    advantages: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    kl_coef: float = 0.05,
    token_mask: torch.Tensor | None = None,
) -> PolicyLossTerms:
    """GRPO loss over (N, L) per-token log-probs of the sampled codes.

    rho = exp(logp - logp_old); L_pg = -mean min(rho*A, clip(rho, 1-eps, 1+eps)*A);
    L_kl = mean 0.5*(logp - logp_ref)^2 (the "k2" estimator, an anchor on the *sampled* tokens);
    loss = L_pg + kl_coef * L_kl. `logp_ref=None` or kl_coef=0 drops the anchor (kl is still
    reported as 0 then). `token_mask` (N, L) bool restricts the token means (default all tokens).
    """
    if logp.shape != logp_old.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and logp_old {tuple(logp_old.shape)} differ")
    logp = logp.float()
    logp_old = logp_old.detach().float()
    adv = advantages.detach().float().view(-1, 1).expand_as(logp)
    if token_mask is None:
        token_mask = torch.ones_like(logp, dtype=torch.bool)
    m = token_mask.float()
    n = m.sum().clamp_min(1.0)

    ratio = torch.exp(logp - logp_old)
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    loss_pg = -(torch.minimum(unclipped, clipped) * m).sum() / n
    if logp_ref is not None and kl_coef != 0.0:
        diff = logp - logp_ref.detach().float()
        kl = (0.5 * diff.pow(2) * m).sum() / n
    else:
        kl = torch.zeros((), device=logp.device)
    loss = loss_pg + kl_coef * kl
    with torch.no_grad():
        ratio_mean = (ratio * m).sum() / n
        clip_frac = (((ratio - 1.0).abs() > clip_eps).float() * m).sum() / n
    return PolicyLossTerms(loss, loss_pg, kl, ratio_mean, clip_frac)


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, over trainable parameters only. Buffers are left
    as they are (as in the official trainer, e.g. the VQ `codebook_used` buffer), and so are frozen
    parameters (encoder, codebook): they equal the EMA's already, and skipping them keeps them
    bit-identical instead of accumulating rounding."""
    ema_params = dict(ema.named_parameters())
    for name, p in model.named_parameters():
        e = ema_params[name]
        if p.requires_grad and e.dtype.is_floating_point:
            e.mul_(decay).add_(p.detach().to(e.dtype), alpha=1.0 - decay)
