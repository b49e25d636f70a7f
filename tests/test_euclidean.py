"""Ornstein-Uhlenbeck and Brownian motion against their exact Gaussian laws.

The oracles are written here in numpy float64, from the SDEs by Gaussian conditioning,
independently of bridgediff's formulas.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import bridgediff as bd
from stats import assert_ks

N = 20_000
DTYPES = [torch.float32, torch.float64]


def ou_moments(u, mean, vol, rev):
    """Mean factor a_u and variance v_u of OU over time u (numpy, float64)."""
    u = np.asarray(u, dtype=np.float64)
    a = np.exp(-rev * u)
    return a, vol ** 2 * (-np.expm1(-2 * rev * u)) / (2 * rev)


def ou_bridge_oracle(s, t, x0, xt, mean, vol, rev):
    """N(mean, var) of x_s | x0, x_t by conditioning the joint Gaussian (x_s, x_t)."""
    a_s, v_s = ou_moments(s, mean, vol, rev)
    a_d, v_d = ou_moments(t - s, mean, vol, rev)
    a_t, v_t = ou_moments(t, mean, vol, rev)
    m_s, m_t = mean + a_s * (x0 - mean), mean + a_t * (x0 - mean)
    cov = a_d * v_s                      # Cov(x_s, x_t | x0)
    return m_s + cov / v_t * (xt - m_t), v_s - cov ** 2 / v_t


def standardised(x, mean, var):
    return (x.double().numpy() - mean) / np.sqrt(var)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- forward laws

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("t", [1e-3, 0.7, 20.0])
def test_ou_forward_scalar_t(dtype, t):
    P = bd.OrnsteinUhlenbeck(mean=0.5, volatility=1.3, reversion=0.8)
    x0 = torch.full((N,), -1.0, dtype=dtype)
    xt = bd.sample_forward(P, t, x0, generator=gen(1))
    assert xt.dtype == dtype
    a, v = ou_moments(t, 0.5, 1.3, 0.8)
    assert_ks(standardised(xt, 0.5 + a * (-1.5), v), stats.norm.cdf, what=f"OU t={t}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_ou_forward_per_element_t(dtype):
    P = bd.OrnsteinUhlenbeck(mean=-0.2, volatility=0.7, reversion=2.0)
    t = torch.logspace(-3, 1, N, dtype=torch.float64)
    x0 = torch.linspace(-3, 3, N, dtype=dtype)
    xt = bd.sample_forward(P, t.to(dtype), x0, generator=gen(2))
    a, v = ou_moments(t.to(dtype).double().numpy(), -0.2, 0.7, 2.0)
    mean = -0.2 + a * (x0.double().numpy() + 0.2)
    assert_ks(standardised(xt, mean, v), stats.norm.cdf, what="OU per-element t")


@pytest.mark.parametrize("dtype", DTYPES)
def test_brownian_forward_per_element_t(dtype):
    P = bd.BrownianMotion(rate=2.5)
    t = torch.logspace(-4, 2, N, dtype=dtype)
    x0 = torch.linspace(-1, 1, N, dtype=dtype).reshape(N, 1).expand(N, 3)
    xt = bd.sample_forward(P, t, x0, generator=gen(3))
    assert xt.shape == (N, 3) and xt.dtype == dtype
    var = 2.5 * t.double().numpy()[:, None]
    assert_ks(standardised(xt, x0.double().numpy(), var), stats.norm.cdf, what="BM forward")


def test_ou_equilibrium():
    P = bd.OrnsteinUhlenbeck(mean=1.0, volatility=2.0, reversion=0.5)
    x = bd.sample_equilibrium(P, (N,), generator=gen(4), dtype=torch.float64)
    assert_ks(x, stats.norm(1.0, 2.0 / math.sqrt(2 * 0.5)).cdf, what="OU equilibrium")


def test_ou_forward_reaches_equilibrium():
    P = bd.OrnsteinUhlenbeck(mean=1.0, volatility=2.0, reversion=0.5)
    xt = bd.sample_forward(P, 50.0, torch.full((N,), 9.0), generator=gen(5))
    assert_ks(xt, stats.norm(1.0, 2.0).cdf, what="OU at large t")


def test_brownian_has_no_equilibrium():
    with pytest.raises(ValueError, match="sample_forward"):
        bd.sample_equilibrium(bd.BrownianMotion(), (3,))


# ---------------------------------------------------------------- bridges

OU_PARAMS = dict(mean=0.3, volatility=1.1, reversion=0.6)
INTERVALS = [(0.3, 1.0), (2.0, 10.0), (1e-4, 1e-3), (0.999, 1.0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s,t", INTERVALS)
def test_ou_bridge(dtype, s, t):
    P = bd.OrnsteinUhlenbeck(**OU_PARAMS)
    x0 = torch.linspace(-2, 2, N, dtype=dtype)
    xt = torch.linspace(3, -1, N, dtype=dtype)
    xs = bd.endpoint_conditioned_sample(P, s, t, x0, xt, generator=gen(6))
    assert xs.dtype == dtype
    mean, var = ou_bridge_oracle(s, t, x0.double().numpy(), xt.double().numpy(),
                                 OU_PARAMS["mean"], OU_PARAMS["volatility"], OU_PARAMS["reversion"])
    assert_ks(standardised(xs, mean, var), stats.norm.cdf, what=f"OU bridge ({s}, {t})")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("s,t", INTERVALS)
def test_brownian_bridge(dtype, s, t):
    r = 0.8
    x0 = torch.linspace(-2, 2, N, dtype=dtype)
    xt = torch.linspace(3, -1, N, dtype=dtype)
    xs = bd.endpoint_conditioned_sample(bd.BrownianMotion(r), s, t, x0, xt, generator=gen(7))
    # Conditioning (x_s, x_t) jointly Gaussian: Cov = r s, Var(x_t) = r t.
    x0n, xtn = x0.double().numpy(), xt.double().numpy()
    mean = x0n + (r * s) / (r * t) * (xtn - x0n)
    var = r * s - (r * s) ** 2 / (r * t)
    assert_ks(standardised(xs, mean, var), stats.norm.cdf, what=f"BM bridge ({s}, {t})")


@pytest.mark.parametrize("process", [bd.OrnsteinUhlenbeck(0.5, 1.5, 1.2), bd.BrownianMotion(0.7)],
                         ids=["OU", "BM"])
def test_bridge_consistency_and_semigroup(process):
    """x_t ~ forward(t), x_s ~ bridge  =>  x_s ~ forward(s); forward(t-s)∘forward(s) = forward(t)."""
    s, t = 0.4, 1.3
    x0 = torch.full((N,), 1.5, dtype=torch.float64)
    g = gen(8)
    xt = bd.sample_forward(process, t, x0, generator=g)
    xs_bridge = bd.endpoint_conditioned_sample(process, s, t, x0, xt, generator=g)
    xs_direct = bd.sample_forward(process, s, x0, generator=g)
    xt_twostep = bd.sample_forward(process, t - s, bd.sample_forward(process, s, x0, generator=g),
                                   generator=g)
    if isinstance(process, bd.OrnsteinUhlenbeck):
        def law(u):
            a, v = ou_moments(u, 0.5, 1.5, 1.2)
            return stats.norm(0.5 + a * (1.5 - 0.5), math.sqrt(v)).cdf
    else:
        def law(u):
            return stats.norm(1.5, math.sqrt(0.7 * u)).cdf
    assert_ks(xs_bridge, law(s), what="bridge consistency")
    assert_ks(xs_direct, law(s), what="forward(s)")
    assert_ks(xt_twostep, law(t), what="semigroup")


# ---------------------------------------------------------------- numerical range

@pytest.mark.parametrize("reversion", [0.5, 50.0])
@pytest.mark.parametrize("t", [1e-7, 1e-3, 1.0, 1e3])
def test_ou_float32_range(reversion, t):
    P = bd.OrnsteinUhlenbeck(mean=0.0, volatility=1.0, reversion=reversion)
    x0 = torch.randn(1000, generator=gen(9))
    xt = bd.sample_forward(P, t, x0, generator=gen(10))
    xs = bd.endpoint_conditioned_sample(P, t / 2, t, x0, xt, generator=gen(11))
    xs_tiny = bd.endpoint_conditioned_sample(P, t * (1 - 1e-3), t, x0, xt, generator=gen(12))
    for x in (xt, xs, xs_tiny):
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
    # The bridge variance is positive and of the right size even for tiny t (expm1).
    _, v = ou_moments(t, 0.0, 1.0, reversion)
    assert 0.5 < float((xt - math.exp(-reversion * t) * x0).std()) / math.sqrt(v) < 1.5


@pytest.mark.parametrize("t", [1e-7, 1e-3, 1.0, 1e3])
def test_brownian_float32_range(t):
    P = bd.BrownianMotion(rate=1.0)
    x0 = torch.randn(1000, generator=gen(13))
    xt = bd.sample_forward(P, t, x0, generator=gen(14))
    xs = bd.endpoint_conditioned_sample(P, t / 2, t, x0, xt, generator=gen(15))
    for x in (xt, xs):
        assert x.dtype == torch.float32 and torch.isfinite(x).all()
    assert 0.5 < float((xt - x0).std()) / math.sqrt(t) < 1.5


def test_tiny_interval_float32_is_exact():
    """(1e-4, 1e-3) in float32: the bridge still has the exact law (no cancellation)."""
    P = bd.OrnsteinUhlenbeck(**OU_PARAMS)
    x0 = torch.zeros(N)
    xt = torch.full((N,), 0.05)
    xs = bd.endpoint_conditioned_sample(P, 1e-4, 1e-3, x0, xt, generator=gen(16))
    mean, var = ou_bridge_oracle(np.float32(1e-4).astype(np.float64),
                                 np.float32(1e-3).astype(np.float64), 0.0, np.float32(0.05),
                                 OU_PARAMS["mean"], OU_PARAMS["volatility"],
                                 OU_PARAMS["reversion"])
    assert_ks(standardised(xs, mean, var), stats.norm.cdf, what="float32 tiny interval")


# ---------------------------------------------------------------- parameters

@pytest.mark.parametrize("make", [
    lambda: bd.OrnsteinUhlenbeck(volatility=0.0),
    lambda: bd.OrnsteinUhlenbeck(reversion=-1.0),
    lambda: bd.OrnsteinUhlenbeck(mean=float("nan")),
    lambda: bd.BrownianMotion(rate=0.0),
    lambda: bd.BrownianMotion(rate=float("inf")),
])
def test_bad_parameters(make):
    with pytest.raises(ValueError, match="volatility|reversion|mean|rate"):
        make()


def test_tensor_parameters_and_dtype_follow_data():
    P = bd.OrnsteinUhlenbeck(mean=torch.tensor(1.0), volatility=torch.tensor(0.5),
                             reversion=torch.tensor(2.0))
    x0 = torch.zeros(N, dtype=torch.float64)
    xt = bd.sample_forward(P, 0.3, x0, generator=gen(17))
    assert xt.dtype == torch.float64
    a, v = ou_moments(0.3, 1.0, 0.5, 2.0)
    assert_ks(standardised(xt, 1.0 + a * (0 - 1.0), v), stats.norm.cdf, what="tensor params")


def test_integer_data_is_rejected():
    with pytest.raises(TypeError, match="x0"):
        bd.sample_forward(bd.OrnsteinUhlenbeck(), 1.0, torch.zeros(3, dtype=torch.int64))


PROCESSES = [bd.OrnsteinUhlenbeck(), bd.BrownianMotion()]


@pytest.mark.parametrize("process", PROCESSES, ids=["OU", "BM"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=str)
def test_non_finite_data_is_refused_naming_the_argument(process, bad):
    """NaN or inf data used to pass through to NaN draws."""
    x = torch.zeros(3)
    y = x.clone()
    y[1] = bad
    with pytest.raises(ValueError, match="x0 must be finite"):
        bd.sample_forward(process, 1.0, y)
    with pytest.raises(ValueError, match="x0 must be finite"):
        bd.endpoint_conditioned_sample(process, 0.5, 1.0, y, x)
    with pytest.raises(ValueError, match="x_t must be finite"):
        bd.endpoint_conditioned_sample(process, 0.5, 1.0, x, y)


@pytest.mark.parametrize("process", PROCESSES, ids=["OU", "BM"])
def test_complex_data_is_refused(process):
    z = torch.zeros(3, dtype=torch.complex64)
    x = torch.zeros(3)
    with pytest.raises(TypeError, match="x0 must be a floating-point"):
        bd.sample_forward(process, 1.0, z)
    with pytest.raises(TypeError, match="x0 must be a floating-point"):
        bd.endpoint_conditioned_sample(process, 0.5, 1.0, z, x)
    with pytest.raises(TypeError, match="x_t must be a floating-point"):
        bd.endpoint_conditioned_sample(process, 0.5, 1.0, x, z)
    with pytest.raises(TypeError, match="floating-point"):
        process.check_prediction(z, x)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64], ids=str)
def test_ou_equilibrium_refuses_a_non_float_dtype(dtype):
    """Was a raw NotImplementedError from torch.randn for int64."""
    with pytest.raises(TypeError, match="dtype must be a floating-point dtype"):
        bd.sample_equilibrium(bd.OrnsteinUhlenbeck(), (3,), dtype=dtype)
    for good in DTYPES:
        assert bd.sample_equilibrium(bd.OrnsteinUhlenbeck(), (3,), dtype=good).dtype == good
