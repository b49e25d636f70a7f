"""CenteredOrnsteinUhlenbeck: zero centre of mass over one dimension.

The oracles are Gaussian laws on the zero-mean subspace written here in numpy: the OU mean
factor and variance from the SDE, the bridge by conditioning the joint Gaussian of (y_s, y_t),
and the projector I − 11ᵀ/L as an explicit orthonormal basis of the subspace (scipy).
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.linalg import null_space
from stats import assert_ks

import bridgediff as bd

VOL, REV = 1.3, 0.7
L = 6


def gen(seed):
    return torch.Generator().manual_seed(seed)


def ou(u):
    a = math.exp(-REV * u)
    return a, VOL ** 2 * -math.expm1(-2 * REV * u) / (2 * REV)


def centred(x, dim=-2):
    return x - x.mean(dim=dim, keepdim=True)


def whitened_chi2(noise, var):
    """|Uᵀ e|²/var summed over coordinates for residue vectors e (n, L, 3), U an orthonormal
    basis of the zero-mean subspace: χ² with 3(L − 1) degrees of freedom if Cov(e) = var·P."""
    basis = null_space(np.ones((1, L)))                       # (L, L − 1)
    e = noise.double().numpy()
    return (np.einsum("lk,nlc->nkc", basis, e) ** 2).sum((1, 2)) / var


def positions(n, g, dtype=torch.float64):
    offset = torch.tensor([5.0, -1.0, 2.0], dtype=dtype)
    return 2 * torch.randn(n, L, 3, generator=g, dtype=dtype) + offset


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_centroid_is_held_exactly(dtype):
    P = bd.CenteredOrnsteinUhlenbeck(VOL, REV)
    g = gen(1)
    x0 = positions(500, g, dtype)
    t = torch.rand(500, generator=g, dtype=dtype) * 3 + 1e-3
    x_t = bd.sample_forward(P, t, x0, generator=g)
    x_s = bd.endpoint_conditioned_sample(P, t / 2, t, positions(500, g, dtype), x_t, generator=g)
    eq = bd.sample_equilibrium(P, (500, L, 3), generator=g, dtype=dtype)
    tol = 16 * torch.finfo(dtype).eps * 10
    for out, centre in ((x_t, x0), (x_s, x_t), (eq, torch.zeros_like(eq))):
        assert out.dtype == dtype
        assert float((out.mean(-2) - centre.mean(-2)).abs().max()) < tol


def test_forward_law_and_covariance_on_the_subspace():
    """Projections on random zero-mean directions are N(a u·y0, v); the noise has covariance
    v(I − 11ᵀ/L) (its whitened norm is χ²_{3(L−1)}); one t per batch element."""
    P = bd.CenteredOrnsteinUhlenbeck(VOL, REV)
    g, n = gen(2), 20000
    x0 = positions(n, g)
    t = torch.where(torch.arange(n) < n // 2, 0.05, 2.0).double()
    x_t = bd.sample_forward(P, t, x0, generator=g)
    u = np.random.default_rng(0).normal(size=L)
    u = (u - u.mean()) / np.linalg.norm(u - u.mean())
    for half, tau in ((slice(0, n // 2), 0.05), (slice(n // 2, n), 2.0)):
        a, v = ou(tau)
        noise = x_t[half] - x0[half].mean(-2, keepdim=True) - a * centred(x0[half])
        proj = np.einsum("l,nlc->nc", u, noise.numpy()).ravel()
        assert_ks(proj / math.sqrt(v), stats.norm.cdf, what=f"projection t={tau}")
        assert_ks(whitened_chi2(noise, v), stats.chi2(3 * (L - 1)).cdf, what=f"chi2 t={tau}")
        # nothing along 1 (the χ² sees only the subspace), and the covariance matrix is v·P
        assert float(noise.mean(-2).abs().max()) < 1e-12
        e = noise.permute(0, 2, 1).reshape(-1, L).numpy()
        cov = e.T @ e / e.shape[0]
        projector = np.eye(L) - np.ones((L, L)) / L
        assert np.abs(cov - v * projector).max() < 5 * v * math.sqrt(2 / e.shape[0])


def test_bridge_is_the_conditioned_gaussian():
    """x_s | x0, x_t by conditioning (y_s, y_t) jointly: y_s ~ N(a_s y0, v_s P), y_t = a_{t−s} y_s
    + N(0, v_{t−s} P); every law lives on the subspace, where P acts as the identity."""
    P = bd.CenteredOrnsteinUhlenbeck(VOL, REV, dim=1)
    g, n, s, t = gen(3), 20000, 0.4, 1.1
    x0, x_t = positions(n, g), positions(n, g)
    x_s = bd.endpoint_conditioned_sample(P, s, t, x0, x_t, generator=g)
    (a_s, v_s), (a_d, v_d) = ou(s), ou(t - s)
    m_s, m_t = a_s * centred(x0), a_d * a_s * centred(x0)
    cov_st, var_t = a_d * v_s, a_d ** 2 * v_s + v_d
    mean = m_s + cov_st / var_t * (centred(x_t) - m_t) + x_t.mean(-2, keepdim=True)
    var = v_s - cov_st ** 2 / var_t
    assert_ks(whitened_chi2(x_s - mean, var), stats.chi2(3 * (L - 1)).cdf, what="bridge chi2")
    assert float((x_s - mean).mean(-2).abs().max()) < 1e-12


def test_bridge_consistency_and_equilibrium():
    P = bd.CenteredOrnsteinUhlenbeck(VOL, REV)
    g, n = gen(4), 20000
    x0 = positions(n, g)
    x_t = bd.sample_forward(P, 1.5, x0, generator=g)
    x_s = bd.endpoint_conditioned_sample(P, 0.5, 1.5, x0, x_t, generator=g)
    a, v = ou(0.5)
    noise = x_s - x0.mean(-2, keepdim=True) - a * centred(x0)
    assert_ks(whitened_chi2(noise, v), stats.chi2(3 * (L - 1)).cdf, what="consistency")
    eq = bd.sample_equilibrium(P, (n, L, 3), generator=g, dtype=torch.float64)
    assert_ks(whitened_chi2(eq, VOL ** 2 / (2 * REV)), stats.chi2(3 * (L - 1)).cdf,
              what="equilibrium")


def test_masked_elements_are_held_and_loss_is_ous():
    """With a mask the held residues keep their values (so the centroid moves: documented)."""
    P = bd.CenteredOrnsteinUhlenbeck(VOL, REV)
    g = gen(5)
    x0 = positions(4, g)
    mask = torch.zeros(4, L, 3, dtype=torch.bool)
    mask[:, :3] = True
    x_t = bd.sample_forward(P, 0.5, bd.masked(x0, mask), generator=g)
    assert torch.equal(x_t.x[~mask], x0[~mask])
    t = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    torch.testing.assert_close(P.loss(x_t.x, x0), (x_t.x - x0) ** 2)
    torch.testing.assert_close(P.scaler(t), bd.OrnsteinUhlenbeck(0.0, VOL, REV).scaler(t))


def test_bad_input_raises():
    P = bd.CenteredOrnsteinUhlenbeck()
    with pytest.raises(ValueError, match="at least 2"):
        bd.sample_forward(P, 0.1, torch.zeros(4, 1, 3))
    with pytest.raises(ValueError, match="out of range"):
        bd.sample_forward(P, 0.1, torch.zeros(4))
    with pytest.raises(ValueError, match="at least 2"):
        bd.sample_equilibrium(P, (4, 1, 3))
    with pytest.raises(TypeError, match="dim"):
        bd.CenteredOrnsteinUhlenbeck(dim=1.5)
    with pytest.raises(TypeError, match="x0"):
        bd.sample_forward(P, 0.1, torch.zeros(4, 3, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="volatility"):
        bd.CenteredOrnsteinUhlenbeck(volatility=0.0)


def test_times_must_be_shared_along_the_centred_dimension():
    """One time per row is fine with dim=-2; times that vary along dim (dim on the batch, or
    one chain (L, 3) given L times) would mix noise levels inside one centroid."""
    t = torch.tensor([0.1, 1.0, 2.0, 5.0])
    x0 = torch.randn(4, 5, 3, generator=gen(7))
    on_batch = bd.CenteredOrnsteinUhlenbeck(dim=0)
    for call in (lambda: bd.sample_forward(on_batch, t, x0),
                 lambda: bd.endpoint_conditioned_sample(on_batch, t / 10, 6.0, x0, x0),
                 lambda: bd.endpoint_conditioned_sample(on_batch, 0.05, t, x0, x0, eta=0.0),
                 lambda: bd.sample_forward(bd.CenteredOrnsteinUhlenbeck(), t[:4], x0[0, :4])):
        with pytest.raises(ValueError, match="varies along dim"):
            call()
    x_t = bd.sample_forward(on_batch, 0.5, x0, generator=gen(8))     # one time: fine
    torch.testing.assert_close(x_t.mean(0), x0.mean(0))
    x_t = bd.sample_forward(bd.CenteredOrnsteinUhlenbeck(), t, x0, generator=gen(9))
    torch.testing.assert_close(x_t.mean(1), x0.mean(1))


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_eta_steps_keep_the_forward_law_and_the_centroid(eta):
    """x_t ~ forward(t), x_s = eta-step(s, t, x0, x_t) gives x_s ~ forward(s) on the subspace,
    with x_t's centroid; eta = 0 draws nothing."""
    P = bd.CenteredOrnsteinUhlenbeck(VOL, REV)
    g, n, s, t = gen(5), 20000, 0.3, 1.2
    x0 = positions(n, g)
    x_t = bd.sample_forward(P, t, x0, generator=g)
    x_s = bd.endpoint_conditioned_sample(P, s, t, x0, x_t, eta=eta, generator=g)
    assert float((x_s.mean(-2) - x_t.mean(-2)).abs().max()) < 1e-12
    a, v = ou(s)
    noise = x_s - x0.mean(-2, keepdim=True) - a * centred(x0)
    assert_ks(whitened_chi2(noise, v), stats.chi2(3 * (L - 1)).cdf, what=f"eta={eta}")
    if eta == 0:
        again = bd.endpoint_conditioned_sample(P, s, t, x0, x_t, eta=0.0, generator=gen(99))
        assert torch.equal(x_s, again)


