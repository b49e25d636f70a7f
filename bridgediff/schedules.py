"""Time grids for the backward sampler."""

import math
import sys

import torch
from torch import Tensor

from ._util import integer_at_least

__all__ = ["time_schedule"]


def time_schedule(f, lb, ub, n, *, finv=None) -> Tensor:
    """``n`` increasing times from ``lb`` to ``ub``, equally spaced under the inverse of ``f``.

    Returns ``f(linspace(finv(lb), finv(ub), n))``, as Diffusions.jl's
    ``timeschedule(f, lb, ub, n)``: ``lb`` and ``ub`` are the first and last *times*, so
    ``time_schedule(torch.exp, 1e-3, 10.0, 5)`` is ``[1e-3, 1e-2, 1e-1, 1, 10]`` (log-spaced).

    ``finv`` is inferred for the common ``f``: ``exp`` (``torch``, ``math``, ``numpy``),
    ``exp2`` (also ``torch.special`` and ``scipy.special``), ``scipy.special.exp10``
    (``finv`` log10), ``square`` (``torch``, ``numpy``; ``finv`` sqrt), and the identity,
    given as ``f=None`` or ``torch.nn.Identity()`` (a linear grid). Any other ``f`` needs
    its ``finv``.

    Args:
        f: an increasing function; known ones above are applied as their torch version, any
            other must map a 1-D float64 tensor to a tensor of the same shape.
        lb, ub: the first and last times, 0 < lb < ub (floats or 0-d tensors).
        n: the number of times, an integer (numpy integers too) at least 2.
        finv: the inverse of ``f``, called on a float (or, if that raises TypeError, on a
            0-d float64 tensor, so ``torch.log`` works); it must return a real number.

    Returns:
        a 1-D tensor (n,) of the default float dtype, strictly increasing and positive, whose
        ends are ``lb`` and ``ub`` up to rounding.
    """
    n = integer_at_least("n", n, 2)
    lb, ub = _time("lb", lb), _time("ub", ub)
    if not lb > 0:
        raise ValueError(f"lb must be a positive time (the first of the schedule), got {lb}")
    if not lb < ub:
        raise ValueError(f"lb must be smaller than ub (the schedule is increasing), got "
                         f"lb={lb}, ub={ub}")
    forward, inverse = _resolve(f, finv)
    lo, hi = _inverse_at(inverse, lb, "lb"), _inverse_at(inverse, ub, "ub")
    grid = torch.linspace(lo, hi, n, dtype=torch.float64)
    times = torch.as_tensor(forward(grid), dtype=torch.float64)
    if times.shape != (n,):
        raise ValueError(f"f must map a tensor of shape ({n},) to one of the same shape, "
                         f"got {tuple(times.shape)}")
    for end, value, name in ((times[0], lb, "lb"), (times[-1], ub, "ub")):
        if not math.isclose(float(end), value, rel_tol=1e-6):
            raise ValueError(f"finv is not the inverse of f: f(finv({name})) = {float(end)}, "
                             f"but {name} = {value}")
    times = times.to(torch.get_default_dtype())
    if not bool((times > 0).all() and (times[1:] > times[:-1]).all()):
        raise ValueError("the schedule must be positive and strictly increasing; check that f "
                         "is increasing and that n is not so large that times collapse in the "
                         "default float dtype")
    return times




def _time(name: str, value) -> float:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a real number, got bool")
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex():
            raise TypeError(f"{name} must be a real number or a 0-d tensor, got a tensor of "
                            f"shape {tuple(value.shape)} and dtype {value.dtype}")
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _inverse_at(inverse, value: float, name: str) -> float:
    """``float(inverse(value))``: tried on a float, then on a 0-d float64 tensor."""
    try:
        out = inverse(value)
    except TypeError:
        out = inverse(torch.tensor(value, dtype=torch.float64))
    try:
        out = float(out)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"finv({name}) must return a real number, got "
                        f"{type(out).__name__}") from None
    if not math.isfinite(out):
        raise ValueError(f"finv({name}) = {out} is not finite; is lb in finv's domain?")
    return out


def _identity(x):
    return x


def _known_functions():
    """(candidates, torch f, float finv) for the functions whose inverse is inferred; numpy and
    scipy only if they are already imported (a caller passing their functions imported them)."""
    table = [((torch.exp, torch.Tensor.exp, math.exp), torch.exp, math.log),
             ((torch.exp2, torch.special.exp2, getattr(math, "exp2", None)), torch.exp2,
              math.log2),
             ((torch.square, torch.Tensor.square), torch.square, math.sqrt)]
    np = sys.modules.get("numpy")
    if np is not None:
        table += [((np.exp,), torch.exp, math.log), ((np.exp2,), torch.exp2, math.log2),
                  ((np.square,), torch.square, math.sqrt)]
    special = sys.modules.get("scipy.special")
    if special is not None:
        table += [((special.exp2,), torch.exp2, math.log2),
                  ((special.exp10,), lambda x: torch.pow(10.0, x), math.log10)]
    return table


def _resolve(f, finv):
    """(forward on a float64 tensor, inverse on a float) for ``f``, ``finv``."""
    if f is None or isinstance(f, torch.nn.Identity):
        return _identity, finv or _identity
    for candidates, forward, inverse in _known_functions():
        if any(f is c for c in candidates if c is not None):
            return forward, finv or inverse
    if not callable(f):
        raise TypeError(f"f must be callable (or None for a linear grid), got "
                        f"{type(f).__name__}")
    if finv is None:
        raise ValueError(f"cannot infer the inverse of f={getattr(f, '__name__', f)!r}; pass "
                         f"finv= (the inverse is inferred only for exp, exp2, exp10, square and "
                         f"the identity)")
    return f, finv
