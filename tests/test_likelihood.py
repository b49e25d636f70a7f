"""bd.elbo and the likelihood hooks, against independent oracles.

* Gaussian data under OU with the exact posterior-mean guess: the chain is linear-Gaussian,
  so its exact likelihood and the exact expectation of the bound are closed forms (numpy);
  the bound sits above −log p(x0) and closes to 0.013 nats at 1000 steps.
* Discrete, k = 3, 4 steps: the chain and the variational law enumerated path by path with
  scipy.linalg.expm transition matrices.
* Circle and rotations: KLs between bridges by numerical integration of the exact densities
  (winding sums; the IGSO(3) series on a Gauss-Legendre grid over SO(3)).
* Closed forms against the Monte Carlo defaults of bd.Process; masks; structures; errors.
"""

import itertools
import math
import textwrap

import numpy as np
import pytest
import roma
import torch
from scipy import linalg

import bridgediff as bd

F64 = torch.float64


def standard_error(x: torch.Tensor) -> float:
    return float(x.std() / math.sqrt(x.numel()))


@pytest.fixture
def float64_default():
    """Times of integer data come in the default float dtype: make it float64 here."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    yield
    torch.set_default_dtype(previous)


# ---------------------------------------------------------------- OU, Gaussian data

THETA, SIGMA, MU = 0.5, 1.0, 0.2
M0, S0 = 0.7, 0.8                      # data ~ N(M0, S0²)


def _ou(u):
    a = np.exp(-THETA * u)
    return a, SIGMA ** 2 * (1 - a * a) / (2 * THETA)


def _posterior_mean_coefficients(t):
    """E[x0 | x_t] = h1 x_t + h0 for x0 ~ N(M0, S0²)."""
    a, v = _ou(t)
    var = 1 / (1 / S0 ** 2 + a * a / v)
    return var * a / v, var * (M0 / S0 ** 2 - a * MU * (1 - a) / v)


def _bridge_coefficients(s, t):
    """The OU bridge as alpha x0 + beta x_t + c + N(0, var)."""
    a_s, v_s = _ou(s)
    a_d, v_d = _ou(t - s)
    _, v_t = _ou(t)
    alpha, beta = a_s * v_d / v_t, a_d * v_s / v_t
    return alpha, beta, MU * (1 - alpha - beta), v_s * v_d / v_t


def exact_chain_nll(x0: np.ndarray, times) -> np.ndarray:
    """−log p_chain(x0): the posterior-mean chain maps Gaussians to Gaussians."""
    mean, var = MU, SIGMA ** 2 / (2 * THETA)
    for i in range(len(times) - 1, 0, -1):
        h1, h0 = _posterior_mean_coefficients(times[i])
        alpha, beta, c, v = _bridge_coefficients(times[i - 1], times[i])
        mean, var = (alpha * h1 + beta) * mean + alpha * h0 + c, (alpha * h1 + beta) ** 2 * var + v
    return 0.5 * np.log(2 * np.pi * var) + (x0 - mean) ** 2 / (2 * var)


def exact_expected_bound(x0: np.ndarray, times) -> np.ndarray:
    """E over the draws of the bound, term by term (every term is quadratic in x_t)."""
    t0, T = times[0], times[-1]
    vinf = SIGMA ** 2 / (2 * THETA)
    a, v = _ou(T - t0)
    total = 0.5 * (v / vinf + (a * (x0 - MU)) ** 2 / vinf - 1 - np.log(v / vinf))
    for i in range(len(times) - 1, 0, -1):
        s, t = times[i - 1], times[i]
        a, v = _ou(t - t0)
        mean_t = MU + a * (x0 - MU)                     # x_t ~ N(mean_t, v)
        h1, h0 = _posterior_mean_coefficients(t)
        alpha, beta, c, var_p = _bridge_coefficients(s, t)
        slope, offset = alpha * h1 + beta, alpha * h0 + c   # chain mean: slope x_t + offset
        if i > 1:
            aq, bq, cq, var_q = _bridge_coefficients(s - t0, t - t0)
            u, w = bq - slope, aq * x0 + cq - offset
            sq = (u * mean_t + w) ** 2 + u * u * v
            total = total + 0.5 * (var_q / var_p + sq / var_p - 1 - np.log(var_q / var_p))
        else:
            sq = (x0 - slope * mean_t - offset) ** 2 + slope ** 2 * v
            total = total + 0.5 * np.log(2 * np.pi * var_p) + sq / (2 * var_p)
    return total


def test_ou_gaussian_bound_is_above_the_likelihood_and_closes_as_steps_grow():
    process = bd.OrnsteinUhlenbeck(mean=MU, volatility=SIGMA, reversion=THETA)

    def posterior_mean(x_t, t):
        h1, h0 = _posterior_mean_coefficients(float(t))
        return h1 * x_t + h0

    g = torch.Generator().manual_seed(0)
    n_data = 40_000
    x0 = M0 + S0 * torch.randn(n_data, generator=g, dtype=F64)
    x0_np = x0.numpy()
    data_nll = 0.5 * np.log(2 * np.pi * S0 ** 2) + (x0_np - M0) ** 2 / (2 * S0 ** 2)
    gaps = {}
    for steps in (10, 100, 1000):
        times = bd.time_schedule(torch.exp, 1e-3, 8.0, steps + 1, finv=math.log).double()
        nelbo = bd.elbo(posterior_mean, process, x0, times, generator=g)
        assert nelbo.shape == (n_data,) and nelbo.dtype == F64
        se = standard_error(nelbo - torch.from_numpy(exact_chain_nll(x0_np, times.numpy())))
        expected = exact_expected_bound(x0_np, times.numpy())
        # the estimate is unbiased for the bound ...
        gap_to_expected = float(nelbo.mean()) - expected.mean()
        assert abs(gap_to_expected) < 4 * se, (steps, gap_to_expected, se)
        # ... which bounds the chain's exact −log likelihood, which is above the data's entropy
        chain_nll = exact_chain_nll(x0_np, times.numpy())
        assert float(nelbo.mean()) > chain_nll.mean() - 4 * se
        assert chain_nll.mean() > data_nll.mean()
        assert np.all(expected >= chain_nll - 1e-9)      # per data point, exactly
        gaps[steps] = (float(nelbo.mean()) - data_nll.mean(), se, expected.mean() - data_nll.mean())
    # closes as the steps refine: 1.72, 0.132, 0.0129 nats (exact)
    assert gaps[10][2] > gaps[100][2] > gaps[1000][2] > 0
    assert gaps[10][0] > gaps[100][0] + 4 * gaps[10][1] > gaps[1000][0] + 4 * gaps[100][1]
    assert gaps[1000][2] < 0.02
    assert gaps[1000][0] < 0.02 + 3 * gaps[1000][1], gaps


# ---------------------------------------------------------------- discrete, by enumeration

K = 3
TIMES = [0.05, 0.2, 0.45, 0.8, 1.4]     # 4 steps
RATE_Q = np.array([[-1.1, 0.7, 0.4], [0.3, -0.5, 0.2], [0.9, 0.6, -1.5]])
PI = np.array([0.2, 0.3, 0.5])
GUESS_W = np.array([[1.2, -0.3, 0.4], [-0.8, 0.9, 0.1], [0.3, 0.2, -1.0], [0.5, -0.5, 0.7]])


def _discrete_cases():
    """(name, process, generator matrix Q over all states, start law, data states)."""
    uniform = 0.8 * (np.ones((K, K)) / K - np.eye(K))
    independent = 1.3 * (np.outer(np.ones(K), PI) - np.eye(K))
    absorbing = np.zeros((K + 1, K + 1))
    absorbing[:K, K], absorbing[np.arange(K), np.arange(K)] = 0.9, -0.9
    stationary = linalg.null_space(RATE_Q.T)[:, 0]
    return [
        ("general", bd.GeneralDiscrete(torch.tensor(RATE_Q)), RATE_Q,
         stationary / stationary.sum()),
        ("uniform", bd.UniformDiscrete(0.8, K), uniform, np.full(K, 1 / K)),
        ("independent", bd.IndependentDiscrete(1.3, PI.tolist()), independent, PI),
        ("absorbing", bd.AbsorbingDiscrete(0.9, K), absorbing, np.eye(K + 1)[K]),
    ]


def _guess_probs(x_t: np.ndarray, t: float) -> np.ndarray:
    """A fixed soft guess p̂(x0 | x_t, t), softmax of a table (x_t may be the mask state)."""
    logits = GUESS_W[x_t] * (1 + t)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def _torch_guess(soft: bool):
    def guess(x_t, t):
        probs = torch.from_numpy(_guess_probs(x_t.numpy(), float(t)))
        return probs if soft else probs.argmax(-1)
    return guess


def _chain_kernel(Q, s, t, x_t: int, soft: bool) -> np.ndarray:
    """p_θ(x_s = · | x_t) by expm: the (marginalised) bridge to the guess. A guess that cannot
    reach x_t (only AbsorbingDiscrete has such: an unmasked x_t) leaves x_s = x_t, the
    absorbing bridge's stated law."""
    P_s, P_d, P_t = (linalg.expm(u * Q) for u in (s, t - s, t))
    probs = _guess_probs(np.array(x_t), t)
    if not soft:
        probs = np.eye(K)[probs.argmax()]
    weights = sum(probs[a] * P_s[a] * P_d[:, x_t] / P_t[a, x_t]
                  for a in range(K) if P_t[a, x_t] > 0 and probs[a] > 0)
    if np.isscalar(weights):
        return np.eye(Q.shape[0])[x_t]
    return weights / weights.sum()


