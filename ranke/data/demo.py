"""The demo world: a seeded generator of small captioned shape images, written in MS-COCO 2014 layout.

Each image is one filled shape (circle, square, ...) of one colour, at one of a few positions and
sizes, on a plain background. Its captions come from a small grammar with synonyms and several word
orders, so one image has several differently-worded captions (like COCO) and one caption fits
many images: the shape centre, scale and colours are jittered, so a caption never fixes the pixels.

The files are byte-for-byte reproducible from the config: every image has its own random stream
(seeded from (seed, split, index)), PNGs are written by PIL with fixed settings (no timestamps, no
text chunks), and the JSON has a fixed key order and fixed dates. The output directory is written
to a temporary sibling and renamed into place, so a killed run leaves nothing half-written.

Layout (what ranke.data.coco reads, for the demo exactly as for real COCO):

    <root>/train2014/COCO_train2014_000000000001.png
    <root>/val2014/COCO_val2014_000000003001.png
    <root>/annotations/captions_train2014.json, captions_val2014.json
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ranke.io import atomic_path

log = logging.getLogger("ranke.data.demo")

# Named colours a config may use, for shapes and backgrounds alike (sRGB).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 220, 40),
    "purple": (150, 50, 200),
    "white": (245, 245, 245),
    "orange": (245, 140, 30),
    "pink": (245, 130, 190),
    "cyan": (40, 210, 220),
    "brown": (130, 80, 40),
    "black": (15, 15, 15),
    "gray": (120, 120, 120),
    "navy": (20, 30, 90),
    "olive": (90, 100, 30),
    "teal": (20, 110, 110),
    "maroon": (100, 20, 30),
}

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring", "bar")

# Shape centre as a fraction of the image side: (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.28, 0.5),
    "center": (0.5, 0.5),
    "right": (0.72, 0.5),
    "top": (0.5, 0.28),
    "bottom": (0.5, 0.72),
    "top-left": (0.28, 0.28),
    "top-right": (0.72, 0.28),
    "bottom-left": (0.28, 0.72),
    "bottom-right": (0.72, 0.72),
}

# Half-extent of the shape as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.12, "medium": 0.16, "large": 0.21}

# Caption grammar: synonyms per attribute value, and sentence templates.
_SIZE_WORDS = {
    "small": ["small", "little", "tiny"],
    "medium": ["medium-sized", "mid-sized", "medium"],
    "large": ["large", "big", "huge"],
}
_SHAPE_WORDS = {
    "circle": ["circle", "disc", "round dot"],
    "square": ["square", "box", "square block"],
    "triangle": ["triangle", "triangular shape", "wedge"],
    "diamond": ["diamond", "rhombus", "diamond shape"],
    "cross": ["cross", "plus sign", "cross shape"],
    "ring": ["ring", "hollow circle", "loop"],
    "bar": ["bar", "horizontal bar", "stripe"],
}
_POSITION_WORDS = {
    "left": ["on the left", "at the left side", "in the left part"],
    "center": ["in the center", "in the middle", "at the centre"],
    "right": ["on the right", "at the right side", "in the right part"],
    "top": ["at the top", "near the top edge", "in the upper part"],
    "bottom": ["at the bottom", "near the bottom edge", "in the lower part"],
    "top-left": ["in the top left corner", "at the upper left", "near the top left"],
    "top-right": ["in the top right corner", "at the upper right", "near the top right"],
    "bottom-left": ["in the bottom left corner", "at the lower left", "near the bottom left"],
    "bottom-right": ["in the bottom right corner", "at the lower right", "near the bottom right"],
}
_BACKGROUND_PHRASES = ["on a {bg} background", "against a {bg} backdrop", "over a plain {bg} background"]
_TEMPLATES = [
    "a {size} {colour} {shape} {position} {background}",
    "{position} there is a {size} {colour} {shape} {background}",
    "a {colour} {shape}, {size}, {position} {background}",
    "{background_cap}, a {size} {colour} {shape} sits {position}",
    "picture of a {size} {colour} {shape} {position} {background}",
    "a {size} {shape} coloured {colour} {position} {background}",
]

SPLITS = ("train", "val")
_FIXED_DATE = "2014-01-01 00:00:00"  # no wall-clock time anywhere in the output
_SUPERSAMPLE = 4  # shapes are drawn at 4x and downsampled (LANCZOS) for anti-aliased edges


@dataclass(frozen=True)
class DemoDatasetConfig:
    """Validated `demo.dataset` (+ the top-level `image_size`)."""

    seed: int
    n_train: int
    n_val: int
    captions_per_image: int
    shapes: tuple[str, ...]
    colours: tuple[str, ...]
    backgrounds: tuple[str, ...]
    positions: tuple[str, ...]
    sizes: tuple[str, ...]
    jitter: float
    format: str
    image_size: int

    @property
    def n_combinations(self) -> int:
        return len(self.shapes) * len(self.colours) * len(self.backgrounds) * len(self.positions) * len(self.sizes)


def validate_config(cfg: dict, image_size: int, key: str = "demo.dataset") -> DemoDatasetConfig:
    """Check a `demo.dataset` dict; a ValueError names the offending key (e.g. `demo.dataset.shapes`)."""
    if not isinstance(cfg, dict):
        raise ValueError(f"{key} must be a mapping, got {type(cfg).__name__}")
    required = ["seed", "n_train", "n_val", "captions_per_image", "shapes", "colours", "backgrounds",
                "positions", "sizes", "jitter"]
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ValueError(f"{key}: missing keys {missing}")
    known = set(required) | {"format"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(f"{key}: unknown keys {unknown}")

    def _int(name: str, lo: int) -> int:
        v = cfg[name]
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{key}.{name} must be an integer >= {lo}, got {v!r}")
        return v

    def _names(name: str, allowed) -> tuple[str, ...]:
        v = cfg[name]
        if not isinstance(v, (list, tuple)) or not v:
            raise ValueError(f"{key}.{name} must be a non-empty list, got {v!r}")
        bad = [x for x in v if x not in allowed]
        if bad:
            raise ValueError(f"{key}.{name}: unknown value(s) {bad}; known: {sorted(allowed)}")
        if len(set(v)) != len(v):
            raise ValueError(f"{key}.{name} has duplicates: {list(v)}")
        return tuple(v)

    seed = _int("seed", 0)
    n_train = _int("n_train", 1)
    n_val = _int("n_val", 1)
    cpi = _int("captions_per_image", 1)
    shapes = _names("shapes", SHAPES)
    colours = _names("colours", COLOURS)
    backgrounds = _names("backgrounds", COLOURS)
    positions = _names("positions", POSITIONS)
    sizes = _names("sizes", SIZES)
    clash = sorted(set(colours) & set(backgrounds))
    if clash:
        raise ValueError(f"{key}.backgrounds: {clash} also listed in {key}.colours (the shape would be invisible)")
    jitter = cfg["jitter"]
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0.0 <= jitter <= 0.1:
        # Beyond 0.1 of the image side a jittered large shape leaves the image and the position
        # words stop being true.
        raise ValueError(f"{key}.jitter must be a number in [0, 0.1], got {jitter!r}")
    fmt = cfg.get("format", "png")
    if fmt not in ("png", "jpg"):
        raise ValueError(f"{key}.format must be 'png' or 'jpg', got {fmt!r}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or not 16 <= image_size <= 512:
        raise ValueError(f"image_size must be an integer in [16, 512] for the demo dataset, got {image_size!r}")
    # The grammar must be able to give every image `captions_per_image` distinct captions.
    n_phrasings = len(_TEMPLATES) * len(_BACKGROUND_PHRASES) * 3 ** 3
    if cpi > n_phrasings:
        raise ValueError(f"{key}.captions_per_image must be <= {n_phrasings}, got {cpi}")
    return DemoDatasetConfig(seed, n_train, n_val, cpi, shapes, colours, backgrounds, positions, sizes,
                             float(jitter), fmt, image_size)


# ----------------------------------------------------------------------------------------------
# Rendering


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    position: str
    size: str


def _shape_polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape centred at (cx, cy) with half-extent r (None: not a polygon)."""
    if shape == "square":
        s = r * 0.85
        return [(cx - s, cy - s), (cx + s, cy - s), (cx + s, cy + s), (cx - s, cy + s)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "cross":
        a = r * 0.35
        return [(cx - a, cy - r), (cx + a, cy - r), (cx + a, cy - a), (cx + r, cy - a), (cx + r, cy + a),
                (cx + a, cy + a), (cx + a, cy + r), (cx - a, cy + r), (cx - a, cy + a), (cx - r, cy + a),
                (cx - r, cy - a), (cx - a, cy - a)]
    if shape == "bar":
        return [(cx - r, cy - r * 0.35), (cx + r, cy - r * 0.35), (cx + r, cy + r * 0.35), (cx - r, cy + r * 0.35)]
    return None


def _jitter_rgb(rgb: tuple[int, int, int], rng: np.random.Generator, amount: int) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def render(scene: Scene, image_size: int, jitter: float, rng: np.random.Generator) -> Image.Image:
    """Draw one scene; centre, scale and colours are jittered from `rng`."""
    big = image_size * _SUPERSAMPLE
    bg = _jitter_rgb(COLOURS[scene.background], rng, 4)
    fg = _jitter_rgb(COLOURS[scene.colour], rng, 6)
    px, py = POSITIONS[scene.position]
    cx = (px + rng.uniform(-jitter, jitter)) * big
    cy = (py + rng.uniform(-jitter, jitter)) * big
    r = SIZES[scene.size] * rng.uniform(0.88, 1.12) * big
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    poly = _shape_polygon(scene.shape, cx, cy, r)
    if poly is not None:
        draw.polygon(poly, fill=fg)
    elif scene.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif scene.shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
        ri = r * 0.55
        draw.ellipse([cx - ri, cy - ri, cx + ri, cy + ri], fill=bg)
    else:  # validate_config only lets known shapes through
        raise AssertionError(scene.shape)
    return img.resize((image_size, image_size), Image.Resampling.LANCZOS)


def _fix_articles(text: str) -> str:
    # "a olive background" -> "an olive background"
    return re.sub(r"\b([Aa]) (?=[aeiou])", lambda m: m.group(1) + "n ", text)


def captions_for(scene: Scene, n: int, rng: np.random.Generator) -> list[str]:
    """`n` distinct captions of one scene, each a random template with random synonyms."""
    out: list[str] = []
    while len(out) < n:
        t = _TEMPLATES[rng.integers(len(_TEMPLATES))]
        bg_phrase = _BACKGROUND_PHRASES[rng.integers(len(_BACKGROUND_PHRASES))].format(bg=scene.background)
        words = {
            "size": _SIZE_WORDS[scene.size][rng.integers(3)],
            "colour": scene.colour,
            "shape": _SHAPE_WORDS[scene.shape][rng.integers(3)],
            "position": _POSITION_WORDS[scene.position][rng.integers(3)],
            "background": bg_phrase,
            "background_cap": bg_phrase[0].upper() + bg_phrase[1:],
        }
        text = _fix_articles(t.format(**words))
        text = text[0].upper() + text[1:] + "."
        if text not in out:
            out.append(text)
    return out


def sample_scene(cfg: DemoDatasetConfig, rng: np.random.Generator) -> Scene:
    return Scene(
        shape=cfg.shapes[rng.integers(len(cfg.shapes))],
        colour=cfg.colours[rng.integers(len(cfg.colours))],
        background=cfg.backgrounds[rng.integers(len(cfg.backgrounds))],
        position=cfg.positions[rng.integers(len(cfg.positions))],
        size=cfg.sizes[rng.integers(len(cfg.sizes))],
    )


def grammar_sentences() -> list[str]:
    """Sentences that together use every word the caption grammar can produce (for vocabularies)."""
    out = [re.sub(r"\{[^}]*\}", " ", t) for t in _TEMPLATES]
    out += [p.format(bg=c) for p in _BACKGROUND_PHRASES for c in COLOURS]
    for table in (_SIZE_WORDS, _SHAPE_WORDS, _POSITION_WORDS):
        out += [w for words in table.values() for w in words]
    out += list(COLOURS) + ["an", "a"]
    return out


# ----------------------------------------------------------------------------------------------
# Writing the COCO layout


def image_file_name(split: str, image_id: int, ext: str = "png") -> str:
    return f"COCO_{split}2014_{image_id:012d}.{ext}"


def _image_ids(cfg: DemoDatasetConfig, split: str) -> range:
    # Ids are unique across splits (as in COCO): train 1..n_train, val continues after.
    if split == "train":
        return range(1, cfg.n_train + 1)
    return range(cfg.n_train + 1, cfg.n_train + cfg.n_val + 1)


def _write_split(cfg: DemoDatasetConfig, root: Path, split: str, first_ann_id: int) -> int:
    folder = root / f"{split}2014"
    folder.mkdir(parents=True)
    images, annotations = [], []
    ann_id = first_ann_id
    split_index = SPLITS.index(split)
    for i, image_id in enumerate(_image_ids(cfg, split)):
        # One independent stream per image: the file does not depend on how many images precede it.
        rng = np.random.default_rng([cfg.seed, split_index, i])
        scene = sample_scene(cfg, rng)
        img = render(scene, cfg.image_size, cfg.jitter, rng)
        name = image_file_name(split, image_id, cfg.format)
        # Fixed encoder settings, no optimize pass, no metadata: byte-identical across runs.
        if cfg.format == "png":
            img.save(folder / name, format="PNG", compress_level=6, optimize=False)
        else:
            img.save(folder / name, format="JPEG", quality=95, subsampling=0, optimize=False)
        images.append({
            "id": image_id,
            "file_name": name,
            "width": cfg.image_size,
            "height": cfg.image_size,
            "license": 1,
            "coco_url": "",
            "flickr_url": "",
            "date_captured": _FIXED_DATE,
        })
        for text in captions_for(scene, cfg.captions_per_image, rng):
            annotations.append({"id": ann_id, "image_id": image_id, "caption": text})
            ann_id += 1
    doc = {
        "info": {
            "description": "RankE demo world: synthetic captioned shapes in MS-COCO 2014 caption layout",
            "version": "1.0",
            "year": 2014,
            "contributor": "ranke.data.demo",
            "date_created": _FIXED_DATE,
            "generator_config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        },
        "licenses": [{"id": 1, "name": "synthetic (generated)", "url": ""}],
        "images": images,
        "annotations": annotations,
    }
    (root / "annotations").mkdir(exist_ok=True)
    with open(root / "annotations" / f"captions_{split}2014.json", "w", encoding="utf-8") as f:
        json.dump(doc, f, ensure_ascii=False)
    log.info("%s: %d images, %d captions", split, len(images), len(annotations))
    return ann_id


def write_demo_coco(root: str | os.PathLike, dataset_cfg: dict, image_size: int) -> DemoDatasetConfig:
    """Generate the demo dataset into `root` (replacing it atomically). Returns the validated config."""
    cfg = validate_config(dataset_cfg, image_size)
    log.info("demo dataset: %d train + %d val images of %dpx, %d captions each, %d attribute combinations",
             cfg.n_train, cfg.n_val, cfg.image_size, cfg.captions_per_image, cfg.n_combinations)
    with atomic_path(root, is_dir=True) as tmp:
        next_ann = _write_split(cfg, tmp, "train", first_ann_id=1)
        _write_split(cfg, tmp, "val", first_ann_id=next_ann)
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the dataset is an ordinary shared folder
    return cfg


__all__ = [
    "COLOURS", "SHAPES", "POSITIONS", "SIZES", "DemoDatasetConfig", "Scene", "validate_config",
    "render", "captions_for", "grammar_sentences", "sample_scene", "image_file_name", "write_demo_coco",
]
