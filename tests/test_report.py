"""Report stage: tables equal the metrics Parquet, bold/deltas/footnote right, every figure written.

A tiny synthetic study (4 methods x 3 rounds) is written with ranke.io.write_parquet; nothing
here trains or decodes anything.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ranke.io import SCHEMAS, write_parquet
from ranke.report import build, plots, tables

METHODS = {
    "base": {"mode": "none"},
    "policy": {"mode": "policy"},
    "decoder": {"mode": "decoder"},
    "ranke": {"mode": "ranke", "schedule": "step"},
}
STEPS_PER_ROUND = 15
N_ROUNDS = 3
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


def _values(method: str, r: int, rng: np.random.Generator) -> dict[str, float]:
    """Plausible-looking numbers; what matters is that they differ per method and round."""
    t = r / N_ROUNDS
    if method == "ranke_block":  # an extra RankE variant, slightly different from ranke
        values = _values("ranke", r, rng)
        return {k: v + 0.1 * t if k in ("clip_score", "fid", "reward") else v for k, v in values.items()}
    clip = {"base": 31.54, "policy": 31.54 + 0.9 * t, "decoder": 31.54 + 0.2 * t, "ranke": 31.54 + 2.2 * t}[method]
    fid = {"base": 15.24, "policy": 15.24 + 2.5 * t, "decoder": 15.24 - 0.3 * t, "ranke": 15.24 + 0.4 * t}[method]
    kl = {"base": 0.021, "policy": 0.021 + 0.09 * t, "decoder": 0.021, "ranke": 0.021 + 0.05 * t}[method]
    noise = rng.normal(0, 0.003, 4)
    return {
        "clip_score": clip + noise[0],
        "fid": fid + noise[1],
        "code_kl": kl + abs(noise[2]) / 10,
        "code_kl_real_floor": 0.0123456,
        "code_entropy_bits": 7.6 - 0.4 * t * (method in ("policy", "ranke")) + noise[3],
        "code_entropy_bits_real": 7.71,
        "codebook_usage": 0.93 - 0.1 * t,
        "reward": 25.0 + (2.0 if method in ("policy", "ranke") else 0.1) * t + noise[0],
        "n_samples": 200.0,
        "wall_time_s": 12.5 + r,
    }


def write_metrics(root: Path, method: str, r: int, rng, *, details=None, drop=()) -> Path:
    rows = []
    for metric, value in _values(method, r, rng).items():
        if metric in drop:
            continue
        rows.append({
            "method": method,
            "round": r,
            "step": r * STEPS_PER_ROUND,
            "metric": metric,
            "value": value,
            "n": 200,
            "extractor": {"fid": "demo CLIP image tower", "reward": "ranke-demo-clip",
                          "clip_score": "ranke-demo-clip"}.get(metric, ""),
            "details": json.dumps(details if details is not None else DETAILS),
        })
    path = root / method / f"round_{r}" / "metrics.parquet"
    write_parquet(pd.DataFrame(rows), path, "metrics")
    return path


def write_train_log(root: Path, method: str, r: int, rng) -> Path:
    mode = METHODS[method]["mode"]
    cols = [f.name for f in SCHEMAS["train_log"]]
    steps = np.arange(1, STEPS_PER_ROUND + 1)  # a round restarts its step count
    df = pd.DataFrame({c: np.full(len(steps), np.nan) for c in cols})
    df["method"], df["round"], df["step"] = method, r, steps
    df["phase"] = {"policy": "policy", "decoder": "decoder", "ranke": "both"}[mode]
    g = (r - 1) * STEPS_PER_ROUND + steps
    if mode in ("policy", "ranke"):
        df["reward_mean"] = 25 + 0.05 * g + rng.normal(0, 0.2, len(g))
        df["kl"] = 0.01 * g + rng.normal(0, 0.01, len(g))
        df["loss_pg"] = rng.normal(0, 0.05, len(g))
    if mode in ("decoder", "ranke"):
        df["loss_disc"] = np.where(g > 10, 0.5 - 0.001 * g, 0.0)
        df["loss_rec"] = 0.3 + rng.normal(0, 0.01, len(g))
        df["loss_consistency"] = 0.01 + rng.normal(0, 0.002, len(g))
        df["loss_rank_gan"] = 0.7 + rng.normal(0, 0.05, len(g))
    df["step_time_s"] = 0.5
    path = root / method / f"round_{r}" / "train_log.parquet"
    write_parquet(df, path, "train_log")
    return path


def write_grid(root: Path, method: str, r: int, k: int = 4, tile: int = 16) -> Path:
    rng = np.random.default_rng(hash((method, r)) % 2**32)
    img = np.zeros((tile, tile * k, 3), np.uint8)
    for j in range(k):
        img[:, j * tile:(j + 1) * tile] = rng.integers(0, 255, 3)
        img[4:12, j * tile + 4:j * tile + 12] = 255
    path = root / method / f"round_{r}" / "grid.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def make_study(root: Path, *, extra_methods=(), grids=True):
    rng = np.random.default_rng(0)
    metrics, logs, grid_paths = [], [], []
    metrics.append(write_metrics(root, "base", 0, rng))
    if grids:
        grid_paths.append(write_grid(root, "base", 0))
    methods = dict(METHODS)
    for name in extra_methods:
        methods[name] = {"mode": "ranke", "schedule": "round"}
    for m in [m for m in methods if m != "base"]:
        for r in range(1, N_ROUNDS + 1):
            metrics.append(write_metrics(root, m, r, rng, ))
            if m in METHODS:
                logs.append(write_train_log(root, m, r, rng))
            if grids:
                grid_paths.append(write_grid(root, m, r))
    return methods, metrics, logs, grid_paths


def all_metrics(paths) -> pd.DataFrame:
    return pd.concat([pd.read_parquet(p) for p in paths], ignore_index=True)


def value(df, method, r, metric) -> float:
    sel = df[(df.method == method) & (df["round"] == r) & (df.metric == metric)]
    assert len(sel) == 1
    return float(sel["value"].iloc[0])


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    methods, metrics, logs, grids = make_study(root)
    out = root / "report"
    written = build.report(metrics, logs, grids, methods, out)
    return {"root": root, "methods": methods, "metrics": metrics, "out": out, "written": written,
            "df": all_metrics(metrics)}


# ----------------------------------------------------------------------------------------------
# Main table


def parse_md_table(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("|")]
    return [[c.strip() for c in line.strip("|").split(" | ")] for line in lines[2:]]


def test_main_csv_equals_metrics(study):
    df = study["df"]
    main = pd.read_csv(study["out"] / "main_table.csv")
    assert list(main.method) == ["base", "policy", "decoder", "ranke"]
    assert list(main.label) == ["Base", "Policy-only (std. RL)", "Decoder-only", "RankE"]
    assert list(main.decoder) == ["frozen", "frozen", "co-evolved", "co-evolved"]
    assert list(main["round"]) == [0, 3, 3, 3]
    assert list(main.step) == [0, 45, 45, 45]
    for row in main.itertuples():
        for m in tables.MAIN_METRICS:
            assert getattr(row, m) == value(df, row.method, row.round, m)  # exact: CSV keeps full precision


def test_main_markdown_numbers_bold_and_deltas(study):
    df = study["df"]
    md = (study["out"] / "main_table.md").read_text()
    rows = parse_md_table(md)
    assert [r[0] for r in rows] == ["Base", "Policy-only (std. RL)", "Decoder-only", "RankE"]
    finals = {"base": 0, "policy": 3, "decoder": 3, "ranke": 3}
    cell_re = re.compile(r"^(\*\*)?(-?[0-9.]+)(\*\*)?(?: \(([+\-±][0-9.]+) vs RL\))?$")
    parsed = {}
    for method, cells in zip(finals, rows):
        for j, m in enumerate(tables.MAIN_METRICS):
            match = cell_re.match(cells[2 + j])
            assert match, cells[2 + j]
            parsed[method, m] = (float(match.group(2)), bool(match.group(1)), match.group(4))
    for m in tables.MAIN_METRICS:
        raw = {me: value(df, me, r, m) for me, r in finals.items()}
        d = tables.decimals_for(m, df.loc[df.metric == m, "value"])
        for me in finals:
            assert parsed[me, m][0] == pytest.approx(round(raw[me], d), abs=10 ** -(d + 3))
        # bold: exactly the best (max for CLIP / reward, min for FID / code-KL) at printed precision,
        # so that printed ties are all bold (the synthetic reward of policy and RankE ties)
        better = max if m in ("clip_score", "reward") else min
        printed = {me: round(v, d) for me, v in raw.items()}
        best = {me for me in finals if printed[me] == better(printed.values())}
        assert {me for me in finals if parsed[me, m][1]} == best
        # delta: RankE minus policy-only, only on the RankE row
        delta = float(parsed["ranke", m][2].replace("±", ""))
        assert delta == pytest.approx(round(raw["ranke"] - raw["policy"], d), abs=10 ** -(d + 3))
        assert all(parsed[me, m][2] is None for me in ("base", "policy", "decoder"))
    # synthetic numbers are built so that RankE has the best CLIP, decoder-only the best FID
    assert parsed["ranke", "clip_score"][1] and parsed["decoder", "fid"][1]
    assert parsed["ranke", "reward"][1] and parsed["policy", "reward"][1]


def test_footnote_comes_from_details(study):
    md = (study["out"] / "main_table.md").read_text()
    tex = (study["out"] / "main_table.tex").read_text()
    for fact in ("200 prompts", "200 generated images per method", "CFG 4", "top-k off", "top-p 1",
                 "FID features: demo CLIP image tower", "CLIP score: 100 x mean cosine, demo CLIP, no prefix",
                 "online decoder weights", "16 px", "Reward: ranke-demo-clip", "real-data floor", "0.01235"):
        assert fact in md, fact
    assert "FID features: demo CLIP image tower" in tex
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\textbf{" in tex
    assert "vs RL" in tex


def test_footnote_changes_with_details_and_flags_mismatch(tmp_path):
    rng = np.random.default_rng(1)
    other = dict(DETAILS, cfg_scale=6.0, fid_extractor="Inception-v3 (torch-fidelity inception-v3-compat)")
    other.pop("clip_convention")
    paths = [write_metrics(tmp_path, "base", 0, rng, details=other),
             write_metrics(tmp_path, "policy", 1, rng, details=other)]
    t = tables.main_table(tables.load_metrics(paths), {"policy": {"mode": "policy"}})
    assert "CFG 6" in t.footnote and "Inception-v3 (torch-fidelity inception-v3-compat)" in t.footnote
    assert "100 x mean cosine" not in t.footnote
    # a protocol fact that differs between methods is shown with who used which value
    paths.append(write_metrics(tmp_path, "ranke", 1, rng, details=dict(other, cfg_scale=7.5)))
    t = tables.main_table(tables.load_metrics(paths), METHODS)
    assert "CFG 6 (Base, Policy-only (std. RL)); 7.5 (RankE) [differs between methods]" in t.footnote


def test_footnote_from_score_stage_details(tmp_path):
    """The score stage's layout: common keys on every row, conventions/labels on their metric's row."""
    common = {"n_prompts": 50, "n_samples": 50, "image_size": 32, "cfg_scale": 4.0, "temperature": 1.0,
              "top_k": 0, "top_p": 1.0, "sampling_seed": 42, "decoder": "ema", "backbone": "llamagen"}
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
        rows = [{"method": method, "round": r, "step": 10 * r, "metric": m, "n": 50,
                 "value": 0.0123 if m == "code_kl_real_floor" else 1.0 + r,
                 "extractor": ext, "details": json.dumps({**common, "decoder_path": f"/x/{method}/vq.pt", **d})}
                for m, (ext, d) in per_metric.items()]
        paths.append(tmp_path / method / "metrics.parquet")
        write_parquet(pd.DataFrame(rows), paths[-1], "metrics")
    note = tables.main_table(tables.load_metrics(paths), METHODS).footnote
    for fact in ("Protocol: 50 prompts, 50 generated images per method, 32 px, CFG 4, temperature 1, top-k off, "
                 "top-p 1, ema decoder weights.",
                 "FID (demo CLIP features), extractor clip-image (50 generated, 300 real images).",
                 "CLIP score: 100 x mean cosine, demo CLIP, prefix ''.",
                 "Reward: ranke-demo-clip, 100 x mean cosine.",
                 "code-KL: KL(generated || real), nats; real-data floor (two halves of the real codes) 0.0123.",
                 "Other protocol facts: backbone llamagen, sampling_seed 42."):
        assert fact in note, (fact, note)
    for noise in ("decoder_path", "sha256", "timing", "differs", "half A"):
        assert noise not in note


def test_rounds_table_equals_metrics(study):
    df = study["df"]
    csv = pd.read_csv(study["out"] / "rounds_table.csv")
    assert len(csv) == 1 + 3 * N_ROUNDS
    assert set(csv.columns) >= set(df.metric)
    for row in csv.to_dict("records"):
        for metric in set(df.metric):
            assert row[metric] == value(df, row["method"], row["round"], metric)
    md_rows = parse_md_table((study["out"] / "rounds_table.md").read_text())
    header = [line for line in (study["out"] / "rounds_table.md").read_text().splitlines() if line.startswith("|")][0]
    names = [c.strip() for c in header.strip("|").split(" | ")]
    label_to_metric = {tables.metric_spec(m).label: m for m in df.metric.unique()}
    for cells, row in zip(md_rows, csv.to_dict("records")):
        assert int(cells[1]) == row["round"] and int(cells[2]) == row["step"]
        for name, cell in zip(names[3:], cells[3:]):
            m = label_to_metric[name]
            d = tables.decimals_for(m, df.loc[df.metric == m, "value"])
            assert float(cell) == pytest.approx(round(row[m], d), abs=10 ** -(d + 3))
    tex = (study["out"] / "rounds_table.tex").read_text()
    assert tex.count(r"\\") == 1 + len(csv)  # header + one line per row


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


def test_samples_grid_rows_per_method(study):
    infos = tables.method_infos(study["methods"], set(study["methods"]))
    grids = sorted(study["root"].glob("*/round_*/grid.png"))
    fig = plots.plot_samples(grids, infos, tile=16)
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.texts]
    assert labels == ["Base", "Policy-only\n(std. RL)\n(round 3)", "Decoder-only\n(round 3)", "RankE\n(round 3)"]
    canvas = ax.images[0].get_array()
    assert canvas.shape == (4 * 16 + 3 * 1, 4 * 16 + 3 * 1, 3)  # 4 methods x 4 prompts of 16 px, 1 px gaps
    tiles = plots.load_grid(study["root"] / "ranke" / "round_3" / "grid.png", 16)
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
    assert plots.parse_grid_path("results/ranke/round_3/images/grid.png") == ("ranke", 3)
    assert plots.parse_grid_path("results/base/round_0/grid.png") == ("base", 0)


def test_global_steps_handles_restarting_and_cumulative_counts():
    local = pd.DataFrame({"method": "m", "round": [1, 1, 2, 2], "step": [1, 2, 1, 2]})
    assert plots.global_steps(local)["gstep"].tolist() == [1, 2, 3, 4]
    cumulative = pd.DataFrame({"method": "m", "round": [1, 1, 2, 2], "step": [0, 1, 2, 3]})
    assert plots.global_steps(cumulative)["gstep"].tolist() == [0, 1, 2, 3]


# ----------------------------------------------------------------------------------------------
# Optional inputs, unknown methods, CLI


def test_missing_optional_inputs_and_metrics(tmp_path):
    rng = np.random.default_rng(2)
    paths = [write_metrics(tmp_path, "base", 0, rng, drop=("fid",)),
             write_metrics(tmp_path, "ranke", 1, rng, drop=("fid", "reward"), details={})]
    out = tmp_path / "report"
    (out).mkdir()
    (out / "samples.png").write_bytes(b"stale")
    written = build.report(paths, [], None, {"ranke": {"mode": "ranke"}}, out)
    assert "train_curves" not in written and "samples" not in written
    assert not (out / "samples.png").exists()  # stale output of an earlier run removed
    for stem in ("curves", "pareto", "code_shift"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.pdf").stat().st_size > 0
    main = pd.read_csv(out / "main_table.csv")
    assert main.fid.isna().all() and math.isnan(main.loc[main.method == "ranke", "reward"].iloc[0])
    assert main.clip_score_delta.isna().all()  # no policy-only method: no deltas
    md = (out / "main_table.md").read_text()
    assert "–" in md and "vs RL" not in md


def test_unknown_method_gets_its_name(tmp_path):
    methods, metrics, _, _ = make_study(tmp_path, extra_methods=("ranke_block",), grids=False)
    t = tables.main_table(tables.load_metrics(metrics), methods)
    main = t.rows.set_index("method")
    assert list(main.label) == ["Base", "Policy-only (std. RL)", "Decoder-only", "RankE", "ranke_block"]
    assert main.loc["ranke_block", "decoder"] == "co-evolved"
    assert t.delta_methods == ["ranke", "ranke_block"]  # every RankE-mode method gets its delta
    assert np.isfinite(main.loc["ranke_block", [f"{m}_delta" for m in tables.MAIN_METRICS]]).all()
    # a config `label` wins over the built-in names
    t = tables.main_table(tables.load_metrics(metrics), dict(methods, ranke={"mode": "ranke", "label": "RankE (ours)"}))
    assert "RankE (ours)" in tables.main_table_markdown(t)


def test_cli_forwards_arguments(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(build, "report", lambda *a, **k: seen.update(args=a, kwargs=k))
    cfg = {"methods": METHODS, "report": {"grid_prompts": 3}}
    rc = build.main(["--config-json", json.dumps(cfg), "--metrics", "a.parquet", "b.parquet",
                     "--grids", "base/round_0/grid.png", "--out-dir", str(tmp_path / "r")])
    assert rc == 0
    assert seen["args"] == (["a.parquet", "b.parquet"], [], ["base/round_0/grid.png"], METHODS, str(tmp_path / "r"))
    assert seen["kwargs"] == {"prompts_path": None, "grid_prompts": 3}
    from ranke import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["report", "--help"])
    assert e.value.code == 0


def test_duplicate_metric_rows_are_an_error(tmp_path):
    rng = np.random.default_rng(3)
    a = write_metrics(tmp_path / "a", "base", 0, rng)
    b = write_metrics(tmp_path / "b", "base", 0, rng)
    with pytest.raises(ValueError, match="several values"):
        tables.load_metrics([a, b])


def test_latex_escape():
    assert tables.latex_escape("ranke_block 50% & #1") == r"ranke\_block 50\% \& \#1"


def test_html_tables(study):
    page = (study["out"] / "main_table.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<tr>") == 1 + 4
    md = (study["out"] / "main_table.md").read_text()
    assert page.count("<b>") == md.count("**") // 2  # same cells in bold
    assert "demo CLIP image tower" in page and "vs RL" in page
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
    assert {p.stem for p in captions} >= {"main_table", "rounds_table", "curves", "pareto", "code_shift",
                                         "train_curves", "samples"}
    snakemake = type("S", (), {"config": cfg})()
    for path in captions:
        text = jinja2.Environment().from_string(path.read_text()).render(snakemake=snakemake)
        body = publish_parts(text, writer="html",
                             settings_overrides={"report_level": 2, "halt_level": 2})["body"]
        assert "system-message" not in body and len(body) > 100, path.name
    if config == "shipped":
        text = jinja2.Environment().from_string((root / "workflow/report/samples.rst").read_text())
        assert f"first {cfg['report']['grid_prompts']}" in text.render(snakemake=snakemake)
