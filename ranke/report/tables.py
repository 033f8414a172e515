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
    label: str  # Markdown / CSV-header-free label
    latex: str
    better: str | None = None  # "max" | "min" | None (informational)
    integer: bool = False


METRICS: dict[str, MetricSpec] = {
    "clip_score": MetricSpec("CLIP ↑", r"CLIP $\uparrow$", "max"),
    "fid": MetricSpec("FID ↓", r"FID $\downarrow$", "min"),
    "code_kl": MetricSpec("code-KL ↓ (nats)", r"code-KL $\downarrow$ (nats)", "min"),
    "reward": MetricSpec("reward ↑", r"Reward $\uparrow$", "max"),
    "code_kl_real_floor": MetricSpec("code-KL real floor (nats)", "code-KL real floor (nats)"),
    "code_entropy_bits": MetricSpec("code entropy (bits)", "code entropy (bits)"),
    "code_entropy_bits_real": MetricSpec("real code entropy (bits)", "real code entropy (bits)"),
    "codebook_usage": MetricSpec("codebook usage", "codebook usage"),
    "n_samples": MetricSpec("samples", "samples", integer=True),
    "wall_time_s": MetricSpec("score time (s)", "score time (s)"),
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
    return METRICS.get(name, MetricSpec(name, latex_escape(name)))


def metric_order(names) -> list[str]:
    """Known metrics in the canonical order, then any others alphabetically."""
    names = set(names)
    return [m for m in METRICS if m in names] + sorted(names - set(METRICS))


def fid_header(metrics: pd.DataFrame, kind: str) -> str:
    """The FID column header naming its feature space, e.g. "FID ↓ (Inception)", from the score
    stage's label ("FID (Inception)", "FID (demo CLIP features)")."""
    labels = set()
    for row in metrics[metrics.metric == "fid"].itertuples(index=False):
        label = _details(row).get("label")
        if label and "(" in label:
            labels.add(label[label.index("(") + 1: label.rindex(")")])
    space = f" ({labels.pop()})" if len(labels) == 1 else ""
    spec = METRICS["fid"]
    return (spec.latex if kind == "tex" else _escape(spec.label, kind)) + _escape(space, kind)


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
        elif ch == "−":
            out.append("$-$")
        elif ch == "×":
            out.append(r"$\times$")
        elif ch == "Δ":
            out.append(r"$\Delta$")
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
    headers: dict[str, dict[str, str]]  # kind -> metric -> header text
    footnote: str


def _interval_kind(metrics: pd.DataFrame, boot: pd.DataFrame | None) -> str:
    if metrics["replicate"].nunique() >= 2:
        return stats.ACROSS
    return stats.WITHIN if boot is not None and len(boot) else stats.NONE


def _headers(metrics: pd.DataFrame, shown: list[str]) -> dict[str, dict[str, str]]:
    out = {}
    for kind in ("md", "tex", "html"):
        out[kind] = {m: fid_header(metrics, kind) if m == "fid" else _header_label(m, kind) for m in shown}
    return out


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
                     _headers(metrics, shown), footnote)


def _cell(row: dict, m: str, kind_iv: str, decimals: int) -> str:
    return fmt_interval(row[m], row[f"{m}_lo"], row[f"{m}_hi"], kind_iv, decimals)


def _delta_cell(iv: stats.Interval | None, decimals: int) -> str:
    if iv is None:
        return "–"
    text = fmt_interval(iv.estimate, iv.lo, iv.hi, iv.kind, decimals, signed=True)
    return text + (f" {SIGNIFICANT}" if iv.excludes_zero else "")


def _main_cells(t: MainTable, kind: str) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "Decoder"] + [t.headers[kind][m] for m in t.metrics]
    body = []
    for row in t.rows.to_dict("records"):
        cells = [_escape(row["label"], kind), _escape(row["decoder"] or "–", kind)]
        for m in t.metrics:
            text = _number(_cell(row, m, t.interval_kind, t.decimals[m]), kind)
            if row["method"] in t.best[m]:
                text = _bold(text, kind)
            cells.append(text)
        body.append(cells)
    for d in t.deltas:
        cells = [_escape(d.label, kind), ""]
        cells += [_number(_delta_cell(d.intervals.get(m), t.decimals[m]), kind) for m in t.metrics]
        body.append(cells)
    return header, body


def _main_align(t: MainTable) -> list[str]:
    return ["l", "l"] + ["r"] * len(t.metrics)


def main_table_markdown(t: MainTable) -> str:
    return render(*_main_cells(t, "md"), _main_align(t), t.footnote, "md")


def main_table_latex(t: MainTable) -> str:
    return render(*_main_cells(t, "tex"), _main_align(t), t.footnote, "tex",
                  rule_before=len(t.rows) if t.deltas else None)


def main_table_html(t: MainTable) -> str:
    return render(*_main_cells(t, "html"), _main_align(t), t.footnote, "html", title="Main table")


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
    headers: dict[str, dict[str, str]]
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
                         _headers(metrics, shown), footnote)


def _ablation_cells(t: AblationTable, kind: str) -> tuple[list[str], list[list[str]]]:
    header = ["Method", "Overrides"]
    for m in t.metrics:
        header += [t.headers[kind][m], _escape("Δ", kind)]
    body = []
    for row in t.rows.to_dict("records"):
        label = row["label"] + (" (reference)" if row["method"] == t.reference else "")
        cells = [_escape(label, kind), _escape(row["overrides"] or "–", kind)]
        for m in t.metrics:
            cells.append(_number(_cell(row, m, t.interval_kind, t.decimals[m]), kind))
            iv = stats.Interval(row[f"{m}_delta"], row[f"{m}_delta_lo"], row[f"{m}_delta_hi"], 0,
                                row[f"{m}_delta_kind"])
            cells.append(_number(_delta_cell(iv, t.decimals[m]), kind))
        body.append(cells)
    return header, body


