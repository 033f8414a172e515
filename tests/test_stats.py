"""Intervals and paired tests (ranke.report.stats) and the score stage's bootstrap resamples
(ranke.metrics.bootstrap): each against a direct computation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from ranke.metrics import bootstrap as bs
from ranke.metrics.fid import fid_statistics, frechet_distance
from ranke.metrics.shift import code_histogram
from ranke.report import stats

# ----------------------------------------------------------------------------------------------
# Across replicates: Student-t


def test_t_interval_is_students():
    v = np.array([52.1, 53.4, 51.7])
    iv = stats.t_interval(v, 0.95)
    half = sps.t.ppf(0.975, 2) * v.std(ddof=1) / np.sqrt(3)
    assert iv.estimate == pytest.approx(v.mean()) and iv.kind == stats.ACROSS and iv.n == 3
    assert (iv.lo, iv.hi) == pytest.approx((v.mean() - half, v.mean() + half))
    assert iv.p == pytest.approx(sps.ttest_1samp(v, 0).pvalue)
    one = stats.t_interval([1.0])
    assert one.kind == stats.NONE and np.isnan(one.lo) and one.estimate == 1.0


def test_t_interval_excludes_zero_iff_p_below_level():
    rng = np.random.default_rng(0)
    for _ in range(200):
        v = rng.normal(rng.uniform(-1, 1), 1, size=rng.integers(2, 6))
        iv = stats.t_interval(v, 0.95)
        assert iv.excludes_zero == (iv.p < 0.05)


# ----------------------------------------------------------------------------------------------
# Within a replicate: bias-corrected percentile bootstrap


def test_bootstrap_interval_is_the_percentile_interval_without_bias():
    rng = np.random.default_rng(1)
    boot = rng.normal(3.0, 1.0, 4001)
    point = float(np.median(boot))  # z0 = 0: the BC interval is the plain percentile interval
    iv = stats.bootstrap_interval(point, boot, 0.9)
    assert (iv.lo, iv.hi) == pytest.approx(tuple(np.quantile(boot, [0.05, 0.95])), rel=1e-9)
    assert iv.kind == stats.WITHIN and iv.n == 4001


def test_bootstrap_interval_corrects_a_biased_bootstrap():
    """FID-like: every resample is biased upwards. The percentile interval would miss the estimate;
    the bias-corrected one is shifted down to cover it."""
    rng = np.random.default_rng(2)
    boot = 10.0 + 0.8 + rng.normal(0, 0.5, 2000)  # resamples 0.8 above the estimate
    iv = stats.bootstrap_interval(10.0, boot, 0.95)
    lo_pct, hi_pct = np.quantile(boot, [0.025, 0.975])
    assert (lo_pct + hi_pct) / 2 > 10.7  # the plain percentile interval is centred on the biased resamples
    assert iv.lo < lo_pct and iv.hi < hi_pct and iv.lo < 10.0 < iv.hi and (iv.lo + iv.hi) / 2 < 10.0


def test_no_bootstrap_interval_when_the_resamples_miss_the_estimate():
    """code-KL at small N: every resample of repeated images is above the plug-in estimate."""
    boot = np.linspace(0.061, 0.098, 1000)
    iv = stats.bootstrap_interval(0.0578, boot, 0.95)
    assert iv.kind == stats.BIASED and np.isnan(iv.lo) and np.isnan(iv.hi) and not iv.excludes_zero
    assert stats.bootstrap_interval(0.0578, np.r_[boot[:-30], np.full(30, 0.05)], 0.95).kind == stats.WITHIN


def test_bootstrap_p_value_inverts_the_interval():
    rng = np.random.default_rng(3)
    for _ in range(100):
        boot = rng.normal(rng.uniform(-0.3, 0.3), 0.1, 999)
        point = float(boot.mean() + rng.normal(0, 0.02))
        iv = stats.bootstrap_interval(point, boot, 0.95)
        if abs(iv.p - 0.05) > 0.01:  # away from the boundary, where quantile interpolation decides
            assert iv.excludes_zero == (iv.p < 0.05), (iv, point)


# ----------------------------------------------------------------------------------------------
# Paired differences


def _metrics_and_boot(values: dict, boot: dict, sample_sets: dict | None = None):
    """values {(method, replicate): v} of metric m at round 1; boot {(method, replicate): array}."""
    metrics = pd.DataFrame([{"method": m, "replicate": r, "round": 1, "step": 10, "metric": "m", "value": v}
                            for (m, r), v in values.items()])
    rows = []
    for (m, r), arr in boot.items():
        rows.append(pd.DataFrame({"method": m, "replicate": r, "round": 1, "metric": "m",
                                  "resample": np.arange(len(arr)), "value": arr,
                                  "sample_set": (sample_sets or {}).get((m, r), f"set{r}")}))
    return metrics, pd.concat(rows, ignore_index=True)


def test_paired_difference_across_replicates_is_the_t_interval_of_the_differences():
    values = {("a", 0): 5.0, ("b", 0): 4.0, ("a", 1): 6.0, ("b", 1): 4.5, ("a", 2): 5.5, ("b", 2): 4.7}
    rng = np.random.default_rng(4)
    boot = {k: v + rng.normal(0, 0.1, 300) for k, v in values.items()}
    metrics, b = _metrics_and_boot(values, boot)
    shown, within = stats.paired_difference(metrics, b, "a", "b", 1, 1, "m", 0.95)
    assert shown.kind == stats.ACROSS and shown.n == 3
    d = [1.0, 1.5, 0.8]
    assert shown.estimate == pytest.approx(np.mean(d))
    assert shown.p == pytest.approx(sps.ttest_1samp(d, 0).pvalue)
    # within each replicate: the bootstrap of the resample-by-resample differences
    for rep, iv in zip((0, 1, 2), within):
        ref = stats.bootstrap_interval(d[rep], boot[("a", rep)] - boot[("b", rep)], 0.95)
        assert (iv.estimate, iv.lo, iv.hi, iv.p) == pytest.approx((ref.estimate, ref.lo, ref.hi, ref.p))


def test_pairing_removes_the_shared_noise():
    """Two methods scored on the same prompts share the prompts' noise: the paired interval of
    their difference is much narrower than either method's own interval."""
    rng = np.random.default_rng(5)
    shared = rng.normal(0, 1.0, 1000)  # prompt-set noise, the same resamples for both methods
    values = {("a", 0): 10.3, ("b", 0): 10.0}
    boot = {("a", 0): 10.3 + shared + rng.normal(0, 0.05, 1000), ("b", 0): 10.0 + shared + rng.normal(0, 0.05, 1000)}
    metrics, b = _metrics_and_boot(values, boot)
    shown, _ = stats.paired_difference(metrics, b, "a", "b", 1, 1, "m", 0.95)
    own = stats.bootstrap_interval(10.3, boot[("a", 0)], 0.95)
    assert shown.kind == stats.WITHIN and shown.excludes_zero
    assert shown.hi - shown.lo < 0.2 * (own.hi - own.lo) and not (own.lo > 10.0)


