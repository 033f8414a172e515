"""The paper's tables with their uncertainty, built only from the score stage's files.

Inputs: `metrics.parquet` (one value per method x replicate x round x metric, long format) and
`bootstrap.parquet` (the same metrics on bootstrap resamples of the prompts); ranke.report.stats
turns them into intervals (see there for the definitions).

* Main table (paper layout): one row per method without `train` overrides at its final round,
  decoder frozen / co-evolved, CLIP, FID (its feature space named), code-KL, reward, each as
  mean +- interval; the best mean of a column in bold (compared at the printed precision); below,
  one row per RankE-mode method: its paired difference to the policy-only ("standard RL") method,
  the paper's "+1.31 vs RL", with its interval and `*` when the interval excludes 0.
* Ablation table: every trained method against the reference RankE method, paired deltas.
* Per-round table: every method x round x metric, mean +- interval.
* deltas.csv: every paired comparison of both tables, across replicates and within each, with
  p-values; replicates.csv: every per-replicate value with its bootstrap interval.

The footnotes (protocol: prompts, samples, CFG, extractor, CLIP convention, ...; how each interval
was computed) are assembled from the `details` JSON and `n` / `extractor` columns of the rows
behind the table and from the resample counts, never typed by hand. Markdown / LaTeX / HTML print
rounded numbers; the CSV files carry full precision.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ranke.io import read_parquet
from ranke.report import stats

log = logging.getLogger("ranke.report.tables")


# ----------------------------------------------------------------------------------------------
# Vocabulary: metric names, their printed labels and which direction is better.


@dataclass(frozen=True)
class MetricSpec:
    label: str  # column header (Unicode; LaTeX escapes it)
    unit: str = ""  # second header line in LaTeX, "(unit)" after the label elsewhere
    better: str | None = None  # "max" | "min" | None (informational)
    integer: bool = False


METRICS: dict[str, MetricSpec] = {
    "clip_score": MetricSpec("CLIP ↑", "", "max"),
    "fid": MetricSpec("FID ↓", "", "min"),  # its unit line is the feature space (fid_space)
    "code_kl": MetricSpec("code-KL ↓", "nats", "min"),
    "reward": MetricSpec("Reward ↑", "", "max"),
    "code_kl_real_floor": MetricSpec("code-KL real floor", "nats"),
    "code_entropy_bits": MetricSpec("entropy", "bits/code"),
    "code_entropy_bits_real": MetricSpec("real entropy", "bits/code"),
    "codebook_usage": MetricSpec("usage", "of codebook"),
    "n_samples": MetricSpec("samples", integer=True),
    "wall_time_s": MetricSpec("score time", "s"),
}
MAIN_METRICS = ["clip_score", "fid", "code_kl", "reward"]
# metrics with resamples in bootstrap.parquet (ranke.score)
BOOTSTRAPPED = ("clip_score", "fid", "code_kl", "reward")

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
SIGNIFICANT = "*"  # marks an interval of a difference that excludes 0


def metric_spec(name: str) -> MetricSpec:
    return METRICS.get(name, MetricSpec(name))


def metric_order(names) -> list[str]:
    """Known metrics in the canonical order, then any others alphabetically."""
    names = set(names)
    return [m for m in METRICS if m in names] + sorted(names - set(METRICS))


def fid_space(metrics: pd.DataFrame) -> str:
    """The FID's feature space, e.g. "Inception" or "demo CLIP features", from the score stage's
    label ("FID (Inception)"); "" when the rows disagree or say nothing."""
    labels = set()
    for row in metrics[metrics.metric == "fid"].itertuples(index=False):
        label = _details(row).get("label")
        if label and "(" in label:
            labels.add(label[label.index("(") + 1: label.rindex(")")])
    return labels.pop() if len(labels) == 1 else ""


def headers(metrics: pd.DataFrame, shown: list[str]) -> dict[str, tuple[str, str]]:
    """metric -> (label, unit); FID's unit is its feature space, named wherever FID appears."""
    return {m: (metric_spec(m).label, fid_space(metrics) if m == "fid" else metric_spec(m).unit) for m in shown}


def header_text(header: tuple[str, str]) -> str:
    label, unit = header
    return f"{label} ({unit})" if unit else label


# ----------------------------------------------------------------------------------------------
# Methods


@dataclass(frozen=True)
class MethodInfo:
    name: str
    label: str
    mode: str | None  # none | policy | decoder | ranke (None: not in the config)
    decoder: str  # frozen | co-evolved | "" (unknown mode)
    schedule: str | None = None
    overrides: dict = field(default_factory=dict)  # the method's `train` overrides (an ablation)

    @property
    def ablation(self) -> bool:
        """A variant of a paper method (train overrides, or the round schedule): ablation table only."""
        return bool(self.overrides) or (self.schedule or "step") != "step"

    @property
    def changes(self) -> str:
        """What makes it a variant, e.g. "decoder.rank_k=8, schedule=round"."""
        parts = [overrides_text(self.overrides)] if self.overrides else []
        if (self.schedule or "step") != "step":
            parts.append(f"schedule={self.schedule}")
        return ", ".join(parts)


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
            overrides=dict(entry.get("train") or {}),
        )
    return infos


