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
    # the training log so far is readable while the round is unfinished (written at each checkpoint)
    done = json.loads((tmp_path / "w2" / round_mod.RESUME_INFO).read_text())["steps_done"]
    live = read_parquet(tmp_path / "w2" / round_mod.LIVE_LOG, "train_log")
    assert done >= 1 and live["step"].tolist() == list(range(done))
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
    assert not (tmp_path / "w2" / round_mod.LIVE_LOG).exists()  # superseded by the round's log

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
    """world_size 2 (gloo, CPU) with decoder.grad_sync global and discriminator.batchnorm sync (not
    the official defaults): each rank takes half the prompts with their rollouts, gradients, the
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
        c["train"]["decoder"]["grad_sync"] = "global"
        c["train"]["discriminator"]["batchnorm"] = "sync"
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


def _two_rank_steps(rank, port, cfg, tokens, tmp, n_steps) -> None:
    """One of two gloo ranks: n_steps of a `ranke` round, then this rank's models to rank<r>.pt and
    (rank 0) the round's outputs."""
    import torch.distributed as dist

    from ranke.train.round import Dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        r = RoundRunner(cfg, "ranke", 1, None, tokens, tmp / "work", Dist(rank, 2), torch.device("cpu"))
        for _ in range(n_steps):
            r.train_step()
        torch.save({"vq": r.vq.state_dict(), "vq_ema": r.vq_ema.state_dict(), "policy": r.policy.state_dict(),
                    "disc": r.disc.state_dict(), "opt_decoder": r.opt_decoder.state_dict()}, tmp / f"rank{rank}.pt")
        r.write_outputs(tmp / "out", tmp / "log.parquet")
    finally:
        dist.destroy_process_group()


def _equal(a: dict, b: dict, keys=None) -> bool:
    return all(torch.equal(a[k], b[k]) for k in (keys if keys is not None else a))


