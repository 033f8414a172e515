"""Training data and rollouts of one RankE step.

* `TrainData`        the train split (tokens.parquet + COCO images): the B prompts of step t with
                     their paired real image x and its GT codes — a pure function of (seed, t), so a
                     resumed or re-sharded run sees exactly the same batches (no sampler state).
* `rollout_seeds`    per-rollout sampling seeds, a function of (seed, t, global rollout index).
* `generate_rollouts`  G code maps per prompt from the current policy with CFG.
* `score_rollouts`   decode with the EMA decoder (fp32, clamped) and score with the reward model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ranke.data.coco import GT, load_image, to_float

log = logging.getLogger("ranke.train.rollout")

# rollout seeds: (seed * SEED_STRIDE + step) * MAX_ROLLOUTS + global rollout index
SEED_STRIDE = 1_000_003
MAX_ROLLOUTS = 1 << 20


@dataclass
class Batch:
    """The prompts of one step on this rank, with their paired real images."""

    image_ids: list[int]
    captions: list[str]
    images: torch.Tensor  # (B, 3, S, S) float [-1, 1]
    gt_codes: torch.Tensor  # (B, L) long: tokens.parquet codes of the same images
    offset: int  # index of this rank's first prompt within the global batch


class TrainData:
    """Prompts (one random caption per image) + paired real images of the train split.

    Step t uses global prompt slots j = t*B .. t*B + B - 1. Slot j falls in epoch e = j // N at
    position j % N of a permutation of the N images seeded by (seed, e); its caption is drawn with
    a generator seeded by (seed, j). Rank r of W takes the r-th contiguous 1/W of the B prompts.
    """

    def __init__(self, tokens: pd.DataFrame, coco_root: str | Path, image_size: int, prompts_per_step: int,
                 seed: int):
        if len(tokens) == 0:
            raise ValueError("the train tokens table is empty")
        self.tokens = tokens.reset_index(drop=True)
        self.root = Path(coco_root)
        self.image_size = image_size
        self.B = prompts_per_step
        self.seed = seed
        self._perm: dict[int, np.ndarray] = {}
        lengths = {len(c) for c in self.tokens["codes"].head(1000)}
        if len(lengths) != 1:
            raise ValueError(f"tokens have mixed code lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.tokens)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perm:
            self._perm = {epoch: np.random.default_rng([self.seed, 17, epoch]).permutation(len(self.tokens))}
        return self._perm[epoch]

    def rows(self, step: int) -> list[tuple[int, int]]:
        """(row in tokens, caption index) of the B global prompt slots of `step`."""
        out = []
        n = len(self.tokens)
        for j in range(step * self.B, (step + 1) * self.B):
            row = int(self._permutation(j // n)[j % n])
            n_caps = len(self.tokens.at[row, "captions"])
            cap = int(np.random.default_rng([self.seed, 29, j]).integers(n_caps))
            out.append((row, cap))
        return out

    def batch(self, step: int, rank: int = 0, world_size: int = 1, device: torch.device | str = "cpu") -> Batch:
        if self.B % world_size:
            raise ValueError(f"train.prompts_per_step={self.B} is not divisible by train.world_size={world_size}")
        per = self.B // world_size
        chosen = self.rows(step)[rank * per : (rank + 1) * per]
        images, codes, caps, ids = [], [], [], []
        for row, cap in chosen:
            r = self.tokens.iloc[row]
            # the transform that made these codes in `tokenize`: x and its codes show the same pixels
            img = load_image(self.root / r["file"], self.image_size, GT)
            images.append(to_float(img))
            codes.append(torch.as_tensor(np.asarray(r["codes"], dtype=np.int64)))
            caps.append(str(r["captions"][cap]))
            ids.append(int(r["image_id"]))
        return Batch(ids, caps, torch.stack(images).to(device), torch.stack(codes).to(device), rank * per)


def rollout_seeds(seed: int, step: int, prompt_offset: int, n_prompts: int, group_size: int) -> list[int]:
    """Seeds of the rollouts of prompts [prompt_offset, prompt_offset + n_prompts) of `step`,
    prompt-major; independent of how the prompts are split across ranks."""
    base = (seed * SEED_STRIDE + step) * MAX_ROLLOUTS
    start = prompt_offset * group_size
    return [base + start + i for i in range(n_prompts * group_size)]


@torch.no_grad()
def generate_rollouts(backbone, policy, cond_g, seeds: list[int], rollout_cfg: dict, *, chunk: int = 0) -> torch.Tensor:
    """(N, L) codes sampled from `policy` for the (already repeated) conditions `cond_g`."""
    policy.eval()
    n = len(seeds)
    chunk = chunk or n
    out = []
    for s in range(0, n, chunk):
        idx = torch.arange(s, min(n, s + chunk))
        out.append(
            backbone.sample(
                policy,
                cond_g.index(idx),
                seeds=seeds[s : s + chunk],
                cfg_scale=float(rollout_cfg.get("cfg_scale", 1.0)),
                temperature=float(rollout_cfg.get("temperature", 1.0)),
                top_k=int(rollout_cfg.get("top_k", 0) or 0),
                top_p=float(rollout_cfg.get("top_p", 1.0)),
            )
        )
    return torch.cat(out)


@torch.no_grad()
def score_rollouts(backbone, vq_ema, reward, codes: torch.Tensor, captions: list[str], *, chunk: int = 0):
    """Decode every rollout with the EMA decoder (fp32, clamped to [-1,1]) and score it.
    Returns (rewards (N,) float32, images (N,3,H,W) float32)."""
    n = codes.shape[0]
    chunk = chunk or n
    rewards, images = [], []
    for s in range(0, n, chunk):
        img = backbone.decode(vq_ema, codes[s : s + chunk]).float().clamp(-1, 1)
        rewards.append(reward(img, captions[s : s + chunk]).float())
        images.append(img)
    return torch.cat(rewards), torch.cat(images)
