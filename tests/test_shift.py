"""Code-shift metrics: KL / entropy / usage math against hand computations."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from ranke.metrics.shift import (
    code_histogram,
    codebook_usage,
    entropy_bits,
    kl_divergence,
    real_histograms,
    shift_metrics,
)


def test_histogram_counts_all_positions_and_checks_range():
    codes = [torch.tensor([[0, 1, 1], [3, 3, 3]]), np.array([1])]
    assert code_histogram(codes, 4).tolist() == [1, 3, 0, 3]
    with pytest.raises(ValueError, match="out of range"):
        code_histogram(torch.tensor([4]), 4)


def test_kl_zero_for_identical_histograms():
    h = np.array([5, 0, 3, 9])
    assert kl_divergence(h, h, 1e-6) == pytest.approx(0.0, abs=1e-12)
    # scale-invariant: the same distribution from twice the samples
    assert kl_divergence(h, 2 * h, 0.0) == pytest.approx(0.0, abs=1e-12)


def test_kl_matches_hand_computation_with_smoothing():
    p_counts, q_counts, eps = np.array([3, 1, 0]), np.array([1, 1, 2]), 0.5
    p = [3.5 / 5.5, 1.5 / 5.5, 0.5 / 5.5]  # eps added to every bin, then normalised
    q = [1.5 / 5.5, 1.5 / 5.5, 2.5 / 5.5]
    hand = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert kl_divergence(p_counts, q_counts, eps) == pytest.approx(hand, rel=1e-12)
    # direction matters: KL(gen || real) != KL(real || gen)
    assert kl_divergence(q_counts, p_counts, eps) != pytest.approx(hand, rel=1e-3)
    # unsmoothed with an empty reference bin -> infinite
    assert kl_divergence(np.array([1, 1]), np.array([1, 0]), 0.0) == math.inf


def test_entropy_bits_and_usage():
    assert entropy_bits(np.full(16, 7), 0.0) == pytest.approx(4.0)
    assert entropy_bits(np.array([1, 0, 0, 0]), 0.0) == pytest.approx(0.0)
    assert entropy_bits(np.array([1, 1, 0, 0]), 0.0) == pytest.approx(1.0)
    assert codebook_usage(np.array([2, 0, 1, 0])) == 0.5


def test_shift_metrics_from_code_hist_table():
    # sparse table: codes 5, 6 absent -> zero counts
    table = pd.DataFrame({"code": [0, 1, 2, 3, 4, 7], "count": [4, 4, 2, 2, 4, 0],
                          "count_a": [2, 2, 1, 1, 2, 0], "count_b": [2, 2, 1, 1, 2, 0]})
    real = real_histograms(table, 8)
    assert real["count"].tolist() == [4, 4, 2, 2, 4, 0, 0, 0]
    gen = code_histogram(torch.tensor([0, 0, 1, 1, 5, 5]), 8)
    m = shift_metrics(gen, real, 1e-6)
    assert m["code_kl_real_floor"] == pytest.approx(0.0, abs=1e-9)  # identical halves
    assert m["code_kl"] > 1.0  # a third of the mass on a code the real images never use
    assert m["codebook_usage"] == 3 / 8
    assert m["code_entropy_bits"] == pytest.approx(math.log2(3), abs=1e-4)
    with pytest.raises(ValueError, match="outside"):
        real_histograms(table, 4)
