"""Stage `prompts`: the evaluation prompt set under the COCO-30K protocol.

A fixed-seed draw of `prompts.n` distinct images of `prompts.split` (val2014), one caption of each
(30 000 in the paper's protocol; the demo uses fewer). The image and caption ids are recorded so
the subset is reproducible and the FID reference can be matched to it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from ranke import io
from ranke.data import coco
from ranke.runtime import parse_config_json, setup_logging

log = logging.getLogger("ranke.prompts")


def make_prompts(cfg: dict, out_path: str | Path) -> pd.DataFrame:
    p = cfg["prompts"]
    captions = coco.read_split(cfg["assets"]["coco_root"], p["split"]).captions
    n_images = captions["image_id"].nunique()
    if p["n"] > n_images:
        log.warning(
            "prompts.n = %d exceeds the %d captioned %s images: images repeat (with other captions)",
            p["n"], n_images, p["split"],
        )
    prompts = coco.coco30k_prompts(captions, n=p["n"], seed=p["seed"])
    io.write_parquet(prompts, out_path, "prompts")
    log.info("wrote %s: %d prompts from %s (seed %d)", out_path, len(prompts), p["split"], p["seed"])
    return prompts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ranke prompts", description=__doc__)
    ap.add_argument("--config-json", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    setup_logging()
    make_prompts(parse_config_json(args.config_json), args.out)
    return 0
