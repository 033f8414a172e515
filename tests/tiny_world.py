"""A tiny, random-weight world for stage tests: demo COCO images, VQ, GPT and T5 on disk.

Models are random (not trained): stage tests check plumbing, shapes, determinism and file
formats, not quality. The demo rules train real models; see tests/test_pipeline.py.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import yaml

from ranke.config import DEFAULT_CONFIG, validate_config

IMAGE_SIZE = 16
VQ_ARCH = {
    "codebook_size": 32,
    "codebook_embed_dim": 8,
    "codebook_l2_norm": True,
    "ch": 32,
    "ch_mult": [1, 2],
    "z_channels": 32,
    "num_res_blocks": 1,
}
GPT_ARCH = {"preset": None, "dim": 32, "n_layer": 1, "n_head": 2, "caption_dim": 16}
MAX_LENGTH = 8


def make_world(root: Path, n_train: int = 12, n_val: int = 10) -> dict:
    """Write the world under `root`; return a validated config pointing at it."""
    from ranke.data.demo import write_demo_coco
    from ranke.models.backbone import build_gpt, build_vq
    from ranke.models.checkpoints import save_checkpoint
    from ranke.models.text import make_tiny_t5

    base = yaml.safe_load(DEFAULT_CONFIG.read_text())
    cfg = copy.deepcopy(base)
    cfg["image_size"] = IMAGE_SIZE
    cfg["demo"]["enabled"] = False
    ds = dict(cfg["demo"]["dataset"], n_train=n_train, n_val=n_val)
    coco_root = root / "coco"
    write_demo_coco(coco_root, ds, IMAGE_SIZE)

    torch.manual_seed(0)
    vq = build_vq(VQ_ARCH)
    grid = IMAGE_SIZE // vq.downsample
    gpt = build_gpt(GPT_ARCH, VQ_ARCH["codebook_size"], grid * grid, MAX_LENGTH)
    save_checkpoint(vq, root / "vq.pt", {"kind": "vq", "arch": VQ_ARCH})
    save_checkpoint(gpt, root / "gpt.pt", {"kind": "gpt", "arch": GPT_ARCH})
    make_tiny_t5(root / "t5", ["a red circle on a black background"], d_model=16, num_layers=1,
                 num_heads=2, d_ff=32)

    a = cfg["assets"]
    a["coco_root"] = str(coco_root)
    a["vq"] = {"checkpoint": str(root / "vq.pt"), "arch": VQ_ARCH}
    a["gpt"] = {"checkpoint": str(root / "gpt.pt"), "arch": GPT_ARCH}
    a["text_encoder"] = {"path": str(root / "t5"), "max_length": MAX_LENGTH, "padding": "right"}
    cfg["prompts"] = {"split": "val", "n": 6, "seed": 0}
    cfg["sampling"] = dict(cfg["sampling"], batch_size=4, top_k=0)
    cfg["device"] = "cpu"
    return validate_config(cfg)
