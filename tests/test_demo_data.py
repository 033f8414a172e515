"""The demo dataset generator: determinism, COCO layout, config validation, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ranke.data import demo
from ranke.data.demo import validate_config, write_demo_coco

TINY = {
    "seed": 0,
    "n_train": 12,
    "n_val": 6,
    "captions_per_image": 3,
    "shapes": ["circle", "square", "triangle"],
    "colours": ["red", "green", "blue"],
    "backgrounds": ["black", "gray"],
    "positions": ["left", "center", "right"],
    "sizes": ["small", "large"],
    "jitter": 0.08,
    "format": "png",
}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_same_seed_same_bytes(tmp_path, fmt):
    cfg = {**TINY, "format": fmt}
    write_demo_coco(tmp_path / "a", cfg, 32)
    write_demo_coco(tmp_path / "b", cfg, 32)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert len(a) == 12 + 6 + 2
    assert sum(k.endswith("." + fmt) for k in a) == 18
    assert a == b


def test_different_seed_different_files(tmp_path):
    write_demo_coco(tmp_path / "a", TINY, 32)
    write_demo_coco(tmp_path / "b", {**TINY, "seed": 1}, 32)
    a, b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    differing = [k for k in a if a[k] != b[k]]
    assert len(differing) >= 15


def test_coco_layout_and_captions(tmp_path):
    root = tmp_path / "coco"
    write_demo_coco(root, TINY, 32)
    for split, n, first_id in [("train", 12, 1), ("val", 6, 13)]:
        doc = json.loads((root / "annotations" / f"captions_{split}2014.json").read_text())
        assert set(doc) == {"info", "licenses", "images", "annotations"}
        assert [im["id"] for im in doc["images"]] == list(range(first_id, first_id + n))
        for im in doc["images"]:
            assert im["file_name"] == f"COCO_{split}2014_{im['id']:012d}.png"
            assert (root / f"{split}2014" / im["file_name"]).is_file()
            assert set(im) == {"id", "file_name", "width", "height", "license", "coco_url", "flickr_url",
                               "date_captured"}
        by_image: dict[int, list[str]] = {}
        for ann in doc["annotations"]:
            by_image.setdefault(ann["image_id"], []).append(ann["caption"])
        assert len(by_image) == n
        for caps in by_image.values():
            assert len(caps) == 3 and len(set(caps)) == 3  # differently worded
    # annotation ids are unique across both splits, as in COCO
    ids = [a["id"] for s in ("train", "val")
           for a in json.loads((root / "annotations" / f"captions_{s}2014.json").read_text())["annotations"]]
    assert len(ids) == len(set(ids))


def test_caption_names_the_scene_attributes():
    import numpy as np

    scene = demo.Scene(shape="circle", colour="red", background="gray", position="left", size="large")
    caps = demo.captions_for(scene, 6, np.random.default_rng(0))
    for c in caps:
        assert "red" in c and "gray" in c
        assert any(w in c for w in ("circle", "disc", "round dot"))
        assert any(w in c for w in ("large", "big", "huge"))
        assert "left" in c


def test_jitter_makes_pixels_differ_for_the_same_scene():
    import numpy as np

    scene = demo.Scene(shape="square", colour="blue", background="black", position="center", size="small")
    a = np.asarray(demo.render(scene, 32, 0.08, np.random.default_rng(1)))
    b = np.asarray(demo.render(scene, 32, 0.08, np.random.default_rng(2)))
    assert a.shape == (32, 32, 3)
    assert (a != b).any()


@pytest.mark.parametrize(
    "override, key",
    [
        ({"n_train": 0}, "demo.dataset.n_train"),
        ({"n_val": 0}, "demo.dataset.n_val"),
        ({"shapes": ["blob"]}, "demo.dataset.shapes"),
        ({"colours": ["red", "chartreuse"]}, "demo.dataset.colours"),
        ({"backgrounds": []}, "demo.dataset.backgrounds"),
        ({"backgrounds": ["red"]}, "demo.dataset.backgrounds"),
        ({"positions": ["nowhere"]}, "demo.dataset.positions"),
        ({"sizes": ["gigantic"]}, "demo.dataset.sizes"),
        ({"jitter": 0.5}, "demo.dataset.jitter"),
        ({"captions_per_image": 0}, "demo.dataset.captions_per_image"),
        ({"format": "gif"}, "demo.dataset.format"),
        ({"colour": ["red"]}, "demo.dataset"),
    ],
)
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        validate_config({**TINY, **override}, 32)


def test_bad_image_size_names_the_key():
    with pytest.raises(ValueError, match="image_size"):
        validate_config(TINY, 8)


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = demo.render

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(demo, "render", flaky)
    with pytest.raises(RuntimeError):
        write_demo_coco(tmp_path / "coco", TINY, 32)
    assert list(tmp_path.iterdir()) == []


def test_cli(tmp_path):
    from ranke.cli import main

    cfg = {"image_size": 32, "demo": {"dataset": TINY}, "seed": 0}
    assert main(["demo-data", "--config-json", json.dumps(cfg), "--out", str(tmp_path / "coco")]) == 0
    assert (tmp_path / "coco" / "annotations" / "captions_val2014.json").is_file()
