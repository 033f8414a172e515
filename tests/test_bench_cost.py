"""bench/cost.py counts the jobs and steps the workflow plans (checked against a dry run of a study
on its stand-ins) and turns them into GPU-hours with the per-unit times it is given."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys

import pytest
import yaml
from conftest import REPO, STUDIES, snakemake_cmd, snakemake_env

from ranke.config import load_config


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_cost", REPO / "bench" / "cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def test_llamagen_study_cost_from_its_config():
    bench = load_bench()
    parts = bench.study_cost(load_config(STUDIES["llamagen_xl"]), step_s=5.0, sample_img_s=23.8, score_s_per_30k=180)
    train, sample, score = parts
    # 4 trained methods x 3 replicates x 6 rounds x 1000 steps, 8 GPUs, 5 s a step
    assert "72000 steps on 8 GPUs" in train.units and train.gpu_hours == pytest.approx(72000 * 5 * 8 / 3600)
    # base once per replicate + (policy, ranke, ranke_block) per replicate and round; decoder-only reuses the base's
    assert sample.units.startswith("57 jobs") and sample.gpu_hours == pytest.approx(57 * 30000 / 23.8 / 3600)
    assert score.units.startswith("75 jobs") and score.gpu_hours == pytest.approx(75 * 180 / 3600)
    assert "| **total** | | **824** |" in bench.table(parts)


def test_counts_equal_the_workflow_plan(standin_sets, tmp_path):
    """The same counts as Snakemake plans, on the study with its stand-in overlay plus two
    replicates and two rounds (so that every factor of the formula is exercised)."""
    _, overlay = standin_sets("llamagen_xl")
    more = tmp_path / "more.yaml"
    more.write_text(yaml.safe_dump({"replicates": [0, 1], "rounds": {"n": 2, "steps": 1}}))
    config = load_config(STUDIES["llamagen_xl"], overlay, more)
    train, sample, score = load_bench().study_cost(config, step_s=1.0, sample_img_s=1.0, score_s_per_30k=1.0)
    out = subprocess.run(snakemake_cmd(tmp_path / "work", "-n", "--cores", "2", "--configfile",
                                       str(STUDIES["llamagen_xl"]), str(overlay), str(more)),
                         env=snakemake_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    plan = dict(re.findall(r"^(\w+)\s+(\d+)$", out.stdout.split("Job stats:")[-1], re.M))
    trained = [m for m in config["methods"] if m["mode"] != "none"]
    assert int(plan["train_round"]) == len(trained) * 2 * 2
    assert f"{int(plan['sample']) + int(plan['baseline'])} jobs" in sample.units
    assert f"{int(plan['score'])} jobs" in score.units
