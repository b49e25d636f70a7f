"""RotationDiffusion: the IGSO(3) law, the forward sampler and the exact SO(3) bridge.

Oracles are written here, independently of bridgediff: the IGSO(3) Haar density by the
direct signed image sum (ε² < 1) or a 30-term series (ε² ≥ 1) of MATH.md, its angle CDF
by scipy quadrature, and the bridge's laws by quadrature of the product density
f_a(∠(x0⁻¹x)) f_b(∠(x⁻¹x_t)) (with respect to Haar) in angle-axis coordinates around x0
(the angle to x0) and in cylindrical rotation-vector coordinates around the geodesic (the
component along it), on grids refined where the bridge puts its mass.
"""

import math

import numpy as np
import pytest
import roma
import torch
from scipy import integrate
from scipy.special import logsumexp
from stats import assert_binomial, assert_chi2, assert_ks, assert_ks_2samp

import bridgediff as bd
from bridgediff import _igso3, _so3_bridge

F64 = torch.float64


# ---------------------------------------------------------------- independent oracles

def log_f(w, eps2):
    """log Haar density of IGSO(3)(ε²) at angles w (numpy)."""
    w = np.asarray(w, float)
    if eps2 < 1:
        k = np.arange(-6, 7).reshape((-1,) + (1,) * w.ndim)
        u = w - 2 * math.pi * k
        expo = -u ** 2 / (2 * eps2)
        top = expo.max(0)
        s = ((-1.0) ** k * u * np.exp(expo - top)).sum(0)
        return (eps2 / 8 + 0.5 * math.log(2 * math.pi) - 1.5 * math.log(eps2) + top + np.log(s)
                - np.log(np.sin(w / 2)))
    l = np.arange(30).reshape((-1,) + (1,) * w.ndim)
    return np.log(((2 * l + 1) * np.exp(-l * (l + 1) * eps2 / 2) * np.sin((l + .5) * w)
                   / np.sin(w / 2)).sum(0))


def angle_pdf(w, eps2):
    return (1 - np.cos(w)) / math.pi * np.exp(log_f(w, eps2))


def angle_cdf_on_grid(eps2, n=4000):
    """The angle CDF by integrating the oracle density (midpoint rule on a fine grid)."""
    w = (np.arange(n) + 0.5) * math.pi / n
    p = angle_pdf(w, eps2)
    cdf = np.concatenate([[0], np.cumsum(p)])
    cdf /= cdf[-1]
    grid = np.linspace(0, math.pi, n + 1)
    return lambda x: np.interp(x, grid, cdf)


def bridge_angle_cdf(eps2_a, eps2_b, big_omega, n=2000, m=120):
    """CDF of ∠(x0⁻¹x_s) when p(x_s) ∝ f_a(∠(x0⁻¹x_s)) f_b(∠(x_s⁻¹x_t)) w.r.t. Haar and
    ∠(x0⁻¹x_t) = Ω: integrate over R = x0 exp(ω n) with dHaar ∝ (1 − cos ω) dω d(cos θ) dφ;
    ∠(R⁻¹x_t) = 2 acos|cos(ω/2)cos(Ω/2) + sin(ω/2)sin(Ω/2)cos θ| does not depend on φ."""
    w = (np.arange(n) + 0.5) * math.pi / n
    c, weight = np.polynomial.legendre.leggauss(m)
    half = np.abs(np.cos(w / 2)[:, None] * math.cos(big_omega / 2)
                  + np.sin(w / 2)[:, None] * math.sin(big_omega / 2) * c[None])
    beta = np.clip(2 * np.arccos(np.clip(half, 0, 1)), 1e-12, math.pi)
    log_p = (np.log(1 - np.cos(w)) + log_f(w, eps2_a)
             + logsumexp(log_f(beta, eps2_b) + np.log(weight)[None], axis=1))
    cdf = np.concatenate([[0], np.cumsum(np.exp(log_p - log_p.max()))])
    cdf /= cdf[-1]
    grid = np.linspace(0, math.pi, n + 1)
    return lambda x: np.interp(x, grid, cdf)


