"""Stage `prompts`: the evaluation prompt set under the COCO-30K protocol.

Two sources, by config:
* default: a fixed-seed draw of `prompts.n` distinct images of `prompts.split` (val2014), one
  caption of each (30 000 in the paper's protocol; the demo uses fewer). The image and caption ids
  are recorded so the subset is reproducible and can be matched to the images.
* `prompts.captions_csv`: the prompt file the official RankE sampler reads (the release's
  evaluations/t2i/coco_captions.csv), read the way that sampler reads it
  (autoregressive/sample/sample_t2i_ddp.py:98-146) and cycled to `prompts.n`, so absolute numbers
  are comparable with the paper's. image_id and caption_id are -1: the file names no image.

The official reader tries pandas first (a column named caption/prompt/text/prompts/captions, any
case, else the first column) and, when pandas cannot parse the file, falls back to one prompt per
non-empty stripped line. The released file has unquoted commas in 1 167 captions, so pandas fails
and the fallback runs: its header line "Prompt" becomes prompt 0, and the file gives 29 588
prompts (cycled to 30 000, the first 412 repeat). We reproduce that, header included, and log it.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ranke import io
from ranke.data import coco
from ranke.runtime import add_config_arguments, config_from_args, setup_logging

log = logging.getLogger("ranke.prompts")

# the official sampler's candidate column names, matched lower-cased, first match wins
PROMPT_COLUMNS = ("caption", "prompt", "text", "prompts", "captions")


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts of a CSV/TSV/text file, read as the official RankE COCO sampler reads them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts.captions_csv: prompt file not found: {path}")
    try:
        df = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        log.warning("%s: not parseable as a table (%s); one prompt per non-empty line, as the official "
                    "sampler falls back to (a header line becomes a prompt)", path, str(e).strip())
        with open(path, encoding="utf-8") as f:
            prompts = [line.strip() for line in f if line.strip()]
    else:
        column = next((c for c in df.columns if str(c).lower() in PROMPT_COLUMNS), df.columns[0])
        log.info("%s: prompts from column %r", path, column)
        prompts = df[column].astype(str).tolist()
    if not prompts:
        raise ValueError(f"prompts.captions_csv: {path} holds no prompts")
    return prompts


def cycled_prompts(prompts: list[str], n: int) -> pd.DataFrame:
    """The first `n` prompts, repeating the list from its start when it is shorter (official)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    repeats = -(-n // len(prompts))
    chosen = (prompts * repeats)[:n]
    return pd.DataFrame({
        "prompt_id": np.arange(n, dtype=np.int64),
        "image_id": np.full(n, -1, dtype=np.int64),
        "caption_id": np.full(n, -1, dtype=np.int64),
        "caption": chosen,
    })


def make_prompts(cfg: dict, out_path: str | Path) -> pd.DataFrame:
    p = cfg["prompts"]
    if p.get("captions_csv"):
        file_prompts = read_prompt_file(p["captions_csv"])
        if p["n"] > len(file_prompts):
            log.warning("prompts.n = %d exceeds the %d prompts of %s: the list repeats from its start",
                        p["n"], len(file_prompts), p["captions_csv"])
        prompts = cycled_prompts(file_prompts, p["n"])
        source = str(p["captions_csv"])
    else:
        captions = coco.read_split(cfg["assets"]["coco_root"], p["split"]).captions
        n_images = captions["image_id"].nunique()
        if p["n"] > n_images:
            log.warning(
                "prompts.n = %d exceeds the %d captioned %s images: images repeat (with other captions)",
                p["n"], n_images, p["split"],
            )
        prompts = coco.coco30k_prompts(captions, n=p["n"], seed=p["seed"])
        source = f"{p['split']} (seed {p['seed']})"
    io.write_parquet(prompts, out_path, "prompts")
    log.info("wrote %s: %d prompts from %s", out_path, len(prompts), source)
    return prompts


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="ranke prompts", description=__doc__.splitlines()[0])
    add_config_arguments(ap, "config with the prompts section")
    ap.add_argument("--out", required=True, help="prompts.parquet to write")
    args = ap.parse_args(argv)
    setup_logging()
    make_prompts(config_from_args(args), args.out)
    return 0
