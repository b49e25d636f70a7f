"""SphereBrownian: the S² heat kernel, the forward law and the exact bridge.

Oracles are written here, independently of bridgediff: the heat kernel by its Legendre
series (numpy recurrence, τ ≥ 0.2) or, for small τ, by scipy's QAWS quadrature of the
Abel–Mehler short-time form in the variable y = (ω² − θ²)/(2τ) (checked against the series
where both apply); the angle CDF by the closed-form Legendre series of its integral; the
bridge's marginals by quadrature of p_s(∠(x0, x)) p_{t−s}(∠(x, x_t)) on a polar grid.
"""

import functools
import math

import numpy as np
import pytest
import torch
from scipy import integrate, interpolate
from scipy import stats as sps
from stats import assert_binomial, assert_ks, assert_ks_2samp

import bridgediff as bd
from bridgediff import sphere

F64 = torch.float64


# ---------------------------------------------------------------- independent oracles

def legendre_sums(z, weights_of_l, L):
    """Σ_l c_l(τ) P_l(z) and Σ_l c_l(τ) P_l'(z) by the three-term recurrences (numpy)."""
    z = np.asarray(z, float)
    p_prev, p, d_prev, d = np.ones_like(z), z, np.zeros_like(z), np.ones_like(z)
    total, total_d = weights_of_l(0) * np.ones_like(z), np.zeros_like(z)
    for l in range(1, L + 1):
        c = weights_of_l(l)
        total, total_d = total + c * p, total_d + c * d
        p_prev, p, d_prev, d = (p, ((2 * l + 1) * z * p - l * p_prev) / (l + 1),
                                d, d_prev + (2 * l + 1) * p)
    return total, total_d


def series_log_density(theta, tau):
    """log p_τ(θ) and d log p/dz by 80 Legendre terms (relative accuracy 1e-12 for τ ≥ 0.45)."""
    def weight(l):
        return (2 * l + 1) / (4 * math.pi) * math.exp(-l * (l + 1) * tau / 2)
    s, d = legendre_sums(np.cos(theta), weight, 80)
    return np.log(s), d / s


def abel_log_density(theta, tau):
    """log p_τ(θ) from the short-time form: p = e^{τ/8}/(2π^{3/2} τ^{3/2}) e^{−θ²/(2τ)} τ
    ∫_0^Y e^{−y} (cos θ − cos ω)^{−1/2} dy, ω² = θ² + 2τy, Y = 2π(π − θ)/τ. Both end points
    are inverse-square-root singular: scipy's algebraic weight takes them out, and
    cos θ − cos ω = 2 sin(τy/(ω+θ)) sin(τ(Y−y)/(2π−θ+ω)) has no cancellation at either."""
    theta = min(max(float(theta), 1e-10), math.pi - 1e-9)   # p_τ is smooth at 0 and π
    big_y = 2 * math.pi * (math.pi - theta) / tau

    def smooth(y, both):
        omega = math.sqrt(theta * theta + 2 * tau * y)
        # y / sin((ω − θ)/2), with (ω − θ)/2 = τy/(ω + θ); far = π − (ω + θ)/2, accurately
        near = (omega + theta) / (tau * np.sinc(tau * y / (math.pi * (omega + theta))))
        plus, far = (omega + theta) / 2, tau * (big_y - y) / (2 * math.pi - theta + omega)
        if not both:
            return math.exp(-y) * math.sqrt(near / (2 * math.sin(min(plus, far))))
        if far < plus:  # (Y − y)/sin((ω+θ)/2) near the upper end
            rest = (2 * math.pi - theta + omega) / (tau * np.sinc(far / math.pi))
        else:
            rest = (big_y - y) / math.sin(plus)
        return math.exp(-y) * math.sqrt(near * rest / 2)

    if big_y > 60:     # beyond y = 60 the integrand weighs below e^{−60}: one singular end
        value = integrate.quad(smooth, 0, 60, args=(False,), weight="alg", wvar=(-0.5, 0),
                               limit=200, epsabs=0, epsrel=1e-13)[0]
    else:
        value = integrate.quad(smooth, 0, big_y, args=(True,), weight="alg", wvar=(-0.5, -0.5),
                               limit=200, epsabs=0, epsrel=1e-13)[0]
    return (tau / 8 - 1.5 * math.log(tau) - math.log(2 * math.pi ** 1.5) - theta ** 2 / (2 * tau)
            + math.log(tau * value))


