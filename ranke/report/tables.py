"""The paper's tables, built only from `metrics.parquet` files (schema "metrics", long format).

Main table (paper layout): one row per method at its final round, decoder frozen / co-evolved,
CLIP, FID, code-KL, reward; the best value of each column in bold (compared at the printed
precision, so that two printed-equal values are both bold); RankE-mode rows carry their delta to
the policy-only ("standard RL") row, as in the paper's "+1.31 vs RL". The footnote (protocol:
prompts, samples, CFG, extractor, CLIP convention, ...) is assembled from the `details` JSON and
`n` / `extractor` columns of the metrics rows behind the table, never typed by hand.

Per-round table: every method x round x metric.

Every table is rendered as Markdown, LaTeX (booktabs) and CSV. The CSV files carry the raw float
values (full precision); Markdown / LaTeX print them rounded to a per-metric precision.
"""

from __future__ import annotations

import html
import json
import logging
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ranke.io import read_parquet

log = logging.getLogger("ranke.report.tables")


# ----------------------------------------------------------------------------------------------
# Vocabulary: metric names, their printed labels and which direction is better.


@dataclass(frozen=True)
class MetricSpec:
    label: str  # Markdown / CSV-header-free label
    latex: str
    better: str | None = None  # "max" | "min" | None (informational)
    integer: bool = False


METRICS: dict[str, MetricSpec] = {
    "clip_score": MetricSpec("CLIP ↑", r"CLIP $\uparrow$", "max"),
    "fid": MetricSpec("FID ↓", r"FID $\downarrow$", "min"),
    "code_kl": MetricSpec("code-KL ↓", r"code-KL $\downarrow$", "min"),
    "reward": MetricSpec("reward ↑", r"Reward $\uparrow$", "max"),
    "code_kl_real_floor": MetricSpec("code-KL real floor", "code-KL real floor"),
    "code_entropy_bits": MetricSpec("code entropy (bits)", "code entropy (bits)"),
    "code_entropy_bits_real": MetricSpec("real code entropy (bits)", "real code entropy (bits)"),
    "codebook_usage": MetricSpec("codebook usage", "codebook usage"),
    "n_samples": MetricSpec("samples", "samples", integer=True),
    "wall_time_s": MetricSpec("score time (s)", "score time (s)"),
}
MAIN_METRICS = ["clip_score", "fid", "code_kl", "reward"]

# Method names of the shipped studies -> the paper's row labels. A config entry may override
# with its own `label`; any other method is shown under its name.
METHOD_LABELS = {
    "base": "Base",
    "policy": "Policy-only (std. RL)",
    "decoder": "Decoder-only",
    "ranke": "RankE",
}
# What the paper's "decoder" column says for each training mode.
DECODER_BY_MODE = {"none": "frozen", "policy": "frozen", "decoder": "co-evolved", "ranke": "co-evolved"}
DELTA_SUFFIX = "vs RL"  # the reference row is the policy-only ("standard RL") method


def metric_spec(name: str) -> MetricSpec:
    return METRICS.get(name, MetricSpec(name, latex_escape(name)))


def metric_order(names) -> list[str]:
    """Known metrics in the canonical order, then any others alphabetically."""
    names = set(names)
    return [m for m in METRICS if m in names] + sorted(names - set(METRICS))


# ----------------------------------------------------------------------------------------------
# Methods


@dataclass(frozen=True)
class MethodInfo:
    name: str
    label: str
    mode: str | None  # none | policy | decoder | ranke (None: not in the config)
    decoder: str  # frozen | co-evolved | "" (unknown mode)
    schedule: str | None = None


def method_infos(config_methods: dict, present: list[str] | set[str]) -> dict[str, MethodInfo]:
    """Ordered {name: MethodInfo} for the methods present in the metrics.

    Order: config order (base first), then methods that only appear in the metrics, sorted.
    """
    config_methods = dict(config_methods or {})
    present = set(present)
    ordered = [m for m in config_methods if m in present]
    ordered += sorted(present - set(ordered))
    ordered.sort(key=lambda m: 0 if _mode(m, config_methods) == "none" else 1)  # stable: base first
    for m in config_methods:
        if m not in present:
            log.warning("method '%s' is in the config but has no metrics; left out of the report", m)
    infos = {}
    for m in ordered:
        entry = config_methods.get(m) or {}
        mode = _mode(m, config_methods)
        infos[m] = MethodInfo(
            name=m,
            label=str(entry.get("label") or METHOD_LABELS.get(m, m)),
            mode=mode,
            decoder=DECODER_BY_MODE.get(mode or "", ""),
            schedule=entry.get("schedule"),
        )
    return infos


