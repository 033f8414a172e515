"""Stage `report`: every table and figure of the study, from the metrics / train-log files.

    python -m ranke report --config-json '{"methods": {...}, "report": {"grid_prompts": 8}}' \
        --metrics results/*/round_*/metrics.parquet --train-logs results/*/round_*/train_log.parquet \
        [--grids results/*/round_*/grid.png] [--prompts results/prompts.parquet] --out-dir results/report

Output names are fixed (OUTPUTS), so that the Snakemake rule can list them. The train-curve and
sample figures are written only when their inputs are given (a stale copy from an earlier run is
removed, so the directory never shows a figure of inputs that are no longer there).
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
from ranke.report import plots, tables
from ranke.runtime import parse_config_json, setup_logging

log = logging.getLogger("ranke.report")

OUTPUTS: dict[str, list[str]] = {
    "main_table": ["main_table.md", "main_table.tex", "main_table.csv", "main_table.html"],
    "rounds_table": ["rounds_table.md", "rounds_table.tex", "rounds_table.csv", "rounds_table.html"],
    "protocol": ["protocol.json"],
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


def report(
    metrics_paths: list,
    train_log_paths: list | None,
    grid_paths: list | None,
    config_methods: dict,
    out_dir,
    *,
    prompts_path=None,
    grid_prompts: int | None = None,
) -> dict[str, list[Path]]:
    """Write all tables and figures into out_dir; returns {output name: [paths written]}."""
    t0 = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = tables.load_metrics(metrics_paths)
    infos = tables.method_infos(config_methods, set(metrics["method"]))
    log.info("metrics: %d rows from %d files; methods %s; rounds %s", len(metrics), len(metrics_paths),
             list(infos), tables.final_rounds(metrics))
    written: dict[str, list[Path]] = {}

    main = tables.main_table(metrics, config_methods)
    for name, text in (("main_table.md", tables.main_table_markdown(main)),
                       ("main_table.tex", tables.main_table_latex(main)),
                       ("main_table.csv", tables.main_table_csv(main)),
                       ("main_table.html", tables.main_table_html(main))):
        write_text(text, out_dir / name)
    written["main_table"] = [out_dir / n for n in OUTPUTS["main_table"]]
    log.info("main table:\n%s", tables.main_table_markdown(main))

    rounds = tables.rounds_table(metrics, config_methods)
    for name, text in (("rounds_table.md", tables.rounds_table_markdown(rounds)),
                       ("rounds_table.tex", tables.rounds_table_latex(rounds)),
                       ("rounds_table.csv", tables.rounds_table_csv(rounds)),
                       ("rounds_table.html", tables.rounds_table_html(rounds))):
        write_text(text, out_dir / name)
    written["rounds_table"] = [out_dir / n for n in OUTPUTS["rounds_table"]]

    write_json(tables.protocol_facts(metrics), out_dir / "protocol.json")
    written["protocol"] = [out_dir / "protocol.json"]

    written["curves"] = save_figure(plots.plot_curves(metrics, infos), out_dir, "curves")
    written["pareto"] = save_figure(plots.plot_pareto(metrics, infos), out_dir, "pareto")
    written["code_shift"] = save_figure(plots.plot_code_shift(metrics, infos), out_dir, "code_shift")

    train_log = tables.load_train_logs(train_log_paths)
    if train_log is not None and len(train_log):
        written["train_curves"] = save_figure(plots.plot_train_curves(train_log, infos), out_dir, "train_curves")
    else:
        log.info("no train logs given: train_curves not written")

    if grid_paths:
        image_size = _single_fact(metrics, "image_size")
        tile = int(image_size) if image_size and str(image_size).isdigit() else None
        k = int(grid_prompts) if grid_prompts else None
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
    ap.add_argument("--config-json", required=True,
                    help='{"methods": {name: {mode, schedule?, label?}}, "report": {"grid_prompts": K}?}')
    ap.add_argument("--metrics", nargs="+", required=True, help="metrics.parquet files (all methods, rounds)")
    ap.add_argument("--train-logs", nargs="*", default=[], help="train_log.parquet files")
    ap.add_argument("--grids", nargs="*", default=[], help="results/{method}/round_{r}/grid.png files")
    ap.add_argument("--prompts", default=None, help="prompts.parquet: captions above the sample grid")
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--log", default=None, help="also log to this file")
    args = ap.parse_args(argv)

    setup_logging(args.log)
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting chatter
    cfg = parse_config_json(args.config_json)
    methods = cfg.get("methods", cfg)
    if not isinstance(methods, dict):
        raise SystemExit("--config-json: 'methods' must be a mapping {name: {mode: ...}}")
    log.info("report config: %s", json.dumps(cfg, sort_keys=True))
    report(args.metrics, args.train_logs, args.grids, methods, args.out_dir,
           prompts_path=args.prompts, grid_prompts=(cfg.get("report") or {}).get("grid_prompts"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
