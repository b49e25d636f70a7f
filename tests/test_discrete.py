"""Discrete processes: exact laws against scipy.linalg.expm of an independently built generator."""

import functools

import numpy as np
import pytest
import torch
from scipy import stats as sps
from scipy.linalg import expm, null_space
from stats import ALPHA, assert_categorical, assert_ks

import bridgediff as bd

K = 5
PI_WEIGHTS = [2.0, 0.4, 1.0, 0.6, 0.0]          # unnormalised; state 4 has no inflow
P0 = np.array([0.05, 0.45, 0.1, 0.3, 0.1])       # a non-uniform data law for backward chains
TIMES = [0.01, 0.5, 3.0, 30.0]                    # forward: small to large
BRIDGE_TIMES = [(0.005, 0.01), (0.3, 1.0), (1.5, 2.0), (2.0, 12.0)]
# A non-reversible cycle with shortcuts: complex eigenvalues, so no real eigendecomposition.
Q_CYCLE = np.array([[-2.0, 2.0, 0.0, 0.0, 0.0],
                    [0.0, -1.5, 1.0, 0.0, 0.5],
                    [0.0, 0.0, -3.0, 3.0, 0.0],
                    [0.2, 0.0, 0.0, -1.2, 1.0],
                    [4.0, 0.0, 0.0, 0.0, -4.0]])


def transition(Q, t):
    """P(t) = expm(tQ) by scipy, memoised: the tests ask for the same few times again."""
    return _expm(Q.tobytes(), Q.shape[0], float(t))


@functools.lru_cache(maxsize=None)
def _expm(q_bytes, n, t):
    P = expm(t * np.frombuffer(q_bytes).reshape(n, n))
    P.flags.writeable = False
    return P


def uniform_generator(rate, k):
    return rate * (np.ones((k, k)) / k - np.eye(k))


def independent_generator(rate, weights):
    pi = np.asarray(weights, float) / np.sum(weights)
    return rate * (np.outer(np.ones(len(pi)), pi) - np.eye(len(pi)))


def absorbing_generator(rate, k):
    Q = np.zeros((k + 1, k + 1))
    Q[:k, :k] = -rate * np.eye(k)
    Q[:k, k] = rate
    return Q


Q_UNIFORM = uniform_generator(0.7, K)
Q_INDEPENDENT = independent_generator(1.3, PI_WEIGHTS)