def _mode(method: str, config_methods: dict) -> str | None:
    entry = config_methods.get(method)
    if entry and entry.get("mode"):
        return str(entry["mode"])
    return "none" if method == "base" else None


# ----------------------------------------------------------------------------------------------
# Loading


def load_metrics(paths) -> pd.DataFrame:
    """Concatenate metrics files; one value per (method, round, metric) or a ValueError."""
    paths = list(paths)
    if not paths:
        raise ValueError("report needs at least one metrics file")
    df = pd.concat([read_parquet(p, "metrics") for p in paths], ignore_index=True)
    dup = df[df.duplicated(["method", "round", "metric"], keep=False)]
    if len(dup):
        keys = sorted(set(map(tuple, dup[["method", "round", "metric"]].values.tolist())))
        raise ValueError(f"metrics files give several values for (method, round, metric): {keys[:10]}")
    return df


def load_train_logs(paths) -> pd.DataFrame | None:
    paths = list(paths or [])
    if not paths:
        return None
    return pd.concat([read_parquet(p, "train_log") for p in paths], ignore_index=True)


def wide(metrics: pd.DataFrame) -> pd.DataFrame:
    """(method, round) rows with `step` and one column per metric (NaN when absent)."""
    values = metrics.pivot(index=["method", "round"], columns="metric", values="value")
    steps = metrics.groupby(["method", "round"])["step"].max()
    out = values.join(steps).reset_index()
    return out[["method", "round", "step"] + metric_order(values.columns)]


def final_rounds(metrics: pd.DataFrame) -> dict[str, int]:
    return {m: int(r) for m, r in metrics.groupby("method")["round"].max().items()}


# ----------------------------------------------------------------------------------------------
# Number formatting


def decimals_for(metric: str, values) -> int:
    """Printed precision of a metric: three significant digits of its largest |value|, 2..6 decimals."""
    if metric_spec(metric).integer:
        return 0
    v = np.abs(np.asarray(values, dtype=float))
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return 2
    return int(np.clip(3 - math.floor(math.log10(v.max())), 2, 6))


def fmt(value: float, decimals: int, *, signed: bool = False) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    text = f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    if text.lstrip("+-").strip("0.") == "":  # no "-0.00"
        text = ("+" if signed else "") + text.lstrip("+-")
    return text


def latex_escape(text: str) -> str:
    out = []
    for ch in str(text):
        if ch in "&%$#_{}":
            out.append("\\" + ch)
        elif ch == "\\":
            out.append(r"\textbackslash{}")
        elif ch == "~":
            out.append(r"\textasciitilde{}")
        elif ch == "^":
            out.append(r"\textasciicircum{}")
        elif ch == "↑":
            out.append(r"$\uparrow$")
        elif ch == "↓":
            out.append(r"$\downarrow$")
        elif ch == "±":
            out.append(r"$\pm$")
        elif ch == "–":
            out.append("--")
        elif ch == "×":
            out.append(r"$\times$")
        else:
            out.append(ch)
    return "".join(out)


def _latex_number(text: str) -> str:
    # a typographic minus instead of a hyphen
    return latex_escape(text).replace("-", "$-$") if text != "–" else "--"


# ----------------------------------------------------------------------------------------------
# Protocol footnote


def _fmt_fact(v) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


# Keys every metrics row may carry (the evaluation protocol of that (method, round)).
COMMON_DETAILS = ["n_prompts", "n_samples", "image_size", "cfg_scale", "temperature", "top_k", "top_p",
                  "decoder", "fid_extractor", "clip_convention"]
# Metric-specific keys -> fact name (the score stage writes e.g. the CLIP convention on the
# clip_score row only, and each metric has its own "convention" / "label" / "kl").
METRIC_DETAILS = {
    "clip_score": {"convention": "clip_convention"},
    "fid": {"label": "_fid_label", "reference_images": "_fid_reference_images"},
    "reward": {"convention": "_reward_convention"},
    "code_kl": {"kl": "_code_kl_definition"},
}
# never worth a footnote: run-specific paths and hashes
_NOT_PROTOCOL = ("_path", "sha256", "timing")


