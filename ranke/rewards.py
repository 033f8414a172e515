"""Pluggable training reward models: reward(images[-1,1] (B,3,H,W), captions) -> (B,) float.

`build_reward(cfg, device)` takes config `assets.reward`:

* `{kind: open_clip, model, config, weights, quick_gelu, prompt_prefix}` — an open_clip model loaded
  from local files by `ranke.models.clip.load_clip` (the demo's CLIP, or any open_clip checkpoint).
* `{kind: hf_clip, model, weights: <dir>, prompt_prefix}` — a transformers `CLIPModel` + tokenizer
  saved in the local directory `weights` (`model` is informational) (the official RankE reward is `openai/clip-vit-large-patch14`). Preprocessing follows
  the official trainer: [-1,1] -> [0,1], normalise with the CLIP mean/std, then bilinear resize to
  the tower's input size (no crop).

Both return 100 * cosine(image embedding, text embedding), differentiable w.r.t. the images (the
decoder's reward back-propagation term needs that). Text embeddings are cached per caption. The
reward models are frozen (no parameter receives a gradient).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger("ranke.rewards")

# OpenAI CLIP's normalisation (0.48145466, 0.4578275, 0.40821073) / (0.26862954, 0.26130258,
# 0.27577711) cut after 4 decimals (truncated, not rounded), exactly as the official RankE reward
# module writes them (autoregressive/models/vqrl_models.py:145,149)
CLIP_MEAN = (0.4814, 0.4578, 0.4082)
CLIP_STD = (0.2686, 0.2613, 0.2757)


class RewardModel:
    """Base: caches text embeddings; subclasses implement `embed_images` and `_embed_texts`."""

    name = "reward"

    def __init__(self, device: torch.device | str, cache_size: int = 200_000):
        self.device = torch.device(device)
        self._cache: dict[str, torch.Tensor] = {}
        self._cache_size = cache_size

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:  # (B, E), l2-normalised
        raise NotImplementedError

    def _embed_texts(self, captions: list[str]) -> torch.Tensor:  # (B, E), l2-normalised
        raise NotImplementedError

    @torch.no_grad()
    def embed_texts(self, captions: list[str]) -> torch.Tensor:
        """(B, E) text embeddings. Each new caption is embedded on its own: a batched forward's
        result depends (in the last float bits) on the other captions of the batch and their padding,
        so the embedding would depend on what the cache happened to hold. Alone, a caption's
        embedding is a pure function of the caption, and a resumed round equals an uninterrupted one."""
        todo = sorted({c for c in captions if c not in self._cache})
        if len(self._cache) + len(todo) > self._cache_size:
            self._cache.clear()  # then every caption of this call is new again
            todo = sorted(set(captions))
        for c in todo:
            self._cache[c] = self._embed_texts([c]).float()[0]
        return torch.stack([self._cache[c] for c in captions]).to(self.device)

    def __call__(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        if images.shape[0] != len(captions):
            raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
        img = self.embed_images(images).float()
        txt = self.embed_texts(captions)
        return 100.0 * (img * txt).sum(dim=-1)


class OpenClipReward(RewardModel):
    name = "open_clip"

    def __init__(self, cfg: dict, device):
        super().__init__(device)
        from ranke.models.clip import load_clip

        self.clip = load_clip(cfg, device)
        for module in vars(self.clip).values():
            if isinstance(module, nn.Module):
                module.eval().requires_grad_(False)

    def embed_images(self, images):
        return self.clip.embed_images(images)

    def _embed_texts(self, captions):
        return self.clip.embed_texts(captions)


class HFClipReward(RewardModel):
    name = "hf_clip"

    def __init__(self, cfg: dict, device):
        super().__init__(device)
        from transformers import AutoTokenizer, CLIPModel

        path = cfg.get("weights") or cfg.get("path")
        if not path or not Path(path).is_dir():
            raise FileNotFoundError(f"assets.reward.weights: transformers CLIP directory not found: {path}")
        self.model = CLIPModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        self.model.to(self.device).eval().requires_grad_(False)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.prefix = cfg.get("prompt_prefix") or ""
        self.size = int(self.model.config.vision_config.image_size)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)
        self.register_norm()

    def register_norm(self):
        self.mean = torch.tensor(CLIP_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(CLIP_STD, device=self.device).view(1, 3, 1, 1)

    def embed_images(self, images):
        x = (images.float().clamp(-1, 1) + 1) / 2
        x = (x - self.mean) / self.std
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        pooled = self.model.vision_model(pixel_values=x).pooler_output
        return F.normalize(self.model.visual_projection(pooled), dim=-1)

    def _embed_texts(self, captions):
        tok = self.tokenizer(
            [self.prefix + c for c in captions],
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        ).to(self.device)
        pooled = self.model.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output
        return F.normalize(self.model.text_projection(pooled), dim=-1)


REWARD_KINDS = {"open_clip": OpenClipReward, "hf_clip": HFClipReward}


def build_reward(cfg: dict, device: torch.device | str = "cpu") -> RewardModel:
    kind = cfg.get("kind", "open_clip")
    if kind not in REWARD_KINDS:
        raise ValueError(f"assets.reward.kind must be one of {sorted(REWARD_KINDS)}, got {kind!r}")
    model = REWARD_KINDS[kind](cfg, device)
    log.info("reward model: %s %s (%s)", kind, cfg.get("model", ""), cfg.get("weights") or cfg.get("path"))
    return model
