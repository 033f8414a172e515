"""Bootstrap resamples of one scored run (method, replicate, round) over its evaluation prompts.

A resample draws the prompts with replacement; we represent it by its multinomial weights (how
often each prompt was drawn, summing to the number of prompts) and evaluate every metric as its
weighted version: the mean CLIP score and reward, the code histogram (hence code-KL), the FID
feature mean and covariance. The weights depend only on (seed, number of prompts), so every run
scored on the same prompts gets the same resamples: two methods of one replicate (same prompts,
same sampling seeds) are compared resample by resample, a paired bootstrap (ranke.report.stats).

Written here rather than taken from a library: scipy.stats.bootstrap resamples a statistic of
1-D samples one call at a time and cannot share the resamples between two runs scored in
different jobs, nor evaluate FID (a statistic of a whole feature matrix) per resample.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch


def resample_weights(n_prompts: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_prompts) int32: row b counts how often each prompt is drawn in resample b."""
    if n_prompts < 1:
        raise ValueError(f"need at least one prompt to resample, got {n_prompts}")
    rng = np.random.default_rng([int(seed), int(n_prompts)])
    draws = rng.integers(n_prompts, size=(int(resamples), n_prompts))
    weights = np.zeros((int(resamples), n_prompts), dtype=np.int32)
    np.add.at(weights, (np.arange(int(resamples))[:, None], draws), 1)
    return weights


def row_weights(prompt_weights: np.ndarray, prompt_index: np.ndarray) -> np.ndarray:
    """Prompt weights (B, P) -> sample-row weights (B, N): a row counts as often as its prompt is
    drawn (with one sample per prompt, the evaluation protocol, this is a column permutation)."""
    return prompt_weights[:, np.asarray(prompt_index, dtype=np.int64)]


def weighted_means(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(B,) weighted mean of per-row `values` (N,) under each row-weight vector (B, N)."""
    w = weights.astype(np.float64)
    return (w @ np.asarray(values, dtype=np.float64)) / w.sum(axis=1)


def weighted_code_counts(codes: np.ndarray, weights: np.ndarray, codebook_size: int) -> np.ndarray:
    """(B, K) code histograms of every resample: row b = sum_i weights[b, i] * histogram(codes[i]).

    Each image's histogram (its contribution) is a sparse row; B x N weights times the N x K
    histograms costs B x (nonzeros), not B x N x K."""
    import scipy.sparse as sp

    codes = np.asarray(codes, dtype=np.int64)
    n, length = codes.shape
    rows = np.repeat(np.arange(n), length)
    hist = sp.csr_matrix((np.ones(n * length), (rows, codes.reshape(-1))), shape=(n, codebook_size))
    hist.sum_duplicates()
    return np.asarray((hist.T @ weights.T.astype(np.float64)).T)


def weighted_fid(features: torch.Tensor, weights: np.ndarray, reference: dict) -> np.ndarray:
    """(B,) FID of each resample against the reference statistics.

    Resample b's statistics are the weighted mean and the weighted (n - 1)-normalised covariance
    Sigma = C^T C of the feature rows, C = sqrt(w) (x - mu) / sqrt(n - 1): exactly
    `fid_statistics` of the rows drawn. The trace term tr sqrt(Sigma Sigma_ref) is the sum of the
    square roots of the eigenvalues of S Sigma S (S = the reference's cached square root, as
    ranke.metrics.fid.frechet_distance) or, when fewer rows are drawn than there are feature
    dimensions, of the same nonzero eigenvalues of the small matrix C Sigma_ref C^T. Computed in
    float64 on the features' device (a GPU makes the N x D^2 products cheap).
    """
    from ranke.metrics.fid import covariance_sqrt

    x = features.detach().double()
    device, dim = x.device, x.shape[1]
    mu_ref = torch.as_tensor(np.asarray(reference["mu"]), dtype=torch.float64, device=device)
    sigma_ref = torch.as_tensor(np.asarray(reference["sigma"]), dtype=torch.float64, device=device)
    root = reference.get("sigma_sqrt")
    root = covariance_sqrt(reference["sigma"]) if root is None else np.asarray(root)
    root = torch.as_tensor(root, dtype=torch.float64, device=device)
    trace_ref = float(torch.trace(sigma_ref))
    out = np.empty(len(weights), dtype=np.float64)
    for b, w_np in enumerate(weights):
        drawn = np.flatnonzero(w_np)
        w = torch.as_tensor(w_np[drawn], dtype=torch.float64, device=device)
        xs = x[torch.as_tensor(drawn, device=device)]
        total = float(w.sum())
        mu = (w @ xs) / total
        c = (xs - mu) * (w / (total - 1.0)).sqrt()[:, None]
        if len(drawn) < dim:
            inner = c @ sigma_ref @ c.T
        else:
            inner = root @ (c.T @ c) @ root
        eig = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0.0)
        diff = mu - mu_ref
        out[b] = float(diff @ diff + (c * c).sum() + trace_ref - 2.0 * eig.sqrt().sum())
    return out


def sample_set_fingerprint(prompt_ids, seeds) -> str:
    """Short hash of the ordered (prompt_id, sampling seed) rows: equal for two runs that can be
    paired (same prompts, same sampling seeds, same order)."""
    ids = np.asarray(prompt_ids, dtype=np.int64)
    sd = np.asarray(seeds, dtype=np.int64)
    return hashlib.sha256(ids.tobytes() + b"|" + sd.tobytes()).hexdigest()[:16]
