"""Janus-Pro backbone through transformers (`JanusForConditionalGeneration`), from a local directory.

The same interface as `LlamaGenBackbone` (ranke/models/backbone.py), so sampling, the training
rounds and scoring do not know which backbone they run:

    text    JanusPromptEncoder (the JanusProcessor: chat template + tokenizer), None if not loaded
    policy  JanusPolicy: the generation path only -- the Llama trunk (with its text embedding
            table), `generation_embeddings`, `generation_aligner`, `generation_head`.
    vq      the JanusVQVAE, taken out of the Janus model object.

What is left out of `policy` and why: the understanding tower (`vision_model`, `aligner`) never
sees an input during text-to-image generation, so it gets no gradient (the official RankE Janus
trainer optimises "all non-VQ parameters" and those two get no grads); the text `lm_head` is tied
to the text embedding table and never used for image tokens. Dropping them keeps deep copies of
the policy (KL reference, EMA) and its optimiser state to what is trained. The VQ is a separate
module so that copying/optimising the policy never touches it, and the decoder co-evolution
(`decoder_parameters`) sees only `post_quant_conv` + `decoder`.

Prompt formatting follows the official Janus sampler: one user turn, empty system prompt, the
chat template's assistant prefix, then the image-start tag; batches are left-padded. The CFG
unconditional row is the same sequence with every token strictly between the first valid token
(BOS) and the final image-start tag replaced by the pad token (attended, as in the original).

Two upstream behaviours are replaced here on purpose:
  * `JanusVQVAE.encode` does a plain Euclidean nearest neighbour on raw latents; the original
    Janus (and LlamaGen) tokenizer l2-normalises both the `quant_conv` output and the codebook
    rows (cosine lookup). `tokenize` implements the original behaviour.
  * `JanusForConditionalGeneration.forward` returns text logits only; image-token logits come
    from `generation_head` on the trunk's hidden states, in our own KV-cached sampling loop
    (per-row seeded generators, which HF's `generate` cannot do).
"""

from __future__ import annotations

import copy
import inspect
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ranke.io import atomic_path, save_torch
from ranke.sampling import sample_from_uniform, sampling_logprobs, per_row_uniforms

log = logging.getLogger("ranke.models.janus")

DTYPES = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32,
          "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


# ----------------------------------------------------------------------------------------------
# Conditioning


@dataclass
class JanusCond:
    """Left-padded prompt token ids (each row ends with the image-start tag) + validity mask."""

    ids: torch.Tensor   # (B, T) long
    mask: torch.Tensor  # (B, T) bool, False on left padding

    def __len__(self) -> int:
        return self.ids.shape[0]

    @property
    def emb(self) -> torch.Tensor:
        """The conditioning tensor under Cond's name, so generic `policy(cond.emb, cond.mask, codes)`
        calls work with either backbone (for Janus it holds token ids, not features)."""
        return self.ids

    def repeat_interleave(self, g: int) -> "JanusCond":
        return JanusCond(self.ids.repeat_interleave(g, dim=0), self.mask.repeat_interleave(g, dim=0))

    def index(self, idx) -> "JanusCond":
        return JanusCond(self.ids[idx], self.mask[idx])

    def to(self, device) -> "JanusCond":
        return JanusCond(self.ids.to(device), self.mask.to(device))

    @staticmethod
    def cat(conds: Sequence["JanusCond"]) -> "JanusCond":
        """Concatenate batches, re-padding on the left to the longest (masked pads are never read)."""
        T = max(c.ids.shape[1] for c in conds)
        ids = [F.pad(c.ids, (T - c.ids.shape[1], 0), value=0) for c in conds]
        mask = [F.pad(c.mask, (T - c.mask.shape[1], 0), value=False) for c in conds]
        return JanusCond(torch.cat(ids), torch.cat(mask))