def log_density(theta, tau):
    if tau >= 0.45:
        return series_log_density(np.asarray(theta, float), tau)[0]
    return np.array([abel_log_density(t, tau) for t in np.atleast_1d(theta)])


@functools.lru_cache(maxsize=None)
def log_density_table(tau, lo, hi, n=160):
    """log p_τ on [lo, hi] as a spline of the smooth part log p + θ²/(2τ)."""
    nodes = lo + (hi - lo) * (1 - np.cos(np.linspace(0, math.pi, n))) / 2
    spline = interpolate.CubicSpline(nodes, log_density(nodes, tau) + nodes ** 2 / (2 * tau))
    return lambda th: spline(th) - th ** 2 / (2 * tau)


@functools.lru_cache(maxsize=None)
def angle_cdf(tau):
    """P(∠(x0, x_t) ≤ θ) = (1 − z)/2 + ½ Σ_{l≥1} e^{−l(l+1)τ/2} (P_{l−1}(z) − P_{l+1}(z))."""
    L = int(math.sqrt(2 * 50 / tau)) + 10

    def cdf(theta):
        z = np.cos(np.asarray(theta, float))
        p_prev, p = np.ones_like(z), z                  # P_{l-1}, P_l at l = 1
        total = (1 - z) / 2
        for l in range(1, L + 1):
            p_next = ((2 * l + 1) * z * p - l * p_prev) / (l + 1)
            total = total + 0.5 * math.exp(-l * (l + 1) * tau / 2) * (p_prev - p_next)
            p_prev, p = p, p_next
        return np.clip(total, 0, 1)
    return cdf


@functools.lru_cache(maxsize=None)
def bridge_marginals(tau_s, tau_d, omega, n=1600):
    """CDFs of θ1 = ∠(x0, x_s), θ2 = ∠(x_s, x_t) and the azimuth φ of x_s about x0 (from the
    x0–x_t plane) when x_s ∝ p_s(θ1) p_{t−s}(θ2) dA, by quadrature on an (θ1, φ) grid."""
    kappa, sd = tau_s / (tau_s + tau_d), math.sqrt(tau_s * tau_d / (tau_s + tau_d))
    lo, hi = max(0.0, kappa * omega - 20 * sd), min(math.pi, kappa * omega + 20 * sd)
    r = lo + (np.arange(n) + 0.5) * (hi - lo) / n
    phi = -math.pi + (np.arange(n) + 0.5) * 2 * math.pi / n
    half2 = (np.sin((r[:, None] - omega) / 2) ** 2
             + np.sin(r[:, None]) * math.sin(omega) * np.sin(phi[None] / 2) ** 2)
    theta2 = 2 * np.arcsin(np.sqrt(np.clip(half2, 0, 1)))
    log_pd = log_density_table(tau_d, float(theta2.min()), float(theta2.max()))
    log_w = (np.log(np.sin(r))[:, None] + log_density_table(tau_s, lo, hi)(r)[:, None]
             + log_pd(theta2))
    w = np.exp(log_w - log_w.max())
    w /= w.sum()

    def cdf_from(edges, mass):
        return lambda x: np.interp(x, edges, np.concatenate([[0], np.cumsum(mass)]))

    r_edges = np.linspace(lo, hi, n + 1)
    phi_edges = np.linspace(-math.pi, math.pi, n + 1)
    order = np.argsort(theta2, axis=None)
    theta2_sorted, cum = theta2.ravel()[order], np.cumsum(w.ravel()[order])
    return (cdf_from(r_edges, w.sum(1)), lambda x: np.interp(x, theta2_sorted, cum),
            cdf_from(phi_edges, w.sum(0)))