def _details(row) -> dict:
    try:
        details = json.loads(row.details) if row.details else {}
    except (TypeError, json.JSONDecodeError):
        log.warning("unparseable details JSON for %s round %s %s", row.method, row.round, row.metric)
        return {}
    return details if isinstance(details, dict) else {}


def protocol_facts(metrics: pd.DataFrame) -> dict[str, dict[str, list[str]]]:
    """{fact: {printed value: [methods]}} from the rows' `details` JSON (+ `n`, `extractor`).

    A fact that is the same for every method has one value; one that differs keeps them all, so
    the footnote can say so instead of hiding a protocol mismatch. Facts derived from columns or
    from metric-specific keys start with "_"; other protocol keys of the clip_score row (e.g.
    backbone, sampling seed) are kept under their own names.
    """
    facts: dict[str, dict[str, list[str]]] = {}

    def add(key, value, method):
        if value is None or value == "" or (isinstance(value, float) and not np.isfinite(value)):
            return
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        methods = facts.setdefault(key, {}).setdefault(_fmt_fact(value), [])
        if method not in methods:
            methods.append(method)

    for row in metrics.itertuples(index=False):
        details = _details(row)
        for key in COMMON_DETAILS:
            add(key, details.get(key), row.method)
        for key, fact in METRIC_DETAILS.get(row.metric, {}).items():
            add(fact, details.get(key), row.method)
        if row.metric == "clip_score":
            add("_n_clip", int(row.n), row.method)
            add("_clip_extractor_column", row.extractor or None, row.method)
            for key, value in details.items():  # anything else the protocol records
                if key not in COMMON_DETAILS and key not in METRIC_DETAILS["clip_score"] \
                        and not any(t in key for t in _NOT_PROTOCOL) and not isinstance(value, dict):
                    add(key, value, row.method)
        elif row.metric == "fid":
            add("_n_fid", int(row.n), row.method)
            add("_fid_extractor_column", row.extractor or None, row.method)
        elif row.metric == "reward":
            add("_reward_model", row.extractor or None, row.method)
        elif row.metric == "n_samples" and np.isfinite(row.value):
            add("_n_samples", int(row.value), row.method)
        elif row.metric == "code_kl_real_floor" and np.isfinite(row.value):
            add("_code_kl_floor", row.value, row.method)
    return facts


def _remap(values: dict[str, list[str]], f) -> dict[str, list[str]]:
    """Reprint the values of a fact; values that print the same merge their method lists."""
    out: dict[str, list[str]] = {}
    for v, ms in values.items():
        merged = out.setdefault(f(v), [])
        merged += [m for m in ms if m not in merged]
    return out


def _fact_text(values: dict[str, list[str]] | None, template: str, labels: dict[str, str]) -> str | None:
    if not values:
        return None
    if len(values) == 1:
        return template.format(next(iter(values)))
    parts = [f"{v} ({', '.join(labels.get(m, m) for m in ms)})" for v, ms in values.items()]
    return template.format("; ".join(parts)) + " [differs between methods]"


# (fact, phrase) of the sampling sentence, in the order the footnote states them
_FOOTNOTE_FACTS = [
    ("n_prompts", "{} prompts"),
    ("_n_samples", "{} generated images per method"),
    ("image_size", "{} px"),
    ("cfg_scale", "CFG {}"),
    ("temperature", "temperature {}"),
    ("top_k", "top-k {}"),
    ("top_p", "top-p {}"),
    ("decoder", "{} decoder weights"),
]


