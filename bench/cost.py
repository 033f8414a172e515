"""GPU-hours of a study, from its config and per-unit times: what each part costs before it is run.

    .venv/bin/python bench/cost.py workflow/studies/llamagen_xl.yaml
    .venv/bin/python bench/cost.py workflow/studies/janus_pro.yaml --step-s 4.2 --sample-img-s 120

Counts come from the study (methods, replicates, rounds, steps, world size, prompts), exactly as
the workflow plans its jobs: every trained method trains replicates x rounds x steps on
train.world_size GPUs; the base policy is sampled once per replicate, and every method whose policy
trains (policy, ranke) once per replicate and round (decoder-only reuses the base samples); every
(method, replicate, round) and the base model per replicate are scored. Tokenizing COCO and the FID
reference run once and are left out (minutes).

The per-unit times are inputs, not measurements of this script. Until the device check
(issue "GPU readiness") measures them on the target GPU, the defaults are labelled estimates:
  --step-s 5           one RankE step on 8 GPUs (4 prompts x 8 rollouts per GPU): the target
  --sample-img-s 23.8  images/s of one GPU sampling 256-token images at batch 256 with CFG: the
                       upstream LlamaGen sampler measured on one H200 (../shared/notes/
                       upstream-sampler-h200.json); the target for ours is >= 100. Janus-Pro
                       samples 576 tokens per image: give its own rate
  --score-s 180        seconds to score 30 000 images on one GPU (decode + Inception + CLIP): the target
It prints one table (Markdown) and never asserts anything.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ranke.config import load_config  # noqa: E402

POLICY_TRAINING_MODES = ("policy", "ranke")  # modes whose samples change (decoder-only: the base's)


@dataclass
class Part:
    name: str
    units: str  # what was counted
    gpu_hours: float
    assumption: str


def study_cost(config: dict, *, step_s: float, sample_img_s: float, score_s_per_30k: float) -> list[Part]:
    replicates = len(config["replicates"])
    rounds, steps = int(config["rounds"]["n"]), int(config["rounds"]["steps"])
    world = int(config["train"]["world_size"])
    prompts = int(config["prompts"]["n"])
    methods = config["methods"]
    trained = [m for m in methods if m["mode"] != "none"]
    resampled = [m for m in methods if m["mode"] in POLICY_TRAINING_MODES]
    has_base = any(m["mode"] == "none" for m in methods)

    train_steps = len(trained) * replicates * rounds * steps
    sample_jobs = (replicates if has_base else 0) + len(resampled) * replicates * rounds
    score_jobs = (replicates if has_base else 0) + len(trained) * replicates * rounds
    return [
        Part("training rounds", f"{len(trained)} methods x {replicates} replicates x {rounds} rounds x {steps} steps "
             f"= {train_steps} steps on {world} GPUs", train_steps * step_s * world / 3600,
             f"{step_s:g} s per step"),
        # one GPU per sampling / scoring job (the studies' resources)
        Part("evaluation sampling", f"{sample_jobs} jobs x {prompts} images",
             sample_jobs * prompts / sample_img_s / 3600, f"{sample_img_s:g} images/s per GPU"),
        Part("scoring", f"{score_jobs} jobs x {prompts} images",
             score_jobs * score_s_per_30k * prompts / 30000 / 3600, f"{score_s_per_30k:g} s per 30 000 images per GPU"),
    ]


def table(parts: list[Part]) -> str:
    total = sum(p.gpu_hours for p in parts)
    lines = ["| part | what is counted | GPU-hours | share | assumed |", "|---|---|---:|---:|---|"]
    lines += [f"| {p.name} | {p.units} | {p.gpu_hours:,.0f} | {p.gpu_hours / total:.0%} | {p.assumption} |"
              for p in parts]
    lines.append(f"| **total** | | **{total:,.0f}** | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configfiles", nargs="+", help="the study config (and overlays), merged over config.yaml")
    ap.add_argument("--step-s", type=float, default=5.0, help="seconds per training step on train.world_size GPUs")
    ap.add_argument("--sample-img-s", type=float, default=23.8, help="images/s of one sampling GPU")
    ap.add_argument("--score-s", type=float, default=180.0, help="seconds to score 30 000 images on one GPU")
    args = ap.parse_args(argv)
    config = load_config(*args.configfiles)
    print(f"study {config['study']}: estimated GPU-hours (per-unit times are inputs, see --help)\n")
    print(table(study_cost(config, step_s=args.step_s, sample_img_s=args.sample_img_s,
                           score_s_per_30k=args.score_s)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
