"""COCO-layout reading: schema, joins, errors naming files, image loading, the 30K protocol."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ranke.data import coco
from ranke.data.demo import write_demo_coco

TINY = {
    "seed": 3, "n_train": 8, "n_val": 5, "captions_per_image": 3,
    "shapes": ["circle", "square"], "colours": ["red", "blue"], "backgrounds": ["black"],
    "positions": ["left", "right"], "sizes": ["small", "large"], "jitter": 0.05, "format": "png",
}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo") / "coco"
    write_demo_coco(root, TINY, 32)
    return root


def _write_ann(tmp_path: Path, doc, split="val") -> Path:
    (tmp_path / "annotations").mkdir(parents=True, exist_ok=True)
    p = tmp_path / "annotations" / f"captions_{split}2014.json"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def _doc():
    return {
        "info": {}, "licenses": [],
        "images": [{"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "width": 40, "height": 30},
                   {"id": 3, "file_name": "COCO_val2014_000000000003.jpg", "width": 30, "height": 40}],
        "annotations": [{"id": 11, "image_id": 7, "caption": "  A dog on a sofa.\n"},
                        {"id": 10, "image_id": 3, "caption": "A cat."},
                        {"id": 12, "image_id": 7, "caption": "A brown dog. "}],
    }


@pytest.mark.parametrize("split", ["train", "val"])
def test_demo_json_validates_against_schema(demo_root, split):
    doc = json.loads(coco.annotation_path(demo_root, split).read_text())
    jsonschema.validate(doc, coco.COCO_CAPTIONS_SCHEMA)


def test_schema_rejects_what_the_reader_cannot_use():
    bad = _doc()
    del bad["annotations"][0]["caption"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, coco.COCO_CAPTIONS_SCHEMA)


def test_read_split_joins_and_strips(tmp_path):
    _write_ann(tmp_path, _doc())
    split = coco.read_split(tmp_path, "val")
    assert list(split.images["image_id"]) == [3, 7]
    assert list(split.images["file"]) == ["val2014/COCO_val2014_000000000003.jpg", "val2014/COCO_val2014_000000000007.jpg"]
    c = split.captions
    assert list(c["caption_id"]) == [10, 11, 12]
    assert list(c["caption"]) == ["A cat.", "A dog on a sofa.", "A brown dog."]
    assert list(c["file"]) == ["val2014/COCO_val2014_000000000003.jpg"] + ["val2014/COCO_val2014_000000000007.jpg"] * 2
    per = coco.captions_by_image(c)
    assert per.loc[per.image_id == 7, "caption_ids"].item() == [11, 12]


def test_empty_captions_and_uncaptioned_images_are_named_by_id(tmp_path, caplog):
    doc = _doc()
    doc["images"].append({"id": 9, "file_name": "COCO_val2014_000000000009.jpg", "width": 4, "height": 4})
    doc["annotations"].append({"id": 13, "image_id": 3, "caption": "   "})
    _write_ann(tmp_path, doc)
    with caplog.at_level("WARNING", logger="ranke.data.coco"):
        split = coco.read_split(tmp_path, "val")
    assert 13 not in set(split.captions["caption_id"])
    assert "dropping 1 empty captions (caption ids [13])" in caplog.text
    assert "1 images have no caption and are not tokenized or prompted (image ids [9])" in caplog.text


def test_read_demo_split(demo_root):
    split = coco.read_split(demo_root, "train")
    assert len(split.images) == 8 and len(split.captions) == 24
    for f in split.images["file"]:
        assert (demo_root / f).is_file()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: {k: v for k, v in d.items() if k != "annotations"}, "annotations"),
        (lambda d: {**d, "images": []}, "images"),
        (lambda d: {**d, "annotations": d["annotations"] + [{"id": 99, "image_id": 5, "caption": "x"}]}, "image ids"),
        (lambda d: {**d, "annotations": d["annotations"] + [{"id": 10, "image_id": 3, "caption": "x"}]}, "duplicate annotation"),
        (lambda d: {**d, "images": d["images"] + [dict(d["images"][0])]}, "duplicate image"),
        (lambda d: {**d, "annotations": [{"id": 1, "image_id": 3}]}, "caption"),
        (lambda d: {**d, "annotations": [{"id": 1, "image_id": "3", "caption": "x"}]}, "image_id"),
    ],
)
def test_bad_annotations_name_the_file(tmp_path, mutate, message):
    path = _write_ann(tmp_path, mutate(_doc()))
    with pytest.raises(coco.CocoFormatError) as e:
        coco.read_split(tmp_path, "val")
    assert str(path) in str(e.value) and message in str(e.value)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="captions_train2014.json"):
        coco.read_split(tmp_path, "train")


def test_load_image_transforms_on_a_non_square_image(tmp_path):
    # 60x40 image: left 10 px red, middle 40 px green, right 10 px blue
    arr = np.zeros((40, 60, 3), np.uint8)
    arr[:, :10, 0] = 255
    arr[:, 10:50, 1] = 255
    arr[:, 50:, 2] = 255
    Image.fromarray(arr).save(tmp_path / "x.png")
    x = coco.load_image(tmp_path / "x.png", 20, coco.EVAL)  # crop to the shorter side first: all green
    assert x.shape == (3, 20, 20) and x.dtype == torch.uint8
    assert (x[1] == 255).all() and (x[0] == 0).all() and (x[2] == 0).all()
    y = coco.load_image(tmp_path / "x.png", 20, coco.GT)  # 30x20 after the resize, centre 20 columns
    assert y.shape == (3, 20, 20) and (y[1] > 200).all()
    with pytest.raises(ValueError, match="transform"):
        coco.load_image(tmp_path / "x.png", 20, "nearest-ish")


@pytest.mark.parametrize("w, h, resized, box", [
    (640, 427, (383, 256), (64, 0, 320, 256)),   # long side truncated (383.7 -> 383), offset round(63.5) = 64
    (480, 640, (256, 341), (0, 42, 256, 298)),   # portrait: 341.3 -> 341, offset round(42.5) = 42
    (500, 375, (341, 256), (42, 0, 298, 256)),
    (640, 480, (341, 256), (42, 0, 298, 256)),
])
def test_gt_transform_is_torchvision_resize_then_centre_crop(tmp_path, w, h, resized, box):
    """The official RankE training transform, torchvision Resize(256, bicubic) + CenterCrop(256), at
    the geometry of common COCO sizes (the earlier round() of the long side was off by one px)."""
    rng = np.random.default_rng(w + h)
    arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "x.png")
    expected = Image.fromarray(arr).resize(resized, Image.Resampling.BICUBIC).crop(box)
    got = coco.load_image(tmp_path / "x.png", 256, coco.GT)
    assert torch.equal(got, torch.from_numpy(np.asarray(expected).copy()).permute(2, 0, 1))


def test_load_image_errors_name_the_path(tmp_path):
    with pytest.raises(coco.ImageReadError, match="missing.png"):
        coco.load_image(tmp_path / "missing.png", 32, coco.GT)
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(coco.ImageReadError, match="corrupt.png"):
        coco.load_image(bad, 32, coco.GT)
    # a truncated real PNG fails at decode time, still with its name
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "trunc.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(coco.ImageReadError, match="trunc.png"):
        coco.load_image(tmp_path / "trunc.png", 32, coco.GT)
    with pytest.raises(coco.ImageReadError, match="corrupt.png"):
        coco.load_images(tmp_path, ["t.png", "corrupt.png"], 32, coco.GT)


def _picture(seed: int = 0) -> np.ndarray:
    """A 40x40 RGB picture with smooth and sharp content."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:40, :40]
    arr = np.stack([x * 6, y * 6, (x + y) * 3], axis=-1).astype(np.uint8)
    arr[10:20, 15:30] = rng.integers(0, 256, 3)
    return arr


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """PIL's I;16 -> RGB conversion clips every value above 255 (a white image); a 16-bit PNG must
    give the same pixels as the same picture stored in 8 bit."""
    gray8 = np.asarray(Image.fromarray(_picture()).convert("L"))
    Image.fromarray(gray8).save(tmp_path / "g8.png")
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode == "I;16" and (np.asarray(im.convert("RGB")) == 255).mean() > 0.9  # the trap: white
    for transform in coco.TRANSFORMS:
        a = coco.load_image(tmp_path / "g8.png", 32, transform)
        b = coco.load_image(tmp_path / "g16.png", 32, transform)
        assert torch.equal(a, b), transform


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "1", "YCbCr"])
def test_alpha_palette_and_gray_modes_convert_as_pil_does_without_alpha(tmp_path, mode):
    base = Image.fromarray(_picture())
    if mode in ("RGBA", "LA"):
        img = base.convert(mode)
        img.putalpha(Image.fromarray(np.tile(np.arange(40, dtype=np.uint8) * 6, (40, 1))))
    else:
        img = base.convert(mode)
    path = tmp_path / f"x.{'jpg' if mode == 'YCbCr' else 'png'}"
    if mode == "P":  # a palette image with a transparent index
        img.save(path, transparency=0)
    else:
        img.save(path)
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGBA").convert("RGB") if im.mode in ("P", "PA") else im.convert("RGB"))
    got = coco.load_image(path, 40, coco.EVAL)  # 40 px square: the transform is the identity
    assert np.array_equal(got.permute(1, 2, 0).numpy(), expected)


