"""Report stage: tables equal the metrics Parquet (means and intervals over replicates, paired
deltas), bold/footnote right, the ablation table, every figure written.

A tiny synthetic study (4 methods x 3 rounds x 3 replicates, with bootstrap resamples shared by
the methods of a replicate) is written with ranke.io.write_parquet; nothing here trains or
decodes anything. The interval arithmetic itself is checked in test_stats.py.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats as sps

from ranke.io import SCHEMAS, write_parquet
from ranke.report import build, plots, stats, tables

METHODS = {
    "base": {"mode": "none"},
    "policy": {"mode": "policy"},
    "decoder": {"mode": "decoder"},
    "ranke": {"mode": "ranke", "schedule": "step"},
}
STEPS_PER_ROUND = 15
N_ROUNDS = 3
SEEDS = (0, 1, 2)
RESAMPLES = 200
DETAILS = {
    "n_prompts": 200,
    "cfg_scale": 4.0,
    "temperature": 1.0,
    "top_k": 0,
    "top_p": 1.0,
    "fid_extractor": "demo CLIP image tower",
    "clip_convention": "100 x mean cosine, demo CLIP, no prefix",
    "decoder": "online",
    "image_size": 16,
}
BOOTSTRAPPED = ("clip_score", "fid", "code_kl", "reward")


def _values(method: str, r: int, seed: int) -> dict[str, float]:
    """Plausible-looking numbers; what matters is that they differ per method, round and seed."""
    t = r / N_ROUNDS
    rng = np.random.default_rng([seed, r, sum(map(ord, method))])
    if method.startswith("ranke_"):  # a RankE variant, slightly different from ranke
        values = _values("ranke", r, seed)
        return {k: v + 0.1 * t if k in ("clip_score", "fid", "reward") else v for k, v in values.items()}
    clip = {"base": 31.54, "policy": 31.54 + 0.9 * t, "decoder": 31.54 + 0.2 * t, "ranke": 31.54 + 2.2 * t}[method]
    fid = {"base": 15.24, "policy": 15.24 + 2.5 * t, "decoder": 15.24 - 0.3 * t, "ranke": 15.24 + 0.4 * t}[method]
    kl = {"base": 0.021, "policy": 0.021 + 0.09 * t, "decoder": 0.021, "ranke": 0.021 + 0.05 * t}[method]
    noise = rng.normal(0, 0.05, 4)  # the replicate's (training seed's) deviation
    return {
        "clip_score": clip + noise[0],
        "fid": fid + noise[1],
        "code_kl": kl + abs(noise[2]) / 100,
        "code_kl_real_floor": 0.0123456,
        "code_entropy_bits": 7.6 - 0.4 * t * (method in ("policy", "ranke")) + noise[3],
        "code_entropy_bits_real": 7.71,
        "codebook_usage": 0.93 - 0.1 * t,
        "reward": 25.0 + (2.0 if method in ("policy", "ranke") else 0.1) * t + noise[0],
        "n_samples": 200.0,
        "wall_time_s": 12.5 + r,
    }


def run_dir(root: Path, method: str, seed: int, r: int) -> Path:
    return root / method / f"seed_{seed}" / f"round_{r}"


def write_metrics(root: Path, method: str, r: int, seed: int = 0, *, details=None, drop=()) -> Path:
    rows = []
    for metric, value in _values(method, r, seed).items():
        if metric in drop:
            continue
        rows.append({
            "method": method,
            "replicate": seed,
            "round": r,
            "step": r * STEPS_PER_ROUND,
            "metric": metric,
            "value": value,
            "n": 200,
            "extractor": {"fid": "demo CLIP image tower", "reward": "ranke-demo-clip",
                          "clip_score": "ranke-demo-clip"}.get(metric, ""),
            "details": json.dumps(details if details is not None else DETAILS),
        })
    path = run_dir(root, method, seed, r) / "metrics.parquet"
    write_parquet(pd.DataFrame(rows), path, "metrics")
    return path


def write_bootstrap(root: Path, method: str, r: int, seed: int = 0, *, sample_set: str | None = None) -> Path:
    """Resamples that share the prompt noise of their replicate (the same for every method), as
    the score stage's shared resample weights make them."""
    shared = np.random.default_rng([seed, 99]).normal(size=(len(BOOTSTRAPPED), RESAMPLES))
    own = np.random.default_rng([seed, r, sum(map(ord, method))]).normal(size=(len(BOOTSTRAPPED), RESAMPLES))
    values = _values(method, r, seed)
    scale = {"clip_score": 0.3, "fid": 0.2, "code_kl": 0.002, "reward": 0.3}
    rows = [pd.DataFrame({"method": method, "replicate": seed, "round": r, "metric": m,
                          "resample": np.arange(RESAMPLES, dtype=np.int32),
                          "value": values[m] + scale[m] * (shared[k] + 0.1 * own[k]),
                          "sample_set": sample_set or f"prompts-seed{seed}"})
            for k, m in enumerate(BOOTSTRAPPED)]
    path = run_dir(root, method, seed, r) / "bootstrap.parquet"
    write_parquet(pd.concat(rows, ignore_index=True), path, "bootstrap")
    return path


