"""The small stages the lead owns: tokenize, code histogram, prompts, baseline/per-round sampling."""

import json
import shutil

import numpy as np
import pytest

from ranke import io
from ranke.data import coco
from ranke.generate import generate_samples, prompt_seeds
from ranke.prompts import make_prompts
from ranke.tokenize import code_histogram, tokenize_split
from tiny_world import IMAGE_SIZE, VQ_ARCH, make_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return make_world(root)


def test_tokenize_rows_match_coco(world, tmp_path):
    out = tmp_path / "val.parquet"
    table = tokenize_split(world, "val", out, num_workers=0)
    back = io.read_parquet(out, "tokens")
    split = coco.read_split(world["assets"]["coco_root"], "val")
    assert sorted(back["image_id"]) == sorted(split.images["image_id"])
    grid = IMAGE_SIZE // 2
    assert (back["grid_h"] == grid).all() and (back["grid_w"] == grid).all()
    assert all(len(c) == grid * grid for c in back["codes"])
    assert all(0 <= min(c) and max(c) < VQ_ARCH["codebook_size"] for c in back["codes"])
    assert back["vq_sha256"].nunique() == 1 and back["vq_sha256"][0] == io.sha256_file(world["assets"]["vq"]["checkpoint"])
    # captions are grouped per image, in caption-id order
    first = split.captions[split.captions["image_id"] == back["image_id"][0]]
    assert list(back["captions"][0]) == first["caption"].tolist()
    # a second run, with two loader processes from the config (tokenize.workers), gives the same
    # codes: the stage adds no randomness and the loader does not reorder
    with_workers = dict(world, tokenize={**world.get("tokenize", {}), "workers": 2})
    again = tokenize_split(with_workers, "val", tmp_path / "again.parquet")
    assert list(again["image_id"]) == list(table["image_id"])
    assert all(np.array_equal(a, b) for a, b in zip(table["codes"], again["codes"]))


def test_tokenize_bad_image_named_or_skipped(world, tmp_path):
    root = tmp_path / "coco"
    shutil.copytree(world["assets"]["coco_root"], root)
    victim = sorted((root / "val2014").iterdir())[1]
    victim.write_bytes(b"definitely not a png")
    cfg = json.loads(json.dumps(world))
    cfg["assets"]["coco_root"] = str(root)
    with pytest.raises(coco.ImageReadError, match=victim.name):
        tokenize_split(cfg, "val", tmp_path / "t.parquet", num_workers=0)
    assert not (tmp_path / "t.parquet").exists()
    cfg["tokenize"]["skip_bad_images"] = True
    table = tokenize_split(cfg, "val", tmp_path / "t.parquet", num_workers=0)
    assert len(table) == 9


def test_code_histogram_halves(world, tmp_path):
    tokens = tmp_path / "val.parquet"
    tokenize_split(world, "val", tokens, num_workers=0)
    hist = code_histogram(tokens, VQ_ARCH["codebook_size"], tmp_path / "hist.parquet")
    table = io.read_parquet(tokens, "tokens")
    assert hist["count"].sum() == sum(len(c) for c in table["codes"])
    assert (hist["count"] == hist["count_a"] + hist["count_b"]).all()
    assert hist["count_a"].sum() == sum(len(c) for c in table["codes"][0::2])
    with pytest.raises(ValueError, match="outside"):
        code_histogram(tokens, 4, tmp_path / "bad.parquet")


def test_prompts_protocol(world, tmp_path):
    p1 = make_prompts(world, tmp_path / "p1.parquet")
    p2 = make_prompts(world, tmp_path / "p2.parquet")
    assert p1.equals(p2)
    assert len(p1) == 6 and p1["image_id"].is_unique and list(p1["prompt_id"]) == list(range(6))
    caps = coco.read_split(world["assets"]["coco_root"], "val").captions.set_index("caption_id")
    assert all(caps.loc[c, "caption"] == t for c, t in zip(p1["caption_id"], p1["caption"]))
    assert all(caps.loc[c, "image_id"] == i for c, i in zip(p1["caption_id"], p1["image_id"]))


def test_samples_do_not_depend_on_batch_size(world, tmp_path):
    prompts = tmp_path / "prompts.parquet"
    make_prompts(world, prompts)
    a = generate_samples(world, "base", 0, "base", prompts, tmp_path / "a.parquet")
    cfg = json.loads(json.dumps(world))
    cfg["sampling"]["batch_size"] = 5
    b = generate_samples(cfg, "base", 0, "base", prompts, tmp_path / "b.parquet")
    assert all(np.array_equal(x, y) for x, y in zip(a["codes"], b["codes"]))
    assert list(a["seed"]) == list(prompt_seeds(world["sampling"]["seed"], range(6)))
    back = io.read_parquet(tmp_path / "a.parquet", "samples")
    assert (back["method"] == "base").all() and (back["round"] == 0).all()
    # another seed gives other samples
    cfg["sampling"]["seed"] = 7
    c = generate_samples(cfg, "base", 0, "base", prompts, tmp_path / "c.parquet")
    assert not all(np.array_equal(x, y) for x, y in zip(a["codes"], c["codes"]))