# ---------------------------------------------------------------- helpers

def gen(seed):
    return torch.Generator().manual_seed(seed)


def uniform_vectors(n, g, dtype=F64):
    z = torch.randn(n, 3, generator=g, dtype=dtype)
    return z / z.norm(dim=-1, keepdim=True)


def angle(a, b):
    a, b = a.double(), b.double()
    return 2 * torch.atan2((a - b).norm(dim=-1), (a + b).norm(dim=-1))


def endpoints(omega, n, dtype=F64):
    """x0 the north pole, x_t at angle omega in the xz-plane (azimuth 0)."""
    x0 = torch.tensor([0.0, 0.0, 1.0], dtype=F64).expand(n, 3).to(dtype)
    x_t = torch.tensor([math.sin(omega), 0.0, math.cos(omega)], dtype=F64).expand(n, 3).to(dtype)
    return x0, x_t


def azimuth(x):
    x = x.double()
    return torch.atan2(x[..., 1], x[..., 0])


def halves(theta):
    t = torch.as_tensor(theta, dtype=F64)
    return torch.sin(t / 2), torch.cos(t / 2)


# ---------------------------------------------------------------- the heat kernel

KERNEL_TAUS = [1e-6, 1e-4, 3e-3, 0.05, 0.2, 0.499, 0.5, 2.0, 30.0]
KERNEL_THETAS = np.array([0.0, 1e-4, 0.05, 0.7, 1.6, 2.5, 3.1, math.pi - 1e-4, math.pi])


def test_oracles_agree_where_both_apply():
    """The series cancels at the antipode (p_τ(π)/p_τ(0) = e^{−21} at τ = 0.2): compare there
    only where it keeps 1e-11, and everywhere at τ = 0.5."""
    for tau, thetas in ((0.2, KERNEL_THETAS[:6]), (0.5, KERNEL_THETAS)):
        short = [abel_log_density(t, tau) for t in thetas]
        np.testing.assert_allclose(short, series_log_density(thetas, tau)[0], rtol=1e-11)


