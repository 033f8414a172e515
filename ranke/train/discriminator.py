"""The PatchGAN discriminator of the decoder update and its hinge losses.

Same design as the LlamaGen / taming-transformers NLayerDiscriminator (4x4 convs, stride 2 then 1,
BatchNorm, LeakyReLU 0.2) so its state dict has the familiar `main.<i>.*` keys, and the same init
(RankE tokenizer/tokenizer_image/discriminator_patchgan.py:58-63): conv weights N(0, 0.02),
BatchNorm weights N(1, 0.02) and biases 0, conv biases left at PyTorch's default init.
RankE initialises it fresh (it is not the tokenizer's training discriminator) and trains it with
real = GT images and fake = the decoder's reconstructions of those images' own codes.

BatchNorm statistics across ranks (config train.discriminator.batchnorm, `build_discriminator`):
* `local` (official): plain nn.BatchNorm2d, each rank normalises with its own images' statistics
  (the official discriminator is an nn.BatchNorm2d module that is never converted to SyncBatchNorm;
  4 images per GPU in the released scripts);
* `sync`: statistics of the global batch, so W ranks compute what one process would on the whole
  batch. On CUDA this is torch's nn.SyncBatchNorm; on CPU it is `SyncedBatchNorm2d` below, because
  torch's SyncBatchNorm refuses CPU tensors whenever a process group is initialised ("SyncBatchNorm
  expected input tensor to be on GPU ...", torch/nn/modules/batchnorm.py, checked with gloo).
All three keep nn.BatchNorm2d's state-dict keys.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class SyncedBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics span all ranks of the process group.

    With one process it is exactly nn.BatchNorm2d (same state dict keys). With W ranks each
    holding 1/W of the batch, the per-channel sums are all-reduced (autograd-aware), so the
    discriminator sees the statistics of the whole global batch, as one process would. It is the
    CPU (gloo) form of `batchnorm: sync`: torch's SyncBatchNorm only accepts accelerator tensors.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        import warnings

        from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        xf = x.float()
        n_local = torch.tensor([xf.numel() / c], device=x.device, dtype=torch.float32)
        with warnings.catch_warnings():  # a deprecated alias, but still the autograd-aware all-reduce
            warnings.simplefilter("ignore", FutureWarning)
            stats = all_reduce(torch.cat([xf.sum(dim=(0, 2, 3)), xf.pow(2).sum(dim=(0, 2, 3)), n_local]))
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c : 2 * c] / n - mean.pow(2)).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1.0), alpha=m)
                self.num_batches_tracked.add_(1)
        y = (xf - mean.view(1, c, 1, 1)) * torch.rsqrt(var.view(1, c, 1, 1) + self.eps)
        if self.affine:
            y = y * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)
        return y.to(x.dtype)


BATCHNORMS = ("local", "sync")


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3,
                 norm: type[nn.BatchNorm2d] = nn.BatchNorm2d):
        super().__init__()
        kw, pad = 4, 1
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, kw, stride=2, padding=pad),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers):
            prev, mult = mult, min(2**n, 8)
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, kw, stride=2, padding=pad, bias=False),
                norm(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, kw, stride=1, padding=pad, bias=False),
            norm(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, kw, stride=1, padding=pad),
        ]
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official init, in module order (so a seed gives the official draws): conv weights
        N(0, 0.02), BatchNorm N(1, 0.02) / 0. Conv biases (first and last conv) keep the default
        uniform init nn.Conv2d drew when it was built, as they do officially."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B,3,H,W) in [-1,1] -> patch logits (B,1,h,w)."""
        return self.main(images)


def build_discriminator(ndf: int, n_layers: int, *, batchnorm: str = "local",
                        device: torch.device | str = "cpu") -> PatchDiscriminator:
    """A fresh PatchGAN on `device` whose BatchNorm statistics are per rank (`local`, official) or
    global (`sync`: torch's SyncBatchNorm on CUDA, SyncedBatchNorm2d elsewhere; see the module
    docstring). Seed torch before calling it for a reproducible init."""
    if batchnorm not in BATCHNORMS:
        raise ValueError(f"train.discriminator.batchnorm must be one of {BATCHNORMS}, got {batchnorm!r}")
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    norm = SyncedBatchNorm2d if batchnorm == "sync" and not on_cuda else nn.BatchNorm2d
    disc = PatchDiscriminator(3, ndf, n_layers, norm=norm).to(device)
    if batchnorm == "sync" and on_cuda:
        disc = nn.SyncBatchNorm.convert_sync_batchnorm(disc)
    return disc


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)))."""
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def discriminator_loss(
    disc: nn.Module,
    real: torch.Tensor,
    fake: torch.Tensor,
    *,
    step: int,
    start_step: int,
    weight: float = 0.5,
) -> torch.Tensor | None:
    """The discriminator objective of one step, or None before `start_step` (no update then).

    `fake` is detached here: the discriminator step never sends gradients into the decoder.
    The hinge loss is scaled by `weight` (the official `--disc-weight`, 0.5).
    """
    if step < start_step:
        return None
    return weight * hinge_d_loss(disc(real), disc(fake.detach()))


def generator_hinge_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """-mean D(fake): the generator side of the hinge GAN (the VQGAN reconstruction GAN term)."""
    return -logits_fake.float().mean()
