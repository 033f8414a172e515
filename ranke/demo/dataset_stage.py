"""Stage `python -m ranke demo-data`: write the synthetic shapes dataset in MS-COCO 2014 layout.

    python -m ranke demo-data --config FILE.json --out resources/demo/coco

The config JSON is either the whole study config or just {"image_size": ..., "demo": {"dataset": ...}};
only `image_size` and `demo.dataset` are read.
"""

from __future__ import annotations

import argparse
import logging
import time

from ranke.data.demo import write_demo_coco
from ranke.runtime import add_config_arguments, config_from_args, setup_logging

log = logging.getLogger("ranke.demo.dataset_stage")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ranke demo-data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(p, "config with image_size and demo.dataset")
    p.add_argument("--out", required=True, help="COCO root to (re)write, e.g. resources/demo/coco")
    p.add_argument("--log", default=None, help="also log to this file")
    args = p.parse_args(argv)
    setup_logging(args.log)
    cfg = config_from_args(args)
    if "image_size" not in cfg or "dataset" not in cfg.get("demo", {}):
        raise SystemExit("the config must contain 'image_size' and 'demo.dataset'")
    t0 = time.perf_counter()
    write_demo_coco(args.out, cfg["demo"]["dataset"], cfg["image_size"])
    log.info("wrote %s in %.1fs", args.out, time.perf_counter() - t0)
    return 0
