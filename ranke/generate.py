"""Stage `baseline` / `sample`: codes for every evaluation prompt from one policy.

The seed of prompt p is `sampling.seed * 1_000_003 + p` and each row of a batch has its own
generator, so a sample depends only on (policy, prompt, seed), not on the batch it falls in:
changing `sampling.batch_size` or the number of GPUs reproduces the same codes.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ranke import io
from ranke.runtime import (
    add_config_arguments,
    autocast,
    autocast_dtype,
    config_from_args,
    log_environment,
    resolve_device,
    set_threads,
    setup_logging,
)

log = logging.getLogger("ranke.generate")

SEED_STRIDE = 1_000_003


def prompt_seeds(base_seed: int, prompt_ids) -> np.ndarray:
    return base_seed * SEED_STRIDE + np.asarray(prompt_ids, dtype=np.int64)


def generate_samples(
    cfg: dict, method: str, round_idx: int, checkpoint: str, prompts_path: str | Path, out_path: str | Path
) -> pd.DataFrame:
    """Sample every prompt once with the policy of `checkpoint` ("base" = the base assets)."""
    from ranke.models.factory import build_backbone

    s = cfg["sampling"]
    device = resolve_device(cfg.get("device", "auto"))
    dtype = autocast_dtype(cfg.get("precision", "auto"), device)
    prompts = io.read_parquet(prompts_path, "prompts")
    backbone = build_backbone(cfg, device)
    policy = backbone.policy
    if checkpoint != "base":
        policy = backbone.load_policy(Path(checkpoint) / "policy.pt")
    policy.eval()
    seeds = prompt_seeds(s["seed"], prompts["prompt_id"])
    log.info(
        "sampling %d prompts for %s round %d from %s: cfg %.2f, temperature %.2f, top-k %d, top-p %.2f, "
        "batch %d, device %s, autocast %s",
        len(prompts), method, round_idx, checkpoint, s["cfg_scale"], s["temperature"], s["top_k"],
        s["top_p"], s["batch_size"], device, dtype,
    )
    codes: list[np.ndarray] = []
    t0 = time.time()
    bs = int(s["batch_size"])
    with torch.inference_mode():
        for start in tqdm(range(0, len(prompts), bs), desc=f"sample {method} r{round_idx}", mininterval=10):
            rows = slice(start, start + bs)
            cond = backbone.encode_prompts(prompts["caption"].iloc[rows].tolist())
            with autocast(device, dtype):
                out = backbone.sample(
                    policy,
                    cond,
                    seeds=torch.as_tensor(seeds[rows]),
                    cfg_scale=s["cfg_scale"],
                    temperature=s["temperature"],
                    top_k=s["top_k"],
                    top_p=s["top_p"],
                )
            codes.extend(out.cpu().numpy().astype(np.int32))
    elapsed = time.time() - t0
    samples = pd.DataFrame(
        {
            "method": method,
            "round": np.int32(round_idx),
            "prompt_id": prompts["prompt_id"].to_numpy(),
            "seed": seeds,
            "codes": codes,
        }
    )
    io.write_parquet(samples, out_path, "samples")
    log.info("wrote %s: %d samples in %.1f s (%.2f images/s)", out_path, len(samples), elapsed,
             len(samples) / max(elapsed, 1e-9))
    return samples


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ranke sample", description=__doc__)
    add_config_arguments(ap, "config subset: the runtime keys and sampling")
    ap.add_argument("--method", required=True, help="method name (recorded in the samples)")
    ap.add_argument("--round", type=int, required=True, help="round number (0: the base model)")
    ap.add_argument("--checkpoint", required=True, help="round checkpoint dir, or 'base'")
    ap.add_argument("--prompts", required=True, help="prompts.parquet of the study")
    ap.add_argument("--out", required=True, help="samples.parquet to write")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default: all cores)")
    args = ap.parse_args(argv)
    setup_logging()
    set_threads(args.threads)
    log_environment()
    cfg = config_from_args(args)
    generate_samples(cfg, args.method, args.round, args.checkpoint, args.prompts, args.out)
    return 0
