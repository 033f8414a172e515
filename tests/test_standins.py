"""`python -m ranke standins`: every asset of a study in the format its production loader reads.

These tests load each stand-in through the loader a cluster run uses (not through a test helper),
so a format the loaders cannot read, or a study key that points at the wrong kind of file, fails
here rather than after a queue wait.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import STUDIES
from ranke.config import load_config, missing_assets
from ranke.data import coco


def _config(name, standin_sets):
    _, overlay = standin_sets(name)
    return load_config(STUDIES[name], overlay)


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_overlay_points_the_study_at_existing_files_and_changes_only_sizes(name, standin_sets):
    out, overlay_path = standin_sets(name)
    cfg = _config(name, standin_sets)
    assert missing_assets(cfg) == []
    study = yaml.safe_load(STUDIES[name].read_text())
    overlay = yaml.safe_load(overlay_path.read_text())
    # the study's choices survive: methods, model kinds, protocols, hyper-parameters
    assert [{**m, "schedule": m.get("schedule", "step")} for m in study["methods"]] == cfg["methods"]
    for key in ("clip", "reward", "fid", "perceptual"):
        for field in ("kind", "model", "extractor", "prompt_prefix", "quick_gelu"):
            if field in study["assets"][key]:
                assert cfg["assets"][key][field] == study["assets"][key][field], (key, field)
    assert cfg["train"]["policy"] == {**cfg["train"]["policy"], **study["train"]["policy"]}
    assert cfg["train"]["decoder"] == {**cfg["train"]["decoder"], **study["train"]["decoder"]}
    # every asset path lies in the stand-in directory
    for value in json.dumps(overlay["assets"]).split('"'):
        if value.startswith("/"):
            assert value.startswith(str(out)), value


def test_coco_tree_has_real_sizes_modes_and_annotations(standin_sets):
    cfg = _config("llamagen_xl", standin_sets)
    root = cfg["assets"]["coco_root"]
    modes, sizes, exif = set(), set(), 0
    for split in ("train", "val"):
        s = coco.read_split(root, split)
        assert (s.captions.groupby("image_id").size() == 5).all()
        for _, row in s.images.iterrows():
            assert row["file_name"] == f"COCO_{split}2014_{row['image_id']:012d}.jpg"
            with Image.open(f"{root}/{row['file']}") as img:
                assert img.format == "JPEG" and img.size == (row["width"], row["height"])
                modes.add(img.mode)
                sizes.add(img.size)
                exif += img.getexif().get(0x0112, 1) != 1
            x = coco.load_image(f"{root}/{row['file']}", 64, coco.GT)
            assert x.shape == (3, 64, 64)
    assert {"RGB", "L", "CMYK"} <= modes and exif >= 1
    assert {(640, 480), (480, 640), (500, 375), (427, 640)} <= sizes
    captions = coco.read_split(root, "train").captions["caption"]
    assert captions.str.len().between(20, 200).all()
    assert captions.str.contains(",").any() and captions.map(lambda c: not c.isascii()).any()


def test_llamagen_checkpoints_load_strictly_through_the_backbone(standin_sets):
    from ranke.models.checkpoints import load_state_dict
    from ranke.models.factory import build_backbone

    cfg = _config("llamagen_xl", standin_sets)
    raw = torch.load(cfg["assets"]["vq"]["checkpoint"], map_location="cpu", weights_only=False)
    assert {"model", "optimizer", "discriminator", "optimizer_disc", "steps", "args"} <= set(raw)
    assert "quantize.codebook_used" in load_state_dict(cfg["assets"]["vq"]["checkpoint"])
    backbone = build_backbone(cfg, "cpu")  # strict loads of both files, T5 from its directory
    assert backbone.grid == (4, 4) and backbone.codebook_size == 16384
    cond = backbone.encode_prompts(["A man riding a wave on top of a surfboard."])
    assert cond.emb.shape == (1, 120, cfg["assets"]["gpt"]["arch"]["caption_dim"])
    codes = backbone.sample(backbone.policy, cond, seeds=[0], cfg_scale=6.0, top_k=1000)
    assert backbone.decode(backbone.vq, codes).shape == (1, 3, 64, 64)


def test_flan_t5_directory_is_the_hub_layout(standin_sets):
    cfg = _config("llamagen_xl", standin_sets)
    t5 = cfg["assets"]["text_encoder"]["path"]
    files = {p.name for p in Path(t5).iterdir()}
    assert {"config.json", "spiece.model", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "model.safetensors.index.json"} <= files
    assert json.loads((Path(t5) / "config.json").read_text())["architectures"] == [
        "T5ForConditionalGeneration"]
    from ranke.models.text import TextEncoder

    emb, mask = TextEncoder(t5, max_length=120).encode(["two dogs playing with a frisbee in the park"])
    assert emb.shape == (1, 120, 64) and 3 < int(mask.sum()) < 120


def test_reward_tokenizer_is_the_real_clip_bpe(standin_sets):
    """The transformers tokenizer of the reward stand-in gives the token ids of the real CLIP
    tokenizer (open_clip's), so captions are cut and pooled as in production."""
    import open_clip
    from transformers import AutoTokenizer

    cfg = _config("llamagen_xl", standin_sets)
    hf = AutoTokenizer.from_pretrained(cfg["assets"]["reward"]["weights"], local_files_only=True)
    oc = open_clip.get_tokenizer("ViT-B-32-quickgelu")
    for text in ["A man riding a wave on top of a surfboard.", "two people in front of a café — close up!",
                 "a dog's toy, isn't it?  "]:
        assert hf(text)["input_ids"] == [int(t) for t in oc([text])[0] if t != 0]
    from ranke.rewards import build_reward

    reward = build_reward(cfg["assets"]["reward"], "cpu")
    assert torch.isfinite(reward(torch.zeros(2, 3, 64, 64), ["a cat", "a dog"])).all()


def test_lpips_files_are_the_heads_plus_torchvision_vgg16(standin_sets):
    from ranke.perceptual import build_perceptual

    cfg = _config("llamagen_xl", standin_sets)
    p = cfg["assets"]["perceptual"]
    heads = torch.load(p["weights"], weights_only=True)
    assert sorted(heads) == [f"lin{i}.model.1.weight" for i in range(5)]
    assert all(k.startswith("features.") for k in torch.load(p["vgg16"], weights_only=True))
    lpips = build_perceptual(p, "cpu")
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert torch.allclose(lpips(x, x), torch.zeros(2)) and (lpips(x, x.flip(0)) > 0).all()


def test_prompt_file_is_read_by_the_official_fallback(standin_sets):
    from ranke.prompts import read_prompt_file

    cfg = _config("llamagen_xl", standin_sets)
    prompts = read_prompt_file(cfg["prompts"]["captions_csv"])
    assert prompts[0] == "Prompt" and len(prompts) == 1 + 5 * 12


def test_same_seed_same_bytes(tmp_path):
    from ranke.standins import write_coco_tree

    a, b = write_coco_tree(tmp_path / "a", n_train=2, n_val=2), write_coco_tree(tmp_path / "b", n_train=2, n_val=2)
    for f in sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file()):
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert np.asarray(Image.open(next((a / "val2014").iterdir()))).std() > 10


def test_check_assets_prints_checksums_and_flags_a_published_one_that_differs(standin_sets, capsys):
    from ranke import config as config_mod

    cfg = _config("llamagen_xl", standin_sets)
    rows = config_mod.asset_checksums(cfg)
    by_key = {}
    for key, path, digest, verdict in rows:
        by_key.setdefault(key, []).append((Path(path).name, digest, verdict))
        assert len(digest) == 64 and digest == hashlib.sha256(Path(path).read_bytes()).hexdigest()
    # one row per file, directory assets (FLAN-T5) file by file
    assert len(by_key["assets.text_encoder.path"]) > 1 and len(by_key["assets.gpt.checkpoint"]) == 1
    # the stand-in OpenAI ViT-B/32 has random weights: it cannot match OpenAI's published sha256
    (clip,) = by_key["assets.clip.weights"]
    assert clip[0] == "ViT-B-32.pt" and clip[2] == "published: DIFFERS"
    assert config_mod.main([str(STUDIES["llamagen_xl"]), str(standin_sets("llamagen_xl")[1]), "--checksums"]) == 1
    out = capsys.readouterr().out
    assert f"{clip[1]}  " in out and "DIFFERS" in out
