"""Self-conditioning: SelfConditioned inside sample_backward, self_conditioning_input."""

import pytest
import torch

import bridgediff as bd
from stats import assert_binomial

B = 8


class Recorder:
    """A model that records every (x_t, x0_prev, t) and returns a different output per call."""

    def __init__(self, discrete_k=None):
        self.calls, self.outputs = [], []
        self.k = discrete_k

    def __call__(self, x_t, x0_prev, t):
        self.calls.append((x_t, x0_prev, t))
        out = _map(lambda x: self._output(x, t), x_t)
        self.outputs.append(out)
        return out

    def _output(self, x, t):
        if x.is_floating_point():
            return 0.5 * x + len(self.calls)
        # logits (..., k) that depend on the state and the call
        states = torch.arange(self.k, dtype=torch.float64, device=x.device)
        return -(states - x[..., None]) ** 2 + 0.1 * len(self.calls)


def _map(fn, x):
    return tuple(_map(fn, c) for c in x) if isinstance(x, tuple) else fn(x)


def _flat(x):
    return [leaf for c in x for leaf in _flat(c)] if isinstance(x, tuple) else [x]


class Stay(bd.Process):
    """A discrete process in the test (independent of discrete.py): states never move.

    Its bridge keeps a hard x0, or takes the most probable state of a soft x0 (..., k).
    """

    k = 3

    def sample_forward(self, t, x0, generator=None):
        return x0.clone()

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        return x0.argmax(-1) if x0.is_floating_point() else x0.clone()

    def check_endpoints(self, x0, x_t):
        if x0.shape[:x_t.ndim] != x_t.shape:
            raise ValueError("x0 does not fit x_t")


def run_chain(model, process, x_T, n=6, dtype=torch.float64):
    guess = bd.SelfConditioned(model, process)
    tracker = bd.Tracker()
    timesteps = torch.linspace(0.1, 2.0, n, dtype=dtype)
    out = bd.sample_backward(guess, process, timesteps, x_T, tracker=tracker,
                             generator=torch.Generator().manual_seed(0))
    return guess, tracker, out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_feeds_previous_estimate_in_sample_backward(dtype):
    process = bd.OrnsteinUhlenbeck()
    x_T = torch.randn(B, 3, generator=torch.Generator().manual_seed(1), dtype=dtype)
    model = Recorder()
    guess, tracker, _ = run_chain(model, process, x_T, n=6, dtype=dtype)
    assert len(model.calls) == 5
    first_prev = model.calls[0][1]
    assert first_prev.shape == x_T.shape and first_prev.dtype == dtype
    assert (first_prev == 0).all()
    for i in range(1, 5):
        assert torch.equal(model.calls[i][1], model.outputs[i - 1])
    for x0, out in zip(tracker.x0, model.outputs):  # the guess returns the model's output
        assert torch.equal(x0, out)
    guess.reset()
    guess(x_T, torch.tensor(1.0, dtype=dtype))
    assert (model.calls[-1][1] == 0).all()


def test_tuple_with_discrete_component():
    """Discrete logits become probabilities (..., k): fed back and handed to the bridge."""
    process = (bd.OrnsteinUhlenbeck(), (Stay(), bd.BrownianMotion()))
    gen = torch.Generator().manual_seed(2)
    x_T = (torch.randn(B, 2, generator=gen, dtype=torch.float64),
           (torch.randint(0, 3, (B, 4), generator=gen), torch.randn(B, generator=gen,
                                                                   dtype=torch.float64)))
    model = Recorder(discrete_k=3)
    _, tracker, out = run_chain(model, process, x_T, n=4)
    zeros = model.calls[0][1]
    assert [z.shape for z in _flat(zeros)] == [(B, 2), (B, 4, 3), (B,)]
    assert all((z == 0).all() and z.dtype == torch.float64 for z in _flat(zeros))
    for i in range(1, 3):
        prev, logits = _flat(model.calls[i][1]), _flat(model.outputs[i - 1])
        torch.testing.assert_close(prev[1], logits[1].softmax(-1), rtol=0, atol=0)
        assert torch.equal(prev[0], logits[0]) and torch.equal(prev[2], logits[2])
    probs = _flat(tracker.x0[-1])[1]
    torch.testing.assert_close(probs.sum(-1), torch.ones(B, 4, dtype=torch.float64))
    assert torch.equal(_flat(out)[1], probs.argmax(-1))  # the bridge received probabilities


@pytest.mark.parametrize("factory", [lambda: bd.UniformDiscrete(1.0, 4),
                                     lambda: bd.AbsorbingDiscrete(1.0, 4)],
                         ids=["UniformDiscrete", "AbsorbingDiscrete"])
def test_discrete_processes_bridge_from_the_estimate(factory):
    """With the library's discrete processes: a model sure of state 1 generates state 1."""
    process = (bd.OrnsteinUhlenbeck(), factory())
    gen = torch.Generator().manual_seed(10)
    x_T = bd.sample_equilibrium(process, ((B, 2), (B, 50)), generator=gen)
    seen = []

    def model(x_t, x0_prev, t):
        seen.append(x0_prev[1])
        logits = torch.full(x_t[1].shape + (4,), -20.0).index_fill(-1, torch.tensor(1), 20.0)
        return 0.5 * x_t[0], logits

    out = bd.sample_backward(bd.SelfConditioned(model, process), process,
                             torch.tensor([0.01, 0.5, 1.0, 5.0]), x_T, generator=gen)
    assert (seen[0] == 0).all() and seen[0].shape == (B, 50, 4)
    torch.testing.assert_close(seen[1][..., 1], torch.ones(B, 50))
    assert (out[1] == 1).float().mean() > 0.95


