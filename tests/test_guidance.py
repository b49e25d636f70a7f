"""Classifier-free guidance: the combination rule of each space against independent oracles,
w = 0 and w = 1 exact, and the law of a guided chain, computed exactly for a linear-Gaussian
model, with its distance to the tilted law p(x) p(y | x)^w (which it does not sample)."""

import math

import numpy as np
import pytest
import roma
import torch
from scipy import stats
from scipy.spatial.transform import Rotation

import bridgediff as bd
from stats import assert_ks


def gen(seed):
    return torch.Generator().manual_seed(seed)


class Drift(bd.Process):
    """A custom process without a guidance hook."""

    def sample_forward(self, t, x0, generator=None):
        return x0 + t

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        return x0 + s


def probabilities(shape, seed):
    return torch.rand(shape, generator=gen(seed), dtype=torch.float64).softmax(-1)


CASES = {
    "OU": (bd.OrnsteinUhlenbeck(), lambda i: torch.randn(5, 3, generator=gen(i))),
    "discrete-soft": (bd.UniformDiscrete(1.0, 4), lambda i: probabilities((5, 4), i)),
    "discrete-hard": (bd.AbsorbingDiscrete(1.0, 4),
                      lambda i: torch.randint(0, 4, (5,), generator=gen(i))),
    "circle": (bd.WrappedBrownian(1.0), lambda i: torch.rand(5, generator=gen(i)) * 6 - 3),
    "rotation": (bd.RotationDiffusion(), lambda i: roma.random_unitquat(5, generator=gen(i))),
    "custom": (Drift(), lambda i: torch.randn(5, generator=gen(i))),
    "time-changed": (bd.TimeChanged(bd.OrnsteinUhlenbeck(), torch.expm1),
                     lambda i: torch.randn(5, generator=gen(i))),
}
# a state x_t that each case's guesses fit
X_T = {"OU": torch.zeros(5, 3), "discrete-soft": torch.zeros(5, dtype=torch.long),
       "discrete-hard": torch.full((5,), 4), "circle": torch.zeros(5),
       "rotation": roma.random_unitquat(5, generator=gen(0)), "custom": torch.zeros(5),
       "time-changed": torch.zeros(5)}


@pytest.mark.parametrize("case", CASES)
def test_w_one_is_the_conditional_and_w_zero_the_unconditional_guess(case):
    process, draw = CASES[case]
    c, u = draw(1), draw(2)
    calls = []

    def conditional(x, t):
        calls.append("c")
        return c

    def unconditional(x, t):
        calls.append("u")
        return u

    assert bd.Guided(process, conditional, unconditional, 1.0)(None, None) is c
    assert bd.Guided(process, conditional, unconditional, 0)(None, None) is u
    assert calls == ["c", "u"]            # the guess that is not needed is not evaluated
    pair = bd.Guided((process, process), lambda x, t: (c, u),
                     lambda x, t: (u, c), (1.0, 0.0))((X_T[case], X_T[case]), None)
    assert pair[0] is c and pair[1] is c


def test_euclidean_guidance_is_affine_in_x0():
    u, c = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 2.0])
    out = bd.Guided(bd.BrownianMotion(), lambda x, t: c, lambda x, t: u, 3.0)(torch.zeros(3), None)
    torch.testing.assert_close(out, torch.tensor([3.0, 1.0, 10.0]))


def test_discrete_guidance_is_the_geometric_mixture_of_probabilities():
    u, c = probabilities((6, 5), 3), probabilities((6, 5), 4)
    for w in (0.5, 2.5, -1.0):
        out = bd.Guided(bd.UniformDiscrete(1.0, 5), lambda x, t: c, lambda x, t: u, w)(
            torch.zeros(6, dtype=torch.long), None)
        expected = u.numpy() ** (1 - w) * c.numpy() ** w
        np.testing.assert_allclose(out.numpy(), expected / expected.sum(-1, keepdims=True),
                                   rtol=1e-12)
    # unnormalised weights, a zero in either guess, and disjoint supports
    u = torch.tensor([[2.0, 2.0, 0.0], [1.0, 0.0, 0.0]])
    c = torch.tensor([[1.0, 0.0, 3.0], [0.0, 1.0, 1.0]])
    out = bd.IndependentDiscrete(1.0, [1, 1, 1]).guide(u, c, 2.0)
    torch.testing.assert_close(out, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]]))
    with pytest.raises(ValueError, match="probabilities"):
        bd.Guided(bd.UniformDiscrete(1.0, 3), lambda x, t: torch.zeros(4, dtype=torch.long),
                  lambda x, t: torch.ones(4, dtype=torch.long), 2.0)(
            torch.zeros(4, dtype=torch.long), None)