@pytest.mark.parametrize("tau", KERNEL_TAUS)
def test_heat_kernel_matches_oracle(tau):
    """log p_τ to 1e-12 relative, both forms (fibre quadrature and series), at every angle."""
    thetas = KERNEL_THETAS if tau >= 1e-3 else KERNEL_THETAS[KERNEL_THETAS < 0.1]
    sh, ch = halves(thetas)
    log_p = sphere._log_heat(sh, ch, torch.full_like(sh, tau))
    expected = log_density(thetas, tau)
    np.testing.assert_allclose(log_p.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_the_so3_kernel_decreases_with_the_angle():
    """Fact (iii) behind the fibre envelope (and its flat bound f_τ(2d) ≤ f_τ(0)): the IGSO(3)
    Haar density decreases in the rotation angle on [0, π], for τ from 1e-9 to 1e4."""
    omega = torch.linspace(0, math.pi, 4001, dtype=F64)
    for tau in np.logspace(-9, 4, 27):
        log_f = bd._igso3.log_density(omega, torch.tensor(tau, dtype=F64))
        step = log_f[1:] - log_f[:-1]
        assert float(step.max()) <= 1e-13 * (1 + float(log_f.abs().max())), tau


# ---------------------------------------------------------------- forward

FORWARD_TAUS = [1e-4, 0.02, 0.5, 3.0, 20.0]


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_forward_angle_law_per_element_t(dtype):
    """One call, one rate·t per batch row from 1e-4 to 20; KS of ∠(x0, x_t) against the
    Legendre series of the angle CDF."""
    g = gen(1)
    rate, n = 2.0, 6000
    t = torch.tensor(FORWARD_TAUS, dtype=dtype) / rate
    x0 = uniform_vectors(len(t) * n, g, dtype).reshape(len(t), n, 3)
    x_t = bd.sample_forward(bd.SphereBrownian(rate), t, x0, generator=g)
    assert x_t.dtype == dtype and x_t.shape == x0.shape
    for i, tau in enumerate(FORWARD_TAUS):
        assert_ks(angle(x0[i], x_t[i]), angle_cdf(tau), what=f"rate*t={tau}")


@pytest.mark.parametrize("tau", [0.01, 1.5])
def test_forward_is_isotropic(tau):
    """The azimuth of x_t about x0 is uniform, and the two tangent projections agree."""
    g = gen(2)
    x0, _ = endpoints(0.0, 20000)
    x_t = bd.sample_forward(bd.SphereBrownian(1.0), tau, x0, generator=g)
    assert_ks(azimuth(x_t), sps.uniform(-math.pi, 2 * math.pi).cdf, what="azimuth")
    assert_ks_2samp(x_t[:10000, 0], x_t[10000:, 1], what="projections")


def test_forward_semigroup_and_planted_variance_error():
    """forward(t − s) after forward(s) is forward(t); a 3% error in rate·t fails the same test
    at this sample size (shown once)."""
    g = gen(3)
    P, n = bd.SphereBrownian(1.0), 60000
    x0 = uniform_vectors(n, g)
    x_t = bd.sample_forward(P, 0.07, bd.sample_forward(P, 0.03, x0, generator=g), generator=g)
    assert_ks(angle(x0, x_t), angle_cdf(0.1), what="semigroup")
    wrong = bd.sample_forward(bd.SphereBrownian(1.03), 0.1, x0, generator=g)
    with pytest.raises(AssertionError):
        assert_ks(angle(x0, wrong), angle_cdf(0.1), what="planted 3% variance error")


def test_equilibrium_is_uniform_and_reproducible():
    P = bd.SphereBrownian(0.5)
    draws = [bd.sample_equilibrium(P, (20000, 3), generator=gen(4), dtype=torch.float32)
             for _ in range(2)]
    assert torch.equal(*draws) and draws[0].dtype == torch.float32
    assert_ks(draws[0][:, 2], sps.uniform(-1, 2).cdf, what="z uniform")
    assert_ks(azimuth(draws[0]), sps.uniform(-math.pi, 2 * math.pi).cdf, what="azimuth")


# ---------------------------------------------------------------- bridge

# (τ_s, τ_{t−s}, Ω): typical at large and small τ, far endpoints (Ω²/τ_t = 625),
# nearly antipodal (a ring about x0; s ≪ t too), s close to t, exactly antipodal.
BRIDGE_CASES = [(0.3, 0.6, 1.0), (0.02, 0.03, 0.25), (0.004, 0.006, 2.5),
                (0.01, 0.01, math.pi - 0.02), (0.002, 0.05, math.pi - 0.005),
                (0.05, 1e-3, 1.5), (0.05, 0.05, math.pi)]


@pytest.mark.parametrize("tau_s, tau_d, omega", BRIDGE_CASES)
def test_bridge_marginals_match_quadrature(tau_s, tau_d, omega):
    g, n, rate = gen(5), 5000, 2.0
    x0, x_t = endpoints(omega, n)
    s, t = tau_s / rate, (tau_s + tau_d) / rate
    x_s = bd.endpoint_conditioned_sample(bd.SphereBrownian(rate), s, t, x0, x_t, generator=g)
    cdf_1, cdf_2, cdf_phi = bridge_marginals(tau_s, tau_d, omega)
    assert_ks(angle(x0, x_s), cdf_1, what="angle to x0")
    assert_ks(angle(x_s, x_t), cdf_2, what="angle to x_t")
    if omega < math.pi:   # at the antipode the azimuth has no reference (uniform)
        assert_ks(azimuth(x_s), cdf_phi, what="azimuth about x0")


def test_bridge_consistency_per_element_t():
    """x_t ~ forward(t), x_s ~ bridge(s, t, x0, x_t) ⇒ x_s ~ forward(s); one t per row."""
    g, n = gen(6), 5000
    P = bd.SphereBrownian(1.5)
    s, t = torch.tensor([1e-3, 0.1, 1.0]), torch.tensor([0.004, 0.3, 1.2])
    x0 = uniform_vectors(3 * n, g).reshape(3, n, 3)
    x_t = bd.sample_forward(P, t, x0, generator=g)
    x_s = bd.endpoint_conditioned_sample(P, s, t, x0, x_t, generator=g)
    for i in range(3):
        assert_ks(angle(x0[i], x_s[i]), angle_cdf(1.5 * float(s[i])), what=f"s={float(s[i])}")


def fibre_density(theta, tau, beta):
    """f_τ(2d) on the fibre up to a constant, cos d = cos(θ/2) cos β (f the IGSO(3) Haar
    density, tested in test_rotation.py)."""
    h = theta / 2
    d = np.arctan2(np.sqrt(np.sin(h) ** 2 + (np.cos(h) * np.sin(beta)) ** 2),
                   np.cos(h) * np.cos(beta))
    log_f = bd._igso3.log_density(torch.from_numpy(2 * d), torch.tensor(tau, dtype=F64)).numpy()
    return np.exp(log_f - log_f.max())


def test_fibre_distance_bound():
    """Fact (ii) of the bridge: d² ≥ h² + (1 − (2h/π)²) β² on the fibre (cos d = cos h cos β),
    with equality at β = π/2."""
    h = np.linspace(0, math.pi / 2, 301)[:, None]
    beta = np.linspace(1e-3, math.pi / 2, 3001)[None]
    d = np.arctan2(np.sqrt(np.sin(h) ** 2 + (np.cos(h) * np.sin(beta)) ** 2),
                   np.cos(h) * np.cos(beta))
    kappa = 1 - (2 * h / math.pi) ** 2
    assert np.all((d - h) * (d + h) >= kappa * beta ** 2 * (1 - 1e-12))


@pytest.mark.parametrize("theta, tau", [(1.0, 0.6), (2.5, 0.01), (0.3, 1e-6), (1.0, 20.0),
                                        (math.pi - 0.02, 0.02), (math.pi, 0.6), (0.0, 3.0)])
def test_fibre_round_accepts_at_its_closed_form_rate(theta, tau):
    """One round of the fibre sampler: it accepts 4π² p_τ(θ)/(envelope mass), p_τ from the
    oracle (the fibre average of f_τ is the heat kernel), and the kept angles follow the fibre
    law f_τ(2d(β)) by quadrature. An envelope below the target somewhere would accept less."""
    g, n = gen(7), 40000
    sh, ch = (x.expand(n).contiguous() for x in halves(theta))
    c = sphere._fibre_constants(sh, ch, torch.tensor(tau, dtype=F64))
    beta, accepted = sphere._fibre_propose(c, slice(None), g)
    rate = math.exp(math.log(4 * math.pi ** 2) + log_density(np.array([theta]), tau)[0]
                    - float(c["log_mass"][0]))
    assert_binomial(int(accepted.sum()), n, rate, what="acceptance per round")
    grid = np.linspace(-math.pi / 2, math.pi / 2, 200001)
    density = fibre_density(theta, tau, grid)
    cdf = np.concatenate([[0], np.cumsum((density[1:] + density[:-1]) / 2)])
    assert_ks(beta[accepted], lambda x: np.interp(x, grid, cdf / cdf[-1]), what="kept angles")


def test_fibre_envelope_bounds_the_target(sampler_path):
    """Along every fibre of a grid of (θ, τ), τ from 1e-9 to 1e4, the exact target never exceeds
    the chosen envelope (host and device constants alike)."""
    thetas = np.array([0, 1e-5, 0.1, 1.0, 2.0, 3.0, math.pi - 1e-3, math.pi])
    taus = np.array([1e-9, 1e-4, 0.05, 0.6, 2.0, 8.0, 11.0, 40.0, 1e4])
    th, ta = (torch.from_numpy(x.ravel()) for x in np.meshgrid(thetas, taus, indexing="ij"))
    c = sphere._fibre_constants(torch.sin(th / 2), torch.cos(th / 2), ta)
    beta = torch.linspace(-math.pi / 2, math.pi / 2, 2001, dtype=F64)
    for i in range(th.shape[0]):
        sh, ch = torch.sin(th[i] / 2), torch.cos(th[i] / 2)
        d = torch.atan2(torch.sqrt(sh * sh + (ch * torch.sin(beta)) ** 2), ch * torch.cos(beta))
        target = bd._igso3.log_density(2 * d, ta[i].expand_as(d))
        envelope = torch.logaddexp(c["log_gauss"][i] - c["lam_k"][i] * beta ** 2, c["log_flat"][i])
        assert float((target - envelope).max()) <= 1e-12 * max(1.0, float(target.abs().max()))


def test_device_path_draws_the_same_law(sampler_path):
    """On the forced device path every element takes fixed rounds over all elements, both
    envelopes and every kernel form: one bridge call mixing a von Mises–Fisher row, a ring row
    and a series row, and a forward call with a Haar-proposal row."""
    g, n = gen(8), 3000
    cases = [BRIDGE_CASES[1], BRIDGE_CASES[3], BRIDGE_CASES[0]]
    x0 = torch.stack([endpoints(c[2], n)[0] for c in cases])
    x_t = torch.stack([endpoints(c[2], n)[1] for c in cases])
    s = torch.tensor([c[0] for c in cases], dtype=F64)
    t = torch.tensor([c[0] + c[1] for c in cases], dtype=F64)
    x_s = bd.endpoint_conditioned_sample(bd.SphereBrownian(1.0), s, t, x0, x_t, generator=g)
    for i, (tau_s, tau_d, omega) in enumerate(cases):
        assert_ks(angle(x0[i], x_s[i]), bridge_marginals(tau_s, tau_d, omega)[0],
                  what=f"bridge {i}")
    fwd = bd.sample_forward(bd.SphereBrownian(1.0), torch.tensor([0.01, 5.0]), x0[:2], generator=g)
    for i, tau in enumerate((0.01, 5.0)):
        assert_ks(angle(x0[i], fwd[i]), angle_cdf(tau), what=f"forward {tau}")


@pytest.mark.parametrize("t", [1e-7, 1e-3, 1.0, 1e3])
def test_float32_finite_and_unit(t):
    """float32 in and out for t from 1e-7 to 1e3, nearly antipodal guesses included; at small
    t the forward angle keeps its scale (mean θ² ≈ 2rt), at large t E[x0·x_t] = e^{−rt}."""
    g = gen(9)
    P = bd.SphereBrownian(1.0)
    x0 = uniform_vectors(400, g, torch.float32)
    far = -x0 + 1e-3 * uniform_vectors(400, g, torch.float32)
    far = far / far.norm(dim=-1, keepdim=True)
    x_t = bd.sample_forward(P, t, x0, generator=g)
    outs = [x_t, bd.endpoint_conditioned_sample(P, t / 3, t, x0, x_t, generator=g),
            bd.endpoint_conditioned_sample(P, t / 3, t, far, x_t, generator=g)]
    for x in outs:
        assert x.dtype == torch.float32 and bool(torch.isfinite(x).all())
        assert float((x.norm(dim=-1) - 1).abs().max()) < 1e-6
    if t <= 1e-3:
        assert 0.8 < float((angle(x0, x_t) ** 2).mean()) / (2 * t) < 1.2
    else:
        assert abs(float((x0 * x_t).sum(-1).mean()) - math.exp(-t)) < 0.1


def test_reproducible_with_generator():
    P = bd.SphereBrownian(1.0)
    x0 = uniform_vectors(300, gen(10))
    x_t = bd.sample_forward(P, 0.2, x0, generator=gen(11))
    assert torch.equal(x_t, bd.sample_forward(P, 0.2, x0, generator=gen(11)))
    a = bd.endpoint_conditioned_sample(P, 0.05, 0.2, x0, x_t, generator=gen(12))
    assert torch.equal(a, bd.endpoint_conditioned_sample(P, 0.05, 0.2, x0, x_t, generator=gen(12)))


def test_masks_keep_vectors_bit_identical():
    g = gen(13)
    P = bd.SphereBrownian(1.0)
    x0 = uniform_vectors(24, g, torch.float32).reshape(4, 6, 3)
    mask = torch.rand(4, 6, generator=g) < 0.5
    x_t = bd.sample_forward(P, 0.3, bd.masked(x0, mask), generator=g)
    assert torch.equal(x_t.x[~mask], x0[~mask]) and not torch.equal(x_t.x[mask], x0[mask])
    x_s = bd.endpoint_conditioned_sample(P, 0.1, 0.3, x0, x_t, generator=g)
    assert torch.equal(x_s.x[~mask], x0[~mask])
    loss = bd.standard_loss(P, 0.3, x_s, bd.masked(x0, mask))
    assert loss.ndim == 0 and bool(torch.isfinite(loss))


def test_backward_with_posterior_guess_recovers_atom_weights():
    """Data: two directions with weights (0.7, 0.3). The guess draws x0 from the exact posterior
    p(atom | x_t) ∝ w_i p_{rt}(∠(atom_i, x_t)) (oracle density), so each bridge step is an
    exact reverse transition and the chain from equilibrium recovers the weights."""
    from stats import assert_chi2
    g, n = gen(14), 3000
    P = bd.SphereBrownian(1.0)
    atoms = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=F64)
    weights = np.array([0.7, 0.3])

    def guess(x_t, t):
        table = log_density_table(float(t), 0, math.pi, 60)
        logp = np.stack([table(angle(a.expand_as(x_t), x_t).numpy()) for a in atoms], -1)
        logp = logp + np.log(weights)
        probs = torch.from_numpy(np.exp(logp - logp.max(-1, keepdims=True)))
        return atoms[torch.multinomial(probs, 1, generator=g)[:, 0]]

    timesteps = bd.time_schedule(lambda u: u ** 2, 0.03, 2.0, 6, finv=math.sqrt)
    x_T = bd.sample_equilibrium(P, (n, 3), generator=g, dtype=F64)
    x = bd.sample_backward(guess, P, timesteps, x_T, generator=g)
    nearest = torch.stack([angle(a.expand_as(x), x) for a in atoms], -1).argmin(-1)
    assert_chi2(torch.bincount(nearest, minlength=2), weights, what="atom weights")