def protocol_footnote(
    metrics: pd.DataFrame, labels: dict[str, str], *, final_note: str = "", delta_note: str = ""
) -> str:
    """The protocol sentence(s) under a table, from the metrics rows it shows."""
    facts = protocol_facts(metrics)
    for fallback in ("n_samples", "_n_clip"):  # the n_samples metric first, then details, then `n`
        if "_n_samples" not in facts and fallback in facts:
            facts["_n_samples"] = facts[fallback]
    if "top_k" in facts:  # 0 = off is the sampler's convention
        facts["top_k"] = _remap(facts["top_k"], lambda v: "off" if v == "0" else v)
    sentences = []
    sampling = [t for k, tpl in _FOOTNOTE_FACTS if (t := _fact_text(facts.get(k), tpl, labels))]
    if sampling:
        sentences.append("Protocol: " + ", ".join(sampling) + ".")

    # FID: either a feature-extractor description, or the score stage's label + extractor name
    n_fid = _fact_text(facts.get("_n_fid"), "{}", labels)
    n_ref = _fact_text(facts.get("_fid_reference_images"), "{}", labels)
    counts = ", ".join(x for x in (f"{n_fid} generated" if n_fid else "", f"{n_ref} real" if n_ref else "") if x)
    if facts.get("fid_extractor"):
        fid = _fact_text(facts["fid_extractor"], "FID features: {}", labels)
    elif facts.get("_fid_label"):
        fid = _fact_text(facts["_fid_label"], "{}", labels)
        ext = _fact_text(facts.get("_fid_extractor_column"), "extractor {}", labels)
        fid += f", {ext}" if ext else ""
    else:
        fid = _fact_text(facts.get("_fid_extractor_column"), "FID features: {}", labels)
    if fid:
        sentences.append(fid + (f" ({counts} images)" if counts else "") + ".")

    clip = facts.get("clip_convention") or facts.get("_clip_extractor_column")
    if clip:
        sentences.append(_fact_text(clip, "CLIP score: {}", labels) + ".")
    reward = _fact_text(facts.get("_reward_model"), "Reward: {}", labels)
    if reward:
        conv = _fact_text(facts.get("_reward_convention"), "{}", labels)
        sentences.append(reward + (f", {conv}" if conv else "") + ".")
    code = _fact_text(facts.get("_code_kl_definition"), "code-KL: {}", labels)
    floor = facts.get("_code_kl_floor")
    if floor:
        floor = _fact_text(_remap(floor, lambda v: f"{float(v):.4g}"),
                           "real-data floor (two halves of the real codes) {}", labels)
        code = f"{code}; {floor}" if code else f"code-KL {floor}"
    if code:
        sentences.append(code + ".")
    other = {k: v for k, v in facts.items() if not k.startswith("_") and k not in COMMON_DETAILS}
    if other:
        parts = [_fact_text(v, f"{k} {{}}", labels) for k, v in sorted(other.items())]
        sentences.append("Other protocol facts: " + ", ".join(parts) + ".")
    if final_note:
        sentences.append(final_note)
    if delta_note:
        sentences.append(delta_note)
    return " ".join(sentences)


# ----------------------------------------------------------------------------------------------
# Main table


@dataclass
class MainTable:
    rows: pd.DataFrame  # method, label, mode, decoder, round, step, <metric>..., <metric>_delta...
    metrics: list[str]  # metric columns shown, in order
    decimals: dict[str, int]
    best: dict[str, set[str]]  # metric -> methods printed in bold
    reference: str | None  # the policy-only method the deltas refer to
    footnote: str
    delta_methods: list[str] = field(default_factory=list)


def main_table(metrics: pd.DataFrame, config_methods: dict) -> MainTable:
    infos = method_infos(config_methods, set(metrics["method"]))
    finals = final_rounds(metrics)
    w = wide(metrics).set_index(["method", "round"])
    shown = [m for m in MAIN_METRICS]
    decimals = {m: decimals_for(m, metrics.loc[metrics.metric == m, "value"]) for m in shown}

    records = []
    for name, info in infos.items():
        r = finals[name]
        rec = {
            "method": name,
            "label": info.label,
            "mode": info.mode or "",
            "decoder": info.decoder,
            "round": r,
            "step": int(w.loc[(name, r), "step"]),
        }
        for m in shown:
            rec[m] = float(w.loc[(name, r), m]) if m in w.columns else float("nan")
        records.append(rec)
    rows = pd.DataFrame.from_records(records)

    best: dict[str, set[str]] = {}
    for m in shown:
        spec = metric_spec(m)
        printed = rows[m].round(decimals[m])
        if spec.better is None or printed.notna().sum() == 0:
            best[m] = set()
            continue
        target = printed.max() if spec.better == "max" else printed.min()
        best[m] = set(rows.loc[printed == target, "method"])

    reference = next((n for n, i in infos.items() if i.mode == "policy"), None)
    delta_methods = [n for n, i in infos.items() if i.mode == "ranke"] if reference else []
    for m in shown:
        rows[f"{m}_delta"] = float("nan")
        if reference:
            ref_value = rows.loc[rows.method == reference, m].iloc[0]
            sel = rows.method.isin(delta_methods)
            rows.loc[sel, f"{m}_delta"] = rows.loc[sel, m] - ref_value

    labels = {n: i.label for n, i in infos.items()}
    final_desc = sorted({(int(r), int(s)) for r, s in zip(rows["round"], rows["step"]) if r > 0})
    final_note = "Each method at its final round" + (
        " (" + "; ".join(f"round {r}, step {s}" for r, s in final_desc) + ")." if final_desc else "."
    )
    final_note += " Bold: best value of a column."
    delta_note = ""
    if reference and delta_methods:
        delta_note = f"Deltas ({DELTA_SUFFIX}): {', '.join(labels[m] for m in delta_methods)} minus {labels[reference]}."
    shown_rows = metrics.merge(rows[["method", "round"]], on=["method", "round"])
    footnote = protocol_footnote(shown_rows, labels, final_note=final_note, delta_note=delta_note)
    return MainTable(rows, shown, decimals, best, reference, footnote, delta_methods)


