"""KV-cached classifier-free-guidance sampler and teacher-forced log-probs for the LlamaGen GPT.

Speed levers (the upstream loop is overhead-bound, ../shared/notes/performance.md):
- one static KV cache per call, preallocated for caption + image positions; each step attends
  over the filled prefix only (SDPA), never over the whole buffer;
- the prefill computes the output head for the last position only;
- per step only the sampled token (and optionally its log-prob) is kept, no (B, V) history;
- bf16 autocast on CUDA by default.

Per-prompt seeds: row i owns a CPU `torch.Generator` seeded with seeds[i]; it draws that row's
L uniforms up front (u[i, step]); every step turns the row's distribution into a token by
inverse-CDF sampling with u[i, step]. A row's tokens therefore depend only on its seed, caption
and settings, never on which other prompts share the batch (up to float rounding differences
between batch shapes in the matmuls, which may flip a token whose CDF boundary lies within ~1e-7
of the uniform).

Log-probs returned by `generate(return_logprobs=True)` are those of the distribution actually
sampled from (after CFG, temperature, top-k/top-p) at the sampled token. With cfg_scale 1,
temperature 1 and no filtering they equal `teacher_forced_logprobs(..., mask="generation")`.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Sequence

import torch
import torch.nn.functional as F

from ranke.models.gpt import GPT, build_attention_mask

log = logging.getLogger("ranke.sampling")


def _autocast(device: torch.device, dtype: torch.dtype | None | str):
    if dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else None
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set logits outside the top-k / nucleus (top-p) set to -inf (the most likely token always survives)."""
    if top_k and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the token that crosses the threshold
        remove[..., 0] = False
        logits = logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))
    return logits