def write_train_log(root: Path, method: str, r: int, seed: int = 0) -> Path:
    rng = np.random.default_rng([seed, r, 7])
    mode = METHODS[method]["mode"]
    cols = [f.name for f in SCHEMAS["train_log"]]
    steps = np.arange(1, STEPS_PER_ROUND + 1)  # a round restarts its step count
    df = pd.DataFrame({c: np.full(len(steps), np.nan) for c in cols})
    df["method"], df["replicate"], df["round"], df["step"] = method, seed, r, steps
    df["phase"] = {"policy": "policy", "decoder": "decoder", "ranke": "both"}[mode]
    g = (r - 1) * STEPS_PER_ROUND + steps
    if mode in ("policy", "ranke"):
        df["reward_mean"] = 25 + 0.05 * g + rng.normal(0, 0.2, len(g))
        df["kl"] = 0.01 * g + rng.normal(0, 0.01, len(g))
        df["loss_pg"] = rng.normal(0, 1e-7, len(g))  # numerically zero with one PPO epoch: no panel
        df["ratio_mean"] = 1.0  # constant with one PPO epoch: no panel
    if mode in ("decoder", "ranke"):
        df["loss_disc"] = np.where(g > 10, 0.5 - 0.001 * g, 0.0)
        df["loss_rec"] = 0.3 + rng.normal(0, 0.01, len(g))
        df["loss_consistency"] = 0.01 + rng.normal(0, 0.002, len(g))
        df["loss_rank_gan"] = 0.7 + rng.normal(0, 0.05, len(g))
    df["step_time_s"] = 0.5
    path = run_dir(root, method, seed, r) / "train_log.parquet"
    write_parquet(df, path, "train_log")
    return path


def write_grid(root: Path, method: str, r: int, seed: int = 0, k: int = 4, tile: int = 16) -> Path:
    rng = np.random.default_rng(sum(map(ord, method)) + r)
    img = np.zeros((tile, tile * k, 3), np.uint8)
    for j in range(k):
        img[:, j * tile:(j + 1) * tile] = rng.integers(0, 255, 3)
        img[4:12, j * tile + 4:j * tile + 12] = 255
    path = run_dir(root, method, seed, r) / "grid.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def make_study(root: Path, *, extra_methods: dict | None = None, grids=True, seeds=SEEDS):
    methods = dict(METHODS, **(extra_methods or {}))
    metrics, boots, logs, grid_paths = [], [], [], []
    for seed in seeds:
        runs = [("base", 0)] + [(m, r) for m in methods if m != "base" for r in range(1, N_ROUNDS + 1)]
        for m, r in runs:
            metrics.append(write_metrics(root, m, r, seed))
            boots.append(write_bootstrap(root, m, r, seed))
            if r and m in METHODS:
                logs.append(write_train_log(root, m, r, seed))
            if grids and seed == seeds[0] and r in (0, N_ROUNDS):
                grid_paths.append(write_grid(root, m, r, seed))
    return methods, metrics, boots, logs, grid_paths


def all_metrics(paths) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def per_seed(df, method, r, metric) -> np.ndarray:
    sel = df[(df.method == method) & (df["round"] == r) & (df.metric == metric)].sort_values("replicate")
    assert len(sel) == sel["replicate"].nunique() >= 1
    return sel["value"].to_numpy(float)


def t_bounds(values) -> tuple[float, float, float]:
    v = np.asarray(values, float)
    half = sps.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return v.mean(), v.mean() - half, v.mean() + half


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    methods, metrics, boots, logs, grids = make_study(root)
    out = root / "report"
    config = {"study": "synthetic", "methods": methods, "replicates": list(SEEDS), "report": {}}
    written = build.report(metrics, boots, logs, grids, config, out, config_hash="abc123")
    return {"root": root, "methods": methods, "metrics": metrics, "boots": boots, "out": out, "written": written,
            "df": all_metrics(metrics)}


# ----------------------------------------------------------------------------------------------
# Main table


def parse_md_table(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]


def test_main_csv_is_the_mean_and_t_interval_over_replicates(study):
    df = study["df"]
    main = pd.read_csv(study["out"] / "main_table.csv")
    rows = main[~main.method.str.startswith("delta:")]
    assert list(rows.method) == ["base", "policy", "decoder", "ranke"]
    assert list(rows.label) == ["Base", "Policy-only (std. RL)", "Decoder-only", "RankE"]
    assert list(rows.decoder) == ["frozen", "frozen", "co-evolved", "co-evolved"]
    assert list(rows["round"]) == [0, 3, 3, 3] and list(rows.step) == [0, 45, 45, 45]
    assert set(rows.replicates) == {3} and set(rows.interval) == {stats.ACROSS}
    for row in rows.itertuples():
        for m in tables.MAIN_METRICS:
            mean, lo, hi = t_bounds(per_seed(df, row.method, row.round, m))
            assert getattr(row, m) == pytest.approx(mean, rel=1e-12)
            assert (getattr(row, f"{m}_lo"), getattr(row, f"{m}_hi")) == pytest.approx((lo, hi), rel=1e-12)
    # the paired delta row: RankE minus policy-only, per replicate, t-interval of the differences
    (delta,) = main[main.method.str.startswith("delta:")].itertuples()
    assert delta.method == "delta:ranke-policy"
    for m in tables.MAIN_METRICS:
        d = per_seed(df, "ranke", 3, m) - per_seed(df, "policy", 3, m)
        assert (getattr(delta, m), getattr(delta, f"{m}_lo"), getattr(delta, f"{m}_hi")) == pytest.approx(t_bounds(d))