# ---------------------------------------------------------------- interface

def test_bad_input_raises():
    P = bd.SphereBrownian(1.0)
    with pytest.raises(ValueError, match="unit vectors"):
        bd.sample_forward(P, 0.1, torch.ones(3, 3))
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        bd.sample_forward(P, 0.1, torch.zeros(3, 4))
    with pytest.raises(ValueError, match="finite"):
        bd.sample_forward(P, 0.1, torch.tensor([[float("nan"), 0.0, 1.0]]))
    with pytest.raises(TypeError, match="floating-point"):
        bd.sample_forward(P, 0.1, torch.zeros(3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="unit vectors"):
        bd.endpoint_conditioned_sample(P, 0.1, 0.2, 2 * torch.eye(3), torch.eye(3))
    with pytest.raises(ValueError, match="rate"):
        bd.SphereBrownian(-1.0)
    with pytest.raises(ValueError, match="end with 3"):
        bd.sample_equilibrium(P, (5, 2))
    # float16 vectors within its own tolerance are accepted
    bd.sample_forward(P, 0.1, torch.tensor([[0.0, 0.6, 0.8]], dtype=torch.float16) * 1.003)


def test_loss_and_scaler():
    """Squared chord of the normalised prediction, per vector; finite gradients at x̂ = x;
    scaler √(1 − e^{−rt}) with E[x0·x_t] = e^{−rt} (checked by sampling)."""
    P = bd.SphereBrownian(0.7)
    x = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=F64)
    x_hat = torch.tensor([[0.0, math.sin(0.1), math.cos(0.1)], [-3.0, 0.0, 0.0]], dtype=F64)
    torch.testing.assert_close(P.loss(x_hat, x),
                               torch.tensor([2 - 2 * math.cos(0.1), 4.0], dtype=F64))
    q = x.clone().requires_grad_()
    P.loss(q, x).sum().backward()
    assert bool(torch.isfinite(q.grad).all())
    assert torch.autograd.gradcheck(lambda a: P.loss(a, x), (x_hat.clone().requires_grad_(),))
    t = torch.tensor([1e-9, 0.5], dtype=F64).reshape(2, 1)
    torch.testing.assert_close(P.scaler(t), torch.sqrt(1 - torch.exp(-0.7 * t[:, 0])),
                               rtol=1e-6, atol=0)
    assert P.scaler(torch.tensor(0.5)).ndim == 0
    x0 = uniform_vectors(40000, gen(15))
    dots = (x0 * bd.sample_forward(P, 0.5, x0, generator=gen(16))).sum(-1)
    assert abs(float(dots.mean()) - math.exp(-0.35)) < 4 * float(dots.std()) / 200
    loss = bd.standard_loss(P, torch.tensor([0.1, 0.2]), x_hat, x)
    assert loss.ndim == 0 and bool(torch.isfinite(loss))


