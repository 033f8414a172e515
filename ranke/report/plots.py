"""The paper's figures, from the metrics / train-log tables (never from models).

Every function returns a matplotlib `Figure` built without pyplot (no global state, Agg canvas
on save), sized for one paper column (3.3 in) unless it says otherwise; build.py saves PNG + PDF.
Each method keeps one colour / marker across all figures (the Okabe-Ito palette, safe for
colour-blind readers); a non-base method's trajectory starts at the base point (round 0 is the
base model for every method). Lines are means over replicates; bands and error bars are the
intervals of the tables (ranke.report.stats: t across replicates, or the bootstrap of a single
replicate), at report.confidence.
"""

from __future__ import annotations

import logging
import re
import textwrap
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ranke.report.tables import MethodInfo, summary_wide

log = logging.getLogger("ranke.report.plots")

COLUMN_WIDTH = 3.3  # inches, one column of a two-column paper
TEXT_WIDTH = 6.8  # inches, full text width
DPI = 200

STYLE = {
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "legend.frameon": False,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.4,
    "xtick.major.width": 0.5,
    "ytick.major.width": 0.5,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "figure.dpi": DPI,
    "savefig.dpi": DPI,
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text, accepted by paper templates
}

# Okabe & Ito's colour-blind-safe palette. RankE vs standard RL are the two curves the paper
# compares: blue / vermillion.
_FIXED_COLOURS = {"base": "#000000", "policy": "#D55E00", "decoder": "#009E73", "ranke": "#0072B2"}
_SPARE_COLOURS = ["#E69F00", "#56B4E9", "#CC79A7", "#F0E442", "#999999"]
BAND_ALPHA = 0.18
_MARKERS = {"base": "*", "policy": "s", "decoder": "^", "ranke": "o"}
_SPARE_MARKERS = ["D", "v", "P", "X", "<", ">"]


def method_styles(infos: dict[str, MethodInfo]) -> dict[str, dict]:
    """{method: {color, marker}}: fixed for the shipped method names, then spare ones in order."""
    styles, spare_c, spare_m = {}, iter(_SPARE_COLOURS * 3), iter(_SPARE_MARKERS * 3)
    for name in infos:
        styles[name] = {
            "color": _FIXED_COLOURS.get(name) or next(spare_c),
            "marker": _MARKERS.get(name) or next(spare_m),
        }
    return styles


def _base_method(infos: dict[str, MethodInfo]) -> str | None:
    return next((n for n, i in infos.items() if i.mode == "none"), None)


def trajectories(summary: pd.DataFrame, infos: dict[str, MethodInfo]) -> dict[str, pd.DataFrame]:
    """{method: rows sorted by round with <m>, <m>_lo, <m>_hi} from stats.summarize rows; each
    non-base method starts at the base's round 0."""
    w = summary_wide(summary)
    base = _base_method(infos)
    base_rows = w[(w.method == base) & (w["round"] == 0)] if base else w.iloc[:0]
    out = {}
    for name in infos:
        rows = w[w.method == name].sort_values("round")
        if name != base and len(base_rows) and (rows["round"] == 0).sum() == 0:
            rows = pd.concat([base_rows.assign(method=name), rows], ignore_index=True)
        out[name] = rows.reset_index(drop=True)
    return out


def _no_data(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no {what} in the metrics", ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _legend_on_top(fig: Figure, axes, ncol: int = 2, order: list[str] | None = None) -> None:
    """One legend above all panels; entries in `order` (method labels) first, in that order."""
    handles, labels = {}, []
    for ax in np.atleast_1d(axes).ravel():
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if order:
        rank = {lab: i for i, lab in enumerate(order)}
        labels.sort(key=lambda lab: rank.get(lab, len(rank)))
    if handles:
        fig.legend([handles[lab] for lab in labels], labels, loc="outside upper center", ncol=ncol,
                   handlelength=1.8, columnspacing=1.0)


# ----------------------------------------------------------------------------------------------
# CLIP and FID vs training step (the paper's training-curve figure)


def plot_curves(summary: pd.DataFrame, infos: dict[str, MethodInfo], *, fid_label: str = "FID") -> Figure:
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(COLUMN_WIDTH, 3.5), layout="constrained")
        axes = fig.subplots(2, 1, sharex=True)
        _metric_vs_step(axes[0], summary, infos, "clip_score", "CLIP score ↑")
        _metric_vs_step(axes[1], summary, infos, "fid", f"{fid_label} ↓")
        axes[1].set_xlabel("training step")
        _legend_on_top(fig, axes)
    return fig


