"""Statistical checks shared by the tests: KS and chi-square at significance 1e-3."""

import numpy as np
import torch
from scipy import stats

ALPHA = 1e-3


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def assert_ks(samples, cdf, alpha: float = ALPHA, what: str = "") -> None:
    """One-sample KS test of ``samples`` against the callable ``cdf`` (numpy in, numpy out)."""
    res = stats.kstest(_np(samples), cdf)
    assert res.pvalue > alpha, f"{what} KS D={res.statistic:.4g} p={res.pvalue:.3g}"


def assert_ks_2samp(a, b, alpha: float = ALPHA, what: str = "") -> None:
    """Two-sample KS test that ``a`` and ``b`` have the same law."""
    res = stats.ks_2samp(_np(a), _np(b))
    assert res.pvalue > alpha, f"{what} KS D={res.statistic:.4g} p={res.pvalue:.3g}"


def assert_chi2(counts, probs, alpha: float = ALPHA, what: str = "", min_expected=5.0) -> None:
    """Chi-square goodness of fit of ``counts`` to ``probs``; bins expecting < 5 are pooled."""
    counts, probs = _np(counts), _np(probs)
    if counts.shape != probs.shape:
        raise ValueError(f"counts {counts.shape} and probs {probs.shape} differ")
    probs = probs / probs.sum()
    expected = probs * counts.sum()
    small = expected < min_expected
    if small.any():
        counts = np.append(counts[~small], counts[small].sum())
        expected = np.append(expected[~small], expected[small].sum())
        if expected[-1] == 0:
            assert counts[-1] == 0, f"{what} {counts[-1]:.0f} draws in bins of probability 0"
            counts, expected = counts[:-1], expected[:-1]
    assert len(counts) >= 2, f"{what} fewer than two bins to compare"
    res = stats.chisquare(counts, expected)
    assert res.pvalue > alpha, f"{what} chi2={res.statistic:.4g} p={res.pvalue:.3g}"


def assert_categorical(samples, probs, alpha: float = ALPHA, what: str = "") -> None:
    """Chi-square test that integer ``samples`` in [0, len(probs)) follow ``probs``."""
    probs = _np(probs)
    s = torch.as_tensor(samples).reshape(-1).to("cpu", torch.int64)
    assert int(s.min()) >= 0 and int(s.max()) < len(probs), f"{what} state out of range"
    assert_chi2(torch.bincount(s, minlength=len(probs)), probs, alpha, what)


def assert_binomial(successes, trials, p, alpha: float = ALPHA, what: str = "") -> None:
    """Exact binomial test that ``successes`` out of ``trials`` fit probability ``p``."""
    res = stats.binomtest(int(successes), int(trials), float(p))
    assert res.pvalue > alpha, f"{what} {int(successes)}/{int(trials)} vs p={p:.4g} p-value={res.pvalue:.3g}"


def assert_same_categorical(table, alpha: float = ALPHA, what: str = "") -> None:
    """Chi-square test of homogeneity: the rows of a contingency ``table`` of counts
    (samples × categories) come from one law."""
    table = np.asarray(table, dtype=np.float64)
    table = table[:, table.sum(0) > 0]
    res = stats.chi2_contingency(table)
    assert res.pvalue > alpha, f"{what} chi2={res.statistic:.4g} p={res.pvalue:.3g}"