def _log_f_table(eps2):
    """log f on [0, π] by linear interpolation in a table of log_f fine enough that the error
    h²/(8ε²) (log f has curvature ≈ 1/ε² at small ε) stays below 1e-6."""
    h = min(math.pi / 4000, 0.003 * math.sqrt(eps2))
    grid = np.linspace(0, math.pi, int(math.pi / h) + 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        table = log_f(np.clip(grid, 1e-9, math.pi), eps2)
    return lambda w: np.interp(w, grid, table)


def _grid(lo, hi, n, fine=()):
    """A sorted grid: n points on [lo, hi] and n_i more on each interval (a_i, b_i, n_i)."""
    parts = [np.linspace(lo, hi, n)]
    parts += [np.linspace(max(a, lo), min(b, hi), m) for a, b, m in fine if min(b, hi) > max(a, lo)]
    return np.unique(np.concatenate(parts))


def _cumtrapz(y, x, axis=-1):
    """Cumulative trapezoid integral along ``axis``, starting at 0."""
    y = np.moveaxis(y, axis, -1)
    c = np.cumsum((y[..., 1:] + y[..., :-1]) / 2 * np.diff(x), axis=-1)
    return np.moveaxis(np.concatenate([np.zeros(c.shape[:-1] + (1,)), c], axis=-1), -1, axis)


def _angle_to(w, cos_phi, big_omega):
    """∠(R⁻¹x_t) for R = exp(ω n), n at angle φ from the axis of x0⁻¹x_t = exp(Ω ŵ)."""
    half = np.abs(np.cos(w / 2) * math.cos(big_omega / 2)
                  + np.sin(w / 2) * math.sin(big_omega / 2) * cos_phi)
    return np.clip(2 * np.arctan2(np.sqrt(np.clip(1 - half ** 2, 0, 1)), half), 1e-300, math.pi)


def bridge_oracle(eps2_a, eps2_b, big_omega, n=400, component=True):
    """CDFs of ω0 = ∠(x0⁻¹x) and (if ``component``) of c = ω0 cos φ, the component along the
    geodesic of the rotation vector of x0⁻¹x, for p(x) ∝ f_a(∠(x0⁻¹x)) f_b(∠(x⁻¹x_t)) w.r.t.
    Haar, ∠(x0⁻¹x_t) = Ω. ω0: x = x0 exp(ω n), dHaar ∝ (1 − cos ω) sin φ dω dφ dψ, trapezoid
    rules (O(h²)) on grids refined at the short and the long way round. c: cylindrical
    coordinates (c, ρ) of the rotation vector, dHaar ∝ (1 − cos ω)/ω² ρ dρ dc, ρ ≤ √(π² − c²)."""
    fa, fb = _log_f_table(eps2_a), _log_f_table(eps2_b)
    frac = eps2_a / (eps2_a + eps2_b)
    sd = math.sqrt(eps2_a * eps2_b / (eps2_a + eps2_b))      # rotation-vector bridge sd
    long_way = frac * (2 * math.pi - big_omega)
    modes = [frac * big_omega, long_way if long_way <= math.pi else 2 * math.pi - long_way]
    w = _grid(0, math.pi, n, [(m - 14 * sd, m + 14 * sd, n) for m in modes])
    phi = _grid(0, math.pi, n // 2, [(0, min(math.pi, 14 * sd / max(modes[0], 1e-300)), n // 2),
                                     (math.pi - min(math.pi, 14 * sd / max(modes[1], 1e-300)),
                                      math.pi, n // 2)])
    ws = np.clip(w, 1e-300, None)[:, None]
    with np.errstate(divide="ignore"):
        lp = (np.log(1 - np.cos(ws)) + fa(ws) + np.log(np.sin(phi))[None]
              + fb(_angle_to(ws, np.cos(phi)[None], big_omega)))
    p = np.exp(lp - lp[np.isfinite(lp)].max())
    p[~np.isfinite(p)] = 0
    row = _cumtrapz(p, phi, axis=1)[:, -1]
    cdf = _cumtrapz(row, w)
    omega_cdf = (lambda x, w=w, cdf=cdf / cdf[-1]: np.interp(x, w, cdf))
    if not component:
        return omega_cdf
    signed = [modes[0], -long_way if long_way <= math.pi else 2 * math.pi - long_way]
    c = _grid(-math.pi, math.pi, n, [(m - 14 * sd, m + 14 * sd, n) for m in signed])[1:-1]
    xi = _grid(0, 1, n, [(0, 14 * sd / math.sqrt(max(math.pi ** 2 - m ** 2, 1e-12)), n)
                         for m in signed])
    rho_max = np.sqrt(math.pi ** 2 - c ** 2)[:, None]
    rho = xi[None] * rho_max
    wc = np.clip(np.hypot(c[:, None], rho), 1e-300, math.pi)
    with np.errstate(divide="ignore"):
        lp = (np.log(1 - np.cos(wc)) - 2 * np.log(wc) + np.log(rho + 1e-300) + np.log(rho_max)
              + fa(wc) + fb(_angle_to(wc, np.clip(c[:, None] / wc, -1, 1), big_omega)))
    p = np.exp(lp - lp[np.isfinite(lp)].max())
    p[~np.isfinite(p)] = 0
    cdf = _cumtrapz(_cumtrapz(p, xi, axis=1)[:, -1], c)
    return omega_cdf, (lambda x, c=c, cdf=cdf / cdf[-1]: np.interp(x, c, cdf))


def assert_bridge_law(x0, x_t, x_s, eps2_s, eps2_rest, big_omega, what=""):
    """KS tests of x_s (N, 4) against the exact bridge: the angles to both endpoints, the
    component along the geodesic, and the azimuth around it (uniform). x_t = ±x0 exp(Ω z),
    so that x0⁻¹x_s is in the frame where the geodesic is the z axis."""
    omega0, along = bridge_oracle(eps2_s, eps2_rest, big_omega)
    omega1 = bridge_oracle(eps2_rest, eps2_s, big_omega, component=False)
    rotvec = roma.unitquat_to_rotvec(roma.quat_product(roma.quat_conjugation(x0.double()),
                                                       x_s.double()))
    assert_ks(angle(x0, x_s), omega0, what=f"{what} angle to x0")
    assert_ks(angle(x_s, x_t), omega1, what=f"{what} angle to x_t")
    assert_ks(rotvec[:, 2], along, what=f"{what} component along the geodesic")
    assert_ks(torch.atan2(rotvec[:, 1], rotvec[:, 0]), lambda a: (a + math.pi) / (2 * math.pi),
              what=f"{what} azimuth")


def angle(p, q):
    """∠(p⁻¹q) in [0, π]."""
    rel = roma.quat_product(roma.quat_conjugation(p.double()), q.double())
    return 2 * torch.atan2(rel[..., :3].norm(dim=-1), rel[..., 3].abs())


def rotation_z(theta, n, dtype=F64):
    return roma.rotvec_to_unitquat(torch.tensor([0.0, 0.0, theta], dtype=F64)).expand(n, 4).to(dtype)


def haar(n, generator, dtype=F64):
    z = torch.randn(n, 4, generator=generator, dtype=dtype)
    return z / z.norm(dim=-1, keepdim=True)


def endpoints(n, big_omega, generator, dtype=F64):
    """x0 Haar-uniform and x_t = ±x0 exp(Ω z) (either lift, at random)."""
    x0 = haar(n, generator)
    sign = torch.where(torch.rand(n, 1, generator=generator) < 0.5, -1.0, 1.0).double()
    x_t = sign * roma.quat_product(x0, rotation_z(big_omega, n))
    return x0.to(dtype), x_t.to(dtype)


# ---------------------------------------------------------------- the IGSO(3) law

@pytest.mark.parametrize("eps2", [1e-3, 0.05, 0.5, 2.0, 20.0])
def test_pdf_and_cdf_match_oracle(eps2):
    w = np.linspace(1e-3, math.pi, 50)
    pdf = bd.igso3_angle_pdf(torch.tensor(w), eps2).numpy()
    np.testing.assert_allclose(pdf, angle_pdf(w, eps2), rtol=1e-9, atol=1e-300)
    cdf = bd.igso3_angle_cdf(torch.tensor(w[::7]), torch.tensor(eps2)).numpy()
    quad = [integrate.quad(angle_pdf, 1e-12, x, args=(eps2,), epsabs=1e-13, limit=200)[0]
            for x in w[::7]]
    np.testing.assert_allclose(cdf, quad, atol=1e-10)
    assert float(bd.igso3_angle_cdf(math.pi, eps2)) == pytest.approx(1.0, abs=1e-12)


def test_helpers_broadcast_and_keep_dtype():
    w = torch.linspace(0, 4, 9, dtype=torch.float32)[:, None]
    eps2 = torch.tensor([0.01, 1.0, 30.0])
    pdf, cdf = bd.igso3_angle_pdf(w, eps2), bd.igso3_angle_cdf(w, eps2)
    assert pdf.shape == cdf.shape == (9, 3) and pdf.dtype == cdf.dtype == torch.float32
    assert bool((pdf[w[:, 0] > math.pi] == 0).all()) and bool((cdf[w[:, 0] > math.pi] == 1).all())
    with pytest.raises(ValueError, match="eps2"):
        bd.igso3_angle_pdf(w, -1.0)


@pytest.mark.parametrize("eps2", [0.5, 0.8, 1.5, 3.0])
def test_series_and_images_forms_agree(eps2):
    w = torch.linspace(1e-4, math.pi, 200, dtype=F64)
    e = torch.full_like(w, eps2)
    images = _igso3.images_log_density(w, e).exp()
    torch.testing.assert_close(images, _igso3.series_density(w, e), rtol=1e-8, atol=0)
    if eps2 <= 1.5:
        torch.testing.assert_close(_igso3.images_cdf(w, e), _igso3.series_cdf(w, e),
                                   rtol=0, atol=1e-8)


def test_relative_angle_matches_scipy_at_every_scale():
    """∠(p⁻¹q) against scipy's rotation magnitude, for angles from 1e-9 to π and either sign."""
    from scipy.spatial.transform import Rotation
    g = torch.Generator().manual_seed(12)
    omega = torch.tensor([1e-9, 1e-5, 0.3, 2.0, 3.0, math.pi - 1e-6], dtype=F64).repeat(50)
    axis = torch.randn(omega.shape[0], 3, generator=g, dtype=F64)
    p = haar(omega.shape[0], g)
    rotvec = omega[:, None] * axis / axis.norm(dim=-1, keepdim=True)
    q = roma.quat_product(p, roma.rotvec_to_unitquat(rotvec))
    q = torch.where(torch.rand(omega.shape[0], 1, generator=g) < 0.5, q, -q)
    expected = (Rotation.from_quat(p.numpy()).inv() * Rotation.from_quat(q.numpy())).magnitude()
    got = _igso3.relative_angle(p, q).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-15)
    np.testing.assert_allclose(got, omega.numpy(), rtol=1e-6, atol=0)


# ---------------------------------------------------------------- forward

@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_forward_angle_law_per_element_t(dtype):
    """Four batch elements with their own t (4rt from 1e-3 to 20), 10000 rotations each."""
    g = torch.Generator().manual_seed(1)
    rate, t = 0.5, torch.tensor([5e-4, 0.05, 0.5, 10.0])
    x0 = haar(4 * 10000, g, dtype).reshape(4, 10000, 4)
    x_t = bd.sample_forward(bd.RotationDiffusion(rate), t, x0, generator=g)
    assert x_t.dtype == dtype and x_t.shape == x0.shape
    for i, eps2 in enumerate((4 * rate * t).tolist()):
        assert_ks(angle(x0[i], x_t[i]), angle_cdf_on_grid(eps2), what=f"eps2={eps2}")


@pytest.mark.parametrize("eps2", [0.2, 2.0, 5.0])
def test_forward_axis_is_isotropic(eps2):
    g = torch.Generator().manual_seed(2)
    x0 = rotation_z(0.7, 20000)
    x_t = bd.sample_forward(bd.RotationDiffusion(1.0), eps2 / 4, x0, generator=g)
    rel = roma.quat_product(roma.quat_conjugation(x0), x_t)
    axis_z = rel[:, 2] / rel[:, :3].norm(dim=-1)
    assert_ks(axis_z, lambda z: np.clip((z + 1) / 2, 0, 1), what="axis z")


def test_forward_extreme_times_and_fallback():
    """4rt = 1e-8: ω/ε is chi(3); 4rt = 1e3: Haar, F(ω) = (ω − sin ω)/π; the inverse-CDF
    bisection (an independent way to draw the angle, unused by the sampler) draws it too."""
    from scipy import stats
    g = torch.Generator().manual_seed(3)
    x0 = rotation_z(-2.0, 20000)
    tiny = bd.sample_forward(bd.RotationDiffusion(1.0), 2.5e-9, x0, generator=g)
    assert_ks(angle(x0, tiny) / 1e-4, stats.chi(3).cdf, what="eps2=1e-8")
    huge = bd.sample_forward(bd.RotationDiffusion(1.0), 250.0, x0, generator=g)
    assert_ks(angle(x0, huge), lambda w: (w - np.sin(w)) / math.pi, what="eps2=1e3")
    eps2 = torch.full((1000,), 0.7, dtype=F64)
    omega = _igso3.inverse_angle_cdf(torch.rand(1000, generator=g, dtype=F64), eps2)
    assert_ks(omega, angle_cdf_on_grid(0.7), what="bisection")


def test_forward_semigroup():
    g = torch.Generator().manual_seed(4)
    P, x0 = bd.RotationDiffusion(2.0), rotation_z(1.0, 10000)
    x_s = bd.sample_forward(P, 0.03, x0, generator=g)
    x_t = bd.sample_forward(P, 0.07, x_s, generator=g)
    assert_ks(angle(x0, x_t), angle_cdf_on_grid(4 * 2.0 * 0.1), what="semigroup")


@pytest.mark.parametrize("t", [1e-6, 1e-3, 1.0, 10.0])
def test_float32_finite_and_unit(t):
    g = torch.Generator().manual_seed(5)
    P = bd.RotationDiffusion(1.0)
    x0 = haar(500, g, torch.float32)
    x_t = bd.sample_forward(P, t, x0, generator=g)
    x_s = bd.endpoint_conditioned_sample(P, t / 3, t, x0, x_t, generator=g)
    for x in (x_t, x_s):
        assert x.dtype == torch.float32 and bool(torch.isfinite(x).all())
        assert float((x.norm(dim=-1) - 1).abs().max()) < 1e-6


# ---------------------------------------------------------------- bridge

@pytest.mark.parametrize("eps2_s, eps2_rest, big_omega", [
    (0.05, 0.05, 3.0),     # far apart: Ω ≈ 7.5 ε_t, plain rejection accepts ~1e-10
    (1.0, 1.0, 2.5),
    (0.3, 0.3, 2.5),       # far-ish apart at moderate ε
    (0.3, 2.0, 3.1),       # near π: the long way round matters
    (0.4, 0.004, 0.3),     # s close to t
    (0.01, 0.3, 1.2),      # s close to 0
])
def test_bridge_angles_match_quadrature(eps2_s, eps2_rest, big_omega):
    g = torch.Generator().manual_seed(6)
    n = 6000
    x0, x_t = rotation_z(0.0, n), rotation_z(big_omega, n)
    s = eps2_s / 4
    t = (eps2_s + eps2_rest) / 4
    x_s = bd.endpoint_conditioned_sample(bd.RotationDiffusion(1.0), s, t, x0, x_t, generator=g)
    assert_ks(angle(x0, x_s), bridge_angle_cdf(eps2_s, eps2_rest, big_omega), what="from x0")
    assert_ks(angle(x_s, x_t), bridge_angle_cdf(eps2_rest, eps2_s, big_omega), what="to x_t")


def test_bridge_matches_exact_rejection_sampler():
    """An exact sampler written here: x0 · IGSO(ε_s²), kept with f_{t−s}(∠(R⁻¹x_t))/f_{t−s}(0)
    (acceptance about 40% for these typical endpoints)."""
    g = torch.Generator().manual_seed(7)
    eps2_s, eps2_rest, big_omega, n = 0.3, 1.2, 1.0, 5000
    x0, x_t = rotation_z(0.0, 8 * n), rotation_z(big_omega, 8 * n)
    proposal = bd.sample_forward(bd.RotationDiffusion(1.0), eps2_s / 4, x0, generator=g)
    beta = angle(proposal, x_t).numpy()
    keep = (np.random.default_rng(0).random(beta.size)
            < np.exp(log_f(beta, eps2_rest) - log_f(1e-9, eps2_rest)))
    exact = proposal[torch.from_numpy(keep)][:n]
    assert exact.shape[0] == n
    x_s = bd.endpoint_conditioned_sample(bd.RotationDiffusion(1.0), eps2_s / 4,
                                         (eps2_s + eps2_rest) / 4, x0[:n], x_t[:n], generator=g)
    for a, b in ((x0[:n], None), (None, x_t[:n])):
        ours = angle(a, x_s) if b is None else angle(x_s, b)
        ref = angle(a, exact) if b is None else angle(exact, b)
        assert_ks_2samp(ours, ref, what="against the exact rejection sampler")


def test_bridge_consistency():
    """x_t ~ forward(t), x_s ~ bridge(s, t, x0, x_t) ⇒ x_s ~ forward(s), per-element t."""
    g = torch.Generator().manual_seed(8)
    P, n = bd.RotationDiffusion(1.5), 3000
    s, t = torch.tensor([0.02, 0.2]), torch.tensor([0.1, 0.3])
    x0 = haar(2 * n, g).reshape(2, n, 4)
    x_t = bd.sample_forward(P, t, x0, generator=g)
    x_s = bd.endpoint_conditioned_sample(P, s, t, x0, x_t, generator=g)
    for i in range(2):
        assert_ks(angle(x0[i], x_s[i]), angle_cdf_on_grid(4 * 1.5 * float(s[i])),
                  what=f"s={float(s[i])}")


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_bridge_far_apart_endpoints_stay_on_the_geodesic(dtype):
    """Ω = π − 1e-3 at 4rt = 4e-4 (Ω/ε_t ≈ 157): finite, unit, and x_s sits a fraction s/t
    along a shortest geodesic, within a few bridge standard deviations."""
    g = torch.Generator().manual_seed(9)
    n, s, t, big_omega = 1000, 3e-5, 1e-4, math.pi - 1e-3
    x0, x_t = haar(n, g, dtype), None
    x_t = roma.quat_product(x0.double(), rotation_z(big_omega, n)).to(dtype)
    x_s = bd.endpoint_conditioned_sample(bd.RotationDiffusion(1.0), s, t, x0, x_t, generator=g)
    assert bool(torch.isfinite(x_s).all()) and float((x_s.norm(dim=-1) - 1).abs().max()) < 1e-6
    sd = math.sqrt(4 * s * (t - s) / t)
    from_start, to_end = angle(x0, x_s), angle(x_s, x_t)
    assert float((from_start - s / t * big_omega).abs().max()) < 6 * sd
    assert float((from_start + to_end - big_omega).abs().max()) < 40 * sd ** 2 + 1e-5


def test_forward_device_path_draws_the_same_law(sampler_path):
    """On the device path (forced on the CPU) the code meant for other devices runs (both
    proposal forms on every element, every rejection round over all elements, then the one
    host decision and the finishing rounds), on one batch that mixes the proposal and
    density forms. (The bridge's device path: test_bridge_edge_cases_draw_the_exact_law.)"""
    g = torch.Generator().manual_seed(13)
    t = torch.tensor([5e-4, 0.5, 10.0])  # ε² = 1e-3 (images), 1 (series), 20 (Haar proposal)
    x0 = haar(3 * 5000, g).reshape(3, 5000, 4)
    x_t = bd.sample_forward(bd.RotationDiffusion(0.5), t, x0, generator=g)
    for i, eps2 in enumerate((2 * t).tolist()):
        assert_ks(angle(x0[i], x_t[i]), angle_cdf_on_grid(eps2), what=f"eps2={eps2}")


def test_backward_with_posterior_guess_recovers_atom_weights():
    """Data: three atom rotations with weights (0.5, 0.3, 0.2). The guess draws x0 from the
    exact posterior p(atom | x_t) ∝ w_i f_{4rt}(∠(atom_i⁻¹ x_t)), so each bridge step is an
    exact reverse transition; the chain started at equilibrium recovers the weights."""
    g = torch.Generator().manual_seed(10)
    P, n = bd.RotationDiffusion(1.0), 1500
    atoms = roma.rotvec_to_unitquat(torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [0, 1.5, 1.5]], dtype=F64))
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=F64)

    def guess(x_t, t):
        eps2 = float(4 * t)
        logp = torch.stack([torch.from_numpy(log_f(angle(a.expand_as(x_t), x_t).clamp_min(1e-9)
                                                   .numpy(), eps2)) for a in atoms], -1)
        probs = torch.softmax(logp + weights.log(), -1)
        return atoms[torch.multinomial(probs, 1, generator=g)[:, 0]]

    timesteps = bd.time_schedule(lambda u: u ** 2, 1e-3, 2.5, 8, finv=math.sqrt)
    x_T = bd.sample_equilibrium(P, (n, 4), generator=g, dtype=F64)
    x = bd.sample_backward(guess, P, timesteps, x_T, generator=g)
    nearest = torch.stack([angle(a.expand_as(x), x) for a in atoms], -1).argmin(-1)
    assert_chi2(torch.bincount(nearest, minlength=3), weights, what="atom weights")


