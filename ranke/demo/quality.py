"""Stage `python -m ranke demo-quality`: the demo base models' quality bars, on the demo val split.

    python -m ranke demo-quality --config FILE.json --out results/demo/quality.parquet

Everything is loaded through the real loaders (LlamaGenBackbone.from_config, load_clip), so this
stage is also the end-to-end check that the demo assets are in their real counterparts' formats.
Rows (schema "demo_quality": model, metric, value, target, n):

  vq    psnr_db            mean per-image PSNR of encode->decode at image_size   (bar >= 24)
  vq    codebook_usage     fraction of the codebook used by the val split's codes  (bar >= 0.5)
  clip  retrieval_top1     caption -> image top-1 accuracy among the first --n-retrieval val images,
                           each queried with its first caption (strict: the right image only)  (bar >= 0.6)
  gpt   clip_score_samples mean 100*cos(sample_i, caption_i) of base-policy samples (CFG and sampling
                           settings from config `sampling`, seeds as the sample stage: seed*1_000_003 + id)
  gpt   clip_score_shuffled the same samples scored against a derangement of the captions: the
                           expected score of samples of a shuffled caption              (bar < samples)
  gpt   clip_score_real    the prompts' real val images scored against their captions   (bar > samples)
  gpt   ordering_ok        1 if shuffled < samples < real, else 0                       (bar == 1)

Bars are reported, not enforced (a slower machine may miss them); --strict exits 1 when one is missed.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ranke import io
from ranke.data import coco
from ranke.runtime import (
    add_config_arguments,
    config_from_args,
    log_environment,
    resolve_device,
    set_threads,
    setup_logging,
)

log = logging.getLogger("ranke.demo.quality")

BARS = {("vq", "psnr_db"): 24.0, ("vq", "codebook_usage"): 0.5, ("clip", "retrieval_top1"): 0.6}


def derangement(n: int, seed: int) -> np.ndarray:
    """A permutation with no fixed point (n >= 2): a cyclic shift of a random order."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    order = np.random.default_rng(seed).permutation(n)
    perm = np.empty(n, dtype=np.int64)
    perm[order] = order[(np.arange(n) + 1) % n]
    return perm


def vq_metrics(backbone, images: torch.Tensor, codes: torch.Tensor | None = None,
               batch_size: int = 256) -> tuple[float, float]:
    """(mean PSNR dB, codebook usage fraction) of encode -> decode on `images` [-1, 1].

    `codes` (N, h*w), if given, are the tokenize stage's codes of the same images (used instead
    of encoding again).
    """
    from ranke.demo.train import psnr

    psnrs, used = [], torch.zeros(backbone.codebook_size, dtype=torch.bool)
    for i in range(0, len(images), batch_size):
        x = images[i: i + batch_size].to(backbone.device)
        c = backbone.tokenize(backbone.vq, x) if codes is None else codes[i: i + batch_size].to(backbone.device)
        used[c.flatten().cpu()] = True
        psnrs.append(psnr(backbone.decode(backbone.vq, c).float(), x).cpu())
    return float(torch.cat(psnrs).mean()), float(used.float().mean())


def val_codes(tokens_path: str | Path, image_ids: np.ndarray, vq_path: str | Path) -> torch.Tensor:
    """The val codes of the tokenize stage, in `image_ids` order; checks they come from this VQ."""
    t = io.read_parquet(tokens_path, "tokens").set_index("image_id")
    sha = io.sha256_file(vq_path)
    stale = t["vq_sha256"] != sha
    if stale.any():
        raise ValueError(f"{tokens_path} was made with another VQ checkpoint than {vq_path} (sha256 mismatch)")
    missing = [int(i) for i in image_ids if i not in t.index]
    if missing:
        raise ValueError(f"{tokens_path}: {len(missing)} val images are not tokenized, e.g. image_id {missing[0]}")
    return torch.tensor(np.stack(t.loc[image_ids, "codes"].to_numpy()), dtype=torch.long)


def retrieval_top1(clip, images: torch.Tensor, captions: list[str]) -> float:
    """Caption i -> argmax over images j of cos(text_i, image_j) == i, averaged."""
    ie = clip.embed_images(images.to(clip.device))
    te = clip.embed_texts(captions)
    hits = (te @ ie.t()).argmax(1).cpu() == torch.arange(len(captions))
    return float(hits.float().mean())