def _sample_from(logprobs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: row b picks the first token whose cumulative prob exceeds u[b]."""
    probs = logprobs.exp()
    cdf = probs.cumsum(-1)
    idx = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(-1), right=True).squeeze(-1)
    # float rounding can push the target past the last bin: fall back to the most likely token
    return torch.where(idx >= probs.shape[-1], probs.argmax(-1), idx)


def _check_inputs(gpt: GPT, caption_emb, caption_mask, seeds, cfg_scale, temperature, top_k, top_p):
    gpt.check_caption(caption_emb, caption_mask)
    if seeds is not None and len(seeds) != caption_emb.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for {caption_emb.shape[0]} captions (one seed per row)")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k < 0 or not (0.0 < top_p <= 1.0):
        raise ValueError(f"need top_k >= 0 and 0 < top_p <= 1, got top_k={top_k}, top_p={top_p}")
    if cfg_scale < 0:
        raise ValueError(f"cfg_scale must be >= 0, got {cfg_scale}")


def _uniforms(seeds: Sequence[int], n: int) -> torch.Tensor:
    """(B, n) float64 uniforms, row b drawn from its own generator seeded with seeds[b]."""
    rows = [torch.rand(n, generator=torch.Generator().manual_seed(int(s)), dtype=torch.float64) for s in seeds]
    return torch.stack(rows) if rows else torch.zeros(0, n, dtype=torch.float64)


def _step_logprobs(logits, b: int, cfg_scale: float, temperature: float, top_k: int, top_p: float):
    """Raw logits of 2B (CFG) or B rows -> log-probs of the sampling distribution (B, V), float32."""
    logits = logits.float()
    if cfg_scale != 1.0:
        cond, uncond = logits[:b], logits[b:]
        logits = uncond + (cond - uncond) * cfg_scale
    if temperature != 1.0:
        logits = logits / temperature
    logits = filter_logits(logits, top_k, top_p)
    return F.log_softmax(logits, dim=-1)


@torch.no_grad()
def generate(
    gpt: GPT,
    caption_emb: torch.Tensor,
    caption_mask: torch.Tensor,
    *,
    seeds: Sequence[int] | torch.Tensor | None = None,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    return_logprobs: bool = False,
    return_probs: bool = False,
    num_tokens: int | None = None,
    amp_dtype: torch.dtype | None | str = "auto",
):
    """Sample image codes (B, L) long with the KV cache.

    caption_emb (B, T, Dc) with T = cls_token_num, caption_mask (B, T) bool. The CFG branch
    (cfg_scale != 1) uses the learned unconditional caption with the same caption mask; guided
    logits = uncond + cfg_scale * (cond - uncond). `greedy` (or temperature 0) takes the argmax.
    Returns codes, plus (B, L) log-probs of the sampled tokens if return_logprobs, plus the full
    (B, L, V) sampling probabilities if return_probs (tests/debug only: memory heavy).
    `amp_dtype`: "auto" = bf16 autocast on CUDA, fp32 elsewhere; None = no autocast.
    """
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.tolist()
    greedy = greedy or temperature == 0
    if seeds is None:
        if not greedy:
            raise ValueError("seeds are required for sampling (one int per caption); only greedy decoding may omit them")
        seeds = [0] * caption_emb.shape[0]
    _check_inputs(gpt, caption_emb, caption_mask, seeds, cfg_scale, temperature, top_k, top_p)
    cfg = gpt.config
    n = cfg.block_size if num_tokens is None else int(num_tokens)
    if not 1 <= n <= cfg.block_size:
        raise ValueError(f"num_tokens must be in [1, {cfg.block_size}], got {n}")
    device = caption_emb.device
    b, t = caption_mask.shape
    mask = caption_mask.to(device).bool()
    u = _uniforms(seeds, n).to(device)

    cond = caption_emb
    use_cfg = cfg_scale != 1.0
    if use_cfg:
        cond = torch.cat([caption_emb, gpt.uncond_caption(b).to(caption_emb.dtype)])
        mask = torch.cat([mask, mask])
    rows = cond.shape[0]

    out = torch.empty(b, n, dtype=torch.long, device=device)
    lps = torch.empty(b, n, dtype=torch.float32, device=device) if return_logprobs else None
    probs_all = torch.empty(b, n, cfg.vocab_size, device=device) if return_probs else None

    temp = temperature if temperature > 0 else 1.0  # temperature 0 = greedy over the T=1 distribution

    def choose(logits, i):
        lp = _step_logprobs(logits, b, cfg_scale, temp, top_k, top_p)
        tok = lp.argmax(-1) if greedy else _sample_from(lp, u[:, i])
        out[:, i] = tok
        if lps is not None:
            lps[:, i] = lp.gather(-1, tok[:, None]).squeeze(-1)
        if probs_all is not None:
            probs_all[:, i] = lp.exp()
        return tok

    with _autocast(device, amp_dtype):
        x = gpt.embed_caption(cond)
        caches = gpt.new_cache(rows, t + n - 1, device, x.dtype)
        prefill_mask = build_attention_mask(mask, t, "generation")
        h = gpt.run_layers(x, 0, prefill_mask, caches)
        tok = choose(gpt.head(h[:, -1]), 0)
        # decode mask: real caption keys + every image key written so far
        key_mask = torch.ones(rows, 1, 1, t + n - 1, dtype=torch.bool, device=device)
        key_mask[:, 0, 0, :t] = mask
        for i in range(1, n):
            pos = t + i - 1
            feed = torch.cat([tok, tok]) if use_cfg else tok
            x = gpt.tok_embeddings(feed)[:, None]
            h = gpt.run_layers(x, pos, key_mask[..., : pos + 1], caches)
            tok = choose(gpt.head(h[:, -1]), i)

    result = [out]
    if return_logprobs:
        result.append(lps)
    if return_probs:
        result.append(probs_all)
    return out if len(result) == 1 else tuple(result)


@torch.no_grad()
def generate_uncached(
    gpt: GPT,
    caption_emb: torch.Tensor,
    caption_mask: torch.Tensor,
    *,
    seeds: Sequence[int] | None = None,
    cfg_scale: float = 1.0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    greedy: bool = False,
    num_tokens: int | None = None,
) -> torch.Tensor:
    """Reference sampler: recompute the full teacher-forced forward at every step (no cache).

    Same seeds -> same uniforms -> same tokens as `generate` (tests; the bench's baseline).
    """
    greedy = greedy or temperature == 0
    if seeds is None:
        seeds = [0] * caption_emb.shape[0]
    _check_inputs(gpt, caption_emb, caption_mask, seeds, cfg_scale, temperature, top_k, top_p)
    n = gpt.config.block_size if num_tokens is None else int(num_tokens)
    b = caption_emb.shape[0]
    u = _uniforms(seeds, n).to(caption_emb.device)
    use_cfg = cfg_scale != 1.0
    emb, mask = caption_emb, caption_mask
    if use_cfg:
        emb = torch.cat([caption_emb, gpt.uncond_caption(b).to(caption_emb.dtype)])
        mask = torch.cat([caption_mask, caption_mask])
    codes = torch.zeros(b, n, dtype=torch.long, device=caption_emb.device)
    for i in range(n):
        # forward over codes[:, :i+1]: its last row predicts token i (the dummy code i is not read)
        prefix = codes[:, : i + 1]
        feed = torch.cat([prefix, prefix]) if use_cfg else prefix
        logits = gpt(emb, mask, feed, mask="generation")[:, -1]
        lp = _step_logprobs(logits, b, cfg_scale, temperature if temperature > 0 else 1.0, top_k, top_p)
        codes[:, i] = lp.argmax(-1) if greedy else _sample_from(lp, u[:, i])
    return codes


def teacher_forced_logprobs(
    gpt: GPT,
    caption_emb: torch.Tensor,
    caption_mask: torch.Tensor,
    codes: torch.Tensor,
    *,
    mask: str = "generation",
    temperature: float = 1.0,
) -> torch.Tensor:
    """(B, L) log-probs of `codes` under the policy (no CFG), differentiable.

    mask="generation" (default) scores exactly the sampling distribution; "ranke" is the official
    RankE scoring mask (bidirectional caption block), kept to reproduce the official runs.
    """
    gpt.check_codes(codes)
    logits = gpt(caption_emb, caption_mask, codes.long(), mask=mask)
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, codes.long().unsqueeze(-1)).squeeze(-1)
