"""Frechet distance, KID, real-vs-real floors and bootstrap intervals against closed forms."""
from __future__ import annotations

import math

import numpy as np
import pytest

from avgen.eval.frechet import bootstrap_ci, floor, frechet_distance, kid, mmd2_unbiased


def gaussian(n, mean, std, d=8, seed=0):
    return np.random.default_rng(seed).normal(mean, std, size=(n, d))


def test_frechet_matches_the_closed_form_for_diagonal_gaussians():
    # FD = |dmu|^2 + sum (s1 - s2)^2 for diagonal covariances with std s1, s2
    x, y = gaussian(20000, 0.0, 1.0, seed=1), gaussian(20000, 0.5, 2.0, seed=2)
    expected = 8 * 0.5 ** 2 + 8 * (1.0 - 2.0) ** 2
    assert frechet_distance(x, y) == pytest.approx(expected, rel=0.03)


def test_frechet_is_symmetric_and_zero_for_identical_sets():
    x, y = gaussian(300, 0, 1, seed=3), gaussian(300, 0.2, 1.3, seed=4)
    assert frechet_distance(x, y) == pytest.approx(frechet_distance(y, x), rel=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_bias_shrinks_with_n_as_dim_over_n():
    small = np.mean([frechet_distance(gaussian(50, 0, 1, seed=s), gaussian(50, 0, 1, seed=100 + s)) for s in range(10)])
    large = np.mean([frechet_distance(gaussian(500, 0, 1, seed=s), gaussian(500, 0, 1, seed=100 + s))
                     for s in range(10)])
    assert small > 5 * large > 0


def test_kid_is_unbiased_near_zero_and_positive_for_different_sets():
    same = kid(gaussian(400, 0, 1, seed=5), gaussian(400, 0, 1, seed=6))
    diff = kid(gaussian(400, 0, 1, seed=5), gaussian(400, 0.5, 1, seed=6))
    assert abs(same) < 0.1 * diff and diff > 0


def test_mmd_estimate_is_unbiased_even_for_small_sets():
    # with n = 10 the biased (V-statistic) MMD^2 sits well above 0; the unbiased one averages to 0
    vals = np.array([mmd2_unbiased(gaussian(10, 0, 1, seed=s), gaussian(10, 0, 1, seed=500 + s)) for s in range(200)])
    assert abs(vals.mean()) < 3 * vals.std() / np.sqrt(len(vals))


def test_floor_needs_two_disjoint_sets_and_reports_spread():
    pool = [gaussian(2, 0, 1, seed=s) for s in range(40)]  # 40 clips of 2 events each
    fl = floor(pool, 20, repeats=5)
    assert fl.n == 20 and fl.fd_mean > 0 and fl.fd_std > 0
    # what two disjoint sets of 20 clips (40 events) from one distribution measure: the expected FD
    # between two independent 40-row samples of N(0, I_8), here by Monte Carlo (~1.32). Sets that
    # shared clips would measure less; a floor on fewer clips, more (the estimator's bias grows as 1/n)
    expected = np.mean([frechet_distance(gaussian(40, 0, 1, seed=s), gaussian(40, 0, 1, seed=1000 + s))
                        for s in range(200)])
    assert abs(fl.fd_mean - expected) < 3 * fl.fd_std / math.sqrt(fl.repeats)
    assert floor(pool, 5, repeats=5).fd_mean > 2.5 * fl.fd_mean
    assert abs(fl.kid_mean) < fl.kid_std  # KID is unbiased: a real-vs-real floor sits at 0 within its spread
    with pytest.raises(ValueError, match="at least 42"):
        floor(pool, 21)


def test_bootstrap_interval_covers_the_mean_and_narrows_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.normal(3, 1, 30), rng.normal(3, 1, 3000)
    lo_s, hi_s = bootstrap_ci(small, n_boot=500)
    lo_l, hi_l = bootstrap_ci(large, n_boot=500)
    assert lo_l < 3 < hi_l and lo_s < small.mean() < hi_s
    assert hi_l - lo_l < 0.3 * (hi_s - lo_s)


def test_bootstrap_drops_nans_and_pools_rows():
    rows = np.array([[1, 2], [2, 2], [0, 1], [np.nan, np.nan]])
    lo, hi = bootstrap_ci(rows, lambda r: r[:, 0].sum() / r[:, 1].sum(), n_boot=200)
    assert 0 <= lo <= 3 / 5 <= hi <= 1
    assert all(math.isnan(v) for v in bootstrap_ci([1.0]))
