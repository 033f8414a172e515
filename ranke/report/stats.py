"""Intervals and paired tests for the report: across replicates and within each replicate.

Two sources of variation, two levels:
* across replicates (config `replicates`: each a training seed and an evaluation sampling seed):
  the mean of the per-replicate values with a Student-t interval, t_{(1+c)/2, R-1} s / sqrt(R);
  a difference between two methods is paired within each replicate (same prompts, same sampling
  seeds), so its interval is the t-interval of the R per-replicate differences and its p-value
  a two-sided one-sample t-test of those differences against 0;
* within one replicate (its evaluation prompts): the bootstrap resamples of the score stage
  (ranke.metrics.bootstrap), the same resamples for every method of the replicate, so a
  difference is evaluated resample by resample (paired bootstrap). Intervals are bias-corrected
  percentile intervals (Efron 1981: percentiles shifted by z0 = Phi^-1(share of resamples below
  the estimate), which matters for FID, whose resamples are biased upwards by the repeated
  images); the p-value is the smallest 1 - c whose bias-corrected interval reaches 0.

Tables show the across-replicate interval when there are at least two replicates and the
within-replicate bootstrap interval for a single replicate (then training-seed variation is not
part of the interval, and the footnote says so). scipy supplies the t and normal quantiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

ACROSS, WITHIN, NONE = "t across replicates", "bootstrap within replicate", "none"
# The resamples do not cover the estimate: a plug-in statistic of a histogram or a covariance
# (code-KL, FID) is biased upwards on a resample of repeated images, at small N by more than the
# spread of the resamples. The bias correction then extrapolates beyond the resamples, so no
# within-replicate interval is given (a paired difference, whose biases largely cancel, usually
# still has one).
BIASED = "bootstrap does not cover the estimate"


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float
    n: int  # replicates (across) or resamples (within)
    kind: str  # ACROSS | WITHIN | NONE
    p: float = float("nan")  # two-sided p-value of "= 0" (differences only)

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    @property
    def excludes_zero(self) -> bool:
        return bool(np.isfinite(self.lo) and np.isfinite(self.hi) and (self.lo > 0 or self.hi < 0))


def t_interval(values, confidence: float = 0.95) -> Interval:
    """Mean and Student-t interval of independent values (NaN bounds for fewer than two)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0, NONE)
    mean = float(v.mean())
    if n < 2:
        return Interval(mean, float("nan"), float("nan"), n, NONE)
    sd = float(v.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * sd / math.sqrt(n)
    if sd == 0:
        p = 1.0 if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    return Interval(mean, mean - half, mean + half, n, ACROSS, p)


def _z0(point: float, boot: np.ndarray) -> float:
    """Bias-correction constant: Phi^-1 of the share of resamples below the estimate (ties count
    half), clipped so that a one-sided bootstrap distribution stays finite."""
    from scipy import stats

    b = len(boot)
    share = (np.sum(boot < point) + 0.5 * np.sum(boot == point)) / b
    share = min(max(share, 0.5 / b), 1 - 0.5 / b)
    return float(stats.norm.ppf(share))


def bootstrap_interval(point: float, boot, confidence: float = 0.95) -> Interval:
    """Bias-corrected percentile interval of `point` from its bootstrap resamples `boot`, and the
    two-sided p-value of "= 0" that inverts the same interval; kind BIASED (no interval) when the
    estimate lies outside the central `confidence` share of the resamples."""
    from scipy import stats

    b = np.asarray(boot, dtype=np.float64)
    b = b[np.isfinite(b)]
    if len(b) < 2 or not np.isfinite(point):
        return Interval(float(point), float("nan"), float("nan"), len(b), NONE)
    alpha = 1 - confidence
    share = (np.sum(b < point) + 0.5 * np.sum(b == point)) / len(b)
    if not alpha / 2 <= share <= 1 - alpha / 2:
        return Interval(float(point), float("nan"), float("nan"), len(b), BIASED)
    z0 = _z0(point, b)
    q = stats.norm.cdf(2 * z0 + stats.norm.ppf([alpha / 2, 1 - alpha / 2]))
    lo, hi = np.quantile(b, q)
    # the level at which 0 is an end of the interval: G(0) = Phi(2 z0 +- z_{p/2})
    share0 = (np.sum(b < 0) + 0.5 * np.sum(b == 0)) / len(b)
    share0 = min(max(share0, 0.5 / len(b)), 1 - 0.5 / len(b))
    p = float(min(1.0, 2 * stats.norm.sf(abs(stats.norm.ppf(share0) - 2 * z0))))
    return Interval(float(point), float(lo), float(hi), len(b), WITHIN, p)


# ----------------------------------------------------------------------------------------------
# Tables of the scored runs


def per_replicate(metrics: pd.DataFrame, boot: pd.DataFrame | None, confidence: float) -> pd.DataFrame:
    """One row per (method, replicate, round, metric): the value and its within-replicate
    bootstrap interval (NaN where the metric has no resamples)."""
    rows = []
    groups = boot.groupby(["method", "replicate", "round", "metric"])["value"] if boot is not None and len(boot) \
        else None
    index = set(groups.groups) if groups is not None else set()
    for r in metrics.itertuples(index=False):
        key = (r.method, int(r.replicate), int(r.round), r.metric)
        iv = bootstrap_interval(r.value, groups.get_group(key).to_numpy(), confidence) if key in index else None
        rows.append({"method": r.method, "replicate": int(r.replicate), "round": int(r.round), "step": int(r.step),
                     "metric": r.metric, "value": float(r.value),
                     "boot_lo": iv.lo if iv else float("nan"), "boot_hi": iv.hi if iv else float("nan"),
                     "resamples": iv.n if iv else 0, "interval": iv.kind if iv else NONE})
    return pd.DataFrame(rows)


def summarize(metrics: pd.DataFrame, boot: pd.DataFrame | None, confidence: float) -> pd.DataFrame:
    """One row per (method, round, metric): mean over replicates and the interval the tables
    show: t across replicates (>= 2 replicates) or the bootstrap of the single replicate."""
    reps = per_replicate(metrics, boot, confidence)
    rows = []
    for (method, rnd, metric), g in reps.groupby(["method", "round", "metric"], sort=False):
        if len(g) >= 2:
            iv = t_interval(g["value"], confidence)
        else:
            one = g.iloc[0]
            iv = Interval(float(one.value), float(one.boot_lo), float(one.boot_hi), int(one.resamples),
                          str(one.interval))
        rows.append({"method": method, "round": int(rnd), "step": int(g["step"].max()), "metric": metric,
                     "mean": iv.estimate, "lo": iv.lo, "hi": iv.hi, "replicates": len(g), "interval": iv.kind,
                     "n": iv.n})
    return pd.DataFrame(rows)


def paired_difference(metrics: pd.DataFrame, boot: pd.DataFrame | None, a: str, b: str, round_a: int,
                      round_b: int, metric: str, confidence: float) -> tuple[Interval, list[Interval]]:
    """a minus b on `metric` (a at round_a, b at round_b), paired within each replicate.

    Returns (the interval the tables show, the per-replicate paired-bootstrap intervals). The
    shown interval is the t-interval of the per-replicate differences with >= 2 replicates, else
    the single replicate's paired bootstrap. Raises when the two runs of a replicate were scored
    on different prompts or sampling seeds (nothing to pair)."""
    va = metrics[(metrics.method == a) & (metrics["round"] == round_a) & (metrics.metric == metric)]
    vb = metrics[(metrics.method == b) & (metrics["round"] == round_b) & (metrics.metric == metric)]
    joined = va.merge(vb, on="replicate", suffixes=("_a", "_b"))
    within = []
    for r in joined.itertuples(index=False):
        delta = float(r.value_a - r.value_b)
        ba = _resamples(boot, a, r.replicate, round_a, metric)
        bb = _resamples(boot, b, r.replicate, round_b, metric)
        if ba is None or bb is None:
            within.append(Interval(delta, float("nan"), float("nan"), 0, NONE))
            continue
        if ba[1] != bb[1]:
            raise ValueError(f"cannot pair {a} round {round_a} with {b} round {round_b} in replicate "
                             f"{r.replicate}: scored on different prompts or sampling seeds "
                             f"(sample sets {ba[1]} vs {bb[1]})")
        k = min(len(ba[0]), len(bb[0]))
        within.append(bootstrap_interval(delta, ba[0][:k] - bb[0][:k], confidence))
    deltas = [iv.estimate for iv in within]
    if len(deltas) >= 2:
        shown = t_interval(deltas, confidence)
    elif within:
        shown = within[0]
    else:
        shown = Interval(float("nan"), float("nan"), float("nan"), 0, NONE)
    return shown, within


def _resamples(boot: pd.DataFrame | None, method: str, replicate: int, rnd: int, metric: str):
    if boot is None or not len(boot):
        return None
    g = boot[(boot.method == method) & (boot.replicate == replicate) & (boot["round"] == rnd)
             & (boot.metric == metric)].sort_values("resample")
    if not len(g):
        return None
    return g["value"].to_numpy(np.float64), str(g["sample_set"].iloc[0])
