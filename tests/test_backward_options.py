"""Options of the backward sampler beyond the ancestral bridge: eta-steps (DDIM), per-component
time grids, correctors, and zero-shot inpainting (RePaint), each against its exact law."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import bridgediff as bd
from stats import assert_categorical, assert_chi2, assert_ks

OU = bd.OrnsteinUhlenbeck(mean=0.3, volatility=1.2, reversion=0.7)
BM = bd.BrownianMotion(2.0)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def clock(t):
    return torch.expm1(t)                     # a custom time change: τ(t) = e^t − 1


OU_CLOCKED = bd.TimeChanged(bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5), clock)


def gaussian_law(process, t):
    """(c, a, v): x_t | x0 ~ N(c + a (x0 − c), v), written out for the processes used here."""
    if isinstance(process, bd.TimeChanged):
        return gaussian_law(process.process, math.expm1(t))
    if isinstance(process, bd.OrnsteinUhlenbeck):
        th, sg = process.reversion, process.volatility
        return process.mean, math.exp(-th * t), -sg ** 2 * math.expm1(-2 * th * t) / (2 * th)
    return 0.0, 1.0, process.rate * t


# ---------------------------------------------------------------- eta-steps

@pytest.mark.parametrize("process", [OU, BM, OU_CLOCKED], ids=["OU", "BM", "OU-time-changed"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_eta_step_keeps_the_forward_marginal(process, eta):
    """x_t ~ forward(t, x0), x_s = step(s, t, x0, x_t) ⇒ x_s ~ forward(s, x0), per-element times."""
    n = 20_000
    x0 = torch.linspace(-2, 2, n, dtype=torch.float64)
    t = torch.linspace(0.3, 2.0, n, dtype=torch.float64)
    s = t * 0.4
    x_t = bd.sample_forward(process, t, x0, generator=gen(1))
    x_s = bd.endpoint_conditioned_sample(process, s, t, x0, x_t, generator=gen(2), eta=eta)
    laws = [gaussian_law(process, float(u)) for u in s]
    c, a, v = (torch.tensor(col, dtype=torch.float64) for col in zip(*laws))
    assert_ks((x_s - c - a * (x0 - c)) / v.sqrt(), stats.norm.cdf, what=f"eta = {eta}")


def test_a_planted_bug_fails_the_eta_test():
    """The test above has power: the classic DDIM slip, the bridge's mean without its noise
    (ε̂ scaled by √(v_s − b)/√v_t instead of √(v_s/v_t)), fails it."""
    n, s, t = 20_000, 0.4, 1.0
    x0 = torch.zeros(n, dtype=torch.float64)
    x_t = bd.sample_forward(BM, t, x0, generator=gen(1))
    slip = (s / t) * x_t                       # BM's bridge mean from x0 = 0, no noise
    with pytest.raises(AssertionError):
        assert_ks(slip / math.sqrt(BM.rate * s), stats.norm.cdf)
    x_s = bd.endpoint_conditioned_sample(BM, s, t, x0, x_t, eta=0.0)
    assert_ks(x_s / math.sqrt(BM.rate * s), stats.norm.cdf)


@pytest.mark.parametrize("process", [OU, BM, OU_CLOCKED], ids=["OU", "BM", "OU-time-changed"])
def test_eta_zero_is_deterministic_and_eta_one_is_the_bridge(process):
    x0 = torch.randn(500, generator=gen(3))
    x_t = torch.randn(500, generator=gen(4))
    g = gen(5)
    state = g.get_state()
    a = bd.endpoint_conditioned_sample(process, 0.2, 0.9, x0, x_t, generator=g, eta=0.0)
    assert torch.equal(g.get_state(), state)                    # no draw
    b = bd.endpoint_conditioned_sample(process, 0.2, 0.9, x0, x_t, generator=gen(6), eta=0.0)
    assert torch.equal(a, b)
    bridge = bd.endpoint_conditioned_sample(process, 0.2, 0.9, x0, x_t, generator=gen(7))
    same = bd.endpoint_conditioned_sample(process, 0.2, 0.9, x0, x_t, generator=gen(7), eta=1)
    assert torch.equal(bridge, same)
    timesteps = torch.linspace(0.1, 1.0, 6)
    guess = lambda x, t: torch.tanh(x)
    plain = bd.sample_backward(guess, process, timesteps, x_t, generator=gen(8))
    assert torch.equal(plain, bd.sample_backward(guess, process, timesteps, x_t,
                                                 generator=gen(8), eta=1.0))
    ddim = [bd.sample_backward(guess, process, timesteps, x_t, generator=gen(i), eta=0.0)
            for i in (9, 10)]
    assert torch.equal(*ddim)


def test_eta_zero_is_diffusers_ddim_step():
    diffusers = pytest.importorskip("diffusers")
    schedule = bd.ddpm_schedule("linear")
    P = bd.TimeChanged(bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5), schedule)
    ddim = diffusers.DDIMScheduler(beta_schedule="linear", clip_sample=False,
                                   prediction_type="sample")
    ddim.set_timesteps(10)                     # steps of 100: from step n to n − 100
    x0 = torch.randn(1000, generator=gen(11))
    x_t = torch.randn(1000, generator=gen(12))
    for step, prev in ((900, 800), (500, 400), (120, 20)):
        theirs = ddim.step(x0, step, x_t, eta=0.0).prev_sample
        ours = bd.endpoint_conditioned_sample(P, float(schedule.time(prev)),
                                              float(schedule.time(step)), x0, x_t, eta=0.0)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)   # diffusers: float32 ᾱ


def test_eta_per_component_and_refusals():
    P = (OU, bd.UniformDiscrete(1.0, 4))
    x = (torch.zeros(8), torch.zeros(8, dtype=torch.long))
    out = bd.sample_backward(lambda x, t: x, P, [0.5, 1.0], x, eta=(0.0, 1.0), generator=gen(13))
    assert out[0].shape == (8,) and out[1].dtype == torch.long
    with pytest.raises(ValueError, match="UniformDiscrete has no eta-step.*eta=1"):
        bd.sample_backward(lambda x, t: x, P, [0.5, 1.0], x, eta=0.0)
    with pytest.raises(ValueError, match="eta must lie in"):
        bd.endpoint_conditioned_sample(OU, 0.5, 1.0, x[0], x[0], eta=1.5)
    with pytest.raises(TypeError, match="eta must be a real"):
        bd.sample_backward(lambda x, t: x, OU, [0.5, 1.0], x[0], eta=torch.tensor(0.5))
    with pytest.raises(TypeError, match="eta is a tuple"):
        bd.endpoint_conditioned_sample(OU, 0.5, 1.0, x[0], x[0], eta=(0.0, 1.0))


# ---------------------------------------------------------------- per-component times

ATOMS = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
WEIGHTS = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
PI0 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)


def atomic_posterior_sample(process, x, t, g):
    """x0 drawn from the exact posterior p(x0 = atom | x_t) of the atomic target."""
    c, a, v = gaussian_law(process, float(t))
    logp = torch.log(WEIGHTS) - (x.double()[..., None] - c - a * (ATOMS - c)) ** 2 / (2 * v)
    idx = torch.multinomial(torch.softmax(logp, -1).reshape(-1, 3), 1, generator=g)
    return ATOMS[idx.reshape(x.shape)].to(x.dtype)


def uniform_transition(t, k=3):
    return math.exp(-t) * np.eye(k) + -math.expm1(-t) / k


def discrete_posterior(x, t):
    """p(x0 | x_t) ∝ π0_i P(t)[i, x_t] for UniformDiscrete(1, 3): probabilities (..., 3)."""
    joint = PI0.numpy()[:, None] * uniform_transition(float(t))   # (i, l)
    post = torch.tensor(joint / joint.sum(0), dtype=torch.float64).T   # (l, i)
    return post[x]


def test_each_component_follows_its_own_grid():
    P = (bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5), bd.UniformDiscrete(1.0, 3))
    n = 20_000
    grids = (bd.time_schedule(torch.exp, 1e-3, 8.0, 11, finv=math.log),
             torch.linspace(0.05, 5.0, 11, dtype=torch.float64))
    g = gen(14)
    x_T = (bd.sample_equilibrium(P[0], (n,), generator=g, dtype=torch.float64),
           bd.sample_equilibrium(P[1], (n,), generator=g))
    seen = []

    def guess(x, t):
        assert isinstance(t, tuple) and all(u.ndim == 0 for u in t)
        seen.append(tuple(float(u) for u in t))
        return atomic_posterior_sample(P[0], x[0], t[0], g), discrete_posterior(x[1], t[1])

    tracker = bd.Tracker()
    x = bd.sample_backward(guess, P, grids, x_T, generator=g, tracker=tracker)
    expected = [(float(grids[0][i]), float(grids[1][i])) for i in range(10, 0, -1)]
    np.testing.assert_allclose(seen, expected, rtol=1e-6)
    assert isinstance(tracker.time[0], tuple) and len(tracker) == 10
    near = (x[0][:, None] - ATOMS).abs().argmin(-1)
    assert_chi2(torch.bincount(near, minlength=3), WEIGHTS, what="OU component on its grid")
    law = PI0.numpy() @ uniform_transition(0.05)              # the discrete state at its t_0
    assert_categorical(x[1], law, what="discrete component on its grid")


def test_per_component_grids_are_validated():
    P = (OU, BM)
    x = (torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="one length"):
        bd.sample_backward(lambda x, t: x, P, ([0.1, 1.0], [0.1, 0.5, 1.0]), x)
    with pytest.raises(ValueError, match="increasing"):
        bd.sample_backward(lambda x, t: x, P, ([0.1, 1.0], [1.0, 0.5]), x)
    with pytest.raises(ValueError, match="timesteps has 3 components"):
        bd.sample_backward(lambda x, t: x, P, ([0.1, 1.0],) * 3, x)
    # a flat sequence of numbers is one grid shared by every component
    seen = []
    bd.sample_backward(lambda x, t: seen.append(t) or x, P, (0.5, 1.0), x)
    assert isinstance(seen[0], torch.Tensor) and seen[0].ndim == 0



def test_a_grid_given_for_a_sub_structure_is_shared_by_its_components():
    P = {"pos": OU, "frame": (BM, bd.UniformDiscrete(1.0, 3))}
    x = {"pos": torch.zeros(4, 2), "frame": (torch.zeros(4), torch.zeros(4, dtype=torch.long))}
    pos, frame = torch.linspace(0.01, 1.0, 5), [0.02, 0.5, 1.0, 1.5, 2.0]
    seen = []

    def guess(x, t):
        seen.append(t)
        return {"pos": x["pos"], "frame": (x["frame"][0], x["frame"][1])}

    bd.sample_backward(guess, P, {"pos": pos, "frame": frame}, x, generator=gen(15))
    assert float(seen[0]["pos"]) == 1.0 and [float(u) for u in seen[0]["frame"]] == [2.0, 2.0]
    assert [float(u) for u in seen[-1]["frame"]] == [0.5, 0.5]
    with pytest.raises(ValueError, match=r"timesteps\['frame'\] has 1 components"):
        bd.sample_backward(guess, P, {"pos": pos, "frame": (pos,)}, x)


# ---------------------------------------------------------------- correctors

@pytest.mark.parametrize("process", [bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5), OU_CLOCKED],
                         ids=["OU", "OU-time-changed"])
def test_correctors_keep_the_law_with_exact_posterior_samples(process):
    n, k = 20_000, 2
    g = gen(15)
    T = 8.0 if process is not OU_CLOCKED else 2.2
    timesteps = bd.time_schedule(torch.exp, 1e-3, T, 6, finv=math.log)          # 5 steps
    x0 = ATOMS[torch.multinomial(WEIGHTS, n, replacement=True, generator=g)]
    x_T = bd.sample_forward(process, T, x0, generator=g)
    tracker = bd.Tracker()
    x = bd.sample_backward(lambda x, t: atomic_posterior_sample(process, x, t, g), process,
                           timesteps, x_T, generator=g, correctors=k, tracker=tracker)
    assert len(tracker) == 5 * (1 + k)
    assert [float(t) for t in tracker.time[:3]] == [float(timesteps[-1])] * 3
    index = (x[:, None] - ATOMS).abs().argmin(-1)
    assert_chi2(torch.bincount(index, minlength=3), WEIGHTS, what="atoms after correctors")
    _, a, v = gaussian_law(process, float(timesteps[0]))
    assert_ks((x - a * ATOMS[index]) / math.sqrt(v), stats.norm.cdf, what="spread at t_0")


def test_correctors_bring_a_posterior_mean_chain_closer():
    """With the posterior mean (biased at few steps) the variance of the atomic mixture
    shrinks; correctors at the same grid bring it back towards the target's (measured:
    variance ratio 0.68 without, 0.76 with 1 corrector, 0.81 with 4, at 10 steps; seeds
    16-18 agree to 0.01)."""
    P = bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5)
    n = 20_000
    timesteps = bd.time_schedule(torch.exp, 1e-3, 8.0, 11, finv=math.log)

    def mean_guess(x, t):
        _, a, v = gaussian_law(P, float(t))
        logp = torch.log(WEIGHTS) - (x[..., None] - a * ATOMS) ** 2 / (2 * v)
        return (torch.softmax(logp, -1) * ATOMS).sum(-1)

    target = float((WEIGHTS * ATOMS ** 2).sum() - (WEIGHTS * ATOMS).sum() ** 2)
    ratios = []
    for k in (0, 1, 4):
        g = gen(16)
        x_T = bd.sample_equilibrium(P, (n,), generator=g, dtype=torch.float64)
        ratios.append(float(bd.sample_backward(mean_guess, P, timesteps, x_T, generator=g,
                                               correctors=k).var()) / target)
    assert ratios[0] < ratios[1] < ratios[2] < 1.0, ratios


def test_correctors_keep_held_elements_and_validate():
    x0 = torch.randn(10, 3, generator=gen(17))
    mask = torch.rand(10, 3, generator=gen(18)) < 0.5
    out = bd.sample_backward(lambda x, t: x * 0, OU, [0.1, 0.5, 1.0], bd.masked(x0, mask),
                             correctors=3, generator=gen(19))
    assert torch.equal(out.x[~mask], x0[~mask])
    with pytest.raises(ValueError, match="correctors"):
        bd.sample_backward(lambda x, t: x, OU, [0.5, 1.0], x0, correctors=-1)
    with pytest.raises(TypeError, match="correctors"):
        bd.sample_backward(lambda x, t: x, OU, [0.5, 1.0], x0, correctors=1.5)


# ---------------------------------------------------------------- RePaint

RHO, HELD = 0.9, 1.5
COV = np.array([[1.0, RHO], [RHO, 1.0]])
VP = bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5)


def vp_law(t):
    a = math.exp(-0.5 * t)
    return a, -math.expm1(-t)


def gaussian_posterior_sample(x, t, g):
    """x0 ~ p(x0 | x_t) for x0 ~ N(0, COV) under VP: N(K x_t, COV − a K COV)."""
    a, v = vp_law(float(t))
    K = a * COV @ np.linalg.inv(a * a * COV + v * np.eye(2))
    L = np.linalg.cholesky(COV - a * K @ COV)
    K, L = (torch.tensor(m, dtype=x.dtype) for m in (K, L))
    return x @ K.T + torch.randn(x.shape, generator=g, dtype=x.dtype) @ L.T


def repaint_oracle(times, rounds):
    """Mean and variance of the free coordinate x2 after RePaint with posterior-sample guesses:
    the chain is linear-Gaussian, so its law follows from the moments, step by step."""
    a, v = vp_law(times[-1])
    m, C = np.array([a * HELD, 0.0]), np.diag([v, 1.0])
    for i in range(len(times) - 1, 0, -1):
        s, t = times[i - 1], times[i]
        (a_t, v_t), (a_s, v_s), (a_d, v_d) = vp_law(t), vp_law(s), vp_law(t - s)
        K = a_t * COV @ np.linalg.inv(a_t ** 2 * COV + v_t * np.eye(2))
        alpha, beta, b = a_s * v_d / v_t, a_d * v_s / v_t, v_s * v_d / v_t
        M = alpha * K + beta * np.eye(2)
        for r in range(rounds + 1):
            if r:                                           # renoise the whole state s -> t
                m, C = a_d * m, a_d ** 2 * C + v_d * np.eye(2)
            m = M @ m                                        # bridge from a posterior sample
            C = M @ C @ M.T + alpha ** 2 * (COV - a_t * K @ COV) + b * np.eye(2)
            m, C = np.array([a_s * HELD, m[1]]), np.diag([v_s, C[1, 1]])  # held: fresh draw
    return m[1], C[1, 1]


def test_repaint_samples_its_exact_law_and_approaches_the_conditional_with_rounds():
    n, steps, t_min = 20_000, 20, 1e-3
    timesteps = bd.time_schedule(torch.exp, t_min, 10.0, steps + 1, finv=math.log).double()
    times = timesteps.numpy()
    a, v = vp_law(t_min)
    exact_mean, exact_var = a * RHO * HELD, a * a * (1 - RHO ** 2) + v   # x2 at t_min | x1 = HELD
    kl = lambda m, var: 0.5 * (var / exact_var + (m - exact_mean) ** 2 / exact_var - 1
                               + math.log(exact_var / var))
    oracle = {r: repaint_oracle(times, r) for r in (0, 1, 4, 20, 60)}
    divergences = [kl(*oracle[r]) for r in (0, 1, 4, 20, 60)]
    # measured: 0.73, 0.20, 0.024, 1.1e-3, 1.9e-4: RePaint converges in the rounds (KL about
    # as rounds^-1.7), not in the steps (without rounds it stays at KL 0.52 with 1000 steps)
    assert all(b < a for a, b in zip(divergences, divergences[1:])) and divergences[-1] < 5e-4
    data = bd.masked(torch.tensor([HELD, 0.0], dtype=torch.float64).expand(n, 2),
                     torch.tensor([False, True]).expand(n, 2))
    for rounds in (0, 4, 20):
        g = gen(20 + rounds)
        x_T = bd.sample_equilibrium(VP, data, generator=g)
        x = bd.sample_backward(lambda x, t: gaussian_posterior_sample(x, t, g), VP, timesteps,
                               x_T, generator=g, correctors=rounds, repaint=True)
        assert isinstance(x, bd.Masked) and bool((x.x[:, 0] == HELD).all())
        m, var = oracle[rounds]
        assert_ks((x.x[:, 1] - m) / math.sqrt(var), stats.norm.cdf, what=f"rounds = {rounds}")
        if rounds == 20:     # the oracle's bias here: mean −0.019, variance +3.1%
            assert abs(float(x.x[:, 1].mean()) - exact_mean) < 0.02 + 4 * math.sqrt(exact_var / n)
            assert abs(float(x.x[:, 1].var()) / exact_var - 1) < 0.035 + 4 * math.sqrt(2 / n)


def test_repaint_shows_the_guess_noised_held_values_and_returns_clean_ones():
    clean = torch.tensor([[2.0, 0.0, -1.0]]).expand(4000, 3)
    mask = torch.tensor([False, True, False])
    seen = []

    def guess(x, t):
        seen.append((float(t), x[:, 0].clone()))
        return torch.zeros_like(x)

    x = bd.sample_backward(guess, VP, [0.5, 2.0], bd.masked(clean, mask.expand(4000, 3)),
                           generator=gen(30), repaint=True)
    assert torch.equal(x.x[:, [0, 2]], clean[:, [0, 2]])
    (t, held), = seen
    a, v = vp_law(t)                           # the guess saw forward(t, 2.0) at the held entry
    assert_ks((held - 2.0 * a) / math.sqrt(v), stats.norm.cdf, what="held elements at t")
    with pytest.raises(ValueError, match="repaint"):
        bd.sample_backward(guess, VP, [0.5, 2.0], clean, repaint=True)
    with pytest.raises(TypeError, match="repaint"):
        bd.sample_backward(guess, VP, [0.5, 2.0], clean, repaint="yes")
    # in a structure, with an unmasked component beside the inpainted one
    P = (VP, bd.UniformDiscrete(1.0, 3))
    x_T = (bd.masked(clean, mask.expand(4000, 3)), torch.zeros(4000, dtype=torch.long))
    out = bd.sample_backward(lambda x, t: (x[0] * 0, x[1]), P, [0.5, 1.0, 2.0], x_T,
                             generator=gen(31), repaint=True, correctors=1)
    assert isinstance(out[0], bd.Masked) and torch.equal(out[0].x[:, 0], clean[:, 0])
    assert out[1].dtype == torch.long


# ---------------------------------------------------------------- everything at once, on a device

def all_options_chain(dev, on_first_guess=lambda: None):
    """Time changes, one grid per component, eta, guidance, correctors and RePaint together."""
    P = (bd.TimeChanged(bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5), bd.ddpm_schedule("squaredcos_cap_v2")),
         bd.TimeChanged(bd.AbsorbingDiscrete(1.0, 5), bd.LogLinearMasking()))
    n = 1000
    g = torch.Generator(device=dev).manual_seed(0)
    clean = torch.zeros(n, 3, device=dev)
    mask = torch.tensor([True, False, True], device=dev).expand(n, 3)
    x_T = (bd.sample_equilibrium(P[0], bd.masked(clean, mask), generator=g),
           bd.sample_equilibrium(P[1], (n, 4), generator=g, device=dev))
    grids = (torch.linspace(0.01, 1.0, 8), torch.linspace(0.05, 1.0, 8, dtype=torch.float64))

    def model(shift):
        def guess(x, t):
            on_first_guess()
            probs = torch.softmax(torch.zeros(x[1].shape + (5,), device=dev) + shift, -1)
            return torch.tanh(x[0]) * t[0] + shift, probs
        return guess

    guess = bd.Guided(P, model(0.5), model(0.0), (2.0, 1.5))
    return bd.sample_backward(guess, P, grids, x_T, generator=g, eta=(0.5, 1.0), correctors=1,
                              repaint=True), clean


def test_all_options_together_on_the_cpu():
    (x, labels), clean = all_options_chain(torch.device("cpu"))
    assert isinstance(x, bd.Masked) and torch.equal(x.x[:, 1], clean[:, 1])
    assert labels.dtype == torch.long and bool(((labels >= 0) & (labels <= 5)).all())


@pytest.mark.cuda
def test_all_options_together_stay_on_the_device_without_sync():
    dev = torch.device("cuda")
    try:        # from the first guess on, i.e. inside the loop, any synchronisation raises
        (x, labels), _ = all_options_chain(dev, lambda: torch.cuda.set_sync_debug_mode("error"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x.x.device.type == "cuda" and labels.device.type == "cuda"