def _metric_vs_step(ax, summary, infos, metric: str, ylabel: str, *, floor_metric: str | None = None,
                    floor_label: str = "", floor_ls: str = ":") -> None:
    if metric not in set(summary.metric):
        _no_data(ax, metric)
        ax.set_ylabel(ylabel)
        return
    styles = method_styles(infos)
    base = _base_method(infos)
    trajs = trajectories(summary, infos)
    for name, rows in trajs.items():
        rows = rows[np.isfinite(rows[metric])] if metric in rows else rows.iloc[:0]
        if not len(rows):
            continue
        st = styles[name]
        lo, hi = rows[f"{metric}_lo"].to_numpy(float), rows[f"{metric}_hi"].to_numpy(float)
        if name == base:
            ax.axhline(rows[metric].iloc[0], color=st["color"], ls="--", lw=0.8, label=infos[name].label)
            if np.isfinite(lo[0]) and np.isfinite(hi[0]):
                ax.axhspan(lo[0], hi[0], color=st["color"], alpha=BAND_ALPHA * 0.6, lw=0)
            continue
        ax.plot(rows["step"], rows[metric], color=st["color"], marker=st["marker"], label=infos[name].label)
        ok = np.isfinite(lo) & np.isfinite(hi)
        if ok.any():
            ax.fill_between(rows["step"].to_numpy()[ok], lo[ok], hi[ok], color=st["color"], alpha=BAND_ALPHA, lw=0)
    if floor_metric and floor_metric in set(summary.metric):
        floor = float(summary.loc[summary.metric == floor_metric, "mean"].median())
        ax.axhline(floor, color="0.35", ls=floor_ls, lw=0.9, label=floor_label)
    ax.set_ylabel(ylabel)


# ----------------------------------------------------------------------------------------------
# CLIP-FID plane (Pareto view)


def plot_pareto(summary: pd.DataFrame, infos: dict[str, MethodInfo], *, fid_label: str = "FID") -> Figure:
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(COLUMN_WIDTH, 3.0), layout="constrained")
        ax = fig.subplots()
        present = set(summary.metric)
        if not {"clip_score", "fid"} <= present:
            _no_data(ax, "CLIP + FID pair")
            return fig
        styles = method_styles(infos)
        base = _base_method(infos)
        for name, rows in trajectories(summary, infos).items():
            rows = rows[np.isfinite(rows["fid"]) & np.isfinite(rows["clip_score"])]
            if not len(rows):
                continue
            st = styles[name]
            x, y = rows["fid"].to_numpy(), rows["clip_score"].to_numpy()
            # the interval of the last point (the final round) as error bars
            xerr = _err(x[-1], rows["fid_lo"].iloc[-1], rows["fid_hi"].iloc[-1])
            yerr = _err(y[-1], rows["clip_score_lo"].iloc[-1], rows["clip_score_hi"].iloc[-1])
            if xerr is not None or yerr is not None:
                ax.errorbar(x[-1:], y[-1:], xerr=xerr, yerr=yerr, ls="none", color=st["color"], lw=0.7,
                            capsize=1.5, alpha=0.8, zorder=2)
            if name == base:
                ax.plot(x[:1], y[:1], ls="none", marker="*", ms=9, color=st["color"], label=infos[name].label,
                        zorder=4)
                continue
            # arrows from round r-1 to round r; small markers at the rounds, a big one at the last
            for i in range(1, len(x)):
                ax.annotate("", xy=(x[i], y[i]), xytext=(x[i - 1], y[i - 1]),
                            arrowprops=dict(arrowstyle="-|>", color=st["color"], lw=1.0,
                                            shrinkA=2, shrinkB=3, mutation_scale=7))
            ax.plot(x[1:-1], y[1:-1], ls="none", marker=st["marker"], ms=3, color=st["color"], alpha=0.6)
            ax.plot(x[-1:], y[-1:], ls="none", marker=st["marker"], ms=6, color=st["color"],
                    markeredgecolor="white", markeredgewidth=0.5, label=infos[name].label, zorder=3)
            last_round = int(rows["round"].iloc[-1])
            ax.annotate(f"r{last_round}", (x[-1], y[-1]), xytext=(3, 3), textcoords="offset points",
                        fontsize=5.5, color=st["color"])
        ax.set_xlabel(f"{fid_label} ↓")
        ax.set_ylabel("CLIP score ↑")
        ax.margins(0.12)
        # the good corner: low FID, high CLIP
        ax.annotate("better", xy=(0.04, 0.96), xytext=(0.2, 0.8), xycoords="axes fraction",
                    textcoords="axes fraction", fontsize=6, color="0.4", ha="center", va="center",
                    arrowprops=dict(arrowstyle="->", color="0.5", lw=0.8))
        _legend_on_top(fig, ax)
    return fig