@pytest.mark.parametrize("t", [1e-4, 0.01, 0.3, 3.0])
def test_bridge_matches_quadrature_of_the_exact_law(t):
    """2e5 draws for each s/t ∈ {0.1, 0.5, 0.9} and endpoint angle Ω ∈ {√t, 2, 3.1}, x0 Haar
    and x_t = ±x0 exp(Ω z): the angles to both endpoints, the component along the geodesic
    and the azimuth around it, each against quadrature of the exact product density. At
    t = 1e-4, Ω = 3.1 is 155 bridge standard deviations."""
    g = torch.Generator().manual_seed(20)
    n, P = 200_000, bd.RotationDiffusion(1.0)
    for frac in (0.1, 0.5, 0.9):
        for big_omega in (math.sqrt(t), 2.0, 3.1):
            x0, x_t = endpoints(n, big_omega, g)
            x_s = bd.endpoint_conditioned_sample(P, frac * t, t, x0, x_t, generator=g)
            assert_bridge_law(x0, x_t, x_s, 4 * frac * t, 4 * (1 - frac) * t, big_omega,
                              what=f"t={t} s/t={frac} Ω={big_omega:.3g}")


def test_a_planted_three_percent_variance_error_fails(monkeypatch):
    """The same test catches a bridge whose Gaussian proposal has 3% too much variance."""
    real_setup = _so3_bridge.setup

    def planted(*args):
        c = real_setup(*args)
        return dict(c, sigma=c["sigma"] * math.sqrt(1.03))

    monkeypatch.setattr(_so3_bridge, "setup", planted)
    g = torch.Generator().manual_seed(21)
    t, frac, big_omega = 0.01, 0.5, 0.1
    x0, x_t = endpoints(200_000, big_omega, g)
    x_s = bd.endpoint_conditioned_sample(bd.RotationDiffusion(1.0), frac * t, t, x0, x_t,
                                         generator=g)
    with pytest.raises(AssertionError, match="KS"):
        assert_bridge_law(x0, x_t, x_s, 4 * frac * t, 4 * (1 - frac) * t, big_omega)


