"""KV-cached classifier-free-guidance sampler and teacher-forced log-probs for the LlamaGen GPT.

Speed levers (the upstream loop is overhead-bound, ../shared/notes/performance.md):
- one static KV cache per call, preallocated for caption + image positions; each step attends
  over the filled prefix only (SDPA) - exactly on CPU, rounded up to a 64-slot bucket on CUDA;
- the prefill computes the output head for the last position only;
- per step only the sampled token (and optionally its log-prob) is kept, no (B, V) history;
- on CUDA: bf16 weights (a cached cast copy of the policy, refreshed in place every call) and
  the decode step replayed from CUDA graphs, one per attention bucket, captured on first use
  and checked against the eager step (a mismatch or capture error falls back to eager, with a
  warning). The graphs and buffers are kept for the next call with the same shapes/settings;
  `release_sampler_cache()` frees them (e.g. before a policy-update phase).
  NOTE: the CUDA-graph path could only be exercised on CPU in emulation (same buffers, buckets
  and reuse, no capture); it has not yet run on a GPU.

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

import logging
from typing import Sequence

import torch
import torch.nn.functional as F

from ranke.models.gpt import GPT, build_attention_mask

log = logging.getLogger("ranke.sampling")


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
    target = (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
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


class _Run:
    """Static buffers of one sampling configuration: KV cache, uniforms, outputs, the fed token and
    its position as device tensors. One decode step reads and writes only these, so it can be
    captured once in a CUDA graph per attention-length bucket and replayed."""

    def __init__(self, model: GPT, key: tuple, *, b, n, t, rows, device, dtype, cfg_scale, temp, top_k, top_p,
                 greedy, want_lp, want_probs):
        self.model, self.key = model, key
        self.b, self.n, self.t = b, n, t
        self.cfg_scale, self.temp, self.top_k, self.top_p, self.greedy = cfg_scale, temp, top_k, top_p, greedy
        slots = t + n - 1
        self.caches = model.new_cache(rows, slots, device, dtype)
        self.key_mask = torch.ones(rows, 1, 1, slots, dtype=torch.bool, device=device)
        self.slots = torch.arange(slots, device=device)
        self.u = torch.zeros(b, n, dtype=torch.float64, device=device)
        self.out = torch.zeros(b, n, dtype=torch.long, device=device)
        self.lps = torch.zeros(b, n, device=device) if want_lp else None
        self.probs = torch.zeros(b, n, model.config.vocab_size, device=device) if want_probs else None
        self.tok = torch.zeros(b, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)  # position of the token fed
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None
        self.graphs_ok = True

    def choose(self, logits: torch.Tensor, step: torch.Tensor) -> None:
        """Guided / filtered distribution -> token for image position `step` (1-element tensor)."""
        lp = _step_logprobs(logits, self.b, self.cfg_scale, self.temp, self.top_k, self.top_p)
        if self.greedy:
            tok = lp.argmax(-1)
        else:
            tok = _sample_from(lp, self.u.index_select(1, step).squeeze(1))
        self.out.index_copy_(1, step, tok[:, None])
        if self.lps is not None:
            self.lps.index_copy_(1, step, lp.gather(-1, tok[:, None]))
        if self.probs is not None:
            self.probs.index_copy_(1, step, lp.exp()[:, None])
        self.tok.copy_(tok)

    def decode_step(self, kv_len: int) -> None:
        m = self.model
        feed = torch.cat([self.tok, self.tok]) if self.cfg_scale != 1.0 else self.tok
        x = m.tok_embeddings(feed)[:, None]
        # real caption keys and image keys written so far (slots above pos are stale or empty)
        keys = self.key_mask[..., :kv_len] & (self.slots[:kv_len] <= self.pos)
        h = m.run_layers(x, self.pos, keys, self.caches, kv_len)
        self.choose(m.head(h[:, -1]), self.pos - (self.t - 1))

    def graphed_step(self, kv_len: int) -> None:
        """Replay (capturing on first use) the decode step for this bucket; eager if capture fails.

        The first use of a bucket runs the step eagerly on a side stream (the warm-up CUDA graphs
        need), captures, replays, and checks that the replay picked the same tokens as the eager
        run; any failure disables graphs for this run with a warning (results stay eager-exact).
        """
        g = self.graphs.get(kv_len)
        if g is not None:
            g.replay()
            return
        saved = self.tok.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self.decode_step(kv_len)  # eager reference result for this step
        torch.cuda.current_stream().wait_stream(stream)
        eager_tok = self.tok.clone()
        try:
            self.tok.copy_(saved)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=self.pool):
                self.decode_step(kv_len)
            g.replay()
            if not torch.equal(self.tok, eager_tok):
                raise RuntimeError("CUDA-graph replay chose different tokens than the eager step")
        except Exception as e:  # capture problems must never change results
            log.warning("CUDA graphs disabled for this sampler (%s: %s); running eagerly", type(e).__name__, e)
            self.graphs_ok = False
            self.tok.copy_(saved)
            self.decode_step(kv_len)
            return
        self.pool = g.pool()
        self.graphs[kv_len] = g


# one cached run (its buffers and graphs) for repeated calls with the same shapes and settings
_CACHE: dict[str, object] = {}
_BUCKET = 64  # attention-length bucket of the graphed decode step (slots attended beyond pos are masked)
# test hook: on CPU, run the bucketed, buffer-reusing path that CUDA graphs replay (without capture)
_EMULATE_GRAPH_PATH = False


def release_sampler_cache() -> None:
    """Free the cached sampler buffers / CUDA graphs / bf16 weight copy (e.g. before a training phase)."""
    _CACHE.clear()


def _inference_model(gpt: GPT, dtype: torch.dtype | None) -> GPT:
    """`gpt` itself, or a cached copy with weights cast to `dtype` (refreshed in place each call,
    so captured CUDA graphs stay valid): bf16 weights as upstream's sampler, no autocast overhead."""
    if dtype is None or all(p.dtype == dtype for p in gpt.parameters()):
        return gpt
    entry = _CACHE.get("model")
    if entry is None or entry[0] is not gpt or entry[2] != dtype:
        with torch.device("meta"):
            copy = GPT(gpt.config)
        sd = {k: v.detach().to(dtype) if v.is_floating_point() else v.detach().clone()
              for k, v in gpt.state_dict().items()}
        copy.load_state_dict(sd, assign=True)
        copy.rope = gpt.rope.clone()
        copy.eval().requires_grad_(False)
        _CACHE.clear()  # runs captured against an older copy are stale
        _CACHE["model"] = (gpt, copy, dtype)
        return copy
    copy = entry[1]
    for dst, src in zip(copy.state_dict().values(), gpt.state_dict().values()):
        dst.copy_(src)
    return copy