CELL = re.compile(r"^(\*\*)?([+-]?[0-9.]+) ± ([0-9.]+)(\*\*)?( \*)?$")


def test_main_markdown_means_intervals_bold_and_deltas(study):
    df = study["df"]
    rows = parse_md_table((study["out"] / "main_table.md").read_text())
    assert [r[0] for r in rows] == ["Base", "Policy-only (std. RL)", "Decoder-only", "RankE",
                                    "Δ RankE − Policy-only (std. RL)"]
    finals = {"base": 0, "policy": 3, "decoder": 3, "ranke": 3}
    for j, m in enumerate(tables.MAIN_METRICS):
        d = tables.decimals_for(m, df.loc[df.metric == m, "value"])
        means = {me: per_seed(df, me, r, m).mean() for me, r in finals.items()}
        bold = set()
        for me, cells in zip(finals, rows):
            match = CELL.match(cells[2 + j])
            assert match, cells[2 + j]
            mean, lo, hi = t_bounds(per_seed(df, me, finals[me], m))
            assert float(match.group(2)) == pytest.approx(round(mean, d), abs=10 ** -(d + 3))
            assert float(match.group(3)) == pytest.approx(round((hi - lo) / 2, d), abs=10 ** -(d + 3))
            if match.group(1):
                bold.add(me)
        # bold: the best mean (max for CLIP / reward, min for FID / code-KL) at printed precision
        better = max if m in ("clip_score", "reward") else min
        printed = {me: round(v, d) for me, v in means.items()}
        assert bold == {me for me in finals if printed[me] == better(printed.values())}
        # the delta row: signed, and * exactly when its interval excludes 0
        match = CELL.match(rows[-1][2 + j])
        diffs = per_seed(df, "ranke", 3, m) - per_seed(df, "policy", 3, m)
        mean, lo, hi = t_bounds(diffs)
        assert float(match.group(2)) == pytest.approx(round(mean, d), abs=10 ** -(d + 3))
        assert bool(match.group(5)) == (lo > 0 or hi < 0)
    # the synthetic RankE gains 1.3 CLIP over RL in every replicate: a clear, marked difference
    assert rows[-1][2].endswith(" *") and rows[-1][2].startswith("+1.")


def test_footnote_states_protocol_intervals_and_provenance(study):
    md = (study["out"] / "main_table.md").read_text()
    tex = (study["out"] / "main_table.tex").read_text()
    for fact in ("200 prompts", "200 generated images per method", "CFG 4", "top-k off", "top-p 1",
                 "FID features: demo CLIP image tower", "CLIP score: 100 x mean cosine, demo CLIP, no prefix",
                 "online decoder weights", "16 px", "Reward: ranke-demo-clip", "real-data floor", "0.01235",
                 "mean over 3 replicates (seeds 0, 1, 2", "95% Student-t interval", "paired within each replicate",
                 f"B = {RESAMPLES} resamples", "Study synthetic; config abc123; code ranke"):
        assert fact in md, fact
    note = (study["out"] / "main_table.note.tex").read_text()
    assert "FID features: demo CLIP image tower" in note and "FID features" not in tex  # the note has its own file
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\bfseries" in tex and "$\\pm$" in tex
    assert tex.count("\\midrule") == 2  # under the header, and above the delta row
    protocol = json.loads((study["out"] / "protocol.json").read_text())
    assert protocol["study"] == "synthetic" and protocol["config_hash"] == "abc123"
    assert protocol["replicates"] == list(SEEDS) and protocol["code_version"].startswith("ranke ")


def test_one_replicate_shows_bootstrap_intervals(tmp_path):
    methods, metrics, boots, _, _ = make_study(tmp_path, grids=False, seeds=(5,))
    m, b = tables.load_metrics(metrics), tables.load_bootstrap(boots)
    t = tables.main_table(m, methods, b)
    md = tables.main_table_markdown(t)
    assert "One replicate (seed 5)" in md and "evaluation noise only" in md
    cells = parse_md_table(md)
    assert re.match(r"^\*?\*?[0-9.]+ \[[0-9.]+, [0-9.]+\]", cells[0][2]), cells[0][2]
    boot = b[(b.method == "ranke") & (b["round"] == 3) & (b.metric == "clip_score")].sort_values("resample")
    ref = stats.bootstrap_interval(per_seed(m, "ranke", 3, "clip_score")[0], boot["value"])
    row = t.rows.set_index("method").loc["ranke"]
    assert (row.clip_score_lo, row.clip_score_hi) == pytest.approx((ref.lo, ref.hi))
    assert t.deltas[0].intervals["clip_score"].kind == stats.WITHIN