# (t, s/t, Ω): θ = 0 exactly (ANT), the worst acceptance (~0.76: the device path leaves rows
# for finishing), near t with a tiny angle, large times (NF, Gaussian and Haar proposals),
# s tiny, t tiny and far apart, antipodal rotations (both lifts weigh the same)
EDGE_CASES = [(1.0, 0.5, 0.0), (1.75, 0.5, 0.5), (0.6, 0.999, 0.02), (10.0, 0.1, 2.0),
              (30.0, 0.5, math.pi), (0.3, 1e-5, 1.0), (1e-6, 0.5, 3.0), (0.05, 0.5, math.pi)]


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_bridge_edge_cases_draw_the_exact_law(sampler_path, dtype):
    """One call with one (s, t) per batch element (20 000 rotations each) over the cases
    that take each proposal and branch, on the host path and on the device path (every
    branch on every element, fixed rounds, one decision, finishing on the leftovers)."""
    g = torch.Generator().manual_seed(22)
    n = 20_000
    pairs = [endpoints(n, big_omega, g, dtype) for _, _, big_omega in EDGE_CASES]
    x0, x_t = torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])
    t = torch.tensor([c[0] for c in EDGE_CASES], dtype=F64)
    s = t * torch.tensor([c[1] for c in EDGE_CASES], dtype=F64)
    x_s = bd.endpoint_conditioned_sample(bd.RotationDiffusion(1.0), s, t, x0, x_t, generator=g)
    assert x_s.dtype == dtype and x_s.shape == x0.shape and bool(torch.isfinite(x_s).all())
    for i, (ti, frac, big_omega) in enumerate(EDGE_CASES):
        assert_bridge_law(x0[i], x_t[i], x_s[i], 4 * float(s[i]), 4 * (ti - float(s[i])),
                          big_omega, what=f"{sampler_path} t={ti} s/t={frac} Ω={big_omega:.3g}")


def _setup(t, frac, omegas, dtype=F64):
    """_so3_bridge.setup for one (s, t), rate 1, x0 = 1 and x_t = exp(Ω z) for each Ω."""
    omegas = torch.as_tensor(omegas, dtype=F64).reshape(-1)
    x_t = roma.rotvec_to_unitquat(torch.stack([0 * omegas, 0 * omegas, omegas], dim=-1))
    times = torch.tensor([frac * t, (1 - frac) * t], dtype=dtype)
    return _so3_bridge.setup(_so3_bridge.time_constants(times[0], times[1]),
                             roma.identity_quat(len(omegas), dtype=dtype), x_t.to(dtype))


def _copies(t, frac, big_omega, n, dtype=F64):
    return _setup(t, frac, torch.full((n,), float(big_omega)), dtype)


@pytest.mark.parametrize("t, frac, big_omega, branch", [
    (1.0, 0.7, 0.29, "EP"), (1.5, 0.5, 0.447, "EP"), (0.5, 0.999, 0.0189, "ANT"),
    (1.0, 0.5, 0.0, "ANT"), (0.6, 0.5, 1e-3, "ANT"), (2.0, 0.5, 0.75, "NF"),
    (10.0, 0.1, 0.0, "NF"), (5.0, 0.3, math.pi, "NF")])
def test_acceptance_per_round_matches_its_closed_form(t, frac, big_omega, branch):
    """One round on 1e5 copies: the number kept is Binomial(1e5, A) with A the closed form
    (``_so3_bridge.acceptance``), for each branch (EP for both lifts, ANT, NF)."""
    g = torch.Generator().manual_seed(23)
    n = 100_000
    c = _copies(t, frac, big_omega, n)
    chosen = "NF" if bool(c["nf"][0]) else ("ANT" if bool(c["ant"][0]) else "EP")
    assert chosen == branch
    expected = float(_so3_bridge.acceptance(_copies(t, frac, big_omega, 1))[0])
    _, kept = _so3_bridge.propose(c, g)
    assert_binomial(kept.sum(), n, expected, what=f"acceptance of {branch}")


def test_closed_form_acceptance_is_at_least_three_quarters():
    """The per-round acceptance over s/t from 1e-3 to 0.999, t from 1e-4 to 100 and Ω from 0
    to π: at least 0.75 everywhere, and 1 − A < 3e-5 for t ≤ 0.3."""
    omegas = np.concatenate([[0.0], np.logspace(-8, -1, 15), np.linspace(0.1, math.pi, 60)])
    for t in [1e-4, 1e-2, 0.1, 0.3, 0.75, 1.0, 1.5, 1.75, 2.0, 3.0, 5.0, 10.0, 100.0]:
        worst = min(float(_so3_bridge.acceptance(_setup(t, frac, omegas)).min())
                    for frac in [1e-3, 0.01, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9,
                                 0.99, 0.999])
        assert worst >= 0.75, (t, worst)
        if t <= 0.3:
            assert worst > 1 - 3e-5, (t, worst)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_bridge_consistency_at_every_scale(sampler_path, dtype):
    """x_t ~ forward(t), x_s ~ bridge(s, t, x0, x_t) ⇒ x_s ~ forward(s), with per-element
    times that take every branch (small t: EP; t = 1: both lifts and ANT; t = 5: NF)."""
    g = torch.Generator().manual_seed(24)
    P, n = bd.RotationDiffusion(0.5), 20_000
    t = torch.tensor([2e-3, 0.2, 2.0, 10.0], dtype=F64)
    s = t * torch.tensor([0.3, 0.7, 0.5, 0.2], dtype=F64)
    x0 = haar(4 * n, g, dtype).reshape(4, n, 4)
    x_t = bd.sample_forward(P, t, x0, generator=g)
    x_s = bd.endpoint_conditioned_sample(P, s, t, x0, x_t, generator=g)
    for i in range(4):
        assert_ks(angle(x0[i], x_s[i]), angle_cdf_on_grid(4 * 0.5 * float(s[i])),
                  what=f"{sampler_path} s={float(s[i])} t={float(t[i])}")


def test_device_path_reads_one_value_from_the_device(device_path, monkeypatch):
    """On the device path (forced on the CPU) the samplers read no tensor value on the host
    but the one decision of ``finish_rejection`` (counted by wrapping every way a tensor's
    value reaches Python), for each branch of the bridge."""
    reads = []
    for method in ("__bool__", "item", "nonzero", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, method)
        monkeypatch.setattr(torch.Tensor, method,
                            lambda self, *a, _f=original, _m=method, **k: reads.append(_m)
                            or _f(self, *a, **k))
    g = torch.Generator().manual_seed(25)
    for t, frac, big_omega in [(0.6, 0.5, 1.0), (1.0, 0.5, 0.0), (10.0, 0.1, 2.0)]:
        x0, x_t = endpoints(1000, big_omega, g)
        times = torch.tensor([frac * t, (1 - frac) * t], dtype=F64)
        reads.clear()
        _so3_bridge.sample(times[0], times[1], x0, x_t, g)
        assert reads == ["__bool__"], (t, reads)
        reads.clear()
        _igso3.sample(torch.full((1000,), t, dtype=F64), 1000, g, left=_igso3.components(x0))
        assert reads == ["__bool__"], (t, reads)


# ---------------------------------------------------------------- interface

def test_masks_keep_rotations_bit_identical():
    g = torch.Generator().manual_seed(11)
    P = bd.RotationDiffusion(1.0)
    x0 = haar(12, g, torch.float32).reshape(3, 4, 4)
    mask = torch.rand(3, 4, generator=g) < 0.5
    x_t = bd.sample_forward(P, 0.3, bd.masked(x0, mask), generator=g)
    assert torch.equal(x_t.x[~mask], x0[~mask]) and not torch.equal(x_t.x[mask], x0[mask])
    x_s = bd.endpoint_conditioned_sample(P, 0.1, 0.3, x0, x_t, generator=g)
    assert torch.equal(x_s.x[~mask], x0[~mask])