def test_circle_guidance_moves_along_the_shorter_arc():
    u = torch.tensor([3.0, 0.5, -1.0], dtype=torch.float64)
    c = torch.tensor([-3.0, 1.0, 2.0], dtype=torch.float64)
    for w in (0.5, 2.0):
        out = bd.Guided(bd.WrappedBrownian(1.0), lambda x, t: c, lambda x, t: u, w)(u, None)
        arc = np.angle(np.exp(1j * (c.numpy() - u.numpy())))         # in (−π, π]
        expected = np.angle(np.exp(1j * (u.numpy() + w * arc)))
        np.testing.assert_allclose(np.exp(1j * out.numpy()), np.exp(1j * expected), atol=1e-12)
        assert bool((out >= -math.pi).all() and (out < math.pi).all())


def test_rotation_guidance_of_guesses_in_two_dtypes_is_computed_in_the_wider():
    u = roma.random_unitquat(6, generator=gen(7)).double()
    c = roma.random_unitquat(6, generator=gen(8)).double()
    exact = bd.RotationDiffusion().guide(u, c, 2.5)
    for low in (torch.float32, torch.bfloat16):
        out = bd.Guided(bd.RotationDiffusion(), lambda x, t: c, lambda x, t: u.to(low), 2.5)(
            u.to(low), None)
        assert out.dtype == low
        expected = bd.RotationDiffusion().guide(u.to(low).double(), c, 2.5)
        torch.testing.assert_close(out.double(), expected, atol=2 * torch.finfo(low).eps, rtol=0)
    assert exact.dtype == torch.float64


def test_rotation_guidance_follows_the_geodesic():
    u = roma.random_unitquat((4, 3), generator=gen(5)).double()
    c = roma.random_unitquat((4, 3), generator=gen(6)).double()
    for w in (0.3, 2.0):
        out = bd.Guided(bd.RotationDiffusion(), lambda x, t: c, lambda x, t: u, w)(u, None)
        assert out.shape == (4, 3, 4)
        ru, rc = (Rotation.from_quat(q.reshape(-1, 4).numpy()) for q in (u, c))
        expected = ru * Rotation.from_rotvec(w * (ru.inv() * rc).as_rotvec())
        got = Rotation.from_quat(out.reshape(-1, 4).numpy())
        np.testing.assert_allclose((got.inv() * expected).magnitude(), 0, atol=1e-9)


def test_guidance_errors():
    x = torch.zeros(3)
    with pytest.raises(NotImplementedError, match="Drift defines no guidance"):
        bd.Guided(Drift(), lambda x, t: x, lambda x, t: x, 2.0)(x, None)
    with pytest.raises(TypeError, match="w must be a real"):
        bd.Guided(Drift(), lambda x, t: x, lambda x, t: x, "2")
    with pytest.raises(ValueError, match="w must be finite"):
        bd.Guided(Drift(), lambda x, t: x, lambda x, t: x, float("nan"))
    with pytest.raises(ValueError, match="w has 3 components"):
        bd.Guided((Drift(), Drift()), lambda x, t: x, lambda x, t: x, (1.0, 2.0, 3.0))
    with pytest.raises(TypeError, match="conditional must be callable"):
        bd.Guided(Drift(), None, lambda x, t: x, 2.0)
    with pytest.raises(TypeError, match="unconditional.*tensors"):
        bd.Guided(bd.OrnsteinUhlenbeck(), lambda x, t: x, lambda x, t: None, 2.0)(x, None)


