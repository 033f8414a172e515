"""Stage `report`: every table and figure of the study, from the score and round outputs.

    python -m ranke report --config FILE.json (study, methods, replicates, report) --config-hash H
        --metrics results/demo/*/seed_*/round_*/metrics.parquet
        --bootstrap results/demo/*/seed_*/round_*/bootstrap.parquet
        --train-logs results/demo/*/seed_*/round_*/train_log.parquet
        [--grids results/demo/*/seed_0/round_*/grid.png] [--prompts results/demo/prompts.parquet]
        --out-dir results/demo/report

Output names are fixed (OUTPUTS), so that the Snakemake rule can list them. The train-curve and
sample figures are written only when their inputs are given (a stale copy from an earlier run is
removed, so the directory never shows a figure of inputs that are no longer there). Every
interval is computed by ranke.report.stats; protocol.json also records the study, the config
hash and the code version.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import matplotlib as mpl
import pandas as pd

from ranke.io import atomic_path, read_parquet, write_json, write_text
from ranke.report import front, plots, stats, tables
from ranke.runtime import add_config_arguments, code_version, config_from_args, setup_logging

log = logging.getLogger("ranke.report")

OUTPUTS: dict[str, list[str]] = {
    **{name: [f"{name}.{suffix}" for suffix in tables.TABLE_FILES] for name in tables.TABLES},
    "deltas": ["deltas.csv"],
    "replicates": ["replicates.csv"],
    "protocol": ["protocol.json"],
    "front_page": ["front_page.rst"],  # the Snakemake report's front page (ranke.report.front)
    "curves": ["curves.png", "curves.pdf"],
    "pareto": ["pareto.png", "pareto.pdf"],
    "code_shift": ["code_shift.png", "code_shift.pdf"],
    "train_curves": ["train_curves.png", "train_curves.pdf"],  # only with train logs
    "samples": ["samples.png", "samples.pdf"],  # only with grids
}
OPTIONAL = {"train_curves", "samples"}


def save_figure(fig, out_dir: Path, stem: str, *, tight: bool = False) -> list[Path]:
    """PNG (dpi 200) + PDF, each written atomically; metadata dates dropped for reproducible files.

    `tight`: crop to the drawn extent (for figures laid out by hand; costs one extra draw).
    """
    extra = {"bbox_inches": "tight", "pad_inches": 0.02} if tight else {}
    paths = []
    for ext, meta in (("png", {"Software": None}), ("pdf", {"CreationDate": None, "ModDate": None})):
        path = out_dir / f"{stem}.{ext}"
        # the style is needed at save time too (e.g. pdf.fonttype is read when the PDF is written)
        with atomic_path(path) as tmp, mpl.rc_context(plots.STYLE):
            fig.savefig(tmp, format=ext, dpi=plots.DPI, metadata=meta, **extra)
        paths.append(path)
    return paths


def _single_fact(metrics: pd.DataFrame, key: str):
    values = tables.protocol_facts(metrics).get(key) or {}
    return next(iter(values)) if len(values) == 1 else None


def _captions(prompts_path, k: int) -> list[str] | None:
    if not prompts_path:
        return None
    prompts = read_parquet(prompts_path, "prompts").sort_values("prompt_id")
    return prompts["caption"].head(k).tolist()


def _fid_label(metrics: pd.DataFrame) -> str:
    """"FID (Inception)" / "FID (demo CLIP features)": the score stage's label, if one for all."""
    labels = {json.loads(d).get("label") for d in metrics.loc[metrics.metric == "fid", "details"] if d}
    labels.discard(None)
    return labels.pop() if len(labels) == 1 else "FID"


