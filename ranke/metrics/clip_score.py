"""CLIP score with open_clip (through ranke.models.clip): 100 x mean cosine(image, caption).

Convention (stated in the tables' footnote via `clip_convention`): per pair the raw cosine between
the l2-normalised image and text embeddings, averaged over all samples, times 100 — no clipping at
0 and no 2.5 weight (that is Hessel et al.'s CLIPScore). The real protocol is the GigaGAN/LlamaGen
one: OpenAI ViT-B/32 (QuickGELU, local weights file) with the text prefix "A photo depicts ";
images are the uint8-quantised generations (as if read back from PNG) resized bicubically to the
CLIP resolution on the device (upstream: centre crop + LANCZOS to 256 first, a no-op for images
generated at 256). The demo uses its own tiny CLIP, with its own prefix (config assets.clip).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ranke.metrics import resize_batch, uint8_to_float

log = logging.getLogger("ranke.metrics.clip_score")


def clip_convention(clip_cfg: dict) -> str:
    """One line for the table footnote: how the CLIP score was computed."""
    model = clip_cfg.get("model", "?")
    if model in ("ViT-B-32-quickgelu",) or (model == "ViT-B-32" and clip_cfg.get("quick_gelu")):
        what = "OpenAI ViT-B/32 (QuickGELU)"
    elif model == "ranke-demo-clip":
        what = "demo CLIP (ranke-demo-clip, trained in the pipeline)"
    else:
        what = f"open_clip {model}"
    prefix = clip_cfg.get("prompt_prefix", "") or ""
    return f"100 x mean cosine, {what}, prefix {prefix!r}"


def check_clip_files(clip_cfg: dict, key: str = "assets.clip") -> None:
    """FileNotFoundError naming the config key of every missing CLIP file (weights, custom config)."""
    missing = []
    for field in ("weights", "config"):
        path = clip_cfg.get(field)
        if field == "weights" and path is None:
            missing.append(f"{key}.weights is null (CLIP weights must be a local file; nothing is downloaded)")
        elif path is not None and not Path(path).is_file():
            missing.append(f"{key}.{field}: {path} not found")
    if missing:
        raise FileNotFoundError("CLIP model files missing:\n  " + "\n  ".join(missing))


def load_clip_model(clip_cfg: dict, device, key: str = "assets.clip"):
    """The ClipModel of config assets.clip, after checking that its files exist."""
    check_clip_files(clip_cfg, key)
    from ranke.models.clip import load_clip

    clip = load_clip(clip_cfg, torch.device(device), key=key)
    log.info("CLIP score model: %s", clip_convention(clip_cfg))
    return clip


@torch.no_grad()
def image_embeddings(clip, images_uint8: torch.Tensor, device=None) -> torch.Tensor:
    """uint8 (B,3,H,W) -> (B, E) l2-normalised float32, resized on the device."""
    device = device or images_uint8.device
    x = uint8_to_float(images_uint8.to(device, non_blocking=True))
    x = resize_batch(x, clip.image_size, mode="bicubic")
    return torch.nn.functional.normalize(clip.embed_images(x).float(), dim=-1)


@torch.no_grad()
def text_embeddings(clip, captions: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """(N, E) l2-normalised float32 (the model's prompt prefix is applied by embed_texts)."""
    out = [clip.embed_texts(list(captions[i : i + batch_size])).float() for i in range(0, len(captions), batch_size)]
    return torch.nn.functional.normalize(torch.cat(out), dim=-1)


def pair_scores(image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
    """100 * cosine of matching rows -> (B,)."""
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image and text embeddings differ in shape: {tuple(image_emb.shape)} vs {tuple(text_emb.shape)}")
    a = torch.nn.functional.normalize(image_emb.float(), dim=-1)
    b = torch.nn.functional.normalize(text_emb.float(), dim=-1)
    return 100.0 * (a * b.to(a.device)).sum(-1)


def clip_score(clip, image_batches: Iterable[torch.Tensor], captions: Sequence[str], batch_size: int = 256) -> float:
    """100 x mean cosine over all (image, caption) pairs; batches are uint8 in caption order."""
    img = torch.cat([image_embeddings(clip, b).cpu() for b in image_batches])
    if img.shape[0] != len(captions):
        raise ValueError(f"{img.shape[0]} images but {len(captions)} captions")
    txt = text_embeddings(clip, captions, batch_size).cpu()
    return float(pair_scores(img, txt).mean())
