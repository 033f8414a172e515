"""Stage `tokenize`: COCO-layout images + captions -> tokens.parquet, and the real-code histogram.

Each image goes through the GT transform (ranke.data.coco: torchvision Resize of the shorter side,
bicubic, + CenterCrop, the upstream RankE training transform), then is VQ-encoded; the training
rounds load the paired image x of these codes through the very same transform. One row per image carries its captions
and its code map, so later stages (demo GPT training, rounds) never touch the VQ encoder again.

A missing or corrupt image fails the stage naming its path, unless config `bad_images: skip`
is set: then it is left out and counted in the log (never silently dropped).

`histogram` only counts codes: torch is imported by the `split` path alone.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ranke import io
from ranke.data import coco
from ranke.runtime import add_config_arguments, config_from_args, log_environment, resolve_device, setup_logging

log = logging.getLogger("ranke.tokenize")



def tokenize_split(cfg: dict, split: str, out_path: str | Path, num_workers: int | None = None) -> pd.DataFrame:
    """Tokenize one split of `cfg["assets"]["coco_root"]`; write and return the tokens table.

    num_workers: image-decoding processes; None = config `tokenize.workers` (default 2).
    """
    import torch

    from ranke.models.factory import build_backbone

    root = Path(cfg["assets"]["coco_root"])
    tok_cfg = cfg.get("tokenize", {})
    size = int(cfg["image_size"])
    device = resolve_device(cfg.get("device", "auto"))
    batch_size = int(tok_cfg.get("batch_size", 64))
    bad = coco.BadImages(cfg.get("bad_images", "fail"), f"tokenize {split}")
    if num_workers is None:
        num_workers = int(tok_cfg.get("workers", 2))

    table = coco.captions_by_image(coco.read_split(root, split).captions)
    backbone = build_backbone(cfg, device, load_text=False, load_policy=False)
    vq = backbone.vq.eval()
    # the file the codes depend on (Janus keeps its VQ inside the model's weights file)
    vq_path = getattr(backbone, "vq_file", None) or cfg["assets"]["vq"]["checkpoint"]
    vq_sha = io.sha256_file(vq_path)
    log.info(
        "tokenizing %s: %d images from %s at %d px, VQ %s (sha256 %s), device %s, %d loader workers",
        split, len(table), root, size, vq_path, vq_sha[:12], device, num_workers,
    )

    images = coco.CocoImages(root, table["file"].tolist(), size, coco.GT, errors=True)
    loader = torch.utils.data.DataLoader(
        images,
        batch_size=batch_size,
        num_workers=num_workers,
        shuffle=False,
    )
    codes: list[np.ndarray | None] = [None] * len(table)
    t0 = time.time()
    with torch.inference_mode():
        for idx, pixels, errors in tqdm(loader, desc=f"tokenize {split}", mininterval=10):
            good = bad.keep(idx, errors, images)
            if not good.any():
                continue
            batch = coco.to_float(pixels[good]).to(device)
            out = backbone.tokenize(vq, batch).cpu().numpy().astype(np.int32)
            for i, c in zip(idx[good].tolist(), out):
                codes[i] = c
    bad.finish(len(table))
    keep = [c is not None for c in codes]
    table = table[keep].reset_index(drop=True)
    grid_h, grid_w = backbone.grid
    table["codes"] = [c for c in codes if c is not None]
    table["split"] = split
    table["grid_h"] = np.int16(grid_h)
    table["grid_w"] = np.int16(grid_w)
    table["vq_sha256"] = vq_sha
    io.write_parquet(table, out_path, "tokens")
    log.info(
        "wrote %s: %d images, grid %dx%d, %.1f images/s",
        out_path, len(table), grid_h, grid_w, len(table) / max(time.time() - t0, 1e-9),
    )
    return table


def code_histogram(tokens_path: str | Path, codebook_size: int, out_path: str | Path) -> pd.DataFrame:
    """Counts of every code over all images, and over two disjoint halves (even / odd rows)."""
    tokens = io.read_parquet(tokens_path, "tokens")
    counts = np.zeros((2, codebook_size), dtype=np.int64)
    for row, codes in enumerate(tokens["codes"]):
        c = np.asarray(codes, dtype=np.int64)
        if c.size and (c.min() < 0 or c.max() >= codebook_size):
            raise ValueError(
                f"{tokens_path}: image row {row} has codes outside [0, {codebook_size}): "
                "the tokens come from another codebook"
            )
        counts[row % 2] += np.bincount(c, minlength=codebook_size)
    hist = pd.DataFrame(
        {
            "code": np.arange(codebook_size, dtype=np.int32),
            "count": counts.sum(0),
            "count_a": counts[0],
            "count_b": counts[1],
        }
    )
    io.write_parquet(hist, out_path, "code_hist")
    used = int((hist["count"] > 0).sum())
    log.info(
        "code histogram of %s: %d images, %d codes used of %d", tokens_path, len(tokens), used, codebook_size
    )
    return hist


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ranke tokenize", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split", help="tokenize one COCO split")
    add_config_arguments(s, "the tokenize config (bad_images, tokenize, and the runtime keys)")
    s.add_argument("--split", required=True, choices=coco.SPLITS, help="COCO split to encode")
    s.add_argument("--out", required=True, help="tokens parquet to write")
    s.add_argument("--workers", type=int, default=None, help="image-decoding processes (default: config tokenize.workers)")
    h = sub.add_parser("histogram", help="reference code histogram of a tokens file")
    h.add_argument("--tokens", required=True, help="tokens parquet of the real images")
    h.add_argument("--codebook-size", type=int, required=True, help="number of codebook entries")
    h.add_argument("--out", required=True, help="code_hist.parquet to write")
    args = p.parse_args(argv)
    setup_logging()
    if args.cmd == "split":
        log_environment()
        tokenize_split(config_from_args(args), args.split, args.out, args.workers)
    else:
        code_histogram(args.tokens, args.codebook_size, args.out)
    return 0
