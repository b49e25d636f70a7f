"""Time grids for the backward sampler."""

import torch
from torch import Tensor

__all__ = ["time_schedule"]


def time_schedule(f, lb: float, ub: float, n: int, *, finv=None) -> Tensor:
    """A grid of ``n`` increasing times from ``lb`` to ``ub``, equally spaced under ``finv``.

    Returns ``f(linspace(finv(lb), finv(ub), n))`` (``finv`` defaults to the identity), as
    in Diffusions.jl's ``timeschedule``. For a grid from ``lb`` to ``ub`` pass the inverse
    of ``f``: ``time_schedule(torch.exp, 1e-3, 10.0, 50, finv=math.log)`` is log-spaced.

    Args:
        f: maps a 1-D float64 tensor to times (a torch function such as ``torch.exp``).
        lb, ub: the ends, in the units ``finv`` takes.
        n: the number of times, at least 2.
        finv: a function of one float; the identity if None.

    Returns:
        a 1-D tensor (n,) of the default float dtype, strictly increasing and positive.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    finv = finv or (lambda u: u)
    lo, hi = float(finv(lb)), float(finv(ub))
    times = torch.as_tensor(f(torch.linspace(lo, hi, n, dtype=torch.float64)))
    times = times.to(torch.get_default_dtype())
    if times.shape != (n,):
        raise ValueError(f"f must map a tensor of shape ({n},) to one of the same shape, "
                         f"got {tuple(times.shape)}")
    if not bool((times > 0).all() and (times[1:] > times[:-1]).all()):
        raise ValueError("the schedule must be positive and strictly increasing; check that "
                         "lb < ub, that f is increasing and that f(finv(lb)) > 0")
    return times
