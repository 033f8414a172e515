"""Seconds per RankE training step and peak memory, for a model preset with random weights.

    python bench/round.py --preset demo --prompts 8 --group 8            # CPU is fine
    python bench/round.py --preset GPT-XL --prompts 32 --group 8         # one H200 (issue target <= 10 s)

Presets: `demo` (the demo config's model sizes, 32 px) and GPT-B / GPT-L / GPT-XL (LlamaGen t2i
policy, VQ-16 at 256 px, 120 caption tokens of width 2048, a CLIP ViT-L/14-sized reward and
LPIPS-VGG, all randomly initialised: nothing is loaded or downloaded). The T5 encoder is replaced by
random caption features of the right shape (its cost is <1 % of a step). One step = rollouts with
CFG, EMA-decoder rewards, GRPO policy update, discriminator + decoder update (mode ranke, the
discriminator switched on from step 0 so every term runs), through `RoundRunner.train_step`.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ranke.models.backbone import LlamaGenBackbone, build_gpt, build_vq  # noqa: E402
from ranke.rewards import RewardModel  # noqa: E402
from ranke.train.rollout import Batch  # noqa: E402

DEMO = dict(
    image_size=32, caption_len=16, caption_dim=64,
    vq=dict(ch=32, ch_mult=[1, 2, 2], z_channels=64, num_res_blocks=1, codebook_size=256, codebook_embed_dim=8),
    gpt=dict(dim=128, n_layer=4, n_head=4),
    clip=dict(embed_dim=64, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=4, head_width=32),
              text_cfg=dict(context_length=32, vocab_size=49408, width=64, heads=2, layers=2)),
    perceptual={"kind": "demo"},
)
LLAMAGEN = dict(image_size=256, caption_len=120, caption_dim=2048, vq={}, clip="ViT-L-14",
                perceptual={"kind": "lpips-vgg"})

TRAIN = {
    "prompts_per_step": 32, "group_size": 8, "grad_accum": 1, "world_size": 1, "checkpoint_every": 0,
    "nominal_steps": 4680, "gradient_checkpointing": False,
    "rollout": {"cfg_scale": 6.0, "temperature": 1.0, "top_k": 1000, "top_p": 1.0, "batch_size": 0},
    "policy": {"lr": 1e-5, "weight_decay": 0.01, "grad_clip": 1.0, "kl_coef": 0.05, "clip_eps": 0.2, "ppo_epochs": 1,
               "adv_clip": 5.0, "adv_std_eps": 1e-4, "uniform_advantages": False, "reference": "fixed",
               "logprob_mask": "ranke", "ema_decay": 0.999, "ema_every": 10},
    "decoder": {"lr": 5e-5, "weight_decay": 0.01, "grad_clip": 1.0, "ema_decay": 0.99, "lambda_rec": 1.0,
                "lambda_gan": 1.0, "lambda_consistency": 10.0, "lambda_reward": 0.01, "lambda_lasc": 0.0,
                "lasc_topk": 20, "rank_k": 1, "tau_start": 4.0, "tau_end": 1.0, "tau_anneal_frac": 0.2},
    "discriminator": {"lr": 2e-5, "weight_decay": 0.01, "n_layers": 3, "ndf": 64, "start_step": 0, "weight": 0.5},
}


class RandomText:
    """Stands in for the T5 encoder: fixed random features per caption, full mask."""

    def __init__(self, length: int, dim: int, device):
        self.length, self.dim, self.device = length, dim, device

    def encode(self, captions):
        g = torch.Generator().manual_seed(len(captions))
        emb = torch.randn(len(captions), self.length, self.dim, generator=g) * 0.1
        return emb.to(self.device), torch.ones(len(captions), self.length, dtype=torch.bool, device=self.device)


class RandomData:
    """Stands in for TrainData: random real images and GT codes of the right shapes."""

    def __init__(self, image_size: int, tokens: int, vocab: int, prompts: int):
        self.image_size, self.tokens, self.vocab, self.B = image_size, tokens, vocab, prompts

    def __len__(self):
        return 10_000

    def batch(self, step, rank=0, world_size=1, device="cpu"):
        g = torch.Generator().manual_seed(step)
        per = self.B // world_size
        images = torch.rand(per, 3, self.image_size, self.image_size, generator=g) * 2 - 1
        codes = torch.randint(0, self.vocab, (per, self.tokens), generator=g)
        return Batch(list(range(per)), [f"prompt {i} of step {step}" for i in range(per)], images.to(device),
                     codes.to(device), rank * per)


class RandomClipReward(RewardModel):
    def __init__(self, spec, device):
        import open_clip

        from ranke.models.clip import ClipModel, register_model_config

        super().__init__(device)
        if isinstance(spec, dict):
            path = Path(tempfile.mkdtemp()) / "ranke-bench-clip.json"
            path.write_text(json.dumps(spec))
            name = register_model_config(path)
        else:
            name = spec
        model = open_clip.create_model(name, pretrained=None, device=device).eval().requires_grad_(False)
        self.clip = ClipModel(model, open_clip.get_tokenizer(name), name=name)

    def embed_images(self, images):
        return self.clip.embed_images(images)

    def _embed_texts(self, captions):
        return self.clip.embed_texts(captions)


def build(preset: str, prompts: int, group: int, device: torch.device, args):
    from ranke.perceptual import LPIPSVGG, PyramidDistance
    from ranke.train.round import RoundRunner

    spec = DEMO if preset == "demo" else LLAMAGEN
    torch.manual_seed(0)
    vq = build_vq(spec["vq"])
    grid = spec["image_size"] // vq.downsample
    gpt_arch = dict(spec["gpt"]) if preset == "demo" else {"preset": preset}
    gpt_arch["caption_dim"] = spec["caption_dim"]
    policy = build_gpt(gpt_arch, vq.codebook_size, grid * grid, spec["caption_len"])
    torch.nn.init.normal_(policy.output.weight, std=0.02)  # non-degenerate logits
    bb = LlamaGenBackbone(RandomText(spec["caption_len"], spec["caption_dim"], device), policy.to(device).eval(),
                          vq.to(device).eval(), spec["image_size"], device)
    perc = (PyramidDistance() if spec["perceptual"]["kind"] == "demo" else LPIPSVGG()).to(device).eval().requires_grad_(False)
    reward = RandomClipReward(spec["clip"], device)
    train = copy.deepcopy(TRAIN)
    train.update(prompts_per_step=prompts, group_size=group, gradient_checkpointing=args.grad_ckpt)
    train["rollout"]["batch_size"] = args.rollout_batch
    train["grad_accum"] = args.grad_accum
    if preset == "demo":
        train["rollout"]["top_k"] = 0
        train["discriminator"].update(n_layers=2, ndf=32)
    cfg = {"seed": 0, "device": str(device), "precision": args.precision, "image_size": spec["image_size"],
           "assets": {"reward": {"kind": "bench"}, "perceptual": spec["perceptual"]},
           "methods": {"m": {"mode": args.mode}}, "rounds": {"steps": args.steps + 1}, "train": train}
    data = RandomData(spec["image_size"], grid * grid, vq.codebook_size, prompts)
    runner = RoundRunner(cfg, "m", 1, None, "<random>", tempfile.mkdtemp(), device=device, backbone=bb,
                         reward=reward, perceptual=perc, data=data)
    return runner


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="demo", choices=["demo", "GPT-B", "GPT-L", "GPT-XL"])
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up step)")
    p.add_argument("--mode", default="ranke", choices=["ranke", "policy", "decoder"])
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--rollout-batch", type=int, default=0, help="rollouts per sampling/decoding chunk (0 = all)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ranke.runtime import resolve_device

    device = resolve_device(args.device)
    t0 = time.perf_counter()
    runner = build(args.preset, args.prompts, args.group, device, args)
    build_s = time.perf_counter() - t0
    times, parts = [], {}
    for i in range(args.steps + 1):
        if device.type == "cuda" and i == 1:
            torch.cuda.reset_peak_memory_stats(device)
        row = runner.train_step()
        print(f"step {i}: {row['step_time_s']:.3f}s {json.dumps({k: round(v, 3) for k, v in runner.timings.items()})}",
              flush=True)
        if i > 0:
            times.append(row["step_time_s"])
            for k, v in runner.timings.items():
                parts[k] = parts.get(k, 0.0) + v / args.steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        dev_name = torch.cuda.get_device_name(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process RSS)
        dev_name = f"cpu x{torch.get_num_threads()} threads"
    out = {
        "preset": args.preset, "mode": args.mode, "prompts": args.prompts, "group": args.group,
        "rollouts_per_step": args.prompts * args.group, "device": dev_name, "precision": str(runner.amp or "fp32"),
        "policy_params_M": round(sum(p.numel() for p in runner.policy.parameters()) / 1e6, 1),
        "vq_params_M": round(sum(p.numel() for p in runner.vq.parameters()) / 1e6, 1),
        "sec_per_step_mean": round(sum(times) / len(times), 3), "sec_per_step_min": round(min(times), 3),
        "parts_sec": {k: round(v, 3) for k, v in parts.items()},
        "peak_memory_gib": round(peak, 2), "peak_memory_kind": "cuda max allocated" if device.type == "cuda" else "process max RSS",
        "build_s": round(build_s, 1), "timed_steps": args.steps,
    }
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