# name -> (process, its generator built from the parameters' meaning, not from the code)
CASES = {
    "uniform": (bd.UniformDiscrete(0.7, K), Q_UNIFORM),
    "independent": (bd.IndependentDiscrete(1.3, PI_WEIGHTS), Q_INDEPENDENT),
    "general": (bd.GeneralDiscrete(Q_CYCLE), Q_CYCLE),
    "absorbing": (bd.AbsorbingDiscrete(0.8, K), absorbing_generator(0.8, K)),
    # equivalences: each must have the law of the simpler process's generator
    "general=uniform": (bd.GeneralDiscrete(Q_UNIFORM), Q_UNIFORM),
    "general=independent": (bd.GeneralDiscrete(torch.tensor(Q_INDEPENDENT)), Q_INDEPENDENT),
    "independent=uniform": (bd.IndependentDiscrete(0.7, np.ones(K)), Q_UNIFORM),
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tensors here are small: on a busy machine, worker threads cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=[torch.float32, torch.float64], ids=["f32", "f64"])
def default_dtype(request):
    """Hard states carry no float dtype: their times and draws use the default dtype."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(request.param)
    yield request.param
    torch.set_default_dtype(old)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def assert_cells(samples, probs, what=""):
    """One chi-square test over independent cells: ``samples[c]`` (ints) ~ ``probs[c]`` (exact).

    States of probability 0 must never occur; bins expecting < 5 are pooled.
    """
    stat, dof = 0.0, 0
    for c, (draws, p) in enumerate(zip(samples, probs)):
        p = np.where(p > 1e-13, p, 0.0)
        counts = np.bincount(np.asarray(draws).ravel(), minlength=len(p)).astype(float)
        assert len(counts) == len(p), f"{what} cell {c}: state out of range"
        assert counts[p == 0].sum() == 0, f"{what} cell {c}: draws in states of probability 0"
        expected = p / p.sum() * counts.sum()
        big = expected >= 5
        obs, exp = counts[big], expected[big]
        if (~big).any():
            if expected[~big].sum() >= 5:
                obs, exp = np.append(obs, counts[~big].sum()), np.append(exp, expected[~big].sum())
            else:
                obs[-1] += counts[~big].sum()
                exp[-1] += expected[~big].sum()
        stat += ((obs - exp) ** 2 / exp).sum()
        dof += len(obs) - 1
    pvalue = sps.chi2.sf(stat, dof) if dof else 1.0
    assert pvalue > ALPHA, f"{what} chi2={stat:.4g} dof={dof} p={pvalue:.3g}"


def cell_states(values, n_draws):
    """Each value repeated ``n_draws`` times: one cell per value, as int64 (len(values) * n)."""
    return torch.as_tensor(np.repeat(values, n_draws), dtype=torch.int64)


def hard_bridge_laws(Q, s, t, pairs):
    """p(x_s = j | x0 = i, x_t = l) ∝ P(s)[i, j] P(t-s)[j, l], for each pair (i, l)."""
    P_s, P_d = transition(Q, s), transition(Q, t - s)
    return [P_s[i] * P_d[:, l] for i, l in pairs]


def soft_bridge_laws(Q, s, t, p_hat):
    """p(x_s | x_t = l) ∝ sum_i p_i P(s)[i, :] P(t-s)[:, l] / P(t)[i, l] with x0 weights
    p = p_hat[l], for each state l."""
    k = p_hat.shape[1]
    P_s, P_d, P_t = transition(Q, s)[:k], transition(Q, t - s), transition(Q, t)[:k]
    laws = []
    for l, p in enumerate(p_hat):
        w = np.divide(p, P_t[:, l], out=np.zeros(k), where=P_t[:, l] > 0)
        laws.append((w @ P_s) * P_d[:, l])
    return laws


def exact_posterior(Q, t, p0):
    """p(x0 = i | x_t = l) ∝ p0_i P(t)[i, l], as an (n_states, k) table indexed by l."""
    joint = p0[:, None] * transition(Q, t)[: len(p0)]
    return (joint / joint.sum(0)).T


# ---------------------------------------------------------------- forward laws

@pytest.mark.parametrize("batched_t", [False, True], ids=["scalar-t", "batch-t"])
@pytest.mark.parametrize("name", CASES)
def test_forward_law(name, batched_t, default_dtype):
    process, Q = CASES[name]
    n, draws = Q.shape[0], 2000
    x0 = cell_states(np.arange(n), draws).expand(len(TIMES), -1)
    if batched_t:
        x_t = bd.sample_forward(process, torch.tensor(TIMES), x0, generator=gen())
    else:
        x_t = torch.stack([bd.sample_forward(process, t, x0[0], generator=gen(i))
                           for i, t in enumerate(TIMES)])
    assert x_t.dtype == torch.int64
    assert_cells(x_t.reshape(len(TIMES) * n, draws),
                 [row for t in TIMES for row in transition(Q, t)], f"{name} forward")


@pytest.mark.parametrize("name", CASES)
def test_semigroup_and_bridge_consistency(name):
    """forward(t - s) after forward(s) is forward(t); bridge(s, t, x0, forward(t)) is forward(s)."""
    process, Q = CASES[name]
    n, draws, s, t = Q.shape[0], 3000, 0.4, 1.1
    x0 = cell_states(np.arange(n), draws)
    x_s = bd.sample_forward(process, s, x0, generator=gen(1))
    x_t = bd.sample_forward(process, t - s, x_s, generator=gen(2))
    assert_cells(x_t.reshape(n, draws), transition(Q, t), f"{name} semigroup")
    x_s = bd.endpoint_conditioned_sample(process, s, t, x0, x_t, generator=gen(3))
    assert_cells(x_s.reshape(n, draws), transition(Q, s), f"{name} bridge consistency")


# ---------------------------------------------------------------- bridges

def possible_pairs(Q):
    reach = expm(Q) > 1e-12   # the pattern of P(t) > 0 is the same for every t > 0
    return [(i, l) for i in range(Q.shape[0]) for l in range(Q.shape[0]) if reach[i, l]]


@pytest.mark.parametrize("batched_t", [False, True], ids=["scalar-t", "batch-t"])
@pytest.mark.parametrize("name", CASES)
def test_hard_bridge_law(name, batched_t, default_dtype):
    """p(x_s = j | x0 = i, x_t = l) ∝ P(s)[i, j] P(t-s)[j, l], for all pairs (i == l and not)."""
    process, Q = CASES[name]
    pairs, draws = possible_pairs(Q), 1000
    x0 = cell_states([i for i, _ in pairs], draws).expand(len(BRIDGE_TIMES), -1)
    x_t = cell_states([l for _, l in pairs], draws).expand(len(BRIDGE_TIMES), -1)
    if batched_t:
        s, t = (torch.tensor(u) for u in zip(*BRIDGE_TIMES))
        x_s = bd.endpoint_conditioned_sample(process, s, t, x0, x_t, generator=gen())
    else:
        x_s = torch.stack([bd.endpoint_conditioned_sample(process, s, t, x0[0], x_t[0],
                                                          generator=gen(b))
                           for b, (s, t) in enumerate(BRIDGE_TIMES)])
    assert x_s.dtype == torch.int64
    laws = [law for s, t in BRIDGE_TIMES for law in hard_bridge_laws(Q, s, t, pairs)]
    assert_cells(x_s.reshape(-1, draws), laws, f"{name} bridge")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", CASES)
def test_soft_bridge_law(name, dtype):
    """Probabilities over x0 are marginalised exactly, with the posterior correction."""
    process, Q = CASES[name]
    n, draws = Q.shape[0], 1500
    rng = np.random.default_rng(7)
    p_hat = rng.dirichlet(np.full(K, 0.7), size=n)          # one guess per x_t = l
    x_t = cell_states(np.arange(n), draws).expand(len(BRIDGE_TIMES), -1)
    probs = torch.as_tensor(p_hat, dtype=dtype)[x_t]
    s, t = (torch.tensor(u, dtype=dtype) for u in zip(*BRIDGE_TIMES))
    x_s = bd.endpoint_conditioned_sample(process, s, t, probs, x_t, generator=gen())
    laws = [law for s, t in BRIDGE_TIMES for law in soft_bridge_laws(Q, s, t, p_hat)]
    assert_cells(x_s.reshape(-1, draws), laws, f"{name} soft bridge")


def test_equivalent_processes_have_one_law():
    """Uniform jumps three ways: UniformDiscrete, IndependentDiscrete(ones), GeneralDiscrete(Q)."""
    processes = [CASES[name][0] for name in ("uniform", "independent=uniform", "general=uniform")]
    x0 = cell_states([0, 1, 1, 3], 3000)
    x_t = cell_states([0, 1, 2, 2], 3000)
    counts = []
    for i, process in enumerate(processes):
        x_s = bd.endpoint_conditioned_sample(process, 0.3, 0.9, x0, x_t, generator=gen(i))
        counts.append(np.stack([np.bincount(c, minlength=K) for c in x_s.reshape(4, -1).numpy()]))
    table = np.stack(counts).reshape(3, -1)
    table = table[:, table.sum(0) > 0]
    assert sps.chi2_contingency(table).pvalue > ALPHA


# ---------------------------------------------------------------- backward chains with soft x0

def backward_chain(name, posterior_guess, n=20000):
    """Run 10 bridge steps from the forward law of P0 at T; return (samples, exact law at t_0)."""
    process, Q = CASES[name]
    timesteps = torch.logspace(-2, np.log10(4.0), 11, dtype=torch.float64)
    x0 = torch.multinomial(torch.as_tensor(P0), n, replacement=True, generator=gen(1))
    x_T = bd.sample_forward(process, timesteps[-1], x0, generator=gen(2))

    def guess(x_t, t):
        return posterior_guess(torch.as_tensor(exact_posterior(Q, float(t), P0))[x_t])

    x = bd.sample_backward(guess, process, timesteps, x_T, generator=gen(3))
    law = np.pad(P0, (0, Q.shape[0] - K)) @ transition(Q, float(timesteps[0]))
    return x, law


@pytest.mark.parametrize("name", CASES)
def test_backward_chain_with_exact_posterior_recovers_data(name):
    x, law = backward_chain(name, lambda probs: probs)
    assert_categorical(x, law, what=f"{name} backward chain")


@pytest.mark.parametrize("name", ["uniform", "independent", "general", "absorbing"])
def test_backward_chain_with_argmax_guess_is_biased(name):
    """The test above has power: hard argmax guesses fail it decisively."""
    x, law = backward_chain(name, lambda probs: probs.argmax(-1))
    counts = np.bincount(x.numpy(), minlength=len(law))
    assert sps.chisquare(counts, law * len(x)).pvalue < 1e-12


# ---------------------------------------------------------------- tuples and masks

def test_tuple_with_continuous_component_diffuses_jointly_with_masks():
    """Brownian motion (data: a point mass at 1.5) and uniform jumps (data: P0), both masked."""
    bm, (ud, Q), rate, n = bd.BrownianMotion(0.5), CASES["uniform"], 0.5, 6000
    c0 = torch.stack([torch.full((n,), 1.5), torch.full((n,), 7.0)], 1)
    d0 = torch.stack([torch.multinomial(torch.as_tensor(P0), n, True, generator=gen(1)),
                      torch.full((n,), 2)], 1)
    mask = torch.tensor([True, False]).expand(n, 2)
    x0 = (bd.masked(c0, mask), bd.masked(d0, mask))
    timesteps = torch.logspace(-2, 0.5, 11)
    x_T = bd.sample_forward((bm, ud), timesteps[-1], x0, generator=gen(2))

    def guess(x, t):
        return (torch.full_like(x[0], 1.5),
                torch.as_tensor(exact_posterior(Q, float(t), P0), dtype=torch.float32)[x[1]])

    c, d = bd.sample_backward(guess, (bm, ud), timesteps, x_T, generator=gen(3))
    assert isinstance(c, bd.Masked) and isinstance(d, bd.Masked)
    assert torch.equal(c.x[:, 1], c0[:, 1]) and torch.equal(d.x[:, 1], d0[:, 1])
    t0 = float(timesteps[0])
    assert_ks(c.x[:, 0], sps.norm(1.5, np.sqrt(rate * t0)).cdf, what="continuous component")
    assert_categorical(d.x[:, 0], P0 @ transition(Q, t0), what="discrete component")


# ---------------------------------------------------------------- scale

@pytest.mark.parametrize("process", [
    bd.UniformDiscrete(1.0, 50_000),
    bd.IndependentDiscrete(1.0, torch.rand(50_000, generator=torch.Generator().manual_seed(0))),
], ids=["uniform", "independent"])
def test_hard_x0_costs_nothing_of_size_k(process):
    """A million float32 elements with k = 50 000: an (elements x k) tensor would need 200 GB."""
    n, (s, t) = 1_000_000, (0.2, 0.5)
    x0 = torch.randint(0, 50_000, (n,), generator=gen(1))
    x_t = bd.sample_forward(process, t, x0, generator=gen(2))
    x_s = bd.endpoint_conditioned_sample(process, s, t, x0, x_t, generator=gen(3))
    assert x_s.shape == x0.shape and x_s.dtype == torch.int64
    uniform = isinstance(process, bd.UniformDiscrete)
    pi = torch.full((50_000,), 1 / 50_000) if uniform else process.pi
    # P(x_t = x0) = e^{-t} + (1 - e^{-t}) pi_{x0}, averaged over the elements
    p_same = float((np.exp(-t) + (1 - np.exp(-t)) * pi.double()[x0]).mean())
    assert sps.binomtest(int((x_t == x0).sum()), n, p_same).pvalue > ALPHA


# ---------------------------------------------------------------- equilibrium

@pytest.mark.parametrize("name", CASES)
def test_equilibrium(name):
    process, Q = CASES[name]
    x = bd.sample_equilibrium(process, (200, 50), generator=gen(), dtype=torch.float32)
    assert x.dtype == torch.int64 and x.shape == (200, 50)
    pi = null_space(Q.T)[:, 0]
    assert_cells(x.reshape(1, -1), [pi / pi.sum()], f"{name} equilibrium")


def test_general_without_unique_equilibrium_raises():
    two_classes = np.kron(np.eye(2), uniform_generator(1.0, 2))
    with pytest.raises(ValueError, match="stationary"):
        bd.sample_equilibrium(bd.GeneralDiscrete(two_classes), (3,))


# ---------------------------------------------------------------- reproducibility, inputs

@pytest.mark.parametrize("name", CASES)
def test_same_seed_same_draws_and_inputs_untouched(name):
    process, _ = CASES[name]
    x0 = torch.randint(0, K, (4, 30), generator=gen(5))
    x_t = bd.sample_forward(process, 1.0, x0, generator=gen(6))
    probs = torch.rand(4, 30, K, generator=gen(7))
    copies = [x0.clone(), x_t.clone(), probs.clone()]
    for _ in range(2):
        runs = [(bd.sample_forward(process, 1.0, x0, generator=gen(seed)),
                 bd.endpoint_conditioned_sample(process, 0.5, 1.0, x0, x_t, generator=gen(seed)),
                 bd.endpoint_conditioned_sample(process, 0.5, 1.0, probs, x_t, generator=gen(seed)),
                 bd.sample_equilibrium(process, (4, 30), generator=gen(seed)))
                for seed in (0, 0)]
        assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert all(torch.equal(a, b) for a, b in zip(copies, [x0, x_t, probs]))


def test_integer_dtype_is_kept():
    x0 = torch.randint(0, K, (50,), generator=gen(), dtype=torch.int32)
    for name in ("uniform", "general", "absorbing"):
        process = CASES[name][0]
        x_t = bd.sample_forward(process, 1.0, x0, generator=gen(1))
        x_s = bd.endpoint_conditioned_sample(process, 0.5, 1.0, x0, x_t, generator=gen(2))
        assert x_t.dtype == x_s.dtype == torch.int32


# ---------------------------------------------------------------- loss hooks

@pytest.mark.parametrize("name", ["uniform", "independent", "general", "absorbing"])
def test_loss_and_scaler(name):
    process, _ = CASES[name]
    x0 = torch.randint(0, K, (3, 7), generator=gen())
    logits = torch.randn(3, 7, K, generator=gen(1), requires_grad=True)
    loss = process.loss(logits, x0)
    assert loss.shape == x0.shape and bool(torch.isfinite(loss).all()) and bool((loss > 0).all())
    loss.sum().backward()
    assert bool(torch.isfinite(logits.grad).all())
    sure = 100.0 * torch.nn.functional.one_hot(x0, K).float()
    assert float(process.loss(sure, x0).max()) < 1e-20
    uniform = process.loss(torch.zeros(3, 7, K), x0)       # log(k) / ((k-1)/k) * 1.44
    torch.testing.assert_close(uniform, torch.full((3, 7), 1.44 * np.log(K) * K / (K - 1)))
    scale = process.scaler(torch.tensor([1e-9, 1.0, 1e3]))
    assert bool((scale > 0).all() & (scale <= 1).all())
    torch.testing.assert_close(scale[1], torch.tensor(np.sqrt(1 - np.exp(-process.rate)),
                                                       dtype=torch.float32))


def test_general_rate_is_mean_exit_rate():
    assert bd.GeneralDiscrete(Q_CYCLE).rate == pytest.approx(-np.diag(Q_CYCLE).mean())


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize("make, error, match", [
    (lambda: bd.UniformDiscrete(0.0, 4), ValueError, "rate"),
    (lambda: bd.UniformDiscrete(-1.0, 4), ValueError, "rate"),
    (lambda: bd.UniformDiscrete(1.0, 1), ValueError, "k"),
    (lambda: bd.UniformDiscrete(1.0, 2.5), TypeError, "k"),
    (lambda: bd.AbsorbingDiscrete(0.0, 4), ValueError, "rate"),
    (lambda: bd.IndependentDiscrete(0.0, [0.5, 0.5]), ValueError, "rate"),
    (lambda: bd.IndependentDiscrete(1.0, [0.5, -0.1, 0.6]), ValueError, "pi"),
    (lambda: bd.IndependentDiscrete(1.0, [0.0, 0.0]), ValueError, "pi"),
    (lambda: bd.IndependentDiscrete(1.0, [[0.5, 0.5]]), ValueError, "pi"),
    (lambda: bd.IndependentDiscrete(1.0, [0.5, float("nan")]), ValueError, "pi"),
    (lambda: bd.GeneralDiscrete(np.zeros((2, 3))), ValueError, "square"),
    (lambda: bd.GeneralDiscrete([[-1.0, 1.0], [1.0, -0.5]]), ValueError, "sum to 0"),
    (lambda: bd.GeneralDiscrete([[1.0, -1.0], [1.0, -1.0]]), ValueError, "non-negative"),
    (lambda: bd.GeneralDiscrete(np.zeros((3, 3))), ValueError, "positive rate"),
    (lambda: bd.GeneralDiscrete("Q"), TypeError, "Q"),
])
def test_bad_parameters(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_pi_is_normalised():
    torch.testing.assert_close(CASES["independent"][0].pi,
                               torch.tensor(PI_WEIGHTS, dtype=torch.float64) / sum(PI_WEIGHTS))


@pytest.mark.parametrize("name", ["uniform", "independent", "general", "absorbing"])
def test_bad_states_and_probabilities(name):
    process, Q = CASES[name]
    n = Q.shape[0]
    good = torch.zeros(4, 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="outside"):
        bd.sample_forward(process, 1.0, torch.full((4, 3), n))
    with pytest.raises(ValueError, match="outside"):
        bd.sample_forward(process, 1.0, torch.full((4, 3), -1))
    with pytest.raises(TypeError, match="integer"):
        bd.sample_forward(process, 1.0, good.float())
    with pytest.raises(ValueError, match="outside"):
        bd.endpoint_conditioned_sample(process, 0.5, 1.0, good, torch.full((4, 3), n))
    with pytest.raises(ValueError, match="outside"):
        bd.endpoint_conditioned_sample(process, 0.5, 1.0, torch.full((4, 3), n), good)
    with pytest.raises(ValueError, match="shape"):
        bd.endpoint_conditioned_sample(process, 0.5, 1.0, torch.rand(4, 3, K + 1), good)
    with pytest.raises(ValueError, match="non-negative"):
        bd.endpoint_conditioned_sample(process, 0.5, 1.0, -torch.rand(4, 3, K), good)
    with pytest.raises(ValueError, match="logits"):
        process.loss(torch.randn(4, 3, K + 1), good)


# ---------------------------------------------------------------- devices

@pytest.mark.cuda
@pytest.mark.parametrize("name", ["uniform", "independent", "general", "absorbing"])
def test_cuda_keeps_device_and_law(name):
    process, Q = CASES[name]
    g = torch.Generator(device="cuda").manual_seed(0)
    n, draws = Q.shape[0], 2000
    x0 = cell_states(np.arange(n), draws).cuda()
    x_t = bd.sample_forward(process, torch.tensor(0.7, device="cuda"), x0, generator=g)
    probs = torch.rand(x0.shape + (K,), generator=g, device="cuda")
    x_s = bd.endpoint_conditioned_sample(process, 0.3, 0.7, x0, x_t, generator=g)
    soft = bd.endpoint_conditioned_sample(process, 0.3, 0.7, probs, x_t, generator=g)
    eq = bd.sample_equilibrium(process, x0, generator=g)
    for x in (x_t, x_s, soft, eq):
        assert x.device.type == "cuda" and x.dtype == torch.int64
    assert_cells(x_t.cpu().reshape(n, draws), transition(Q, 0.7), f"{name} forward on cuda")


def test_alias_table_represents_pi_exactly():
    """Each state's total mass in Walker's table (own share + aliased shares) / k is π."""
    from bridgediff.discrete import _alias_table
    g = torch.Generator().manual_seed(3)
    for pi in (torch.rand(1000, generator=g, dtype=torch.float64) ** 4,
               torch.tensor([0.0, 0.5, 0.0, 0.25, 0.25], dtype=torch.float64),
               torch.ones(7, dtype=torch.float64) / 7):
        pi = pi / pi.sum()
        accept, alias = _alias_table(pi)
        assert bool(((accept >= 0) & (accept <= 1)).all())
        mass = accept.clone().index_add_(0, alias, 1 - accept)
        np.testing.assert_allclose((mass / len(pi)).numpy(), pi.numpy(), rtol=0, atol=1e-12)
