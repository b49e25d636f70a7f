"""The free functions: backward sampling, tracking, tuples, masks, custom processes, errors."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import bridgediff as bd
from stats import assert_chi2, assert_ks


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- helpers for exact posteriors

ATOMS = torch.tensor([-2.0, 0.5, 3.0], dtype=torch.float64)
WEIGHTS = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)


def gaussian_transition(process, t):
    """(a, v) with x_t | x0 ~ N(c + a (x0 - c), v) for OU (c = mean) and BM (a = 1, c = 0)."""
    if isinstance(process, bd.OrnsteinUhlenbeck):
        a = math.exp(-process.reversion * t)
        return process.mean, a, process.volatility ** 2 * -math.expm1(-2 * process.reversion * t) \
            / (2 * process.reversion)
    if isinstance(process, bd.BrownianMotion):
        return 0.0, 1.0, process.rate * t
    return 0.0, 1.0, process.scale ** 2 * t          # the test's own ScaledBrownian


def atomic_posterior_sampler(process, atoms=ATOMS, weights=WEIGHTS):
    """A guess that draws x0 from the exact posterior p(x0 = atom | x_t) of an atomic target."""
    g = gen(99)

    def guess(x, t):
        c, a, v = gaussian_transition(process, float(t))
        means = c + a * (atoms - c)
        logp = torch.log(weights) - (x.double()[..., None] - means) ** 2 / (2 * v)
        idx = torch.multinomial(torch.softmax(logp, -1).reshape(-1, len(atoms)), 1,
                                generator=g).reshape(x.shape)
        return atoms[idx].to(x.dtype)
    return guess


def nearest_atom_counts(x, atoms=ATOMS):
    idx = (x.double()[..., None] - atoms).abs().argmin(-1)
    return torch.bincount(idx.reshape(-1), minlength=len(atoms))


def draw_target(n, g, atoms=ATOMS, weights=WEIGHTS):
    return atoms[torch.multinomial(weights, n, replacement=True, generator=g)]


# ---------------------------------------------------------------- backward sampling

@pytest.mark.parametrize("process", [bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5), bd.BrownianMotion(1.0)],
                         ids=["OU", "BM"])
def test_backward_with_posterior_samples_recovers_atoms(process):
    n, T = 20_000, 8.0
    g = gen(1)
    timesteps = bd.time_schedule(torch.exp, 1e-3, T, 21, finv=math.log)   # 20 steps
    x_T = bd.sample_forward(process, T, draw_target(n, g), generator=g)
    x = bd.sample_backward(atomic_posterior_sampler(process), process, timesteps, x_T, generator=g)
    assert x.dtype == torch.float64 and x.shape == (n,)
    assert_chi2(nearest_atom_counts(x), WEIGHTS, what="backward atoms")
    # At timesteps[0] the chain is x0 + N(0, v(t0)) around its atom: tiny spread.
    _, _, v0 = gaussian_transition(process, float(timesteps[0]))
    assert_ks((x.double() - ATOMS[(x.double()[:, None] - ATOMS).abs().argmin(-1)]) / math.sqrt(v0),
              stats.norm.cdf, what="spread at timesteps[0]")


def test_backward_with_posterior_mean_is_biased_for_few_steps():
    """The posterior mean (what L2 training learns) is not exact: the test above has power."""
    P = bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5)
    g = gen(2)
    timesteps = bd.time_schedule(torch.exp, 1e-3, 8.0, 6, finv=math.log)

    def mean_guess(x, t):
        c, a, v = gaussian_transition(P, float(t))
        logp = torch.log(WEIGHTS) - (x.double()[..., None] - a * ATOMS) ** 2 / (2 * v)
        return (torch.softmax(logp, -1) * ATOMS).sum(-1)

    x_T = bd.sample_forward(P, 8.0, draw_target(20_000, g), generator=g)
    x = bd.sample_backward(mean_guess, P, timesteps, x_T, generator=g)
    with pytest.raises(AssertionError):
        assert_chi2(nearest_atom_counts(x), WEIGHTS)


class Drift(bd.Process):
    """Deterministic x_t = x0 + t: makes the backward chain's bookkeeping visible."""

    def sample_forward(self, t, x0, generator=None):
        return x0 + t

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        return x0 + s


