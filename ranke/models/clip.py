"""open_clip models loaded from local files only: the CLIP-score model, the CLIP reward, and (in
the demo) the FID feature extractor.

A config block (`assets.clip` or `assets.reward`) names:
  model:         an open_clip architecture name (built-in, e.g. "ViT-B-32-quickgelu", or custom)
  config:        path to an open_clip model-config JSON whose file stem is `model` (registered with
                 open_clip.add_model_config), or null for built-in architectures
  weights:       local state-dict file (required; nothing is ever downloaded)
  quick_gelu:    force QuickGELU (OpenAI weights need it; file weights do not carry the flag)
  prompt_prefix: text prepended to every caption (GigaGAN/LlamaGen eval: "A photo depicts ")

Images come in as float [-1, 1] (B, 3, H, W). `embed_images` maps them to [0, 1], resizes to the
model's input size with a differentiable bilinear (antialiased) resize, and applies the model's
mean/std, so reward gradients can flow back into a decoder. The eval-time CPU transform of the
GigaGAN script (PIL LANCZOS on uint8) is the caller's business (ranke.data.coco).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

log = logging.getLogger("ranke.models.clip")

_REGISTERED: set[str] = set()


def register_model_config(path: str | os.PathLike, model_name: str | None = None, key: str = "assets.clip") -> str:
    """Register an open_clip model-config JSON (once per process); returns the architecture name."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{key}.config: open_clip model config not found: {path}")
    if model_name is not None and path.stem != model_name:
        # open_clip registers a config under its file stem; any other name would not be found.
        raise ValueError(f"{key}.config: file stem '{path.stem}' must equal {key}.model '{model_name}'")
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(f"{key}.config: {path} is not an open_clip model config (missing {missing})")
    resolved = str(path.resolve())
    if resolved not in _REGISTERED:
        open_clip.add_model_config(path)
        _REGISTERED.add(resolved)
    return path.stem


class ClipModel:
    """A frozen open_clip model with the project's image/text conventions."""

    def __init__(self, model: torch.nn.Module, tokenizer, *, prompt_prefix: str = "", name: str = ""):
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_prefix = prompt_prefix
        self.name = name
        pp = open_clip.get_model_preprocess_cfg(model)
        size = pp.get("size", 224)
        self.image_size: int = int(size[0] if isinstance(size, (tuple, list)) else size)
        dev = next(model.parameters()).device
        self.mean = torch.tensor(pp.get("mean", open_clip.OPENAI_DATASET_MEAN), dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(pp.get("std", open_clip.OPENAI_DATASET_STD), dtype=torch.float32, device=dev).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        return int(self.model.text_projection.shape[1]) if getattr(self.model, "text_projection", None) is not None \
            else int(self.model.visual.output_dim)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] (B, 3, H, W) -> the model's normalised input (differentiable)."""
        x = (images.float() + 1.0) * 0.5
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=True, align_corners=False)
        return (x - self.mean.to(x.device)) / self.std.to(x.device)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, E) l2-normalised; differentiable w.r.t. `images` (wrap in torch.no_grad to save memory)."""
        return F.normalize(self.model.encode_image(self.preprocess(images.to(self.device))).float(), dim=-1)

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        return self.tokenizer([self.prompt_prefix + c for c in captions]).to(self.device)

    def embed_texts(self, captions: list[str]) -> torch.Tensor:
        """(B, E) l2-normalised text embeddings of `prompt_prefix + caption`."""
        return F.normalize(self.model.encode_text(self.tokenize(list(captions))).float(), dim=-1)

    def score(self, images: torch.Tensor, captions: list[str]) -> torch.Tensor:
        """(B,) 100 * cosine(image_i, caption_i) (no clipping at 0)."""
        if len(captions) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(captions)} captions")
        return 100.0 * (self.embed_images(images) * self.embed_texts(captions)).sum(-1)


def create_clip(model_name: str, *, config: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
                quick_gelu: bool = False, device: str | torch.device = "cpu", key: str = "assets.clip") -> torch.nn.Module:
    """The raw open_clip module (trainable if `weights` is None: random init, no download)."""
    if config is not None:
        register_model_config(config, model_name, key)
    try:
        return open_clip.create_model(model_name, pretrained=str(weights) if weights else None,
                                      force_quick_gelu=quick_gelu, device=device)
    except RuntimeError as e:
        # OpenAI's original ViT-B-32.pt is a TorchScript archive, which torch.load refuses with
        # weights_only=True: load it the legacy way (local file only, so this is not a download).
        if weights and "TorchScript" in str(e):
            log.warning("%s.weights is a TorchScript archive; loading with weights_only=False", key)
            return open_clip.create_model(model_name, pretrained=str(weights), force_quick_gelu=quick_gelu,
                                          device=device, weights_only=False)
        raise


def load_clip(cfg: dict, device: str | torch.device = "cpu", key: str = "assets.clip") -> ClipModel:
    """Load a frozen, eval-mode ClipModel from a config block (see the module docstring)."""
    for k in ("model", "weights"):
        if not cfg.get(k):
            raise ValueError(f"{key}.{k} is required")
    weights = Path(cfg["weights"])
    if not weights.is_file():
        raise FileNotFoundError(f"{key}.weights: CLIP weights not found: {weights}")
    name = cfg["model"]
    model = create_clip(name, config=cfg.get("config"), weights=weights, quick_gelu=bool(cfg.get("quick_gelu", False)),
                        device=device, key=key)
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(name)
    clip = ClipModel(model, tokenizer, prompt_prefix=cfg.get("prompt_prefix") or "", name=name)
    log.info("loaded CLIP %s from %s (image size %d, embed dim %d, prefix %r)", name, weights, clip.image_size,
             clip.embed_dim, clip.prompt_prefix)
    return clip
