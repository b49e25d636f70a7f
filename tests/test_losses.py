"""standard_loss: values against numpy oracles written from the spec, masks, tuples, scalers,
gradients (finite everywhere, gradcheck in float64), for every process."""

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch
from scipy.special import log_softmax

import bridgediff as bd

B, N = 6, 5  # batch and elements per example


# ---------------------------------------------------------------- oracles (numpy, float64)

def squared_error(x0_hat, x0):
    return (x0_hat - x0) ** 2


def squared_min_angle(x0_hat, x0):
    d = np.abs(x0_hat - x0)
    return np.minimum(d, 2 * np.pi - d) ** 2


def quaternion_surrogate(q_hat, q):
    a = np.abs((q_hat * q).sum(-1))
    return (1 - a) * (a - 13) ** 2 / 18 / 4


def cross_entropy(k):
    def loss(logits, x0):
        ce = -np.take_along_axis(log_softmax(logits, -1), x0[..., None], -1)[..., 0]
        return ce / ((k - 1) / k) * 1.44
    return loss


def sqrt_one_minus_exp(rate, factor=1.0):
    return lambda t: factor * np.sqrt(1 - np.exp(-rate * t))


# ---------------------------------------------------------------- cases

def normal(gen, dtype, shape):
    return torch.randn(shape, generator=gen, dtype=dtype)


def angles(gen, dtype, shape):
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    return ((2 * u - 1) * (np.pi - 1e-6)).to(dtype)


def unit_quaternions(gen, dtype, shape):
    q = torch.randn(shape + (4,), generator=gen, dtype=torch.float64)
    return (q / q.norm(dim=-1, keepdim=True)).to(dtype)


def discrete_data(k):
    def data(gen, dtype, shape):
        x0 = torch.randint(0, k, shape, generator=gen)
        return x0, normal(gen, dtype, shape + (k,))
    return data


def one_hot_logits(x0, k, dtype):
    return 50 * torch.nn.functional.one_hot(x0, k).to(dtype)


@dataclass
class Case:
    name: str
    process: Callable            # () -> process
    data: Callable               # (gen, dtype, shape) -> (x0, a wrong x0_hat)
    truths: Callable             # (x0, dtype) -> list of perfect predictions
    loss: Callable               # numpy per-element loss of (x0_hat, x0)
    scaler: Callable             # numpy t -> scaler


def continuous(sample):
    return lambda gen, dtype, shape: (sample(gen, dtype, shape), sample(gen, dtype, shape))


Q = torch.tensor([[-1.0, 0.6, 0.4], [0.2, -0.5, 0.3], [1.5, 0.5, -2.0]], dtype=torch.float64)

CASES = [
    Case("OrnsteinUhlenbeck", lambda: bd.OrnsteinUhlenbeck(0.3, 1.2, 0.7), continuous(normal),
         lambda x0, dt: [x0], squared_error, sqrt_one_minus_exp(0.7)),
    Case("BrownianMotion", lambda: bd.BrownianMotion(2.5), continuous(normal),
         lambda x0, dt: [x0], squared_error, sqrt_one_minus_exp(2.5)),
    Case("WrappedBrownian", lambda: bd.WrappedBrownian(1.5), continuous(angles),
         lambda x0, dt: [x0], squared_min_angle, sqrt_one_minus_exp(1.5 / 8, 2.0)),
    Case("WrappedInterpolatedBrownian", lambda: bd.WrappedInterpolatedBrownian(0.4),
         continuous(angles), lambda x0, dt: [x0], squared_min_angle,
         sqrt_one_minus_exp(0.4 / 8, 2.0)),
    Case("RotationDiffusion", lambda: bd.RotationDiffusion(0.6), continuous(unit_quaternions),
         lambda q, dt: [q, -q], quaternion_surrogate, sqrt_one_minus_exp(5 * 0.6)),
    Case("UniformDiscrete", lambda: bd.UniformDiscrete(1.3, 4), discrete_data(4),
         lambda x0, dt: [one_hot_logits(x0, 4, dt)], cross_entropy(4), sqrt_one_minus_exp(1.3)),
    Case("IndependentDiscrete",
         lambda: bd.IndependentDiscrete(0.8, torch.tensor([0.5, 0.3, 0.2])), discrete_data(3),
         lambda x0, dt: [one_hot_logits(x0, 3, dt)], cross_entropy(3), sqrt_one_minus_exp(0.8)),
    Case("GeneralDiscrete", lambda: bd.GeneralDiscrete(Q), discrete_data(3),
         lambda x0, dt: [one_hot_logits(x0, 3, dt)], cross_entropy(3),
         sqrt_one_minus_exp(float(-Q.diagonal().mean()))),
    Case("AbsorbingDiscrete", lambda: bd.AbsorbingDiscrete(0.9, 5), discrete_data(5),
         lambda x0, dt: [one_hot_logits(x0, 5, dt)], cross_entropy(5), sqrt_one_minus_exp(0.9)),
]
DTYPES = [torch.float32, torch.float64]


