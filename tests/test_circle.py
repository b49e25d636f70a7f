"""Wrapped Brownian motion on the circle: forward law, exact bridge, winding draw, backward
sampling, range, loss. Oracles are image sums and numerical integrals written here."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special
from scipy import stats as sps

import bridgediff as bd
from bridgediff.circle import _rejected_winding, _sample_winding, _wrap
from stats import assert_binomial, assert_chi2, assert_ks, assert_ks_2samp

DTYPES = [torch.float32, torch.float64]
TWO_PI = 2 * np.pi


# ---------------------------------------------------------------- independent oracles

def _images(var: float) -> np.ndarray:
    """Image offsets 2 pi k covering +-9 standard deviations around any point of the circle."""
    k = int(9 * math.sqrt(var) / TWO_PI) + 2
    return TWO_PI * np.arange(-k, k + 1)


def wrapped_normal_cdf(mu: float, var: float):
    """The CDF on [-pi, pi) of wrap(mu + sqrt(var) Z), as a sum over images of the normal CDF."""
    sd, shifts, mu = math.sqrt(var), _images(var)[:, None], math.remainder(mu, TWO_PI)

    def cdf(x):
        x = np.asarray(x, dtype=np.float64)[None]
        return (special.ndtr((x - mu + shifts) / sd)
                - special.ndtr((-np.pi - mu + shifts) / sd)).sum(0)
    return cdf


def log_wrapped_normal(x, mu, var: float):
    """log of the wrapped-normal density (up to a constant), a log-sum over images."""
    out = np.full(np.broadcast(x, mu).shape, -np.inf)
    for shift in _images(var):
        out = np.logaddexp(out, -(x - mu + shift) ** 2 / (2 * var))
    return out


def bridge_cdf(x0: float, xt: float, s: float, t: float, rate: float = 1.0):
    """CDF of x_s given x0, x_t: the product of two wrapped-normal densities, integrated."""
    sd = math.sqrt(rate * s * (t - s) / t)  # the bridge's spread on the line, resolved 40-fold
    grid = np.linspace(-np.pi, np.pi, int(np.clip(40 * TWO_PI / sd, 20_000, 600_000)) | 1)
    log_p = log_wrapped_normal(grid, x0, rate * s) + log_wrapped_normal(xt, grid, rate * (t - s))
    cum = integrate.cumulative_trapezoid(np.exp(log_p - log_p.max()), grid, initial=0)
    return lambda x: np.interp(x, grid, cum / cum[-1])


def winding_pmf(d: float, rt: float, span: int = 5000):
    """P(n) ∝ exp(-(d + 2 pi n)^2 / (2 rt)) over n in [-span, span]."""
    n = np.arange(-span, span + 1)
    log_w = -(d + TWO_PI * n) ** 2 / (2 * rt)
    w = np.exp(log_w - log_w.max())
    return n, w / w.sum()


def assert_integer_law(draws, support, probs, what):
    draws = draws.to(torch.int64).cpu().numpy()
    counts = np.bincount(draws - support[0], minlength=len(support))
    assert counts.sum() == draws.size, f"{what}: draws outside the oracle's support"
    assert_chi2(counts, probs, what=what)


def in_range(x: torch.Tensor) -> bool:
    return bool((torch.isfinite(x) & (x >= -math.pi) & (x < math.pi)).all())


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- forward and equilibrium

@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_is_the_wrapped_normal_at_small_medium_and_large_rt(dtype):
    # one call with a time per row; the first start wraps at once, the second is off the circle
    t = torch.tensor([1e-6, 1.0, 1e3], dtype=dtype)
    x0 = torch.tensor([math.pi - 2e-4, 2.0 + 4 * math.pi, -1.0], dtype=dtype)
    process = bd.WrappedBrownian(rate=1.5)
    x_t = bd.sample_forward(process, t, x0[:, None].expand(3, 20_000), generator=gen(1))
    assert x_t.dtype == dtype and in_range(x_t)
    for row, (ti, a) in enumerate(zip(t.tolist(), x0.tolist())):
        assert_ks(x_t[row], wrapped_normal_cdf(a, 1.5 * ti), what=f"forward rt={1.5 * ti}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_equilibrium_is_uniform(dtype):
    x = bd.sample_equilibrium(bd.WrappedBrownian(), (40_000,), dtype=dtype, generator=gen(2))
    assert x.dtype == dtype and in_range(x)
    assert_ks(x, sps.uniform(-np.pi, TWO_PI).cdf, what="equilibrium")


def test_wrap_never_returns_pi():
    # in float64 the remainder of the angle just below -pi rounds up to 2 pi (the trap)
    for dtype in [torch.float16, torch.float32, torch.float64]:
        pi = torch.tensor(math.pi, dtype=dtype)
        below = torch.nextafter(-pi, -2 * pi)
        x = torch.stack([below, -below, -pi, pi, 3 * pi, torch.tensor(-1e-30, dtype=dtype)])
        assert in_range(_wrap(x)), (dtype, _wrap(x))


# ---------------------------------------------------------------- the winding

# (rt, d): tiny, moderate, both sides of the enumeration threshold rt = 4 pi^2, large.
# The tiny case puts d just inside -pi, where windings 0 and 1 both matter: float64 only,
# since float32 resolves angles near pi to 2.4e-7, which at rt = 1e-6 moves the odds.
WINDING_ROWS = [(1e-6, -math.pi + 1e-7), (1.0, 2.5), (30.0, -math.pi), (40.0, 0.3),
                (100.0, 2.5), (1e3, -2.0), (1e5, 1.0)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_winding_is_the_discrete_gaussian(dtype, sampler_path):
    rows = WINDING_ROWS if dtype == torch.float64 else WINDING_ROWS[1:]
    rt = torch.tensor([r for r, _ in rows], dtype=dtype)[:, None]
    d = torch.tensor([d for _, d in rows], dtype=dtype)[:, None].expand(-1, 50_000)
    n = _sample_winding(d, rt, gen(3))
    assert n.dtype == dtype and bool((n == n.round()).all())
    for row, (r, _) in enumerate(rows):
        support, probs = winding_pmf(d[row, 0].item(), r)
        assert_integer_law(n[row], support, probs, f"winding rt={r}")


@pytest.mark.parametrize("rt", [100.0, 1e3])
def test_winding_keeps_the_mass_beyond_six_windings(rt):
    # Diffusions.jl enumerates |n| <= 6: it leaves out 5e-5 of the mass at rt = 100, 0.2 at 1e3
    d = torch.full((400_000,), 2.5)
    n = _sample_winding(d, torch.tensor(rt), gen(4))
    support, probs = winding_pmf(2.5, rt)
    far = int((n.abs() > 6).sum())
    p_far = probs[np.abs(support) > 6].sum()
    assert_binomial(far, n.numel(), p_far, what="windings beyond 6")


def test_each_rejection_round_accepts_the_exact_law_at_the_proven_rate():
    # one round at small, boundary and large tau: accepted draws follow the discrete
    # Gaussian, accepted at the rate e^{-1/(4 sqrt tau)} sum_n e^{-(n-c)^2/(2 tau)} / sqrt(2pi tau')
    tau = torch.tensor([0.05, 1.0, 25.0], dtype=torch.float64)[:, None]
    c = torch.tensor([0.3, -0.5, 0.1], dtype=torch.float64)[:, None].expand(-1, 100_000)
    n, accepted = _rejected_winding(c, tau, gen(5), rounds=1)
    for row in range(3):
        ta, ca = tau[row, 0].item(), c[row, 0].item()
        support, probs = winding_pmf(-TWO_PI * ca, TWO_PI ** 2 * ta)
        assert_integer_law(n[row][accepted[row]], support, probs, f"accepted tau={ta}")
        spread = ta + math.sqrt(ta) / 2
        rate = (math.exp(-1 / (4 * math.sqrt(ta))) * np.exp(-(support - ca) ** 2 / (2 * ta)).sum()
                / math.sqrt(2 * math.pi * spread))
        hits = int(accepted[row].sum())
        assert_binomial(hits, accepted.shape[1], rate, what=f"acceptance tau={ta}")


# ---------------------------------------------------------------- the exact bridge

# (x0, x_t, s, t): near each other; on opposite sides of +-pi (moderate and rt = 1e-6);
# far apart, where two windings compete; rt = 100 and 1e3, beyond a fixed +-6 windings.
BRIDGE_ROWS = [(0.3, 0.5, 0.4, 1.0),
               (math.pi - 0.02, -math.pi + 0.03, 2e-3, 5e-3),
               (math.pi - 3e-4, -math.pi + 5e-4, 3e-7, 1e-6),
               (0.0, math.pi - 0.1, 0.25, 0.5),
               (1.0, -2.5, 99.5, 100.0),
               (0.5, 2.0, 999.0, 1e3)]


@pytest.mark.parametrize("dtype", DTYPES)
def test_bridge_is_the_product_of_wrapped_normals(dtype):
    x0, xt, s, t = (torch.tensor(v, dtype=dtype) for v in zip(*BRIDGE_ROWS))
    shape = (len(BRIDGE_ROWS), 20_000)
    x_s = bd.endpoint_conditioned_sample(bd.WrappedBrownian(), s, t, x0[:, None].expand(shape),
                                         xt[:, None].expand(shape), generator=gen(6))
    assert x_s.dtype == dtype and in_range(x_s)
    for row in range(len(BRIDGE_ROWS)):
        a, b, si, ti = (v[row].item() for v in (x0, xt, s, t))
        assert_ks(x_s[row], bridge_cdf(a, b, si, ti), what=f"bridge row {row}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_bridge_consistency(dtype):
    # x_t ~ forward(t), x_s ~ bridge(s, t, x0, x_t)  =>  x_s ~ forward(s)
    process = bd.WrappedBrownian(rate=2.0)
    x0 = torch.tensor([math.pi - 5e-4, 2.0, -3.0, 1.0], dtype=dtype)[:, None].expand(-1, 20_000)
    t = torch.tensor([5e-7, 0.5, 50.0, 500.0], dtype=dtype)
    s = t * torch.tensor([0.5, 0.3, 0.5, 5e-4], dtype=dtype)
    g = gen(7)
    x_t = bd.sample_forward(process, t, x0, generator=g)
    x_s = bd.endpoint_conditioned_sample(process, s, t, x0, x_t, generator=g)
    for row in range(4):
        assert_ks(x_s[row], wrapped_normal_cdf(x0[row, 0].item(), 2.0 * s[row].item()),
                  what=f"consistency rs={2.0 * s[row].item()}")


def test_bridge_wraps_endpoints_given_off_the_circle():
    process = bd.WrappedBrownian()
    # the raw difference x_t - x0 is 34 turns: far outside any window of windings
    x0 = torch.full((20_000,), 2.8 - 40 * math.pi, dtype=torch.float64)
    xt = torch.full((20_000,), -2.9 + 28 * math.pi, dtype=torch.float64)
    x_s = bd.endpoint_conditioned_sample(process, 0.22, 0.6, x0, xt, generator=gen(8))
    assert_ks(x_s, bridge_cdf(2.8, -2.9, 0.22, 0.6), what="bridge off the circle")


# ---------------------------------------------------------------- backward sampling

@pytest.mark.parametrize("dtype", DTYPES)
def test_backward_with_posterior_draws_recovers_the_atoms(dtype):
    atoms = torch.tensor([-math.pi + 0.05, -1.2, 0.4, 1.9, math.pi - 0.08], dtype=torch.float64)
    weights = torch.tensor([0.3, 0.1, 0.2, 0.15, 0.25], dtype=torch.float64)
    rate, times = 1.0, torch.logspace(-4, math.log10(60.0), 25)
    g = gen(9)

    def guess(x_t, t):  # a draw of x0 from p(x0 = atom | x_t) ∝ weight · WN(x_t; atom, rt)
        shifts = torch.as_tensor(_images(rate * t.item()))
        lifted = x_t.double()[:, None, None] - atoms[:, None] + shifts
        log_lik = torch.logsumexp(-lifted ** 2 / (2 * rate * t.double()), dim=-1)
        post = torch.softmax(weights.log() + log_lik, dim=-1)
        return atoms[torch.multinomial(post, 1, generator=g)[:, 0]].to(x_t.dtype)

    process = bd.WrappedBrownian(rate)
    x_T = bd.sample_equilibrium(process, (12_000,), dtype=dtype, generator=g)
    x = bd.sample_backward(guess, process, times.to(dtype), x_T, generator=g)
    assert x.dtype == dtype and in_range(x)
    offset = _wrap(x.double()[:, None] - atoms)
    nearest = offset.abs().argmin(-1)
    assert_chi2(torch.bincount(nearest, minlength=5), weights, what="recovered atoms")
    # and x ~ forward(t_0) of its atom: N(0, r t_0) offsets (the atoms are 13 sd apart or more)
    assert_ks(offset.gather(1, nearest[:, None]), sps.norm(0, math.sqrt(rate * 1e-4)).cdf,
              what="offsets from the atoms")


# ---------------------------------------------------------------- the interpolated bridge

def test_interpolated_bridge_follows_diffusions_jl_recipe():
    # b = wrap(x0 + sqrt(rs) e1), c = wrap(b + sqrt(r(t-s)) e2), x_s = b + (s/t) * arc(c -> x_t)
    rate, s, t, x0, xt, n = 1.5, 0.3, 1.0, 2.8, -2.9, 20_000
    rng = np.random.default_rng(10)
    b = x0 + math.sqrt(rate * s) * rng.standard_normal(n)
    c = b + math.sqrt(rate * (t - s)) * rng.standard_normal(n)
    arc = np.mod(xt - c + np.pi, TWO_PI) - np.pi
    expected = np.mod(b + (s / t) * arc + np.pi, TWO_PI) - np.pi
    x_s = bd.endpoint_conditioned_sample(bd.WrappedInterpolatedBrownian(rate), s, t,
                                         torch.full((n,), x0, dtype=torch.float64),
                                         torch.full((n,), xt, dtype=torch.float64),
                                         generator=gen(11))
    assert in_range(x_s)
    assert_ks_2samp(x_s, expected, what="interpolated bridge")


def test_interpolated_bridge_moves_along_the_shortest_arc():
    # close to t the draw sits by x_t, across +-pi from x0, not half a turn away
    x0, xt = torch.full((1000,), 2.9), torch.full((1000,), -3.0)
    x_s = bd.endpoint_conditioned_sample(bd.WrappedInterpolatedBrownian(0.01), 0.999, 1.0,
                                         x0, xt, generator=gen(12))
    assert bool((_wrap(x_s - xt).abs() < 0.02).all())


# ---------------------------------------------------------------- range, masks, tuples

SPECIAL = [math.pi, -math.pi, 3 * math.pi, -1e3, 1e3, 0.0, 1e-30, -math.pi + 1e-7]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cls", [bd.WrappedBrownian, bd.WrappedInterpolatedBrownian])
def test_outputs_in_range_for_t_from_1e_minus_7_to_1e3(cls, dtype):
    g, process = gen(13), cls(rate=1.0)
    t = torch.logspace(-7, 3, 11, dtype=dtype)
    x0 = torch.cat([torch.tensor(SPECIAL, dtype=dtype), 2e3 * torch.rand(992, generator=g,
                                                                         dtype=dtype) - 1e3])
    x0 = x0.expand(11, -1)
    x_t = bd.sample_forward(process, t, x0, generator=g)
    assert x_t.dtype == dtype and in_range(x_t)
    far = torch.tensor(SPECIAL[::-1], dtype=dtype).repeat(125).expand(11, -1)
    for s in [t * 1e-3, t * 0.5, t * (1 - 1e-3)]:
        for end in [x_t, far]:
            x_s = bd.endpoint_conditioned_sample(process, s, t, x0, end, generator=g)
            assert x_s.dtype == dtype and in_range(x_s)


def test_per_element_times_masks_and_tuples():
    process = bd.WrappedBrownian()
    x0 = torch.zeros(2, 20_000, dtype=torch.float64)
    mask = torch.zeros_like(x0, dtype=torch.bool)
    mask[:, ::2] = True
    x0[:, 1::2] = 3.5  # held elements are returned as given, even off the circle
    t = torch.tensor([0.1, 2.0], dtype=torch.float64)
    out, reals = bd.sample_forward((process, bd.BrownianMotion()), t,
                                   (bd.masked(x0, mask), x0), generator=gen(14))
    assert bool((out.x[~mask] == 3.5).all()) and reals.shape == x0.shape
    for row in range(2):
        assert_ks(out.x[row][mask[row]], wrapped_normal_cdf(0.0, t[row].item()),
                  what=f"masked forward t={t[row].item()}")
    x_s = bd.endpoint_conditioned_sample(process, t / 2, t, x0, out, generator=gen(15))
    assert bool((x_s.x[~mask] == 3.5).all()) and in_range(x_s.x[mask])


def test_same_seed_same_draws():
    x0, xt = torch.linspace(-3, 3, 100), torch.linspace(3, -3, 100)
    for process in [bd.WrappedBrownian(0.7), bd.WrappedInterpolatedBrownian(0.7)]:
        for draw in [lambda g: bd.sample_forward(process, 2.0, x0, generator=g),
                     lambda g: bd.endpoint_conditioned_sample(process, 50.0, 80.0, x0, xt,
                                                              generator=g),
                     lambda g: bd.sample_equilibrium(process, (100,), generator=g)]:
            assert torch.equal(draw(gen(16)), draw(gen(16)))


# ---------------------------------------------------------------- bad input

def test_bad_input_raises():
    process, x = bd.WrappedBrownian(), torch.zeros(3)
    for bad in [float("nan"), float("inf")]:
        y = torch.tensor([0.0, bad, 1.0])
        with pytest.raises(ValueError, match="x0"):
            bd.sample_forward(process, 1.0, y)
        with pytest.raises(ValueError, match="x_t"):
            bd.endpoint_conditioned_sample(process, 0.5, 1.0, x, y)
        with pytest.raises(ValueError, match="x0"):
            bd.endpoint_conditioned_sample(process, 0.5, 1.0, y, x)
    with pytest.raises(TypeError, match="x0"):
        bd.sample_forward(process, 1.0, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype"):
        bd.sample_equilibrium(process, torch.zeros(3, dtype=torch.int64))
    for cls in [bd.WrappedBrownian, bd.WrappedInterpolatedBrownian]:
        for rate in [0.0, -1.0, float("nan")]:
            with pytest.raises(ValueError, match="rate"):
                cls(rate)
        with pytest.raises(TypeError, match="rate"):
            cls("1")


# ---------------------------------------------------------------- loss and scaler

def test_loss_is_the_squared_minimal_angle_with_finite_gradients():
    process = bd.WrappedBrownian()
    rng = np.random.default_rng(17)
    a, b = rng.uniform(-20, 20, 1000), rng.uniform(-20, 20, 1000)
    gap = np.abs(a - b) % TWO_PI
    expected = np.minimum(gap, TWO_PI - gap) ** 2
    got = process.loss(torch.tensor(a), torch.tensor(b))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9, atol=1e-9)
    # singular points: equal angles, equal modulo 2 pi, antipodes; both dtypes
    for dtype in DTYPES:
        x0 = torch.tensor([0.0, 1.0, 1.0, 0.5, -math.pi], dtype=dtype)
        x0_hat = torch.tensor([0.0, 1.0 + 2 * math.pi, 1.0 + math.pi, 0.5 - math.pi, math.pi],
                              dtype=dtype, requires_grad=True)
        loss = process.loss(x0_hat, x0)
        loss.sum().backward()
        assert bool(torch.isfinite(x0_hat.grad).all()), x0_hat.grad
        np.testing.assert_allclose(loss.detach().double().numpy(),
                                   [0.0, 0.0, np.pi ** 2, np.pi ** 2, 0.0], atol=1e-5, rtol=1e-5)
    x0_hat = torch.tensor([0.3, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    x0 = torch.tensor([-3.0, 2.5, 0.1], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(process.loss, (x0_hat, x0))


@pytest.mark.parametrize("cls", [bd.WrappedBrownian, bd.WrappedInterpolatedBrownian])
def test_scaler(cls):
    t = np.array([1e-7, 1e-3, 1.0, 1e3])
    expected = 2 * np.sqrt(-np.expm1(-0.5 * t / 8))
    for dtype in DTYPES:
        got = cls(rate=0.5).scaler(torch.tensor(t, dtype=dtype))
        assert got.dtype == dtype
        np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-6)
    assert bd.standard_loss(cls(), 1.0, torch.tensor([0.1]), torch.tensor([0.3])).isfinite()
