"""End-to-end `score` on tiny random models: schema, values cross-checked, offline, errors named."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torch_fidelity.feature_extractor_clip as tf_clip
import torch_fidelity.feature_extractor_inceptionv3 as tf_inception
from PIL import Image

from ranke import io
from ranke import score as score_mod
from ranke.fid_reference import ReferenceMismatchError, ensure_reference, reference_key_from_config
from ranke.metrics import to_uint8
from ranke.metrics.shift import code_histogram, kl_divergence

torch.set_num_threads(1)
IMAGE_SIZE = 16
VQ_ARCH = {"codebook_size": 16, "codebook_embed_dim": 4, "codebook_l2_norm": True, "ch": 32, "ch_mult": [1, 1],
           "z_channels": 32, "num_res_blocks": 1}
L = (IMAGE_SIZE // 2) ** 2
CAPTIONS = ["a red circle", "a blue square", "a green cross", "a white diamond", "a red square", "a blue cross"]


def _world(tmp_path):
    from ranke.models.backbone import build_vq
    from ranke.models.checkpoints import save_checkpoint
    from ranke.models.clip import create_clip

    # COCO-layout reference images
    root = tmp_path / "coco"
    (root / "val2014").mkdir(parents=True)
    (root / "annotations").mkdir()
    g = torch.Generator().manual_seed(0)
    imgs, anns = [], []
    for i in range(10):
        arr = (torch.rand(3, 4, 4, generator=g).repeat_interleave(6, 1).repeat_interleave(6, 2) * 255).byte()
        name = f"COCO_val2014_{i:012d}.png"
        Image.fromarray(arr.permute(1, 2, 0).numpy()).save(root / "val2014" / name)
        imgs.append({"id": i, "file_name": name, "width": 24, "height": 24})
        anns.append({"id": 50 + i, "image_id": i, "caption": CAPTIONS[i % len(CAPTIONS)]})
    (root / "annotations" / "captions_val2014.json").write_text(json.dumps({"images": imgs, "annotations": anns}))

    # tiny VQ (base) and a round checkpoint with online + EMA decoders
    torch.manual_seed(0)
    vq = build_vq(VQ_ARCH)
    save_checkpoint(vq, tmp_path / "vq.pt", {"kind": "vq"})
    ckpt = tmp_path / "round_1" / "checkpoint"
    ckpt.mkdir(parents=True)
    with torch.no_grad():
        for p in vq.decoder_parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_checkpoint(vq, ckpt / "decoder.pt", {"kind": "vq"})
    with torch.no_grad():
        for p in vq.decoder_parameters():
            p.mul_(0.5)
    save_checkpoint(vq, ckpt / "decoder_ema.pt", {"kind": "vq"})

    # tiny CLIP (score model, reward, and the demo FID extractor)
    name = "ranke-test-score-clip"
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }))
    torch.manual_seed(1)
    torch.save(create_clip(name, config=config).state_dict(), tmp_path / "clip.pt")
    clip = {"model": name, "config": str(config), "weights": str(tmp_path / "clip.pt"), "quick_gelu": False,
            "prompt_prefix": ""}

    cfg = {
        "device": "cpu", "precision": "fp32", "backbone": "llamagen", "image_size": IMAGE_SIZE,
        "assets": {"coco_root": str(root), "vq": {"checkpoint": str(tmp_path / "vq.pt"), "arch": VQ_ARCH},
                   "clip": clip, "reward": {"kind": "open_clip", **clip},
                   "fid": {"extractor": "clip-image", "weights": clip["weights"]}},
        "sampling": {"cfg_scale": 4.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": 42},
        "rounds": {"steps": 15},
        "score": {"decoder": "online", "batch_size": 4, "shift_smoothing": 1e-6, "write_png": False,
                  "grid_prompts": 3, "fid_reference": {"split": "val", "n": 0, "seed": 0, "workers": 0}},
    }
    prompts = pd.DataFrame({"prompt_id": np.arange(6), "image_id": np.arange(6), "caption_id": 50 + np.arange(6),
                            "caption": CAPTIONS})
    io.write_parquet(prompts, tmp_path / "prompts.parquet", "prompts")
    rng = np.random.default_rng(0)
    samples = pd.DataFrame({"method": "ranke", "round": np.int32(1), "prompt_id": np.arange(6),
                            "seed": 42 * 1_000_003 + np.arange(6),
                            "codes": list(rng.integers(0, 12, size=(6, L)).astype(np.int32))})
    io.write_parquet(samples, tmp_path / "samples.parquet", "samples")
    real = rng.integers(0, 16, size=(20, L))
    hist = pd.DataFrame({"code": np.arange(16, dtype=np.int32), "count": code_histogram(real, 16),
                         "count_a": code_histogram(real[0::2], 16), "count_b": code_histogram(real[1::2], 16)})
    io.write_parquet(hist, tmp_path / "code_hist.parquet", "code_hist")
    ref = tmp_path / "fid" / f"{reference_key_from_config(cfg)}.pt"
    ensure_reference(cfg, ref)
    paths = dict(samples_path=tmp_path / "samples.parquet", prompts_path=tmp_path / "prompts.parquet",
                 code_hist_path=tmp_path / "code_hist.parquet", fid_ref_path=ref)
    return cfg, paths, ckpt, real


def test_score_end_to_end_offline(tmp_path, monkeypatch):
    cfg, paths, ckpt, real = _world(tmp_path)
    calls = []

    def blocked(*a, **k):
        calls.append(a)
        raise RuntimeError("network blocked")

    monkeypatch.setattr(tf_inception, "load_state_dict_from_url", blocked)
    monkeypatch.setattr(tf_clip, "load_state_dict_from_url", blocked)

    out = tmp_path / "round_1" / "metrics.parquet"
    df = score_mod.score(cfg, "ranke", 1, checkpoint=str(ckpt), out_path=out, png_dir=tmp_path / "png", **paths)
    assert calls == []
    back = io.read_parquet(out, "metrics")  # the shipped schema
    assert list(back["metric"]) == list(score_mod.METRIC_NAMES)
    v = dict(zip(back["metric"], back["value"]))
    assert np.isfinite(back["value"]).all()
    assert (back["step"] == 15).all() and (back["round"] == 1).all() and (back["method"] == "ranke").all()
    assert v["n_samples"] == 6 and v["wall_time_s"] > 0 and v["fid"] > 0
    assert 0 < v["codebook_usage"] <= 12 / 16 and v["code_kl"] > v["code_kl_real_floor"] >= 0
    assert v["code_entropy_bits"] <= np.log2(12) + 1e-6

    rows = back.set_index("metric")
    fid_details = json.loads(rows.loc["fid", "details"])
    assert rows.loc["fid", "extractor"] == "clip-image" and fid_details["label"] == "FID (demo CLIP features)"
    # score.fid_protocol is Inception's: the demo extractor resizes its own way, and says so
    assert fid_details["fid_protocol"] == "not applicable to clip-image"
    assert "own resize" in fid_details["preprocessing"]
    clip_details = json.loads(rows.loc["clip_score", "details"])
    assert clip_details["decoder"] == "online" and clip_details["n_prompts"] == 6 and clip_details["cfg_scale"] == 4.0
    assert clip_details["convention"].startswith("100 x mean cosine")
    assert clip_details["precision"] == "fp32"  # auto on the CPU
    assert clip_details["image_resize"] == "bicubic, align_corners=False, no antialias to 16"

    # independent recomputation of CLIP score, reward and code KL from the same decoder
    from ranke.models.backbone import build_vq
    from ranke.models.checkpoints import load_into
    from ranke.models.clip import load_clip

    vq = load_into(build_vq(VQ_ARCH), ckpt / "decoder.pt").eval()
    codes = torch.from_numpy(np.stack(io.read_parquet(paths["samples_path"], "samples")["codes"])).long()
    with torch.no_grad():
        pixels = to_uint8(vq.decode_codes(codes, (8, 8)).clamp(-1, 1))
        clip = load_clip(cfg["assets"]["clip"])
        direct = clip.score(pixels.float() / 127.5 - 1, CAPTIONS).mean().item()
    assert v["clip_score"] == pytest.approx(direct, abs=1e-3)
    assert v["reward"] == pytest.approx(direct, abs=1e-3)  # the demo reward is the same CLIP
    kl = kl_divergence(code_histogram(codes, 16), code_histogram(real, 16), 1e-6)
    assert v["code_kl"] == pytest.approx(kl, rel=1e-9)

    # PNGs + grid for inspection: exactly the scored pixels
    pngs = sorted((tmp_path / "png").glob("0*.png"))
    assert len(pngs) == 6 and (tmp_path / "png" / "grid.png").is_file()
    first = torch.from_numpy(np.array(Image.open(pngs[0]))).permute(2, 0, 1)
    assert torch.equal(first, pixels[0])

    # EMA decoder and base decoder give other images -> other values, labelled in details
    cfg_ema = {**cfg, "score": {**cfg["score"], "decoder": "ema"}}
    ema = score_mod.score(cfg_ema, "ranke", 1, checkpoint=str(ckpt), out_path=tmp_path / "ema.parquet", **paths)
    assert json.loads(ema["details"][0])["decoder"] == "ema"
    assert ema.set_index("metric").loc["clip_score", "value"] != pytest.approx(v["clip_score"], abs=1e-6)
    base = score_mod.score(cfg, "base", 0, checkpoint="base", out_path=tmp_path / "base.parquet", **paths)
    assert (base["step"] == 0).all() and json.loads(base["details"][0])["decoder"] == "base"


def test_score_cli_and_errors(tmp_path):
    cfg, paths, ckpt, _ = _world(tmp_path)
    out = tmp_path / "cli.parquet"
    argv = ["--config-json", json.dumps(cfg), "--method", "policy", "--round", "2", "--samples",
            str(paths["samples_path"]), "--checkpoint", "base", "--prompts", str(paths["prompts_path"]),
            "--code-hist", str(paths["code_hist_path"]), "--fid-ref", str(paths["fid_ref_path"]), "--out", str(out)]
    assert score_mod.main(argv) == 0
    assert (io.read_parquet(out, "metrics")["step"] == 30).all()

    def run(c, checkpoint=str(ckpt), **over):
        return score_mod.score(c, "ranke", 1, checkpoint=checkpoint, out_path=tmp_path / "x.parquet",
                               **{**paths, **over})

    def with_asset(section, **change):
        return {**cfg, "assets": {**cfg["assets"], section: {**cfg["assets"][section], **change}}}

    missing = str(tmp_path / "missing.pt")
    cases = [
        (with_asset("vq", checkpoint=missing), "base", r"assets\.vq\.checkpoint"),
        (with_asset("clip", weights=missing), str(ckpt), r"assets\.clip\.weights"),
        (with_asset("reward", weights=missing), str(ckpt), r"assets\.reward\.weights"),
    ]
    for c, checkpoint, key in cases:
        with pytest.raises(FileNotFoundError, match=rf"{key}.*missing\.pt"):
            run(c, checkpoint)
    with pytest.raises(FileNotFoundError, match=r"assets\.fid\.weights.*missing\.pt"):
        run(with_asset("fid", weights=missing))
    (ckpt / "decoder_ema.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"decoder_ema\.pt"):
        run({**cfg, "score": {**cfg["score"], "decoder": "ema"}})
    # a reference computed for another resolution is refused
    with pytest.raises(ReferenceMismatchError, match="resolution"):
        run({**cfg, "image_size": 8})
    assert not (tmp_path / "x.parquet").exists()

    # codes outside the codebook: named with the file and the prompt, before any model loads
    samples = io.read_parquet(paths["samples_path"], "samples")
    samples.at[3, "codes"] = np.where(np.arange(len(samples.at[3, "codes"])) == 5, 9999,
                                      samples.at[3, "codes"]).astype(np.int32)
    bad = tmp_path / "bad_samples.parquet"
    io.write_parquet(samples, bad, "samples")
    import ranke.score

    def no_models(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    mp = pytest.MonkeyPatch()
    mp.setattr(ranke.score, "load_decoder", no_models)
    try:
        with pytest.raises(ValueError, match=rf"bad_samples\.parquet: prompt_id {int(samples.at[3, 'prompt_id'])} "
                                             r"has code 9999, outside the codebook"):
            run(cfg, samples_path=bad)
    finally:
        mp.undo()


def test_score_janus_backbone_base_and_round_decoder(tmp_path):
    from ranke.models.janus import write_tiny_janus
    from ranke.models.factory import build_backbone

    cfg, paths, _, _ = _world(tmp_path)
    janus_dir = write_tiny_janus(tmp_path / "janus", image_size=64, codebook_size=16)
    cfg = {**cfg, "backbone": "janus", "image_size": 64,
           "assets": {**cfg["assets"], "janus": {"path": str(janus_dir), "dtype": "float32"}}}
    ref = tmp_path / "fid64.pt"
    ensure_reference(cfg, ref)
    rng = np.random.default_rng(1)
    samples = pd.DataFrame({"method": "ranke", "round": np.int32(1), "prompt_id": np.arange(6),
                            "seed": np.arange(6), "codes": list(rng.integers(0, 16, size=(6, 16)).astype(np.int32))})
    io.write_parquet(samples, tmp_path / "janus_samples.parquet", "samples")
    hist = pd.DataFrame({"code": np.arange(16, dtype=np.int32), "count": np.full(16, 10), "count_a": np.full(16, 5),
                         "count_b": np.full(16, 5)})
    io.write_parquet(hist, tmp_path / "janus_hist.parquet", "code_hist")
    over = dict(paths, samples_path=tmp_path / "janus_samples.parquet", code_hist_path=tmp_path / "janus_hist.parquet",
                fid_ref_path=ref)
    base = score_mod.score(cfg, "base", 0, checkpoint="base", out_path=tmp_path / "j0.parquet", **over)
    # a round decoder saved by the backbone is picked up from the checkpoint directory
    backbone = build_backbone(cfg, "cpu", load_text=False)
    vq = backbone.vq
    with torch.no_grad():
        for p in vq.decoder.parameters():
            p.mul_(0.9)
    ckpt = tmp_path / "janus_round" / "checkpoint"
    backbone.save_vq(vq, ckpt / "decoder.pt")
    r1 = score_mod.score(cfg, "ranke", 1, checkpoint=str(ckpt), out_path=tmp_path / "j1.parquet", **over)
    b, r = base.set_index("metric")["value"], r1.set_index("metric")["value"]
    assert np.isfinite(b).all() and np.isfinite(r).all()
    assert b["code_kl"] == r["code_kl"] and b["code_kl_real_floor"] == 0.0
    assert b["fid"] != r["fid"]


def test_score_inception_fid_protocol_and_clip_precision(tmp_path, monkeypatch):
    """The protocol reaches the extractor, the reference key/metadata and the fid details; a clean
    reference is refused for torch-fidelity-protocol samples; score.clip_precision reaches the model."""
    from ranke.metrics import fid
    from ranke.metrics.fid import INCEPTION, write_random_inception_weights

    # plumbing only: the 2048-d Frechet distance (an eigen-decomposition of 2048 x 2048, tens of
    # seconds on a busy CPU) is replaced by the squared distance of the means
    monkeypatch.setattr(fid, "frechet_distance", lambda a, b: float(np.sum((a["mu"] - b["mu"]) ** 2)))

    cfg, paths, _, _ = _world(tmp_path)
    weights = tmp_path / "inception.pth"
    write_random_inception_weights(weights)
    cfg = {**cfg, "assets": {**cfg["assets"], "fid": {"extractor": INCEPTION, "weights": str(weights)}},
           "score": {**cfg["score"], "fid_protocol": "clean", "clip_precision": "fp16",
                     "fid_reference": {**cfg["score"]["fid_reference"], "n": 2}}}  # few images: Inception is slow
    key = reference_key_from_config(cfg)
    assert key.endswith("_inception-v3-compat_clean")
    ref = tmp_path / "fid" / f"{key}.pt"
    ensure_reference(cfg, ref)
    paths = {**paths, "fid_ref_path": ref}
    df = score_mod.score(cfg, "base", 0, checkpoint="base", out_path=tmp_path / "inc.parquet", **paths)
    rows = df.set_index("metric")
    fid_details = json.loads(rows.loc["fid", "details"])
    assert fid_details["fid_protocol"] == "clean" and fid_details["reference"] == key
    assert "PIL-bicubic" in fid_details["preprocessing"] and fid_details["label"] == "FID (Inception)"
    assert np.isfinite(rows.loc["fid", "value"]) and rows.loc["fid", "value"] > 0
    assert json.loads(rows.loc["clip_score", "details"])["precision"] == "fp16"

    legacy = {**cfg, "score": {**cfg["score"], "fid_protocol": "torch-fidelity"}}
    assert reference_key_from_config(legacy) != key
    with pytest.raises(ReferenceMismatchError, match="fid_protocol"):
        score_mod.score(legacy, "base", 0, checkpoint="base", out_path=tmp_path / "x.parquet", **paths)
    with pytest.raises(ValueError, match="score.clip_precision"):
        score_mod.score({**cfg, "score": {**cfg["score"], "clip_precision": "int8"}}, "base", 0, checkpoint="base",
                        out_path=tmp_path / "x.parquet", **paths)