def test_tracker_records_every_step_and_result_sits_at_first_time():
    timesteps = torch.tensor([0.1, 0.5, 1.0, 2.0], dtype=torch.float64)
    x0 = torch.tensor([1.0, -3.0], dtype=torch.float64)
    seen = []

    def guess(x, t):
        assert isinstance(t, torch.Tensor) and t.ndim == 0 and t.device == x.device
        seen.append(float(t))
        return x0

    tracker = bd.Tracker()
    out = bd.sample_backward(guess, Drift(), timesteps, x0 + 2.0, tracker=tracker)
    torch.testing.assert_close(out, x0 + 0.1, rtol=0, atol=0)
    assert seen == [2.0, 1.0, 0.5] and len(tracker) == 3
    assert [float(t) for t in tracker.time] == [2.0, 1.0, 0.5]
    torch.testing.assert_close(tracker.x[0], x0 + 2.0)
    torch.testing.assert_close(tracker.x[-1], x0 + 1.0 - 0.5)   # state at t = 0.5
    assert all(torch.equal(e, x0) for e in tracker.x0)


def test_process_method_and_progress_bar(capsys):
    timesteps = [0.1, 0.2, 0.3]
    x = Drift().sample_backward(lambda x, t: x * 0, timesteps, torch.ones(2), progress=True)
    torch.testing.assert_close(x, torch.full((2,), 0.1))
    assert "2/2" in capsys.readouterr().err


# ---------------------------------------------------------------- tuples

def test_nested_tuples_keep_types_and_shapes():
    P = (bd.OrnsteinUhlenbeck(), (bd.BrownianMotion(), Drift()))
    x0 = (torch.zeros(4, 3, dtype=torch.float64), (torch.zeros(4, dtype=torch.float32),
                                                   torch.ones(4, 2, 2, dtype=torch.float64)))
    t = torch.tensor([0.1, 0.2, 0.3, 0.4])
    xt = bd.sample_forward(P, t, x0, generator=gen(3))
    xs = bd.endpoint_conditioned_sample(P, t / 2, t, x0, xt, generator=gen(4))
    timesteps = torch.linspace(0.1, 1.0, 5)
    xb = bd.sample_backward(lambda x, t: x0, P, timesteps, xt, generator=gen(5))
    for out in (xt, xs, xb):
        assert isinstance(out, tuple) and isinstance(out[1], tuple)
        for a, b in zip((out[0], *out[1]), (x0[0], *x0[1])):
            assert a.shape == b.shape and a.dtype == b.dtype
    # per-element t reached each component: Drift moved each batch row by its own t
    torch.testing.assert_close(xt[1][1], x0[1][1] + t.double().reshape(4, 1, 1))
    torch.testing.assert_close(xs[1][1], x0[1][1] + t.double().reshape(4, 1, 1) / 2)
    torch.testing.assert_close(xb[1][1], x0[1][1] + 0.1)


def test_tuple_equilibrium():
    P = (bd.OrnsteinUhlenbeck(), bd.OrnsteinUhlenbeck(mean=5.0))
    x = bd.sample_equilibrium(P, ((2, 3), torch.zeros(4, dtype=torch.float64)), generator=gen(6))
    assert x[0].shape == (2, 3) and x[0].dtype == torch.get_default_dtype()
    assert x[1].shape == (4,) and x[1].dtype == torch.float64
    # one float dtype for a structure leaves integer states in their own dtype
    like = {"p": torch.zeros(4, 2), "c": bd.masked(torch.zeros(4, dtype=torch.uint8),
                                                 torch.tensor([True, False, True, True]))}
    x = bd.sample_equilibrium({"p": P[0], "c": bd.UniformDiscrete(1.0, 3)}, like,
                              dtype=torch.float64, generator=gen(6))
    assert x["p"].dtype == torch.float64 and x["c"].x.dtype == torch.uint8
    assert int(x["c"].x[1]) == 0                               # the held state, kept