def draw_case(case, dtype, seed=0, shape=(B, N)):
    gen = torch.Generator().manual_seed(seed)
    process = case.process()
    x0, x0_hat = case.data(gen, dtype, shape)
    t = torch.rand(shape[0], generator=gen, dtype=torch.float64).mul(3).add(0.05).to(dtype)
    return process, x0, x0_hat, t


def oracle(case, t, x0_hat, x0, mask=None):
    """The spec's value in float64: mean over masked elements of loss / scaler(t)."""
    per = case.loss(as_numpy(x0_hat), as_numpy(x0))
    per = per / case.scaler(as_numpy(t)).reshape((-1,) + (1,) * (per.ndim - 1))
    return per.mean() if mask is None else per[mask.numpy()].mean()


def as_numpy(x):
    return x.detach().to(torch.float64).numpy() if x.is_floating_point() else x.numpy()


def rtol(dtype):
    return 1e-5 if dtype == torch.float32 else 1e-12


ids = [c.name for c in CASES]


# ---------------------------------------------------------------- per process

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_matches_oracle(case, dtype):
    process, x0, x0_hat, t = draw_case(case, dtype)
    loss = bd.standard_loss(process, t, x0_hat, x0)
    assert loss.ndim == 0 and loss.dtype == dtype
    np.testing.assert_allclose(loss.item(), oracle(case, t, x0_hat, x0), rtol=rtol(dtype))
    # a scalar t is shared by the batch
    loss = bd.standard_loss(process, 0.4, x0_hat, x0)
    np.testing.assert_allclose(loss.item(), oracle(case, torch.full((B,), 0.4, dtype=dtype),
                                                   x0_hat, x0), rtol=rtol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_zero_at_truth_positive_otherwise(case, dtype):
    process, x0, x0_hat, t = draw_case(case, dtype)
    wrong = bd.standard_loss(process, t, x0_hat, x0)
    assert wrong > 0.01
    for truth in case.truths(x0, dtype):
        assert abs(bd.standard_loss(process, t, truth, x0).item()) <= 1e-5 * wrong.item()


@pytest.mark.parametrize("t", [1e-8, 1e-4, 1.0, 1e3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=ids)
def test_finite_value_and_gradient(case, dtype, t):
    process, x0, x0_hat, _ = draw_case(case, dtype)
    for prediction in [x0_hat] + case.truths(x0, dtype):
        prediction = prediction.clone().requires_grad_()
        loss = bd.standard_loss(process, torch.full((B,), t, dtype=dtype), prediction, x0)
        (grad,) = torch.autograd.grad(loss, prediction)
        assert torch.isfinite(loss) and torch.isfinite(grad).all(), (t, loss)


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_gradcheck(case):
    process, x0, x0_hat, t = draw_case(case, torch.float64, shape=(3, 2))
    x0_hat = x0_hat.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: bd.standard_loss(process, t, x, x0), (x0_hat,))


@pytest.mark.parametrize("case", CASES, ids=ids)
def test_masked_elements_alone_count(case):
    process, x0, x0_hat, t = draw_case(case, torch.float64)
    mask = torch.rand((B, N), generator=torch.Generator().manual_seed(1)) < 0.5
    expected = oracle(case, t, x0_hat, x0, mask)
    x0_hat = x0_hat.clone().requires_grad_()
    loss = bd.standard_loss(process, t, x0_hat, bd.masked(x0, mask))
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)
    (grad,) = torch.autograd.grad(loss, x0_hat)
    assert (grad[~mask] == 0).all() and (grad[mask] != 0).any()
    # the mask may come with the prediction instead
    from_hat = bd.standard_loss(process, t, bd.Masked(x0_hat, mask), x0)
    np.testing.assert_allclose(from_hat.item(), expected, rtol=1e-12)


# ---------------------------------------------------------------- structure