@pytest.mark.parametrize("grad_sync", ["local", "global"])
def test_decoder_grad_sync_across_two_gloo_ranks(world, tmp_path, grad_sync):
    """Official (local): each rank trains its own decoder and EMA decoder on its own prompts (decoder
    gradients never all-reduced, trainer.py:553-659 go through the unwrapped VQ), and rank 0's is
    saved. Global: decoder gradients averaged, so the ranks' decoders are identical. In both the
    policy and the discriminator stay synchronised."""
    import torch.multiprocessing as mp

    root, cfg = world
    c = copy.deepcopy(cfg)
    c["train"]["world_size"] = 2
    c["train"]["decoder"]["grad_sync"] = grad_sync
    c["train"]["discriminator"]["start_step"] = 0  # discriminator and adaptive weight from step 0
    mp.start_processes(_two_rank_steps, args=(round_mod._free_port(), c, root / "tokens_train.parquet", tmp_path, 2),
                       nprocs=2, join=True, start_method="fork")
    r0, r1 = _load(tmp_path / "rank0.pt"), _load(tmp_path / "rank1.pt")
    dec = [k for k in r0["vq"] if k.startswith(("decoder.", "post_quant_conv."))]
    frozen = [k for k in r0["vq"] if k not in dec]
    assert dec and frozen and _equal(r0["vq"], r1["vq"], frozen)
    assert _equal(r0["policy"], r1["policy"])
    disc_params = [k for k in r0["disc"] if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert _equal(r0["disc"], r1["disc"], disc_params)
    if grad_sync == "local":
        assert not _equal(r0["vq"], r1["vq"], dec) and not _equal(r0["vq_ema"], r1["vq_ema"], dec)
        state0, state1 = r0["opt_decoder"]["state"][0], r1["opt_decoder"]["state"][0]
        assert not torch.equal(state0["exp_avg"], state1["exp_avg"])
    else:
        assert _equal(r0["vq"], r1["vq"], dec) and _equal(r0["vq_ema"], r1["vq_ema"], dec)
    saved, saved_ema = _load(tmp_path / "out" / "decoder.pt")["model"], _load(tmp_path / "out" / "decoder_ema.pt")["model"]
    assert _equal(saved, r0["vq"], dec) and _equal(saved_ema, r0["vq_ema"], dec)


def test_resume_with_rank_local_decoders_equals_uninterrupted_run(world, tmp_path, monkeypatch):
    """grad_sync local, 2 gloo ranks: rank 1's decoder, EMA decoder and decoder optimizer live in
    its own resume shard. Rank 1's decoder reaches rank 0's outputs (its rewards move the shared
    policy, its reconstructions the shared discriminator), so a resume that gave rank 1 rank 0's
    decoder would change rank 0's checkpoint."""
    root, cfg = world
    tokens = root / "tokens_train.parquet"
    c = copy.deepcopy(cfg)
    c["rounds"]["steps"] = 3
    c["train"]["world_size"] = 2
    c["train"]["checkpoint_every"] = 2
    c["train"]["decoder"]["grad_sync"] = "local"
    run_round(c, "ranke", 1, None, tokens, tmp_path / "w1", tmp_path / "out1", tmp_path / "log1.parquet")

    calls = {"n": 0}
    real = RoundRunner.train_step

    def killed_after_two(self):  # in both ranks (forked after the patch)
        if calls["n"] == 2:
            raise RuntimeError("simulated kill")
        calls["n"] += 1
        return real(self)

    monkeypatch.setattr(RoundRunner, "train_step", killed_after_two)
    with pytest.raises(Exception, match="simulated kill"):
        run_round(c, "ranke", 1, None, tokens, tmp_path / "w2", tmp_path / "out2", tmp_path / "log2.parquet")
    work = tmp_path / "w2"
    assert (work / "resume.pt").exists() and (work / "resume.rank1.step2.pt").exists()
    assert not (tmp_path / "out2").exists()
    monkeypatch.setattr(RoundRunner, "train_step", real)
    run_round(c, "ranke", 1, None, tokens, work, tmp_path / "out2", tmp_path / "log2.parquet")

    for name in ("policy.pt", "decoder.pt", "policy_ema.pt", "decoder_ema.pt"):
        a, b = _load(tmp_path / "out1" / name)["model"], _load(tmp_path / "out2" / name)["model"]
        assert a.keys() == b.keys() and _equal(a, b), name
    sa, sb = _load(tmp_path / "out1" / "state.pt"), _load(tmp_path / "out2" / "state.pt")
    assert _equal(sa["disc"], sb["disc"])
    la = read_parquet(tmp_path / "log1.parquet", "train_log").drop(columns="step_time_s")
    lb = read_parquet(tmp_path / "log2.parquet", "train_log").drop(columns="step_time_s")
    pd.testing.assert_frame_equal(la, lb, check_exact=True)
    assert sorted(p.name for p in work.iterdir()) == []  # resume.pt and the shards removed on success


def test_resume_shard_holds_the_decoder_side_state_and_is_cleaned_up(world, tmp_path):
    """A shard holds the trained decoder tensors (not the frozen encoder), their EMA and the decoder
    optimizer; a rank keeps only the shard of the step resume.pt names, and none after the round."""
    root, cfg = world
    r = _runner(world, "ranke", tmp_path)
    r.dist = round_mod.Dist(1, 2)  # shard bookkeeping of rank 1 (no collective is reached here)
    r.decoder_sync = "local"
    shard = r.decoder_shard()
    assert shard["vq"].keys() == set(r._dec_names) and "encoder.conv_in.weight" not in shard["vq"]
    assert any(n.startswith("post_quant_conv.") for n in shard["vq"])
    (tmp_path / "work").mkdir()
    for step in (2, 4):
        (tmp_path / "work" / round_mod._shard_name(1, step)).write_bytes(b"")
    r.remove_shards(keep_step=4)
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["resume.rank1.step4.pt"]
    r.remove_shards()
    assert not any((tmp_path / "work").iterdir())


def test_gpt_ema_counts_optimizer_steps(world, tmp_path):
    """Official (trainer.py:512-516): the GPT EMA runs every ema_every *optimizer* steps. With
    ppo_epochs 2 and ema_every 2, the first training step already makes two optimizer steps."""
    root, cfg = world
    c = copy.deepcopy(cfg)
    c["train"]["policy"].update(ppo_epochs=2, ema_every=2, ema_decay=0.9)
    r = _runner(world, "policy", tmp_path, cfg=c)
    ema0 = copy.deepcopy(r.policy_ema.state_dict())
    r.train_step()
    assert r.state.policy_steps == 2
    online, ema = r.policy.state_dict(), r.policy_ema.state_dict()
    k = "layers.0.attention.wqkv.weight"
    assert not torch.equal(ema[k], ema0[k])
    torch.testing.assert_close(ema[k], 0.9 * ema0[k] + 0.1 * online[k], atol=1e-7, rtol=0)


def test_config_switches_reach_the_step(world, tmp_path, monkeypatch):
    """train.rollout.zero_caption_padding -> encode_prompts(zero_padding=...), train.decoder.
    lasc_codebook -> decode_soft(normalize_rows=...), train.discriminator.batchnorm -> the
    discriminator's BatchNorm; defaults are the official behaviours; bad values are refused."""
    from ranke.models.backbone import LlamaGenBackbone
    from ranke.train.discriminator import SyncedBatchNorm2d

    seen = {}
    encode, decode_soft = LlamaGenBackbone.encode_prompts, LlamaGenBackbone.decode_soft

    def spy_encode(self, captions, **kw):
        seen["zero_padding"] = kw["zero_padding"]
        return encode(self, captions, **kw)

    def spy_decode_soft(self, vq, probs, idx, **kw):
        seen["normalize_rows"] = kw["normalize_rows"]
        return decode_soft(self, vq, probs, idx, **kw)

    monkeypatch.setattr(LlamaGenBackbone, "encode_prompts", spy_encode)
    monkeypatch.setattr(LlamaGenBackbone, "decode_soft", spy_decode_soft)
    root, cfg = world
    r = _runner(world, "decoder", tmp_path / "a")
    r.train_step()
    assert seen == {"zero_padding": False, "normalize_rows": True}
    assert r.decoder_sync == "local" and not any(isinstance(m, SyncedBatchNorm2d) for m in r.disc.modules())
    c = copy.deepcopy(cfg)
    c["train"]["rollout"]["zero_caption_padding"] = True
    c["train"]["decoder"]["lasc_codebook"] = "raw"
    c["train"]["discriminator"]["batchnorm"] = "sync"
    r = _runner(world, "decoder", tmp_path / "b", cfg=c)
    r.train_step()
    assert seen == {"zero_padding": True, "normalize_rows": False}
    assert any(isinstance(m, SyncedBatchNorm2d) for m in r.disc.modules())
    for section, key, bad in (("decoder", "grad_sync", "ring"), ("decoder", "lasc_codebook", "unit"),
                              ("discriminator", "batchnorm", "group")):
        c = copy.deepcopy(cfg)
        c["train"][section][key] = bad
        with pytest.raises(ValueError, match=key):
            _runner(world, "decoder", tmp_path / "c", cfg=c)


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


def test_t5_sees_the_cleaned_caption_and_the_reward_the_raw_one(world, tmp_path):
    """assets.text_encoder.clean_captions: the official recipe cleans inside the T5 embedder only;
    the reward (and the decoder's reward term) gets the raw caption (trainer.py:393, 441-443)."""
    from ranke.models.caption_cleaning import t5_caption

    root, base = world
    cfg = copy.deepcopy(base)
    cfg["assets"]["text_encoder"]["clean_captions"] = True
    r = _runner(world, "ranke", tmp_path, cfg=cfg)
    raw = "A GREEN square, see www.example.com!!!"
    r.data.tokens["captions"] = [[raw] * len(c) for c in r.data.tokens["captions"]]
    seen = {"t5": [], "reward": []}
    tokenizer, reward = r.backbone.text.tokenizer, r.reward

    def t5_tokenizer(texts, **kw):
        seen["t5"] += list(texts)
        return tokenizer(texts, **kw)

    def recording_reward(images, captions):
        seen["reward"] += list(captions)
        return reward(images, captions)

    r.backbone.text.tokenizer, r.reward = t5_tokenizer, recording_reward
    for _ in range(2):  # step 1 has the discriminator on: the decoder's reward term runs too
        r.train_step()
    assert set(seen["t5"]) == {t5_caption(raw)} and t5_caption(raw) != raw
    assert set(seen["reward"]) == {raw} and len(seen["reward"]) > 2 * 2 * 4


def test_tensorboard_events_hold_the_training_log(world, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, cfg = world
    cfg = copy.deepcopy(cfg)
    cfg["train"]["tensorboard"] = True
    run_round(cfg, "ranke", 1, None, root / "tokens_train.parquet", tmp_path / "w", tmp_path / "out",
              tmp_path / "log.parquet")
    log = read_parquet(tmp_path / "log.parquet", "train_log")
    events = EventAccumulator(str(tmp_path / "w" / "tensorboard"))
    events.Reload()
    for column in ("reward_mean", "loss_decoder", "kl"):
        scalars = events.Scalars(f"ranke/{column}")
        assert [s.step for s in scalars] == log["step"].tolist()
        assert [s.value for s in scalars] == pytest.approx(log[column].tolist(), rel=1e-6)


def _average_on_two_ranks(rank, port, tmp, bucket_bytes) -> None:
    """One of two gloo ranks: grads of 5 parameters (rank 1 has none for the third; neither for the
    last), averaged in buckets of `bucket_bytes`; saves the grads and the number of all-reduces."""
    import torch.distributed as dist

    from ranke.train.round import Dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    calls = {"n": 0}
    real = dist.all_reduce

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    dist.all_reduce = counted
    try:
        shapes = [(3, 4), (5,), (2, 2), (7,), (3,)]
        params = [torch.nn.Parameter(torch.zeros(s)) for s in shapes]
        for i, p in enumerate(params[:4]):
            if not (rank == 1 and i == 2):
                p.grad = torch.full(p.shape, float(10 * i + rank + 1))
        Dist(rank, 2).average_grads(params, bucket_bytes=bucket_bytes)
        torch.save({"grads": [None if p.grad is None else p.grad.clone() for p in params], "calls": calls["n"]},
                   tmp / f"rank{rank}.pt")
    finally:
        dist.all_reduce = real
        dist.destroy_process_group()


def test_grad_all_reduce_is_bucketed_and_a_missing_grad_counts_as_zero(tmp_path):
    import torch.multiprocessing as mp

    bucket_bytes = 12 * 4  # 12 floats: the 12, 5 + 4 and 7 gradient entries make three buckets
    mp.start_processes(_average_on_two_ranks, args=(round_mod._free_port(), tmp_path, bucket_bytes), nprocs=2,
                       join=True, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    expected = [(10 * i + 1 + 10 * i + 2) / 2 for i in range(4)]
    expected[2] = (21 + 0) / 2  # rank 1 had no gradient for it: it contributed zeros, nobody waited
    for grads in (r0["grads"], r1["grads"]):
        for i, value in enumerate(expected):
            assert torch.equal(grads[i], torch.full(grads[i].shape, value)), (i, grads[i])
        assert grads[4] is None  # no rank had one: it stays without (the optimizer skips it)
    # one agreement on which parameters have gradients, then one all-reduce per bucket, not one flat copy
    assert r0["calls"] == r1["calls"] == 1 + 3, r0["calls"]
