"""Discrete processes: exact laws against scipy.linalg.expm of an independently built generator."""

import functools

import numpy as np
import pytest
import torch
from scipy import stats as sps
from scipy.linalg import expm, null_space
from stats import ALPHA, assert_binomial, assert_categorical, assert_ks, assert_same_categorical

import bridgediff as bd
from bridgediff._util import device_path as forced_device_path

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
    assert_same_categorical(table, what="three ways to one bridge")


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
    assert_binomial((x_t == x0).sum(), n, p_same, what="x_t == x0")


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


# ---------------------------------------------------------------- GeneralDiscrete: P(t), any t

# Two closed classes {0, 1} and {3, 4}; state 2 leaks to 1 at rate 1 and to 3 at rate 2.
Q_REDUCIBLE = np.array([[-1.0, 1.0, 0.0, 0.0, 0.0],
                        [3.0, -3.0, 0.0, 0.0, 0.0],
                        [0.0, 1.0, -3.0, 2.0, 0.0],
                        [0.0, 0.0, 0.0, -2.0, 2.0],
                        [0.0, 0.0, 0.0, 0.5, -0.5]])
# lim P(t), by hand: pi_A = (3/4, 1/4) (balance 1 * pi_0 = 3 * pi_1), pi_B = (1/5, 4/5)
# (2 * pi_3 = 0.5 * pi_4); from state 2 the chain is absorbed in A w.p. 1/3, in B w.p. 2/3.
LIMIT_REDUCIBLE = np.array([[3 / 4, 1 / 4, 0, 0, 0],
                            [3 / 4, 1 / 4, 0, 0, 0],
                            [1 / 4, 1 / 12, 0, 2 / 15, 8 / 15],
                            [0, 0, 0, 1 / 5, 4 / 5],
                            [0, 0, 0, 1 / 5, 4 / 5]])
LARGE_TIMES = [1e6, 1e10]


def stationary(Q):
    pi = null_space(Q.T)[:, 0]
    return pi / pi.sum()


def mp_expm(Q, t):
    """exp(tQ) in 50-digit arithmetic: an oracle for every entry, tiny ones included."""
    mpmath = pytest.importorskip("mpmath")
    with mpmath.workdps(50):
        return np.array(mpmath.expm(mpmath.matrix((t * Q).tolist())).tolist(), dtype=float)


@pytest.mark.parametrize("t", [1e-3, 0.5, 30.0])
@pytest.mark.parametrize("name, Q", [("cycle", Q_CYCLE), ("reducible", Q_REDUCIBLE)])
def test_general_transition_holds_every_entry_to_float64_precision(name, Q, t):
    """Entrywise relative error below 1e-12 against 50-digit arithmetic (scipy's expm, like a
    float64 matrix_exp, loses the small entries: 1e-10 relative on the cycle at t = 1e-3)."""
    P = bd.GeneralDiscrete(Q)._transition(torch.tensor(t, dtype=torch.float64))[0].numpy()
    exact = mp_expm(Q, t)
    np.testing.assert_allclose(P, exact, rtol=1e-12, atol=1e-300)
    np.testing.assert_allclose(P, expm(t * Q), rtol=0, atol=1e-13)


def test_general_transition_keeps_tiny_entries_of_a_long_path():
    """A pure-birth chain 0 -> 1 -> ... -> 9 at rate 2: P(t)[0, j] = Poisson(j; 2t) for j < 9,
    down to 1e-27 at t = 1e-3, each to 1e-13 relative."""
    k, lam = 10, 2.0
    Q = np.diag(np.full(k - 1, lam), 1) - np.diag(np.append(np.full(k - 1, lam), 0.0))
    process = bd.GeneralDiscrete(Q)
    for t in (1e-3, 0.5, 3.0):
        row = process._transition(torch.tensor(t, dtype=torch.float64))[0, 0].numpy()
        poisson = sps.poisson.pmf(np.arange(k - 1), lam * t)
        np.testing.assert_allclose(row[:-1], poisson, rtol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_general_transition_is_stochastic_at_every_scale(dtype):
    """Rows sum to 1 and entries are in [0, 1] for t from 1e-12 to 1e30 (in float32 or float64),
    one time per row; large t give the limit law (float32's matrix_exp gave row sums 1.07 at
    t = 1e6 and inf at 1e10). The matrices are float64 whatever the times' dtype."""
    times = torch.logspace(-12, 30, 43, dtype=torch.float64).to(dtype)
    for Q, limit in ((Q_CYCLE, np.tile(stationary(Q_CYCLE), (K, 1))),
                     (Q_REDUCIBLE, LIMIT_REDUCIBLE)):
        P = bd.GeneralDiscrete(Q)._transition(times.reshape(-1, 1))
        assert P.dtype == torch.float64 and P.shape == (43, K, K)
        assert bool((P >= 0).all() & (P <= 1).all())
        torch.testing.assert_close(P.sum(-1), torch.ones(43, K, dtype=torch.float64), rtol=0,
                                   atol=1e-14)
        for i, t in enumerate(times.tolist()):
            if t >= 1e3:
                np.testing.assert_allclose(P[i].numpy(), limit, rtol=0, atol=1e-13)


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_general_bridge_between_distant_states_at_small_t(soft, default_dtype):
    """A pure-birth chain at rate 2, x0 = 0, x_t = 12, s = t/2 = 5e-4: P(s)[0, j] P(t-s)[j, 12]
    ∝ Pois(j; 2s) Pois(12 - j; 2(t - s)), so x_s ~ Binomial(12, s/t). The weights are ~1e-42,
    below float32's range: computed in float32 every draw landed on state k - 1."""
    k, n = 16, 4000
    Q = np.diag(np.full(k - 1, 2.0), 1) - np.diag(np.append(np.full(k - 1, 2.0), 0.0))
    x0, x_t = torch.zeros(n, dtype=torch.int64), torch.full((n,), 12)
    if soft:
        x0 = torch.nn.functional.one_hot(x0, k).to(default_dtype)
    x_s = bd.endpoint_conditioned_sample(bd.GeneralDiscrete(Q), 5e-4, 1e-3, x0, x_t,
                                         generator=gen())
    assert_categorical(x_s, np.pad(sps.binom.pmf(np.arange(13), 12, 0.5), (0, k - 13)),
                       what=f"{'soft' if soft else 'hard'} bridge across 12 jumps")


def test_general_transition_is_the_same_on_the_device_path():
    """The device path runs a fixed number of squarings (no sync) and masks the extra ones."""
    process = bd.GeneralDiscrete(Q_CYCLE)
    times = torch.logspace(-6, 12, 19, dtype=torch.float64).reshape(-1, 1)
    on_host = process._transition(times)
    with forced_device_path():
        assert torch.equal(process._transition(times), on_host)


@pytest.mark.parametrize("name, Q, limit", [
    ("cycle", Q_CYCLE, np.tile(stationary(Q_CYCLE), (K, 1))),
    ("reducible", Q_REDUCIBLE, LIMIT_REDUCIBLE),
])
def test_general_large_times_draw_the_limit_law(name, Q, limit, default_dtype):
    """Forward at t = 1e6 and 1e10 (and a hard bridge with s = 1e6, t = 1e10) from every state:
    the stationary law, or the absorption law of a chain with two closed classes. Before,
    float32 drew state k - 1 for every element at t = 1e10."""
    process, draws = bd.GeneralDiscrete(Q), 1000
    x0 = cell_states(np.arange(K), draws).expand(len(LARGE_TIMES), -1)
    x_t = bd.sample_forward(process, torch.tensor(LARGE_TIMES), x0, generator=gen())
    assert_cells(x_t.reshape(-1, draws), [row for _ in LARGE_TIMES for row in limit],
                 f"{name} forward at large t")
    x_t = bd.sample_forward(process, 1e10, x0[0], generator=gen(1))
    x_s = bd.endpoint_conditioned_sample(process, 1e6, 1e10, x0[0], x_t, generator=gen(2))
    # p(x_s = j | x0 = i, x_t = l) ∝ L[i, j] L[j, l], one cell per observed pair (i, l)
    cells = {}
    for i, l, j in zip(x0[0].tolist(), x_t.tolist(), x_s.tolist()):
        cells.setdefault((i, l), []).append(j)
    assert_cells([cells[key] for key in sorted(cells)],
                 [limit[i] * limit[:, l] for i, l in sorted(cells)], f"{name} bridge at large t")


def test_general_computes_one_series_per_time_not_per_element(monkeypatch):
    """Transition matrices cost one matrix series per time (B with one time per batch row),
    never one per element: the batch of every series is counted."""
    from bridgediff import discrete
    process, batches, series = bd.GeneralDiscrete(Q_CYCLE), [], discrete._series
    monkeypatch.setattr(discrete, "_series",
                        lambda tau, powers: batches.append(len(tau)) or series(tau, powers))
    x0 = torch.randint(0, K, (4, 1000), generator=gen())
    t = torch.tensor([0.1, 1.0, 10.0, 1e6])
    x_t = bd.sample_forward(process, t, x0, generator=gen(1))
    bd.sample_forward(process, 1.0, x0, generator=gen(1))
    bd.endpoint_conditioned_sample(process, t / 2, t, x0, x_t, generator=gen(2))
    bd.endpoint_conditioned_sample(process, t / 2, t, torch.rand(4, 1000, K, generator=gen(3)),
                                   x_t, generator=gen(4))
    assert batches == [4, 1] + [4] * 2 + [4] * 3


# ---------------------------------------------------------------- integer dtypes

NARROW = [torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, torch.uint32]


@pytest.mark.parametrize("dtype", NARROW, ids=str)
@pytest.mark.parametrize("name", ["uniform", "independent", "general", "absorbing"])
def test_any_integer_dtype_gives_the_int64_draws(name, dtype):
    """Indices are computed in int64: the same seed gives the same states as int64 input, in
    the input's dtype (uint8 was used as a boolean mask into pi: a wrong law, or an IndexError)."""
    process, Q = CASES[name]
    x0 = torch.randint(0, K, (6, 40), generator=gen())
    x_t = bd.sample_forward(process, 1.0, x0, generator=gen(1))
    probs = torch.rand(6, 40, K, generator=gen(2))
    reference = [bd.sample_forward(process, 0.7, x0, generator=gen(3)),
                 bd.endpoint_conditioned_sample(process, 0.4, 1.0, x0, x_t, generator=gen(4)),
                 bd.endpoint_conditioned_sample(process, 0.4, 1.0, probs, x_t, generator=gen(5)),
                 bd.sample_equilibrium(process, (6, 40), generator=gen(6))]
    a, b = x0.to(dtype), x_t.to(dtype)
    narrow = [bd.sample_forward(process, 0.7, a, generator=gen(3)),
              bd.endpoint_conditioned_sample(process, 0.4, 1.0, a, b, generator=gen(4)),
              bd.endpoint_conditioned_sample(process, 0.4, 1.0, probs, b, generator=gen(5)),
              bd.sample_equilibrium(process, (6, 40), generator=gen(6), dtype=dtype)]
    for got, want in zip(narrow, reference):
        assert got.dtype == dtype and torch.equal(got.long(), want)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16], ids=str)