def test_circle_loss_wraps_predictions():
    """The minimal angle is a property of angles: a prediction off by 2π is as good."""
    case = CASES[ids.index("WrappedBrownian")]
    process, x0, x0_hat, t = draw_case(case, torch.float64)
    loss = bd.standard_loss(process, t, x0_hat, x0)
    for shift in (2 * np.pi, -4 * np.pi):
        torch.testing.assert_close(bd.standard_loss(process, t, x0_hat + shift, x0), loss)


def test_tuples_sum_their_components():
    gen = torch.Generator().manual_seed(3)
    ou, bm = bd.OrnsteinUhlenbeck(reversion=0.3), bd.BrownianMotion(0.5)
    a, b, c = (torch.randn(B, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    ha, hb, hc = (torch.randn(B, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.rand(B, 3, generator=gen) < 0.6
    t = torch.rand(B, generator=gen, dtype=torch.float64) + 0.1
    parts = [bd.standard_loss(ou, t, ha, a), bd.standard_loss(bm, t, hb, bd.masked(b, mask)),
             bd.standard_loss(ou, t, hc, c)]
    total = bd.standard_loss((ou, (bm, ou)), t, (ha, (hb, hc)), (a, (bd.masked(b, mask), c)))
    torch.testing.assert_close(total, sum(parts))


def test_mixed_tuple_sums_across_types():
    gen = torch.Generator().manual_seed(4)
    cases = [CASES[ids.index(n)] for n in ("OrnsteinUhlenbeck", "RotationDiffusion",
                                           "UniformDiscrete", "WrappedBrownian")]
    processes = tuple(c.process() for c in cases)
    data = [c.data(gen, torch.float64, (B, N)) for c in cases]
    t = torch.rand(B, generator=gen, dtype=torch.float64) + 0.1
    total = bd.standard_loss(processes, t, tuple(d[1] for d in data), tuple(d[0] for d in data))
    expected = sum(oracle(c, t, d[1], d[0]) for c, d in zip(cases, data))
    np.testing.assert_allclose(total.item(), expected, rtol=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
def test_custom_scaler_is_used(dtype):
    process = bd.OrnsteinUhlenbeck()
    gen = torch.Generator().manual_seed(5)
    x0, x0_hat = torch.randn(2, B, 3, generator=gen, dtype=dtype)
    t = torch.rand(B, generator=gen, dtype=dtype) + 0.1
    seen = []

    def scaler(p, tt):
        seen.append((p, tt))
        return tt ** 2

    loss = bd.standard_loss((process, process), t, (x0_hat, x0_hat), (x0, x0), scaler=scaler)
    expected = 2 * (((x0_hat - x0) ** 2) / t[:, None] ** 2).mean()
    torch.testing.assert_close(loss, expected)
    assert [p for p, _ in seen] == [process, process]
    assert seen[0][1].dtype == dtype and seen[0][1].shape == (B, 1)


def test_all_unmasked_component_contributes_zero():
    process = bd.OrnsteinUhlenbeck()
    x0, x0_hat = torch.zeros(B, 3), torch.ones(B, 3, requires_grad=True)
    loss = bd.standard_loss(process, 1.0, x0_hat, bd.masked(x0, torch.zeros(B, 3, dtype=bool)))
    loss.backward()
    assert loss == 0 and (x0_hat.grad == 0).all()


def test_custom_process_hooks():
    class Shift(bd.Process):
        def sample_forward(self, t, x0, generator=None):
            return x0 + t

        def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
            return x0 + s

        def loss(self, x0_hat, x0):
            return (x0_hat - x0).abs()

        def scaler(self, t):
            return 1 + t

    x0, x0_hat = torch.zeros(2, 3), torch.tensor([[1.0, -2, 3], [0, 0, 6]])
    loss = bd.standard_loss(Shift(), torch.tensor([1.0, 2.0]), x0_hat, x0)
    torch.testing.assert_close(loss, torch.tensor((6 / 2 + 6 / 3) / 6))


# ---------------------------------------------------------------- errors

def test_bad_input():
    process = bd.OrnsteinUhlenbeck()
    x0 = torch.zeros(B, 3)
    with pytest.raises(ValueError, match="t must be positive"):
        bd.standard_loss(process, -1.0, x0, x0)
    with pytest.raises(ValueError, match="t has length"):
        bd.standard_loss(process, torch.ones(B + 1), x0, x0)
    with pytest.raises(ValueError, match="x0_hat has shape"):  # would broadcast silently
        bd.standard_loss(process, 1.0, torch.zeros(B, 1), x0)
    with pytest.raises(ValueError, match="x0_hat's mask"):
        q = torch.tensor([0.0, 0, 0, 1]).expand(B, 4)
        bd.standard_loss(bd.RotationDiffusion(), 1.0, bd.masked(q, torch.ones(B, 4, dtype=bool)), q)
    with pytest.raises(ValueError, match="x0 has 1 components"):
        bd.standard_loss((process, process), 1.0, (x0, x0), (x0,))
    with pytest.raises(TypeError, match="x0_hat must be a tuple"):
        bd.standard_loss((process, process), 1.0, x0, (x0, x0))
    with pytest.raises(TypeError, match="x0_hat must be a tensor"):
        bd.standard_loss(process, 1.0, [0.0] * 3, x0)


def test_empty_components_contribute_zero_not_nan():
    P = (bd.OrnsteinUhlenbeck(), bd.UniformDiscrete(1.0, 3))
    x0 = (torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    loss = bd.standard_loss(P, 1.0, (torch.zeros(0, 3), torch.zeros(0, 3)), x0)
    assert loss.item() == 0.0
    full = (torch.ones(4, 3), torch.zeros(4, dtype=torch.long))
    both = bd.standard_loss((P[0], P[0]), 1.0, (torch.zeros(0, 3), full[0] * 0), (x0[0], full[0]))
    torch.testing.assert_close(both, bd.standard_loss(P[0], 1.0, full[0] * 0, full[0]))


def test_dicts_and_lists_of_components():
    P = {"pos": bd.OrnsteinUhlenbeck(), "aa": bd.UniformDiscrete(1.0, 4)}
    x0 = {"pos": torch.randn(B, 3), "aa": torch.randint(0, 4, (B,))}
    x0_hat = {"aa": torch.randn(B, 4), "pos": torch.zeros(B, 3)}
    total = bd.standard_loss(P, 0.7, x0_hat, x0)
    parts = [bd.standard_loss(P[k], 0.7, x0_hat[k], x0[k]) for k in P]
    torch.testing.assert_close(total, sum(parts))
    per_component = bd.standard_loss(P, {"pos": 0.7, "aa": 2.0}, x0_hat, x0)
    torch.testing.assert_close(per_component, parts[0] + bd.standard_loss(P["aa"], 2.0, x0_hat["aa"],
                                                                          x0["aa"]))


def test_a_custom_loss_of_the_wrong_shape_is_named():
    class Summed(bd.OrnsteinUhlenbeck):
        def loss(self, x0_hat, x0):
            return ((x0_hat - x0) ** 2).sum()

    with pytest.raises(TypeError, match="Summed.loss must return one loss per element"):
        bd.standard_loss(Summed(), 1.0, torch.zeros(B, 3), torch.ones(B, 3))


def test_a_structure_of_scalers_gives_each_component_its_own():
    P = {"a": bd.OrnsteinUhlenbeck(), "b": bd.BrownianMotion()}
    x0 = {"a": torch.ones(B, 3), "b": torch.ones(B, 2)}
    x0_hat = {"a": torch.zeros(B, 3), "b": torch.zeros(B, 2)}
    t = torch.rand(B, generator=torch.Generator().manual_seed(3)) + 0.1
    double = lambda p, tt: 2 * p.scaler(tt)
    mixed = bd.standard_loss(P, t, x0_hat, x0, scaler={"a": double, "b": None})
    parts = (bd.standard_loss(P["a"], t, x0_hat["a"], x0["a"], scaler=double)
             + bd.standard_loss(P["b"], t, x0_hat["b"], x0["b"]))
    torch.testing.assert_close(mixed, parts)
    with pytest.raises(TypeError, match="scaler must be callable"):
        bd.standard_loss(P, t, x0_hat, x0, scaler={"a": 2.0, "b": None})
    with pytest.raises(ValueError, match="keys"):
        bd.standard_loss(P, t, x0_hat, x0, scaler={"a": double})


def test_a_scaler_that_returns_nonsense_is_named():
    P, x = bd.OrnsteinUhlenbeck(), torch.ones(B, 3)
    t = torch.full((B,), 0.5)
    with pytest.raises(TypeError, match="scaler must return a tensor or a number, got NoneType"):
        bd.standard_loss(P, t, x, x, scaler=lambda p, tt: None)
    for bad in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="scaler returned negative or NaN"):
            bd.standard_loss(P, t, x, x, scaler=lambda p, tt: torch.full_like(tt, bad))
    # an exact 0 (a scaler that underflows at tiny t) is floored: a perfect prediction costs 0
    assert float(bd.standard_loss(P, t, x, x, scaler=lambda p, tt: 0.0)) == 0.0