# ---------------------------------------------------------------- masks

def test_masks_hold_unmasked_elements_bit_identical():
    P = bd.OrnsteinUhlenbeck()
    x0 = torch.randn(50, 6, generator=gen(7))
    mask = torch.rand(50, 6, generator=gen(8)) < 0.5
    xt = bd.sample_forward(P, 2.0, bd.masked(x0, mask), generator=gen(9))
    assert isinstance(xt, bd.Masked) and torch.equal(xt.mask, mask)
    assert torch.equal(xt.x[~mask], x0[~mask]) and not torch.equal(xt.x[mask], x0[mask])
    xs = bd.endpoint_conditioned_sample(P, 1.0, 2.0, torch.zeros(50, 6), xt, generator=gen(10))
    assert torch.equal(xs.x[~mask], x0[~mask])
    seen_plain = []

    def guess(x, t):
        seen_plain.append(type(x) is torch.Tensor)
        return torch.zeros_like(x)

    xb = bd.sample_backward(guess, P, torch.linspace(0.1, 2.0, 6), xt, generator=gen(11))
    assert isinstance(xb, bd.Masked) and torch.equal(xb.x[~mask], x0[~mask]) and all(seen_plain)
    x_eq = bd.sample_equilibrium(P, bd.masked(x0, mask), generator=gen(12))
    assert torch.equal(x_eq.x[~mask], x0[~mask])


def test_masks_inside_tuples():
    P = (bd.OrnsteinUhlenbeck(), bd.BrownianMotion())
    a, b = torch.randn(10, 3, generator=gen(13)), torch.randn(10, generator=gen(14))
    mask = torch.arange(10) % 2 == 0
    x0 = (bd.masked(a, mask[:, None].expand(10, 3)), b)
    xt = bd.sample_forward(P, 1.0, x0, generator=gen(15))
    assert isinstance(xt[0], bd.Masked) and isinstance(xt[1], torch.Tensor)
    assert torch.equal(xt[0].x[~mask], a[~mask]) and not torch.equal(xt[1], b)
    xb = bd.sample_backward(lambda x, t: (x[0] * 0, x[1] * 0), P, [0.5, 1.0], xt, generator=gen(16))
    assert torch.equal(xb[0].x[~mask], a[~mask])


