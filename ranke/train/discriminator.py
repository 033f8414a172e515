"""The PatchGAN discriminator of the decoder update and its hinge losses.

Same design as the LlamaGen / taming-transformers NLayerDiscriminator (4x4 convs, stride 2 then 1,
BatchNorm, LeakyReLU 0.2, N(0, 0.02) init) so its state dict has the familiar `main.<i>.*` keys.
RankE initialises it fresh (it is not the tokenizer's training discriminator) and trains it with
real = GT images and fake = the decoder's reconstructions of those images' own codes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, in_channels: int = 3, ndf: int = 64, n_layers: int = 3):
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
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        prev, mult = mult, min(2**n_layers, 8)
        layers += [
            nn.Conv2d(ndf * prev, ndf * mult, kw, stride=1, padding=pad, bias=False),
            nn.BatchNorm2d(ndf * mult),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(ndf * mult, 1, kw, stride=1, padding=pad),
        ]
        self.main = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B,3,H,W) in [-1,1] -> patch logits (B,1,h,w)."""
        return self.main(images)


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