def _mode(method: str, config_methods: dict) -> str | None:
    entry = config_methods.get(method)
    if entry and entry.get("mode"):
        return str(entry["mode"])
    return "none" if method == "base" else None


def reference(infos: dict[str, MethodInfo], which: str, named: str | None = None) -> str | None:
    """The method deltas refer to: `named` (report.rl_reference / ablation_reference) if present,
    else the first method of mode policy ("rl") / ranke ("ablation") without train overrides."""
    if named:
        return named if named in infos else None
    mode = {"rl": "policy", "ablation": "ranke"}[which]
    return next((n for n, i in infos.items() if i.mode == mode and not i.ablation), None)


def overrides_text(overrides: dict, prefix: str = "") -> str:
    """{decoder: {rank_k: 8}} -> "decoder.rank_k=8"."""
    parts = []
    for key, value in overrides.items():
        if isinstance(value, dict):
            parts.append(overrides_text(value, f"{prefix}{key}."))
        else:
            parts.append(f"{prefix}{key}={value}")
    return ", ".join(p for p in parts if p)


# ----------------------------------------------------------------------------------------------
# Loading


def load_metrics(paths) -> pd.DataFrame:
    """Concatenate metrics files; one value per (method, replicate, round, metric) or a ValueError."""
    paths = list(paths)
    if not paths:
        raise ValueError("report needs at least one metrics file")
    df = pd.concat([read_parquet(p, "metrics") for p in paths], ignore_index=True)
    key = ["method", "replicate", "round", "metric"]
    dup = df[df.duplicated(key, keep=False)]
    if len(dup):
        keys = sorted(set(map(tuple, dup[key].values.tolist())))
        raise ValueError(f"metrics files give several values for (method, replicate, round, metric): {keys[:10]}")
    return df


def load_bootstrap(paths) -> pd.DataFrame | None:
    paths = list(paths or [])
    if not paths:
        return None
    return pd.concat([read_parquet(p, "bootstrap") for p in paths], ignore_index=True)


def load_train_logs(paths) -> pd.DataFrame | None:
    paths = list(paths or [])
    if not paths:
        return None
    return pd.concat([read_parquet(p, "train_log") for p in paths], ignore_index=True)


def final_rounds(metrics: pd.DataFrame) -> dict[str, int]:
    return {m: int(r) for m, r in metrics.groupby("method")["round"].max().items()}


def summary_wide(summary: pd.DataFrame) -> pd.DataFrame:
    """stats.summarize rows -> one row per (method, round) with `step`, `replicates` and per
    metric the columns <m>, <m>_lo, <m>_hi (NaN when absent)."""
    idx = ["method", "round"]
    parts = [summary.groupby(idx)[["step", "replicates"]].max()]
    for col, suffix in (("mean", ""), ("lo", "_lo"), ("hi", "_hi")):
        p = summary.pivot(index=idx, columns="metric", values=col)
        parts.append(p.rename(columns=lambda m: f"{m}{suffix}"))
    out = pd.concat(parts, axis=1).reset_index()
    metrics = metric_order(summary["metric"].unique())
    cols = idx + ["step", "replicates"] + [f"{m}{s}" for m in metrics for s in ("", "_lo", "_hi")]
    return out[cols]


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


def fmt_interval(value: float, lo: float, hi: float, kind: str, decimals: int, *, signed: bool = False) -> str:
    """"v ± h" for a symmetric (t) interval, "v [lo, hi]" for a bootstrap one, "v" without one."""
    text = fmt(value, decimals, signed=signed)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return text
    if kind == stats.ACROSS:
        return f"{text} ± {fmt((hi - lo) / 2, decimals)}"
    return f"{text} [{fmt(lo, decimals)}, {fmt(hi, decimals)}]"


# What plain pdflatex (OT1 fonts, no extra packages) would print wrongly or refuse: its specials,
# the characters OT1 maps to other glyphs (| is an em dash, < and > are ¡ and ¿, '' a closing
# quote, -- an en dash) and the Unicode our labels use. pandas' own LaTeX escaping (Styler.format
# escape="latex") covers only the specials, hence this table.
_LATEX = {
    "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "\\": r"\textbackslash{}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "|": r"\textbar{}", "<": r"\textless{}", ">": r"\textgreater{}", "'": r"\textquotesingle{}",
    '"': r'\texttt{"}',
    "↑": r"$\uparrow$", "↓": r"$\downarrow$", "±": r"$\pm$", "×": r"$\times$", "·": r"$\cdot$",
    "−": r"$-$", "–": "--", "—": "---", "…": r"\ldots{}", "Δ": r"$\Delta$", "τ": r"$\tau$",
    "λ": r"$\lambda$", "≥": r"$\geq$", "≤": r"$\leq$", "≈": r"$\approx$", "µ": r"$\mu$", "→": r"$\to$",
}


def latex_escape(text: str) -> str:
    """Text that prints as written under plain pdflatex, whatever the document's font encoding."""
    text = str(text)
    out = []
    for i, ch in enumerate(text):
        if ch == "-":  # a lone hyphen stays a hyphen; "--" must not become a dash
            out.append("-{}" if i + 1 < len(text) and text[i + 1] == "-" else "-")
        else:
            out.append(_LATEX.get(ch, ch))
    return "".join(out)


