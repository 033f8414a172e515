"""LlamaGen VQ tokenizer (VQ-16 design), re-implemented with identical state-dict keys.

Encoder -> quant_conv -> l2-normalised (cosine) codebook lookup -> post_quant_conv -> decoder.
Upstream fixes the base width at 128; here `ch` is configurable so the demo can train a small
one. Every normalisation is GroupNorm(32 groups, eps 1e-6) as upstream, so every channel count
(ch * m for m in ch_mult) must be a multiple of 32 (the demo uses ch=32).

Speed: decoding is plain convolutions; on GPU `vq.to(memory_format=torch.channels_last)` and
bf16 autocast are the easy levers (the upstream samplers keep the decoder in fp32).

Upstream quirks kept on purpose (checkpoints load with strict=True):
- `quantize.codebook_used` is a float buffer of 65536 entries whatever the codebook size.
- the encoder and decoder share one `ch_mult` here (upstream has two fields, always equal).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

CODEBOOK_USED_SIZE = 65536  # upstream sizes this usage buffer independently of the codebook


@dataclass
class VQConfig:
    codebook_size: int = 16384
    codebook_embed_dim: int = 8
    codebook_l2_norm: bool = True
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2
    dropout: float = 0.0

    def __post_init__(self):
        self.ch_mult = tuple(int(m) for m in self.ch_mult)
        bad = [self.ch * m for m in self.ch_mult if (self.ch * m) % 32]
        if bad:
            raise ValueError(
                f"VQ channel counts must be multiples of 32 (GroupNorm with 32 groups); "
                f"ch={self.ch} x ch_mult={list(self.ch_mult)} gives {bad}"
            )

    @classmethod
    def from_dict(cls, d: dict) -> "VQConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown VQ config keys {unknown}; allowed: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ch_mult"] = list(self.ch_mult)
        return d


VQ_16 = VQConfig()


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, dropout: float = 0.0):
        super().__init__()
        self.norm1 = _norm(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        if in_ch != out_ch:
            self.nin_shortcut = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the spatial positions (1x1 conv projections)."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _norm(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.k = nn.Conv2d(ch, ch, 1)
        self.v = nn.Conv2d(ch, ch, 1)
        self.proj_out = nn.Conv2d(ch, ch, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(-1, -2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale 1/sqrt(c), as upstream
        out = out.transpose(-1, -2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=0)

    def forward(self, x):
        # asymmetric (right/bottom) zero padding, as upstream (taming-transformers heritage)
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        dtype = x.dtype
        # nearest interpolation in float32 (upstream does the same for bf16 inputs)
        x = F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(dtype)
        return self.conv(x)


class _Level(nn.Module):
    """One resolution level: `res` blocks, optional `attn` blocks, optional resampler."""

    def __init__(self):
        super().__init__()


class Encoder(nn.Module):
    def __init__(self, cfg: VQConfig, in_channels: int = 3):
        super().__init__()
        ch, mult, n_res = cfg.ch, cfg.ch_mult, cfg.num_res_blocks
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for i, m in enumerate(mult):
            level = _Level()
            level.res = nn.ModuleList()
            level.attn = nn.ModuleList()
            last = i == len(mult) - 1
            for _ in range(n_res):
                level.res.append(ResnetBlock(block_in, ch * m, cfg.dropout))
                block_in = ch * m
                if last:
                    level.attn.append(AttnBlock(block_in))
            if not last:
                level.downsample = Downsample(block_in)
            self.conv_blocks.append(level)
        self.mid = nn.ModuleList(
            [ResnetBlock(block_in, block_in, cfg.dropout), AttnBlock(block_in),
             ResnetBlock(block_in, block_in, cfg.dropout)]
        )
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, cfg.z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.conv_blocks:
            for i, res in enumerate(level.res):
                h = res(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        for block in self.mid:
            h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, cfg: VQConfig, out_channels: int = 3):
        super().__init__()
        ch, mult, n_res = cfg.ch, cfg.ch_mult, cfg.num_res_blocks
        block_in = ch * mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, block_in, 3, padding=1)
        self.mid = nn.ModuleList(
            [ResnetBlock(block_in, block_in, cfg.dropout), AttnBlock(block_in),
             ResnetBlock(block_in, block_in, cfg.dropout)]
        )
        self.conv_blocks = nn.ModuleList()
        for i in reversed(range(len(mult))):  # deepest level first
            level = _Level()
            level.res = nn.ModuleList()
            level.attn = nn.ModuleList()
            deepest = i == len(mult) - 1
            for _ in range(n_res + 1):
                level.res.append(ResnetBlock(block_in, ch * mult[i], cfg.dropout))
                block_in = ch * mult[i]
                if deepest:
                    level.attn.append(AttnBlock(block_in))
            if i != 0:
                level.upsample = Upsample(block_in)
            self.conv_blocks.append(level)
        self.norm_out = _norm(block_in)
        self.conv_out = nn.Conv2d(block_in, out_channels, 3, padding=1)

    def forward(self, z):
        h = self.conv_in(z)
        for block in self.mid:
            h = block(h)
        for level in self.conv_blocks:
            for i, res in enumerate(level.res):
                h = res(h)
                if len(level.attn):
                    h = level.attn[i](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.l2_norm = cfg.codebook_l2_norm
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.codebook_embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / cfg.codebook_size, 1.0 / cfg.codebook_size)
        if self.l2_norm:
            with torch.no_grad():
                self.embedding.weight.copy_(F.normalize(self.embedding.weight, dim=-1))
        self.register_buffer("codebook_used", torch.zeros(CODEBOOK_USED_SIZE))

    def codebook(self) -> torch.Tensor:
        w = self.embedding.weight
        return F.normalize(w, dim=-1) if self.l2_norm else w

    def lookup(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, C, h, w) -> (indices (B, h, w), normalised z (B, h, w, C))."""
        z = z.permute(0, 2, 3, 1).float()
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        e = self.codebook().float()
        flat = z.reshape(-1, z.shape[-1])
        # squared distance, written as upstream so near-ties break the same way
        d = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * flat @ e.t()
        return d.argmin(dim=1).view(z.shape[:-1]), z

    def forward(self, z: torch.Tensor):
        """Training path: straight-through quantisation and the two VQ loss terms.

        Returns (z_q (B,C,h,w) with straight-through gradient, indices (B,h,w),
        codebook_loss, commitment_loss) — the loss terms are the plain MSE pair of VQ-VAE on the
        normalised vectors (upstream weights the commitment term with beta=0.25).
        """
        idx, zn = self.lookup(z)
        zq = self.codebook()[idx]
        codebook_loss = F.mse_loss(zq, zn.detach())
        commit_loss = F.mse_loss(zq.detach(), zn)
        zq = zn + (zq - zn).detach()
        return zq.permute(0, 3, 1, 2).contiguous(), idx, codebook_loss, commit_loss


