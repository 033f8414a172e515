"""MS-COCO 2014 caption layout: reading annotations and images, and the COCO-30K prompt protocol.

Every stage that touches images reads them through this module, for real COCO and for the demo
world alike (ranke.data.demo writes the same layout):

    <root>/{train,val}2014/COCO_{split}2014_%012d.{jpg,png}
    <root>/annotations/captions_{split}2014.json   {"info", "licenses", "images", "annotations"}

Image preprocessing (`load_image(path, size, transform)`): two named transforms, the two of the
official RankE code, each used by every stage that needs it:
  * GT ("gt"): torchvision `Resize(size, bicubic)` of the shorter side, then `CenterCrop(size)`:
    the RankE training transform (autoregressive/post_train/post_train.py). Everything that pairs
    pixels with VQ codes uses it: `tokenize` (the codes), the training rounds (the decoder's
    ground-truth image x of those codes) and the demo models. torchvision does the geometry, so
    the long side is truncated and the crop offset rounded exactly as upstream (a 640x427 image
    becomes 383x256, cropped at x = 64).
  * EVAL ("eval"): torchvision `center_crop` to the shorter side, then one PIL LANCZOS resize to
    size x size: the GigaGAN/LlamaGen evaluation transform that RankE's evaluation applies to both
    FID image sets (and to CLIP-score images). Used for the FID reference statistics.
  Both start from the decoded file as 8-bit RGB (`to_rgb`): PIL's `convert("RGB")`, as upstream,
  for the modes it converts faithfully; 16-bit grayscale scaled to 8 bit (PIL's conversion clips
  every value above 255, which turns a 16-bit PNG white); CMYK through its embedded ICC profile
  when it has one (PIL's conversion ignores the profile); an alpha channel dropped, as upstream's
  conversion does. 32-bit integer and float images have no defined range and are refused, naming
  the file. EXIF orientation is not applied (neither upstream nor COCO's annotation
  widths/heights do), so a rotated JPEG is used as stored. For a square source of `size` pixels
  both transforms are the identity.

torch is imported only by the functions that make tensors: the prompts stage reads captions
through this module and needs none of it (~2.5 s of CPU per process on a small machine).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Sequence

import jsonschema
import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ranke.data.coco")

SPLITS = ("train", "val")

# The caption-annotation structure the reader relies on (extra keys are allowed, as in COCO).
COCO_CAPTIONS_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "MS-COCO 2014 captions annotation file",
    "type": "object",
    "required": ["images", "annotations"],
    "properties": {
        "info": {"type": "object"},
        "licenses": {"type": "array"},
        "images": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "file_name", "width", "height"],
                "properties": {
                    "id": {"type": "integer", "minimum": 0},
                    "file_name": {"type": "string", "minLength": 1},
                    "width": {"type": "integer", "minimum": 1},
                    "height": {"type": "integer", "minimum": 1},
                    "license": {"type": "integer"},
                    "coco_url": {"type": "string"},
                    "flickr_url": {"type": "string"},
                    "date_captured": {"type": "string"},
                },
            },
        },
        "annotations": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "image_id", "caption"],
                "properties": {
                    "id": {"type": "integer", "minimum": 0},
                    "image_id": {"type": "integer", "minimum": 0},
                    "caption": {"type": "string"},
                },
            },
        },
    },
}

# The same schema without per-item checks: real COCO has ~600k items, which jsonschema would take
# tens of seconds over; items are checked column-wise with pandas instead (same rules).
_TOP_LEVEL_SCHEMA = {
    **COCO_CAPTIONS_SCHEMA,
    "properties": {
        **COCO_CAPTIONS_SCHEMA["properties"],
        "images": {"type": "array", "minItems": 1, "items": {"type": "object"}},
        "annotations": {"type": "array", "minItems": 1, "items": {"type": "object"}},
    },
}


class CocoFormatError(ValueError):
    """An annotation file does not have the COCO caption structure."""


class ImageReadError(OSError):
    """An image file is missing or cannot be decoded (the message names the path)."""


class CocoSplit(NamedTuple):
    images: pd.DataFrame  # image_id, file_name, file (relative to root), width, height
    captions: pd.DataFrame  # caption_id, image_id, caption, file (joined from images)


def annotation_path(root: str | os.PathLike, split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return Path(root) / "annotations" / f"captions_{split}2014.json"


def _check_columns(df: pd.DataFrame, what: str, ints: Sequence[str], strs: Sequence[str], path: Path) -> None:
    for col in [*ints, *strs]:
        if col not in df.columns or df[col].isna().any():
            bad = int(df[col].isna().sum()) if col in df.columns else len(df)
            raise CocoFormatError(f"{path}: {bad} {what} entries lack '{col}'")
    for col in ints:
        ok = df[col].map(lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0)
        if not ok.all():
            first = df.loc[~ok, col].iloc[0]
            raise CocoFormatError(f"{path}: {what} '{col}' must be a non-negative integer, got {first!r}")
    for col in strs:
        ok = df[col].map(lambda v: isinstance(v, str))
        if not ok.all():
            first = df.loc[~ok, col].iloc[0]
            raise CocoFormatError(f"{path}: {what} '{col}' must be a string, got {first!r}")


def read_split(root: str | os.PathLike, split: str) -> CocoSplit:
    """Read `captions_{split}2014.json` under `root`, validate it, and join captions to images.

    Captions are stripped (COCO has trailing spaces/newlines); empty captions are dropped with a
    warning. Images without any caption are kept in `images` (and absent from `captions`).
    Rows are sorted by image_id / caption_id, so the result does not depend on the JSON order.
    """
    path = annotation_path(root, split)
    if not path.exists():
        raise FileNotFoundError(f"COCO caption annotations not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CocoFormatError(f"{path}: not valid JSON ({e})") from e
    try:
        jsonschema.validate(doc, _TOP_LEVEL_SCHEMA)
    except jsonschema.ValidationError as e:
        where = "/".join(str(p) for p in e.absolute_path) or "<top level>"
        raise CocoFormatError(f"{path}: at {where}: {e.message}") from e

    images = pd.DataFrame(doc["images"])
    _check_columns(images, "images", ["id", "width", "height"], ["file_name"], path)
    anns = pd.DataFrame(doc["annotations"])
    _check_columns(anns, "annotations", ["id", "image_id"], ["caption"], path)

    dup = images["id"][images["id"].duplicated()]
    if len(dup):
        raise CocoFormatError(f"{path}: duplicate image ids, e.g. {dup.iloc[0]}")
    dup = anns["id"][anns["id"].duplicated()]
    if len(dup):
        raise CocoFormatError(f"{path}: duplicate annotation ids, e.g. {dup.iloc[0]}")
    orphan = ~anns["image_id"].isin(images["id"])
    if orphan.any():
        raise CocoFormatError(
            f"{path}: {int(orphan.sum())} annotations refer to image ids not in 'images', "
            f"e.g. {anns.loc[orphan, 'image_id'].iloc[0]}"
        )

    images = pd.DataFrame({
        "image_id": images["id"].astype("int64"),
        "file_name": images["file_name"].astype(str),
        "file": f"{split}2014/" + images["file_name"].astype(str),
        "width": images["width"].astype("int64"),
        "height": images["height"].astype("int64"),
    }).sort_values("image_id", ignore_index=True)

    captions = pd.DataFrame({
        "caption_id": anns["id"].astype("int64"),
        "image_id": anns["image_id"].astype("int64"),
        "caption": anns["caption"].astype(str).str.strip(),
    })
    empty = captions["caption"] == ""
    if empty.any():
        ids = captions.loc[empty, "caption_id"].tolist()
        log.warning("%s: dropping %d empty captions (caption ids %s%s)", path, len(ids), ids[:20],
                    " ..." if len(ids) > 20 else "")
        captions = captions[~empty]
    captions = captions.merge(images[["image_id", "file"]], on="image_id", how="left", validate="many_to_one")
    captions = captions.sort_values("caption_id", ignore_index=True)
    uncaptioned = images.loc[~images["image_id"].isin(captions["image_id"]), "image_id"].tolist()
    if uncaptioned:
        log.warning("%s: %d images have no caption and are not tokenized or prompted (image ids %s%s)", path,
                    len(uncaptioned), uncaptioned[:20], " ..." if len(uncaptioned) > 20 else "")
    log.info("%s: %d images, %d captions", path, len(images), len(captions))
    return CocoSplit(images=images, captions=captions)


def captions_by_image(captions: pd.DataFrame) -> pd.DataFrame:
    """One row per image: image_id, file, caption_ids (list, ascending), captions (same order)."""
    c = captions.sort_values(["image_id", "caption_id"])
    g = c.groupby("image_id", sort=True)
    return pd.DataFrame({
        "image_id": g["image_id"].first().to_numpy(),
        "file": g["file"].first().to_numpy(),
        "caption_ids": g["caption_id"].agg(list).to_list(),
        "captions": g["caption"].agg(list).to_list(),
    })


# ----------------------------------------------------------------------------------------------
# Images

GT, EVAL = "gt", "eval"
TRANSFORMS = (GT, EVAL)

# PIL modes and what to_rgb does with them
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_ALPHA = ("RGBA", "RGBa", "LA", "La", "PA")
_REFUSED = {"I": "32-bit integer", "F": "32-bit float", "I;32": "32-bit integer", "I;32L": "32-bit integer",
            "I;32B": "32-bit integer"}
_warned_modes: set[str] = set()


def to_rgb(img: Image.Image, path: str | os.PathLike = "<image>") -> Image.Image:
    """8-bit RGB of a decoded image, or ImageReadError naming `path` where no conversion is right.

    * RGB, L, 1, P, YCbCr, ... : PIL's convert("RGB") (upstream's conversion, exact for these);
    * 16-bit grayscale (I;16*): v -> round(255 v / 65535) (PIL's own conversion clips at 255);
    * CMYK with an embedded ICC profile: through that profile to sRGB (PIL's conversion ignores
      it); without one, PIL's conversion;
    * alpha (RGBA, LA, P/PA with transparency): dropped, as upstream's convert("RGB") does (the
      first image of each such mode is logged);
    * 32-bit integer / float (I, F): refused: their values have no defined display range.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _REFUSED:
        raise ImageReadError(f"{path}: {_REFUSED[mode]} image (PIL mode {mode}): its values have no defined "
                             "display range; convert it to an 8- or 16-bit PNG or a JPEG")
    if mode in _SIXTEEN_BIT:
        v = np.asarray(img, dtype=np.uint16).astype(np.uint32)
        return Image.fromarray(((v * 255 + 32767) // 65535).astype(np.uint8), "L").convert("RGB")
    if mode == "CMYK" and img.info.get("icc_profile"):
        import io as _io

        from PIL import ImageCms

        try:
            source = ImageCms.ImageCmsProfile(_io.BytesIO(img.info["icc_profile"]))
            return ImageCms.profileToProfile(img, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError, ValueError) as e:
            raise ImageReadError(f"{path}: CMYK image with an unusable ICC profile: {e}") from e
    if mode == "P" and "transparency" in img.info:
        mode = "P with transparency"
    if (mode in _ALPHA or mode == "P with transparency") and mode not in _warned_modes:
        _warned_modes.add(mode)
        log.warning("%s: image mode %s: its alpha channel is dropped (upstream's convert('RGB')); "
                    "further images of this mode are not logged", path, mode)
    try:
        return img.convert("RGB")
    except ValueError as e:  # a mode PIL cannot convert (e.g. LAB)
        raise ImageReadError(f"{path}: cannot convert PIL mode {img.mode} to RGB: {e}") from e


def preprocess_pil(img: Image.Image, size: int, transform: str) -> Image.Image:
    """Square `size` x `size` RGB image by the named transform (see the module docstring)."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    img = to_rgb(img)
    if transform == GT:
        img = TF.resize(img, size, interpolation=InterpolationMode.BICUBIC)
        return TF.center_crop(img, size)
    if transform == EVAL:
        img = TF.center_crop(img, min(img.size))
        return img.resize((size, size), Image.Resampling.LANCZOS)
    raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")


def load_image(path: str | os.PathLike, size: int, transform: str) -> torch.Tensor:
    """uint8 tensor (3, size, size). Raises ImageReadError naming `path` if missing or corrupt."""
    import torch

    if transform not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {transform!r}")
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()  # force decoding here, so a truncated file fails now with its name
            img = to_rgb(img, path)
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"cannot decode image {path}: {e}") from e
    out = preprocess_pil(img, size, transform)
    arr = np.asarray(out, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float in [-1, 1] (the convention between modules)."""
    return images_uint8.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 (rounded, clamped)."""
    import torch

    return images.clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)


class CocoImages:
    """Images of a split as uint8 tensors, a map-style dataset for a DataLoader.

    item i -> (i, (3, size, size) uint8), or with `errors=True` (i, image, message): an image that
    cannot be read comes back as zeros with its ImageReadError's message, so that the caller's
    BadImages policy decides (a DataLoader worker cannot)."""

    def __init__(self, root: str | os.PathLike, files: Sequence[str], size: int, transform: str, *,
                 errors: bool = False):
        self.root = Path(root)
        self.files = list(files)
        self.size, self.transform, self.errors = size, transform, errors

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        if not self.errors:
            return i, load_image(self.root / self.files[i], self.size, self.transform)
        try:
            return i, load_image(self.root / self.files[i], self.size, self.transform), ""
        except ImageReadError as e:
            import torch

            return i, torch.zeros(3, self.size, self.size, dtype=torch.uint8), str(e)


BAD_IMAGE_POLICIES = ("fail", "skip")


class BadImages:
    """The one policy for images that cannot be read (config `bad_images`), shared by every stage
    that reads a split's images (tokenize, the FID reference): `fail` stops at the first one,
    naming it; `skip` leaves it out, logs it, and says at the end how many were skipped and which.
    """

    def __init__(self, policy: str, where: str):
        if policy not in BAD_IMAGE_POLICIES:
            raise ValueError(f"bad_images must be one of {BAD_IMAGE_POLICIES}, got {policy!r}")
        self.policy, self.where = policy, where
        self.skipped: list[str] = []  # the files left out

    def check(self, error: str, file: str | os.PathLike) -> bool:
        """True if `file` is bad (`error` is its read error; skip it); raises under `fail`."""
        if not error:
            return False
        if self.policy == "fail":
            raise ImageReadError(f"{error} (config bad_images: skip leaves unreadable images out)")
        log.warning("%s: skipping bad image: %s", self.where, error)
        self.skipped.append(str(file))
        return True

    def keep(self, idx, errors, dataset: CocoImages):
        """Bool mask of a loader batch of `dataset` (CocoImages with errors=True): its readable
        images; each unreadable one goes through check (its path is built only then)."""
        import torch

        return torch.tensor([not (e and self.check(e, dataset.root / dataset.files[i]))
                             for i, e in zip(idx.tolist(), errors)], dtype=torch.bool)

    def finish(self, total: int, *, need: int = 1) -> None:
        """Log the count of skipped images; raise if fewer than `need` were left."""
        if self.skipped:
            log.warning("%s: skipped %d of %d images (config bad_images: skip): %s%s", self.where,
                        len(self.skipped), total, ", ".join(self.skipped[:20]),
                        " ..." if len(self.skipped) > 20 else "")
        if total - len(self.skipped) < need:
            raise ValueError(f"{self.where}: {total - len(self.skipped)} readable image(s) of {total} left after "
                             f"skipping {len(self.skipped)} bad ones; need at least {need}")


def load_images(root: str | os.PathLike, files: Sequence[str], size: int, transform: str) -> torch.Tensor:
    """All `files` (relative to root) as one uint8 tensor (N, 3, size, size); small splits only."""
    import torch

    ds = CocoImages(root, files, size, transform)
    if len(ds) == 0:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    return torch.stack([ds[i][1] for i in range(len(ds))])


# ----------------------------------------------------------------------------------------------
# COCO-30K protocol


def coco30k_prompts(captions: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """The evaluation prompt set: `n` distinct images drawn with a fixed seed, one caption each.

    Returns DataFrame(prompt_id, image_id, caption_id, caption), prompt_id = 0..n-1 in draw order.
    Depends only on (the set of captions, n, seed), not on row order. If `n` exceeds the number of
    captioned images the draw cycles: pass k uses a fresh permutation of all images and a fresh
    caption choice, so images repeat (with possibly different captions) only after all were used.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if len(captions) == 0:
        raise ValueError("no captions to draw prompts from")
    c = captions.sort_values(["image_id", "caption_id"], ignore_index=True)
    groups = c.groupby("image_id", sort=True).indices  # image_id -> row positions (ascending caption_id)
    image_ids = np.array(sorted(groups))
    rng = np.random.default_rng(seed)
    rows: list[int] = []
    while len(rows) < n:
        order = rng.permutation(len(image_ids))[: n - len(rows)]
        for k in order:
            options = groups[image_ids[k]]
            rows.append(int(options[rng.integers(len(options))]))
    out = c.loc[rows, ["image_id", "caption_id", "caption"]].reset_index(drop=True)
    out.insert(0, "prompt_id", np.arange(n, dtype=np.int64))
    return out.astype({"image_id": "int64", "caption_id": "int64"})
