"""Evaluation metrics of the score stage: FID (fid.py), CLIP score (clip_score.py), code shift (shift.py).

Image conventions shared by the metrics (all batched tensor ops on the scoring device; no per-image
PIL work in the hot path):

* generated images are quantised exactly like the upstream evaluation writes PNGs:
  uint8 = clamp(127.5 * v + 128, 0, 255) truncated (v in [-1, 1]);
* FID feature extractors take those uint8 tensors (B, 3, H, W), as torch-fidelity expects (the
  clean FID protocol resizes them in float first: ranke.metrics.fid);
* CLIP takes the same quantised pixels mapped back to [-1, 1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float (B,3,H,W) -> uint8, as upstream LlamaGen sampling saves PNGs."""
    return torch.clamp(127.5 * images.float() + 128.0, 0, 255).to(torch.uint8)


def uint8_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B,3,H,W) -> float32 in [-1, 1] (inverse of the PNG quantisation up to rounding)."""
    return images.float() / 127.5 - 1.0


def resize_batch(images: torch.Tensor, size: int, mode: str = "bicubic", *, antialias: bool = True) -> torch.Tensor:
    """Batched square resize of float images on their device (F.interpolate, align_corners=False).

    Callers pass `antialias` explicitly because they follow different references: the CLIP score
    follows the official evaluation (bicubic, no antialias), the demo's clip-image FID extractor
    antialiases (the default, kept for older callers such as bench/score.py)."""
    if images.shape[-2:] == (size, size):
        return images
    if mode not in ("bilinear", "bicubic"):
        raise ValueError(f"resize mode must be bilinear or bicubic, got {mode!r}")
    return F.interpolate(images, size=(size, size), mode=mode, align_corners=False, antialias=antialias)