def _variational_bridge(Q, t0, s, t, x0: int, x_t: int) -> np.ndarray:
    """q(x_s = · | x_{t0} = x0, x_t)."""
    weights = linalg.expm((s - t0) * Q)[x0] * linalg.expm((t - s) * Q)[:, x_t]
    return weights / weights.sum()


def _kl(q, p) -> float:
    keep = q > 0
    return float(np.sum(q[keep] * np.log(q[keep] / p[keep])))


def _enumerate(Q, start, x0: int, soft: bool, absorbing: bool):
    """(E_q[−ELBO], −log p_chain(x0)) by summing over all n^4 paths x_{t1..t4}."""
    n, steps = Q.shape[0], len(TIMES) - 1
    paths = np.array(list(itertools.product(range(n), repeat=steps)))
    states = np.concatenate([np.full((len(paths), 1), x0), paths], 1)   # x_{t0}, ..., x_{t4}
    with np.errstate(divide="ignore"):
        log_p = np.log(start[states[:, -1]])
        for i in range(1, steps + 1):
            kernel = np.stack([_chain_kernel(Q, TIMES[i - 1], TIMES[i], l, soft)
                               for l in range(n)])
            log_p = log_p + np.log(kernel[states[:, i], states[:, i - 1]])
    q = np.ones(len(paths))
    for i in range(steps):
        q = q * linalg.expm((TIMES[i + 1] - TIMES[i]) * Q)[states[:, i], states[:, i + 1]]
    if absorbing:          # the variational law is conditioned on x_T = mask
        q = q * (states[:, -1] == n - 1) / linalg.expm((TIMES[-1] - TIMES[0]) * Q)[x0, n - 1]
    keep = q > 0
    nelbo = float(np.sum(q[keep] * (np.log(q[keep]) - log_p[keep])))
    with np.errstate(divide="ignore"):                   # a hard guess may never hit x0
        return nelbo, -float(np.log(np.exp(log_p).sum()))