def test_footnote_changes_with_details_and_flags_mismatch(tmp_path):
    other = dict(DETAILS, cfg_scale=6.0, fid_extractor="Inception-v3 (torch-fidelity inception-v3-compat)")
    other.pop("clip_convention")
    paths = [write_metrics(tmp_path, "base", 0, details=other), write_metrics(tmp_path, "policy", 1, details=other)]
    t = tables.main_table(tables.load_metrics(paths), {"policy": {"mode": "policy"}})
    assert "CFG 6" in t.footnote and "Inception-v3 (torch-fidelity inception-v3-compat)" in t.footnote
    assert "100 x mean cosine" not in t.footnote
    # a protocol fact that differs between methods is shown with who used which value
    paths.append(write_metrics(tmp_path, "ranke", 1, details=dict(other, cfg_scale=7.5)))
    t = tables.main_table(tables.load_metrics(paths), METHODS)
    assert "CFG 6 (Base, Policy-only (std. RL)); 7.5 (RankE) [differs between methods]" in t.footnote


def test_footnote_from_score_stage_details(tmp_path):
    """The score stage's layout: common keys on every row, conventions/labels on their metric's row."""
    common = {"n_prompts": 50, "n_samples": 50, "image_size": 32, "cfg_scale": 4.0, "temperature": 1.0,
              "top_k": 0, "top_p": 1.0, "decoder": "ema", "backbone": "llamagen"}
    per_metric = {
        "clip_score": ("ranke-demo-clip", {"convention": "100 x mean cosine, demo CLIP, prefix ''"}),
        "fid": ("clip-image", {"label": "FID (demo CLIP features)", "reference_images": 300,
                               "feature_layer": "image_embeds", "weights_sha256": "ab12"}),
        "code_kl": ("vq-codes", {"kl": "KL(generated || real), nats", "entropy": "bits", "codebook_size": 256}),
        "code_kl_real_floor": ("vq-codes", {"kl": "KL(real half A || real half B), nats"}),
        "reward": ("ranke-demo-clip", {"kind": "open_clip", "convention": "100 x mean cosine"}),
        "wall_time_s": ("", {"timing_s": {"fid": 1.0}}),
    }
    paths = []
    for method, r in (("base", 0), ("policy", 1), ("ranke", 1)):
        for seed in (0, 1):  # per-replicate facts (sampling seed, sample set, code) never reach the footnote
            rows = [{"method": method, "replicate": seed, "round": r, "step": 10 * r, "metric": m, "n": 50,
                     "value": 0.0123 if m == "code_kl_real_floor" else 1.0 + r + seed,
                     "extractor": ext, "details": json.dumps({**common, "decoder_path": f"/x/{method}/vq.pt",
                                                              "sampling_seed": 42 + seed, "sample_set": f"s{seed}",
                                                              "code_version": f"v{seed}", **d})}
                    for m, (ext, d) in per_metric.items()]
            paths.append(tmp_path / method / f"seed_{seed}" / "metrics.parquet")
            write_parquet(pd.DataFrame(rows), paths[-1], "metrics")
    t = tables.main_table(tables.load_metrics(paths), METHODS)
    note = t.footnote
    for fact in ("Protocol: 50 prompts, 50 generated images per method, 32 px, CFG 4, temperature 1, top-k off, "
                 "top-p 1, ema decoder weights.",
                 "FID (demo CLIP features), extractor clip-image (50 generated, 300 real images).",
                 "CLIP score: 100 x mean cosine, demo CLIP, prefix ''.",
                 "Reward: ranke-demo-clip, 100 x mean cosine.",
                 "code-KL: KL(generated || real), nats; real-data floor (two halves of the real codes) 0.0123.",
                 "Other protocol facts: backbone llamagen."):
        assert fact in note, (fact, note)
    for noise in ("decoder_path", "sha256", "timing", "differs", "half A", "sampling_seed", "sample_set", "v1"):
        assert noise not in note
    # the FID column names its feature space
    assert tables.header_text(t.headers["fid"]) == "FID ↓ (demo CLIP features)"


def test_rounds_table_is_the_mean_over_replicates(study):
    df = study["df"]
    csv = pd.read_csv(study["out"] / "rounds_table.csv")
    assert len(csv) == 1 + 3 * N_ROUNDS
    for row in csv.to_dict("records"):
        for metric in set(df.metric):
            mean, lo, hi = t_bounds(per_seed(df, row["method"], row["round"], metric))
            assert row[metric] == pytest.approx(mean, rel=1e-12)
            if np.isfinite(lo) and hi > lo:
                assert (row[f"{metric}_lo"], row[f"{metric}_hi"]) == pytest.approx((lo, hi), rel=1e-9)
    text = (study["out"] / "rounds_table.md").read_text()
    header = [line for line in text.splitlines() if line.startswith("|")][0]
    # bookkeeping (sample count, scoring time, constant real-data columns) stays in the CSV
    for hidden in ("samples", "score time", "real entropy", "real floor"):
        assert hidden not in header
    tex = (study["out"] / "rounds_table.tex").read_text()
    rows = [line for line in tex.splitlines() if line.endswith(r"\\")]
    assert len(rows) == 2 + len(csv)  # two header lines (name, unit) + one line per row