def unconditional_ids(ids: torch.Tensor, mask: torch.Tensor, pad_id: int) -> torch.Tensor:
    """The CFG null prompt: keep the first valid token and the final image-start tag, pad the rest.

    Same construction as the official sampler (`tokens[1:-1] = pad_id`), applied per row after
    left padding.
    """
    T = ids.shape[1]
    first = mask.long().argmax(dim=1, keepdim=True)  # first valid position per row
    pos = torch.arange(T, device=ids.device).unsqueeze(0)
    replace = (pos > first) & (pos < T - 1)
    return ids.masked_fill(replace, pad_id)


class JanusPromptEncoder:
    """Caption -> Janus image-generation prompt ids, with the model's own processor."""

    def __init__(self, processor, device):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.device = torch.device(device)
        self.pad_id = self.tokenizer.pad_token_id
        self.boi_id = self.tokenizer.convert_tokens_to_ids(processor.image_start_token)
        if self.pad_id is None:
            raise ValueError("the Janus tokenizer has no pad token (needed for left padding and CFG)")

    def format(self, caption: str) -> str:
        messages = [{"role": "user", "content": [{"type": "text", "text": caption}]}]
        # The template's generation prompt is the empty assistant turn "<|Assistant|>:", exactly
        # the official sft format with an empty system prompt.
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def encode(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = [self.format(c) for c in captions]
        # generation_mode="image" appends the image-start tag; the tokenizer adds BOS.
        enc = self.processor(text=prompts, generation_mode="image", padding=True,
                             padding_side="left", return_tensors="pt")
        ids = enc["input_ids"].to(self.device)
        mask = enc["attention_mask"].to(self.device).bool()
        if not bool((ids[:, -1] == self.boi_id).all()):
            raise ValueError("Janus prompts must end with the image-start tag (left padding expected)")
        return ids, mask


# ----------------------------------------------------------------------------------------------
# The policy: Janus's image-generation path


def _cache_kwarg(model: nn.Module) -> str:
    # transformers >= 5 renamed `past_key_values` to `cache` (the old name is deprecated).
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _new_cache(config):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers 4.x
        return DynamicCache()


class JanusPolicy(nn.Module):
    """Llama trunk + image-token embedding/aligner/head. Submodule names = HF `model.*` names."""

    def __init__(self, language_model: nn.Module, generation_embeddings: nn.Module,
                 generation_aligner: nn.Module, generation_head: nn.Module):
        super().__init__()
        self.language_model = language_model
        self.generation_embeddings = generation_embeddings
        self.generation_aligner = generation_aligner
        self.generation_head = generation_head
        self._cache_kw = _cache_kwarg(language_model)
        self._grad_ckpt = False

    @property
    def dtype(self) -> torch.dtype:
        return self.generation_embeddings.weight.dtype

    def embed_text(self, ids: torch.Tensor) -> torch.Tensor:
        return self.language_model.get_input_embeddings()(ids)

    def embed_image(self, codes: torch.Tensor) -> torch.Tensor:
        return self.generation_aligner(self.generation_embeddings(codes))

    def image_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.generation_head(hidden)

    def trunk(self, inputs_embeds, attention_mask, position_ids, cache=None) -> torch.Tensor:
        """Final-norm hidden states of the Llama trunk; `cache` (if given) is updated in place."""
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        # transformers only checkpoints layers in train mode, while the rounds score log-probs in
        # eval mode (dropout off): switch the trunk to train mode for that forward. Numerically
        # the same, since Janus's Llama has attention dropout 0 (checked when enabling).
        ckpt = self._grad_ckpt and cache is None and torch.is_grad_enabled() and not self.language_model.training
        if ckpt:
            self.language_model.train()
        try:
            out = self.language_model(inputs_embeds=inputs_embeds, attention_mask=attention_mask.long(),
                                      position_ids=position_ids, **kwargs)
        finally:
            if ckpt:
                self.language_model.train(False)
        return out.last_hidden_state

    def forward(self, ids: torch.Tensor, prompt_mask: torch.Tensor, codes: torch.Tensor, *,
                mask: str = "generation") -> torch.Tensor:
        """Teacher-forced image-token logits (B, L, V): position i predicts codes[:, i].

        Trunk on [prompt embeddings ; aligner(gen_embed(codes[:, :-1]))] with the prompt's padding
        mask and position ids = cumsum(mask) - 1, exactly as in sampling. The official Janus
        scorer uses this same causal mask, so "generation" and "ranke" coincide here.
        """
        if mask not in ("generation", "ranke"):
            raise ValueError(f"mask must be 'generation' or 'ranke', got {mask!r}")
        B, T = ids.shape
        L = codes.shape[1]
        x = torch.cat([self.embed_text(ids), self.embed_image(codes[:, :-1])], dim=1)
        attn = torch.cat([prompt_mask.long(), prompt_mask.new_ones(B, L - 1, dtype=torch.long)], dim=1)
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        return self.image_logits(self.trunk(x, attn, pos)[:, T - 1:])

    def new_cache(self):
        return _new_cache(self.language_model.config)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each Llama layer in the backward pass of teacher-forced forwards."""
        if float(getattr(self.language_model.config, "attention_dropout", 0.0) or 0.0) != 0.0:
            raise ValueError("gradient checkpointing here runs the trunk in train mode: needs attention_dropout 0")
        lm = self.language_model
        if hasattr(lm, "activation_checkpointing_enable"):  # transformers >= 5 (the old name warns)
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self._grad_ckpt = True


# ----------------------------------------------------------------------------------------------
# The VQ: original (l2-normalised) lookup, differentiable decoding


def nearest_codes_cosine(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Original Janus/LlamaGen lookup: l2-normalise latents and codebook rows, nearest = max cosine.

    z (B, C, h, w), codebook (K, C) -> LongTensor (B, h*w), row-major (the AR order).
    """
    zf = F.normalize(z.float().flatten(2).transpose(1, 2), dim=-1)  # (B, h*w, C)
    cb = F.normalize(codebook.float(), dim=-1)
    return torch.einsum("bnc,kc->bnk", zf, cb).argmax(dim=-1)


def codes_to_latents(vq: nn.Module, codes: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w) codes -> (B, C, h, w) l2-normalised codebook rows (as upstream decoding)."""
    cb = F.normalize(vq.quantize.embedding.weight, dim=-1)
    z = cb[codes.reshape(codes.shape[0], -1)]
    return z.view(codes.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()


def decode_latents(vq: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """post_quant_conv + decoder; differentiable w.r.t. both (output not clamped)."""
    return vq.decoder(vq.post_quant_conv(z))


# ----------------------------------------------------------------------------------------------
# The backbone


class JanusBackbone:
    """Janus-Pro behind the backbone interface used by generate / train / score."""

    name = "janus"

    def __init__(self, policy: JanusPolicy, vq: nn.Module, text: JanusPromptEncoder | None, *,
                 grid: tuple[int, int], image_size: int, pad_id: int, source: str, device):
        self.policy = policy
        self.vq = vq
        self.text = text
        self.grid = grid
        self.image_size = image_size
        self.codebook_size = vq.quantize.embedding.weight.shape[0]
        self.pad_id = pad_id
        self.source = source
        self.vq_file: str | None = None
        self.device = torch.device(device)

    @property
    def seq_len(self) -> int:
        return self.grid[0] * self.grid[1]

    # ---- loading ------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, assets: dict, image_size: int, device, *, load_text: bool = True) -> "JanusBackbone":
        """Load `assets.janus.path` (a transformers Janus directory) with local files only."""
        from transformers import JanusForConditionalGeneration, JanusProcessor

        jcfg = assets.get("janus")
        if not jcfg or not jcfg.get("path"):
            raise KeyError("backbone 'janus' needs config key assets.janus.path")
        path = Path(jcfg["path"])
        if not path.is_dir():
            raise FileNotFoundError(f"assets.janus.path: Janus model directory not found: {path}")
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"assets.janus.path: no config.json in {path}")
        if not any((path / f).exists() for f in WEIGHT_FILES):
            raise FileNotFoundError(f"assets.janus.path: no weights ({', '.join(WEIGHT_FILES)}) in {path}")
        dtype_name = jcfg.get("dtype", "bfloat16")
        if dtype_name not in DTYPES:
            raise ValueError(f"assets.janus.dtype must be one of {sorted(DTYPES)}, got {dtype_name!r}")
        dtype = DTYPES[dtype_name]
        device = torch.device(device)

        kwargs = {"local_files_only": True, "attn_implementation": jcfg.get("attn_implementation", "sdpa")}
        kwargs["dtype" if _transformers_major() >= 5 else "torch_dtype"] = dtype
        model = JanusForConditionalGeneration.from_pretrained(path, **kwargs)
        backbone = cls.from_model(model, image_size, device, source=str(path))
        # the file that identifies the VQ weights (tokens record its sha256)
        backbone.vq_file = str(next(path / f for f in WEIGHT_FILES if (path / f).exists()))

        if load_text:
            proc_path = Path(jcfg.get("processor") or path)
            if not any((proc_path / f).exists() for f in ("processor_config.json", "tokenizer_config.json")):
                raise FileNotFoundError(f"assets.janus.processor: no processor/tokenizer files in {proc_path}")
            processor = JanusProcessor.from_pretrained(proc_path, local_files_only=True)
            backbone.text = JanusPromptEncoder(processor, device)
            if backbone.pad_id is not None and backbone.text.pad_id != backbone.pad_id:
                log.warning("tokenizer pad id %s != model pad id %s; using the tokenizer's (CFG null prompt)",
                            backbone.text.pad_id, backbone.pad_id)
            backbone.pad_id = backbone.text.pad_id
        log.info("Janus backbone from %s: %s, grid %s, codebook %d, policy %.1fM params, VQ %.1fM params",
                 path, dtype, backbone.grid, backbone.codebook_size,
                 sum(p.numel() for p in backbone.policy.parameters()) / 1e6,
                 sum(p.numel() for p in backbone.vq.parameters()) / 1e6)
        return backbone

    @classmethod
    def from_model(cls, model, image_size: int, device, *, source: str = "<in-memory>") -> "JanusBackbone":
        """Split a JanusForConditionalGeneration into policy + VQ (the rest is dropped)."""
        m = model.model
        vq = m.vqmodel
        grid = tuple(vq.quantize.quant_state_dims)
        downsample = 2 ** (len(vq.config.channel_multiplier) - 1)
        if grid[0] * downsample != image_size or grid[1] * downsample != image_size:
            raise ValueError(f"image_size {image_size} does not match the Janus VQ: grid {grid} x "
                             f"downsample {downsample} = {grid[0] * downsample} px")
        n_tokens = m.vision_model.config.num_image_tokens
        if n_tokens != grid[0] * grid[1]:
            raise ValueError(f"Janus config: num_image_tokens {n_tokens} != grid {grid}")
        policy = JanusPolicy(m.language_model, m.generation_embeddings, m.generation_aligner,
                             m.generation_head).to(device)
        policy.requires_grad_(True)
        vq = vq.to(device)
        freeze_vq_except_decoder(vq)
        pad_id = model.config.text_config.pad_token_id
        return cls(policy, vq, None, grid=grid, image_size=image_size, pad_id=pad_id,
                   source=source, device=device)

    # ---- prompts / sampling / log-probs --------------------------------------------------------

    def encode_prompts(self, captions: list[str]) -> JanusCond:
        if self.text is None:
            raise RuntimeError("backbone loaded with load_text=False: no prompt processor")
        return JanusCond(*self.text.encode(list(captions)))

    @torch.no_grad()
    def sample(self, policy: JanusPolicy, cond: JanusCond, *, seeds, cfg_scale: float = 1.0,
               temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
               return_logprobs: bool = False):
        """KV-cached image-token sampling -> codes (B, h*w) [, log-probs (B, h*w)].

        CFG doubles the batch (conditional rows, then unconditional rows) and mixes logits as
        l_u + s (l_c - l_u) before temperature / top-k / top-p (temperature 0 = greedy). Row i
        draws from its own generator seeded with seeds[i], so a sample does not depend on the batch.
        `return_logprobs` gives log-probs of the drawn tokens under the distribution actually
        sampled from (equal to `logprobs` when cfg_scale=1, temperature=1, no filtering).
        """
        device = self.device
        ids, mask = cond.ids.to(device), cond.mask.to(device)
        B, L = ids.shape[0], self.seq_len
        if isinstance(seeds, torch.Tensor):
            seeds = seeds.tolist()
        if len(seeds) != B:
            raise ValueError(f"got {len(seeds)} seeds for {B} prompts (one seed per row)")
        if temperature < 0 or top_k < 0 or not (0.0 < top_p <= 1.0):
            raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1; got "
                             f"{temperature}, {top_k}, {top_p}")
        # Same seeding as ranke.sampling: row i's L uniforms come from its own CPU generator and
        # pick tokens by inverse CDF, so a row never depends on the rest of the batch.
        u = per_row_uniforms(seeds, L).to(device)
        greedy = temperature == 0
        temp = temperature if temperature > 0 else 1.0
        use_cfg = cfg_scale != 1.0
        if use_cfg:
            ids = torch.cat([ids, unconditional_ids(ids, mask, self.pad_id)])
            mask = torch.cat([mask, mask])

        attn = mask.long()
        pos = (attn.cumsum(1) - 1).clamp(min=0)
        next_pos = attn.sum(1, keepdim=True)  # position of the first image token
        cache = policy.new_cache()
        hidden = policy.trunk(policy.embed_text(ids), attn, pos, cache)[:, -1]

        codes = torch.empty(B, L, dtype=torch.long, device=device)
        logps = torch.empty(B, L, dtype=torch.float32, device=device) if return_logprobs else None
        for t in range(L):
            lp = sampling_logprobs(policy.image_logits(hidden), B, cfg_scale, temp, top_k, top_p)
            nxt = lp.argmax(-1) if greedy else sample_from_uniform(lp, u[:, t])
            codes[:, t] = nxt
            if logps is not None:
                logps[:, t] = lp.gather(1, nxt[:, None]).squeeze(1)
            if t == L - 1:
                break
            step_in = torch.cat([nxt, nxt]) if use_cfg else nxt
            attn = torch.cat([attn, attn.new_ones(attn.shape[0], 1)], dim=1)
            hidden = policy.trunk(policy.embed_image(step_in[:, None]), attn, next_pos, cache)[:, -1]
            next_pos = next_pos + 1
        return (codes, logps) if return_logprobs else codes

    def logprobs(self, policy: JanusPolicy, cond: JanusCond, codes: torch.Tensor, *,
                 mask: str = "generation") -> torch.Tensor:
        """Teacher-forced log p(codes | prompt) per token, (B, h*w), differentiable (no CFG).

        See JanusPolicy.forward for the inputs, mask and positions (identical to sampling).
        """
        device = self.device
        ids, pmask = cond.ids.to(device), cond.mask.to(device)
        codes = codes.to(device).long()
        if codes.shape != (ids.shape[0], self.seq_len):
            raise ValueError(f"codes must be (B, {self.seq_len}), got {tuple(codes.shape)}")
        logits = policy(ids, pmask, codes, mask=mask).float()
        return logits.log_softmax(-1).gather(-1, codes[..., None]).squeeze(-1)

    # ---- VQ --------------------------------------------------------------------------------------

    @torch.no_grad()
    def tokenize(self, vq: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) at `image_size` -> codes (B, h*w), original cosine lookup."""
        if images.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"tokenize expects {self.image_size}px images, got {tuple(images.shape[-2:])}")
        dtype = vq.quant_conv.weight.dtype
        z = vq.quant_conv(vq.encoder(images.to(self.device, dtype)))
        return nearest_codes_cosine(z, vq.quantize.embedding.weight)

    def decode(self, vq: nn.Module, codes: torch.Tensor) -> torch.Tensor:
        """Codes (B, h*w) -> images (B, 3, H, W) in [-1, 1], clamped; differentiable w.r.t. the decoder."""
        return self.decode_unclamped(vq, codes).clamp(-1, 1)

    def decode_unclamped(self, vq: nn.Module, codes: torch.Tensor) -> torch.Tensor:
        """As `decode` without the clamp (the GT-reconstruction loss uses raw decoder output)."""
        z = codes_to_latents(vq, codes.to(self.device), self.grid)
        return decode_latents(vq, z).float()

    def decode_soft(self, vq: nn.Module, topk_probs: torch.Tensor, topk_idx: torch.Tensor) -> torch.Tensor:
        """LASC: decode the probability-weighted mix of the top-k (l2-normalised) codebook rows.

        topk_probs, topk_idx (B, h*w, k); probabilities renormalised over the k entries, as in
        LlamaGenBackbone.decode_soft. Returns images (B, 3, H, W) clamped to [-1, 1].
        """
        if topk_probs.shape != topk_idx.shape or topk_idx.dim() != 3:
            raise ValueError(f"topk_probs and topk_idx must both be (B, L, k), got {tuple(topk_probs.shape)} "
                             f"and {tuple(topk_idx.shape)}")
        cb = F.normalize(vq.quantize.embedding.weight, dim=-1)
        w = topk_probs.float() / topk_probs.float().sum(-1, keepdim=True).clamp_min(1e-12)
        z = (w.to(cb.dtype).unsqueeze(-1) * cb[topk_idx.long().to(cb.device)]).sum(-2)  # (B, L, C)
        B = z.shape[0]
        z = z.view(B, self.grid[0], self.grid[1], -1).permute(0, 3, 1, 2).contiguous()
        return decode_latents(vq, z).float().clamp(-1, 1)

    def decoder_parameters(self, vq: nn.Module) -> list[nn.Parameter]:
        """post_quant_conv + decoder; puts the VQ in train mode (JanusVQVAE.__init__ calls eval())."""
        vq.train()
        params = [*vq.post_quant_conv.parameters(), *vq.decoder.parameters()]
        for p in params:
            p.requires_grad_(True)
        return params

    # ---- checkpoints -----------------------------------------------------------------------------

    def save_policy(self, policy: JanusPolicy, path) -> None:
        save_torch({"model": policy.state_dict(), "config": {"backbone": "janus", "source": self.source,
                                                          "part": "policy"}}, path)

    def save_vq(self, vq: nn.Module, path) -> None:
        save_torch({"model": vq.state_dict(), "config": {"backbone": "janus", "source": self.source,
                                                      "part": "vq"}}, path)

    def load_policy(self, path) -> JanusPolicy:
        """A copy of the base policy with weights from `path` (strict)."""
        policy = copy.deepcopy(self.policy)
        policy.load_state_dict(_read_state_dict(path, "policy"), strict=True)
        return policy

    def load_vq(self, path) -> nn.Module:
        vq = copy.deepcopy(self.vq)
        vq.load_state_dict(_read_state_dict(path, "vq"), strict=True)
        freeze_vq_except_decoder(vq)
        return vq

    def export_pretrained(self, policy: JanusPolicy, vq: nn.Module, out_dir) -> None:
        """Write a full transformers Janus directory (base model with `policy`/`vq` weights swapped in).

        For use outside this workflow (HF / official samplers); reloads the base from `source`.
        """
        from transformers import JanusForConditionalGeneration, JanusProcessor

        kwargs = {"dtype" if _transformers_major() >= 5 else "torch_dtype": policy.dtype}
        model = JanusForConditionalGeneration.from_pretrained(self.source, local_files_only=True, **kwargs)
        # policy keys are JanusModel's own names; the understanding tower keeps its base weights
        model.model.load_state_dict({**model.model.state_dict(), **policy.state_dict(),
                                     **{f"vqmodel.{k}": v for k, v in vq.state_dict().items()}})
        with atomic_path(out_dir, is_dir=True) as tmp:
            model.save_pretrained(tmp)
            JanusProcessor.from_pretrained(self.source, local_files_only=True).save_pretrained(tmp)