def _resolve_dtype(device: torch.device, amp_dtype) -> torch.dtype | None:
    if amp_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return None if amp_dtype in (None, torch.float32) else amp_dtype


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
    cuda_graphs: bool | None = None,
):
    """Sample image codes (B, L) long with the KV cache.

    caption_emb (B, T, Dc) with T = cls_token_num, caption_mask (B, T) bool. The CFG branch
    (cfg_scale != 1) uses the learned unconditional caption with the same caption mask; guided
    logits = uncond + cfg_scale * (cond - uncond). `greedy` (or temperature 0) takes the argmax.
    Returns codes, plus (B, L) log-probs of the sampled tokens if return_logprobs, plus the full
    (B, L, V) sampling probabilities if return_probs (tests/debug only: memory heavy).
    `amp_dtype`: "auto" = bf16 weights on CUDA (a cached cast copy of the policy), fp32 elsewhere;
    None = the model's own dtype. `cuda_graphs` (default: on for CUDA) replays the decode step
    from CUDA graphs, reusing the buffers of the previous call with the same shapes/settings
    (release_sampler_cache() frees them).
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
    use_graphs = device.type == "cuda" if cuda_graphs is None else bool(cuda_graphs and device.type == "cuda")
    static = use_graphs or _EMULATE_GRAPH_PATH
    model = _inference_model(gpt, _resolve_dtype(device, amp_dtype))
    dtype = next(model.parameters()).dtype

    mask = caption_mask.to(device).bool()
    cond = caption_emb.to(dtype)
    use_cfg = cfg_scale != 1.0
    if use_cfg:
        cond = torch.cat([cond, model.uncond_caption(b).to(dtype)])
        mask = torch.cat([mask, mask])
    rows = cond.shape[0]
    temp = temperature if temperature > 0 else 1.0  # temperature 0 = greedy over the T=1 distribution

    settings = dict(b=b, n=n, t=t, rows=rows, device=device, dtype=dtype, cfg_scale=float(cfg_scale), temp=temp,
                    top_k=int(top_k), top_p=float(top_p), greedy=greedy, want_lp=return_logprobs,
                    want_probs=return_probs)
    key = (id(model), tuple(p.data_ptr() for p in model.parameters()), tuple(sorted(settings.items(), key=str)))
    run = _CACHE.get("run") if static else None
    if run is None or run.key != key or run.model is not model:
        run = _Run(model, key, **settings)
        if static:
            _CACHE["run"] = run
    run.u.copy_(_uniforms(seeds, n))
    run.key_mask[:, 0, 0, :t] = mask

    was_training = model.training
    model.eval()  # sampling never drops out, whatever mode the caller's policy is in
    try:
        x = model.embed_caption(cond)
        h = model.run_layers(x, 0, build_attention_mask(mask, t, "generation"), run.caches)
        run.choose(model.head(h[:, -1]), torch.zeros(1, dtype=torch.long, device=device))
        slots = t + n - 1
        for i in range(1, n):
            pos = t + i - 1
            run.pos.fill_(pos)
            kv_len = min(slots, -(-(pos + 1) // _BUCKET) * _BUCKET) if static else pos + 1
            if use_graphs and run.graphs_ok:
                run.graphed_step(kv_len)
            else:
                run.decode_step(kv_len)
    finally:
        model.train(was_training)

    result = [run.out.clone()]
    if return_logprobs:
        result.append(run.lps.clone())
    if return_probs:
        result.append(run.probs.clone())
    return result[0] if len(result) == 1 else tuple(result)


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


# Public names for the sampling primitives other backbones reuse (ranke.models.janus), so that a
# Janus sample follows exactly the same seeding and CFG / temperature / top-k / top-p rules.
per_row_uniforms = _uniforms
sampling_logprobs = _step_logprobs
sample_from_uniform = _sample_from
