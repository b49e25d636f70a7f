"""The benchmark machinery: ``python -m benchmarks --quick`` writes valid records, and the
quality benchmark's exact posterior, score and W1 (and the dense peer's law) agree with
independent oracles. No timing is asserted."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate, linalg, stats

from stats import assert_categorical, assert_ks

ROOT = Path(__file__).resolve().parents[1]
RECORD_KEYS = {"name", "process", "op", "device", "dtype", "n", "seconds", "items_per_s",
               "ratio_to_floor"}


@pytest.fixture
def bench(monkeypatch):
    """The ``benchmarks`` package (it lives at the repository root, beside ``tests``)."""
    monkeypatch.syspath_prepend(str(ROOT))
    import benchmarks.quality
    import benchmarks.speed
    return benchmarks


def test_quick_run_writes_valid_records(bench, tmp_path, capsys):
    import benchmarks.__main__
    benchmarks.__main__.main(["--quick", "--suites", "Euclidean", "overhead",
                              "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "| name" in printed and "### Quality" in printed

    records = json.loads((tmp_path / "results.json").read_text())
    assert isinstance(records, list)
    for r in records:
        assert set(r) == RECORD_KEYS, r
        assert (r["device"], r["dtype"]) == ("cpu", "float32")
        assert isinstance(r["n"], int) and r["n"] > 0
        assert r["seconds"] > 0 and math.isfinite(r["ratio_to_floor"]) and r["ratio_to_floor"] > 0
        assert r["items_per_s"] == pytest.approx(r["n"] / r["seconds"], rel=1e-9)
    names = [r["name"] for r in records]
    assert len(set(names)) == len(names)
    assert {f"{p} {op}" for p in ("OrnsteinUhlenbeck", "BrownianMotion")
            for op in ("forward", "bridge")} <= set(names)
    assert {r["op"] for r in records} >= {"forward", "bridge", "backward", "backward-bare"}

    quality = json.loads((tmp_path / "quality.json").read_text())
    for name in ("bridge, guess = posterior sample", "bridge, guess = posterior mean",
                 "Euler-Maruyama, exact score"):
        assert len(quality[name]) == len(quality["steps"])
        assert all(math.isfinite(w) and w > 0 for w in quality[name])
    assert all(math.isfinite(w) and w > 0 for w in quality["exact iid sample"])
    nelbo = quality["negative ELBO (nats), guess = posterior mean"]
    assert len(nelbo) == len(quality["steps"]) and all(math.isfinite(v) for v in nelbo)
    assert min(nelbo) > quality["exact -log p(x0)"] - 0.1      # a bound, up to its noise
    assert (tmp_path / "quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the quality benchmark's oracles

def _normal_pdf(x, mean, sd):
    return np.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


def _data_density(x0):
    """The mixture of benchmarks/quality.py, written out again: 0.3 N(-2, .3²) + ..."""
    return (0.3 * _normal_pdf(x0, -2.0, 0.3) + 0.5 * _normal_pdf(x0, 0.5, 0.6)
            + 0.2 * _normal_pdf(x0, 3.0, 0.2))


def _ou_kernel(x_t, x0, t, theta=0.5, sigma=1.0):
    """p(x_t | x0) of OU with mean 0: N(e^{-θt} x0, σ²(1 − e^{−2θt})/(2θ))."""
    return _normal_pdf(x_t, math.exp(-theta * t) * x0,
                       math.sqrt(sigma ** 2 * -math.expm1(-2 * theta * t) / (2 * theta)))


def _quad(f):
    return integrate.quad(f, -6, 6, points=[-2.0, 0.5, 3.0], limit=200, epsabs=1e-13)[0]


@pytest.mark.parametrize("t", [0.05, 0.7])
def test_noised_mixture_score_and_posterior_mean_match_quadrature(bench, t):
    import bridgediff as bd
    mixture = bench.quality.NoisedMixture(bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5), "cpu")
    xs = torch.tensor([-2.3, -0.4, 0.6, 2.5], dtype=torch.float64)
    density = lambda x: _quad(lambda x0: _data_density(x0) * _ou_kernel(x, x0, t))
    h = 1e-4
    for x, score, mean in zip(xs.tolist(), mixture.score(xs, torch.tensor(t)).tolist(),
                              mixture.posterior_mean(xs, torch.tensor(t)).tolist()):
        expected_score = (math.log(density(x + h)) - math.log(density(x - h))) / (2 * h)
        assert score == pytest.approx(expected_score, rel=1e-5, abs=1e-5)
        expected_mean = _quad(lambda x0: x0 * _data_density(x0) * _ou_kernel(x, x0, t)) / density(x)
        assert mean == pytest.approx(expected_mean, rel=1e-7, abs=1e-8)


def test_posterior_sample_follows_the_posterior(bench):
    import bridgediff as bd
    mixture = bench.quality.NoisedMixture(bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5), "cpu")
    t, x_t = 0.7, 1.1
    grid = np.linspace(-6, 6, 200_001)
    unnormalised = _data_density(grid) * _ou_kernel(x_t, grid, t)
    cdf = integrate.cumulative_trapezoid(unnormalised, grid, initial=0)
    g = torch.Generator().manual_seed(0)
    samples = mixture.posterior_sample(torch.full((4000,), x_t, dtype=torch.float64),
                                       torch.tensor(t), g)
    assert_ks(samples, lambda x: np.interp(x, grid, cdf / cdf[-1]), what="posterior sample")


def test_w1_to_cdf_matches_scipy(bench):
    rng = np.random.default_rng(0)
    samples = rng.normal(0.3, 1.2, 3000)
    reference = stats.norm.ppf((np.arange(200_000) + 0.5) / 200_000)
    expected = stats.wasserstein_distance(samples, reference)
    assert bench.quality.w1_to_cdf(samples, stats.norm.cdf, -8, 8) == pytest.approx(
        expected, rel=1e-3)


# ---------------------------------------------------------------- the dense peer draws the bridge

def test_dense_peer_draws_the_uniform_discrete_bridge(bench):
    rate, k, s, t, x0, x_t, n = 1.3, 5, 0.3, 0.8, 1, 3, 20_000
    q = rate * (np.ones((k, k)) / k - np.eye(k))
    probs = linalg.expm(s * q)[x0] * linalg.expm((t - s) * q)[:, x_t]
    g = torch.Generator().manual_seed(1)
    draws = bench.speed.dense_uniform_bridge(rate, k, s, t, torch.full((n,), x0),
                                             torch.full((n,), x_t), g, chunk=700)
    assert_categorical(draws, probs / probs.sum(), what="dense peer bridge")
