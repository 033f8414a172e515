"""The paper's two studies through the whole real DAG, on stand-in assets, on this CPU.

`snakemake --configfile workflow/studies/<study>.yaml <stand-ins>/overlay.yaml` runs every rule of
the study as a cluster user would run it (fid_reference on the COCO JPEG tree, tokenize, prompts,
baseline, every method's rounds through submitit, sample, score, report), with the production
loaders: FLAN-T5 from its save_pretrained directory, the transformers CLIP reward, the OpenAI
ViT-B/32 CLIP score through open_clip, Inception FID through torch-fidelity, LPIPS-VGG, LlamaGen
`.pt` files / the Janus directory. The overlay (ranke.standins) changes only sizes and counts.
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest
import yaml

from conftest import STUDIES, snakemake_cmd, snakemake_env
from ranke import io
from test_pipeline import planned_rules


def _expected_jobs(study: dict) -> dict[str, int]:
    methods = study["methods"]
    trained = [m for m in methods if m["mode"] != "none"]
    sampled = [m for m in trained if m["mode"] != "decoder"]  # decoder-only keeps the base samples
    return {"all": 1, "fid_reference": 1, "tokenize": 2, "code_histogram": 1, "prompts": 1, "baseline": 1,
            "train_round": len(trained), "sample": len(sampled), "score": 1 + len(trained), "report": 1}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STUDIES))
def test_study_runs_end_to_end_on_standins(name, standin_sets, tmp_path):
    _, overlay = standin_sets(name)
    study = yaml.safe_load(STUDIES[name].read_text())
    work = tmp_path / "work"
    cmd = snakemake_cmd(work, "--cores", "2", "--configfile", str(STUDIES[name]), str(overlay))
    out = subprocess.run(cmd, env=snakemake_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, f"{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-8000:]}"

    # every rule of the real DAG ran, each as often as the study's methods ask
    assert planned_rules(out) == _expected_jobs(study)

    # the production loaders did the measuring, and every number is finite
    results = work / "results" / study["study"]  # one tree per study
    metrics = [io.read_parquet(p, "metrics") for p in sorted(results.glob("*/seed_*/round_*/metrics.parquet"))]
    assert len(metrics) == _expected_jobs(study)["score"]
    for m in metrics:
        rows = m.set_index("metric")
        assert all(math.isfinite(v) for v in rows["value"]), rows["value"].to_dict()
        fid = json.loads(rows.loc["fid", "details"])
        assert rows.loc["fid", "extractor"] == "inception-v3-compat" and fid["label"] == "FID (Inception)"
        assert fid["fid_protocol"] == "clean"
        assert "OpenAI ViT-B/32" in json.loads(rows.loc["clip_score", "details"])["convention"]
        assert json.loads(rows.loc["reward", "details"])["kind"] == "hf_clip"
        assert json.loads(rows.loc["fid", "details"])["backbone"] == study["backbone"]
    # the rounds trained with the study's LPIPS-VGG and reward (the round's own record)
    for done in sorted(results.glob("*/seed_*/round_*/checkpoint/DONE")):
        record = json.loads(done.read_text())
        assert record["perceptual"] == "lpips-vgg" and record["reward"] == "hf_clip", done

    report = results / "report"
    for f in ("main_table.md", "main_table.tex", "rounds_table.csv", "curves.png", "samples.png"):
        assert (report / f).stat().st_size > 0, f
