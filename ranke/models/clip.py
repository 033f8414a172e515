"""open_clip models loaded from local files only: the CLIP-score model, the CLIP reward, and (in
the demo) the FID feature extractor.

A config block (`assets.clip` or `assets.reward`) names:
  model:         an open_clip architecture name (built-in, e.g. "ViT-B-32-quickgelu", or custom); it
                 also picks the tokenizer and the label of the tables
  config:        path to an open_clip model-config JSON whose file stem is `model` (registered with
                 open_clip.add_model_config), or null for built-in architectures
  weights:       local weights file (required; nothing is ever downloaded)
  quick_gelu:    force QuickGELU (OpenAI weights need it; plain state dicts do not carry the flag)
  prompt_prefix: text prepended to every caption (GigaGAN/LlamaGen eval: "A photo depicts ")

Which loader reads `weights` (`create_clip`):
* `config` set (the demo's own CLIP): `open_clip.create_model` with the registered config;
* an OpenAI-format file — OpenAI's own distribution format, a TorchScript archive such as the real
  `ViT-B-32.pt`, or its state dict saved as a plain file (recognised by the top-level entries
  input_resolution / context_length / vocab_size that OpenAI's archives carry): open_clip's OpenAI
  loader `open_clip.load_openai_model`, which reads the architecture (widths, depths, patch size,
  image size, context length, vocabulary) from the file's state dict and always builds QuickGELU,
  as OpenAI trained. This is the path the official evaluation's `clip.load("ViT-B/32")` takes
  (RankE:evaluations/t2i/evaluation.py:400), so the real file and the small stand-in of
  `write_openai_clip_standin` load the same way;
* any other state dict (e.g. open_clip's converted `open_clip_pytorch_model.bin`): the built-in
  architecture `model` via `open_clip.create_model(model, pretrained=path)`.

Precision (`load_clip(..., precision=)`): "fp32", or "fp16" = open_clip's OpenAI-style mixed
precision (linear/conv/attention weights in fp16, LayerNorm in fp32), which is what OpenAI's
`clip.load(..., device="cuda")` builds; the image input is cast to fp16 as OpenAI's encode_image does.

Images come in as float [-1, 1] (B, 3, H, W). `embed_images` maps them to [0, 1], resizes to the
model's input size with a differentiable bilinear (antialiased) resize if the caller has not already
resized them, and applies the model's mean/std, so reward gradients can flow back into a decoder.
The CLIP score resizes beforehand, as the official evaluation does (ranke.metrics.clip_score); the
eval-time CPU transform of the GigaGAN script (PIL LANCZOS on uint8) is ranke.data.coco's business.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import warnings
import zipfile
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F

log = logging.getLogger("ranke.models.clip")

_REGISTERED: set[str] = set()

PRECISIONS = ("fp32", "fp16")
# top-level entries of OpenAI's CLIP archives next to the weights (the loader drops them)
OPENAI_ENTRIES = ("input_resolution", "context_length", "vocab_size")
# OpenAI's tokenizer: open_clip's bundled BPE has exactly these (the stand-in must match them)
OPENAI_CONTEXT_LENGTH = 77
OPENAI_VOCAB_SIZE = 49408


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

    def __init__(self, model: torch.nn.Module, tokenizer, *, prompt_prefix: str = "", name: str = "",
                 precision: str = "fp32"):
        self.model = model
        self.tokenizer = tokenizer
        self.prompt_prefix = prompt_prefix
        self.name = name
        self.precision = precision
        # fp16 models take fp16 images (OpenAI's encode_image casts its input to the weights' dtype)
        self.input_dtype = open_clip.get_input_dtype(precision) or torch.float32
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
        x = self.preprocess(images.to(self.device)).to(self.input_dtype)
        return F.normalize(self.model.encode_image(x).float(), dim=-1)

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


# ----------------------------------------------------------------------------------------------
# OpenAI's file format


@contextlib.contextmanager
def _torchscript_warnings_silenced():
    # OpenAI distributes CLIP as TorchScript, which torch >= 2.10 marks deprecated on every call
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=FutureWarning)
        yield


def is_torchscript_archive(path: str | os.PathLike) -> bool:
    """TorchScript archives (OpenAI's CLIP files) are zip files with `<root>/constants.pkl`;
    torch.save's zip files have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.count("/") == 1 and n.endswith("/constants.pkl") for n in z.namelist())


def is_openai_format(path: str | os.PathLike) -> bool:
    """OpenAI's CLIP distribution format: a TorchScript archive, or its state dict saved as a plain
    file (it keeps the archive's top-level entries input_resolution / context_length / vocab_size)."""
    if is_torchscript_archive(path):
        return True
    try:
        # mmap: only the key names are needed, not the tensors
        sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch file at all: the other loaders will say so
        return False
    return isinstance(sd, dict) and all(k in sd for k in OPENAI_ENTRIES) and "visual.conv1.weight" in sd


def _asks_quick_gelu(model_name: str, quick_gelu: bool) -> bool:
    return bool(quick_gelu) or model_name.endswith("-quickgelu")


def _warn_if_architecture_differs(model: torch.nn.Module, model_name: str, key: str) -> None:
    """The architecture comes from the file; `model` names the tokenizer and the tables' label. Say
    so when the two disagree (e.g. a small stand-in under the name ViT-B-32-quickgelu)."""
    named = open_clip.get_model_config(model_name)
    visual = model.visual
    if named is None or not hasattr(visual, "transformer"):  # unknown name, or a ResNet tower
        return
    from_file = {"embed_dim": int(model.text_projection.shape[1]), "vision width": int(visual.conv1.weight.shape[0]),
                 "vision layers": len(visual.transformer.resblocks), "patch size": int(visual.conv1.weight.shape[-1]),
                 "image size": int(visual.image_size[0]), "text width": int(model.ln_final.weight.shape[0]),
                 "text layers": len(model.transformer.resblocks)}
    vc, tc = named.get("vision_cfg", {}), named.get("text_cfg", {})
    from_name = {"embed_dim": named.get("embed_dim"), "vision width": vc.get("width"), "vision layers": vc.get("layers"),
                 "patch size": vc.get("patch_size"), "image size": vc.get("image_size"), "text width": tc.get("width"),
                 "text layers": tc.get("layers")}
    diffs = [f"{k} {from_file[k]} (file) vs {from_name[k]}" for k in from_file if from_name[k] != from_file[k]]
    if diffs:
        log.warning("%s.weights: the OpenAI file's architecture is not the built-in %s: %s", key, model_name,
                    ", ".join(diffs))


def create_clip(model_name: str, *, config: str | os.PathLike | None = None, weights: str | os.PathLike | None = None,
                quick_gelu: bool = False, device: str | torch.device = "cpu", key: str = "assets.clip",
                precision: str = "fp32") -> torch.nn.Module:
    """The raw open_clip module (trainable if `weights` is None: random init, no download).
    Which loader reads `weights`: see the module docstring."""
    if precision not in PRECISIONS:
        raise ValueError(f"CLIP precision must be one of {PRECISIONS}, got {precision!r}")
    if config is not None:
        register_model_config(config, model_name, key)
    elif weights is not None and is_openai_format(weights):
        if not _asks_quick_gelu(model_name, quick_gelu):
            raise ValueError(
                f"{key}: {weights} is an OpenAI CLIP file (QuickGELU), but {key}.model '{model_name}' with "
                f"quick_gelu false asks for GELU; use a '-quickgelu' model name or quick_gelu: true"
            )
        with _torchscript_warnings_silenced():
            model = open_clip.load_openai_model(str(weights), precision=precision, device=str(torch.device(device)))
        _warn_if_architecture_differs(model, model_name, key)
        return model
    return open_clip.create_model(model_name, pretrained=str(weights) if weights else None,
                                  force_quick_gelu=quick_gelu, device=device, precision=precision)


def load_clip(cfg: dict, device: str | torch.device = "cpu", key: str = "assets.clip",
              precision: str = "fp32") -> ClipModel:
    """Load a frozen, eval-mode ClipModel from a config block (see the module docstring)."""
    for k in ("model", "weights"):
        if not cfg.get(k):
            raise ValueError(f"{key}.{k} is required")
    weights = Path(cfg["weights"])
    if not weights.is_file():
        raise FileNotFoundError(f"{key}.weights: CLIP weights not found: {weights}")
    name = cfg["model"]
    model = create_clip(name, config=cfg.get("config"), weights=weights, quick_gelu=bool(cfg.get("quick_gelu", False)),
                        device=device, key=key, precision=precision)
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(name)
    clip = ClipModel(model, tokenizer, prompt_prefix=cfg.get("prompt_prefix") or "", name=name, precision=precision)
    log.info("loaded CLIP %s from %s (image size %d, embed dim %d, %s, prefix %r)", name, weights, clip.image_size,
             clip.embed_dim, precision, clip.prompt_prefix)
    return clip


# ----------------------------------------------------------------------------------------------
# A stand-in for OpenAI's ViT-B-32.pt


def write_openai_clip_standin(path: str | os.PathLike, *, seed: int = 0, width: int = 64, layers: int = 1,
                              embed_dim: int = 64) -> Path:
    """A randomly initialised OpenAI-style CLIP ViT in OpenAI's file format, for tests and stand-in
    runs: a TorchScript archive (like the real `ViT-B-32.pt`) whose state dict has OpenAI's key
    layout (visual.conv1, visual.class_embedding, visual.transformer.resblocks.N.attn.in_proj_weight,
    ..., token_embedding, positional_embedding, ln_final, text_projection, logit_scale) and the
    top-level input_resolution / context_length / vocab_size entries of OpenAI's archives, with
    float16 weights as OpenAI stores them (about 7 MB at the default sizes). Patch 32, image 224, context 77 and vocabulary 49408
    are OpenAI's ViT-B/32 values (open_clip's tokenizer needs the latter two); only the widths and
    depths are small (ViT-B/32: width 768/512, 12 layers, embed 512). OpenAI's loader derives the
    number of heads as width // 64, so `width` must be a multiple of 64. Written atomically.

    The real archive is a trace of OpenAI's model; this one scripts open_clip's equivalent model.
    Loaders (open_clip's, OpenAI's `clip.load`, torch-fidelity's clip extractors) read only the
    archive's state dict, which is the same layout either way.
    """
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from ranke.io import atomic_path

    if width % 64 or width < 64:
        raise ValueError(f"width must be a positive multiple of 64 (heads = width // 64), got {width}")
    image_size, patch_size = 224, 32
    torch.manual_seed(seed)
    model = CLIP(
        embed_dim,
        vision_cfg=CLIPVisionCfg(layers=layers, width=width, patch_size=patch_size, image_size=image_size),
        text_cfg=CLIPTextCfg(context_length=OPENAI_CONTEXT_LENGTH, vocab_size=OPENAI_VOCAB_SIZE, width=width,
                             heads=width // 64, layers=layers),
        quick_gelu=True, cast_dtype=torch.float16,
    ).eval()
    # float16 weights as in OpenAI's files, in the mixed layout OpenAI's model runs in (LayerNorms
    # and embeddings stay float32, except the large token embedding, which keeps the file small)
    open_clip.convert_weights_to_lp(model, dtype=torch.float16)
    model.token_embedding.half()
    # OpenAI's archive keeps the causal mask as a constant, not in its state dict (open_clip's
    # loader refuses an unknown "attn_mask" entry): make it a plain attribute before scripting.
    mask = model.attn_mask
    del model.attn_mask
    model.attn_mask = mask
    for name, value in zip(OPENAI_ENTRIES, (image_size, OPENAI_CONTEXT_LENGTH, OPENAI_VOCAB_SIZE)):
        if hasattr(model, name):  # open_clip keeps context_length / vocab_size as plain ints
            delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    path = Path(path)
    with _torchscript_warnings_silenced(), atomic_path(path) as tmp:
        torch.jit.save(torch.jit.script(model), str(tmp))
    return path