def report(
    metrics_paths: list,
    bootstrap_paths: list | None,
    train_log_paths: list | None,
    grid_paths: list | None,
    config: dict,
    out_dir,
    *,
    prompts_path=None,
    config_hash: str | None = None,
) -> dict[str, list[Path]]:
    """Write all tables and figures into out_dir; returns {output name: [paths written]}.

    `config`: {"methods": {name: {mode, schedule?, label?, train?}}, "report": {...}, "study": ...,
    "replicates": [...]} (the report's stage config)."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    methods = config.get("methods") or {}
    if isinstance(methods, list):  # the study's list, in its order (a JSON object would be sorted)
        methods = {m["name"]: m for m in methods}
    rc = config.get("report") or {}
    confidence = float(rc.get("confidence", 0.95))
    refs = {"rl_reference": rc.get("rl_reference"), "ablation_reference": rc.get("ablation_reference")}
    metrics = tables.load_metrics(metrics_paths)
    boot = tables.load_bootstrap(bootstrap_paths)
    infos = tables.method_infos(methods, set(metrics["method"]))
    provenance = {"study": config.get("study"), "config_hash": config_hash, "code_version": code_version(),
                  "replicates": sorted(int(s) for s in metrics["replicate"].unique()),
                  "score_code_versions": sorted({json.loads(d).get("code_version") or "?" for d in
                                                 metrics.loc[metrics.metric == "clip_score", "details"] if d})}
    log.info("metrics: %d rows from %d files; methods %s; replicates %s; final rounds %s; bootstrap rows %d",
             len(metrics), len(metrics_paths), list(infos), provenance["replicates"], tables.final_rounds(metrics),
             0 if boot is None else len(boot))
    written: dict[str, list[Path]] = {}

    def write_table(name: str, table) -> None:
        for suffix, render in tables.table_files(name).items():
            write_text(render(table), out_dir / f"{name}.{suffix}")
        written[name] = [out_dir / n for n in OUTPUTS[name]]

    main = tables.main_table(metrics, methods, boot, confidence=confidence, rl_reference=refs["rl_reference"],
                             provenance=provenance)
    write_table("main_table", main)
    log.info("main table:\n%s", tables.main_table_markdown(main))

    ablation = tables.ablation_table(metrics, methods, boot, confidence=confidence,
                                     ablation_reference=refs["ablation_reference"], provenance=provenance)
    write_table("ablation_table", ablation)
    log.info("ablation table:\n%s", tables.ablation_table_markdown(ablation))

    rounds = tables.rounds_table(metrics, methods, boot, confidence=confidence)
    write_table("rounds_table", rounds)

    comparisons = tables.comparisons(metrics, methods, **refs)
    deltas = tables.deltas_frame(metrics, boot, comparisons, confidence)
    write_text(deltas.to_csv(index=False), out_dir / "deltas.csv")
    written["deltas"] = [out_dir / "deltas.csv"]
    write_text(stats.per_replicate(metrics, boot, confidence).to_csv(index=False), out_dir / "replicates.csv")
    written["replicates"] = [out_dir / "replicates.csv"]

    write_json({**provenance, "confidence": confidence, "protocol": tables.protocol_facts(metrics)},
               out_dir / "protocol.json")
    written["protocol"] = [out_dir / "protocol.json"]
    write_text(front.front_page(main, infos, provenance), out_dir / "front_page.rst")
    written["front_page"] = [out_dir / "front_page.rst"]

    summary = stats.summarize(metrics, boot, confidence)
    fid_label = _fid_label(metrics)
    written["curves"] = save_figure(plots.plot_curves(summary, infos, fid_label=fid_label), out_dir, "curves")
    written["pareto"] = save_figure(plots.plot_pareto(summary, infos, fid_label=fid_label), out_dir, "pareto")
    written["code_shift"] = save_figure(plots.plot_code_shift(summary, infos), out_dir, "code_shift")

    train_log = tables.load_train_logs(train_log_paths)
    if train_log is not None and len(train_log):
        written["train_curves"] = save_figure(plots.plot_train_curves(train_log, infos), out_dir, "train_curves")
    else:
        log.info("no train logs given: train_curves not written")

    if grid_paths:
        image_size = _single_fact(metrics, "image_size")
        tile = int(image_size) if image_size and str(image_size).isdigit() else None
        k = int(rc["grid_prompts"]) if rc.get("grid_prompts") else None
        captions = _captions(prompts_path, k or 64)
        fig = plots.plot_samples(grid_paths, infos, tile=tile, captions=captions, max_prompts=k)
        written["samples"] = save_figure(fig, out_dir, "samples", tight=True)
    else:
        log.info("no sample grids given: samples not written")

    for name in OPTIONAL - set(written):
        for fname in OUTPUTS[name]:
            stale = out_dir / fname
            if stale.exists():
                log.info("removing stale %s (its inputs were not given this time)", stale)
                stale.unlink()
    log.info("report written to %s in %.1f s: %s", out_dir, time.time() - t0,
             ", ".join(p.name for ps in written.values() for p in ps))
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ranke report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(ap, "study, methods (the study's list), replicates, report")
    ap.add_argument("--config-hash", default=None, help="hash of the whole study config (stated by the report)")
    ap.add_argument("--metrics", nargs="+", required=True, help="metrics.parquet files (all methods, replicates, rounds)")
    ap.add_argument("--bootstrap", nargs="*", default=[], help="bootstrap.parquet files (within-replicate intervals)")
    ap.add_argument("--train-logs", nargs="*", default=[], help="train_log.parquet files")
    ap.add_argument("--grids", nargs="*", default=[], help=".../{method}/seed_{s}/round_{r}/grid.png files")
    ap.add_argument("--prompts", default=None, help="prompts.parquet: captions above the sample grid")
    ap.add_argument("--out-dir", required=True, help="directory for the tables, figures and protocol.json")
    ap.add_argument("--log", default=None, help="also log to this file")
    args = ap.parse_args(argv)

    setup_logging(args.log)
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter
    cfg = config_from_args(args)
    if not isinstance(cfg.get("methods", {}), (dict, list)):
        raise SystemExit("config: 'methods' must be the study's list of methods (or {name: {mode: ...}})")
    log.info("report config: %s", json.dumps(cfg, sort_keys=True))
    report(args.metrics, args.bootstrap, args.train_logs, args.grids, cfg, args.out_dir,
           prompts_path=args.prompts, config_hash=args.config_hash)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
