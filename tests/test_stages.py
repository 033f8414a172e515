"""The small stages the lead owns: tokenize, code histogram, prompts, baseline/per-round sampling."""

import json
import shutil

import numpy as np
import torch
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
    cfg["bad_images"] = "skip"
    table = tokenize_split(cfg, "val", tmp_path / "t.parquet", num_workers=0)
    assert len(table) == 9
    # every image bad: one line saying that none is left (it used to crash inside pyarrow)
    for f in (root / "val2014").iterdir():
        f.write_bytes(b"not an image either")
    with pytest.raises(ValueError, match=r"tokenize val: 0 readable image\(s\) of 10 left after skipping 10"):
        tokenize_split(cfg, "val", tmp_path / "t2.parquet", num_workers=0)
    assert not (tmp_path / "t2.parquet").exists()


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


def test_a_failing_stage_ends_with_one_line_naming_what_and_where(world, tmp_path):
    """The last line of a failed stage's log (what --show-failed-logs and `tail` show first) names
    the file; the traceback stays above it."""
    import subprocess
    import sys

    tokens = tmp_path / "val.parquet"
    tokenize_split(world, "val", tokens, num_workers=0)
    data = bytearray(tokens.read_bytes())
    data[16:len(data) // 2] = bytes(len(data) // 2 - 16)  # damaged pages, intact footer
    tokens.write_bytes(bytes(data))
    out = subprocess.run([sys.executable, "-m", "ranke", "tokenize", "histogram", "--tokens", str(tokens),
                          "--codebook-size", "16", "--out", str(tmp_path / "hist.parquet")],
                         capture_output=True, text=True, timeout=120)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1, out.stderr[-2000:]
    assert lines[-1].startswith("ranke tokenize: error: CorruptFileError: ") and str(tokens) in lines[-1], lines[-3:]
    assert "Traceback (most recent call last)" in out.stderr
    assert not (tmp_path / "hist.parquet").exists()


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


class _PixelCodec:
    """A lossless stand-in for the VQ: one code per pixel (its 24-bit colour), so decode(codes) is
    the tokenized image exactly and any difference between x and its codes' image shows."""

    def __init__(self, size):
        self.grid = (size, size)
        self.vq = torch.nn.Identity()
        self.vq_file = None

    def tokenize(self, vq, images):
        x = coco.to_uint8(images).long()
        return (x[:, 0] * 65536 + x[:, 1] * 256 + x[:, 2]).flatten(1)

    def decode(self, codes):
        c = codes.long().view(-1, *self.grid)
        rgb = torch.stack([c // 65536, (c // 256) % 256, c % 256], dim=1)
        return coco.to_float(rgb.to(torch.uint8))


def _non_square_coco(root, sizes):
    from PIL import Image

    (root / "train2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, (w, h) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        arr = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx // 5 + yy // 7) % 2) * 255], -1)
        arr = np.clip(arr + rng.integers(-20, 20, arr.shape), 0, 255).astype(np.uint8)
        name = f"COCO_train2014_{i:012d}.png"
        Image.fromarray(arr).save(root / "train2014" / name)
        images.append({"id": i, "file_name": name, "width": w, "height": h})
        anns.append({"id": 10 + i, "image_id": i, "caption": f"picture {i}"})
    (root / "annotations" / "captions_train2014.json").write_text(json.dumps({"images": images, "annotations": anns}))


def test_trainer_image_is_the_image_its_codes_were_made_from(world, tmp_path, monkeypatch):
    """Non-square sources (COCO sizes, scaled down): the decoder's ground-truth x in a training round
    and the image whose codes `tokenize` stored are the same tensor, and decoding the stored codes
    gives x itself, not a differently cropped or shifted copy."""
    from ranke.models import factory
    from ranke.train.rollout import TrainData

    size = 16
    root = tmp_path / "coco"
    _non_square_coco(root, [(64, 48), (48, 64), (50, 37), (64, 43)])
    codec = _PixelCodec(size)
    monkeypatch.setattr(factory, "build_backbone", lambda *a, **k: codec)
    cfg = json.loads(json.dumps(world))
    cfg["assets"]["coco_root"] = str(root)
    cfg["image_size"] = size
    tokens = tokenize_split(cfg, "train", tmp_path / "train.parquet", num_workers=0)
    data = TrainData(tokens, root, size, prompts_per_step=4, seed=0)
    batch = data.batch(0)
    for x, codes, image_id in zip(batch.images, batch.gt_codes, batch.image_ids):
        assert torch.equal(codec.decode(codes[None])[0], x), image_id
        # the images are sensitive to the crop: the evaluation transform gives visibly other pixels
        file = root / "train2014" / f"COCO_train2014_{image_id:012d}.png"
        other = coco.to_float(coco.load_image(file, size, coco.EVAL))
        assert (other - x).abs().mean() > 0.02, image_id


def test_prompts_from_the_released_captions_file(world, tmp_path):
    """prompts.captions_csv: read as the official sampler reads it (pandas, else one line each) and
    cycled to n. A file with unquoted commas, like the released coco_captions.csv, makes pandas fail:
    then every non-empty line is a prompt, the header included."""
    csv = tmp_path / "coco_captions.csv"
    csv.write_text("Prompt\nA dog on a couch.\nA man, a woman and a horse.\n\n  Two cats.  \n", encoding="utf-8")
    cfg = json.loads(json.dumps(world))
    cfg["prompts"] = {"split": "val", "n": 7, "seed": 0, "captions_csv": str(csv)}
    p = make_prompts(cfg, tmp_path / "p.parquet")
    assert p["caption"].tolist() == ["Prompt", "A dog on a couch.", "A man, a woman and a horse.", "Two cats.",
                                     "Prompt", "A dog on a couch.", "A man, a woman and a horse."]
    assert (p["image_id"] == -1).all() and (p["caption_id"] == -1).all()
    assert io.read_parquet(tmp_path / "p.parquet", "prompts")["prompt_id"].tolist() == list(range(7))
    # a well-formed table: the prompt column by name (any case), truncated to n
    csv.write_text('id,Caption\n1,"A red bus, parked."\n2,A tree.\n3,A kite.\n', encoding="utf-8")
    cfg["prompts"]["n"] = 2
    assert make_prompts(cfg, tmp_path / "q.parquet")["caption"].tolist() == ["A red bus, parked.", "A tree."]
    cfg["prompts"]["captions_csv"] = str(tmp_path / "missing.csv")
    with pytest.raises(FileNotFoundError, match="prompts.captions_csv"):
        make_prompts(cfg, tmp_path / "r.parquet")
