"""Shared statistical helpers for the sampler tests (tolerances derived from n)."""

from __future__ import annotations

import numpy as np


def gaussian_moment_check(x, mean, cov, k=5.0):
    """Sample mean within k standard errors (sqrt(diag C / n)) and sample covariance entries
    within k standard errors of the Gaussian sampling law of S_ij:
    Var(S_ij) = (C_ii C_jj + C_ij^2) / (n - 1). Returns the worst z-scores (mean, cov)."""
    x = np.asarray(x, np.float64)
    mean = np.asarray(mean, np.float64)
    cov = np.asarray(cov, np.float64)
    n = x.shape[0]
    se_m = np.sqrt(np.diag(cov) / n)
    z_m = np.max(np.abs(x.mean(0) - mean) / se_m)
    s = np.cov(x.T).reshape(cov.shape)
    dg = np.diag(cov)
    se_c = np.sqrt((np.outer(dg, dg) + cov**2) / (n - 1))
    z_c = np.max(np.abs(s - cov) / se_c)
    assert z_m < k, f"mean off by {z_m:.2f} SE: {x.mean(0)} vs {mean}"
    assert z_c < k, f"cov off by {z_c:.2f} SE:\n{s}\nvs\n{cov}"
    return z_m, z_c


def moment_check_any(x, mean, cov, k=5.0):
    """Like :func:`gaussian_moment_check` for non-Gaussian laws: standard errors of the mean
    and of each covariance entry estimated from the sample (variance of the centred products)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    mean = np.asarray(mean, np.float64)
    cov = np.asarray(cov, np.float64)
    se_m = x.std(0, ddof=1) / np.sqrt(n)
    z_m = np.max(np.abs(x.mean(0) - mean) / se_m)
    c = x - mean
    prods = c[:, :, None] * c[:, None, :]
    se_c = prods.std(0, ddof=1) / np.sqrt(n)
    z_c = np.max(np.abs(prods.mean(0) - cov) / se_c)
    assert z_m < k, f"mean off by {z_m:.2f} SE: {x.mean(0)} vs {mean}"
    assert z_c < k, f"cov off by {z_c:.2f} SE:\n{prods.mean(0)}\nvs\n{cov}"
    return z_m, z_c