def _number(text: str, kind: str) -> str:
    return _latex_number(text) if kind == "tex" else text


def _bold(text: str, kind: str) -> str:
    return {"md": f"**{text}**", "tex": rf"\textbf{{{text}}}", "html": f"<b>{text}</b>"}[kind]


def _delta(text: str, kind: str) -> str:
    return {
        "md": f" ({text} {DELTA_SUFFIX})",
        "tex": rf" {{\scriptsize ({_latex_number(text)} {DELTA_SUFFIX})}}",
        "html": f" <small>({text} {DELTA_SUFFIX})</small>",
    }[kind]


def _escape(text: str, kind: str) -> str:
    return {"md": str, "tex": latex_escape, "html": html.escape}[kind](text)


def _header_label(metric: str, kind: str) -> str:
    spec = metric_spec(metric)
    return spec.latex if kind == "tex" else _escape(spec.label, kind)


def _main_cells(t: MainTable, kind: str) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "Decoder"] + [_header_label(m, kind) for m in t.metrics]
    body = []
    for row in t.rows.to_dict("records"):
        cells = [_escape(row["label"], kind), _escape(row["decoder"] or "–", kind)]
        for m in t.metrics:
            text = _number(fmt(row[m], t.decimals[m]), kind)
            if row["method"] in t.best[m]:
                text = _bold(text, kind)
            if np.isfinite(row[f"{m}_delta"]):
                text += _delta(fmt(row[f"{m}_delta"], t.decimals[m], signed=True), kind)
            cells.append(text)
        body.append(cells)
    return header, body


def markdown_table(header: list[str], body: list[list[str]], align: list[str]) -> str:
    sep = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep[a] for a in align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def latex_tabular(header: list[str], body: list[list[str]], align: list[str], note: str = "") -> str:
    lines = [
        "% generated by `python -m ranke report`; needs \\usepackage{booktabs}",
        "\\begin{tabular}{" + "".join(align) + "}",
        "\\toprule",
        " & ".join(header) + r" \\",
        "\\midrule",
    ]
    lines += [" & ".join(cells) + r" \\" for cells in body]
    lines += ["\\bottomrule", "\\end{tabular}"]
    if note:
        lines += ["\\par\\smallskip", "{\\footnotesize " + latex_escape(note) + "\\par}"]
    return "\n".join(lines) + "\n"


_HTML_STYLE = (
    "body{font-family:sans-serif;font-size:14px;margin:1em}"
    "table{border-collapse:collapse;border-top:2px solid #000;border-bottom:2px solid #000}"
    "th{border-bottom:1px solid #000}th,td{padding:3px 10px}td.r,th.r{text-align:right}"
    "p.note{max-width:60em;font-size:12px;color:#333}"
)


def html_table(title: str, header: list[str], body: list[list[str]], align: list[str], note: str = "") -> str:
    """A self-contained page (what the Snakemake HTML report shows inline)."""
    cls = lambda a: ' class="r"' if a == "r" else ""  # noqa: E731
    rows = ["<tr>" + "".join(f"<th{cls(a)}>{h}</th>" for h, a in zip(header, align)) + "</tr>"]
    rows += ["<tr>" + "".join(f"<td{cls(a)}>{c}</td>" for c, a in zip(cells, align)) + "</tr>" for cells in body]
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{_HTML_STYLE}</style></head><body>\n<table>\n" + "\n".join(rows) + "\n</table>\n"
        + (f'<p class="note">{html.escape(note)}</p>\n' if note else "") + "</body></html>\n"
    )