def latex_number(text: str) -> str:
    """A printed number, interval or difference: a typographic minus, the significance mark raised."""
    if text == "–":
        return "--"
    mark = text.endswith(f" {SIGNIFICANT}")
    text = text[: -len(SIGNIFICANT) - 1] if mark else text
    return latex_escape(text).replace("-", "$-$") + (r"$^{*}$" if mark else "")


_NUMBER_WITH_INTERVAL = re.compile(r"(\S+)( ± \S+| \[[^\]\n]*\])( \*)?")


def latex_cell(text: str, numeric: bool) -> str:
    """A cell whose second and later lines ("\n") are printed one size smaller under the first; a
    number with its interval ("12.23 [-6.49, 30.32]", "0.94 ± 0.01", "+0.57 [...] *") is stacked the
    same way, interval below. Stacking is what keeps the tables within a page's width."""
    lines = text.split("\n")
    if numeric and len(lines) == 1 and (m := _NUMBER_WITH_INTERVAL.fullmatch(text)):
        estimate, interval, mark = m.groups()
        lines = [estimate + (mark or ""), interval.strip()]
    escape = latex_number if numeric else latex_escape
    if len(lines) == 1:
        return escape(lines[0])
    col = "r" if numeric else "l"
    return (rf"\begin{{tabular}}[t]{{@{{}}{col}@{{}}}}" + escape(lines[0])
            + "".join(r"\\\scriptsize " + escape(line) for line in lines[1:]) + r"\end{tabular}")


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
# never worth a footnote: run-specific paths and hashes; what differs per replicate by design (the
# interval sentence states the seeds); the code version (stated once, by the report)
_NOT_PROTOCOL = ("_path", "sha256", "timing", "sample_set", "sampling_seed", "code_version")


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
# How the intervals were computed (the second footnote sentence block)


def _resample_counts(boot: pd.DataFrame | None) -> dict[str, int]:
    if boot is None or not len(boot):
        return {}
    per_run = boot.groupby(["method", "replicate", "round", "metric"])["resample"].count()
    return {m: int(n) for m, n in per_run.groupby("metric").min().items()}


def interval_note(metrics: pd.DataFrame, boot: pd.DataFrame | None, confidence: float, *, deltas: bool) -> str:
    """One paragraph: what the ± / [lo, hi] of the table mean, from the data behind it."""
    level = f"{confidence:.0%}"
    seeds = sorted({int(s) for s in metrics["replicate"]})
    counts = _resample_counts(boot)
    n_prompts = protocol_facts(metrics).get("n_prompts")
    prompts = f"the {next(iter(n_prompts))} prompts" if n_prompts and len(n_prompts) == 1 else "the prompts"
    b = max((v for k, v in counts.items() if k != "fid"), default=0)
    b_fid = counts.get("fid", 0)
    boot_desc = (f"{level} bias-corrected percentile bootstrap over {prompts} (B = {b} resamples"
                 + (f", FID {b_fid}" if b_fid and b_fid != b else "") + ")")
    if len(seeds) >= 2:
        text = (f"Values: mean over {len(seeds)} replicates (seeds {', '.join(map(str, seeds))}: training and "
                f"evaluation-sampling seeds) ± half-width of the {level} Student-t interval.")
        if deltas:
            text += (f" Δ rows: differences paired within each replicate (same prompts and sampling seeds), mean ± "
                     f"{level} t-interval of the {len(seeds)} per-replicate differences; {SIGNIFICANT} = the interval "
                     "excludes 0 (p-values of the paired t-test in deltas.csv).")
        if counts:
            text += f" Within-replicate intervals ({boot_desc}) are in replicates.csv and deltas.csv."
        return text
    if not counts:
        return f"One replicate (seed {seeds[0]}) and no bootstrap resamples: no intervals."
    text = (f"One replicate (seed {seeds[0]}): [lo, hi] = {boot_desc}; it covers evaluation noise only, not the "
            "variation between training seeds (add replicates for that).")
    biased = stats.per_replicate(metrics, boot, confidence)
    biased = sorted(set(biased.loc[biased.interval == stats.BIASED, "metric"]))
    if biased:
        text += (f" No interval for {', '.join(metric_spec(m).label.split(' ')[0] for m in biased)} where the "
                 "resamples do not cover the estimate (a histogram's or a covariance's statistic is biased upwards "
                 "on resamples of repeated images).")
    if deltas:
        text += (f" Δ rows: paired bootstrap of the differences on the same resamples; {SIGNIFICANT} = the interval "
                 "excludes 0 (p-values in deltas.csv).")
    return text


def provenance_note(provenance: dict | None) -> str:
    if not provenance:
        return ""
    parts = [f"{k} {v}" for k, v in (("Study", provenance.get("study")), ("config", provenance.get("config_hash")),
                                      ("code", provenance.get("code_version"))) if v]
    return "; ".join(parts) + "." if parts else ""


# ----------------------------------------------------------------------------------------------
# Main table


@dataclass
class DeltaRow:
    label: str  # e.g. "Δ RankE − Policy-only (std. RL)"
    method: str
    reference: str
    intervals: dict[str, stats.Interval]  # metric -> shown interval of method - reference