# ----------------------------------------------------------------------------------------------
# Ablations and the paired deltas


def test_ablation_table_and_deltas(tmp_path):
    extra = {"ranke_uniform": {"mode": "ranke", "train": {"decoder": {"rank_k": 8, "rank_weighting": "uniform"}}},
             "ranke_round": {"mode": "ranke", "schedule": "round"}}
    methods, metrics, boots, logs, _ = make_study(tmp_path, extra_methods=extra, grids=False)
    out = tmp_path / "report"
    # the rule passes the study's list of methods: the tables keep its order
    listed = [dict(entry, name=name) for name, entry in reversed(list(methods.items()))]
    build.report(metrics, boots, logs, [], {"methods": listed, "report": {}}, out)
    # the variants are not rows of the main table
    main = pd.read_csv(out / "main_table.csv")
    assert not main.method.isin(list(extra)).any()
    ab = pd.read_csv(out / "ablation_table.csv")
    # the reference first, then the others in the list's order
    assert list(ab.method) == ["ranke", "ranke_round", "ranke_uniform", "decoder", "policy"]
    assert set(ab.reference) == {"ranke"} and ab.loc[ab.method == "ranke", "clip_score_delta"].isna().all()
    ab = ab[ab.method != "ranke"]
    overrides = ab.set_index("method")["overrides"].fillna("")
    assert overrides["ranke_uniform"] == "decoder.rank_k=8, decoder.rank_weighting=uniform"
    assert overrides["ranke_round"] == "schedule=round"
    df = all_metrics(metrics)
    for row in ab.itertuples():
        d = per_seed(df, row.method, 3, "clip_score") - per_seed(df, "ranke", 3, "clip_score")
        assert (row.clip_score_delta, row.clip_score_delta_lo, row.clip_score_delta_hi) == pytest.approx(t_bounds(d))
        assert row.clip_score_delta_p == pytest.approx(sps.ttest_1samp(d, 0).pvalue)
    md = (out / "ablation_table.md").read_text()
    assert "decoder.rank_k=8" in md and "Δ = method − RankE" in md
    # deltas.csv: both tables' comparisons, across replicates and within each replicate
    deltas = pd.read_csv(out / "deltas.csv")
    assert set(deltas.table) == {"main", "ablation", "vs base"}
    vs_base = deltas[(deltas.table == "vs base") & (deltas.level == "across replicates")]
    assert set(vs_base.method) == {"policy", "decoder", "ranke"} and set(vs_base.reference) == {"base"}
    main_rows = deltas[(deltas.table == "main") & (deltas.metric == "fid")]
    assert list(main_rows.level) == ["across replicates"] + ["within replicate"] * 3
    b = tables.load_bootstrap(boots)
    for rep in SEEDS:
        pick = lambda m: b[(b.method == m) & (b.replicate == rep) & (b["round"] == 3)  # noqa: E731
                           & (b.metric == "fid")].sort_values("resample")["value"].to_numpy()
        point = per_seed(df, "ranke", 3, "fid")[rep] - per_seed(df, "policy", 3, "fid")[rep]
        ref = stats.bootstrap_interval(point, pick("ranke") - pick("policy"))
        row = main_rows[main_rows.replicate == rep].iloc[0]
        assert (row.delta, row.lo, row.hi, row.p_value) == pytest.approx((ref.estimate, ref.lo, ref.hi, ref.p))


def test_deltas_refuse_runs_scored_on_different_prompts(tmp_path):
    methods, metrics, boots, _, _ = make_study(tmp_path, grids=False, seeds=(0,))
    write_bootstrap(tmp_path, "policy", N_ROUNDS, 0, sample_set="other prompts")
    with pytest.raises(ValueError, match="different prompts or sampling seeds"):
        tables.main_table(tables.load_metrics(metrics), methods, tables.load_bootstrap(boots))


# ----------------------------------------------------------------------------------------------
# Figures


def _check_figure_files(out: Path, stem: str):
    png, pdf = out / f"{stem}.png", out / f"{stem}.pdf"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        w, h = im.size
        assert w >= 400 and h >= 200
        assert np.asarray(im.convert("L")).std() > 5  # not a blank canvas
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-64:] and len(data) > 1000
    assert b"/FontFile2" in data  # TrueType fonts (pdf.fonttype 42): the style is applied at save time


def test_all_figures_written(study):
    for stem in ("curves", "pareto", "code_shift", "train_curves", "samples"):
        _check_figure_files(study["out"], stem)
    assert set(study["written"]) == set(build.OUTPUTS)
    for paths in study["written"].values():
        assert all(p.exists() and p.stat().st_size > 0 for p in paths)
    assert not list(study["out"].glob(".tmp-*"))


