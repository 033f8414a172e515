"""Smoke test of bench/fullscale.py: one part at toy sizes through the real subprocess / table code,
so the benchmark cannot rot. It checks structure only, never times."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_fullscale", REPO / "bench" / "fullscale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
def test_fullscale_smoke(tmp_path, capsys):
    bench = load_bench()
    out = tmp_path / "fullscale.json"
    assert bench.main(["--smoke", "--parts", "gpt_logprob", "--batch-sizes", "1,2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Table 1" in printed and "Table 2" in printed

    result = json.loads(out.read_text())
    rows = result["table1"]
    assert [(r["part"], r["batch"], r["status"]) for r in rows] == [("gpt_logprob", 1, "ok"), ("gpt_logprob", 2, "ok")]
    for r in rows:
        assert r["seconds"] > 0 and r["peak_gib"] > 0 and r["process_peak_gib"] > 0 and r["params_m"] > 0
        assert r["saved_gib"] > 0 and r["formula_fp32_gib"] > 0

    jobs = {t["job"] for t in result["table2_totals"]}
    assert any(j.startswith("round rank") and j.endswith("checkpointing on (study)") for j in jobs)
    assert any(j.startswith("sample job") for j in jobs) and any(j.startswith("score job") for j in jobs)
    assert all(t["total"] > 0 for t in result["table2_totals"])
    # parts that did not run are reported as not measured, never silently counted as zero
    assert any(r["bytes"] is None and "NOT MEASURED" in r["formula"] for r in result["table2"])


def test_activation_formula_checkpointing_saves_memory():
    bench = load_bench()
    gpt = dict(dim=1280, n_layer=36, n_head=20, n_kv_head=None, multiple_of=256, ffn_dim_multiplier=None,
               norm_eps=1e-5, rope_base=10000, vocab_size=16384, block_size=256, cls_token_num=120, caption_dim=2048,
               token_dropout_p=0.0, resid_dropout_p=0.0, ffn_dropout_p=0.0, class_dropout_prob=0.1)
    full = sum(bench.gpt_activation_terms(gpt, 32, precision="bf16", checkpointing=False).values())
    ckpt = sum(bench.gpt_activation_terms(gpt, 32, precision="bf16", checkpointing=True).values())
    assert ckpt < full / 5
    # the static sampler cache: 36 layers x K,V x rows x 20 heads x 375 slots x 64 x 2 B
    assert bench.kv_cache_bytes(gpt, 2, 2) == 36 * 2 * 2 * 20 * 375 * 64 * 2
