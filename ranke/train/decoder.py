"""Stage 2 of a RankE step ("pixel ranking"): the decoder's loss terms.

The decoder (VQ post_quant_conv + decoder) is trained on the sum of
* `reconstruction_loss`  GT anchor: L1 + perceptual between x and decode(codes(x)), plus the
                         VQGAN adaptive-weight hinge generator term once the discriminator is on;
* `rank_gan_loss`        -lambda_g * disc_weight * mean(w * D(x_hat)) on the top-K rollouts of each prompt;
* `consistency_loss`     lambda_c * perceptual(x_hat, clamp(EMA-decoder(same codes)));
* `reward_loss`          -lambda_d * mean(w * reward(x_hat, y))  (reward back-propagation);
* `lasc_loss`            lambda_lasc * MSE(decode(soft codes), stop-grad x_hat)  (off by default).
The rollouts kept and their weights come from `rank_weights` with the temperature `tau_schedule`.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ranke.train.discriminator import generator_hinge_loss


def tau_schedule(step: int, nominal_steps: int, *, start: float = 4.0, end: float = 1.0, frac: float = 0.2) -> float:
    """Cosine annealing of the rank temperature from `start` to `end` over the first
    int(frac * nominal_steps) steps, constant `end` afterwards, floored at 1e-4 — the official
    schedule (trainer.py:774-781: `anneal_steps = int(total_steps * anneal_ratio)`, then
    `max(tau, 1e-4)`; 4 -> 1 over int(0.2 * 4680) = 936 steps in the LlamaGen CLIP run)."""
    anneal_steps = int(nominal_steps * frac)
    p = min(1.0, step / anneal_steps) if anneal_steps > 0 else 1.0
    tau = end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * p))
    return max(tau, 1e-4)


RANK_WEIGHTINGS = ("softmax", "uniform")


def rank_weights(rewards: torch.Tensor, group_size: int, k: int, tau: float, *,
                 weighting: str = "softmax") -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the top-k rollouts of every prompt group and weight them K * softmax(r / tau)
    (weighting "softmax", the official) or all 1 ("uniform": the un-weighted GAN ablation).

    rewards: (B*G,) prompt-major. Returns (index (B*k,) into the rollouts, weights (B*k,)),
    prompt-major and best first. The weights of a prompt sum to k, so their mean is 1 and the
    average GAN / reward gradient scale equals the un-weighted one. Ties keep rollout order.
    """
    if not 1 <= k <= group_size:
        raise ValueError(f"rank_k must be in [1, group_size={group_size}], got {k}")
    if weighting not in RANK_WEIGHTINGS:
        raise ValueError(f"rank weighting must be one of {RANK_WEIGHTINGS}, got {weighting!r}")
    r = rewards.detach().float().view(-1, group_size)
    top_r, top_i = torch.sort(r, dim=1, descending=True, stable=True)
    top_r, top_i = top_r[:, :k], top_i[:, :k]
    w = k * torch.softmax(top_r / tau, dim=1) if weighting == "softmax" else torch.ones_like(top_r)
    offset = torch.arange(r.shape[0], device=r.device).view(-1, 1) * group_size
    return (top_i + offset).reshape(-1), w.reshape(-1)


def adaptive_gan_weight(
    nll: torch.Tensor,
    g_loss: torch.Tensor,
    last_layer: torch.Tensor,
    *,
    max_weight: float = 1e4,
    grad_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """VQGAN's balance between the reconstruction and the GAN gradient at the decoder's last layer:
    ||d nll / d W|| / (||d g / d W|| + 1e-4), clamped to [0, max_weight], detached.
    `grad_reduce` (multi-process, train.decoder.grad_sync: global) averages the two gradients across
    ranks first, so the weight is that of the global batch. Without it the weight comes from this
    rank's own gradients, as in the official code (its VQ loss calls autograd.grad on the rank's
    unwrapped decoder, see ranke.train.round)."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    if grad_reduce is not None:
        nll_grad, g_grad = grad_reduce(nll_grad), grad_reduce(g_grad)
    w = torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-4)
    return w.clamp(0.0, max_weight).detach()


def reconstruction_loss(
    x: torch.Tensor,
    x_rec: torch.Tensor,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    disc: nn.Module | None = None,
    gan_on: bool = False,
    last_layer: torch.Tensor | None = None,
    disc_weight: float = 0.5,
    lambda_rec: float = 1.0,
    grad_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """GT reconstruction anchor. x_rec = decode(codes(x)) (not clamped, as in the official code).

    nll = mean|x - x_rec| + mean_images perceptual(x, x_rec); when `gan_on`, add
    disc_weight * adaptive_weight * (-mean D(x_rec)). Returns the terms and `loss` = lambda_rec * total.
    """
    l1 = (x.float() - x_rec.float()).abs().mean()
    p = perceptual(x_rec.float(), x.float()).mean()
    nll = l1 + p
    out = {"l1": l1, "perceptual": p}
    total = nll
    if gan_on:
        if disc is None or last_layer is None:
            raise ValueError("the reconstruction GAN term needs the discriminator and the last layer")
        g = generator_hinge_loss(disc(x_rec))
        aw = disc_weight * adaptive_gan_weight(nll, g, last_layer, grad_reduce=grad_reduce)
        total = total + aw * g
        out.update(gan=g, adaptive_weight=aw)
    out["loss"] = lambda_rec * total
    return out


def rank_gan_loss(disc: nn.Module, x_hat: torch.Tensor, weights: torch.Tensor, *, lambda_gan: float = 1.0,
                  disc_weight: float) -> torch.Tensor:
    """-lambda_g * disc_weight * mean_{images, patches}(w * D(x_hat)): the generator pushes the
    decodes of the best rollouts toward what the discriminator calls real, more strongly for higher
    reward. disc_weight is the discriminator's `weight` (official `--disc-weight`, 0.5 in the
    scripts), which the official code multiplies in here too (trainer.py:678)."""
    logits = disc(x_hat).float()
    w = weights.detach().float().view(-1, *([1] * (logits.dim() - 1)))
    return -(w * logits).mean() * lambda_gan * disc_weight


def consistency_loss(
    x_hat: torch.Tensor,
    x_ema: torch.Tensor,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    lambda_c: float = 10.0,
) -> torch.Tensor:
    """lambda_c * mean perceptual(x_hat, clamp(x_ema)): distil toward the slow EMA decoder on the same
    codes, so the online decoder cannot drift fast."""
    return lambda_c * perceptual(x_hat.float(), x_ema.detach().float().clamp(-1, 1)).mean()


def reward_loss(rewards: torch.Tensor, weights: torch.Tensor, *, lambda_d: float = 0.01) -> torch.Tensor:
    """-lambda_d * mean(w * reward(x_hat, y)); `rewards` must carry the graph back to x_hat."""
    return -lambda_d * (weights.detach().float() * rewards.float()).mean()


def lasc_loss(x_soft: torch.Tensor, x_hat: torch.Tensor, *, lambda_lasc: float) -> torch.Tensor:
    """lambda_lasc * MSE(decode(soft codes), stop-grad x_hat): the decoder should map the policy's
    probability-weighted mix of likely codes to the image its hard sample gives."""
    return lambda_lasc * F.mse_loss(x_soft.float(), x_hat.detach().float())


def topk_soft_codes(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L, V) non-CFG logits -> (probs (N, L, k) renormalised over the top k, indices (N, L, k))."""
    vals, idx = torch.topk(logits.float(), k, dim=-1)
    return torch.softmax(vals, dim=-1), idx
