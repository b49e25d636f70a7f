"""Time changes: DDPM's schedules (against diffusers and a written-out oracle), MDLM's masking
clock, and the identities every time-changed process must satisfy."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import bridgediff as bd
from stats import assert_binomial, assert_categorical, assert_ks, assert_ks_2samp
from test_sampling import ScaledBrownian  # a user's process with only the two protocol methods

VP = bd.OrnsteinUhlenbeck(mean=0.0, volatility=1.0, reversion=0.5)
N_TRAIN = 1000


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- the oracle of ᾱ

def oracle_alphas_cumprod(beta_schedule, n=N_TRAIN, beta_start=1e-4, beta_end=0.02):
    """diffusers' documented tables, in numpy float64: linear betas; GLIDE's cosine alpha-bar
    with s = 0.008 discretised into betas capped at 0.999; then the cumulative product."""
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, n)
    elif beta_schedule == "squaredcos_cap_v2":
        f = lambda u: np.cos((u + 0.008) / 1.008 * np.pi / 2) ** 2
        i = np.arange(n)
        betas = np.minimum(1 - f((i + 1) / n) / f(i / n), 0.999)
    return np.cumprod(1 - betas)


def oracle_alpha_bar_at(t, table):
    """ᾱ(t) with −log ᾱ linear between the grid points (n + 1)/N and 0 at t = 0."""
    grid = np.arange(len(table) + 1) / len(table)
    return np.exp(-np.interp(t, grid, np.concatenate([[0.0], -np.log(table)])))


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_ddpm_clock_reproduces_alphas_cumprod_at_the_grid_and_interpolates_log_linearly(schedule):
    table = oracle_alphas_cumprod(schedule)
    clock = bd.ddpm_schedule(schedule)
    np.testing.assert_allclose(clock.alphas_cumprod.numpy(), table, rtol=1e-12)
    steps = torch.arange(N_TRAIN)
    t = clock.time(steps)
    np.testing.assert_allclose(t.numpy(), (steps.numpy() + 1) / N_TRAIN, rtol=0)
    np.testing.assert_allclose(torch.exp(-clock(t)).numpy(), table, rtol=1e-12)  # θ = 1/2
    mid = np.array([0.2 / N_TRAIN, 0.37, 0.5005, 0.9999])
    np.testing.assert_allclose(torch.exp(-clock(torch.tensor(mid))).numpy(),
                               oracle_alpha_bar_at(mid, table), rtol=1e-12)
    # reversion θ: e^{−θ τ} = sqrt(ᾱ) whatever θ
    other = bd.ddpm_schedule(schedule, reversion=2.0)
    np.testing.assert_allclose(torch.exp(-2.0 * other(t)).numpy(), np.sqrt(table), rtol=1e-12)
    # in float32 too, to float32 precision
    np.testing.assert_allclose(torch.exp(-clock(t.float())).double().numpy(), table, rtol=2e-6)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_ddpm_clock_matches_diffusers_table(schedule):
    diffusers = pytest.importorskip("diffusers")
    ref = diffusers.DDPMScheduler(beta_schedule=schedule).alphas_cumprod.double().numpy()
    # diffusers keeps its betas and products in float32: agreement to its rounding (the
    # last cosine betas are 0.999, where 1 − β loses 5e-5 of its relative precision)
    np.testing.assert_allclose(bd.ddpm_schedule(schedule).alphas_cumprod.numpy(), ref,
                               rtol=5e-5)


STEPS = (0, 9, 249, 500, 999)


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_time_changed_ou_forward_is_ddpm_forward(schedule):
    """x_t ~ N(sqrt(ᾱ_n) x0, 1 − ᾱ_n) at t = (n + 1)/N, against the oracle's ᾱ (float32 data)."""
    P = bd.TimeChanged(VP, bd.ddpm_schedule(schedule))
    table = oracle_alphas_cumprod(schedule)
    n = 20_000
    x0 = torch.linspace(-2, 2, n)
    for step in STEPS:
        x = bd.sample_forward(P, (step + 1) / N_TRAIN, x0, generator=gen(step))
        assert x.dtype == torch.float32
        z = (x.double() - math.sqrt(table[step]) * x0.double()) / math.sqrt(1 - table[step])
        assert_ks(z, stats.norm.cdf, what=f"{schedule} step {step}")