@pytest.mark.parametrize("tau", [1e-3, 0.3, 3.0])
def test_log_prob_is_the_oracle_heat_kernel_and_bridges_normalise(tau):
    """forward_log_prob is the oracle's heat kernel; the bridge density that bd.elbo uses
    (by the Markov property from it) integrates to 1 over the sphere."""
    P = bd.SphereBrownian(2.0)
    theta = torch.linspace(1e-3, math.pi - 1e-3, 50, dtype=F64)
    x0 = torch.tensor([0.0, 0.0, 1.0], dtype=F64).expand(50, 3)
    x = torch.stack([theta.sin(), torch.zeros_like(theta), theta.cos()], -1)
    t = torch.tensor(tau / 2.0, dtype=F64)
    np.testing.assert_allclose(P.forward_log_prob(t, x0, x).numpy(),
                               log_density(theta.numpy(), tau), rtol=1e-9, atol=1e-9)
    assert float(P.equilibrium_log_prob(x).sub(-math.log(4 * math.pi)).abs().max()) == 0
    # midpoint rule in (cos θ, φ) around x0: area element dz dφ
    m = 400
    z = torch.cos(torch.linspace(0, math.pi, 2 * m + 1, dtype=F64)[1::2])
    dz = torch.diff(torch.cos(torch.linspace(0, math.pi, 2 * m + 1, dtype=F64)[::2])).abs()
    phi = (torch.arange(m, dtype=F64) + 0.5) * 2 * math.pi / m
    zz, pp = torch.meshgrid(z, phi, indexing="ij")
    r = (1 - zz ** 2).clamp_min(0).sqrt()
    grid = torch.stack([r * pp.cos(), r * pp.sin(), zz], -1).reshape(-1, 3)
    end = torch.tensor([math.sin(1.0), 0.0, math.cos(1.0)], dtype=F64)
    s = torch.tensor(0.4 * tau / 2.0, dtype=F64)
    log_b = P.bridge_log_prob(s, t, x0[:1].expand_as(grid), end.expand_as(grid), grid)
    total = (log_b.exp().reshape(m, m) * dz[:, None] * (2 * math.pi / m)).sum()
    assert abs(float(total) - 1) < 2e-3


def test_guide_follows_the_great_circle():
    P = bd.SphereBrownian()
    g = gen(70)
    u, c = uniform_vectors(500, g), uniform_vectors(500, g)
    torch.testing.assert_close(P.guide(u, c, 1.0), c)
    torch.testing.assert_close(P.guide(u, c, 0.0), u)
    half = P.guide(u, c, 0.5)
    torch.testing.assert_close(angle(u, half), angle(u, c) / 2)
    torch.testing.assert_close(angle(half, c), angle(u, c) / 2)
    torch.testing.assert_close(angle(u, P.guide(u, c, 2.0)), (2 * angle(u, c)).where(
        2 * angle(u, c) <= math.pi, 2 * math.pi - 2 * angle(u, c)))
    torch.testing.assert_close(P.guide(u, u, 3.0), u)