@dataclass
class MainTable:
    rows: pd.DataFrame  # method, label, mode, decoder, round, step, replicates, <m>, <m>_lo, <m>_hi ...
    metrics: list[str]  # metric columns shown, in order
    decimals: dict[str, int]
    best: dict[str, set[str]]  # metric -> methods printed in bold
    reference: str | None  # the policy-only method the deltas refer to
    deltas: list[DeltaRow]
    interval_kind: str  # stats.ACROSS | stats.WITHIN | stats.NONE
    headers: dict[str, tuple[str, str]]  # metric -> (label, unit or FID feature space)
    footnote: str


def _interval_kind(metrics: pd.DataFrame, boot: pd.DataFrame | None) -> str:
    if metrics["replicate"].nunique() >= 2:
        return stats.ACROSS
    return stats.WITHIN if boot is not None and len(boot) else stats.NONE


def _best(rows: pd.DataFrame, shown: list[str], decimals: dict[str, int]) -> dict[str, set[str]]:
    best: dict[str, set[str]] = {}
    for m in shown:
        spec = metric_spec(m)
        printed = rows[m].round(decimals[m])
        if spec.better is None or printed.notna().sum() == 0:
            best[m] = set()
            continue
        target = printed.max() if spec.better == "max" else printed.min()
        best[m] = set(rows.loc[printed == target, "method"])
    return best


def _final_rows(summary: pd.DataFrame, infos: dict[str, MethodInfo], finals: dict[str, int],
                shown: list[str]) -> pd.DataFrame:
    w = summary_wide(summary).set_index(["method", "round"])
    records = []
    for name, info in infos.items():
        r = finals[name]
        rec = {"method": name, "label": info.label, "mode": info.mode or "", "decoder": info.decoder,
               "overrides": info.changes, "round": r, "step": int(w.loc[(name, r), "step"]),
               "replicates": int(w.loc[(name, r), "replicates"])}
        for m in shown:
            for suffix in ("", "_lo", "_hi"):
                col = f"{m}{suffix}"
                rec[col] = float(w.loc[(name, r), col]) if col in w.columns else float("nan")
        records.append(rec)
    return pd.DataFrame.from_records(records)


def main_table(metrics: pd.DataFrame, config_methods: dict, boot: pd.DataFrame | None = None, *,
               confidence: float = 0.95, rl_reference: str | None = None,
               provenance: dict | None = None) -> MainTable:
    all_infos = method_infos(config_methods, set(metrics["method"]))
    infos = {n: i for n, i in all_infos.items() if not i.ablation}
    finals = final_rounds(metrics)
    shown = list(MAIN_METRICS)
    summary = stats.summarize(metrics, boot, confidence)
    rows = _final_rows(summary, infos, finals, shown)
    decimals = {m: decimals_for(m, metrics.loc[metrics.metric == m, "value"]) for m in shown}
    best = _best(rows, shown, decimals)

    ref = reference(all_infos, "rl", rl_reference)
    deltas = []
    if ref:
        for name, info in infos.items():
            if info.mode != "ranke":
                continue
            ivs = {m: stats.paired_difference(metrics, boot, name, ref, finals[name], finals[ref], m, confidence)[0]
                   for m in shown if m in set(metrics.metric)}
            deltas.append(DeltaRow(f"Δ {info.label} − {all_infos[ref].label}", name, ref, ivs))

    labels = {n: i.label for n, i in all_infos.items()}
    final_desc = sorted({(int(r), int(s)) for r, s in zip(rows["round"], rows["step"]) if r > 0})
    final_note = "Each method at its final round" + (
        " (" + "; ".join(f"round {r}, step {s}" for r, s in final_desc) + ")." if final_desc else "."
    )
    final_note += " Bold: best mean of a column."
    shown_rows = metrics.merge(rows[["method", "round"]], on=["method", "round"])
    footnote = " ".join(x for x in (
        protocol_footnote(shown_rows, labels, final_note=final_note),
        interval_note(shown_rows, boot, confidence, deltas=bool(deltas)),
        provenance_note(provenance)) if x)
    return MainTable(rows, shown, decimals, best, ref, deltas, _interval_kind(metrics, boot),
                     headers(metrics, shown), footnote)


def _cell(row: dict, m: str, kind_iv: str, decimals: int) -> str:
    return fmt_interval(row[m], row[f"{m}_lo"], row[f"{m}_hi"], kind_iv, decimals)


def _delta_cell(iv: stats.Interval | None, decimals: int) -> str:
    if iv is None:
        return "–"
    text = fmt_interval(iv.estimate, iv.lo, iv.hi, iv.kind, decimals, signed=True)
    return text + (f" {SIGNIFICANT}" if iv.excludes_zero else "")