def test_pairing_refuses_runs_on_different_prompts():
    values = {("a", 0): 1.0, ("b", 0): 0.5}
    boot = {k: np.full(10, v) for k, v in values.items()}
    metrics, b = _metrics_and_boot(values, boot, sample_sets={("a", 0): "x", ("b", 0): "y"})
    with pytest.raises(ValueError, match="different prompts or sampling seeds"):
        stats.paired_difference(metrics, b, "a", "b", 1, 1, "m", 0.95)


def test_summarize_uses_t_with_replicates_and_the_bootstrap_with_one():
    values = {("a", 0): 1.0, ("a", 1): 2.0}
    boot = {k: v + np.linspace(-0.1, 0.1, 101) for k, v in values.items()}
    metrics, b = _metrics_and_boot(values, boot)
    two = stats.summarize(metrics, b, 0.95).iloc[0]
    assert two.interval == stats.ACROSS and two.replicates == 2 and two["mean"] == 1.5
    one = stats.summarize(metrics[metrics.replicate == 0], b, 0.95).iloc[0]
    assert one.interval == stats.WITHIN and one.replicates == 1
    assert (one.lo, one.hi) == pytest.approx((0.9 + 0.005, 1.1 - 0.005), abs=2e-3)


# ----------------------------------------------------------------------------------------------
# The score stage's resamples


def test_resample_weights_are_multinomial_counts_shared_by_runs():
    w = bs.resample_weights(50, 200, seed=7)
    assert w.shape == (200, 50) and (w.sum(axis=1) == 50).all() and w.min() >= 0
    assert np.array_equal(w, bs.resample_weights(50, 200, seed=7))  # another job, same prompts: same resamples
    assert not np.array_equal(w, bs.resample_weights(50, 200, seed=8))


def _drawn_rows(weights_row: np.ndarray) -> np.ndarray:
    return np.repeat(np.arange(len(weights_row)), weights_row)


@pytest.mark.parametrize("n,d", [(40, 5), (6, 20)])  # more drawn rows than dimensions, and fewer
def test_weighted_statistics_equal_the_statistics_of_the_drawn_rows(n, d):
    rng = np.random.default_rng(8)
    length, k = 6, 16
    values = rng.normal(size=n)
    codes = rng.integers(0, k, size=(n, length))
    feats = torch.from_numpy(rng.normal(size=(n, d)))
    ref_feats = torch.from_numpy(rng.normal(0.3, 1.2, size=(300, d)))
    reference = fid_statistics(ref_feats)
    weights = bs.resample_weights(n, 5, seed=0)
    means = bs.weighted_means(values, weights)
    counts = bs.weighted_code_counts(codes, weights, k)
    fids = bs.weighted_fid(feats, weights, reference)
    for b in range(5):
        rows = _drawn_rows(weights[b])
        assert means[b] == pytest.approx(values[rows].mean())
        assert np.array_equal(counts[b], code_histogram(codes[rows], k))
        # (the rank-deficient case takes the small eigenproblem: equal up to eigen-solver rounding)
        assert fids[b] == pytest.approx(frechet_distance(fid_statistics(feats[rows]), reference), rel=1e-7)


def test_row_weights_follow_the_prompt_of_each_row():
    prompt_weights = np.array([[2, 0, 1]])
    rows = bs.row_weights(prompt_weights, np.array([0, 0, 1, 2]))  # two samples of prompt 0
    assert rows.tolist() == [[2, 2, 0, 1]]


def test_sample_set_fingerprint_tells_prompt_sets_apart():
    a = bs.sample_set_fingerprint([0, 1, 2], [42, 43, 44])
    assert a == bs.sample_set_fingerprint(np.array([0, 1, 2]), np.array([42, 43, 44]))
    assert a != bs.sample_set_fingerprint([0, 1, 2], [43, 44, 45])  # another replicate's seeds
    assert a != bs.sample_set_fingerprint([0, 2, 1], [42, 44, 43])