@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_time_changed_ou_forward_has_the_law_of_diffusers_add_noise(schedule):
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.DDPMScheduler(beta_schedule=schedule)
    clock = bd.ddpm_schedule(schedule)
    P = bd.TimeChanged(VP, clock)
    n = 20_000
    x0 = torch.full((n,), 0.7)
    for step in STEPS[1:]:
        g = gen(100 + step)
        theirs = scheduler.add_noise(x0, torch.randn(n, generator=g), torch.full((n,), step))
        ours = bd.sample_forward(P, clock.time(torch.full((n,), step)), x0, generator=g)
        assert_ks_2samp(ours, theirs, what=f"{schedule} step {step}")


# ---------------------------------------------------------------- MDLM

def test_log_linear_masking_masks_a_fraction_proportional_to_t():
    k, eps, rate, n = 7, 1e-3, 2.0, 40_000
    P = bd.TimeChanged(bd.AbsorbingDiscrete(rate, k), bd.LogLinearMasking(rate, eps))
    x0 = torch.randint(0, k, (n,), generator=gen(1))
    for t in (0.05, 0.5, 1.0):
        x = bd.sample_forward(P, t, x0, generator=gen(int(100 * t)))
        masked = x == k
        assert torch.equal(x[~masked], x0[~masked])
        assert_binomial(masked.sum(), n, (1 - eps) * t, what=f"masked at t = {t}")
    np.testing.assert_allclose(float(P.clock(torch.tensor(1.0, dtype=torch.float64))),
                               -math.log(eps) / rate, rtol=1e-12)


# ---------------------------------------------------------------- identities of any time change

def custom_clock(t):
    return torch.expm1(2 * t)          # τ(t) = e^{2t} − 1: increasing, τ(0) = 0


CUSTOM = bd.TimeChanged(ScaledBrownian(1.5), custom_clock)
COSINE = bd.TimeChanged(VP, bd.ddpm_schedule("squaredcos_cap_v2"))


def custom_forward_z(x, x0, t):
    return (x - x0) / (1.5 * math.sqrt(math.expm1(2 * t)))


def cosine_forward_z(x, x0, t):
    abar = oracle_alpha_bar_at(t, oracle_alphas_cumprod("squaredcos_cap_v2"))
    return (x - math.sqrt(abar) * x0) / math.sqrt(1 - abar)


@pytest.mark.parametrize("process,z_of", [(CUSTOM, custom_forward_z), (COSINE, cosine_forward_z)],
                         ids=["custom", "cosine-OU"])
def test_bridge_consistency_and_semigroup_of_continuous_time_changes(process, z_of):
    n, s, t = 20_000, 0.3, 0.8
    x0 = torch.linspace(-1, 1, n, dtype=torch.float64)
    x_t = bd.sample_forward(process, t, x0, generator=gen(2))
    x_s = bd.endpoint_conditioned_sample(process, s, t, x0, x_t, generator=gen(3))
    assert_ks(z_of(x_s, x0, s), stats.norm.cdf, what="bridge consistency")
    # semigroup through the renoising hook: forward(s) then the transition s -> t is forward(t)
    x_s = bd.sample_forward(process, s, x0, generator=gen(4))
    ss, tt = (torch.tensor(u, dtype=torch.float64) for u in (s, t))
    x_t = process.forward_transition(ss, tt, x_s, gen(5))
    assert_ks(z_of(x_t, x0, t), stats.norm.cdf, what="semigroup")


def test_the_renoising_hook_matters_a_homogeneous_transition_fails():
    """Planted bug: renoising a time change by its base's forward for t − s (the default of a
    time-homogeneous process) gives the wrong law, and the test above would catch it."""
    n, s, t = 20_000, 0.3, 0.8
    x0 = torch.zeros(n, dtype=torch.float64)
    x_s = bd.sample_forward(CUSTOM, s, x0, generator=gen(4))
    wrong = bd.sample_forward(CUSTOM, t - s, x_s, generator=gen(5))
    with pytest.raises(AssertionError):
        assert_ks(custom_forward_z(wrong, x0, t), stats.norm.cdf)


def test_bridge_consistency_and_semigroup_of_the_masking_clock():
    k, n, s, t = 5, 40_000, 0.35, 0.9
    P = bd.TimeChanged(bd.AbsorbingDiscrete(1.0, k), bd.LogLinearMasking(1.0, 1e-3))
    x0 = torch.randint(0, k, (n,), generator=gen(6))
    x_t = bd.sample_forward(P, t, x0, generator=gen(7))
    x_s = bd.endpoint_conditioned_sample(P, s, t, x0, x_t, generator=gen(8))
    assert torch.equal(x_s[x_s != k], x0[x_s != k]) and bool((x_s[x_t != k] != k).all())
    assert_binomial((x_s == k).sum(), n, (1 - 1e-3) * s, what="bridge consistency")
    x_s = bd.sample_forward(P, s, x0, generator=gen(9))
    x_t = P.forward_transition(torch.tensor(s), torch.tensor(t), x_s, gen(10))
    assert_binomial((x_t == k).sum(), n, (1 - 1e-3) * t, what="semigroup")


def test_soft_x0_bridge_of_a_time_changed_discrete_process():
    """Soft x0 reaches the base's bridge at the changed times: the same law as drawing the
    hard x0 first (AbsorbingDiscrete's soft bridge is exactly that mixture)."""
    k, n = 3, 30_000
    P = bd.TimeChanged(bd.UniformDiscrete(1.0, k), custom_clock)
    probs = torch.tensor([0.6, 0.3, 0.1]).expand(n, k)
    x_t = torch.zeros(n, dtype=torch.long)
    soft = bd.endpoint_conditioned_sample(P, 0.2, 0.5, probs, x_t, generator=gen(11))
    # exact: p(x_s = j) ∝ Σ_i p_i P(τs)[i, j] P(τt − τs)[j, 0] / P(τt)[i, 0]
    ts, tt = math.expm1(0.4), math.expm1(1.0)
    Pm = lambda u: math.exp(-u) * np.eye(k) + (1 - math.exp(-u)) / k
    w = probs[0].numpy() / Pm(tt)[:, 0]
    exact = (w @ Pm(ts)) * Pm(tt - ts)[:, 0]
    assert_categorical(soft, exact / exact.sum(), what="soft bridge")


def test_delegated_hooks_and_the_scaler_follow_the_clock():
    clock = bd.ddpm_schedule("linear")
    P = bd.TimeChanged(VP, clock)
    t = torch.tensor([0.1, 0.5, 1.0])
    torch.testing.assert_close(P.scaler(t), VP.scaler(clock(t)))
    x0 = torch.randn(3, 4, generator=gen(12))
    loss = bd.standard_loss(P, t, x0 + 0.1, x0)
    torch.testing.assert_close(loss, bd.standard_loss(VP, clock(t), x0 + 0.1, x0))
    R = bd.TimeChanged(bd.RotationDiffusion(), custom_clock)
    assert R.event_ndim == 1
    q = bd.sample_equilibrium(R, (5, 4), generator=gen(13))
    assert q.shape == (5, 4) and bd.sample_forward(R, 0.2, q, generator=gen(14)).shape == (5, 4)
    D = bd.TimeChanged(bd.AbsorbingDiscrete(1.0, 4), bd.LogLinearMasking())
    assert D.k == 4 and torch.equal(bd.sample_equilibrium(D, (3,)), torch.full((3,), 4))
    with pytest.raises(AttributeError, match="'k'"):
        P.k
    with pytest.raises(TypeError, match="integer tensor"):
        bd.sample_forward(D, 0.5, torch.zeros(3))
    with pytest.raises(ValueError, match="equilibrium"):
        bd.sample_equilibrium(CUSTOM, (3,))
    assert "TimeChanged" in repr(P) and "AlphaBarSchedule(N=1000" in repr(P)


def test_time_changes_keep_float32_and_float64():
    for dtype in (torch.float32, torch.float64):
        x0 = torch.zeros(4, dtype=dtype)
        x_t = bd.sample_forward(COSINE, torch.tensor([0.1, 0.2, 0.5, 1.0]), x0, generator=gen(15))
        x_s = bd.endpoint_conditioned_sample(COSINE, 0.05, 0.1, x0, x_t, generator=gen(16))
        assert x_t.dtype == dtype and x_s.dtype == dtype and bool(torch.isfinite(x_s).all())