def main_grid(t: MainTable, *, paper: bool = False) -> Grid:
    grid = Grid(columns=[("Method", ""), ("Decoder", "")] + [t.headers[m] for m in t.metrics],
                align=_main_align(t), numeric=[False, False] + [True] * len(t.metrics), note=t.footnote)
    for row in t.rows.to_dict("records"):
        cells = [row["label"], row["decoder"] or "–"]
        for j, m in enumerate(t.metrics):
            cells.append(_cell(row, m, t.interval_kind, t.decimals[m]))
            if row["method"] in t.best[m]:
                grid.bold.add((len(grid.body), 2 + j))
        grid.body.append(cells)
    if t.deltas:
        grid.rule_before = len(grid.body)
    for d in t.deltas:
        # "Δ RankE − Policy-only (std. RL)": the reference one size smaller below (the table's width)
        label = d.label.replace(" − ", " −\n", 1) if paper else d.label
        grid.body.append([label, ""] + [_delta_cell(d.intervals.get(m), t.decimals[m]) for m in t.metrics])
    return grid


def _main_align(t: MainTable) -> list[str]:
    return ["l", "l"] + ["r"] * len(t.metrics)


def main_table_markdown(t: MainTable) -> str:
    return render(main_grid(t), "md")


def main_table_csv(t: MainTable) -> str:
    cols = ["method", "label", "mode", "decoder", "round", "step", "replicates"]
    cols += [f"{m}{s}" for m in t.metrics for s in ("", "_lo", "_hi")]
    out = t.rows[cols].copy()
    out["interval"] = t.interval_kind
    for m in t.metrics:
        out[f"{m}_best"] = out["method"].isin(t.best[m])
    for d in t.deltas:
        rec = {"method": f"delta:{d.method}-{d.reference}", "label": d.label, "interval": stats.NONE}
        for m, iv in d.intervals.items():
            rec.update({m: iv.estimate, f"{m}_lo": iv.lo, f"{m}_hi": iv.hi, "interval": iv.kind,
                        "replicates": iv.n if iv.kind == stats.ACROSS else 1})
        out = pd.concat([out, pd.DataFrame([rec])], ignore_index=True)
    return out.to_csv(index=False)


# ----------------------------------------------------------------------------------------------
# Ablation table: every trained method against the reference RankE method


@dataclass
class AblationTable:
    rows: pd.DataFrame  # method, label, overrides, round, replicates, <m>..., <m>_delta, _delta_lo, _delta_hi, _delta_p
    metrics: list[str]
    decimals: dict[str, int]
    reference: str | None
    reference_label: str
    interval_kind: str
    headers: dict[str, tuple[str, str]]
    footnote: str


def ablation_table(metrics: pd.DataFrame, config_methods: dict, boot: pd.DataFrame | None = None, *,
                   confidence: float = 0.95, ablation_reference: str | None = None,
                   provenance: dict | None = None) -> AblationTable:
    infos = method_infos(config_methods, set(metrics["method"]))
    finals = final_rounds(metrics)
    shown = [m for m in MAIN_METRICS if m in set(metrics.metric)]
    ref = reference(infos, "ablation", ablation_reference)
    summary = stats.summarize(metrics, boot, confidence)
    compared = {n: i for n, i in infos.items() if ref and n != ref and i.mode != "none"}
    # the reference first (its own values; its deltas are empty), then what is compared with it
    listed = {ref: infos[ref], **compared} if compared else {}
    rows = _final_rows(summary, listed, finals, shown) if listed else pd.DataFrame(
        columns=["method", "label", "overrides", "round", "replicates"])
    for m in shown:
        for col in ("_delta", "_delta_lo", "_delta_hi", "_delta_p"):
            rows[f"{m}{col}"] = float("nan")
        rows[f"{m}_delta_kind"] = stats.NONE
        for i, name in enumerate(rows["method"]):
            if name == ref:
                continue
            iv = stats.paired_difference(metrics, boot, name, ref, finals[name], finals[ref], m, confidence)[0]
            rows.loc[i, [f"{m}_delta", f"{m}_delta_lo", f"{m}_delta_hi", f"{m}_delta_p"]] = [iv.estimate, iv.lo,
                                                                                            iv.hi, iv.p]
            rows.loc[i, f"{m}_delta_kind"] = iv.kind
    decimals = {m: decimals_for(m, metrics.loc[metrics.metric == m, "value"]) for m in shown}
    labels = {n: i.label for n, i in infos.items()}
    ref_label = labels.get(ref, "") if ref else ""
    if ref:
        what = (f"Every trained method against {ref_label} ({ref}) at its final round; Δ = method − {ref_label}, "
                "paired over the same prompts and sampling seeds. Overrides: the method's `train` block changes.")
    else:
        what = "No reference RankE method (report.ablation_reference): no comparisons."
    shown_rows = metrics[metrics.method.isin(list(compared) + ([ref] if ref else []))]
    shown_rows = shown_rows.merge(pd.DataFrame({"method": list(finals), "round": list(finals.values())}),
                                  on=["method", "round"])
    footnote = " ".join(x for x in (
        what, protocol_footnote(shown_rows, labels) if len(shown_rows) else "",
        interval_note(shown_rows, boot, confidence, deltas=True) if len(shown_rows) else "",
        provenance_note(provenance)) if x)
    return AblationTable(rows.reset_index(drop=True), shown, decimals, ref, ref_label, _interval_kind(metrics, boot),
                         headers(metrics, shown), footnote)