def test_sample_grid_captions_cut_with_an_ellipsis():
    tile = np.zeros((16, 16, 3), np.uint8)
    long = "a small red circle at the top left of a large blue square on a striped background " * 3
    fig = plots.compose_grid({"Base": [tile, tile]}, [long, "a green triangle"])
    texts = [t.get_text() for t in fig.axes[0].texts if t.get_text() not in ("Base",)]
    cut, short = texts
    assert cut.endswith("…") and cut.count("\n") == 3  # four lines, the last one says it was cut
    assert short == "a green triangle"


def test_samples_grid_rows_per_method(study):
    infos = tables.method_infos(study["methods"], set(study["methods"]))
    grids = sorted(study["root"].glob("*/seed_0/round_*/grid.png"))
    fig = plots.plot_samples(grids, infos, tile=16)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["Base", "Policy-only\n(std. RL)\n(round 3)", "Decoder-only\n(round 3)", "RankE\n(round 3)"]
    canvas = ax.images[0].get_array()
    assert canvas.shape == (4 * 16 + 3 * 1, 4 * 16 + 3 * 1, 3)  # 4 methods x 4 prompts of 16 px, 1 px gaps
    tiles = plots.load_grid(study["root"] / "ranke" / "seed_0" / "round_3" / "grid.png", 16)
    assert np.array_equal(canvas[3 * 17:3 * 17 + 16, 17:33], tiles[1])  # RankE row, second prompt


def test_split_tiles_layouts():
    tile, pad = 4, 2
    imgs = [np.full((tile, tile, 3), 10 * (i + 1), np.uint8) for i in range(5)]
    # torchvision make_grid(nrow=4, padding=2, pad_value=255): 2 rows, the last 3 cells white
    grid = np.full((2 * (tile + pad) + pad, 4 * (tile + pad) + pad, 3), 255, np.uint8)
    for k, im in enumerate(imgs):
        i, j = divmod(k, 4)
        grid[pad + i * (tile + pad): pad + i * (tile + pad) + tile, pad + j * (tile + pad): pad + j * (tile + pad) + tile] = im
    tiles = plots.split_tiles(grid, tile)
    assert len(tiles) == 5 and all(np.array_equal(a, b) for a, b in zip(tiles, imgs))
    strip = np.concatenate(imgs, axis=1)  # plain mosaic, and a strip without a tile size
    assert len(plots.split_tiles(strip, tile)) == 5 and len(plots.split_tiles(strip)) == 5
    assert len(plots.split_tiles(np.zeros((5, 7, 3), np.uint8), tile)) == 1  # unknown layout: whole
    assert plots.parse_grid_path("results/demo/ranke/seed_2/round_3/images/grid.png") == ("ranke", 3)
    assert plots.parse_grid_path("results/demo/base/seed_0/round_0/grid.png") == ("base", 0)


def test_global_steps_handles_restarting_and_cumulative_counts():
    local = pd.DataFrame({"method": "m", "round": [1, 1, 2, 2], "step": [1, 2, 1, 2]})
    assert plots.global_steps(local)["gstep"].tolist() == [1, 2, 3, 4]
    cumulative = pd.DataFrame({"method": "m", "round": [1, 1, 2, 2], "step": [0, 1, 2, 3]})
    assert plots.global_steps(cumulative)["gstep"].tolist() == [0, 1, 2, 3]
    two = pd.DataFrame({"method": "m", "replicate": [0, 0, 1, 1], "round": [1, 2, 1, 2], "step": [1, 1, 1, 1]})
    assert plots.global_steps(two).sort_values(["replicate", "round"])["gstep"].tolist() == [1, 2, 1, 2]


def test_train_curves_skip_dead_panels(study):
    fig = plots.plot_train_curves(tables.load_train_logs(sorted(study["root"].glob("*/seed_*/round_*/train_log.parquet"))),
                                  tables.method_infos(study["methods"], set(study["methods"])))
    titles = {ax.get_title() for ax in fig.axes if ax.get_visible()}
    assert "policy KL" in titles and "EMA consistency loss" in titles
    assert "mean ratio" not in titles and "policy-gradient loss" not in titles


# ----------------------------------------------------------------------------------------------
# Optional inputs, unknown methods, CLI


