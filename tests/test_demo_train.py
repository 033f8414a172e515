"""Demo base-model training: each loss term, and a tiny configuration of the whole preparation
(dataset -> VQ / T5 / CLIP -> tokens -> GPT -> quality) whose outputs load through the real loaders."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ranke import io
from ranke.demo import train as T

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


# ----------------------------------------------------------------------------------------------
# loss terms and helpers


def test_vq_l1_and_perceptual_losses():
    from ranke.perceptual import PyramidDistance

    x = torch.rand(2, 3, 16, 16) * 2 - 1
    d = PyramidDistance()
    assert T.vq_l1_loss(x, x) == 0 and T.vq_perceptual_loss(x, x, d) == 0
    y = x.clone()
    y[:, :, :, 8:] += 0.5
    assert T.vq_l1_loss(y, x) > 0 and T.vq_perceptual_loss(y, x, d) > 0
    # the perceptual term reacts to structure: a sharp step costs more than the same L1 spread smoothly
    smooth = x + 0.25
    step = x.clone()
    step[:, :, :, 8:] += 0.5
    assert torch.isclose(T.vq_l1_loss(smooth, x), T.vq_l1_loss(step, x))
    assert T.vq_perceptual_loss(step, x, d) > T.vq_perceptual_loss(smooth, x, d)


def test_vq_total_loss_weights():
    one = torch.tensor(1.0)
    assert float(T.vq_total_loss(one, one, one, one, perceptual_weight=0.5, beta=0.25)) == pytest.approx(2.75)


def test_restart_dead_codes_only_touches_dead_rows():
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(6, 4), dim=-1)
    before = emb.clone()
    counts = torch.tensor([3, 0, 1, 0, 0, 7])
    lat = torch.randn(10, 4) * 5
    n = T.restart_dead_codes(emb, counts, lat, g)
    assert n == 3
    alive = counts > 0
    assert torch.equal(emb[alive], before[alive])
    assert not torch.allclose(emb[~alive], before[~alive])
    assert torch.allclose(emb.norm(dim=-1), torch.ones(6), atol=1e-5)
    assert T.restart_dead_codes(emb, torch.ones(6, dtype=torch.long), lat, g) == 0


def test_clip_contrastive_loss_prefers_matching_pairs():
    e = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
    scale = torch.tensor(math.log(10.0))
    matched = T.clip_contrastive_loss(e, e, scale)
    shuffled = T.clip_contrastive_loss(e, e.roll(1, 0), scale)
    assert matched < shuffled
    # the scale is clamped at 100
    assert torch.isclose(T.clip_contrastive_loss(e, e, torch.tensor(10.0)),
                         T.clip_contrastive_loss(e, e, torch.tensor(math.log(100.0))))


def test_gpt_next_token_loss():
    logits = torch.zeros(2, 5, 7)
    codes = torch.randint(7, (2, 5))
    assert float(T.gpt_next_token_loss(logits, codes)) == pytest.approx(math.log(7), rel=1e-5)
    good = torch.nn.functional.one_hot(codes, 7).float() * 20
    assert float(T.gpt_next_token_loss(good, codes)) < 1e-6


def test_lr_schedule_and_psnr():
    assert T.lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert T.lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert T.lr_at(99, 100, 1.0, 10) == pytest.approx(0.1, abs=1e-3)
    x = torch.zeros(1, 3, 4, 4)
    assert float(T.psnr(x + 0.02, x)) == pytest.approx(10 * math.log10(4 / 0.0004), rel=1e-4)


def test_grid_that_does_not_divide_the_image_names_the_key():
    with pytest.raises(ValueError, match=r"assets\.vq\.arch\.ch_mult"):
        T.check_vq_geometry(36, {"ch_mult": [1, 2, 2, 2]})
    assert T.check_vq_geometry(32, {"ch_mult": [1, 2, 2]}) == 8


# ----------------------------------------------------------------------------------------------
# a tiny configuration of the whole demo preparation, through the CLIs


def tiny_config(root: Path) -> dict:
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg = copy.deepcopy(cfg)
    cfg["device"] = "cpu"
    cfg["image_size"] = 16
    d = cfg["demo"]
    d["dataset"].update(n_train=64, n_val=24, captions_per_image=2)
    d["vq"].update(steps=3, batch_size=8)
    d["clip"].update(steps=3, batch_size=16, width=32, embed_dim=16, layers=1, patch_size=8, context_length=24)
    d["gpt"].update(steps=3, batch_size=8)
    d["text"].update(d_model=32, num_layers=1, num_heads=2, d_ff=64)
    a = cfg["assets"]
    a["coco_root"] = str(root / "coco")
    a["vq"]["checkpoint"] = str(root / "models/vq.pt")
    a["vq"]["arch"].update(ch=32, ch_mult=[1, 1], z_channels=32, num_res_blocks=0, codebook_size=32)
    a["gpt"]["checkpoint"] = str(root / "models/gpt.pt")
    a["gpt"]["arch"].update(dim=32, n_layer=1, n_head=2, caption_dim=32)
    a["text_encoder"]["path"] = str(root / "models/t5")
    a["text_encoder"]["max_length"] = 12
    for k in ("clip", "reward"):
        a[k]["config"] = str(root / "models/clip" / f"{a[k]['model']}.json")
        a[k]["weights"] = str(root / "models/clip/weights.pt")
    cfg["sampling"].update(batch_size=4, cfg_scale=2.0)
    return cfg


def write_tokens(cfg: dict, split: str, out: Path) -> None:
    """What the tokenize stage writes (schema "tokens"), made here so this test needs only this module."""
    from ranke.data import coco
    from ranke.models.backbone import build_vq
    from ranke.models.checkpoints import load_into

    root = cfg["assets"]["coco_root"]
    vq = load_into(build_vq(cfg["assets"]["vq"]["arch"]), cfg["assets"]["vq"]["checkpoint"]).eval()
    table = coco.captions_by_image(coco.read_split(root, split).captions)
    images = coco.to_float(coco.load_images(root, table["file"].tolist(), cfg["image_size"], coco.GT))
    codes = vq.encode(images).flatten(1).numpy().astype(np.int32)
    table["codes"] = list(codes)
    table["split"] = split
    g = int(math.isqrt(codes.shape[1]))
    table["grid_h"], table["grid_w"] = np.int16(g), np.int16(g)
    table["vq_sha256"] = io.sha256_file(cfg["assets"]["vq"]["checkpoint"])
    io.write_parquet(table, out, "tokens")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from ranke.cli import main

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("demo")
    cfg = tiny_config(root)
    js = json.dumps(cfg)
    a = cfg["assets"]
    assert main(["demo-data", "--config-json", js, "--out", a["coco_root"]]) == 0
    assert main(["demo-train", "vq", "--config-json", js, "--coco", a["coco_root"], "--out", a["vq"]["checkpoint"]]) == 0
    assert main(["demo-train", "text", "--config-json", js, "--coco", a["coco_root"], "--out", a["text_encoder"]["path"]]) == 0
    assert main(["demo-train", "clip", "--config-json", js, "--coco", a["coco_root"],
                 "--out", str(Path(a["clip"]["weights"]).parent)]) == 0
    write_tokens(cfg, "train", root / "tokens/train.parquet")
    assert main(["demo-train", "gpt", "--config-json", js, "--tokens", str(root / "tokens/train.parquet"),
                 "--t5", a["text_encoder"]["path"], "--out", a["gpt"]["checkpoint"]]) == 0
    assert main(["demo-quality", "--config-json", js, "--out", str(root / "quality.parquet"),
                 "--n-retrieval", "12", "--n-prompts", "6"]) == 0
    return cfg, root


def test_vq_checkpoint_round_trips(prepared):
    from ranke.models.backbone import build_vq
    from ranke.models.checkpoints import load_config, load_into

    cfg, _ = prepared
    path = cfg["assets"]["vq"]["checkpoint"]
    obj = torch.load(path, weights_only=True)
    assert set(obj) == {"model", "config"} and "quantize.codebook_used" in obj["model"]
    assert load_config(path)["arch"]["codebook_size"] == 32
    vq = load_into(build_vq(cfg["assets"]["vq"]["arch"]), path).eval()
    codes = vq.encode(torch.zeros(1, 3, 16, 16))
    assert codes.shape == (1, 8, 8) and vq.decode_codes(codes).shape == (1, 3, 16, 16)


def test_text_encoder_round_trips(prepared):
    from ranke.models.text import TextEncoder

    cfg, _ = prepared
    te = TextEncoder(cfg["assets"]["text_encoder"]["path"], max_length=12)
    emb, mask = te.encode(["A small red circle on the left on a black background.", "a huge ring"])
    assert emb.shape == (2, 12, 32) and mask[0].sum() > mask[1].sum()
    ids = te.tokenizer(["a tiny hollow circle in the top right corner against an olive backdrop"])["input_ids"][0]
    assert te.tokenizer.unk_token_id not in ids  # the vocabulary covers the whole grammar


def test_clip_round_trips_through_open_clip(prepared):
    import open_clip

    from ranke.models.clip import load_clip, register_model_config

    cfg, _ = prepared
    c = cfg["assets"]["clip"]
    register_model_config(c["config"], c["model"])
    raw = open_clip.create_model(c["model"], pretrained=c["weights"])  # the plain open_clip path
    clip = load_clip(c)
    sd_a, sd_b = raw.state_dict(), clip.model.state_dict()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert clip.image_size == 16 and clip.embed_dim == 16


def test_gpt_and_backbone_load(prepared):
    from ranke.models.backbone import LlamaGenBackbone

    cfg, _ = prepared
    bb = LlamaGenBackbone.from_config(cfg["assets"], cfg["image_size"], "cpu")
    cond = bb.encode_prompts(["a red circle on the left on a black background"])
    codes = bb.sample(bb.policy, cond, seeds=[1], cfg_scale=2.0, temperature=1.0, top_k=0, top_p=1.0)
    assert codes.shape == (1, 64) and bb.decode(bb.vq, codes).shape == (1, 3, 16, 16)


def test_quality_table(prepared):
    _, root = prepared
    q = io.read_parquet(root / "quality.parquet", "demo_quality")
    got = set(zip(q.model, q.metric))
    assert got == {("vq", "psnr_db"), ("vq", "codebook_usage"), ("clip", "retrieval_top1"),
                   ("gpt", "clip_score_samples"), ("gpt", "clip_score_shuffled"), ("gpt", "clip_score_real"),
                   ("gpt", "ordering_ok")}
    assert q["value"].notna().all()
    v = dict(zip(q.metric, q.value))
    assert 0 < v["codebook_usage"] <= 1 and 0 <= v["retrieval_top1"] <= 1 and v["psnr_db"] > 0


def test_trained_clip_scores_matching_captions_above_shuffled(prepared):
    """A few dozen contrastive steps on the tiny split: matched pairs must beat shuffled ones."""
    from ranke.data import coco
    from ranke.demo.quality import derangement
    from ranke.models.clip import load_clip

    cfg, root = prepared
    cfg = copy.deepcopy(cfg)
    cfg["demo"]["clip"].update(steps=40, batch_size=32, lr=3e-3)
    out = root / "clip40"
    T.train_clip(cfg, cfg["assets"]["coco_root"], out)
    clip = load_clip({**cfg["assets"]["clip"], "config": str(out / f"{cfg['assets']['clip']['model']}.json"),
                      "weights": str(out / "weights.pt")})
    images, split = T.load_split_images(cfg["assets"]["coco_root"], "train", 16)
    caps = [c[0] for c in coco.captions_by_image(split.captions)["captions"]]
    with torch.no_grad():
        matched = clip.score(images, caps).mean()
        shuffled = clip.score(images, [caps[j] for j in derangement(len(caps), 0)]).mean()
    assert matched > shuffled + 1.0


def test_bad_training_config_names_the_key(prepared, tmp_path):
    cfg, _ = prepared
    bad = copy.deepcopy(cfg)
    bad["demo"]["vq"]["steps"] = 0
    with pytest.raises(ValueError, match=r"demo\.vq\.steps"):
        T.train_vq(bad, cfg["assets"]["coco_root"], tmp_path / "vq.pt")
    bad = copy.deepcopy(cfg)
    bad["assets"]["gpt"]["arch"]["caption_dim"] = 48
    with pytest.raises(ValueError, match="caption_dim"):
        T.train_text(bad, cfg["assets"]["coco_root"], tmp_path / "t5")


def test_derangement_has_no_fixed_point():
    from ranke.demo.quality import derangement

    for n in (2, 3, 10):
        p = derangement(n, 0)
        assert sorted(p) == list(range(n)) and (p != np.arange(n)).all()