def freeze_vq_except_decoder(vq: nn.Module) -> None:
    """Encoder, quant_conv and codebook never train; post_quant_conv + decoder may."""
    vq.requires_grad_(False)
    vq.post_quant_conv.requires_grad_(True)
    vq.decoder.requires_grad_(True)


def _read_state_dict(path, what: str) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Janus {what} checkpoint not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    return obj


def _transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


# ----------------------------------------------------------------------------------------------
# A tiny random-init Janus directory (tests and smoke runs; nothing is downloaded)

TINY_SPECIAL_TOKENS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>", "<|User|>",
                       "<|Assistant|>", "<image_placeholder>", "<begin_of_image>", "<end_of_image>"]

# The chat template transformers' Janus conversion script installs (DeepSeek "deepseek" sft format).
JANUS_CHAT_TEMPLATE = (
    "{%set seps=['\n\n','<\uff5cend\u2581of\u2581sentence\uff5c>']%}{%set i=0%}"
    "{%for message in messages%}{%if message['role']|lower=='user'%}<|User|>: "
    "{%elif message['role']|lower=='assistant'%}<|Assistant|>:{%if not (loop.last and not "
    "add_generation_prompt and message['content'][0]['type']=='text' and message['content'][0]['text']=='')%} "
    "{%endif%}{%else%}{{message['role'].capitalize()}}: {%endif%}{%for content in message['content']%}"
    "{%if content['type']=='image'%}{%if not loop.first%}{{'\n'}}{%endif%}<image_placeholder>"
    "{%if not loop.last%}{{'\n'}}{%endif%}{%elif content['type']=='text'%}{%set text=content['text']%}"
    "{%if loop.first%}{%set text=text.lstrip()%}{%endif%}{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}{{' '+text}}{%else%}"
    "{{text}}{%endif%}{%endif%}{%endfor%}{%if not loop.last or add_generation_prompt%}"
    "{%if message['role']|lower=='user'%}{{seps[0]}}{%else%}{{seps[1]}}{%endif%}{%endif%}{%endfor%}"
    "{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)


def write_tiny_janus(out_dir, *, image_size: int = 64, codebook_size: int = 64, hidden: int = 32,
                     corpus: list[str] | None = None, seed: int = 0) -> Path:
    """Write a random-init Janus (save_pretrained) + an offline-trained byte-level BPE processor.

    Sizes obey the Janus constraints: GroupNorm(32) channels, decoder upsampling 2^4 = patch 16,
    num_image_tokens = (image_size / 16)^2, VQ projection/embed dims = text hidden size.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (JanusConfig, JanusForConditionalGeneration, JanusImageProcessor,
                              JanusProcessor, JanusVisionConfig, JanusVQVAEConfig, LlamaConfig,
                              PreTrainedTokenizerFast)

    out_dir = Path(out_dir)
    corpus = corpus or ["a red circle on the left", "a blue square at the top", "a green triangle",
                        "a photo of a cat on a sofa", "two dogs playing in the park"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=TINY_SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    bos = TINY_SPECIAL_TOKENS[0]
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=bos, eos_token=TINY_SPECIAL_TOKENS[1], pad_token=TINY_SPECIAL_TOKENS[2],
        padding_side="left",
        extra_special_tokens={"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                              "eoi_token": "<end_of_image>"})
    grid = image_size // 16
    processor = JanusProcessor(image_processor=JanusImageProcessor(size={"height": image_size, "width": image_size}),
                               tokenizer=tokenizer, chat_template=JANUS_CHAT_TEMPLATE, num_image_tokens=grid * grid)

    text = LlamaConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                       vocab_size=tok.get_vocab_size(), max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    vision = JanusVisionConfig(image_size=image_size, patch_size=16, num_image_tokens=grid * grid,
                               hidden_size=32, num_hidden_layers=1, num_attention_heads=4, projection_dim=hidden)
    vq = JanusVQVAEConfig(embed_dim=8, num_embeddings=codebook_size, latent_channels=32, base_channels=32,
                          channel_multiplier=[1, 1, 1, 1, 1], num_res_blocks=1, projection_dim=hidden,
                          image_token_embed_dim=hidden)
    config = JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                         image_token_id=tokenizer.convert_tokens_to_ids("<image_placeholder>"))
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG
        torch.manual_seed(seed)
        model = JanusForConditionalGeneration(config)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir
