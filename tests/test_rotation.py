"""RotationDiffusion: the IGSO(3) law, the forward sampler and the SO(3) bridge.

Oracles are written here, independently of bridgediff: the IGSO(3) Haar density by the
direct signed image sum (ε² < 1) or a 30-term series (ε² ≥ 1) of MATH.md, its angle CDF
by scipy quadrature, and the bridge's angle marginals by quadrature of the product
density over angle-axis coordinates.
"""

import math

import numpy as np
import pytest
import roma
import torch
from scipy import integrate
from scipy.special import logsumexp
from stats import assert_chi2, assert_ks

import bridgediff as bd
from bridgediff import _igso3

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


def angle(p, q):
    """∠(p⁻¹q) in [0, π]."""
    rel = roma.quat_product(roma.quat_conjugation(p.double()), q.double())
    return 2 * torch.atan2(rel[..., :3].norm(dim=-1), rel[..., 3].abs())


def rotation_z(theta, n, dtype=F64):
    return roma.rotvec_to_unitquat(torch.tensor([0.0, 0.0, theta], dtype=F64)).expand(n, 4).to(dtype)


def haar(n, generator, dtype=F64):
    z = torch.randn(n, 4, generator=generator, dtype=dtype)
    return z / z.norm(dim=-1, keepdim=True)


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
    """4rt = 1e-8: ω/ε is chi(3); 4rt = 1e3: Haar, F(ω) = (ω − sin ω)/π; the
    inverse-CDF fallback alone draws the law too."""
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
    (0.3, 0.3, 2.5),       # far-ish apart at moderate ε: mostly importance resampling
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
    from scipy import stats
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
        res = stats.ks_2samp(ours.numpy(), ref.numpy())
        assert res.pvalue > 1e-3, res


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
    proposal forms on every element, every rejection round over all elements, the
    inverse-CDF fallback always), on one batch that mixes the proposal and density forms.
    (The bridge's device path is too slow on a CPU to test here: its 80 IGSO(3) draws each
    run the 52-step bisection.)"""
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