def test_missing_optional_inputs_and_metrics(tmp_path):
    paths = [write_metrics(tmp_path, "base", 0, drop=("fid",)),
             write_metrics(tmp_path, "ranke", 1, drop=("fid", "reward"), details={})]
    out = tmp_path / "report"
    (out).mkdir()
    (out / "samples.png").write_bytes(b"stale")
    written = build.report(paths, [], None, None, {"methods": {"ranke": {"mode": "ranke"}}}, out)
    assert "train_curves" not in written and "samples" not in written
    assert not (out / "samples.png").exists()  # stale output of an earlier run removed
    for stem in ("curves", "pareto", "code_shift"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.pdf").stat().st_size > 0
    main = pd.read_csv(out / "main_table.csv")
    assert main.fid.isna().all() and math.isnan(main.loc[main.method == "ranke", "reward"].iloc[0])
    assert not main.method.str.startswith("delta:").any()  # no policy-only method: no deltas
    md = (out / "main_table.md").read_text()
    assert "–" in md and "Δ" not in md and "no bootstrap resamples: no intervals" in md


def test_unknown_method_gets_its_name(tmp_path):
    methods, metrics, boots, _, _ = make_study(tmp_path, extra_methods={"ranke_block": {"mode": "ranke"}},
                                               grids=False)
    t = tables.main_table(tables.load_metrics(metrics), methods, tables.load_bootstrap(boots))
    main = t.rows.set_index("method")
    assert list(main.label) == ["Base", "Policy-only (std. RL)", "Decoder-only", "RankE", "ranke_block"]
    assert main.loc["ranke_block", "decoder"] == "co-evolved"
    assert [d.method for d in t.deltas] == ["ranke", "ranke_block"]  # every RankE-mode method gets its delta
    assert all(np.isfinite(iv.estimate) for iv in t.deltas[1].intervals.values())
    # a config `label` wins over the built-in names
    t = tables.main_table(tables.load_metrics(metrics), dict(methods, ranke={"mode": "ranke", "label": "RankE (ours)"}))
    assert "RankE (ours)" in tables.main_table_markdown(t)


def test_cli_forwards_arguments(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(build, "report", lambda *a, **k: seen.update(args=a, kwargs=k))
    cfg = {"study": "s", "methods": METHODS, "report": {"grid_prompts": 3}}
    rc = build.main(["--config-json", json.dumps(cfg), "--config-hash", "h1", "--metrics", "a.parquet", "b.parquet",
                     "--bootstrap", "c.parquet", "--grids", "base/seed_0/round_0/grid.png", "--out-dir",
                     str(tmp_path / "r")])
    assert rc == 0
    assert seen["args"] == (["a.parquet", "b.parquet"], ["c.parquet"], [], ["base/seed_0/round_0/grid.png"], cfg,
                            str(tmp_path / "r"))
    assert seen["kwargs"] == {"prompts_path": None, "config_hash": "h1"}
    from ranke import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["report", "--help"])
    assert e.value.code == 0


def test_duplicate_metric_rows_are_an_error(tmp_path):
    a = write_metrics(tmp_path / "a", "base", 0)
    b = write_metrics(tmp_path / "b", "base", 0)
    with pytest.raises(ValueError, match="several values"):
        tables.load_metrics([a, b])


def test_latex_escape():
    assert tables.latex_escape("ranke_block 50% & #1") == r"ranke\_block 50\% \& \#1"
    # what OT1 fonts print as other glyphs: | an em dash, '' a closing quote, -- an en dash, < >
    assert tables.latex_escape("KL(generated || real)") == r"KL(generated \textbar{}\textbar{} real)"
    assert tables.latex_escape("prefix ''") == r"prefix \textquotesingle{}\textquotesingle{}"
    assert tables.latex_escape("--x a-b <1>") == r"-{}-x a-b \textless{}1\textgreater{}"
    assert tables.latex_escape("Δ RankE − RL, τ ≥ 1") == r"$\Delta$ RankE $-$ RL, $\tau$ $\geq$ 1"
    # a number's interval (and any second line) stacked below it, one size smaller
    assert tables.latex_cell("+0.57 [-1.10, 2.20] *", True) == (
        r"\begin{tabular}[t]{@{}r@{}}+0.57$^{*}$\\\scriptsize [$-$1.10, 2.20]\end{tabular}")
    assert tables.latex_cell("-0.0185 ± 0.0010", True) == (
        r"\begin{tabular}[t]{@{}r@{}}$-$0.0185\\\scriptsize $\pm$ 0.0010\end{tabular}")
    assert tables.latex_cell("ranke_k8\ndecoder.rank_k=8", False) == (
        r"\begin{tabular}[t]{@{}l@{}}ranke\_k8\\\scriptsize decoder.rank\_k=8\end{tabular}")
    assert tables.latex_cell("–", True) == "--" and tables.latex_cell("12", True) == "12"


def test_html_tables(study):
    page = (study["out"] / "main_table.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<tr>") == 1 + 4 + 1  # header, methods, delta
    md = (study["out"] / "main_table.md").read_text()
    assert page.count("<b>") == md.count("**") // 2  # same cells in bold
    assert "demo CLIP image tower" in page and "Δ RankE − Policy-only" in page
    rounds = (study["out"] / "rounds_table.html").read_text()
    assert rounds.count("<tr>") == 1 + 1 + 3 * N_ROUNDS


@pytest.mark.parametrize("config", ["shipped", "empty"])
def test_report_captions_render(config):
    """Captions are Jinja + reStructuredText (as `snakemake --report` renders them), without warnings."""
    import jinja2
    import yaml
    from docutils.core import publish_parts

    root = Path(__file__).resolve().parents[1]
    cfg = yaml.safe_load((root / "config.yaml").read_text()) if config == "shipped" else {}
    captions = sorted((root / "workflow" / "report").glob("*.rst"))
    assert {p.stem for p in captions} >= {"main_table", "ablation_table", "rounds_table", "curves", "pareto",
                                         "code_shift", "train_curves", "samples"}
    snakemake = type("S", (), {"config": cfg})()
    for path in captions:
        text = jinja2.Environment().from_string(path.read_text()).render(snakemake=snakemake)
        body = publish_parts(text, writer="html",
                             settings_overrides={"report_level": 2, "halt_level": 2})["body"]
        assert "system-message" not in body and len(body) > 100, path.name
    if config == "shipped":
        text = jinja2.Environment().from_string((root / "workflow/report/samples.rst").read_text())
        assert f"first {cfg['report']['grid_prompts']}" in text.render(snakemake=snakemake)


# ----------------------------------------------------------------------------------------------
# The LaTeX files in a paper: they compile, print what they say and fit the page

# Text widths: a NeurIPS / ICLR page (one column) and a two-column page (ICML, CVPR: table*)
ONE_COLUMN_PAGE_PT, TWO_COLUMN_PAGE_PT = 397.0, 487.0


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_tables_compile_in_a_paper_and_fit_its_page(tmp_path):
    extra = {"ranke_uniform": {"mode": "ranke", "train": {"decoder": {"rank_k": 8, "rank_weighting": "uniform"}}},
             "ranke_round": {"mode": "ranke", "schedule": "round"}}
    methods, metrics, boots, logs, _ = make_study(tmp_path, extra_methods=extra, grids=False)
    out = tmp_path / "report"
    build.report(metrics, boots, logs, [], {"methods": [dict(e, name=n) for n, e in methods.items()],
                                            "report": {}}, out)
    names = ("main_table", "ablation_table", "rounds_table")
    # the usual ways to use them: as they are, scaled to a column, the note in the caption
    body = [r"\newsavebox\tb"]
    for name in names:
        body += [rf"\sbox\tb{{\input{{{name}.tex}}}}\typeout{{WIDTH {name} \the\wd\tb}}",
                 r"\begin{table}[h]\centering",
                 rf"\resizebox{{\columnwidth}}{{!}}{{\input{{{name}.tex}}}}",
                 rf"\caption{{Results. \protect\input{{{name}.note.tex}}}}\end{{table}}"]
    # what plain pdflatex (OT1 fonts) prints as other glyphs, through the escaping the notes use
    tricky = "code-KL: KL(generated || real), prefix '', a <b> --c"
    body.append(tables.latex_escape(tricky))
    (out / "paper.tex").write_text("\n".join([
        r"\documentclass[10pt]{article}", r"\usepackage{booktabs}", r"\usepackage{graphicx}",
        r"\begin{document}", *body, r"\end{document}", ""]))
    run = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"], cwd=out,
                         capture_output=True, text=True, timeout=120)
    log = (out / "paper.log").read_text(errors="replace")
    assert run.returncode == 0, log[-3000:]
    assert "Overfull \\hbox" not in log.split("WIDTH main_table")[0]
    widths = {m.group(1): float(m.group(2)) for m in re.finditer(r"WIDTH (\w+) ([\d.]+)pt", log)}
    assert widths["main_table"] <= ONE_COLUMN_PAGE_PT, widths
    assert widths["ablation_table"] <= ONE_COLUMN_PAGE_PT, widths
    assert widths["rounds_table"] <= TWO_COLUMN_PAGE_PT, widths
    # what the text says is what prints: no OT1 look-alikes (| as an em dash, '' as a quote)
    if shutil.which("pdftotext"):
        subprocess.run(["pdftotext", "paper.pdf"], cwd=out, check=True, timeout=60)
        text = (out / "paper.txt").read_text()
        assert tricky in text.replace("\n", " ").replace("’", "'"), text[-500:]
        assert "—" not in text and "¡" not in text


def test_front_page_renders_as_snakemake_renders_it(study):
    import jinja2
    from docutils.core import publish_parts

    text = (study["out"] / "front_page.rst").read_text()
    # Snakemake appends its link targets (Jinja2) and renders the whole page, then docutils
    page = jinja2.Environment().from_string(text + "\n.. _Workflow: javascript:show_panel('workflow')\n").render(
        snakemake=None, categories={}, files=[])
    parts = publish_parts(page, writer="html", settings_overrides={"report_level": 2, "halt_level": 5})
    body = parts["html_body"]
    assert "System Message" not in body and "problematic" not in body, body
    assert "RankE study: synthetic" in body and "abc123" in body and "ranke " in body
    main = pd.read_csv(study["out"] / "main_table.csv")
    assert f"{main.loc[main.method == 'ranke', 'clip_score'].iloc[0]:.2f}" in body  # the main table is on it
    assert "Policy-only (std. RL)" in body and "Δ RankE − Policy-only (std. RL)" in body
    assert "<strong>" in body  # the best mean of each column, bold as in the tables
    # what reStructuredText would read as markup prints as written
    from ranke.report import front

    tricky = "KL(generated || real), ranke_block_ *x* `y` prefix ''"
    html = publish_parts(front.rst_escape(tricky), writer="html",
                         settings_overrides={"report_level": 2, "halt_level": 5})["html_body"]
    assert "System Message" not in html and "KL(generated || real), ranke_block_ *x* `y`" in html, html