@pytest.mark.parametrize("name", CASES)
def test_narrow_dtype_laws(name, dtype):
    """Forward and hard-bridge laws of uint8 and int16 states against expm's."""
    process, Q = CASES[name]
    n, draws, s, t = Q.shape[0], 1500, 0.3, 1.0
    x0 = cell_states(np.arange(n), draws).to(dtype)
    x_t = bd.sample_forward(process, t, x0, generator=gen(1))
    assert x_t.dtype == dtype
    assert_cells(x_t.long().reshape(n, draws), transition(Q, t), f"{name} {dtype} forward")
    pairs = possible_pairs(Q)
    a = cell_states([i for i, _ in pairs], 500).to(dtype)
    b = cell_states([l for _, l in pairs], 500).to(dtype)
    x_s = bd.endpoint_conditioned_sample(process, s, t, a, b, generator=gen(2))
    assert x_s.dtype == dtype
    assert_cells(x_s.long().reshape(-1, 500), hard_bridge_laws(Q, s, t, pairs),
                 f"{name} {dtype} bridge")


@pytest.mark.parametrize("make, dtype", [
    (lambda: bd.AbsorbingDiscrete(1.0, 200), torch.int8),      # mask state 200 > 127
    (lambda: bd.AbsorbingDiscrete(1.0, 255), torch.uint8),     # mask state 255 fits, 256 not
    (lambda: bd.UniformDiscrete(1.0, 300), torch.uint8),
    (lambda: bd.IndependentDiscrete(1.0, torch.ones(129)), torch.int8),
    (lambda: bd.GeneralDiscrete(uniform_generator(1.0, 257)), torch.uint8),
], ids=["absorbing-int8", "absorbing-uint8", "uniform-uint8", "independent-int8", "general-uint8"])
def test_dtype_that_cannot_hold_the_states_is_refused(make, dtype):
    process = make()
    x = torch.zeros(3, dtype=dtype)
    if process._n_states - 1 <= torch.iinfo(dtype).max:  # absorbing-uint8: 255 fits: accepted
        assert bd.sample_forward(process, 1.0, x).dtype == dtype
        return
    with pytest.raises(TypeError, match="cannot hold the states"):
        bd.sample_forward(process, 1.0, x)
    with pytest.raises(TypeError, match="cannot hold the states"):
        bd.endpoint_conditioned_sample(process, 0.5, 1.0, torch.zeros(3, dtype=torch.int64), x)
    with pytest.raises(TypeError, match="cannot hold the states"):
        bd.endpoint_conditioned_sample(process, 0.5, 1.0, x, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype .*cannot hold the states"):
        bd.sample_equilibrium(process, (3,), dtype=dtype)


def test_non_integer_dtypes_are_refused():
    process = CASES["uniform"][0]
    for dtype in (torch.bool, torch.complex64):
        with pytest.raises(TypeError, match="integer"):
            bd.sample_forward(process, 1.0, torch.zeros(3, dtype=dtype))
        with pytest.raises(TypeError, match="dtype"):
            bd.sample_equilibrium(process, (3,), dtype=dtype)
    x = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(TypeError, match="integer"):  # complex "probabilities"
        bd.endpoint_conditioned_sample(process, 0.5, 1.0, torch.ones(3, K, dtype=torch.cfloat), x)
    # a float dtype is ignored: a tuple of processes shares one dtype argument
    assert bd.sample_equilibrium(process, (3,), dtype=torch.float32).dtype == torch.int64


# ---------------------------------------------------------------- empty batches

@pytest.mark.parametrize("shape", [(0,), (0, 5)], ids=str)
@pytest.mark.parametrize("name", ["uniform", "independent", "general", "absorbing"])
def test_empty_batches(name, shape):
    """Shape (0,) and (0, 5), with scalar t and with per-row t of length 0 (GeneralDiscrete
    crashed on the latter: a reshape of 0 elements to (0, -1))."""
    process, _ = CASES[name]
    x = torch.zeros(shape, dtype=torch.int16)
    probs = torch.rand(shape + (K,))
    for s, t in ((0.5, 1.0), (torch.full((0,), 0.5), torch.ones(0))):
        outs = [bd.sample_forward(process, t, x),
                bd.endpoint_conditioned_sample(process, s, t, x, x),
                bd.endpoint_conditioned_sample(process, s, t, probs, x)]
        assert all(o.shape == shape and o.dtype == torch.int16 for o in outs)
    assert bd.sample_equilibrium(process, shape).shape == shape
    assert bd.sample_equilibrium(process, x).dtype == torch.int16


# ---------------------------------------------------------------- check_prediction

@pytest.mark.parametrize("name", ["uniform", "independent", "general", "absorbing"])
def test_check_prediction(name):
    """Logits (..., k) pass; probabilities are refused on the host (the loss would take them as
    logits silently); wrong dtype or shape is named."""
    process, _ = CASES[name]
    x0 = torch.randint(0, K, (4, 3), generator=gen())
    logits = torch.randn(4, 3, K, generator=gen(1))
    probs = logits.softmax(-1)
    process.check_prediction(logits, x0)
    process.check_prediction(probs.log(), x0)
    process.check_prediction(probs * 0.9, x0)     # in [0, 1] but rows sum to 0.9: logits
    with pytest.raises(ValueError, match=r"logits.*probs\.log\(\)"):
        process.check_prediction(probs, x0)
    with pytest.raises(ValueError, match="logits"):
        process.check_prediction(probs * (1 + 5e-6), x0)   # within 1e-5 of summing to 1
    with pytest.raises(ValueError, match="logits of shape"):
        process.check_prediction(torch.randn(4, 3, K + 1), x0)
    with pytest.raises(TypeError, match="float logits"):
        process.check_prediction(torch.zeros(4, 3, K, dtype=torch.int64), x0)
    with pytest.raises(TypeError, match="float logits"):
        process.check_prediction(torch.zeros(4, 3, K, dtype=torch.complex64), x0)
    with pytest.raises(TypeError, match="x0 must be an integer"):
        process.check_prediction(logits, x0.float())
    with pytest.raises(ValueError, match="outside"):
        process.check_prediction(logits, torch.full((4, 3), K))
    # the loss of what passes is the cross-entropy of the softmax of the logits
    loss = process.loss(probs.log(), x0)
    nll = -probs.gather(-1, x0.unsqueeze(-1)).squeeze(-1).log()
    torch.testing.assert_close(loss, nll * 1.44 * K / (K - 1))


def test_absorbing_mask_state_is_no_target():
    """x0 == k (the mask) is a valid state but not a loss target: a named ValueError, where
    the loss raised a raw index error."""
    process = bd.AbsorbingDiscrete(0.8, K)
    x0 = torch.tensor([[0, K, 2]])
    bd.sample_forward(process, 1.0, x0)                      # a state
    with pytest.raises(ValueError, match=r"x0 has states outside \[0, 5\)"):
        process.check_prediction(torch.zeros(1, 3, K), x0)