@pytest.mark.parametrize("call,err,match", [
    (lambda: bd.TimeChanged(VP, 2.0), TypeError, "tau must be callable"),
    (lambda: bd.TimeChanged("OU", custom_clock), TypeError, "process must be"),
    (lambda: bd.TimeChanged(VP, lambda t: t + 1), ValueError, "clock starts at 0"),
    (lambda: bd.sample_forward(bd.TimeChanged(bd.AbsorbingDiscrete(1.0, 3), bd.LogLinearMasking()),
                               1.5, torch.zeros(3, dtype=torch.long)), ValueError, "domain"),
    (lambda: bd.sample_forward(bd.TimeChanged(VP, lambda t: -t), 0.5, torch.zeros(3)), ValueError,
     "positive"),
    (lambda: bd.endpoint_conditioned_sample(bd.TimeChanged(VP, lambda t: torch.sin(3 * t)),
                                            0.5, 1.0, torch.zeros(3), torch.zeros(3)),
     ValueError, "strictly increasing"),
    (lambda: bd.sample_forward(bd.TimeChanged(VP, lambda t: t if t.ndim == 0 else t[:1]),
                               torch.ones(3), torch.zeros(3)), TypeError, "tau must return"),
    (lambda: bd.ddpm_schedule("cosine"), ValueError, "beta_schedule"),
    (lambda: bd.ddpm_schedule("linear", num_train_timesteps=0), ValueError, "num_train"),
    (lambda: bd.ddpm_schedule("linear", beta_end=1.5), ValueError, "betas"),
    (lambda: bd.AlphaBarSchedule([0.9, 0.95]), ValueError, "decreasing"),
    (lambda: bd.AlphaBarSchedule([[0.9]]), ValueError, "1-D"),
    (lambda: bd.AlphaBarSchedule([0.9, 0.5], reversion=-1.0), ValueError, "reversion"),
    (lambda: bd.LogLinearMasking(eps=1.0), ValueError, "eps"),
    (lambda: bd.TimeChanged(VP, lambda t: math.expm1(t)), TypeError, "tau must return a tensor"),
    (lambda: bd.TimeChanged(bd.OrnsteinUhlenbeck(0.0, 1.0, 1.0), bd.ddpm_schedule()), ValueError,
     "reversion=0.5.*reversion=1.0"),
    (lambda: bd.TimeChanged(bd.AbsorbingDiscrete(2.0, 5), bd.LogLinearMasking()), ValueError,
     "rate=1.0.*rate=2.0"),
    (lambda: bd.ddpm_schedule(num_train_timesteps=np.int64(0)), ValueError, "num_train"),
    (lambda: bd.ddpm_schedule(num_train_timesteps=10.0), TypeError, "num_train"),
    (lambda: bd.ddpm_schedule(beta_start="a"), TypeError, "beta_start"),
    (lambda: bd.AlphaBarSchedule("abc"), TypeError, "alphas_cumprod"),
    (lambda: bd.ddpm_schedule().time(1000), ValueError, "step must lie in"),
    (lambda: bd.ddpm_schedule().time(-2), ValueError, "step must lie in"),
    (lambda: bd.ddpm_schedule().time(0.5), TypeError, "step must be an integer"),
])
def test_bad_clocks_raise_naming_the_argument(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_clock_edges_numpy_counts_and_nan_times():
    clock = bd.ddpm_schedule(num_train_timesteps=np.int64(10))
    assert clock.num_steps == 10
    assert float(clock.time(-1)) == 0.0 and float(clock(clock.time(-1))) == 0.0  # DDIM's end
    assert bool(torch.isnan(clock(torch.tensor(float("nan")))))   # NaN in, NaN out (refused
    with pytest.raises(ValueError, match="finite"):                 # by the process's checks)
        bd.sample_forward(bd.TimeChanged(VP, clock), torch.tensor(float("nan")), torch.zeros(3))
    matched = bd.TimeChanged(bd.AbsorbingDiscrete(2.0, 5), bd.LogLinearMasking(rate=2.0))
    assert matched.clock(torch.tensor(0.5)) > 0


@pytest.mark.parametrize("base", [VP, bd.UniformDiscrete(2.0, 3)], ids=["OU", "uniform"])
def test_the_elbo_of_a_time_change_is_the_base_elbo_on_the_changed_grid(base):
    """bd.elbo of TimeChanged(P, τ) on grid t equals bd.elbo of P on grid τ(t), with the guess
    seeing its own clock: the likelihood hooks map every time through τ."""
    tau = lambda t: 3.0 * t + t ** 2
    P = bd.TimeChanged(base, tau)
    grid = torch.linspace(0.05, 1.0, 6, dtype=torch.float64)
    x0 = (torch.randn(200, 2, generator=gen(60), dtype=torch.float64) if base is VP
          else torch.randint(0, 3, (200, 2), generator=gen(60)))

    def guess(x, t):
        if x.is_floating_point():
            return 0.5 * x * torch.exp(-0.5 * t)
        return torch.softmax(torch.stack([x == j for j in range(3)], -1).double() * t, -1)

    changed = bd.elbo(lambda x, t: guess(x, tau(t)), P, x0, grid, generator=gen(61))
    plain = bd.elbo(guess, base, x0, tau(grid), generator=gen(61))
    torch.testing.assert_close(changed, plain, rtol=1e-6, atol=1e-6)  # discrete times are float32