def _ablation_align(t: AblationTable) -> list[str]:
    return ["l", "l"] + ["r"] * (2 * len(t.metrics))


def ablation_table_markdown(t: AblationTable) -> str:
    return render(*_ablation_cells(t, "md"), _ablation_align(t), t.footnote, "md")


def ablation_table_latex(t: AblationTable) -> str:
    return render(*_ablation_cells(t, "tex"), _ablation_align(t), t.footnote, "tex")


def ablation_table_html(t: AblationTable) -> str:
    return render(*_ablation_cells(t, "html"), _ablation_align(t), t.footnote, "html", title="Ablation table")


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
    return RoundsTable(w.reset_index(drop=True), shown, decimals, _interval_kind(metrics, boot), footnote)


def _rounds_cells(t: RoundsTable, kind: str) -> tuple[list[str], list[list[str]]]:
    shown = [m for m in t.metrics if m not in _ROUNDS_TEXT_HIDDEN]
    header = ["Method", "Round", "Step"] + [_header_label(m, kind) for m in shown]
    body = []
    for row in t.rows.to_dict("records"):
        cells = [_escape(row["label"], kind), str(int(row["round"])), str(int(row["step"]))]
        cells += [_number(_cell(row, m, t.interval_kind, t.decimals[m]), kind) for m in shown]
        body.append(cells)
    return header, body


def _rounds_align(t: RoundsTable) -> list[str]:
    return ["l", "r", "r"] + ["r"] * len([m for m in t.metrics if m not in _ROUNDS_TEXT_HIDDEN])


def rounds_table_markdown(t: RoundsTable) -> str:
    return render(*_rounds_cells(t, "md"), _rounds_align(t), t.footnote, "md")


def rounds_table_latex(t: RoundsTable) -> str:
    return render(*_rounds_cells(t, "tex"), _rounds_align(t), t.footnote, "tex")


def rounds_table_html(t: RoundsTable) -> str:
    return render(*_rounds_cells(t, "html"), _rounds_align(t), t.footnote, "html", title="Per-round table")


def rounds_table_csv(t: RoundsTable) -> str:
    cols = ["method", "label", "round", "step", "replicates"] + [f"{m}{s}" for m in t.metrics
                                                                 for s in ("", "_lo", "_hi")]
    return t.rows[[c for c in cols if c in t.rows.columns]].assign(interval=t.interval_kind).to_csv(index=False)


# ----------------------------------------------------------------------------------------------
# Rendering


def _number(text: str, kind: str) -> str:
    return _latex_number(text) if kind == "tex" else text


def _bold(text: str, kind: str) -> str:
    return {"md": f"**{text}**", "tex": rf"\textbf{{{text}}}", "html": f"<b>{text}</b>"}[kind]


def _escape(text: str, kind: str) -> str:
    return {"md": str, "tex": latex_escape, "html": html.escape}[kind](text)


def _header_label(metric: str, kind: str) -> str:
    spec = metric_spec(metric)
    return spec.latex if kind == "tex" else _escape(spec.label, kind)


def render(header: list[str], body: list[list[str]], align: list[str], note: str, kind: str, *,
           title: str = "", rule_before: int | None = None) -> str:
    """One table as Markdown (+ its note), a LaTeX tabular (+ note) or a self-contained HTML page."""
    if kind == "md":
        return markdown_table(header, body, align) + "\n" + note + "\n"
    if kind == "tex":
        return latex_tabular(header, body, align, note, rule_before=rule_before)
    return html_table(title, header, body, align, note)


def markdown_table(header: list[str], body: list[list[str]], align: list[str]) -> str:
    sep = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep[a] for a in align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    return "\n".join(lines) + "\n"


def latex_tabular(header: list[str], body: list[list[str]], align: list[str], note: str = "", *,
                  rule_before: int | None = None) -> str:
    """booktabs tabular; `rule_before`: a \\midrule before that body row (the delta rows)."""
    lines = [
        "% generated by `python -m ranke report`; needs \\usepackage{booktabs}",
        "\\begin{tabular}{" + "".join(align) + "}",
        "\\toprule",
        " & ".join(header) + r" \\",
        "\\midrule",
    ]
    for i, cells in enumerate(body):
        if rule_before is not None and i == rule_before:
            lines.append("\\midrule")
        lines.append(" & ".join(cells) + r" \\")
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



__all__ = [
    "METRICS", "MAIN_METRICS", "METHOD_LABELS", "MethodInfo", "MainTable", "AblationTable", "RoundsTable",
    "method_infos", "load_metrics", "load_bootstrap", "load_train_logs", "final_rounds", "summary_wide",
    "main_table", "main_table_markdown", "main_table_latex", "main_table_csv", "main_table_html",
    "ablation_table", "ablation_table_markdown", "ablation_table_latex", "ablation_table_csv",
    "ablation_table_html", "rounds_table", "rounds_table_markdown", "rounds_table_latex", "rounds_table_csv",
    "rounds_table_html", "deltas_frame", "comparisons", "protocol_footnote", "protocol_facts",
]
