"""Latent covariate shift: how far the generated code distribution is from the real one.

The paper's bar chart plots D_KL(pi_theta || p_Real) and a token-entropy panel in bits; the
analysis code was not released, so this module fixes the (documented) reading:

* p_gen  = histogram of codebook indices over every token position of every generated code map
  (unigram over codes, not per position);
* p_real = histogram of the codes of the real tokenized images (tokenize stage, code_hist.parquet);
* smoothing: `eps` is added to EVERY bin of BOTH histograms (as counts) before normalising, so
  empty bins never give log(0) / division by zero; with eps = 1e-6 and >= 1e4 tokens the effect
  on the value is below 1e-6 nats unless a bin is empty on one side only;
* KL in nats (natural log), entropy in bits (log2; at most log2(codebook_size));
* codebook usage = fraction of codes that occur at least once (raw counts, no smoothing);
* the "Real" bar = KL(real half A || real half B), two disjoint halves of the real images: the
  value a perfect generator would get from finite samples alone. It is measured on half the
  real images each, so it slightly overstates the floor for a comparison against the full set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def code_histogram(codes, codebook_size: int) -> np.ndarray:
    """Counts of each code over all positions. `codes`: array/tensor of any shape, or an iterable
    of such (e.g. the rows of samples.parquet)."""
    counts = np.zeros(codebook_size, dtype=np.int64)
    chunks = [codes] if isinstance(codes, (np.ndarray, torch.Tensor)) else codes
    for chunk in chunks:
        flat = torch.as_tensor(chunk).reshape(-1).cpu().numpy().astype(np.int64, copy=False)
        if flat.size == 0:
            continue
        if flat.min() < 0 or flat.max() >= codebook_size:
            raise ValueError(
                f"code out of range [0, {codebook_size}): min {flat.min()}, max {flat.max()}"
            )
        counts += np.bincount(flat, minlength=codebook_size)
    return counts


def smoothed_distribution(counts: np.ndarray, eps: float) -> np.ndarray:
    """(counts + eps) / sum(counts + eps), in float64."""
    c = np.asarray(counts, dtype=np.float64) + float(eps)
    total = c.sum()
    if total <= 0:
        raise ValueError("histogram is empty and eps is 0: cannot normalise")
    return c / total


def kl_divergence(p_counts: np.ndarray, q_counts: np.ndarray, eps: float) -> float:
    """KL(p || q) in nats between two smoothed histograms of the same length."""
    if len(p_counts) != len(q_counts):
        raise ValueError(f"histograms differ in length: {len(p_counts)} vs {len(q_counts)}")
    p = smoothed_distribution(p_counts, eps)
    q = smoothed_distribution(q_counts, eps)
    nz = p > 0  # 0 * log 0 = 0 (only possible with eps = 0)
    if np.any(q[nz] == 0):
        return float("inf")
    return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def entropy_bits(counts: np.ndarray, eps: float) -> float:
    """Shannon entropy of the smoothed histogram, in bits."""
    p = smoothed_distribution(counts, eps)
    nz = p > 0
    return float(-np.sum(p[nz] * np.log2(p[nz])))


def codebook_usage(counts: np.ndarray) -> float:
    """Fraction of the codebook that occurs at least once."""
    counts = np.asarray(counts)
    return float(np.count_nonzero(counts) / len(counts))


def real_histograms(code_hist: pd.DataFrame, codebook_size: int) -> dict[str, np.ndarray]:
    """The code_hist table (schema code_hist) as dense arrays {"count", "count_a", "count_b"}."""
    codes = code_hist["code"].to_numpy(dtype=np.int64)
    if len(codes) and (codes.min() < 0 or codes.max() >= codebook_size):
        raise ValueError(
            f"code_hist has codes outside [0, {codebook_size}) (max {codes.max()}): "
            "was it made with another VQ tokenizer?"
        )
    if len(np.unique(codes)) != len(codes):
        raise ValueError("code_hist lists a code twice")
    out = {}
    for col in ("count", "count_a", "count_b"):
        dense = np.zeros(codebook_size, dtype=np.int64)
        dense[codes] = code_hist[col].to_numpy(dtype=np.int64)
        out[col] = dense
    return out


def shift_metrics(gen_counts: np.ndarray, real: dict[str, np.ndarray], eps: float) -> dict[str, float]:
    """All code-shift numbers of one generated set against the real histograms."""
    return {
        "code_kl": kl_divergence(gen_counts, real["count"], eps),
        "code_kl_real_floor": kl_divergence(real["count_a"], real["count_b"], eps),
        "code_entropy_bits": entropy_bits(gen_counts, eps),
        "code_entropy_bits_real": entropy_bits(real["count"], eps),
        "codebook_usage": codebook_usage(gen_counts),
    }