def test_cmyk_goes_through_its_icc_profile(tmp_path):
    from PIL import ImageCms

    rgb = Image.fromarray(_picture())
    srgb = ImageCms.createProfile("sRGB")
    # a CMYK JPEG whose embedded profile is not PIL's naive CMYK: an sRGB profile of a CMYK
    # image is unusable, which must fail naming the file rather than pass silently
    cmyk = rgb.convert("CMYK")
    cmyk.save(tmp_path / "plain.jpg")
    naive = coco.load_image(tmp_path / "plain.jpg", 40, coco.EVAL)  # no profile: PIL's conversion
    with Image.open(tmp_path / "plain.jpg") as im:
        assert np.array_equal(naive.permute(1, 2, 0).numpy(), np.asarray(im.convert("RGB")))
    cmyk.save(tmp_path / "badicc.jpg", icc_profile=ImageCms.ImageCmsProfile(srgb).tobytes())
    with pytest.raises(coco.ImageReadError, match="badicc.jpg.*ICC"):
        coco.load_image(tmp_path / "badicc.jpg", 40, coco.EVAL)


@pytest.mark.parametrize("mode, dtype", [("I", np.int32), ("F", np.float32)])
def test_32_bit_images_are_refused_naming_the_file(tmp_path, mode, dtype):
    Image.fromarray(_picture()[..., 0].astype(dtype) * 100).save(tmp_path / "deep.tiff")
    with pytest.raises(coco.ImageReadError, match=r"deep\.tiff.*no defined display range"):
        coco.load_image(tmp_path / "deep.tiff", 32, coco.GT)