def test_guesses_are_checked_against_x_t_before_they_are_combined():
    """Shapes that would broadcast, logits where probabilities belong, and vectors of the
    wrong size are each blamed on the guess that returned them."""
    x = torch.randn(5, 3)
    ou = bd.OrnsteinUhlenbeck()
    with pytest.raises(ValueError, match=r"conditional\(x_t, t\) returned an invalid x0.*\(2, 3\)"):
        bd.Guided(ou, lambda x, t: x[:2], lambda x, t: x, 2.0)(x, 1.0)
    with pytest.raises(ValueError, match=r"conditional\(x_t, t\) returned an invalid x0.*\(5, 1\)"):
        bd.Guided(ou, lambda x, t: x.mean(-1, keepdim=True), lambda x, t: x, 2.0)(x, 1.0)
    U = bd.UniformDiscrete(1.0, 4)
    logits = torch.tensor([2.0, -1.0, -1.0, -1.0]).expand(5, 4)
    with pytest.raises(ValueError, match=r"conditional\(x_t, t\) returned an invalid x0.*"
                                         r"non-negative"):
        bd.Guided(U, lambda x, t: logits, lambda x, t: logits.softmax(-1), 2.0)(
            torch.zeros(5, dtype=torch.long), 1.0)
    S = bd.SphereBrownian()
    v = torch.nn.functional.normalize(torch.randn(5, 3), dim=-1)
    q = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    with pytest.raises(ValueError, match=r"unconditional\(x_t, t\) returned an invalid x0"):
        bd.Guided(S, lambda x, t: x, lambda x, t: q, 2.0)(v, 1.0)


# ---------------------------------------------------------------- the law of a guided chain

# x0 ~ N(MU0, S0) in 2-D; y = x0[0] + N(0, R) observed at Y. The conditional law is the
# Gaussian posterior; the w-tilted law p(x) p(y | x)^w is Gaussian with precision
# S0⁻¹ + w Hᵀ R⁻¹ H. Noise: OU(0, 1, 1/2), whose equilibrium N(0, I) starts the chains.
MU0 = np.array([0.5, -0.5])
S0 = np.array([[1.0, 0.6], [0.6, 0.8]])
H, R, Y = np.array([[1.0, 0.0]]), 0.25, 1.5
T_MIN, T_MAX = 1e-3, 10.0


def tilted(w):
    precision = np.linalg.inv(S0) + w * H.T @ H / R
    cov = np.linalg.inv(precision)
    return cov @ (np.linalg.inv(S0) @ MU0 + w * H.T[:, 0] * Y / R), cov


def vp(t):
    return math.exp(-t / 2), -math.expm1(-t)


def posterior_mean_map(law, t):
    """E[x0 | x_t] = G x_t + g for x0 ~ N(m, S) and x_t = a x0 + √v z."""
    (m, S), (a, v) = law, vp(t)
    G = a * S @ np.linalg.inv(a * a * S + v * np.eye(2))
    return G, m - a * G @ m


def chain_law(w, times, eta=1.0, correctors=0):
    """The exact law of the guided chain: every step is affine in x_t plus Gaussian noise,
    so its mean and covariance follow one step at a time (numpy, from the formulas)."""
    m, C = np.zeros(2), np.eye(2)
    for i in range(len(times) - 1, 0, -1):
        s, t = times[i - 1], times[i]
        Gu, gu = posterior_mean_map(tilted(0.0), t)
        Gc, gc = posterior_mean_map(tilted(1.0), t)
        G, g = Gu + w * (Gc - Gu), gu + w * (gc - gu)
        (a_s, v_s), (a_t, v_t), (a_d, v_d) = vp(s), vp(t), vp(t - s)
        b = v_s * v_d / v_t                               # the bridge variance
        k = math.sqrt((v_s - eta ** 2 * b) / v_t)
        M = (a_s - k * a_t) * G + k * np.eye(2)           # x_s = a_s x0 + k (x_t − a_t x0) + ...
        for r in range(correctors + 1):
            if r:
                m, C = a_d * m, a_d ** 2 * C + v_d * np.eye(2)
            m, C = M @ m + (a_s - k * a_t) * g, M @ C @ M.T + eta ** 2 * b * np.eye(2)
    return m, C