def ablation_grid(t: AblationTable, *, paper: bool = False) -> Grid:
    """`paper`: the LaTeX version, one column per metric (the method's value, its Δ to the reference
    with the Δ's interval below), the overrides under the method's name; the value's own interval
    is in the other formats."""
    if paper:
        return _ablation_paper_grid(t)
    columns = [("Method", ""), ("Overrides", "")]
    for m in t.metrics:  # in LaTeX the metric spans its two columns
        columns += [(header_text(t.headers[m]), "value"), (header_text(t.headers[m]), "Δ")]
    grid = Grid(columns=columns, align=_ablation_align(t), numeric=[False, False] + [True] * (2 * len(t.metrics)),
                note=t.footnote, flat_header=["Method", "Overrides"] + [h for m in t.metrics
                                                                       for h in (header_text(t.headers[m]), "Δ")])
    for row in t.rows.to_dict("records"):
        label = row["label"] + (" (reference)" if row["method"] == t.reference else "")
        cells = [label, row["overrides"] or "–"]
        for m in t.metrics:
            cells.append(_cell(row, m, t.interval_kind, t.decimals[m]))
            iv = stats.Interval(row[f"{m}_delta"], row[f"{m}_delta_lo"], row[f"{m}_delta_hi"], 0,
                                row[f"{m}_delta_kind"])
            cells.append(_delta_cell(iv, t.decimals[m]))
        grid.body.append(cells)
    return grid


def _ablation_paper_grid(t: AblationTable) -> Grid:
    note = (t.footnote + " In this table: each method's value and, in small type below it, its difference Δ to the "
            "reference with the difference's interval (the value's own interval is in ablation_table.csv).")
    grid = Grid(columns=[("Method", "overrides")] + [t.headers[m] for m in t.metrics],
                align=["l"] + ["r"] * len(t.metrics), numeric=[False] + [True] * len(t.metrics), note=note)
    for row in t.rows.to_dict("records"):
        reference = row["method"] == t.reference
        overrides = (row["overrides"] or "").replace(", ", "\n")  # one override per line
        cells = [row["label"] + ("\nreference" if reference else f"\n{overrides}" if overrides else "")]
        for m in t.metrics:
            value = fmt(row[m], t.decimals[m]) if np.isfinite(row[m]) else "–"
            iv = stats.Interval(row[f"{m}_delta"], row[f"{m}_delta_lo"], row[f"{m}_delta_hi"], 0,
                                row[f"{m}_delta_kind"])
            cells.append(value if reference else f"{value}\n{_delta_cell(iv, t.decimals[m])}")
        grid.body.append(cells)
    return grid


def _ablation_align(t: AblationTable) -> list[str]:
    return ["l", "l"] + ["r"] * (2 * len(t.metrics))


def ablation_table_markdown(t: AblationTable) -> str:
    return render(ablation_grid(t), "md")


def ablation_table_csv(t: AblationTable) -> str:
    return t.rows.assign(reference=t.reference or "").to_csv(index=False)


# ----------------------------------------------------------------------------------------------
# Every paired comparison, at both levels (deltas.csv)


def deltas_frame(metrics: pd.DataFrame, boot: pd.DataFrame | None, comparisons: list[tuple[str, str, str]],
                 confidence: float) -> pd.DataFrame:
    """One row per (table, method, reference, metric, level): the shown interval ("across" with
    >= 2 replicates, else the single replicate's bootstrap) and every replicate's paired bootstrap."""
    finals = final_rounds(metrics)
    rows = []
    for table, method, ref in comparisons:
        for m in BOOTSTRAPPED:
            if m not in set(metrics.metric):
                continue
            shown, within = stats.paired_difference(metrics, boot, method, ref, finals[method], finals[ref], m,
                                                    confidence)
            base = {"table": table, "method": method, "reference": ref, "metric": m,
                    "round": finals[method], "reference_round": finals[ref], "confidence": confidence}
            replicates = sorted(metrics.loc[metrics.method == method, "replicate"].unique())
            if shown.kind == stats.ACROSS:
                rows.append({**base, "level": "across replicates", "replicate": -1, **_iv(shown)})
            for rep, iv in zip(replicates, within):
                rows.append({**base, "level": "within replicate", "replicate": int(rep), **_iv(iv)})
    return pd.DataFrame(rows)


def _iv(iv: stats.Interval) -> dict:
    return {"delta": iv.estimate, "lo": iv.lo, "hi": iv.hi, "p_value": iv.p, "n": iv.n, "interval": iv.kind,
            "significant": iv.excludes_zero}


def comparisons(metrics: pd.DataFrame, config_methods: dict, *, rl_reference: str | None = None,
                ablation_reference: str | None = None) -> list[tuple[str, str, str]]:
    """(table, method, reference) of every delta the tables show, and of every trained method of the
    main table against the base model ("vs base": did training move it at all?)."""
    infos = method_infos(config_methods, set(metrics["method"]))
    out = []
    base = next((n for n, i in infos.items() if i.mode == "none"), None)
    if base:
        out += [("vs base", n, base) for n, i in infos.items() if i.mode not in (None, "none") and not i.ablation]
    rl = reference(infos, "rl", rl_reference)
    if rl:
        out += [("main", n, rl) for n, i in infos.items() if i.mode == "ranke" and not i.ablation]
    ab = reference(infos, "ablation", ablation_reference)
    if ab:
        out += [("ablation", n, ab) for n, i in infos.items() if n != ab and i.mode != "none"]
    return out


# ----------------------------------------------------------------------------------------------
# Per-round table


@dataclass
class RoundsTable:
    rows: pd.DataFrame  # method, label, round, step, replicates, <m>, <m>_lo, <m>_hi ...
    metrics: list[str]
    decimals: dict[str, int]
    interval_kind: str
    headers: dict[str, tuple[str, str]]
    footnote: str


# bookkeeping that belongs in the CSV, not in a paper table
_ROUNDS_TEXT_HIDDEN = ("n_samples", "wall_time_s", "code_kl_real_floor", "code_entropy_bits_real")


def rounds_table(metrics: pd.DataFrame, config_methods: dict, boot: pd.DataFrame | None = None, *,
                 confidence: float = 0.95) -> RoundsTable:
    infos = method_infos(config_methods, set(metrics["method"]))
    w = summary_wide(stats.summarize(metrics, boot, confidence))
    order = {m: i for i, m in enumerate(infos)}
    w = w.sort_values(["method", "round"], key=lambda s: s.map(order) if s.name == "method" else s)
    w.insert(1, "label", w["method"].map(lambda m: infos[m].label))
    shown = metric_order(metrics["metric"].unique())
    decimals = {m: decimals_for(m, metrics.loc[metrics.metric == m, "value"]) for m in shown}
    labels = {n: i.label for n, i in infos.items()}
    footnote = " ".join(x for x in (protocol_footnote(metrics, labels),
                                    interval_note(metrics, boot, confidence, deltas=False)) if x)
    return RoundsTable(w.reset_index(drop=True), shown, decimals, _interval_kind(metrics, boot),
                       headers(metrics, shown), footnote)


def rounds_grid(t: RoundsTable, *, paper: bool = False) -> Grid:
    """`paper`: the LaTeX version, without the columns whose printed value is the same in every
    row (they are named, with their value, in the note; every column is in the CSV)."""
    shown = [m for m in t.metrics if m not in _ROUNDS_TEXT_HIDDEN]
    cells_of = {m: [_cell(row, m, t.interval_kind, t.decimals[m]) for row in t.rows.to_dict("records")]
                for m in shown}
    note = t.footnote
    if paper and len(t.rows) > 1:
        constant = [m for m in shown if len(set(cells_of[m])) == 1]
        shown = [m for m in shown if m not in constant]
        if constant:
            note += " Same in every row: " + "; ".join(f"{header_text(t.headers[m])} {cells_of[m][0]}"
                                                     for m in constant) + "."
    if paper:  # round and step stacked in one column
        lead = [("Method", ""), ("Round", "(step)")]
    else:
        lead = [("Method", ""), ("Round", ""), ("Step", "")]
    grid = Grid(columns=lead + [t.headers[m] for m in shown], align=["l"] + ["r"] * (len(lead) - 1 + len(shown)),
                numeric=[False] + [True] * (len(lead) - 1 + len(shown)), note=note)
    for i, row in enumerate(t.rows.to_dict("records")):
        r, step = int(row["round"]), int(row["step"])
        lead_cells = [f"{r}\n({step})"] if paper else [str(r), str(step)]
        grid.body.append([row["label"], *lead_cells] + [cells_of[m][i] for m in shown])
    return grid


def rounds_table_markdown(t: RoundsTable) -> str:
    return render(rounds_grid(t), "md")


def rounds_table_csv(t: RoundsTable) -> str:
    cols = ["method", "label", "round", "step", "replicates"] + [f"{m}{s}" for m in t.metrics
                                                                 for s in ("", "_lo", "_hi")]
    return t.rows[[c for c in cols if c in t.rows.columns]].assign(interval=t.interval_kind).to_csv(index=False)


# ----------------------------------------------------------------------------------------------
# Rendering


TABLES = ("main_table", "ablation_table", "rounds_table")
TABLE_FILES = ("md", "tex", "note.tex", "csv", "html")  # the suffixes of each table's files


def table_files(kind: str) -> dict:
    """The files of one table (TABLES): {suffix (TABLE_FILES): table -> text}. LaTeX is the paper
    version of the grid (see each *_grid), its note a file of its own."""
    grid_of, title, csv = {
        "main_table": (main_grid, "Main table", main_table_csv),
        "ablation_table": (ablation_grid, "Ablation table", ablation_table_csv),
        "rounds_table": (rounds_grid, "Per-round table", rounds_table_csv),
    }[kind]
    return {
        "md": lambda t: render(grid_of(t), "md"),
        "tex": lambda t: render(grid_of(t, paper=True), "tex"),
        "note.tex": lambda t: latex_note(grid_of(t, paper=True).note),
        "csv": csv,
        "html": lambda t: render(grid_of(t), "html", title=title),
    }


@dataclass
class Grid:
    """One table as Unicode text, before any format: render() makes Markdown, LaTeX or HTML of it."""
    columns: list[tuple[str, str]]  # (header, second header line: unit, feature space, value / Δ)
    align: list[str]
    numeric: list[bool]  # LaTeX: a minus sign, the interval one size smaller
    note: str
    body: list[list[str]] = field(default_factory=list)
    bold: set[tuple[int, int]] = field(default_factory=set)  # (row, column)
    rule_before: int | None = None  # a rule above this body row (the Δ rows)
    flat_header: list[str] | None = None  # one-line headers (Markdown, HTML); default "header (unit)"

    def header_line(self) -> list[str]:
        return self.flat_header or [header_text(c) for c in self.columns]


def render(grid: Grid, kind: str, *, title: str = "") -> str:
    """Markdown (+ its note), a LaTeX tabular (its note is latex_note's file) or a self-contained
    HTML page."""
    if kind == "md":
        body = [[f"**{c}**" if (i, j) in grid.bold else c for j, c in enumerate(r)] for i, r in enumerate(grid.body)]
        return markdown_table(grid.header_line(), body, grid.align) + "\n" + grid.note + "\n"
    if kind == "tex":
        return latex_tabular(grid)
    body = [[f"<b>{html.escape(c)}</b>" if (i, j) in grid.bold else html.escape(c) for j, c in enumerate(r)]
            for i, r in enumerate(grid.body)]
    return html_table(title, [html.escape(h) for h in grid.header_line()], body, grid.align, grid.note)


def markdown_table(header: list[str], body: list[list[str]], align: list[str]) -> str:
    sep = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep[a] for a in align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def latex_tabular(grid: Grid) -> str:
    """A booktabs tabular through pandas' Styler (layout, header rows, bold cells), every cell and
    header escaped by latex_escape / latex_number. Only the tabular: it goes inside a table float or
    \resizebox as it is; its note is a separate file (latex_note)."""
    two_lines = any(unit for _, unit in grid.columns)
    columns = pd.MultiIndex.from_tuples(grid.columns) if two_lines else pd.Index([h for h, _ in grid.columns])
    frame = pd.DataFrame(grid.body, columns=columns) if grid.body else pd.DataFrame(columns=columns)
    styler = frame.style.hide(axis="index")
    for j, numeric in enumerate(grid.numeric):
        styler = styler.format(lambda x, n=numeric: latex_cell(x, n), subset=frame.columns[[j]])
    styler = styler.format_index(latex_escape, axis=1, level=list(range(columns.nlevels)))
    if grid.bold:
        css = np.full(frame.shape, "", dtype=object)
        for i, j in grid.bold:
            css[i, j] = "font-weight: bold"
        styler = styler.apply(lambda d: pd.DataFrame(css, index=d.index, columns=d.columns), axis=None)
    # no padding outside the first and last columns (booktabs style): 12 pt of a page's width
    column_format = "@{}" + "".join(grid.align) + "@{}"
    tex = styler.to_latex(hrules=True, column_format=column_format, convert_css=True, multicol_align="c")
    lines = tex.rstrip("\n").split("\n")
    if grid.rule_before is not None:
        first_body = lines.index(r"\midrule") + 1
        lines.insert(first_body + grid.rule_before, r"\midrule")
    return "% generated by `python -m ranke report`; needs \\usepackage{booktabs}\n" + "\n".join(lines) + "\n"


def latex_note(note: str) -> str:
    r"""The table's note for a caption or a footnote, e.g. \caption{... \protect\input{main_table.note.tex}}."""
    return latex_escape(note) + "%\n"


_HTML_STYLE = (
    "body{font-family:sans-serif;font-size:14px;margin:1em}"
    "table{border-collapse:collapse;border-top:2px solid #000;border-bottom:2px solid #000}"
    "th{border-bottom:1px solid #000}th,td{padding:3px 10px}td.r,th.r{text-align:right}"
    "p.note{max-width:60em;font-size:12px;color:#333}"
)


def html_table(title: str, header: list[str], body: list[list[str]], align: list[str], note: str = "") -> str:
    """A self-contained page (what the Snakemake HTML report shows inline)."""
    cls = lambda a: ' class="r"' if a == "r" else ""  # noqa: E731
    rows = ["<tr>" + "".join(f"<th{cls(a)}>{h}</th>" for h, a in zip(header, align)) + "</tr>"]  # escaped
    rows += ["<tr>" + "".join(f"<td{cls(a)}>{c}</td>" for c, a in zip(cells, align)) + "</tr>" for cells in body]
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
        f"<style>{_HTML_STYLE}</style></head><body>\n<table>\n" + "\n".join(rows) + "\n</table>\n"
        + (f'<p class="note">{html.escape(note)}</p>\n' if note else "") + "</body></html>\n"
    )



__all__ = [
    "METRICS", "MAIN_METRICS", "METHOD_LABELS", "MethodInfo", "MainTable", "AblationTable", "RoundsTable",
    "method_infos", "load_metrics", "load_bootstrap", "load_train_logs", "final_rounds", "summary_wide",
    "Grid", "render", "TABLES", "TABLE_FILES", "table_files", "latex_escape", "latex_number", "latex_cell", "latex_note", "headers",
    "header_text", "fid_space", "main_table", "main_grid", "main_table_markdown", "main_table_csv",
    "ablation_table", "ablation_grid", "ablation_table_markdown", "ablation_table_csv", "rounds_table",
    "rounds_grid", "rounds_table_markdown", "rounds_table_csv", "deltas_frame", "comparisons",
    "protocol_footnote", "protocol_facts",
]