def _main_align(t: MainTable) -> list[str]:
    return ["l", "l"] + ["r"] * len(t.metrics)


def main_table_markdown(t: MainTable) -> str:
    header, body = _main_cells(t, "md")
    return markdown_table(header, body, _main_align(t)) + "\n" + t.footnote + "\n"


def main_table_latex(t: MainTable) -> str:
    header, body = _main_cells(t, "tex")
    return latex_tabular(header, body, _main_align(t), t.footnote)


def main_table_html(t: MainTable) -> str:
    header, body = _main_cells(t, "html")
    return html_table("Main table", header, body, _main_align(t), t.footnote)


def main_table_csv(t: MainTable) -> str:
    cols = ["method", "label", "mode", "decoder", "round", "step"] + t.metrics
    cols += [f"{m}_delta" for m in t.metrics]
    out = t.rows[cols].copy()
    for m in t.metrics:
        out[f"{m}_best"] = out["method"].isin(t.best[m])
    return out.to_csv(index=False)


# ----------------------------------------------------------------------------------------------
# Per-round table


@dataclass
class RoundsTable:
    rows: pd.DataFrame  # method, label, round, step, <metric>...
    metrics: list[str]
    decimals: dict[str, int]
    footnote: str


def rounds_table(metrics: pd.DataFrame, config_methods: dict) -> RoundsTable:
    infos = method_infos(config_methods, set(metrics["method"]))
    w = wide(metrics)
    order = {m: i for i, m in enumerate(infos)}
    w = w.sort_values(["method", "round"], key=lambda s: s.map(order) if s.name == "method" else s)
    w.insert(1, "label", w["method"].map(lambda m: infos[m].label))
    shown = [c for c in w.columns if c not in ("method", "label", "round", "step")]
    decimals = {m: decimals_for(m, metrics.loc[metrics.metric == m, "value"]) for m in shown}
    labels = {n: i.label for n, i in infos.items()}
    footnote = protocol_footnote(metrics, labels)
    return RoundsTable(w.reset_index(drop=True), shown, decimals, footnote)


def _rounds_cells(t: RoundsTable, kind: str) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "Round", "Step"] + [_header_label(m, kind) for m in t.metrics]
    body = []
    for row in t.rows.to_dict("records"):
        cells = [_escape(row["label"], kind), str(int(row["round"])), str(int(row["step"]))]
        cells += [_number(fmt(row[m], t.decimals[m]), kind) for m in t.metrics]
        body.append(cells)
    return header, body


def _rounds_align(t: RoundsTable) -> list[str]:
    return ["l", "r", "r"] + ["r"] * len(t.metrics)


def rounds_table_markdown(t: RoundsTable) -> str:
    header, body = _rounds_cells(t, "md")
    return markdown_table(header, body, _rounds_align(t)) + "\n" + t.footnote + "\n"


def rounds_table_latex(t: RoundsTable) -> str:
    header, body = _rounds_cells(t, "tex")
    return latex_tabular(header, body, _rounds_align(t), t.footnote)


def rounds_table_html(t: RoundsTable) -> str:
    header, body = _rounds_cells(t, "html")
    return html_table("Per-round table", header, body, _rounds_align(t), t.footnote)


def rounds_table_csv(t: RoundsTable) -> str:
    return t.rows[["method", "label", "round", "step"] + t.metrics].to_csv(index=False)


__all__ = [
    "METRICS",
    "MAIN_METRICS",
    "METHOD_LABELS",
    "MethodInfo",
    "MainTable",
    "RoundsTable",
    "method_infos",
    "load_metrics",
    "load_train_logs",
    "wide",
    "final_rounds",
    "main_table",
    "main_table_markdown",
    "main_table_latex",
    "main_table_csv",
    "main_table_html",
    "rounds_table",
    "rounds_table_markdown",
    "rounds_table_latex",
    "rounds_table_csv",
    "rounds_table_html",
    "protocol_footnote",
    "protocol_facts",
]