def kl(law, target):
    (m0, C0), (m1, C1) = law, target
    P1 = np.linalg.inv(C1)
    return 0.5 * (np.trace(P1 @ C0) + (m1 - m0) @ P1 @ (m1 - m0) - 2
                  + math.log(np.linalg.det(C1) / np.linalg.det(C0)))


def at_t_min(law):
    a, v = vp(T_MIN)
    return a * law[0], a * a * law[1] + v * np.eye(2)


def torch_posterior_mean(law):
    """The exact posterior-mean guess (the "model") in torch."""
    def guess(x, t):
        G, g = posterior_mean_map(law, float(t))
        return x @ torch.tensor(G, dtype=x.dtype).T + torch.tensor(g, dtype=x.dtype)
    return guess


@pytest.mark.parametrize("eta,correctors", [(1.0, 0), (0.0, 0), (1.0, 2)])
def test_the_guided_chain_samples_its_exact_law(eta, correctors):
    n, w = 20_000, 3.0
    times = bd.time_schedule(torch.exp, T_MIN, T_MAX, 21, finv=math.log).double()
    P = bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5)
    guess = bd.Guided(P, torch_posterior_mean(tilted(1.0)), torch_posterior_mean(tilted(0.0)), w)
    g = gen(7)
    x_T = bd.sample_equilibrium(P, (n, 2), generator=g, dtype=torch.float64)
    x = bd.sample_backward(guess, P, times, x_T, generator=g, eta=eta, correctors=correctors)
    m, C = chain_law(w, times.numpy(), eta, correctors)
    for direction in ([1.0, 0.0], [0.0, 1.0], [1.0, -1.0]):
        d = np.array(direction)
        z = (x.numpy() @ d - m @ d) / math.sqrt(d @ C @ d)
        assert_ks(z, stats.norm.cdf, what=f"projection on {direction}")


def test_guided_chains_do_not_sample_the_tilted_law_but_correctors_approach_it():
    """What is true, with exact guesses (measured, KL to the tilted law at t_min):

    * w = 0 and w = 1: the chain's law converges to p(x) and p(x | y) as the steps grow
      (eta = 1: KL 4e-6 at 2000 steps, about 1/steps²; the deterministic eta = 0 keeps
      the KL of its start, N(0, I) against p_T, 1e-5 to 4e-5 at T = 10);
    * w = 3: it converges to a law that is not the tilted one: KL 0.094 (eta = 1, DDPM) and
      0.93 (eta = 0, DDIM) at 2000 steps, as at 200 (Bradley & Nakkiran 2024);
    * correctors (renoise to t and step back with the guided guess: in the small-step limit
      a Langevin move on the geometric mixture p_t^{1−w} p_t(·|y)^w, which at t_min is the
      tilted law up to KL 2e-5) pull it there: 0.10, 0.023, 0.0045, 0.00097 with 0, 1, 4,
      16 correctors (eta = 1, 200 steps).
    """
    fine = np.geomspace(T_MIN, T_MAX, 2001)
    for w in (0.0, 1.0):
        assert kl(chain_law(w, fine), at_t_min(tilted(w))) < 1e-5
        assert kl(chain_law(w, fine, eta=0.0), at_t_min(tilted(w))) < 1e-4
    target = at_t_min(tilted(3.0))
    assert kl(chain_law(3.0, fine), target) > 0.05
    assert kl(chain_law(3.0, fine, eta=0.0), target) > 0.5
    grid = np.geomspace(T_MIN, T_MAX, 201)
    divergences = [kl(chain_law(3.0, grid, correctors=k), target) for k in (0, 1, 4, 16)]
    assert all(b < a / 4 for a, b in zip(divergences, divergences[1:])), divergences
    assert divergences[-1] < 2e-3