def test_sign_of_quaternions_does_not_matter():
    g = torch.Generator().manual_seed(12)
    P = bd.RotationDiffusion(1.0)
    x0, x_t = haar(500, g), haar(500, g)
    a = bd.endpoint_conditioned_sample(P, 0.1, 0.2, x0, x_t, generator=torch.Generator().manual_seed(0))
    b = bd.endpoint_conditioned_sample(P, 0.1, 0.2, -x0, -x_t, generator=torch.Generator().manual_seed(0))
    assert float(angle(a, b).max()) < 1e-6
    assert float((P.loss(-x0, x0)).abs().max()) < 1e-12


def test_reproducible_with_generator_and_haar_equilibrium():
    P = bd.RotationDiffusion(1.0)
    draws = [bd.sample_equilibrium(P, (6000, 4), generator=torch.Generator().manual_seed(13),
                                   dtype=F64) for _ in range(2)]
    assert torch.equal(*draws)
    x0 = rotation_z(0.3, 6000)
    assert_ks(angle(x0, draws[0]), lambda w: (w - np.sin(w)) / math.pi, what="Haar angle")
    fwd = [bd.sample_forward(P, 0.2, x0[:50], generator=torch.Generator().manual_seed(1))
           for _ in range(2)]
    assert torch.equal(*fwd)


