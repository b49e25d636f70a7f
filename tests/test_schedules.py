"""time_schedule: Diffusions.jl's timeschedule semantics (lb and ub are times), with the
inverse of f inferred for the common functions and explicit finv accepted in any form."""

import math

import numpy as np
import pytest
import scipy.special
import torch

import bridgediff as bd

LOG_GRID = np.logspace(-3, 1, 5)      # 1e-3 ... 10


@pytest.mark.parametrize("f", [torch.exp, math.exp, np.exp], ids=["torch", "math", "numpy"])
def test_exp_runs_from_lb_to_ub(f):
    """Diffusions.jl: timeschedule(exp, 1e-3, 10, n) runs from 1e-3 to 10, log-spaced (the old
    behaviour returned exp(1e-3) ... exp(10))."""
    ts = bd.time_schedule(f, 1e-3, 10.0, 5)
    assert ts.dtype == torch.get_default_dtype() and ts.shape == (5,)
    np.testing.assert_allclose(ts.double().numpy(), LOG_GRID, rtol=1e-6)


def test_diffusions_jl_docstring_example():
    """timeschedule(exp10, 1e-3, 1e+2, 6) == [0.001, 0.01, 0.1, 1, 10, 100]."""
    ts = bd.time_schedule(scipy.special.exp10, 1e-3, 1e2, 6)
    np.testing.assert_allclose(ts.double().numpy(), 10.0 ** np.arange(-3, 3), rtol=1e-6)


@pytest.mark.parametrize("f", [torch.exp2, torch.special.exp2, np.exp2, scipy.special.exp2]
                         + ([math.exp2] if hasattr(math, "exp2") else []))
def test_exp2_is_log_spaced(f):
    np.testing.assert_allclose(bd.time_schedule(f, 1e-3, 10.0, 5).double().numpy(), LOG_GRID,
                               rtol=1e-6)


@pytest.mark.parametrize("f", [torch.square, np.square])
def test_square_is_spaced_in_sqrt(f):
    ts = bd.time_schedule(f, 1.0, 9.0, 3).double().numpy()
    np.testing.assert_allclose(ts, [1.0, 4.0, 9.0], rtol=1e-6)


@pytest.mark.parametrize("f", [None, torch.nn.Identity()], ids=["None", "nn.Identity"])
def test_identity_is_linear(f):
    np.testing.assert_allclose(bd.time_schedule(f, 0.5, 2.5, 5).double().numpy(),
                               np.linspace(0.5, 2.5, 5), rtol=1e-6)


@pytest.mark.parametrize("finv", [math.log, np.log, torch.log], ids=["math", "numpy", "torch"])
def test_explicit_finv_in_any_form(finv):
    """torch.log raised TypeError on a float before: finv is retried on a 0-d float64 tensor."""
    np.testing.assert_allclose(bd.time_schedule(torch.exp, 1e-3, 10.0, 5, finv=finv)
                               .double().numpy(), LOG_GRID, rtol=1e-6)


def test_custom_f_with_finv_and_numpy_count():
    ts = bd.time_schedule(lambda u: u ** 3, 1.0, 27.0, np.int64(4), finv=np.cbrt)
    np.testing.assert_allclose(ts.double().numpy(), np.linspace(1.0, 3.0, 4) ** 3, rtol=1e-6)


def test_tensor_ends_and_dtype_follow_default():
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        ts = bd.time_schedule(torch.exp, torch.tensor(1e-3), torch.tensor(10.0), 5)
        assert ts.dtype == torch.float64
        np.testing.assert_allclose(ts.numpy(), LOG_GRID, rtol=1e-12)
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("call, error, match", [
    (lambda: bd.time_schedule(lambda u: u ** 2, 1.0, 3.0, 3), ValueError, "finv"),
    (lambda: bd.time_schedule(torch.exp, 1e-3, 10.0, 1), ValueError, "n must be"),
    (lambda: bd.time_schedule(torch.exp, 1e-3, 10.0, 5.0), TypeError, "n must be an integer"),
    (lambda: bd.time_schedule(torch.exp, 1e-3, 10.0, True), TypeError, "n must be an integer"),
    (lambda: bd.time_schedule(torch.exp, 1.0, 1.0, 5), ValueError, "lb must be smaller"),
    (lambda: bd.time_schedule(torch.exp, 2.0, 1.0, 5), ValueError, "increasing"),
    (lambda: bd.time_schedule(torch.exp, 0.0, 1.0, 5), ValueError, "lb must be a positive"),
    (lambda: bd.time_schedule(torch.exp, -6.9, 2.3, 5), ValueError, "lb must be a positive"),
    (lambda: bd.time_schedule(torch.exp, 1e-3, math.inf, 5), ValueError, "ub must be finite"),
    (lambda: bd.time_schedule(torch.exp, "a", 1.0, 5), TypeError, "lb must be a real"),
    (lambda: bd.time_schedule(torch.exp, 1e-3, 10.0, 5, finv=math.log10), ValueError,
     "not the inverse"),
    (lambda: bd.time_schedule("exp", 1e-3, 10.0, 5), TypeError, "f must be callable"),
    # a non-monotone f: the grid 1, 0, -1, -2, -3 squared is not increasing
    (lambda: bd.time_schedule(torch.square, 1.0, 9.0, 5,
                              finv=lambda x: math.sqrt(x) if x < 2 else -math.sqrt(x)),
     ValueError, "positive and strictly increasing"),
])
def test_bad_input_is_named(call, error, match):
    with pytest.raises(error, match=match):
        call()