@pytest.mark.parametrize("soft", [True, False], ids=["soft", "hard"])
@pytest.mark.parametrize("case", _discrete_cases(), ids=lambda c: c[0])
def test_discrete_bound_equals_the_enumerated_chain(case, soft, float64_default):
    name, process, Q, start, = case
    absorbing = name == "absorbing"
    g = torch.Generator().manual_seed(1)
    times = torch.tensor(TIMES, dtype=F64)
    for x0 in range(K + absorbing):       # the absorbing chain also outputs the mask state
        expected, chain_nll = _enumerate(Q, start, x0, soft, absorbing)
        assert expected >= chain_nll - 1e-12          # the bound, by enumeration
        data = torch.full((10_000,), x0)
        nelbo = bd.elbo(_torch_guess(soft), process, data, times, generator=g)
        assert nelbo.dtype == F64
        if math.isinf(expected):                      # a hard guess can miss x0 for good
            assert torch.isinf(nelbo).any()
            continue
        se = standard_error(nelbo)
        assert abs(float(nelbo.mean()) - expected) < 4 * se + 1e-12, (x0, expected, se)


@pytest.mark.parametrize("soft", [True, False], ids=["soft", "hard"])
@pytest.mark.parametrize("case", _discrete_cases(), ids=lambda c: c[0])
def test_discrete_terms_equal_the_brute_force_terms(case, soft, float64_default):
    name, process, Q, start = case
    n, t0, T = Q.shape[0], TIMES[0], TIMES[-1]
    guess = _torch_guess(soft)
    x0 = torch.arange(K).repeat_interleave(n)            # every (x0, x_t) pair
    x_t = torch.arange(n).repeat(K)
    for i in range(2, len(TIMES)):
        s, t = TIMES[i - 1], TIMES[i]
        x0_hat = guess(x_t, torch.tensor(t))
        kl = process.bridge_kl(torch.tensor(t0), torch.tensor(s), torch.tensor(t), x0, x0_hat,
                               x_t)
        pairs = [(j, a, l) for j, (a, l) in enumerate(zip(x0.tolist(), x_t.tolist()))
                 if linalg.expm((t - t0) * Q)[a, l] > 0]     # x_t reachable from x0
        with np.errstate(divide="ignore"):                   # a hard miss costs +inf
            brute = [_kl(_variational_bridge(Q, t0, s, t, a, l), _chain_kernel(Q, s, t, l, soft))
                     for _, a, l in pairs]
        np.testing.assert_allclose(kl.numpy()[[j for j, _, _ in pairs]], brute, rtol=1e-9,
                                   atol=1e-13)
    s, t = TIMES[0], TIMES[1]
    log_p = process.bridge_log_prob(torch.tensor(s), torch.tensor(t), guess(x_t, torch.tensor(t)),
                                    x_t, x0)
    with np.errstate(divide="ignore"):
        brute = [np.log(_chain_kernel(Q, s, t, l, soft)[a])
                 for a, l in zip(x0.tolist(), x_t.tolist())]
    np.testing.assert_allclose(log_p.numpy(), brute, rtol=1e-9)
    prior = process.prior_kl(torch.tensor(t0), torch.tensor(T), torch.arange(K))
    brute = [0.0 if name == "absorbing" else _kl(linalg.expm((T - t0) * Q)[a], start)
             for a in range(K)]
    np.testing.assert_allclose(prior.numpy(), brute, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("case", _discrete_cases(), ids=lambda c: c[0])
def test_discrete_terms_in_float32_keep_float64_precision_at_long_times(case):
    """Near equilibrium the categorical KLs cancel (Σ q log q/p with q ≈ p; the prior's two
    O(α) terms to O(α²)) and the absorbing bridge's 1 − ρ rounds to 0: float32 times must
    give the float64 answer (checked against brute force above), not a bias or NaN."""
    name, process, Q, start = case
    n = Q.shape[0]
    x0 = torch.arange(K).repeat_interleave(n)
    x_t = torch.arange(n).repeat(K)
    guess = _torch_guess(soft=True)
    for s, t in ((9.9, 10.0), (19.0, 20.0), (39.0, 40.0)):
        args = [torch.tensor(v, dtype=torch.float32) for v in (1e-3, s, t)]
        x0_hat = guess(x_t, args[2]).float()
        kl32 = process.bridge_kl(*args, x0, x0_hat, x_t)
        kl64 = process.bridge_kl(*(a.double() for a in args), x0, x0_hat.double(), x_t)
        assert kl32.dtype == torch.float32 and bool(torch.isfinite(kl32).all()), (s, t, kl32)
        np.testing.assert_allclose(kl32.numpy(), kl64.numpy(), rtol=1e-6, atol=1e-30)
    for T in (12.0, 16.0):
        t0, T32 = torch.tensor(1e-3), torch.tensor(T)
        prior32 = process.prior_kl(t0, T32, torch.arange(K))
        prior64 = process.prior_kl(t0.double(), T32.double(), torch.arange(K))
        assert bool((prior32 >= 0).all())
        np.testing.assert_allclose(prior32.numpy(), prior64.numpy(), rtol=1e-6, atol=1e-30)


def test_absorbing_bound_stays_finite_and_tight_when_everything_is_masked():
    """With the exact posterior guess of uniform data the bound is -log p(x0) = log k at any
    horizon; in float32 it was NaN from r·T ≈ 20 (1 − ρ computed as a difference)."""
    k, g = 6, torch.Generator().manual_seed(3)
    A = bd.AbsorbingDiscrete(1.0, k)

    def posterior(x, t):
        probs = torch.full(x.shape + (k,), 1 / k)
        seen = x < k
        probs[seen] = torch.nn.functional.one_hot(x[seen], k).float()
        return probs

    x0 = torch.randint(0, k, (400,), generator=g)
    for T in (10.0, 30.0, 60.0):
        nelbo = bd.elbo(posterior, A, x0, torch.linspace(1e-3, T, 101), generator=g)
        assert nelbo.dtype == torch.float32 and bool(torch.isfinite(nelbo).all()), T
        assert abs(float(nelbo.mean()) - math.log(k)) < 4 * standard_error(nelbo) + 1e-3, T


# ---------------------------------------------------------------- circle and rotations

def _wrapped_normal(d, var, windings=40):
    n = np.arange(-windings, windings + 1)
    return np.exp(-(d[..., None] + 2 * np.pi * n) ** 2 / (2 * var)).sum(-1) / np.sqrt(
        2 * np.pi * var)


@pytest.mark.parametrize("rt", [1e-4, 0.3, 5.0, 9.99, 10.0, 40.0])
def test_wrapped_normal_log_density(rt):
    x0, x_t = torch.tensor(2.9, dtype=F64), torch.linspace(-math.pi, math.pi - 1e-9, 101,
                                                          dtype=F64)
    log_p = bd.WrappedBrownian(2.0).forward_log_prob(torch.tensor(rt / 2, dtype=F64), x0, x_t)
    d = np.mod(x_t.numpy() - 2.9 + np.pi, 2 * np.pi) - np.pi
    with np.errstate(divide="ignore"):
        expected = np.log(_wrapped_normal(d, rt))
    finite = np.isfinite(expected)                     # rt = 1e-4 underflows far from x0
    np.testing.assert_allclose(log_p.numpy()[finite], expected[finite], rtol=1e-11)
    assert not finite.all() or rt > 1e-3
    assert torch.all(log_p[~torch.from_numpy(finite)] < -700)


def test_circle_bridge_kl_and_prior_equal_quadrature():
    rate, t0, s, t, T = 1.5, 0.05, 0.3, 0.7, 2.0
    x0, x0_hat, x_t = 0.4, -2.5, 2.9
    grid = np.linspace(-np.pi, np.pi, 20_001)[:-1]    # periodic: the rectangle rule is spectral
    dx = grid[1] - grid[0]
    wrap = lambda y: np.mod(y + np.pi, 2 * np.pi) - np.pi
    q = _wrapped_normal(wrap(grid - x0), rate * (s - t0)) * _wrapped_normal(wrap(x_t - grid),
                                                                           rate * (t - s))
    p = _wrapped_normal(wrap(grid - x0_hat), rate * s) * _wrapped_normal(wrap(x_t - grid),
                                                                        rate * (t - s))
    q, p = q / (q.sum() * dx), p / (p.sum() * dx)
    kl_quadrature = float(np.sum(q * np.log(q / p)) * dx)
    forward = _wrapped_normal(wrap(grid - x0), rate * (T - t0))
    prior_quadrature = float(np.sum(forward * np.log(forward * 2 * np.pi)) * dx)

    process, n = bd.WrappedBrownian(rate), 200_000
    g = torch.Generator().manual_seed(2)
    full = lambda v: torch.full((n,), v, dtype=F64)
    kl = process.bridge_kl(full(t0), full(s), full(t), full(x0), full(x0_hat), full(x_t), g)
    assert abs(float(kl.mean()) - kl_quadrature) < 4 * standard_error(kl), kl_quadrature
    prior = process.prior_kl(full(t0), full(T), full(x0), g)
    assert abs(float(prior.mean()) - prior_quadrature) < 4 * standard_error(prior)


def _igso3_haar_density(omega, eps2, terms=30):
    """f(ω) = Σ (2l+1) e^{−l(l+1)ε²/2} sin((l+½)ω)/sin(ω/2) (limit 2l+1 at ω = 0)."""
    l = np.arange(terms)
    small = np.abs(np.sin(omega / 2)) < 1e-12
    ratio = np.where(small[..., None], 2 * l + 1,
                     np.sin((l + 0.5) * omega[..., None])
                     / np.where(small, 1.0, np.sin(omega / 2))[..., None])
    return ((2 * l + 1) * np.exp(-l * (l + 1) * eps2 / 2) * ratio).sum(-1)


def _quat_angle(p, q):
    return 2 * np.arccos(np.clip(np.abs((p * q).sum(-1)), 0, 1))


def _haar_grid(n_angle=40, n_polar=20, n_azimuth=40):
    """Quaternions (N, 4) and Haar probability weights (N,) of a product Gauss-Legendre grid
    over axis-angle coordinates: dHaar = (1 − cos ω)/π dω · d(axis)/(4π)."""
    w_nodes, w_weights = np.polynomial.legendre.leggauss(n_angle)
    omega, w_omega = (w_nodes + 1) * np.pi / 2, w_weights * np.pi / 2
    cos_polar, w_polar = np.polynomial.legendre.leggauss(n_polar)
    azimuth = np.arange(n_azimuth) * 2 * np.pi / n_azimuth
    W, C, A = np.meshgrid(omega, cos_polar, azimuth, indexing="ij")
    sin_polar = np.sqrt(1 - C ** 2)
    axis = np.stack([sin_polar * np.cos(A), sin_polar * np.sin(A), C], -1)
    quat = np.concatenate([axis * np.sin(W / 2)[..., None], np.cos(W / 2)[..., None]], -1)
    weight = ((1 - np.cos(omega)) / np.pi * w_omega)[:, None, None] * w_polar[None, :, None] \
        * (2 * np.pi / n_azimuth) / (4 * np.pi)
    return quat.reshape(-1, 4), np.broadcast_to(weight, W.shape).reshape(-1)


def _quat_product(p, q):
    """Hamilton product of XYZW quaternions (numpy)."""
    pv, pw, qv, qw = p[..., :3], p[..., 3:], q[..., :3], q[..., 3:]
    return np.concatenate([pw * qv + qw * pv + np.cross(pv, qv),
                           pw * qw - (pv * qv).sum(-1, keepdims=True)], -1)


def test_rotation_bridge_kl_and_prior_equal_quadrature():
    rate, t0, s, t, T = 0.5, 0.02, 0.25, 0.5, 1.0
    g = torch.Generator().manual_seed(3)
    x0, x0_hat, x_t = roma.random_unitquat(3, generator=g, dtype=F64).numpy()
    grid, weight = _haar_grid()
    assert abs(weight.sum() - 1) < 1e-12
    x_s = _quat_product(x0, grid)           # Haar is invariant: centre the grid on x0
    f = _igso3_haar_density
    q = f(_quat_angle(x0, x_s), 4 * rate * (s - t0)) * f(_quat_angle(x_s, x_t), 4 * rate * (t - s))
    p = f(_quat_angle(x0_hat, x_s), 4 * rate * s) * f(_quat_angle(x_s, x_t), 4 * rate * (t - s))
    q, p = q / (q * weight).sum(), p / (p * weight).sum()
    kl_quadrature = float((weight * q * np.log(q / p)).sum())
    forward = f(_quat_angle(x0, x_s), 4 * rate * (T - t0))
    prior_quadrature = float((weight * forward * np.log(forward)).sum())

    process, n = bd.RotationDiffusion(rate), 20_000
    rows = lambda q: torch.from_numpy(q).expand(n, 4)
    full = lambda v: torch.full((n, 1), v, dtype=F64)
    kl = process.bridge_kl(full(t0), full(s), full(t), rows(x0), rows(x0_hat), rows(x_t), g)
    assert kl.shape == (n,)
    assert abs(float(kl.mean()) - kl_quadrature) < 4 * standard_error(kl), kl_quadrature
    prior = process.prior_kl(full(t0), full(T), rows(x0), g)
    assert abs(float(prior.mean()) - prior_quadrature) < 4 * standard_error(prior)


# ---------------------------------------------------------------- closed forms = defaults

def _monte_carlo_agrees(closed, draws, what):
    """closed (M,) against M columns of draws (N, M): each within 4 standard errors."""
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert torch.all((draws.mean(0) - closed).abs() < 4 * se + 1e-12), (what, closed,
                                                                           draws.mean(0), se)


def test_ou_closed_forms_equal_the_defaults():
    process, g, n = bd.OrnsteinUhlenbeck(MU, SIGMA, THETA), torch.Generator().manual_seed(4), 50_000
    x0 = torch.tensor([0.3, -1.2, 2.0, 0.0], dtype=F64)
    x0_hat = torch.tensor([0.1, 0.8, 2.4, -1.5], dtype=F64)
    x_t = torch.tensor([0.5, -0.2, 1.0, 0.4], dtype=F64)
    t0, s, t = (torch.tensor(v, dtype=F64) for v in (0.01, 0.3, 0.9))
    closed = process.bridge_kl(t0, s, t, x0, x0_hat, x_t)
    draws = bd.Process.bridge_kl(process, t0, s, t, x0.expand(n, 4), x0_hat.expand(n, 4),
                                 x_t.expand(n, 4), g)
    _monte_carlo_agrees(closed, draws, "bridge_kl")
    T = torch.tensor(1.5, dtype=F64)
    _monte_carlo_agrees(process.prior_kl(t0, T, x0),
                        bd.Process.prior_kl(process, t0, T, x0.expand(n, 4), g), "prior_kl")
    x_s = torch.tensor([0.2, -0.7, 1.9, -0.3], dtype=F64)
    torch.testing.assert_close(process.bridge_log_prob(s, t, x0, x_t, x_s),
                               bd.Process.bridge_log_prob(process, s, t, x0, x_t, x_s),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("process", [bd.IndependentDiscrete(1.3, PI.tolist()),
                                     bd.GeneralDiscrete(torch.tensor(RATE_Q))],
                         ids=["independent", "general"])
def test_discrete_closed_forms_equal_the_defaults(process):
    g, n = torch.Generator().manual_seed(5), 100_000
    x0, x_t = torch.tensor([0, 1, 2, 2]), torch.tensor([1, 1, 0, 2])
    x0_hat = torch.tensor([[0.2, 0.5, 0.3], [0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]],
                          dtype=F64)
    t0, s, t = (torch.tensor(v, dtype=F64) for v in (0.05, 0.3, 0.9))
    closed = process.bridge_kl(t0, s, t, x0, x0_hat, x_t)
    draws = bd.Process.bridge_kl(process, t0, s, t, x0.expand(n, 4), x0_hat.expand(n, 4, 3),
                                 x_t.expand(n, 4), g)
    _monte_carlo_agrees(closed, draws, "bridge_kl")
    T = torch.tensor(1.5, dtype=F64)
    _monte_carlo_agrees(process.prior_kl(t0, T, x0),
                        bd.Process.prior_kl(process, t0, T, x0.expand(n, 4), g), "prior_kl")
    x_s = torch.tensor([0, 2, 1, 2])
    torch.testing.assert_close(process.bridge_log_prob(s, t, x0, x_t, x_s),
                               bd.Process.bridge_log_prob(process, s, t, x0, x_t, x_s),
                               rtol=1e-12, atol=1e-12)


class _OUFromDensities(bd.OrnsteinUhlenbeck):
    """OU with only its two densities: every other likelihood hook takes bd.Process's default."""
    bridge_log_prob = bd.Process.bridge_log_prob
    bridge_kl = bd.Process.bridge_kl
    prior_kl = bd.Process.prior_kl


def test_a_process_with_only_its_densities_gets_the_same_bound():
    g = torch.Generator().manual_seed(6)
    x0 = M0 + S0 * torch.randn(20_000, 2, generator=g, dtype=F64)
    times = bd.time_schedule(torch.exp, 1e-2, 6.0, 21, finv=math.log).double()
    guess = lambda x_t, t: 0.5 * x_t
    closed = bd.elbo(guess, bd.OrnsteinUhlenbeck(MU, SIGMA, THETA), x0, times, generator=g)
    defaults = bd.elbo(guess, _OUFromDensities(MU, SIGMA, THETA), x0, times, generator=g)
    se = math.hypot(standard_error(closed), standard_error(defaults))
    assert abs(float(closed.mean() - defaults.mean())) < 4 * se


# ---------------------------------------------------------------- masks, structures, dtypes

def _ou_guess(x_t, t):
    return 0.6 * x_t + 0.1


def test_held_elements_contribute_nothing():
    process, times = bd.OrnsteinUhlenbeck(), torch.tensor([0.01, 0.1, 0.5, 2.0])
    g = torch.Generator().manual_seed(7)
    x0 = torch.randn(4000, 2, generator=g)
    mask = torch.tensor([True, False]).expand(4000, 2)
    held = bd.elbo(_ou_guess, process, bd.masked(x0, torch.zeros(4000, dtype=torch.bool)), times)
    assert torch.equal(held, torch.zeros(4000))
    run = lambda x: bd.elbo(_ou_guess, process, bd.masked(x, mask), times,
                            generator=torch.Generator().manual_seed(8))
    moved = x0.clone()
    moved[:, 1] = 1e3                                  # held values play no part
    half = run(x0)
    assert torch.equal(half, run(moved))
    # one diffusing column of two: the bound of that column alone
    single = bd.elbo(_ou_guess, process, x0[:, :1], times, generator=g)
    se = math.hypot(standard_error(half), standard_error(single))
    assert abs(float(half.mean() - single.mean())) < 4 * se


def test_structures_sum_their_components(float64_default):
    ou, discrete = bd.OrnsteinUhlenbeck(), bd.UniformDiscrete(1.0, 3)
    g = torch.Generator().manual_seed(9)
    times = torch.tensor([0.02, 0.3, 1.0, 3.0])
    x_real, x_states = torch.randn(20_000, 3, generator=g), torch.randint(0, 3, (20_000, 2),
                                                                          generator=g)
    probs = lambda x_t: torch.softmax(torch.stack([x_t, -x_t, 0 * x_t], -1).double(), -1)
    both = bd.elbo(lambda x, t: {"a": _ou_guess(x["a"], t), "b": probs(x["b"])},
                   {"a": ou, "b": discrete}, {"a": x_real, "b": x_states}, times, generator=g)
    parts = (bd.elbo(_ou_guess, ou, x_real, times, generator=g)
             + bd.elbo(lambda x, t: probs(x), discrete, x_states, times, generator=g))
    se = math.hypot(standard_error(both), standard_error(parts))
    assert abs(float(both.mean() - parts.mean())) < 4 * se
    as_tuple = bd.elbo(lambda x, t: (_ou_guess(x[0], t), probs(x[1])), (ou, discrete),
                       [x_real, x_states], times, generator=torch.Generator().manual_seed(10))
    assert as_tuple.shape == (20_000,)


def test_one_grid_per_component_is_each_components_own_bound():
    """Identical grids given per component are the shared grid, bit for bit; different grids
    give, in expectation, the sum of each component's bound on its own grid (the guess
    factorises: each component's posterior mean at its own time)."""
    P = (bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5), bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5))
    g = torch.Generator().manual_seed(21)
    x0 = (torch.randn(4000, 2, generator=g, dtype=F64), torch.randn(4000, 3, generator=g,
                                                                   dtype=F64))

    def guess(x, t):
        times = t if isinstance(t, tuple) else (t, t)
        return tuple(xi * torch.exp(-0.5 * ti) for xi, ti in zip(x, times))

    grid = torch.linspace(0.01, 6.0, 21, dtype=F64)
    run = lambda ts, seed: bd.elbo(guess, P, x0, ts, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(grid, 1), run((grid, grid), 1))
    other = bd.time_schedule(torch.exp, 0.05, 4.0, 21, finv=math.log).double()
    joint = run((grid, other), 2)
    parts = [bd.elbo(lambda x, t: x * torch.exp(-0.5 * t), P[c], x0[c], ts,
                     generator=torch.Generator().manual_seed(3 + c))
             for c, ts in enumerate((grid, other))]
    se = math.hypot(standard_error(joint), math.hypot(*map(standard_error, parts)))
    assert abs(float(joint.mean() - parts[0].mean() - parts[1].mean())) < 4 * se, se
    with pytest.raises(ValueError, match="one length"):
        bd.elbo(guess, P, x0, (grid, other[:-1]))



