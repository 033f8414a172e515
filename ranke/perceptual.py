"""Perceptual distances for the decoder losses: LPIPS-VGG from local weights, or a download-free
demo distance. Both are `nn.Module`s with `forward(x, y) -> (B,)`, inputs in [-1, 1], frozen.

`build_perceptual(cfg, device)` takes config `assets.perceptual`:

* `{kind: lpips-vgg, weights: <file>, vgg16: <file or null>}` — LPIPS v0.1 with a VGG16 trunk
  (the official RankE / LlamaGen loss). `weights` holds the five LPIPS linear heads
  (`lin{0..4}.model.1.weight`, the taming-transformers / richzhang `vgg.pth`); it may also hold the
  VGG16 trunk (keys `net.slice{1..5}.*` of a full LPIPS state dict, or torchvision `features.*`).
  Otherwise `vgg16` must point at a torchvision VGG16 state dict (`features.*` keys).
* `{kind: demo}` — `PyramidDistance`: per image, the mean absolute difference of the Laplacian
  pyramid bands (4 levels) plus that of the horizontal/vertical finite-difference gradients at
  each level. Needs no weights; sensitive to edges and local structure like LPIPS, unlike plain
  pixel L1, which is what the consistency/reconstruction terms need on the tiny demo images.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# VGG16 `features` indices at which LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_VGG_TAPS = (4, 9, 16, 23, 30)
_VGG_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS input scaling layer (ImageNet statistics expressed for inputs in [-1, 1])
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


def _vgg16_features() -> nn.Sequential:
    """The first 30 layers of torchvision's VGG16 `features` (up to relu5_3), same indices, random
    init (built here rather than via torchvision so the unused 120M-parameter classifier is not made)."""
    layers: list[nn.Module] = []
    c_in = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers += [nn.Conv2d(c_in, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
            c_in = v
    return nn.Sequential(*layers)


class _LinHead(nn.Module):
    """LPIPS 1x1 head; the `model.1` nesting matches the published weight files."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, stride=1, padding=0, bias=False))

    def forward(self, x):
        return self.model(x)


class LPIPSVGG(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))
        self.features = _vgg16_features()
        self.lins = nn.ModuleList([_LinHead(c) for c in _VGG_CHANNELS])

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out, h = [], (x - self.shift) / self.scale
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i + 1 in _VGG_TAPS:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        fx, fy = self._taps(x.float()), self._taps(y.float())
        d = torch.zeros(x.shape[0], device=x.device)
        for a, b, lin in zip(fx, fy, self.lins):
            a = a / (a.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            d = d + lin((a - b).pow(2)).mean(dim=(1, 2, 3))
        return d

    def load_weights(self, lpips_path: str | Path, vgg_path: str | Path | None) -> None:
        """Load LPIPS heads (+ VGG16 trunk, from the same file or `vgg_path`); strict on both parts."""
        sd = torch.load(lpips_path, map_location="cpu", weights_only=True)
        sd = sd.get("state_dict", sd) if isinstance(sd, dict) else sd
        lin_sd = {}
        for i in range(5):
            key = f"lin{i}.model.1.weight"
            if key not in sd:
                raise KeyError(f"{lpips_path}: no LPIPS head '{key}' (keys: {sorted(sd)[:8]} ...)")
            lin_sd[f"lins.{i}.model.1.weight"] = sd[key]
        trunk = _vgg_trunk_from(sd)
        if trunk is None:
            if vgg_path is None:
                raise FileNotFoundError(
                    f"assets.perceptual.weights ({lpips_path}) has no VGG16 trunk; set assets.perceptual.vgg16 "
                    "to a torchvision VGG16 state dict"
                )
            vsd = torch.load(vgg_path, map_location="cpu", weights_only=True)
            trunk = _vgg_trunk_from(vsd)
            if trunk is None:
                raise KeyError(f"{vgg_path}: not a VGG16 state dict (no 'features.*' keys)")
        self.features.load_state_dict(trunk, strict=True)
        missing, unexpected = self.load_state_dict(lin_sd, strict=False)
        if unexpected or any(k.startswith("lins.") for k in missing):
            raise KeyError(f"LPIPS heads do not fit: missing {missing}, unexpected {unexpected}")


def _vgg_trunk_from(sd: dict) -> dict | None:
    """VGG16 features[:30] state dict from torchvision (`features.N.*`) or LPIPS (`net.sliceK.N.*`) keys."""
    out = {}
    for k, v in sd.items():
        if k.startswith("features."):
            idx = int(k.split(".")[1])
            if idx < 30:
                out[k[len("features."):]] = v
        elif k.startswith("net.slice"):
            rest = k.split(".", 2)[2]  # "<N>.weight"
            out[rest] = v
    return out or None


class PyramidDistance(nn.Module):
    """Download-free perceptual stand-in: multi-scale Laplacian-band + gradient L1 (see module doc)."""

    def __init__(self, levels: int = 4):
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # All operations are linear, so the pyramid of (x - y) equals the difference of pyramids.
        diff = x.float() - y.float()
        d = torch.zeros(x.shape[0], device=x.device)
        for level in range(self.levels):
            if min(diff.shape[-2:]) < 2:
                break
            if level < self.levels - 1 and min(diff.shape[-2:]) >= 4:
                low = F.avg_pool2d(diff, 2)
                band = diff - F.interpolate(low, size=diff.shape[-2:], mode="bilinear", align_corners=False)
            else:
                low, band = None, diff  # coarsest level: the residual low-pass image itself
            gx = diff[..., :, 1:] - diff[..., :, :-1]
            gy = diff[..., 1:, :] - diff[..., :-1, :]
            d = d + band.abs().mean(dim=(1, 2, 3)) + 0.5 * (gx.abs().mean(dim=(1, 2, 3)) + gy.abs().mean(dim=(1, 2, 3)))
            if low is None:
                break
            diff = low
        return d


def build_perceptual(cfg: dict | None, device: torch.device | str = "cpu") -> nn.Module:
    """The frozen perceptual distance named by config `assets.perceptual`."""
    cfg = cfg or {"kind": "demo"}
    kind = cfg.get("kind", "demo")
    if kind == "demo":
        model: nn.Module = PyramidDistance()
    elif kind == "lpips-vgg":
        weights = cfg.get("weights")
        if not weights or not Path(weights).exists():
            raise FileNotFoundError(f"assets.perceptual.weights: LPIPS weight file not found: {weights}")
        vgg = cfg.get("vgg16")
        if vgg and not Path(vgg).exists():
            raise FileNotFoundError(f"assets.perceptual.vgg16: VGG16 weight file not found: {vgg}")
        model = LPIPSVGG()
        model.load_weights(weights, vgg)
    else:
        raise ValueError(f"assets.perceptual.kind must be lpips-vgg | demo, got {kind!r}")
    model.eval().requires_grad_(False)
    return model.to(device)
