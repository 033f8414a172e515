"""Stage `python -m ranke demo-train {vq,text,clip,gpt}`: the demo world's four base models,
trained from scratch on the demo train split and saved in their real counterparts' formats, so
that nothing downstream knows it runs on a demo:

  vq    LlamaGen VQ (ranke.models.vq) -> {"model": state_dict, "config": {"kind": "vq", "arch": ...}}
  text  tiny T5 encoder + word-level tokenizer (save_pretrained dir; frozen random weights: the GPT's
        caption projection learns to read them)
  clip  open_clip model with a custom config -> <out>/<assets.clip.model>.json + <out>/weights.pt
        (plain state dict; `open_clip.create_model(name, pretrained=weights.pt)` loads it)
  gpt   LlamaGen t2i GPT (ranke.models.gpt) -> {"model": state_dict, "config": {"kind": "gpt", ...}}

    python -m ranke demo-train vq   --config FILE.json --coco resources/demo/coco --out resources/demo/models/vq.pt
    python -m ranke demo-train text --config FILE.json --coco resources/demo/coco --out resources/demo/models/t5
    python -m ranke demo-train clip --config FILE.json --coco resources/demo/coco --out resources/demo/models/clip
    python -m ranke demo-train gpt  --config FILE.json --tokens results/tokens/train.parquet \
                                    --t5 resources/demo/models/t5 --out resources/demo/models/gpt.pt

Config read: seed, image_size, demo.{vq,text,clip,gpt}, assets.vq.arch, assets.gpt.arch,
assets.text_encoder.{max_length,padding}, assets.clip.model.

Losses (each a named function below, unit-tested in tests/test_demo_train.py):
  VQ:   L1 + perceptual + codebook + beta * commitment. The perceptual term is
        ranke.perceptual.PyramidDistance (multi-scale Laplacian-band + finite-difference-gradient
        L1, no weights to download). Codes unused for `restart_every` steps are restarted on
        random encoder outputs of the current batch (keeps codebook usage high on a tiny budget).
  CLIP: symmetric InfoNCE over the batch with the model's learnable logit scale (clamped at 100).
  GPT:  next-token cross-entropy on the VQ codes given the caption; captions are replaced by the
        learned unconditional embedding with probability demo.gpt.caption_dropout (so CFG works).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ranke import io
from ranke.data import coco
from ranke.runtime import (
    add_config_arguments,
    config_from_args,
    log_environment,
    resolve_device,
    seed_everything,
    set_threads,
    setup_logging,
)

log = logging.getLogger("ranke.demo.train")

MODELS = ("vq", "text", "clip", "gpt")


# ----------------------------------------------------------------------------------------------
# shared helpers


def _require_keys(d: dict, keys: list[str], where: str) -> None:
    missing = [k for k in keys if k not in d]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}")


def _positive(d: dict, key: str, where: str, kind=int):
    v = d.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not float(v).is_integer()) or v <= 0:
        raise ValueError(f"{where}.{key} must be a positive {kind.__name__}, got {v!r}")
    return kind(v)


def lr_at(step: int, total: int, base_lr: float, warmup: int) -> float:
    """Linear warm-up then cosine decay to 10 % of the base rate."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return base_lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, t))))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def load_split_images(coco_root: str | Path, split: str, image_size: int) -> tuple[torch.Tensor, "coco.CocoSplit"]:
    """All images of a split as float [-1, 1] (N, 3, S, S), in image_id order, and the split tables."""
    s = coco.read_split(coco_root, split)
    images = coco.to_float(coco.load_images(coco_root, s.images["file"].tolist(), image_size, coco.GT))
    return images, s


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [-1, 1] (peak-to-peak 2)."""
    mse = (x.clamp(-1, 1) - y.clamp(-1, 1)).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(4.0 / mse.clamp_min(1e-10))


# ----------------------------------------------------------------------------------------------
# VQ tokenizer


def vq_l1_loss(rec: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (rec - x).abs().mean()


def vq_perceptual_loss(rec: torch.Tensor, x: torch.Tensor, distance: torch.nn.Module) -> torch.Tensor:
    """Mean download-free perceptual distance (ranke.perceptual.PyramidDistance)."""
    return distance(rec, x).mean()


def vq_total_loss(l1, perceptual, codebook, commitment, *, perceptual_weight: float, beta: float) -> torch.Tensor:
    return l1 + perceptual_weight * perceptual + codebook + beta * commitment


@torch.no_grad()
def restart_dead_codes(embedding: torch.Tensor, counts: torch.Tensor, latents: torch.Tensor,
                       generator: torch.Generator) -> int:
    """Re-initialise codes with zero count on random (normalised) encoder outputs; returns how many.

    embedding (K, C) codebook weights (modified in place), counts (K,) uses in the last window,
    latents (N, C) encoder outputs of the current batch.
    """
    dead = (counts == 0).nonzero().flatten()
    if len(dead) == 0 or len(latents) == 0:
        return 0
    pick = torch.randint(len(latents), (len(dead),), generator=generator)
    new = F.normalize(latents.cpu()[pick].float(), dim=-1)
    new = new + 0.01 * torch.randn(new.shape, generator=generator)
    embedding[dead.to(embedding.device)] = F.normalize(new, dim=-1).to(embedding)
    return int(len(dead))


@torch.no_grad()
def _eval_psnr(model, images: torch.Tensor) -> float:
    model.eval()
    x = images.to(next(model.parameters()).device)
    rec = model.decode_latents(model.quantize(model.encode_latents(x))[0])
    model.train()
    return float(psnr(rec, x).mean())


def check_vq_geometry(image_size: int, arch: dict) -> int:
    """The VQ grid side; ValueError naming the key when image_size does not divide into it."""
    down = 2 ** (len(arch.get("ch_mult", [1, 1, 2, 2, 4])) - 1)
    if image_size % down:
        raise ValueError(
            f"image_size {image_size} is not a multiple of the VQ downsampling factor {down} "
            f"(2 ** (len(assets.vq.arch.ch_mult) - 1)): the token grid would not divide the image"
        )
    return image_size // down


def train_vq(cfg: dict, coco_root: str | Path, out: str | Path, device="cpu") -> dict:
    """Train the demo VQ on the train split; writes `out`; returns summary metrics."""
    from ranke.models.backbone import build_vq
    from ranke.models.checkpoints import save_checkpoint
    from ranke.perceptual import PyramidDistance

    tc, arch, image_size = cfg["demo"]["vq"], cfg["assets"]["vq"]["arch"], int(cfg["image_size"])
    steps = _positive(tc, "steps", "demo.vq")
    bs = _positive(tc, "batch_size", "demo.vq")
    lr = _positive(tc, "lr", "demo.vq", float)
    grid = check_vq_geometry(image_size, arch)
    pw, beta = float(tc.get("perceptual_weight", 0.1)), float(tc.get("beta", 0.25))
    restart_every = int(tc.get("restart_every", 25))
    seed = int(cfg.get("seed", 0))

    seed_everything(seed)
    images, _ = load_split_images(coco_root, "train", image_size)
    # channels_last: ~1.2-1.4x faster convolutions (forward and backward) with oneDNN on CPU
    model = build_vq(arch).to(device).to(memory_format=torch.channels_last).train()
    images = images.contiguous(memory_format=torch.channels_last)
    distance = PyramidDistance().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(seed)
    k = model.codebook_size
    counts = torch.zeros(k, dtype=torch.long)
    probe = images[:64]  # fixed images for a less noisy PSNR in the log
    log.info("VQ: %d train images at %dpx -> %dx%d codes, codebook %d; %.2fM params; %d steps x %d, lr %g",
             len(images), image_size, grid, grid, k, sum(p.numel() for p in model.parameters()) / 1e6, steps, bs, lr)
    t0 = time.perf_counter()
    every = max(1, steps // 10)
    for step in (bar := tqdm(range(steps), desc="demo vq", mininterval=5)):
        _set_lr(opt, lr_at(step, steps, lr, warmup=min(50, steps // 10 + 1)))
        x = images[torch.randint(len(images), (bs,), generator=gen)].to(device)
        z = model.encode_latents(x)
        zq, idx, cb_loss, commit_loss = model.quantize(z)
        rec = model.decode_latents(zq)
        l1 = vq_l1_loss(rec, x)
        perc = vq_perceptual_loss(rec, x, distance)
        loss = vq_total_loss(l1, perc, cb_loss, commit_loss, perceptual_weight=pw, beta=beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        counts += torch.bincount(idx.flatten().cpu(), minlength=k)
        restarted = 0
        if restart_every > 0 and (step + 1) % restart_every == 0 and step + 1 < steps * 0.9:
            lat = z.detach().permute(0, 2, 3, 1).reshape(-1, z.shape[1]).cpu()
            restarted = restart_dead_codes(model.quantize.embedding.weight.data, counts, lat, gen)
        if (step + 1) % every == 0 or step == steps - 1:
            usage = float((counts > 0).float().mean()) if restart_every > 0 else float("nan")
            p = _eval_psnr(model, probe)
            log.info("vq step %d/%d: loss %.4f l1 %.4f perceptual %.4f codebook %.4f commit %.4f psnr %.2f dB "
                     "usage(window) %.2f restarted %d lr %.2e", step + 1, steps, loss.item(), l1.item(), perc.item(),
                     cb_loss.item(), commit_loss.item(), p, usage, restarted, opt.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{loss.item():.3f}", psnr=f"{p:.1f}")
        if restart_every > 0 and (step + 1) % restart_every == 0:
            counts.zero_()
    model.eval()
    save_checkpoint(model, out, {"kind": "vq", "arch": model.config.to_dict()})
    secs = time.perf_counter() - t0
    log.info("VQ trained in %.1fs -> %s", secs, out)
    return {"seconds": secs, "final_loss": loss.item()}


# ----------------------------------------------------------------------------------------------
# text encoder


def train_text(cfg: dict, coco_root: str | Path, out: str | Path) -> dict:
    """Write the tiny T5 (random, frozen) with a word-level vocabulary covering the whole grammar."""
    from ranke.data.demo import grammar_sentences
    from ranke.models.text import make_tiny_t5

    tc = cfg["demo"]["text"]
    _require_keys(tc, ["d_model", "num_layers", "num_heads", "d_ff"], "demo.text")
    t0 = time.perf_counter()
    # The vocabulary: every word the grammar can produce plus the train captions, so no caption of
    # any split maps to <unk> (a real T5 vocabulary is fixed and large, not fit to the data).
    texts = grammar_sentences() + coco.read_split(coco_root, "train").captions["caption"].tolist()
    make_tiny_t5(out, texts, d_model=int(tc["d_model"]), num_layers=int(tc["num_layers"]),
                 num_heads=int(tc["num_heads"]), d_ff=int(tc["d_ff"]), seed=int(cfg.get("seed", 0)))
    caption_dim = cfg["assets"]["gpt"]["arch"].get("caption_dim")
    if caption_dim is not None and int(caption_dim) != int(tc["d_model"]):
        raise ValueError(f"assets.gpt.arch.caption_dim ({caption_dim}) must equal demo.text.d_model ({tc['d_model']})")
    secs = time.perf_counter() - t0
    log.info("text encoder written in %.1fs -> %s", secs, out)
    return {"seconds": secs}


# ----------------------------------------------------------------------------------------------
# CLIP


def demo_clip_model_config(tc: dict, image_size: int) -> dict:
    """open_clip model config of the demo CLIP (a small ViT + a small text transformer)."""
    patch = int(tc.get("patch_size", 4))
    if image_size % patch:
        raise ValueError(f"image_size {image_size} is not a multiple of demo.clip.patch_size {patch}")
    width, heads, mlp = int(tc["width"]), int(tc.get("heads", 2)), float(tc.get("mlp_ratio", 2.0))
    if width % heads:
        raise ValueError(f"demo.clip.width {width} is not divisible by demo.clip.heads {heads}")
    return {
        "embed_dim": int(tc["embed_dim"]),
        "vision_cfg": {"image_size": image_size, "layers": int(tc.get("layers", 2)), "width": width,
                       "patch_size": patch, "head_width": width // heads, "mlp_ratio": mlp},
        "text_cfg": {"context_length": int(tc.get("context_length", 32)), "vocab_size": 49408, "width": width,
                     "heads": heads, "layers": int(tc.get("layers", 2)), "mlp_ratio": mlp},
    }


def clip_contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of matching (image_i, text_i) pairs; embeddings l2-normalised."""
    logits = logit_scale.exp().clamp(max=100.0) * image_emb @ text_emb.t()
    target = torch.arange(len(logits), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def train_clip(cfg: dict, coco_root: str | Path, out: str | Path, device="cpu") -> dict:
    """Contrastive training of the demo open_clip model; writes <out>/{<name>.json, weights.pt}."""
    import open_clip

    from ranke.models.clip import ClipModel, create_clip

    tc, image_size = cfg["demo"]["clip"], int(cfg["image_size"])
    _require_keys(tc, ["embed_dim", "width"], "demo.clip")
    steps = _positive(tc, "steps", "demo.clip")
    bs = _positive(tc, "batch_size", "demo.clip")
    lr = _positive(tc, "lr", "demo.clip", float)
    name = cfg["assets"]["clip"]["model"]
    seed = int(cfg.get("seed", 0))
    model_cfg = demo_clip_model_config(tc, image_size)

    seed_everything(seed)
    images, split = load_split_images(coco_root, "train", image_size)
    per_image = coco.captions_by_image(split.captions)  # same image_id order as `images`
    out = Path(out)
    t0 = time.perf_counter()
    with io.atomic_path(out, is_dir=True) as tmp:
        cfg_path = tmp / f"{name}.json"
        cfg_path.write_text(json.dumps(model_cfg, indent=2) + "\n")
        model = create_clip(name, config=cfg_path, device=device).train()
        clip = ClipModel(model, open_clip.get_tokenizer(name))
        # Tokenise every caption once; a step indexes into this table.
        flat = [c for caps in per_image["captions"] for c in caps]
        tokens = clip.tokenize(flat).cpu()
        offsets = np.cumsum([0] + [len(c) for c in per_image["captions"]])
        n_caps = torch.tensor(np.diff(offsets))
        offsets = torch.tensor(offsets[:-1])
        # No weight decay on gains, biases and the logit scale (decay would pull the temperature to 1).
        decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "logit_scale" not in n]
        no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "logit_scale" not in n)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                lr=lr)
        gen = torch.Generator().manual_seed(seed)
        bs = min(bs, len(images))
        log.info("CLIP %s: %s; %d images, %d captions; %d steps x %d, lr %g", name, json.dumps(model_cfg),
                 len(images), len(flat), steps, bs, lr)
        every = max(1, steps // 10)
        for step in (bar := tqdm(range(steps), desc="demo clip", mininterval=5)):
            _set_lr(opt, lr_at(step, steps, lr, warmup=min(50, steps // 10 + 1)))
            idx = torch.randperm(len(images), generator=gen)[:bs]
            cap = offsets[idx] + (torch.rand(bs, generator=gen) * n_caps[idx]).long()
            ie = F.normalize(model.encode_image(clip.preprocess(images[idx].to(device))), dim=-1)
            te = F.normalize(model.encode_text(tokens[cap].to(device)), dim=-1)
            loss = clip_contrastive_loss(ie, te, model.logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (step + 1) % every == 0 or step == steps - 1:
                acc = float(((ie @ te.t()).argmax(1) == torch.arange(bs, device=ie.device)).float().mean())
                log.info("clip step %d/%d: loss %.4f batch top-1 %.3f logit scale %.1f lr %.2e", step + 1, steps,
                         loss.item(), acc, model.logit_scale.exp().item(), opt.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{acc:.2f}")
        sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        torch.save(sd, tmp / "weights.pt")
    secs = time.perf_counter() - t0
    log.info("CLIP trained in %.1fs -> %s", secs, out)
    return {"seconds": secs, "final_loss": loss.item()}


# ----------------------------------------------------------------------------------------------
# GPT policy


def gpt_next_token_loss(logits: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of teacher-forced logits (B, L, V) against codes (B, L)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), codes.reshape(-1))


@torch.no_grad()
def encode_captions(text, captions: list[str], batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen text features of every caption, computed once: (N, T, D) float, (N, T) bool."""
    embs, masks = [], []
    for i in range(0, len(captions), batch_size):
        e, m = text.encode(captions[i: i + batch_size])
        embs.append(e.cpu())
        masks.append(m.cpu())
    return torch.cat(embs), torch.cat(masks)


def train_gpt(cfg: dict, tokens_path: str | Path, t5_path: str | Path, out: str | Path, device="cpu") -> dict:
    """Next-token training of the demo GPT on tokenized train images; writes `out`."""
    from ranke.models.backbone import gpt_config
    from ranke.models.checkpoints import save_checkpoint
    from ranke.models.gpt import GPT
    from ranke.models.text import TextEncoder

    tc, image_size = cfg["demo"]["gpt"], int(cfg["image_size"])
    steps = _positive(tc, "steps", "demo.gpt")
    bs = _positive(tc, "batch_size", "demo.gpt")
    lr = _positive(tc, "lr", "demo.gpt", float)
    p_drop = float(tc.get("caption_dropout", 0.1))
    if not 0.0 <= p_drop < 1.0:
        raise ValueError(f"demo.gpt.caption_dropout must be in [0, 1), got {p_drop}")
    te_cfg = cfg["assets"]["text_encoder"]
    vq_arch = cfg["assets"]["vq"]["arch"]
    grid = check_vq_geometry(image_size, vq_arch)
    seed = int(cfg.get("seed", 0))

    seed_everything(seed)
    tokens = io.read_parquet(tokens_path, "tokens")
    if len(tokens) == 0:
        raise ValueError(f"{tokens_path}: no tokenized images")
    codes = torch.tensor(np.stack(tokens["codes"].to_numpy()), dtype=torch.long)
    if codes.shape[1] != grid * grid:
        raise ValueError(f"{tokens_path}: {codes.shape[1]} codes per image, but image_size {image_size} and "
                         f"assets.vq.arch give a {grid}x{grid} grid")
    text = TextEncoder(t5_path, max_length=int(te_cfg["max_length"]), padding=te_cfg.get("padding", "right"),
                       clean_captions=bool(te_cfg.get("clean_captions", True)))
    gcfg = gpt_config(cfg["assets"]["gpt"]["arch"], int(vq_arch["codebook_size"]), grid * grid,
                      int(te_cfg["max_length"]))
    gcfg = dataclasses.replace(gcfg, class_dropout_prob=p_drop, token_dropout_p=0.0, resid_dropout_p=0.0,
                               ffn_dropout_p=0.0)
    if text.dim != gcfg.caption_dim:
        raise ValueError(f"text encoder width {text.dim} ({t5_path}) != assets.gpt.arch.caption_dim {gcfg.caption_dim}")
    flat = [c for caps in tokens["captions"] for c in caps]
    offsets = np.cumsum([0] + [len(c) for c in tokens["captions"]])
    n_caps = torch.tensor(np.diff(offsets))
    if (n_caps == 0).any():
        raise ValueError(f"{tokens_path}: {int((n_caps == 0).sum())} images have no caption")
    offsets = torch.tensor(offsets[:-1])
    t0 = time.perf_counter()
    cap_emb, cap_mask = encode_captions(text, flat)
    log.info("encoded %d captions in %.1fs (max_length %d, %.1f%% truncated)", len(flat), time.perf_counter() - t0,
             te_cfg["max_length"], 100 * float(cap_mask[:, -1].float().mean()))

    model = GPT(gcfg).to(device).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(seed)
    log.info("GPT %s (%.2fM params); %d images, %d captions; %d steps x %d, lr %g, caption dropout %.2f",
             json.dumps(gcfg.to_dict()), model.num_params() / 1e6, len(codes), len(flat), steps, bs, lr, p_drop)
    every = max(1, steps // 10)
    for step in (bar := tqdm(range(steps), desc="demo gpt", mininterval=5)):
        _set_lr(opt, lr_at(step, steps, lr, warmup=min(100, steps // 10 + 1)))
        idx = torch.randint(len(codes), (bs,), generator=gen)
        cap = offsets[idx] + (torch.rand(bs, generator=gen) * n_caps[idx]).long()
        drop = torch.rand(bs, generator=gen) < p_drop
        logits = model(cap_emb[cap].to(device), cap_mask[cap].to(device), codes[idx].to(device),
                       drop_caption=drop.to(device))
        loss = gpt_next_token_loss(logits, codes[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % every == 0 or step == steps - 1:
            log.info("gpt step %d/%d: loss %.4f (ppl %.1f) lr %.2e", step + 1, steps, loss.item(),
                     math.exp(loss.item()), opt.param_groups[0]["lr"])
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    save_checkpoint(model, out, {"kind": "gpt", "arch": model.config.to_dict()})
    secs = time.perf_counter() - t0
    log.info("GPT trained in %.1fs -> %s", secs, out)
    return {"seconds": secs, "final_loss": loss.item()}


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ranke demo-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=MODELS, help="which demo base model to train")
    add_config_arguments(p, "the demo config: seed, demo and the runtime keys")
    p.add_argument("--coco", help="demo COCO root (vq, text, clip)")
    p.add_argument("--tokens", help="tokens parquet of the train split (gpt)")
    p.add_argument("--t5", help="text encoder directory (gpt)")
    p.add_argument("--out", required=True, help="the model file (vq, gpt) or directory (text, clip)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave the default)")
    p.add_argument("--log", default=None, help="also log to this file")
    args = p.parse_args(argv)
    setup_logging(args.log)
    cfg = config_from_args(args)
    set_threads(args.threads)
    device = resolve_device(cfg.get("device", "auto"))
    log_environment({"stage": f"demo-train {args.model}", "device": str(device)})
    if args.model in ("vq", "text", "clip") and not args.coco:
        p.error(f"demo-train {args.model} needs --coco")
    if args.model == "gpt" and not (args.tokens and args.t5):
        p.error("demo-train gpt needs --tokens and --t5")
    if args.model == "vq":
        train_vq(cfg, args.coco, args.out, device)
    elif args.model == "text":
        train_text(cfg, args.coco, args.out)
    elif args.model == "clip":
        train_clip(cfg, args.coco, args.out, device)
    else:
        train_gpt(cfg, args.tokens, args.t5, args.out, device)
    return 0

