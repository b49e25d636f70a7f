"""RandomFourierFeatures: the formula, the frequency law, a fixed buffer that moves and saves."""

import io

import numpy as np
import pytest
import torch
from scipy import stats

import bridgediff as bd
from stats import assert_ks


def features(dim=8, scale=3.0, seed=0):
    return bd.RandomFourierFeatures(dim, scale, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_formula_and_shapes(dtype):
    rff = features().to(dtype)
    t = torch.rand(3, 5, generator=torch.Generator().manual_seed(1), dtype=dtype)
    out = rff(t)
    assert out.shape == (3, 5, 8) and out.dtype == dtype
    w, tn = rff.weight.double().numpy(), t.double().numpy()[..., None]
    expected = np.concatenate([np.cos(2 * np.pi * tn * w), np.sin(2 * np.pi * tn * w)], -1)
    np.testing.assert_allclose(out.double().numpy(), expected,
                               atol=1e-5 if dtype == torch.float32 else 1e-12)
    assert rff(torch.tensor(0.25, dtype=dtype)).shape == (8,)
    assert rff(0.25).shape == (8,)
    assert torch.equal(rff(np.float32(0.25)), rff(0.25))          # numpy scalars are floats
    integer_times = torch.tensor([0, 2])
    torch.testing.assert_close(rff(integer_times), rff(integer_times.to(dtype)))
    with pytest.raises(TypeError, match="t must be a tensor or a float"):
        rff([0.25])


def test_frequencies_are_normal_with_the_given_scale():
    rff = features(dim=20000, scale=3.0)
    assert_ks(rff.weight, stats.norm(scale=3.0).cdf, what="frequencies")


def test_no_trainable_parameters_and_reproducible():
    rff = features()
    assert list(rff.parameters()) == [] and not rff.weight.requires_grad
    assert [name for name, _ in rff.named_buffers()] == ["weight"]
    assert torch.equal(features(seed=0).weight, rff.weight)
    assert not torch.equal(features(seed=1).weight, rff.weight)
    # inside a model, an optimiser never sees the frequencies
    model = torch.nn.Sequential(rff, torch.nn.Linear(8, 1))
    assert sum(p.numel() for p in model.parameters()) == 9


def test_moves_with_to():
    rff = features()
    assert rff.to(torch.float64).weight.dtype == torch.float64
    meta = features().to("meta")
    assert meta.weight.device.type == "meta"


def test_state_dict_round_trip():
    a, b = features(seed=0), features(seed=1)
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b.load_state_dict(torch.load(buffer))
    t = torch.linspace(0, 1, 7)
    assert torch.equal(a(t), b(t))


def test_bad_arguments():
    for dim in (7, 0, -2):
        with pytest.raises(ValueError, match="dim must be a positive even"):
            bd.RandomFourierFeatures(dim, 1.0)
    with pytest.raises(TypeError, match="dim must be an int"):
        bd.RandomFourierFeatures(8.0, 1.0)
    for scale in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="scale"):
            bd.RandomFourierFeatures(8, scale)


@pytest.mark.cuda
def test_moves_to_cuda():
    rff = features().to("cuda")
    assert rff.weight.device.type == "cuda"
    assert rff(torch.rand(5, device="cuda")).device.type == "cuda"