class VQModel(nn.Module):
    def __init__(self, cfg: VQConfig = VQ_16):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quantize = VectorQuantizer(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.codebook_embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.codebook_embed_dim, cfg.z_channels, 1)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.config.ch_mult) - 1)

    @property
    def codebook_size(self) -> int:
        return self.config.codebook_size

    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """images [-1,1] (B,3,H,W) -> pre-quantisation latents (B, C, h, w)."""
        return self.quant_conv(self.encoder(images))

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images [-1,1] (B,3,H,W) -> codes LongTensor (B, h, w)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"encode expects images (B,3,H,W), got {tuple(images.shape)}")
        if images.shape[-1] % self.downsample or images.shape[-2] % self.downsample:
            raise ValueError(
                f"image size {tuple(images.shape[-2:])} is not a multiple of the VQ downsampling "
                f"factor {self.downsample}"
            )
        idx, _ = self.quantize.lookup(self.encode_latents(images))
        return idx

    def codes_to_latents(self, codes: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """codes (B,h,w), or (B,h*w) with `grid` (square if omitted) -> (B, C, h, w) l2-normalised rows."""
        if codes.dim() == 2:
            n = codes.shape[1]
            if grid is None:
                side = int(round(n**0.5))
                if side * side != n:
                    raise ValueError(f"{n} codes per image is not a square grid; pass grid=(h, w)")
                grid = (side, side)
            if grid[0] * grid[1] != n:
                raise ValueError(f"grid {grid} does not hold {n} codes")
            codes = codes.reshape(codes.shape[0], *grid)
        if codes.dim() != 3:
            raise ValueError(f"codes must be (B,h,w) or (B,h*w), got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.codebook_size):
            raise ValueError(
                f"codes out of range [0, {self.codebook_size}): min {int(codes.min())}, max {int(codes.max())}"
            )
        return self.quantize.codebook()[codes.long()].permute(0, 3, 1, 2).contiguous()

    def decode_latents(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, h, w) -> images (B, 3, H, W), not clamped. Differentiable w.r.t. the decoder."""
        return self.decoder(self.post_quant_conv(z))

    def decode_codes(self, codes: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        return self.decode_latents(self.codes_to_latents(codes, grid))

    def decoder_parameters(self) -> list[nn.Parameter]:
        return list(self.post_quant_conv.parameters()) + list(self.decoder.parameters())

    def forward(self, images: torch.Tensor):
        """Autoencoding pass for tokenizer training: (reconstruction, codes, codebook_loss, commit_loss)."""
        zq, idx, codebook_loss, commit_loss = self.quantize(self.encode_latents(images))
        return self.decode_latents(zq), idx, codebook_loss, commit_loss