def test_log_densities_live_on_the_subspace():
    """For L = 2 the centred part is one coordinate u = (x_1 − x_2)/√2 (unit speed along the
    line of the centroid): the per-sample log density is log N(u; m_u, v), and the closed-form
    KLs equal Monte Carlo estimates from those densities."""
    P = bd.CenteredOrnsteinUhlenbeck(VOL, REV, dim=-1)
    g = gen(6)
    x0 = torch.randn(4000, 2, generator=g, dtype=torch.float64) + 3.0
    t = 0.7
    x_t = bd.sample_forward(P, t, x0, generator=g)
    tt = torch.tensor(t, dtype=torch.float64)
    log_p = P.forward_log_prob(tt, x0, x_t).sum(-1)
    a, v = ou(t)
    u_t, u_0 = (x_t[:, 0] - x_t[:, 1]) / math.sqrt(2), (x0[:, 0] - x0[:, 1]) / math.sqrt(2)
    np.testing.assert_allclose(log_p.numpy(), stats.norm(a * u_0.numpy(), math.sqrt(v)).logpdf(
        u_t.numpy()), rtol=1e-10)
    eq = P.equilibrium_log_prob(x_t).sum(-1)
    np.testing.assert_allclose(eq.numpy(), stats.norm(0, VOL / math.sqrt(2 * REV)).logpdf(
        u_t.numpy()), rtol=1e-10)
    # the bridge KL against its Monte Carlo definition E_q[log q − log p]
    t0, s = torch.tensor(1e-2, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64)
    x0_hat = x0 + 0.3
    kl = P.bridge_kl(t0, s, tt, x0, x0_hat, x_t).sum(-1)
    many = torch.Generator().manual_seed(7)
    draws = torch.stack([P.endpoint_conditioned_sample(s - t0, tt - t0, x0, x_t, many)
                         for _ in range(400)])
    mc = (P.bridge_log_prob(s - t0, tt - t0, x0, x_t, draws)
          - P.bridge_log_prob(s, tt, x0_hat, x_t, draws)).sum(-1).mean(0)
    np.testing.assert_allclose(mc.numpy(), kl.numpy(), atol=0.05, rtol=0.05)
    assert abs(float(mc.mean() - kl.mean())) < 3 * float(mc.std()) / math.sqrt(len(mc)) + 1e-3
