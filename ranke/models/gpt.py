"""LlamaGen text-to-image GPT, re-implemented with state-dict keys identical to upstream.

Sequence layout: `cls_token_num` caption positions (T5 features through a 2-layer MLP), then the
image tokens in raster order. Position T-1+i predicts image token i. Llama blocks: RMSNorm,
fused `wqkv` attention with 2-D RoPE, SwiGLU FFN, untied output head, no biases.

Upstream behaviours reproduced on purpose (see ../shared/fixtures/llamagen/README.md):
- The RoPE table has all-zero rows (cos = sin = 0) for the caption positions, so caption queries
  and keys are zero vectors after rotation; captions act through their values only.
- `cls_embedding.uncond_embedding` is a buffer (not a parameter: it is never trained upstream)
  with 120 rows whatever `cls_token_num` is; with cls_token_num < 120 the first cls_token_num rows
  are the unconditional caption (cls_token_num > 120 sizes it to cls_token_num rows).
- Two attention masks (`build_attention_mask`):
  "generation": causal over caption + image, padded caption keys masked for every query, every
  position sees itself. This is exactly what the KV-cached sampler computes, so teacher-forced
  log-probs under it equal the sampling distribution's.
  "ranke": the official RankE scoring mask (RankE autoregressive/post_train/trainer.py:355-364):
  causal, the caption block fully visible to itself, padded caption keys masked for every query,
  and no forced diagonal (a padded caption query does not see itself).
- Caption dropout (CFG training) is explicit: `forward(..., drop_caption=bool mask)`; unlike
  upstream it never happens implicitly in train() mode, because RL post-training runs in train()
  mode and must score exactly what it sampled. Dropouts default to 0.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

UNCOND_ROWS = 120  # upstream CaptionEmbedder's fixed token_num

PRESETS: dict[str, dict] = {
    "GPT-B": dict(dim=768, n_layer=12, n_head=12),
    "GPT-L": dict(dim=1024, n_layer=24, n_head=16),
    "GPT-XL": dict(dim=1280, n_layer=36, n_head=20),
    "GPT-XXL": dict(dim=1536, n_layer=48, n_head=24),
}


@dataclass
class GPTConfig:
    dim: int
    n_layer: int
    n_head: int
    n_kv_head: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-5
    rope_base: float = 10000
    vocab_size: int = 16384
    block_size: int = 256  # number of image tokens (a square grid)
    cls_token_num: int = 120  # caption positions
    caption_dim: int = 2048
    token_dropout_p: float = 0.0
    resid_dropout_p: float = 0.0
    ffn_dropout_p: float = 0.0
    class_dropout_prob: float = 0.1  # caption dropout rate for CFG training (used by trainers)

    def __post_init__(self):
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not divisible by n_head {self.n_head}")
        if (self.dim // self.n_head) % 4:
            raise ValueError("head dim must be a multiple of 4 (2-D RoPE splits it into row/column pairs)")
        if self.n_head % self.kv_heads:
            raise ValueError(f"n_head {self.n_head} is not a multiple of n_kv_head {self.kv_heads}")
        side = math.isqrt(self.block_size)
        if side * side != self.block_size:
            raise ValueError(f"block_size {self.block_size} is not a square number of image tokens")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def grid(self) -> int:
        return math.isqrt(self.block_size)

    @property
    def ffn_hidden(self) -> int:
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return -(-hidden // self.multiple_of) * self.multiple_of

    @classmethod
    def preset(cls, name: str, **overrides) -> "GPTConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; known: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown GPT config keys {unknown}; allowed: {sorted(names)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return y.type_as(x) * self.weight


class CaptionMLP(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, dim, bias=False)
        self.fc2 = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class CaptionEmbedder(nn.Module):
    def __init__(self, caption_dim: int, dim: int, token_num: int):
        super().__init__()
        self.cap_proj = CaptionMLP(caption_dim, dim)
        rows = max(UNCOND_ROWS, token_num)
        self.register_buffer("uncond_embedding", torch.randn(rows, caption_dim) / caption_dim**0.5)


class FeedForward(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.ffn_dropout = nn.Dropout(cfg.ffn_dropout_p)

    def forward(self, x):
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


def rope_table(cfg: GPTConfig) -> torch.Tensor:
    """(cls_token_num + block_size, head_dim // 2, 2) cos/sin table; caption rows are all zero."""
    half = cfg.head_dim // 2
    freqs = 1.0 / (cfg.rope_base ** (torch.arange(0, half, 2)[: half // 2].float() / half))
    t = torch.arange(cfg.grid, dtype=torch.float32)
    f = torch.outer(t, freqs)  # (grid, head_dim // 4)
    g = cfg.grid
    # first half of the pairs rotate by the row index, second half by the column index
    grid = torch.cat([f[:, None, :].expand(g, g, -1), f[None, :, :].expand(g, g, -1)], dim=-1)
    table = torch.stack([grid.cos(), grid.sin()], dim=-1).flatten(0, 1)
    return torch.cat([torch.zeros(cfg.cls_token_num, half, 2), table])


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """x (B, S, H, hd); rope (S, hd//2, 2) -> rotated x (interleaved pairs), computed in float32."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    r = rope.view(1, xs.shape[1], 1, xs.shape[3], 2)
    out = torch.stack(
        [xs[..., 0] * r[..., 0] - xs[..., 1] * r[..., 1], xs[..., 1] * r[..., 0] + xs[..., 0] * r[..., 1]],
        dim=-1,
    )
    return out.flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.resid_dropout = nn.Dropout(cfg.resid_dropout_p)

    def forward(self, x, rope, mask, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                start: int | torch.Tensor = 0, kv_len: int | None = None):
        """x (B,S,D); mask (B,1,S,K) bool (True = attend).

        Without `cache`, K = S. With `cache` = (k_buf, v_buf), each (B, n_kv, max_len, hd), the new
        keys/values are written at positions [start, start + S) and attention runs over the first
        K = kv_len (default start + S) cache slots only. `start` may be a 1-element device tensor
        (S = 1): the static-shape decode step that a CUDA graph can replay (then the caller's
        mask hides the not-yet-written slots below kv_len).
        """
        b, s, _ = x.shape
        q, k, v = self.wqkv(x).split([self.n_head * self.hd, self.n_kv * self.hd, self.n_kv * self.hd], -1)
        q = apply_rope(q.view(b, s, self.n_head, self.hd), rope).transpose(1, 2)
        k = apply_rope(k.view(b, s, self.n_kv, self.hd), rope).transpose(1, 2)
        v = v.view(b, s, self.n_kv, self.hd).transpose(1, 2)
        if cache is not None:
            kb, vb = cache
            if isinstance(start, torch.Tensor):
                kb.index_copy_(2, start, k.to(kb.dtype))
                vb.index_copy_(2, start, v.to(vb.dtype))
                end = kv_len
            else:
                kb[:, :, start : start + s] = k
                vb[:, :, start : start + s] = v
                end = start + s if kv_len is None else kv_len
            k, v = kb[:, :, :end], vb[:, :, :end]
        if self.n_kv != self.n_head:
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        out = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        return self.resid_dropout(self.wo(out.transpose(1, 2).reshape(b, s, -1)))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x, rope, mask, cache=None, start: int | torch.Tensor = 0, kv_len: int | None = None):
        h = x + self.attention(self.attention_norm(x), rope, mask, cache, start, kv_len)
        return h + self.feed_forward(self.ffn_norm(h))


# ----------------------------------------------------------------------------------------------
# masks


def build_attention_mask(caption_mask: torch.Tensor, seq_len: int, kind: str = "generation") -> torch.Tensor:
    """(B, 1, S, S) bool attention mask (True = may attend) over caption + image positions.

    caption_mask (B, T) bool marks real caption tokens. Both masks are causal with the padded
    caption keys masked for every query.
    "generation": every position also sees itself, as the KV-cached sampler computes it (official
    autoregressive/models/generate.py:154-163). The diagonal only matters for padded caption
    positions; with right padding position T-1 is one of them, and it predicts image token 0.
    "ranke": the caption block sees itself bidirectionally and there is no forced diagonal, as the
    official scoring mask (trainer.py:355-364). The one exception is a query with no visible key at
    all (a caption without a single real token, which T5 never gives: it always appends </s>): it
    sees itself, where the official mask would give NaN.
    """
    if kind not in ("generation", "ranke"):
        raise ValueError(f"attention mask must be 'generation' or 'ranke', got {kind!r}")
    b, t = caption_mask.shape
    dev = caption_mask.device
    m = torch.ones(seq_len, seq_len, dtype=torch.bool, device=dev).tril()
    if kind == "ranke":
        m[:t, :t] = True
    m = m.expand(b, seq_len, seq_len).clone()
    m[:, :, :t] &= caption_mask.bool()[:, None, :]
    eye = torch.eye(seq_len, dtype=torch.bool, device=dev)
    if kind == "generation":
        m |= eye
    else:
        m |= eye & ~m.any(dim=-1, keepdim=True)
    return m[:, None]


# ----------------------------------------------------------------------------------------------
# model


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.config = cfg
        self.cls_embedding = CaptionEmbedder(cfg.caption_dim, cfg.dim, cfg.cls_token_num)
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout_p)
        self.layers = nn.ModuleList(TransformerBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        # not in the state dict (upstream keeps it outside too); always float32, see _apply
        self.register_buffer("rope", rope_table(cfg), persistent=False)
        self.gradient_checkpointing = False  # trainers may switch it on (config train.gradient_checkpointing)
        self._init_weights()

    def _init_weights(self):
        # upstream initialisation: N(0, 0.02) for linears and embeddings, zero output head
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.output.weight)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # a dtype cast (model.to(bfloat16)) must not round the rotation table
        if self.rope.dtype != torch.float32 and self.rope.device.type != "meta":
            self.rope = rope_table(self.config).to(self.rope.device)
        return self

    def reset_rope(self) -> None:
        """Recompute the RoPE table (needed after `to_empty()` from the meta device)."""
        self.rope = rope_table(self.config).to(self.output.weight.device)

    # -- pieces used by the sampler ------------------------------------------------------------

    def check_caption(self, caption_emb: torch.Tensor, caption_mask: torch.Tensor) -> None:
        cfg = self.config
        want = (cfg.cls_token_num, cfg.caption_dim)
        if caption_emb.dim() != 3 or tuple(caption_emb.shape[1:]) != want:
            raise ValueError(
                f"caption embeddings must be (B, {want[0]}, {want[1]}) (cls_token_num, caption_dim), "
                f"got {tuple(caption_emb.shape)}"
            )
        if tuple(caption_mask.shape) != tuple(caption_emb.shape[:2]):
            raise ValueError(
                f"caption mask must be (B, {want[0]}) matching the embeddings, got {tuple(caption_mask.shape)}"
            )

    def check_codes(self, codes: torch.Tensor) -> None:
        cfg = self.config
        if codes.dim() != 2 or codes.shape[1] < 1 or codes.shape[1] > cfg.block_size:
            raise ValueError(f"codes must be (B, L) with 1 <= L <= {cfg.block_size}, got {tuple(codes.shape)}")
        if codes.dtype.is_floating_point:
            raise ValueError(f"codes must be an integer tensor, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= cfg.vocab_size):
            raise ValueError(
                f"codes out of range [0, {cfg.vocab_size}): min {int(codes.min())}, max {int(codes.max())}"
            )

    def uncond_caption(self, batch: int) -> torch.Tensor:
        """The learned unconditional caption, (batch, cls_token_num, caption_dim)."""
        u = self.cls_embedding.uncond_embedding[: self.config.cls_token_num]
        return u.unsqueeze(0).expand(batch, -1, -1)

    def embed_caption(self, caption_emb: torch.Tensor, drop_caption: torch.Tensor | None = None) -> torch.Tensor:
        """Caption features -> (B, T, dim). Rows where drop_caption is True use the uncond caption."""
        if drop_caption is not None:
            u = self.uncond_caption(caption_emb.shape[0]).to(caption_emb.dtype)
            caption_emb = torch.where(drop_caption.to(caption_emb.device).bool()[:, None, None], u, caption_emb)
        return self.cls_embedding.cap_proj(caption_emb)

    def sample_caption_drop(self, batch: int, device=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """(batch,) bool: which captions to drop this step (rate config.class_dropout_prob)."""
        r = torch.rand(batch, generator=generator, device=generator.device if generator else device)
        return (r < self.config.class_dropout_prob).to(device)

    def run_layers(self, x, start: int | torch.Tensor, mask, caches=None, kv_len: int | None = None) -> torch.Tensor:
        """Transformer trunk over positions [start, start + S); returns final hidden states (pre-norm).

        `start` may be a 1-element device tensor (one-token decode step with static shapes)."""
        if isinstance(start, torch.Tensor):
            rope = self.rope.index_select(0, start)
        else:
            rope = self.rope[start : start + x.shape[1]]
        x = self.tok_dropout(x)
        if self.gradient_checkpointing and caches is None and self.training and torch.is_grad_enabled():
            # recompute each block in the backward pass: activation memory of one block, not n_layer
            for layer in self.layers:
                x = torch.utils.checkpoint.checkpoint(layer, x, rope, mask, use_reentrant=False)
            return x
        for i, layer in enumerate(self.layers):
            x = layer(x, rope, mask, None if caches is None else caches[i], start, kv_len)
        return x

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.output(self.norm(h)).float()

    def new_cache(self, batch: int, max_len: int, device, dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        cfg = self.config
        shape = (batch, cfg.kv_heads, max_len, cfg.head_dim)
        return [
            (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
            for _ in range(cfg.n_layer)
        ]

    # -- teacher forcing -----------------------------------------------------------------------

    def forward(
        self,
        caption_emb: torch.Tensor,
        caption_mask: torch.Tensor,
        codes: torch.Tensor,
        *,
        mask: str = "generation",
        drop_caption: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced logits (B, L, V) float32: row i predicts codes[:, i].

        Input sequence = caption (T positions) + codes[:, :-1]; `mask` picks the attention mask
        (see module docstring); `drop_caption` (B,) bool replaces those captions by the learned
        unconditional one (CFG training), keeping their caption mask as upstream does.
        """
        self.check_caption(caption_emb, caption_mask)
        self.check_codes(codes)
        t = self.config.cls_token_num
        cap = self.embed_caption(caption_emb, drop_caption)
        x = torch.cat([cap, self.tok_embeddings(codes[:, :-1]).to(cap.dtype)], dim=1)
        attn = build_attention_mask(caption_mask.to(x.device), x.shape[1], mask)
        h = self.run_layers(x, 0, attn)
        return self.head(h[:, t - 1 :])

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