def measure(cfg: dict, device="cpu", tokens_path: str | Path | None = None, *, n_retrieval: int = 100,
            n_prompts: int = 100) -> pd.DataFrame:
    from ranke.models.backbone import LlamaGenBackbone
    from ranke.models.clip import load_clip

    n_ret, n_prompts = int(n_retrieval), int(n_prompts)
    sc = cfg["sampling"]
    image_size = int(cfg["image_size"])
    root = cfg["assets"]["coco_root"]
    t0 = time.perf_counter()

    split = coco.read_split(root, "val")
    images = coco.to_float(coco.load_images(root, split.images["file"].tolist(), image_size, coco.GT))
    backbone = LlamaGenBackbone.from_config(cfg["assets"], image_size, device)
    clip = load_clip(cfg["assets"]["clip"], device)
    rows = []

    with torch.no_grad():
        codes = None
        if tokens_path is not None:
            codes = val_codes(tokens_path, split.images["image_id"].to_numpy(), cfg["assets"]["vq"]["checkpoint"])
        p, usage = vq_metrics(backbone, images, codes)
        rows += [("vq", "psnr_db", p, ">= 24", len(images)), ("vq", "codebook_usage", usage, ">= 0.5", len(images))]
        log.info("VQ: PSNR %.2f dB, codebook usage %.3f (%d val images)", p, usage, len(images))

        per = coco.captions_by_image(split.captions).set_index("image_id")
        ids = split.images["image_id"].to_numpy()[:n_ret]
        first = [per.loc[i, "captions"][0] for i in ids]
        acc = retrieval_top1(clip, images[: len(ids)], first)
        rows.append(("clip", "retrieval_top1", acc, ">= 0.6", len(ids)))
        log.info("CLIP: caption->image top-1 %.3f among %d val images", acc, len(ids))

        prompts = coco.coco30k_prompts(split.captions, n_prompts, seed=int(cfg.get("prompts", {}).get("seed", 0)))
        caps = prompts["caption"].tolist()
        seeds = [int(sc["seed"]) * 1_000_003 + int(i) for i in prompts["prompt_id"]]
        samples = []
        bs = int(sc.get("batch_size", 100))
        for i in range(0, len(caps), bs):
            cond = backbone.encode_prompts(caps[i: i + bs])
            codes = backbone.sample(backbone.policy, cond, seeds=seeds[i: i + bs], cfg_scale=float(sc["cfg_scale"]),
                                    temperature=float(sc["temperature"]), top_k=int(sc["top_k"]),
                                    top_p=float(sc["top_p"]))
            samples.append(backbone.decode(backbone.vq, codes).float())
        samples = torch.cat(samples)
        s_match = clip.score(samples, caps)
        perm = derangement(len(caps), seed=int(sc["seed"]))
        s_shuf = clip.score(samples, [caps[j] for j in perm])
        row_of = {int(iid): k for k, iid in enumerate(split.images["image_id"])}
        real = images[[row_of[int(i)] for i in prompts["image_id"]]]
        s_real = clip.score(real, caps)
    m, s, r = float(s_match.mean()), float(s_shuf.mean()), float(s_real.mean())
    rows += [
        ("gpt", "clip_score_samples", m, "> shuffled, < real", len(caps)),
        ("gpt", "clip_score_shuffled", s, "", len(caps)),
        ("gpt", "clip_score_real", r, "", len(caps)),
        ("gpt", "ordering_ok", float(s < m < r), "== 1", len(caps)),
    ]
    log.info("base policy CLIP score: shuffled %.2f < samples %.2f < real %.2f ? %s (cfg %.1f, %d prompts)",
             s, m, r, s < m < r, float(sc["cfg_scale"]), len(caps))
    log.info("quality measured in %.1fs", time.perf_counter() - t0)
    return pd.DataFrame(rows, columns=["model", "metric", "value", "target", "n"])


def bars_missed(df: pd.DataFrame) -> list[str]:
    missed = []
    for (model, metric), bar in BARS.items():
        v = df.loc[(df.model == model) & (df.metric == metric), "value"]
        if len(v) and not float(v.iloc[0]) >= bar:
            missed.append(f"{model} {metric} = {float(v.iloc[0]):.3f} (bar >= {bar})")
    ok = df.loc[(df.model == "gpt") & (df.metric == "ordering_ok"), "value"]
    if len(ok) and float(ok.iloc[0]) != 1.0:
        missed.append("gpt CLIP score ordering shuffled < samples < real does not hold")
    return missed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ranke demo-quality", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, "the demo config: seed, demo, sampling, prompts and the runtime keys")
    p.add_argument("--out", required=True, help="e.g. results/demo/quality.parquet")
    p.add_argument("--tokens", default=None, help="tokens parquet of the val split (else the VQ encodes again)")
    p.add_argument("--n-retrieval", type=int, default=None,
                   help="val images in the CLIP retrieval test (default: demo.quality.n_retrieval, 100)")
    p.add_argument("--n-prompts", type=int, default=None,
                   help="val prompts sampled by the base policy (default: demo.quality.n_prompts, 100)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a quality bar is missed")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = leave the default)")
    p.add_argument("--log", default=None, help="also log to this file")
    args = p.parse_args(argv)
    setup_logging(args.log)
    cfg = config_from_args(args)
    set_threads(args.threads)
    device = resolve_device(cfg.get("device", "auto"))
    log_environment({"stage": "demo-quality", "device": str(device)})
    qc = cfg.get("demo", {}).get("quality", {})
    n_retrieval = args.n_retrieval if args.n_retrieval is not None else int(qc.get("n_retrieval", 100))
    n_prompts = args.n_prompts if args.n_prompts is not None else int(qc.get("n_prompts", 100))
    df = measure(cfg, device, args.tokens, n_retrieval=n_retrieval, n_prompts=n_prompts)
    io.write_parquet(df, args.out, "demo_quality")
    missed = bars_missed(df)
    for m in missed:
        log.warning("quality bar missed: %s", m)
    log.info("wrote %s", Path(args.out))
    return 1 if (missed and args.strict) else 0
