"""The backbone interface every stage uses, and its LlamaGen implementation.

A backbone bundles a text encoder, a policy (the AR model over codebook indices) and a VQ
tokenizer, and exposes the handful of operations generate / train / score need. Methods that
touch a trainable model take it as an argument (`sample(policy, ...)`, `decode(vq, ...)`), because
training holds several copies (online, reference, EMA) of the same architecture.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ranke.models.checkpoints import load_into, save_checkpoint
from ranke.models.gpt import GPT, GPTConfig
from ranke.models.vq import VQConfig, VQModel

log = logging.getLogger("ranke.models.backbone")


@dataclass
class Cond:
    """Encoded prompts: caption features (B, T, D) float and caption mask (B, T) bool."""

    emb: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.emb.shape[0]

    def repeat_interleave(self, g: int) -> "Cond":
        """Each prompt g times in a row (a GRPO group): [p0]*g + [p1]*g + ..."""
        return Cond(self.emb.repeat_interleave(g, dim=0), self.mask.repeat_interleave(g, dim=0))

    def index(self, idx) -> "Cond":
        return Cond(self.emb[idx], self.mask[idx])

    def to(self, device) -> "Cond":
        return Cond(self.emb.to(device), self.mask.to(device))

    @staticmethod
    def cat(conds: Sequence["Cond"]) -> "Cond":
        return Cond(torch.cat([c.emb for c in conds]), torch.cat([c.mask for c in conds]))


# ----------------------------------------------------------------------------------------------
# building models from the config's `arch` sub-trees


def build_vq(arch: dict) -> VQModel:
    """VQModel from config `assets.vq.arch` (keys of VQConfig)."""
    return VQModel(VQConfig.from_dict({k: v for k, v in arch.items() if v is not None}))


def gpt_config(arch: dict, codebook_size: int, grid_tokens: int, cls_token_num: int = 120) -> GPTConfig:
    """GPTConfig from config `assets.gpt.arch`: `preset` (GPT-B | GPT-L | GPT-XL | null) or the
    explicit sizes dim / n_layer / n_head (not both: a preset fixes them), plus other GPTConfig
    fields. The vocabulary, the image-token count and the caption length come from the VQ / image
    size / text encoder."""
    from ranke.config import GPT_PRESET_SIZE_KEYS

    arch = {k: v for k, v in arch.items() if v is not None}
    preset = arch.pop("preset", None)
    sizes = {k: arch[k] for k in GPT_PRESET_SIZE_KEYS if k in arch}
    if preset and sizes:
        raise ValueError(f"assets.gpt.arch: preset {preset} fixes {GPT_PRESET_SIZE_KEYS}; {sizes} must be null")
    fixed = dict(vocab_size=int(codebook_size), block_size=int(grid_tokens), cls_token_num=int(cls_token_num))
    clash = {k: arch[k] for k in fixed if k in arch and arch[k] != fixed[k]}
    if clash:
        raise ValueError(f"gpt arch sets {clash}, which must follow the VQ / image size / text encoder: {fixed}")
    arch.update(fixed)
    return GPTConfig.preset(preset, **arch) if preset else GPTConfig.from_dict(arch)


def build_gpt(arch: dict, codebook_size: int, grid_tokens: int, cls_token_num: int = 120) -> GPT:
    return GPT(gpt_config(arch, codebook_size, grid_tokens, cls_token_num))


def _require(key: str, path) -> Path:
    if path is None or not Path(path).exists():
        raise FileNotFoundError(f"config key {key}: file not found: {path}")
    return Path(path)


# ----------------------------------------------------------------------------------------------


class LlamaGenBackbone:
    """Text encoder (T5) + policy (LlamaGen GPT) + tokenizer (LlamaGen VQ)."""

    name = "llamagen"

    def __init__(self, text, policy: GPT, vq: VQModel, image_size: int, device, *, amp_dtype="auto"):
        self.text = text
        self.policy = policy
        self.vq = vq
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.amp_dtype = amp_dtype
        side = self.image_size // vq.downsample
        self.grid = (side, side)
        self.codebook_size = vq.codebook_size
        self._gpt_cfg = policy.config

    @classmethod
    def from_config(cls, assets: dict, image_size: int, device="cpu", *, load_text: bool = True,
                    load_policy: bool = True, amp_dtype="auto") -> "LlamaGenBackbone":
        from ranke.models.text import TextEncoder

        device = torch.device(device)
        vq_ckpt = _require("assets.vq.checkpoint", assets["vq"]["checkpoint"])
        # tokenizing and decoding need no policy (and in the demo it is trained after tokenizing)
        gpt_ckpt = _require("assets.gpt.checkpoint", assets["gpt"]["checkpoint"]) if load_policy else None
        te = assets["text_encoder"]
        if load_text:
            _require("assets.text_encoder.path", te["path"])

        vq = build_vq(assets["vq"]["arch"])
        if image_size % vq.downsample:
            raise ValueError(f"image_size {image_size} is not a multiple of the VQ downsampling {vq.downsample}")
        grid = image_size // vq.downsample
        load_into(vq, vq_ckpt)
        policy = build_gpt(assets["gpt"]["arch"], vq.codebook_size, grid * grid, te["max_length"])
        if load_policy:
            load_into(policy, gpt_ckpt)
        else:
            policy = policy.to("meta")  # the architecture is still known, no memory is used
        text = None
        if load_text:
            # T5 runs in bf16 on GPU (as upstream LlamaGen and the RankE scripts), fp32 on CPU
            bf16 = amp_dtype == torch.bfloat16 or (amp_dtype == "auto" and device.type == "cuda")
            text = TextEncoder(te["path"], max_length=te["max_length"], padding=te.get("padding", "right"),
                               clean_captions=bool(te.get("clean_captions", True)),
                               device=device, dtype=torch.bfloat16 if bf16 else torch.float32)
            if load_policy and text.dim != policy.config.caption_dim:
                raise ValueError(
                    f"text encoder width {text.dim} ({te['path']}) != gpt caption_dim {policy.config.caption_dim}"
                )
        log.info("llamagen backbone: gpt %s (%.1fM params), vq %s, grid %dx%d, device %s",
                 policy.config.to_dict(), policy.num_params() / 1e6, vq.config.to_dict(), grid, grid, device)
        if load_policy:
            policy = policy.to(device)
        return cls(text, policy.eval(), vq.to(device).eval(), image_size, device,
                   amp_dtype=amp_dtype)

    # -- prompts and policy --------------------------------------------------------------------

    def encode_prompts(self, captions: Sequence[str], *, zero_padding: bool = True) -> Cond:
        """T5 features and mask of the captions. zero_padding: see TextEncoder.encode (evaluation
        zeroes the padded rows as the official sampler; training rollouts keep them raw by default,
        config train.rollout.zero_caption_padding)."""
        if self.text is None:
            raise RuntimeError("this backbone was built with load_text=False")
        emb, mask = self.text.encode(list(captions), zero_padding=zero_padding)
        return Cond(emb.to(self.device), mask.to(self.device))

    def sample(self, policy: GPT, cond: Cond, *, seeds, cfg_scale: float = 1.0, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, return_logprobs: bool = False):
        """Codes (B, h*w) long (and sampled-token log-probs if asked); see ranke.sampling.generate."""
        from ranke.sampling import generate

        return generate(policy, cond.emb, cond.mask, seeds=seeds, cfg_scale=cfg_scale, temperature=temperature,
                        top_k=top_k, top_p=top_p, return_logprobs=return_logprobs, amp_dtype=self.amp_dtype)

    def logprobs(self, policy: GPT, cond: Cond, codes: torch.Tensor, *, mask: str = "generation") -> torch.Tensor:
        """(B, h*w) teacher-forced log-probs, differentiable."""
        from ranke.sampling import teacher_forced_logprobs

        return teacher_forced_logprobs(policy, cond.emb, cond.mask, codes, mask=mask)

    # -- tokenizer / decoder -------------------------------------------------------------------

    def tokenize(self, vq: VQModel, images: torch.Tensor) -> torch.Tensor:
        return vq.encode(images).flatten(1)

    def decode(self, vq: VQModel, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, h*w) -> images (B,3,H,W) clamped to [-1, 1] (differentiable w.r.t. the decoder)."""
        return vq.decode_codes(codes, self.grid).clamp(-1, 1)

    def decode_soft(self, vq: VQModel, topk_probs: torch.Tensor, topk_idx: torch.Tensor, *,
                    normalize_rows: bool = True) -> torch.Tensor:
        """LASC soft decode: per position the probability-weighted mix of its top-k codebook rows.

        topk_probs / topk_idx (B, L, k); the probabilities are renormalised over the k entries
        (= softmax over the top-k logits, as the official code does). normalize_rows=True mixes the
        l2-normalised codebook rows that hard decoding uses; False mixes the raw `embedding.weight`
        rows, as the official LASC does (trainer.py:719-720). Returns images (B,3,H,W) clamped to
        [-1, 1] (the official LASC decode is not clamped; LASC is off in every released run).
        """
        if topk_probs.shape != topk_idx.shape or topk_idx.dim() != 3:
            raise ValueError(f"topk_probs and topk_idx must both be (B, L, k), got {tuple(topk_probs.shape)} "
                             f"and {tuple(topk_idx.shape)}")
        w = topk_probs.float() / topk_probs.float().sum(-1, keepdim=True).clamp_min(1e-12)
        codebook = vq.quantize.codebook() if normalize_rows else vq.quantize.embedding.weight
        rows = codebook[topk_idx.long()]  # (B, L, k, C)
        z = (w.unsqueeze(-1) * rows).sum(2)  # (B, L, C)
        h, ww = self.grid
        z = z.transpose(1, 2).reshape(z.shape[0], -1, h, ww)
        return vq.decode_latents(z).clamp(-1, 1)

    def decoder_parameters(self, vq: VQModel) -> list[torch.nn.Parameter]:
        return vq.decoder_parameters()

    # -- checkpoints ---------------------------------------------------------------------------

    def load_policy(self, path: str | os.PathLike) -> GPT:
        model = GPT(self._gpt_cfg)
        return load_into(model, path).to(self.device)

    def load_vq(self, path: str | os.PathLike) -> VQModel:
        model = VQModel(self.vq.config)
        return load_into(model, path).to(self.device)

    def save_policy(self, policy: GPT, path: str | os.PathLike) -> None:
        save_checkpoint(policy, path, {"kind": "gpt", "arch": policy.config.to_dict()})

    def save_vq(self, vq: VQModel, path: str | os.PathLike) -> None:
        save_checkpoint(vq, path, {"kind": "vq", "arch": vq.config.to_dict()})
