"""run_round on a tiny world built in the test: gradients per mode, resume-after-kill, NaN stop,
and (CPU, gloo) two processes equal one."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ranke.io import read_parquet, write_parquet
from ranke.models.backbone import build_gpt, build_vq
from ranke.models.checkpoints import save_checkpoint
from ranke.models.clip import create_clip
from ranke.models.text import make_tiny_t5
from ranke.train import round as round_mod
from ranke.train.round import NonFiniteLossError, RoundRunner, run_round

IMAGE_SIZE = 8
VQ_ARCH = {"codebook_size": 16, "codebook_embed_dim": 4, "codebook_l2_norm": True, "ch": 32, "ch_mult": [1, 1],
           "z_channels": 32, "num_res_blocks": 1}
GPT_ARCH = {"preset": None, "dim": 32, "n_layer": 1, "n_head": 2, "caption_dim": 16, "multiple_of": 32}
CLIP_CFG = {
    "embed_dim": 8,
    "vision_cfg": {"image_size": 8, "layers": 1, "width": 16, "patch_size": 4, "head_width": 8, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1, "mlp_ratio": 2.0},
}
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "white": (240, 240, 240)}


@pytest.fixture(autouse=True)
def one_thread():
    # the shared CPU is oversubscribed; one thread is several times faster than two here
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make_world(root: Path, n_images: int = 8) -> dict:
    """Images in COCO layout, tokens.parquet, tiny VQ / GPT / T5 / CLIP files; returns the config."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    coco = root / "coco"
    (coco / "train2014").mkdir(parents=True)
    rows, caps_all = [], []
    names = list(COLOURS)
    for i in range(n_images):
        c = names[i % len(names)]
        arr = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8) + np.array(COLOURS[c], np.uint8)
        arr[: IMAGE_SIZE // 2] //= 2 + int(rng.integers(3))
        f = f"train2014/img_{i:03d}.png"
        Image.fromarray(arr).save(coco / f)
        caps = [f"a {c} square", f"{c} block on dark"]
        caps_all += caps
        rows.append({"image_id": i, "split": "train", "file": f, "caption_ids": [2 * i, 2 * i + 1], "captions": caps})
    vq = build_vq(VQ_ARCH)
    from ranke.data.coco import GT, load_image, to_float

    imgs = torch.stack([to_float(load_image(coco / r["file"], IMAGE_SIZE, GT)) for r in rows])
    codes = vq.encode(imgs).flatten(1)
    for r, c in zip(rows, codes):
        r.update(codes=c.int().tolist(), grid_h=4, grid_w=4, vq_sha256="x")
    tokens = pd.DataFrame(rows).astype({"grid_h": "int16", "grid_w": "int16"})
    write_parquet(tokens, root / "tokens_train.parquet", "tokens")
    models = root / "models"
    save_checkpoint(vq, models / "vq.pt", {"arch": VQ_ARCH})
    gpt = build_gpt(GPT_ARCH, 16, 16, 6)
    torch.nn.init.normal_(gpt.output.weight, std=0.2)  # non-uniform policy so rollouts differ
    save_checkpoint(gpt, models / "gpt.pt", {"arch": GPT_ARCH})
    make_tiny_t5(models / "t5", caps_all, d_model=16, num_layers=1, num_heads=2, d_ff=32)
    cfg_path = models / "clip" / "ranke-round-test-clip.json"
    cfg_path.parent.mkdir(parents=True)
    cfg_path.write_text(json.dumps(CLIP_CFG))
    clip = create_clip("ranke-round-test-clip", config=cfg_path)
    torch.save(clip.state_dict(), models / "clip" / "weights.pt")
    reward = {"kind": "open_clip", "model": "ranke-round-test-clip", "config": str(cfg_path),
              "weights": str(models / "clip" / "weights.pt"), "quick_gelu": False, "prompt_prefix": ""}
    return {
        "backbone": "llamagen", "device": "cpu", "precision": "fp32", "seed": 0, "image_size": IMAGE_SIZE,
        "assets": {
            "coco_root": str(coco),
            "vq": {"checkpoint": str(models / "vq.pt"), "arch": VQ_ARCH},
            "gpt": {"checkpoint": str(models / "gpt.pt"), "arch": GPT_ARCH},
            "text_encoder": {"path": str(models / "t5"), "max_length": 6, "padding": "right"},
            "reward": reward,
            "perceptual": {"kind": "demo", "weights": None},
        },
        "methods": {"policy": {"mode": "policy"}, "decoder": {"mode": "decoder"},
                    "ranke": {"mode": "ranke", "schedule": "step"}, "alt": {"mode": "ranke", "schedule": "round"}},
        "rounds": {"n": 2, "steps": 4},
        "train": {
            "prompts_per_step": 2, "group_size": 4, "grad_accum": 1, "world_size": 1, "checkpoint_every": 2,
            "nominal_steps": 20, "gradient_checkpointing": False,
            "rollout": {"cfg_scale": 2.0, "temperature": 1.0, "top_k": 0, "top_p": 1.0},
            "policy": {"lr": 1e-3, "weight_decay": 0.01, "grad_clip": 1.0, "kl_coef": 0.05, "clip_eps": 0.2,
                       "ppo_epochs": 1, "adv_clip": 5.0, "adv_std_eps": 1e-4, "uniform_advantages": False,
                       "reference": "fixed", "logprob_mask": "generation", "ema_decay": 0.9, "ema_every": 2},
            "decoder": {"lr": 1e-3, "weight_decay": 0.01, "grad_clip": 1.0, "ema_decay": 0.9, "lambda_rec": 1.0,
                        "lambda_gan": 1.0, "lambda_consistency": 10.0, "lambda_reward": 0.01, "lambda_lasc": 0.5,
                        "lasc_topk": 4, "rank_k": 2, "tau_start": 4.0, "tau_end": 1.0, "tau_anneal_frac": 0.2},
            "discriminator": {"lr": 1e-3, "weight_decay": 0.01, "n_layers": 1, "ndf": 8, "start_step": 1,
                              "weight": 0.5},
        },
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    return root, make_world(root)


def _runner(world, method, tmp, round_idx=1, init=None, cfg=None):
    root, base = world
    return RoundRunner(cfg or base, method, round_idx, init, root / "tokens_train.parquet", tmp / "work")


def _grads(params):
    return [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params]


def test_policy_mode_trains_policy_only(world, tmp_path):
    r = _runner(world, "policy", tmp_path)
    vq0 = copy.deepcopy(r.vq.state_dict())
    pol0 = copy.deepcopy(r.policy.state_dict())
    row = r.train_step()
    assert row["phase"] == "policy" and np.isfinite(row["loss_policy"]) and np.isnan(row["loss_decoder"])
    assert abs(row["ratio_mean"] - 1.0) < 1e-6 and row["kl"] == 0.0  # first step: policy == reference
    assert any(_grads(r.policy.parameters()))
    assert all(p.grad is None for p in r.vq.parameters())
    assert all(torch.equal(vq0[k], v) for k, v in r.vq.state_dict().items())
    assert any(not torch.equal(pol0[k], v) for k, v in r.policy.state_dict().items())
    r.train_step()
    assert r.log_frame()["kl"].iloc[1] > 0  # the policy moved away from the fixed reference


def test_decoder_mode_trains_decoder_only(world, tmp_path):
    r = _runner(world, "decoder", tmp_path)
    pol0 = copy.deepcopy(r.policy.state_dict())
    ema0 = copy.deepcopy(r.vq_ema.state_dict())
    r.train_step()  # step 0: discriminator not on yet
    row = r.train_step()  # step 1: everything on
    assert row["phase"] == "decoder" and np.isnan(row["loss_policy"])
    for term in ("loss_disc", "loss_rec", "loss_rank_gan", "loss_consistency", "loss_reward", "loss_lasc",
                 "adaptive_weight", "grad_norm_disc"):
        assert np.isfinite(row[term]), term
    assert all(p.grad is None for p in r.policy.parameters())
    assert all(torch.equal(pol0[k], v) for k, v in r.policy.state_dict().items())
    dec = {id(p) for p in r.dec_params}
    frozen = [n for n, p in r.vq.named_parameters() if id(p) not in dec]
    assert any(n.startswith("encoder.") for n in frozen) and "quant_conv.weight" in frozen
    assert all(p.grad is None for p in r.vq.parameters() if id(p) not in dec)
    assert any(_grads(r.dec_params))
    # EMA moved toward the online decoder: ema = 0.9 ema + 0.1 online, on decoder weights only
    k = "decoder.conv_out.weight"
    assert not torch.equal(ema0[k], r.vq_ema.state_dict()[k])
    assert torch.equal(ema0["encoder.conv_in.weight"], r.vq_ema.state_dict()["encoder.conv_in.weight"])


def test_phases_of_the_round_schedule(world, tmp_path):
    from ranke.train.round import method_config, phase_of

    m = {"mode": "ranke", "schedule": "round"}
    assert [phase_of(m, r) for r in (1, 2, 3)] == ["policy", "decoder", "policy"]
    assert phase_of({"mode": "ranke"}, 2) == "both"
    with pytest.raises(ValueError):
        phase_of({"mode": "none"}, 1)
    assert method_config({"methods": [{"name": "alt", **m}]}, "alt")["schedule"] == "round"
    # an even round of the block schedule is a decoder phase: the policy stays as it came in
    r = _runner(world, "alt", tmp_path, round_idx=2)
    pol0 = copy.deepcopy(r.policy.state_dict())
    row = r.train_step()
    assert row["phase"] == "decoder" and np.isnan(row["kl"]) and np.isfinite(row["loss_decoder"])
    assert all(torch.equal(pol0[k], v) for k, v in r.policy.state_dict().items())


def _files(d: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def test_resume_after_kill_equals_uninterrupted_run(world, tmp_path, monkeypatch):
    root, cfg = world
    tokens = root / "tokens_train.parquet"
    run_round(cfg, "ranke", 1, None, tokens, tmp_path / "w1", tmp_path / "out1", tmp_path / "log1.parquet")

    calls = {"n": 0}
    real = RoundRunner.train_step

    def killed_after_two(self):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(RoundRunner, "train_step", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_round(cfg, "ranke", 1, None, tokens, tmp_path / "w2", tmp_path / "out2", tmp_path / "log2.parquet")
    assert (tmp_path / "w2" / "resume.pt").exists() and not (tmp_path / "out2").exists()
    monkeypatch.setattr(RoundRunner, "train_step", real)
    run_round(cfg, "ranke", 1, None, tokens, tmp_path / "w2", tmp_path / "out2", tmp_path / "log2.parquet")

    for name in ("policy.pt", "decoder.pt", "policy_ema.pt", "decoder_ema.pt"):
        a, b = _load(tmp_path / "out1" / name)["model"], _load(tmp_path / "out2" / name)["model"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    sa, sb = _load(tmp_path / "out1" / "state.pt"), _load(tmp_path / "out2" / "state.pt")
    assert sa["step"] == sb["step"] == 4
    assert all(torch.equal(sa["disc"][k], sb["disc"][k]) for k in sa["disc"])
    la = read_parquet(tmp_path / "log1.parquet", "train_log").drop(columns="step_time_s")
    lb = read_parquet(tmp_path / "log2.parquet", "train_log").drop(columns="step_time_s")
    pd.testing.assert_frame_equal(la, lb, check_exact=True)
    assert la["step"].tolist() == [0, 1, 2, 3] and not (tmp_path / "w2" / "resume.pt").exists()

    # round 2 continues the global step and carries the state over
    run_round(cfg, "ranke", 2, str(tmp_path / "out1"), tokens, tmp_path / "w3", tmp_path / "out3",
              tmp_path / "log3.parquet")
    l3 = read_parquet(tmp_path / "log3.parquet", "train_log")
    assert l3["step"].tolist() == [4, 5, 6, 7] and l3["round"].tolist() == [2] * 4
    assert _load(tmp_path / "out3" / "state.pt")["step"] == 8


def test_nan_loss_stops_with_clear_error_and_previous_round_intact(world, tmp_path, monkeypatch):
    root, cfg = world
    tokens = root / "tokens_train.parquet"
    cfg1 = copy.deepcopy(cfg)
    cfg1["rounds"]["steps"] = 1
    run_round(cfg1, "ranke", 1, None, tokens, tmp_path / "w1", tmp_path / "r1", tmp_path / "l1.parquet")
    before = _files(tmp_path / "r1")

    real = round_mod.reconstruction_loss

    def nan_rec(*a, **k):
        out = real(*a, **k)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(round_mod, "reconstruction_loss", nan_rec)
    with pytest.raises(NonFiniteLossError, match=r"step 1: loss_rec"):
        run_round(cfg1, "ranke", 2, str(tmp_path / "r1"), tokens, tmp_path / "w2", tmp_path / "r2",
                  tmp_path / "l2.parquet")
    assert not (tmp_path / "r2").exists() and not (tmp_path / "l2.parquet").exists()
    assert _files(tmp_path / "r1") == before


def test_two_gloo_processes_equal_one(world, tmp_path):
    """world_size 2 (gloo, CPU): each rank takes half the prompts with their rollouts, gradients, the
    discriminator's BatchNorm statistics and the adaptive GAN weight's gradients are averaged across
    ranks, so every logged value matches the single-process run and so do the weights. Adam divides
    each gradient entry by its own magnitude, so entries whose gradient is ~1e-8 (Adam's eps) turn
    float-rounding differences into visible ones: for those a bound of one learning-rate step is used."""
    root, cfg = world
    tokens = root / "tokens_train.parquet"
    for ws in (1, 2):
        c = copy.deepcopy(cfg)
        c["rounds"]["steps"] = 2
        c["train"]["world_size"] = ws
        c["train"]["checkpoint_every"] = 1  # exercises rank-0 checkpointing + barrier
        c["train"]["discriminator"]["start_step"] = 0  # BatchNorm + adaptive weight from step 0
        run_round(c, "ranke", 1, None, tokens, tmp_path / f"w{ws}", tmp_path / f"o{ws}", tmp_path / f"l{ws}.parquet")
    la = read_parquet(tmp_path / "l1.parquet", "train_log").drop(columns="step_time_s")
    lb = read_parquet(tmp_path / "l2.parquet", "train_log").drop(columns="step_time_s")
    assert np.isfinite(la[["loss_disc", "loss_rank_gan", "adaptive_weight", "loss_lasc"]].to_numpy()).all()
    pd.testing.assert_frame_equal(la, lb, check_exact=False, rtol=1e-4, atol=1e-5)
    lr = cfg["train"]["decoder"]["lr"]
    for name in ("policy.pt", "decoder.pt", "policy_ema.pt", "decoder_ema.pt"):
        a, b = _load(tmp_path / "o1" / name)["model"], _load(tmp_path / "o2" / name)["model"]
        diffs = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
        assert float(diffs.max()) < 2 * lr, name
        assert float((diffs > 2e-5).float().mean()) < 0.01, name
    sa, sb = _load(tmp_path / "o1" / "state.pt"), _load(tmp_path / "o2" / "state.pt")
    assert sa["step"] == sb["step"] == 2


def test_config_yaml_train_block_is_what_run_round_reads(world, tmp_path):
    """The shipped config's methods / train keys drive a round (tiny models, 1 step, demo perceptual)."""
    import yaml

    root, cfg = world
    shipped = yaml.safe_load((Path(__file__).resolve().parents[1] / "config.yaml").read_text())
    c = copy.deepcopy(cfg)
    c["methods"] = shipped["methods"]
    c["train"] = copy.deepcopy(shipped["train"])
    c["train"].update(prompts_per_step=2, group_size=4)
    c["train"]["discriminator"].update(start_step=0, n_layers=1)  # 8 px test images: a 1-layer PatchGAN
    c["rounds"] = {"n": 1, "steps": 1}
    run_round(c, "ranke", 1, None, root / "tokens_train.parquet", tmp_path / "w", tmp_path / "o", tmp_path / "l.parquet")
    row = read_parquet(tmp_path / "l.parquet", "train_log").iloc[0]
    assert row["phase"] == "both" and np.isfinite(row["loss_policy"]) and np.isfinite(row["loss_rank_gan"])
    assert row["tau"] == shipped["train"]["decoder"]["tau_start"]