def test_masked_chain_gets_plain_tensors():
    process = bd.OrnsteinUhlenbeck()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, 3, generator=gen)
    mask = torch.rand(B, 3, generator=gen) < 0.5
    model = Recorder()
    _, _, out = run_chain(model, process, bd.masked(x, mask), dtype=torch.float32)
    assert all(type(x_t) is torch.Tensor for x_t, _, _ in model.calls)
    assert (model.calls[0][1] == 0).all() and model.calls[0][1].shape == x.shape
    assert torch.equal(out.x[~mask], x[~mask])


def test_discrete_needs_process():
    guess = bd.SelfConditioned(Recorder(discrete_k=3))
    with pytest.raises(ValueError, match="process="):
        guess(torch.zeros(B, dtype=torch.int64), torch.tensor(1.0))
    with pytest.raises(ValueError, match="process="):
        bd.self_conditioning_input(Recorder(3), torch.zeros(B, dtype=torch.int64), 1.0)
    with pytest.raises(TypeError, match="model must be callable"):
        bd.SelfConditioned(None)


# ---------------------------------------------------------------- training input

def _linear_model():
    torch.manual_seed(0)
    net = torch.nn.Linear(2, 1)

    def model(x_t, x0_prev, t):
        return net(torch.stack([x_t, x0_prev], -1)).squeeze(-1) + 1.0
    return model, net


def chosen_rows(x0_prev):
    """Which batch rows got the estimate: every row is either all estimate or all zeros."""
    nonzero = (x0_prev != 0).reshape(x0_prev.shape[0], -1)
    assert (nonzero.all(1) | ~nonzero.any(1)).all()
    return nonzero.all(1)


def test_zeroes_the_chosen_fraction_without_gradient():
    model, net = _linear_model()
    n, p = 4000, 0.3
    x_t = torch.randn(n, 2, generator=torch.Generator().manual_seed(4))
    prev = bd.self_conditioning_input(model, x_t, 0.5, p=p,
                                      generator=torch.Generator().manual_seed(5))
    assert not prev.requires_grad and prev.grad_fn is None
    chosen = chosen_rows(prev)
    assert_binomial(chosen.sum(), n, p, what="chosen rows")
    with torch.no_grad():
        estimate = model(x_t, torch.zeros_like(x_t), 0.5)
    assert torch.equal(prev[chosen], estimate[chosen])
    assert bool(chosen.all()) is False and bool(chosen.any()) is True
    for p, expected in [(0.0, False), (1.0, True)]:
        rows = chosen_rows(bd.self_conditioning_input(model, x_t, 0.5, p=p))
        assert (rows == expected).all()


def test_respects_generator():
    model, _ = _linear_model()
    x_t = torch.randn(64, 2, generator=torch.Generator().manual_seed(6))
    draw = lambda seed: bd.self_conditioning_input(
        model, x_t, 1.0, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(chosen_rows(draw(7)), chosen_rows(draw(8)))


def test_tuple_masked_and_discrete_share_the_selection():
    process = (bd.OrnsteinUhlenbeck(), Stay())
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(B * 8, 3, generator=gen)
    states = torch.randint(0, 3, (B * 8, 5), generator=gen)
    x_t = (bd.masked(x, torch.rand(B * 8, 3, generator=gen) < 0.5), states)
    model = Recorder(discrete_k=3)
    cont, probs = bd.self_conditioning_input(model, x_t, torch.full((B * 8,), 0.7), p=0.5,
                                             generator=gen, process=process)
    (seen, zeros, _), = model.calls
    assert type(seen[0]) is torch.Tensor and torch.equal(seen[0], x)
    assert zeros[1].shape == (B * 8, 5, 3) and (zeros[1] == 0).all()
    chosen = chosen_rows(cont)
    assert torch.equal(chosen, chosen_rows(probs))
    logits = model.outputs[0][1]
    torch.testing.assert_close(probs[chosen], logits[chosen].softmax(-1), rtol=0, atol=0)


def test_bad_p():
    model, _ = _linear_model()
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="p must be a probability"):
            bd.self_conditioning_input(model, torch.zeros(B, 2), 1.0, p=p)
    for p in (True, "half", torch.tensor(0.5)):
        with pytest.raises(TypeError, match="p must be a float"):
            bd.self_conditioning_input(model, torch.zeros(B, 2), 1.0, p=p)


def test_dicts_and_lists_of_components():
    P = {"x": bd.OrnsteinUhlenbeck(), "y": [bd.UniformDiscrete(1.0, 3)]}
    x_t = {"x": torch.zeros(B, 2), "y": [torch.zeros(B, dtype=torch.long)]}

    def model(x, prev, t):
        assert isinstance(prev, dict) and isinstance(prev["y"], list)
        assert prev["y"][0].shape == (B, 3) and prev["x"].shape == (B, 2)
        return {"x": x["x"] + 1, "y": [torch.zeros(B, 3)]}

    est = bd.self_conditioning_input(model, x_t, 1.0, p=1.0, process=P)
    assert torch.equal(est["x"], torch.ones(B, 2))
    torch.testing.assert_close(est["y"][0], torch.full((B, 3), 1 / 3))
    with pytest.raises(TypeError, match="model's output"):
        bd.self_conditioning_input(lambda x, p, t: (x["x"],), x_t, 1.0, process=P)
    with pytest.raises(TypeError, match="model must be callable"):
        bd.self_conditioning_input("model", x_t, 1.0, process=P)