@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_dtype_seed_and_gradient(dtype):
    process, times = bd.OrnsteinUhlenbeck(), torch.tensor([0.01, 0.1, 0.5, 2.0])
    x0 = torch.randn(64, 3, dtype=dtype, generator=torch.Generator().manual_seed(11))
    weight = torch.tensor(0.7, dtype=dtype, requires_grad=True)
    run = lambda: bd.elbo(lambda x_t, t: weight * x_t, process, x0, times,
                          generator=torch.Generator().manual_seed(12))
    nelbo = run()
    assert nelbo.dtype == dtype and torch.isfinite(nelbo).all()
    assert torch.equal(nelbo, run())
    nelbo.mean().backward()
    assert torch.isfinite(weight.grad)
    # a guess in another float dtype does not change the result's (the data's) dtype
    other = torch.float64 if dtype == torch.float32 else torch.float32
    for P in (process, bd.BrownianMotion(), bd.CenteredOrnsteinUhlenbeck(dim=-1)):
        assert bd.elbo(lambda x_t, t: x_t.to(other), P, x0, times).dtype == dtype


def test_brownian_prior_is_the_stated_normal():
    process, g = bd.BrownianMotion(rate=2.0), torch.Generator().manual_seed(13)
    t0, T = torch.tensor(0.1, dtype=F64), torch.tensor(4.0, dtype=F64)
    x0 = torch.tensor([0.0, 1.5, -3.0], dtype=F64)
    # KL(N(x0, r(T − t0)) || N(0, rT)) by its textbook formula
    var_q, var_p = 2.0 * (T - t0), 2.0 * T
    expected = 0.5 * (torch.log(var_p / var_q) + (var_q + x0 ** 2) / var_p - 1)
    torch.testing.assert_close(process.prior_kl(t0, T, x0, g), expected, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------- errors

class _SamplerOnly(bd.Process):
    def sample_forward(self, t, x0, generator=None):
        return x0 + t

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        return x0 + s


def test_missing_hooks_and_bad_input_raise_clearly():
    times, x0 = torch.tensor([0.1, 0.5, 1.0]), torch.zeros(4)
    with pytest.raises(NotImplementedError, match=r"forward_log_prob\(t, x0, x_t\)"):
        bd.elbo(lambda x, t: x, _SamplerOnly(), x0, times)
    with pytest.raises(NotImplementedError, match="bridge_log_prob"):
        bd.elbo(lambda x, t: x, bd.WrappedInterpolatedBrownian(1.0), x0, times)
    with pytest.raises(ValueError, match="at least 2"):
        bd.elbo(lambda x, t: x, bd.OrnsteinUhlenbeck(), x0, [1.0])
    with pytest.raises(ValueError, match="increasing"):
        bd.elbo(lambda x, t: x, bd.OrnsteinUhlenbeck(), x0, [1.0, 0.5])
    with pytest.raises(TypeError, match="guess"):
        bd.elbo(None, bd.OrnsteinUhlenbeck(), x0, times)
    with pytest.raises(ValueError, match=r"guess\(x_t, t\)"):
        bd.elbo(lambda x, t: x[:2], bd.OrnsteinUhlenbeck(), x0, times)
    with pytest.raises(ValueError, match="batch"):
        bd.elbo(lambda x, t: x, bd.OrnsteinUhlenbeck(), torch.tensor(0.0), times)
    with pytest.raises(ValueError, match="same batch size B.*20, 10"):
        bd.elbo(lambda x, t: x, (bd.OrnsteinUhlenbeck(),) * 2, (torch.zeros(20), torch.zeros(10)),
                times)
    Q = torch.tensor([[-1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="stationary"):
        bd.elbo(lambda x, t: x, bd.GeneralDiscrete(Q), torch.zeros(4, dtype=torch.long), times)


def test_the_docstring_example_runs_and_says_what_it_gets():
    code = textwrap.dedent(bd.elbo.__doc__.split("Example::")[1])
    torch.manual_seed(0)
    namespace = {"bd": bd, "torch": torch, "math": math}
    exec(code, namespace)
    nelbo = namespace["nelbo"]
    assert nelbo.shape == (1000,)
    assert 2.84 < float(nelbo.mean()) < 3.4


def test_every_process_at_once_on_the_host_and_the_device_path():
    from bridgediff._util import device_path
    processes = {"ou": bd.OrnsteinUhlenbeck(), "bm": bd.BrownianMotion(0.5),
                 "uniform": bd.UniformDiscrete(1.0, 4), "general": bd.GeneralDiscrete(
                     torch.tensor(RATE_Q)), "absorbing": bd.AbsorbingDiscrete(1.0, 3),
                 "circle": bd.WrappedBrownian(1.0)}   # (rotations: no path-dependent code)
    g = torch.Generator().manual_seed(14)
    n = 3000
    x0 = {"ou": torch.randn(n, 2, generator=g), "bm": torch.randn(n, generator=g),
          "uniform": torch.randint(0, 4, (n,), generator=g),
          "general": torch.randint(0, 3, (n, 2), generator=g),
          "absorbing": torch.randint(0, 3, (n,), generator=g),
          "circle": torch.rand(n, generator=g) * 6 - 3}
    noisy = lambda x: torch.softmax(torch.stack([x, 1 - x, 2 * x], -1).float(), -1)

    def guess(x_t, t):                 # soft or hard guesses near the data
        return {**x0, "uniform": torch.full(x_t["uniform"].shape + (4,), 0.25),
                "general": noisy(x_t["general"]), "ou": 0.5 * x_t["ou"] + 0.5 * x0["ou"]}

    times = torch.tensor([0.02, 0.1, 0.4, 1.5])
    run = lambda seed: bd.elbo(guess, processes, x0, times,
                               generator=torch.Generator().manual_seed(seed))
    host = run(15)
    with device_path():
        device, again = run(16), run(16)
    assert torch.equal(device, again) and torch.isfinite(host).all()
    se = math.hypot(standard_error(host), standard_error(device))
    assert abs(float(host.mean() - device.mean())) < 4 * se