def test_load_images_and_float_roundtrip(demo_root):
    split = coco.read_split(demo_root, "val")
    x = coco.load_images(demo_root, split.images["file"], 32, coco.GT)
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.uint8
    f = coco.to_float(x)
    assert f.min() >= -1 and f.max() <= 1
    assert torch.equal(coco.to_uint8(f), x)


def _captions(n_images: int, per: int = 3) -> pd.DataFrame:
    rows = [(i * 10 + j, i, f"caption {j} of {i}") for i in range(n_images) for j in range(per)]
    return pd.DataFrame(rows, columns=["caption_id", "image_id", "caption"])


def test_coco30k_prompts_deterministic_distinct_images():
    caps = _captions(50)
    a = coco.coco30k_prompts(caps, 20, seed=0)
    b = coco.coco30k_prompts(caps.sample(frac=1.0, random_state=1), 20, seed=0)  # row order irrelevant
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns) == ["prompt_id", "image_id", "caption_id", "caption"]
    assert list(a["prompt_id"]) == list(range(20))
    assert a["image_id"].is_unique
    merged = a.merge(caps, on=["caption_id", "image_id", "caption"])
    assert len(merged) == 20  # each prompt is a real caption of its image
    c = coco.coco30k_prompts(caps, 20, seed=1)
    assert not a["caption_id"].equals(c["caption_id"])
    # a larger n extends the same draw (prefix property within the first pass)
    d = coco.coco30k_prompts(caps, 30, seed=0)
    pd.testing.assert_frame_equal(d.iloc[:20].reset_index(drop=True), a)


def test_coco30k_prompts_cycles_when_n_exceeds_images():
    caps = _captions(7)
    p = coco.coco30k_prompts(caps, 16, seed=0)
    assert len(p) == 16
    counts = p["image_id"].value_counts()
    assert set(counts.index) == set(range(7))
    assert counts.max() - counts.min() <= 1  # every image used before any is used a third time
    assert p.iloc[:7]["image_id"].is_unique