def test_bad_input_raises():
    P = bd.RotationDiffusion(1.0)
    with pytest.raises(ValueError, match="unit quaternions"):
        bd.sample_forward(P, 0.1, torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        bd.sample_forward(P, 0.1, torch.zeros(3, 3))
    with pytest.raises(TypeError, match="floating-point"):
        bd.sample_forward(P, 0.1, torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="rate"):
        bd.RotationDiffusion(0.0)
    with pytest.raises(ValueError, match="end with 4"):
        bd.sample_equilibrium(P, (3, 3))


def test_loss_and_scaler():
    """Diffusions.jl: rotang(|<q̂, q>|)/4 with rotang(x) = (1 − x)(x − 13)²/18; the scaler
    √(1 − e^{−5rt}) broadcasts against the per-rotation loss; the loss matches the squared
    angle to leading order and has finite gradients at q̂ = q."""
    P = bd.RotationDiffusion(0.7)
    q = roma.rotvec_to_unitquat(torch.tensor([[0.0, 0, 1e-3], [0, 2.0, 0]], dtype=F64))
    ident = roma.identity_quat(2, dtype=F64)
    x = torch.tensor([math.cos(5e-4), math.cos(1.0)], dtype=F64)
    torch.testing.assert_close(P.loss(q, ident), (1 - x) * (x - 13) ** 2 / 72)
    assert float(P.loss(q, ident)[0]) == pytest.approx(1e-6 / 4, rel=1e-3)  # ≈ ω²/4
    t = torch.tensor([1e-9, 0.5], dtype=F64).reshape(2, 1)
    torch.testing.assert_close(P.scaler(t), torch.sqrt(1 - torch.exp(-5 * 0.7 * t[:, 0])),
                               rtol=1e-6, atol=0)
    assert P.scaler(torch.tensor(0.5)).ndim == 0
    q_hat = ident.clone().requires_grad_()
    P.loss(q_hat, ident).sum().backward()
    assert bool(torch.isfinite(q_hat.grad).all())
    assert torch.autograd.gradcheck(lambda a: P.loss(a, q), (q.clone().requires_grad_(),))


def test_loss_normalises_the_prediction():
    """The loss sees only the rotation of q̂: ≥ 0, 0 exactly at q̂ = c q (either sign, |c| above
    the norm floor, the dtype's epsilon),
    so scaling a prediction cannot lower it (it was −3.57 at q̂ = 5q before)."""
    g = torch.Generator().manual_seed(14)
    P, q = bd.RotationDiffusion(1.0), haar(1000, g)
    assert abs(float(bd.standard_loss(P, 1.0, 5 * q, q))) < 1e-12
    for c in (5.0, 0.2, -3.0, 1e-6):
        assert float(P.loss(c * q, q).abs().max()) < 1e-12
    other = torch.randn(1000, 4, generator=g, dtype=F64) * 10
    loss = P.loss(other, q)
    assert bool((loss > 0).all())
    torch.testing.assert_close(loss, P.loss(other / other.norm(dim=-1, keepdim=True), q))


def test_loss_gradient_is_finite_everywhere():
    """Backpropagation at q̂ = ±q, near the zero vector and at it, and a float64 gradcheck
    at predictions that are not unit."""
    g = torch.Generator().manual_seed(15)
    P, q = bd.RotationDiffusion(1.0), haar(4, g)
    for dtype in (torch.float32, F64):
        for q_hat in (q, -q, 1e-30 * q, 1e-30 * torch.randn(4, 4, generator=g, dtype=F64),
                      torch.zeros(4, 4, dtype=F64)):
            leaf = q_hat.to(dtype).clone().requires_grad_()
            bd.standard_loss(P, 0.5, leaf, q.to(dtype)).backward()
            assert bool(torch.isfinite(leaf.grad).all()), (dtype, q_hat)
    start = 3 * torch.randn(4, 4, generator=g, dtype=F64)
    assert torch.autograd.gradcheck(lambda a: P.loss(a, q), (start.requires_grad_(),))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_unit_quaternions_are_accepted(dtype):
    """Correctly rounded Haar quaternions pass the unit check in bfloat16 and float16 (in
    bfloat16 a third of them are off by more than 1e-3), sample in the data's dtype, and a
    quaternion of norm 1.05 is still refused."""
    g = torch.Generator().manual_seed(16)
    P, q = bd.RotationDiffusion(1.0), haar(20_000, g).to(dtype)
    off = (q.double().norm(dim=-1) - 1).abs()
    if dtype == torch.bfloat16:
        assert float((off > 1e-3).double().mean()) > 0.3
    x_t = bd.sample_forward(P, 0.2, q, generator=g)
    x_s = bd.endpoint_conditioned_sample(P, 0.1, 0.2, q, x_t, generator=g)
    for x in (x_t, x_s):
        assert x.dtype == dtype and bool(torch.isfinite(x).all())
    bad = q.clone()
    bad[7] = (1.05 * bad[7].double()).to(dtype)
    for call in (lambda: bd.sample_forward(P, 0.2, bad),
                 lambda: bd.endpoint_conditioned_sample(P, 0.1, 0.2, bad, x_t),
                 lambda: bd.endpoint_conditioned_sample(P, 0.1, 0.2, q, bad)):
        with pytest.raises(ValueError, match="unit quaternions"):
            call()


def test_zero_and_non_finite_endpoints_are_refused():
    """x0 is checked like a state (a zero or NaN x0 gave NaN before), x_t too, and NaN or
    infinite quaternions are named as such."""
    g = torch.Generator().manual_seed(17)
    P, good = bd.RotationDiffusion(1.0), haar(6, g)
    for value, message in ((0.0, "unit quaternions"), (math.nan, "finite"), (math.inf, "finite")):
        bad = good.clone()
        bad[2] = value
        with pytest.raises(ValueError, match=message):
            bd.sample_forward(P, 0.1, bad)
        with pytest.raises(ValueError, match="x0.*" + message):
            bd.endpoint_conditioned_sample(P, 0.1, 0.2, bad, good)
        with pytest.raises(ValueError, match="x_t.*" + message):
            bd.endpoint_conditioned_sample(P, 0.1, 0.2, good, bad)
    with pytest.raises(ValueError, match="shape"):
        bd.endpoint_conditioned_sample(P, 0.1, 0.2, good[:5], good)


def test_equilibrium_dtype_and_empty_batches():
    P = bd.RotationDiffusion(1.0)
    with pytest.raises(TypeError, match="dtype"):
        bd.sample_equilibrium(P, (3, 4), dtype=torch.int64)
    q = bd.sample_equilibrium(P, (3, 4), dtype=torch.bfloat16)
    assert q.dtype == torch.bfloat16 and q.shape == (3, 4)
    empty = torch.zeros(0, 4)
    assert bd.sample_forward(P, 0.1, empty).shape == (0, 4)
    assert bd.endpoint_conditioned_sample(P, 0.1, 0.2, empty, empty).shape == (0, 4)
    none = torch.zeros(0)                                   # per-row times of no rows
    assert bd.endpoint_conditioned_sample(P, none + 0.1, none + 0.2, empty, empty).shape == (0, 4)
    rows = torch.zeros(3, 0, 4)                             # rows without elements
    times = torch.full((3,), 0.2)
    assert bd.endpoint_conditioned_sample(P, times / 2, times, rows, rows).shape == (3, 0, 4)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_cuda_forward_and_bridge_draw_the_exact_law(dtype):
    """The device path on a GPU: forward angles per element t, and the bridge on the edge
    cases (every branch), against the same oracles."""
    dev = torch.device("cuda")
    g = torch.Generator(dev).manual_seed(30)
    cpu = torch.Generator().manual_seed(30)
    P, n = bd.RotationDiffusion(1.0), 20_000
    t = torch.tensor([2.5e-4, 0.25, 5.0], dtype=F64, device=dev)
    x0 = haar(3 * n, cpu, dtype).reshape(3, n, 4).to(dev)
    x_t = bd.sample_forward(P, t, x0, generator=g)
    assert x_t.device.type == "cuda" and x_t.dtype == dtype
    for i, eps2 in enumerate((4 * t).tolist()):
        assert_ks(angle(x0[i].cpu(), x_t[i].cpu()), angle_cdf_on_grid(eps2), what=f"eps2={eps2}")
    pairs = [endpoints(n, big_omega, cpu, dtype) for _, _, big_omega in EDGE_CASES]
    a, b = torch.stack([p for p, _ in pairs]).to(dev), torch.stack([q for _, q in pairs]).to(dev)
    tt = torch.tensor([c[0] for c in EDGE_CASES], dtype=F64)
    ss = tt * torch.tensor([c[1] for c in EDGE_CASES], dtype=F64)
    x_s = bd.endpoint_conditioned_sample(P, ss.to(dev), tt.to(dev), a, b, generator=g)
    assert x_s.device.type == "cuda" and x_s.dtype == dtype
    for i, (ti, _, big_omega) in enumerate(EDGE_CASES):
        assert_bridge_law(a[i].cpu(), b[i].cpu(), x_s[i].cpu(), 4 * float(ss[i]),
                          4 * (ti - float(ss[i])), big_omega, what=f"cuda t={ti}")


@pytest.mark.cuda
def test_cuda_samplers_synchronise_once_and_reproduce():
    """Only the one decision after the fixed rounds waits for the GPU (the acceptance is ≈ 1
    here, so no finishing round runs), and the same seed gives the same draws."""
    import warnings
    dev = torch.device("cuda")
    P = bd.RotationDiffusion(1.0)
    x0 = haar(10_000, torch.Generator().manual_seed(31)).float().to(dev)
    x_t = bd.sample_forward(P, 0.3, x0, generator=torch.Generator(dev).manual_seed(0))
    for call in (lambda g: bd.sample_forward(P, 0.3, x0, generator=g),
                 lambda g: bd.endpoint_conditioned_sample(P, 0.1, 0.3, x0, x_t, generator=g)):
        call(torch.Generator(dev).manual_seed(1))
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                first = call(torch.Generator(dev).manual_seed(1))
        finally:
            torch.cuda.set_sync_debug_mode("default")
        syncs = [w for w in caught if "synchroniz" in str(w.message)]
        assert len(syncs) <= 1, [str(w.message) for w in syncs]
        assert torch.equal(first, call(torch.Generator(dev).manual_seed(1)))