def _err(value: float, lo: float, hi: float):
    """matplotlib's (2, 1) asymmetric error for one point, or None without an interval."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None
    return np.array([[max(value - lo, 0.0)], [max(hi - value, 0.0)]])


# ----------------------------------------------------------------------------------------------
# Code shift: KL to the real code histogram (with the finite-sample real floor) and entropy


def plot_code_shift(summary: pd.DataFrame, infos: dict[str, MethodInfo]) -> Figure:
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(COLUMN_WIDTH, 3.5), layout="constrained")
        axes = fig.subplots(2, 1, sharex=True)
        _metric_vs_step(axes[0], summary, infos, "code_kl", "code-KL to real (nats) ↓",
                        floor_metric="code_kl_real_floor", floor_label="real-data floor")
        _metric_vs_step(axes[1], summary, infos, "code_entropy_bits", "code entropy (bits)",
                        floor_metric="code_entropy_bits_real", floor_label="real-data entropy", floor_ls="-.")
        axes[1].set_xlabel("training step")
        _legend_on_top(fig, axes, ncol=3)
    return fig


# ----------------------------------------------------------------------------------------------
# Training curves from train_log.parquet

# (column, panel title) in display order; all-NaN columns are skipped
TRAIN_PANELS = [
    ("reward_mean", "reward (mean)"),
    ("kl", "policy KL"),
    ("loss_pg", "policy-gradient loss"),
    ("loss_policy", "policy loss"),
    ("ratio_mean", "mean ratio"),
    ("tau", "rank temperature τ"),
    ("loss_disc", "discriminator loss"),
    ("loss_rank_gan", "rank-GAN loss"),
    ("loss_rec", "GT reconstruction loss"),
    ("loss_rec_l1", "rec. L1"),
    ("loss_rec_perceptual", "rec. perceptual"),
    ("loss_rec_gan", "rec. GAN"),
    ("loss_consistency", "EMA consistency loss"),
    ("loss_reward", "reward back-prop loss"),
    ("loss_lasc", "LASC loss"),
    ("loss_decoder", "decoder loss (total)"),
]


def global_steps(log_df: pd.DataFrame) -> pd.DataFrame:
    """Add `gstep`: steps counted across rounds of a method (in each replicate).

    Works whether a round logs cumulative steps (kept as they are) or restarts its count
    (shifted to follow the previous round).
    """
    parts = []
    keys = ["method", "replicate"] if "replicate" in log_df else ["method"]
    for _, m in log_df.groupby(keys, sort=False):
        prev_end = None
        for _, r in m.sort_values(["round", "step"]).groupby("round", sort=True):
            r = r.copy()
            if prev_end is not None and r["step"].min() <= prev_end:
                r["gstep"] = r["step"] - r["step"].min() + prev_end + 1
            else:
                r["gstep"] = r["step"]
            prev_end = r["gstep"].max()
            parts.append(r)
    return pd.concat(parts, ignore_index=True) if parts else log_df.assign(gstep=log_df["step"])


def _informative(values: pd.Series) -> bool:
    """A panel worth drawing: logged, and not constant (the PPO ratio is exactly 1 with one epoch)
    nor numerically zero (the policy-gradient loss is -mean(advantage) ~ 1e-7 with one epoch,
    since advantages are normalised per group)."""
    v = values.to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    if not len(v):
        return False
    return bool(np.ptp(v) > 1e-9 * max(1.0, float(np.abs(v).max())) and np.abs(v).max() > 1e-4)


def _smooth(y: np.ndarray) -> np.ndarray:
    window = max(1, len(y) // 25)
    return pd.Series(y).rolling(window, min_periods=1, center=True).mean().to_numpy()


def plot_train_curves(train_log: pd.DataFrame, infos: dict[str, MethodInfo]) -> Figure:
    df = global_steps(train_log)
    panels = [(c, t) for c, t in TRAIN_PANELS if c in df and _informative(df[c])]
    styles = method_styles(infos)
    methods = [m for m in infos if m in set(df.method)] + sorted(set(df.method) - set(infos))
    for m in methods:
        styles.setdefault(m, {"color": "0.3", "marker": "o"})
    ncol = 2
    nrow = max(1, -(-len(panels) // ncol))
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(COLUMN_WIDTH, 0.35 + 1.05 * nrow), layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrow, ncol, sharex=True, squeeze=False)).ravel()
        if not panels:
            _no_data(axes[0], "logged training terms")
        # faint lines where a round starts (the alternation is per round)
        starts = sorted(set(df.groupby(["method", "round"])["gstep"].min()))[1:]
        for ax, (col, title) in zip(axes, panels):
            for m in methods:
                d = df[(df.method == m) & df[col].notna()]
                if not len(d):
                    continue
                # mean over replicates at each step; the band spans the replicates (min to max)
                g = d.groupby("gstep")[col].agg(["mean", "min", "max"]).sort_index()
                x = g.index.to_numpy()
                c = styles[m]["color"]
                if "replicate" in d and d["replicate"].nunique() > 1:
                    ax.fill_between(x, _smooth(g["min"].to_numpy(float)), _smooth(g["max"].to_numpy(float)),
                                    color=c, alpha=BAND_ALPHA, lw=0)
                else:
                    ax.plot(x, g["mean"].to_numpy(float), color=c, lw=0.5, alpha=0.3)
                ax.plot(x, _smooth(g["mean"].to_numpy(float)), color=c, lw=1.0,
                        label=infos[m].label if m in infos else m)
            for s in starts:
                ax.axvline(s, color="0.6", lw=0.4, ls=":")
            ax.set_title(title, pad=2)
            ax.tick_params(pad=1)
        for ax in axes[max(1, len(panels)):]:
            ax.set_visible(False)
        for ax in axes[max(0, len(panels) - ncol): len(panels)]:
            ax.set_xlabel("training step")
            ax.xaxis.set_tick_params(labelbottom=True)
        _legend_on_top(fig, axes, ncol=3, order=[infos[m].label if m in infos else m for m in methods])
    return fig


# ----------------------------------------------------------------------------------------------
# Sample grid across methods (same prompts and seeds)

_GRID_PATH = re.compile(r"(?:^|/)(?P<method>[^/]+)/seed_(?P<seed>\d+)/round_(?P<round>\d+)/")


def parse_grid_path(path: str | Path) -> tuple[str, int]:
    """results/<study>/{method}/seed_{s}/round_{r}/[images/]grid.png -> (method, r)."""
    m = _GRID_PATH.search(Path(path).as_posix())
    if not m:
        raise ValueError(f"grid path {path} is not .../{{method}}/seed_{{s}}/round_{{r}}/.../grid.png")
    return m.group("method"), int(m.group("round"))


def split_tiles(image: np.ndarray, tile: int | None = None, padding: int = 2) -> list[np.ndarray]:
    """Cut a grid image into its square tiles, row-major.

    With `tile` (the image size): a plain mosaic of tile x tile images, or a torchvision
    `make_grid` one (`padding` px of white around every tile; its unused trailing cells, all
    white, are dropped). Without: a one-row strip of square tiles (tile = image height).
    Anything else comes back whole.
    """
    h, w = image.shape[:2]
    if not tile:
        return [image[:, j:j + h] for j in range(0, w, h)] if w % h == 0 else [image]
    for pad in (0, padding):
        step = tile + pad
        if (h - pad) % step or (w - pad) % step:
            continue
        tiles = [image[pad + i * step: pad + i * step + tile, pad + j * step: pad + j * step + tile]
                 for i in range((h - pad) // step) for j in range((w - pad) // step)]
        while pad and len(tiles) > 1 and (tiles[-1] == 255).all():
            tiles.pop()
        return tiles
    return [image]


def load_grid(path: str | Path, tile: int | None = None) -> list[np.ndarray]:
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return split_tiles(arr, tile)


def _wrap_label(name: str, width: int = 13) -> str:
    # keep a trailing "(round r)" on its own line rather than breaking inside it
    m = re.match(r"^(.*?)\s*(\(round \d+\))$", name)
    head, tail = (m.group(1), m.group(2)) if m else (name, "")
    return "\n".join(textwrap.wrap(head, width) + ([tail] if tail else []))


def _fit_tile(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    from PIL import Image

    return np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.NEAREST))


def compose_grid(images_by_method: dict[str, list[np.ndarray]], captions: list[str] | None = None) -> Figure:
    """One row per method (label on the left), one column per prompt (caption on top).

    images: uint8 H x W x 3 arrays (resized to the largest tile); rows may hold different counts
    (missing cells stay white). The tiles are pasted into one canvas shown by a single axes, so
    that a large grid costs one image draw.
    """
    rows = list(images_by_method)
    ncol = max((len(v) for v in images_by_method.values()), default=0)
    if not rows or ncol == 0:
        raise ValueError("compose_grid needs at least one image")
    size = max(max(im.shape[:2]) for v in images_by_method.values() for im in v)
    gap = max(1, size // 32)
    canvas = np.full((len(rows) * (size + gap) - gap, ncol * (size + gap) - gap, 3), 255, np.uint8)
    for i, name in enumerate(rows):
        for j, img in enumerate(images_by_method[name][:ncol]):
            img = np.asarray(img, dtype=np.uint8)
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)
            y, x = i * (size + gap), j * (size + gap)
            canvas[y:y + size, x:x + size] = _fit_tile(img[..., :3], size)

    width = COLUMN_WIDTH if ncol <= 4 else TEXT_WIDTH
    label_w = 0.75  # inches for the method labels
    cell = min(0.9, (width - label_w) / ncol)
    wrapped = None
    cap_h = 0.0
    if captions:
        chars = max(8, int(cell * 72 / 5.5 * 1.7))  # characters per line at 5.5 pt in one cell
        # at most 4 lines; a cut caption ends in an ellipsis (a cut without one can change its meaning)
        wrapped = ["\n".join(textwrap.wrap(c, chars, max_lines=4, placeholder=" …")) for c in captions[:ncol]]
        cap_h = 0.085 * max(c.count("\n") + 1 for c in wrapped) + 0.06
    fig_w, fig_h = label_w + cell * ncol, cap_h + cell * len(rows)
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(fig_w, fig_h))
        ax = fig.add_axes((label_w / fig_w, 0.0, cell * ncol / fig_w, cell * len(rows) / fig_h))
        ax.imshow(canvas, interpolation="nearest", aspect="auto")
        ax.set_axis_off()
        for i, name in enumerate(rows):
            ax.text(-gap * 4, i * (size + gap) + size / 2, _wrap_label(name), ha="right", va="center", fontsize=7)
        for j, cap in enumerate(wrapped or []):
            ax.text(j * (size + gap) + size / 2, -gap * 2, cap, ha="center", va="bottom", fontsize=5.5)
    return fig


def plot_samples(
    grid_paths: list[str | Path],
    infos: dict[str, MethodInfo],
    *,
    tile: int | None = None,
    captions: list[str] | None = None,
    max_prompts: int | None = None,
) -> Figure:
    """Each method's grid at its final round (the highest round among its given grids).

    Rows are labelled with the method (and round); at most `max_prompts` tiles per row.
    """
    latest: dict[str, tuple[int, Path]] = {}
    for p in grid_paths:
        method, r = parse_grid_path(p)
        if method not in latest or r > latest[method][0]:
            latest[method] = (r, Path(p))
    order = [m for m in infos if m in latest] + sorted(set(latest) - set(infos))
    images = {}
    for m in order:
        r, p = latest[m]
        label = infos[m].label if m in infos else m
        images[f"{label} (round {r})" if r else label] = load_grid(p, tile)[:max_prompts]
    return compose_grid(images, captions)


__all__ = [
    "STYLE",
    "COLUMN_WIDTH",
    "TEXT_WIDTH",
    "DPI",
    "method_styles",
    "trajectories",
    "plot_curves",
    "plot_pareto",
    "plot_code_shift",
    "plot_train_curves",
    "TRAIN_PANELS",
    "global_steps",
    "parse_grid_path",
    "split_tiles",
    "load_grid",
    "compose_grid",
    "plot_samples",
]
