"""CLIP score with open_clip (through ranke.models.clip): 100 x mean cosine(image, caption).

Convention (stated in the tables' footnote via `clip_convention`): per pair the raw cosine between
the l2-normalised image and text embeddings, averaged over all samples, times 100 — no clipping at
0 and no 2.5 weight (that is Hessel et al.'s CLIPScore). The real protocol is the GigaGAN/LlamaGen
one of the official RankE evaluation (RankE:evaluations/t2i/evaluation.py:393-453), which we follow:

* model: OpenAI ViT-B/32 (QuickGELU) from the local OpenAI file, loaded by open_clip's OpenAI loader;
* text: the prefix "A photo depicts " (same tokens as the official insertion after the start token);
* images: the uint8-quantised generations (as if read back from PNG; the official centre crop +
  LANCZOS to 256 is a no-op for images generated at 256) -> [0, 1] -> `F.interpolate(size=224,
  mode="bicubic", align_corners=False)` with NO antialias (evaluation.py:423; torch's default) ->
  CLIP mean/std (0.48145466, 0.4578275, 0.40821073) / (0.26862954, 0.26130258, 0.27577711);
* precision: config score.clip_precision. The official `clip.load("ViT-B/32", device="cuda")`
  (evaluation.py:400) builds fp16 weights and casts the image to fp16 in encode_image; "auto" does
  the same on CUDA (open_clip's matching mixed fp16) and uses fp32 on the CPU, where fp16 is slow.

Where we differ: the prompts (ranke.prompts, not the released coco_captions.csv), and in fp32 runs
the precision. The demo uses its own tiny CLIP, with its own prefix (config assets.clip).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ranke.metrics import resize_batch, uint8_to_float

log = logging.getLogger("ranke.metrics.clip_score")

CLIP_PRECISIONS = ("auto", "fp16", "fp32")
# the official evaluation's resize to the CLIP resolution (evaluation.py:423)
IMAGE_RESIZE = "bicubic, align_corners=False, no antialias"


def resolve_clip_precision(value: str, device) -> str:
    """score.clip_precision -> "fp16" | "fp32": auto = fp16 on CUDA (as the official clip.load on
    cuda), fp32 elsewhere (fp16 matmuls are slow on CPUs)."""
    if value not in CLIP_PRECISIONS:
        raise ValueError(f"score.clip_precision must be one of {list(CLIP_PRECISIONS)}, got {value!r}")
    if value == "auto":
        return "fp16" if torch.device(device).type == "cuda" else "fp32"
    return value


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


def load_clip_model(clip_cfg: dict, device, key: str = "assets.clip", precision: str = "fp32"):
    """The ClipModel of config assets.clip, after checking that its files exist. `precision` is
    "fp32" or "fp16" (resolve score.clip_precision with resolve_clip_precision first)."""
    check_clip_files(clip_cfg, key)
    from ranke.models.clip import load_clip

    clip = load_clip(clip_cfg, torch.device(device), key=key, precision=precision)
    log.info("CLIP score model: %s, %s", clip_convention(clip_cfg), precision)
    return clip


@torch.no_grad()
def image_embeddings(clip, images_uint8: torch.Tensor, device=None) -> torch.Tensor:
    """uint8 (B,3,H,W) -> (B, E) l2-normalised float32, resized on the device like the official
    evaluation: bicubic, no antialias (IMAGE_RESIZE). The resize runs in [-1, 1], the official one
    in [0, 1]: the same up to float rounding, as the resize is linear."""
    device = device or images_uint8.device
    x = uint8_to_float(images_uint8.to(device, non_blocking=True))
    x = resize_batch(x, clip.image_size, mode="bicubic", antialias=False)
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