def test_mask_shape_mismatch():
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="mask"):
        bd.masked(x, torch.ones(3, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        bd.masked(x, torch.ones(4, 3))
    q = torch.tensor([0.0, 0, 0, 1]).expand(4, 4)     # a leading part of x, not of the state
    with pytest.raises(ValueError, match="mask has shape"):
        bd.sample_forward(bd.RotationDiffusion(), 1.0, bd.masked(q, torch.ones(4, 4, dtype=bool)))


def test_mask_of_leading_dimensions_broadcasts_over_the_state():
    """A per-residue mask (B, L) on positions (B, L, 3) acts as its expansion to (B, L, 3)."""
    P = bd.OrnsteinUhlenbeck()
    x0 = torch.randn(5, 7, 3, generator=gen(30))
    residues = torch.rand(5, 7, generator=gen(31)) < 0.5
    full = residues[..., None].expand(5, 7, 3)
    a = bd.sample_forward(P, 1.0, bd.masked(x0, residues), generator=gen(32))
    b = bd.sample_forward(P, 1.0, bd.masked(x0, full), generator=gen(32))
    assert a.mask is residues and torch.equal(a.x, b.x) and torch.equal(a.x[~residues], x0[~residues])
    xs = bd.endpoint_conditioned_sample(P, 0.5, 1.0, x0, a, generator=gen(33))
    assert torch.equal(xs.x[~residues], x0[~residues]) and not torch.equal(xs.x, a.x)
    q = bd.sample_equilibrium(bd.RotationDiffusion(), (5, 7, 4), generator=gen(34))
    held = bd.sample_forward(bd.RotationDiffusion(), 1.0, bd.masked(q, residues[:, 0]), generator=gen(35))
    assert torch.equal(held.x[~residues[:, 0]], q[~residues[:, 0]])
    loss_a = bd.standard_loss(P, 1.0, xs.x, bd.masked(x0, residues))
    loss_b = bd.standard_loss(P, 1.0, xs.x, bd.masked(x0, full))
    torch.testing.assert_close(loss_a, loss_b)


# ---------------------------------------------------------------- custom processes

class ScaledBrownian(bd.Process):
    """A user's process written with only the two protocol methods."""

    def __init__(self, scale):
        self.scale = scale

    def sample_forward(self, t, x0, generator=None):
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return x0 + self.scale * t.sqrt() * noise

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return x0 + s / t * (x_t - x0) + self.scale * (s * (t - s) / t).sqrt() * noise


def test_custom_process_gets_batching_masks_tuples_and_backward_for_free():
    P = ScaledBrownian(1.5)
    n = 20_000
    t = torch.logspace(-2, 1, n, dtype=torch.float64)
    x0 = torch.zeros(n, 2, dtype=torch.float64)
    xt = bd.sample_forward(P, t, x0, generator=gen(17))                      # batching of t
    assert_ks(xt / (1.5 * t.sqrt()[:, None]), stats.norm.cdf, what="custom per-element t")
    mask = torch.tensor([True, False]).expand(n, 2)
    xm = bd.sample_forward((P, bd.OrnsteinUhlenbeck()), t, (bd.masked(x0, mask), x0[:, 0]),
                           generator=gen(18))                                # masks and tuples
    assert torch.equal(xm[0].x[:, 1], x0[:, 1]) and xm[1].shape == (n,)
    g = gen(19)
    timesteps = bd.time_schedule(torch.exp, 1e-3, 10.0, 21, finv=math.log)
    x_T = bd.sample_forward(P, 10.0, draw_target(n, g), generator=g)
    x = bd.sample_backward(atomic_posterior_sampler(P), P, timesteps, x_T, generator=g)
    assert_chi2(nearest_atom_counts(x), WEIGHTS, what="custom backward")


def test_custom_process_without_equilibrium_says_so():
    with pytest.raises(ValueError, match="sample_forward"):
        bd.sample_equilibrium(ScaledBrownian(1.0), (3,))


# ---------------------------------------------------------------- reproducibility, purity

@pytest.mark.parametrize("process", [bd.OrnsteinUhlenbeck(), bd.BrownianMotion()],
                         ids=["OU", "BM"])
def test_same_seed_same_result_and_inputs_untouched(process):
    x0 = torch.randn(100, generator=gen(20))
    xt = torch.randn(100, generator=gen(21))
    x0_copy, xt_copy = x0.clone(), xt.clone()

    def run(seed):
        g = gen(seed)
        return (bd.sample_forward(process, 1.0, x0, generator=g),
                bd.endpoint_conditioned_sample(process, 0.5, 1.0, x0, xt, generator=g),
                bd.sample_backward(lambda x, t: x0, process, [0.1, 0.5, 1.0], xt, generator=g))

    first, again, other = run(5), run(5), run(6)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not any(torch.equal(a, b) for a, b in zip(first, other))
    assert torch.equal(x0, x0_copy) and torch.equal(xt, xt_copy)


def test_equilibrium_reproducible():
    P = bd.OrnsteinUhlenbeck()
    a = bd.sample_equilibrium(P, (5,), generator=gen(22))
    b = bd.sample_equilibrium(P, (5,), generator=gen(22))
    assert torch.equal(a, b)


# ---------------------------------------------------------------- bad input

P_OU = bd.OrnsteinUhlenbeck()
X = torch.zeros(4, 2)


@pytest.mark.parametrize("call,err,match", [
    (lambda: bd.sample_backward(lambda x, t: x, P_OU, [0.1, 0.1, 1.0], X), ValueError, "increasing"),
    (lambda: bd.sample_backward(lambda x, t: x, P_OU, [1.0, 0.5], X), ValueError, "increasing"),
    (lambda: bd.sample_backward(lambda x, t: x, P_OU, torch.tensor([1.0, 1 + 1e-9],
                                                                   dtype=torch.float64), X),
     ValueError, "round to the same time"),
    (lambda: bd.sample_backward(lambda x, t: x, (P_OU, P_OU),
                                torch.tensor([1e-3, 1.0, 1 + 1e-9, 2.0], dtype=torch.float64),
                                (X.double(), X)), ValueError, "round to the same time"),
    (lambda: bd.sample_forward({"pos": P_OU, "vel": P_OU}, {"pos": 0.5, "vel": torch.rand(5)},
                               {"pos": X, "vel": X}), ValueError,
     r"component \['vel'\] \(OrnsteinUhlenbeck\): t has length 5"),
    (lambda: bd.sample_backward(lambda x, t: x, P_OU, [0.0, 1.0], X), ValueError, "positive"),
    (lambda: bd.sample_backward(lambda x, t: x, P_OU, [[0.1, 1.0]], X), ValueError, "1-D"),
    (lambda: bd.endpoint_conditioned_sample(P_OU, 1.0, 1.0, X, X), ValueError, "s must be smaller"),
    (lambda: bd.endpoint_conditioned_sample(P_OU, 2.0, 1.0, X, X), ValueError, "s must be smaller"),
    (lambda: bd.endpoint_conditioned_sample(P_OU, -0.5, 1.0, X, X), ValueError, "s must be pos"),
    (lambda: bd.endpoint_conditioned_sample(P_OU, 0.5, 1.0, X, torch.zeros(4, 3)), ValueError,
     "shape"),
    (lambda: bd.sample_forward(P_OU, torch.ones(3), X), ValueError, "t has length 3"),
    (lambda: bd.sample_forward(P_OU, torch.ones(4, 1), X), ValueError, "t must be a scalar"),
    (lambda: bd.sample_forward(P_OU, -1.0, X), ValueError, "t must be positive"),
    (lambda: bd.sample_forward(P_OU, float("nan"), X), ValueError, "t must be positive"),
    (lambda: bd.sample_forward(P_OU, "1.0", X), TypeError, "t must be"),
    (lambda: bd.sample_forward((P_OU, P_OU), 1.0, (X,)), ValueError, "x0 has 1 components"),
    (lambda: bd.sample_forward((P_OU, P_OU), 1.0, X), TypeError, "x0 must be a tuple"),
    (lambda: bd.sample_forward("OU", 1.0, X), TypeError, "process must be"),
    (lambda: bd.sample_forward(P_OU, 1.0, [0.0, 1.0]), TypeError, "x0 must be a tensor"),
    (lambda: bd.sample_backward(lambda x, t: (x,), (P_OU, P_OU), [0.5, 1.0], (X, X)), ValueError,
     "guess"),
    (lambda: bd.sample_equilibrium(P_OU, "big"), TypeError, "shape_or_like"),
    (lambda: bd.time_schedule(torch.exp, 1.0, 0.5, 10, finv=math.log), ValueError, "increasing"),
    (lambda: bd.time_schedule(torch.exp, 0.1, 1.0, 1, finv=math.log), ValueError, "n must be"),
])
def test_bad_input_raises_naming_the_argument(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_float32_times_that_collapse_are_rejected():
    """Times distinct in float64 but equal in the data's float32 would divide 0 by 0."""
    with pytest.raises(ValueError, match="increasing"):
        bd.sample_backward(lambda x, t: x, P_OU, [1.0, 1.0 + 1e-9], X)


# ---------------------------------------------------------------- schedules

def test_time_schedule_log_spaced():
    ts = bd.time_schedule(torch.exp, 1e-3, 10.0, 5, finv=math.log)
    assert ts.dtype == torch.get_default_dtype() and ts.shape == (5,)
    np.testing.assert_allclose(ts.double().numpy(), np.logspace(-3, 1, 5), rtol=1e-6)
    np.testing.assert_allclose(bd.time_schedule(lambda u: u ** 2, 1.0, 9.0, 3, finv=math.sqrt).numpy(),
                               [1.0, 4.0, 9.0], rtol=1e-6)


# ---------------------------------------------------------------- CUDA

@pytest.mark.cuda
def test_cuda_sampling_stays_on_device_without_sync():
    dev = torch.device("cuda")
    P = (bd.OrnsteinUhlenbeck(), bd.BrownianMotion())
    x0 = (torch.zeros(1000, 3, device=dev), torch.zeros(1000, device=dev, dtype=torch.float64))
    g = torch.Generator(device=dev).manual_seed(0)
    t = torch.linspace(0.1, 1.0, 1000, device=dev)
    xt = bd.sample_forward(P, t, x0, generator=g)
    assert all(x.device.type == "cuda" for x in xt)
    timesteps = torch.linspace(0.1, 1.0, 10)

    def guess(x, t):     # from the first guess on, i.e. inside the loop, any sync raises
        torch.cuda.set_sync_debug_mode("error")
        return tuple(c * 0 for c in x)

    try:
        x = bd.sample_backward(guess, P, timesteps, xt, generator=g)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert x[0].device.type == "cuda" and x[1].dtype == torch.float64


# ---------------------------------------------------------------- the contract (issue 12)

def test_outputs_take_the_dtype_of_x_t_and_x0():
    """Bridges return x_t's dtype and forwards x0's, for built-in and custom processes."""
    x0, xt = torch.zeros(5, dtype=torch.float64), torch.ones(5, dtype=torch.float32)
    for P in (bd.BrownianMotion(), bd.OrnsteinUhlenbeck(), ScaledBrownian(1.0)):
        assert bd.endpoint_conditioned_sample(P, 0.5, 1.0, x0, xt).dtype == torch.float32
        assert bd.endpoint_conditioned_sample(P, 0.5, 1.0, xt, x0).dtype == torch.float64
        assert bd.sample_forward(P, torch.tensor(1.0, dtype=torch.float64), xt).dtype == torch.float32


class WrongShape(ScaledBrownian):
    def sample_forward(self, t, x0, generator=None):
        return super().sample_forward(t, x0, generator)[:, None]


def test_a_custom_process_returning_the_wrong_shape_is_named():
    with pytest.raises(TypeError, match="WrongShape.sample_forward must return .* shape"):
        bd.sample_forward(WrongShape(1.0), 1.0, torch.zeros(3))


def test_process_is_abstract():
    class Half(bd.Process):
        def sample_forward(self, t, x0, generator=None):
            return x0

    with pytest.raises(TypeError, match="abstract"):
        Half()


def test_lists_serve_as_tuples_and_keep_their_kind():
    P = (bd.OrnsteinUhlenbeck(), bd.UniformDiscrete(1.0, 4))
    x0 = [torch.zeros(6, 2), torch.zeros(6, dtype=torch.long)]          # what a DataLoader yields
    xt = bd.sample_forward(P, torch.ones(6), x0, generator=gen(40))
    assert isinstance(xt, list) and xt[0].shape == (6, 2) and xt[1].dtype == torch.long
    xs = bd.endpoint_conditioned_sample(list(P), 0.5, 1.0, tuple(x0), xt, generator=gen(41))
    assert isinstance(xs, list)
    seen = []
    out = bd.sample_backward(lambda x, t: seen.append(type(x)) or x, P, [0.5, 1.0], xt)
    assert isinstance(out, list) and seen == [list]
    loss = bd.standard_loss(P, 1.0, [x0[0], torch.zeros(6, 4)], x0)
    assert loss.shape == () and bool(torch.isfinite(loss))


def test_dicts_of_processes_match_dicts_of_data_nested_freely():
    P = {"pos": bd.OrnsteinUhlenbeck(), "rot": bd.RotationDiffusion(),
         "seq": (bd.UniformDiscrete(1.0, 20), bd.BrownianMotion())}
    q = bd.sample_equilibrium(P["rot"], (4, 3, 4), generator=gen(42))
    x0 = {"seq": (torch.zeros(4, 3, dtype=torch.long), torch.zeros(4)), "pos": torch.zeros(4, 3, 3),
          "rot": bd.masked(q, torch.tensor([True, False, True, True]))}
    xt = bd.sample_forward(P, torch.rand(4, generator=gen(43)) + 0.1, x0, generator=gen(44))
    assert set(xt) == {"pos", "rot", "seq"} and isinstance(xt["seq"], tuple)
    assert torch.equal(xt["rot"].x[1], q[1]) and xt["pos"].shape == (4, 3, 3)
    eq = bd.sample_equilibrium({"pos": P["pos"], "seq": [P["seq"][0], P["pos"]]},
                               {"pos": (2, 3), "seq": ((2,), (2,))}, generator=gen(45))
    assert eq["pos"].shape == (2, 3) and eq["seq"][0].shape == (2,)
    with pytest.raises(ValueError, match="keys"):
        bd.sample_forward(P, 1.0, {"pos": x0["pos"], "rot": q})
    with pytest.raises(TypeError, match="must be a dict"):
        bd.sample_forward(P, 1.0, (x0["pos"], q, x0["seq"]))
    plain = bd.unmasked(xt)
    assert isinstance(plain["rot"], torch.Tensor) and torch.equal(plain["rot"], xt["rot"].x)


def test_per_component_times():
    """t given as a structure matching the processes gives each component its own time."""
    P = (bd.BrownianMotion(), bd.BrownianMotion(4.0))
    n = 20_000
    x = bd.sample_forward(P, (0.5, torch.full((n,), 2.0)), (torch.zeros(n), torch.zeros(n)),
                          generator=gen(46))
    assert_ks(x[0] / math.sqrt(0.5), stats.norm.cdf, what="component 0 at t = 0.5")
    assert_ks(x[1] / math.sqrt(8.0), stats.norm.cdf, what="component 1 at t = 2")
    with pytest.raises(TypeError, match="single"):
        bd.sample_forward(P[0], (0.5, 1.0), torch.zeros(3))
    with pytest.raises(ValueError, match="t has 3 components"):
        bd.sample_forward(P, (0.5, 1.0, 2.0), (torch.zeros(3), torch.zeros(3)))


def test_backward_validates_the_start_and_every_guess():
    P = bd.AbsorbingDiscrete(1.0, 5)
    with pytest.raises(ValueError, match="x_T has states outside"):
        bd.sample_backward(lambda x, t: x, P, [0.5, 1.0], torch.full((3,), 10))
    U = bd.UniformDiscrete(1.0, 5)
    with pytest.raises(ValueError, match="guess.*states outside"):
        bd.sample_backward(lambda x, t: x + 7, U, [0.5, 1.0], torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="guess.*shape"):
        bd.sample_backward(lambda x, t: x[:2], P_OU, [0.5, 1.0], X)
    with pytest.raises(TypeError, match="guess.*tensor"):
        bd.sample_backward(lambda x, t: None, P_OU, [0.5, 1.0], X)
    with pytest.raises(TypeError, match="x_T must be a tensor"):
        bd.sample_backward(lambda x, t: x, (P_OU, P_OU), [0.5, 1.0], ((), X))


def test_backward_builds_no_graph_but_a_guess_may_use_gradients():
    weight = torch.tensor(0.5, requires_grad=True)
    grads = []

    def guess(x, t):
        with torch.enable_grad():                     # e.g. classifier guidance
            y = x.detach().requires_grad_()
            (g,) = torch.autograd.grad((weight * y ** 2).sum(), y)
            grads.append(g)
        return weight * x

    out = bd.sample_backward(guess, P_OU, [0.1, 0.5, 1.0], torch.ones(4, 2), generator=gen(47))
    assert out.grad_fn is None and not out.requires_grad and len(grads) == 2
    assert torch.equal(grads[0], torch.ones(4, 2))


def test_single_element_has_no_batch_to_match_a_time_vector():
    q = torch.tensor([0.0, 0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="t has length 4.*none"):
        bd.sample_forward(bd.RotationDiffusion(), torch.ones(4), q)


@pytest.mark.parametrize("call,err,match", [
    (lambda: bd.endpoint_conditioned_sample(P_OU, 0.5, math.inf, X, X), ValueError, "t must be pos"),
    (lambda: bd.endpoint_conditioned_sample(P_OU, 0.5, float("nan"), X, X), ValueError, "t must be"),
    (lambda: bd.sample_equilibrium((P_OU, P_OU), (3, 4)), TypeError, "one shape .* per component"),
    (lambda: bd.sample_equilibrium(P_OU, (-1,)), ValueError, "non-negative"),
    (lambda: bd.sample_equilibrium(P_OU, (2.5,)), TypeError, "shape_or_like"),
    (lambda: bd.Masked(X, torch.ones(4, 2)), TypeError, "bool"),
    (lambda: bd.Masked(X, torch.ones(3, dtype=bool)), ValueError, "leading part"),
    (lambda: bd.sample_backward("guess", P_OU, [0.5, 1.0], X), TypeError, "guess must be callable"),
    (lambda: bd.sample_backward(lambda x, t: x, P_OU, [0.5, 1.0], X, tracker=[]), TypeError,
     "tracker must be callable"),
    (lambda: bd.sample_backward(lambda x, t: x, P_OU, "abc", X), TypeError, "timesteps"),
    (lambda: bd.sample_backward(lambda x, t: x, P_OU, torch.tensor([0.5, 1j]), X), TypeError,
     "timesteps must be real"),
    (lambda: bd.sample_forward(P_OU, 1 + 1j, X), TypeError, "t must be a real"),
    (lambda: bd.sample_forward(P_OU, torch.tensor(1 + 0j), X), TypeError, "t must be real"),
    (lambda: bd.sample_forward(P_OU, True, X), TypeError, "t must be a real"),
    (lambda: bd.standard_loss(P_OU, 1.0, X, X, scaler=2.0), TypeError, "scaler must be callable"),
    (lambda: bd.standard_loss(P_OU, 1.0, X, X, scaler=lambda p, t: torch.ones(3)), ValueError,
     "scaler returned shape"),
])
def test_contract_errors(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_numpy_numbers_are_times():
    x = bd.sample_forward(P_OU, np.float32(0.5), X, generator=gen(48))
    y = bd.sample_forward(P_OU, 0.5, X, generator=gen(48))
    assert torch.equal(x, y)


def test_half_precision_data_get_float32_times():
    seen = []

    class Record(ScaledBrownian):
        def sample_forward(self, t, x0, generator=None):
            seen.append(t.dtype)
            return super().sample_forward(t, x0, generator)

    out = bd.sample_forward(Record(1.0), 0.3, torch.zeros(4, dtype=torch.bfloat16))
    assert seen == [torch.float32] and out.dtype == torch.bfloat16
    q = bd.sample_forward(bd.RotationDiffusion(), 0.3, torch.tensor([[0.0, 0, 0, 1]]).bfloat16())
    assert q.dtype == torch.bfloat16
