"""Private helpers shared by the processes and the free functions."""

import contextlib
import operator

import torch
from torch import Tensor


def randn(like: Tensor, generator=None, shape=None) -> Tensor:
    """Standard normal draws of ``like``'s shape (or ``shape``), device and float dtype."""
    return torch.randn(like.shape if shape is None else shape, generator=generator,
                       dtype=like.dtype, device=like.device)


def rand(like: Tensor, generator=None, shape=None) -> Tensor:
    """Uniform [0, 1) draws of ``like``'s shape (or ``shape``), device and float dtype."""
    return torch.rand(like.shape if shape is None else shape, generator=generator,
                      dtype=like.dtype, device=like.device)


def as_param(value, like: Tensor):
    """A process parameter on ``like``'s device and dtype: Python numbers stay numbers (torch
    passes them to kernels as arguments, with no host-to-device copy), tensors are moved."""
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=like.dtype)
    return float(value)


def on_host(x: Tensor) -> bool:
    """Whether value checks on ``x`` are free of host-device synchronisation."""
    return x.device.type == "cpu"


_DEVICE_PATH_FORCED = False


def use_host_path(x: Tensor) -> bool:
    """Whether a sampler may take its host path for ``x``: read values, compact to the
    pending elements, stop early. Elsewhere it takes the device path (fixed work, no sync),
    which ``device_path()`` forces on the CPU too, so that CPU tests can run it."""
    return x.device.type == "cpu" and not _DEVICE_PATH_FORCED


@contextlib.contextmanager
def device_path():
    """Within this context every sampler takes its device path, on the CPU as well."""
    global _DEVICE_PATH_FORCED
    previous, _DEVICE_PATH_FORCED = _DEVICE_PATH_FORCED, True
    try:
        yield
    finally:
        _DEVICE_PATH_FORCED = previous


def rejection(propose, n: int, rounds: int, like: Tensor):
    """Vectorised rejection sampling of ``n`` independent draws.

    ``propose(rows)`` returns candidates (m, ...) for the m elements ``rows`` (an index
    tensor, or ``slice(None)`` for all) and a bool tensor (m,) saying which are accepted.
    The first round covers every element. On the host path later rounds propose only for
    the pending elements and the loop stops once none is left; on the device path all
    ``rounds`` rounds cover every element (no sync). Each element keeps its first accepted
    candidate, so accepted draws follow the target law exactly.

    Returns (draws (n, ...), accepted (n,)); rows never accepted hold zeros.
    """
    accepted = torch.zeros(n, dtype=torch.bool, device=like.device)
    draws, rows = None, slice(None)
    host = use_host_path(like)
    for i in range(rounds):
        if i > 0 and host:
            rows = (~accepted).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
        cand, accept = propose(rows)
        if draws is None:
            draws = cand.new_zeros((n,) + cand.shape[1:])
        if not host:
            accept = accept & ~accepted
        keep = accept.reshape(accept.shape + (1,) * (cand.ndim - 1))
        draws[rows] = torch.where(keep, cand, draws[rows])
        accepted[rows] = accepted[rows] | accept
    return draws, accepted


def finish_rejection(propose, draws: Tensor, accepted: Tensor, max_rounds: int = 10_000):
    """Complete ``rejection``'s output: one host sync decides whether any element is still
    pending; if so, rounds run on the pending subset only until every element is accepted.
    Rejection is memoryless, so the result is exact. ``max_rounds`` guards against a
    proposal that can never be accepted (a bug): then RuntimeError."""
    if bool(accepted.all()):
        return draws
    draws, accepted = draws.clone(), accepted.clone()
    for _ in range(max_rounds):
        rows = (~accepted).nonzero().squeeze(1)
        if rows.numel() == 0:
            return draws
        cand, accept = propose(rows)
        draws[rows[accept]] = cand[accept]
        accepted[rows[accept]] = True
    raise RuntimeError(f"rejection sampling left {int((~accepted).sum())} elements unaccepted "
                       f"after {max_rounds} rounds")


def real(name: str, value):
    """Check that a process parameter is a finite scalar; return it unchanged."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"{name} must be a float or a 0-d tensor, got {type(value).__name__}")
    v = torch.as_tensor(value).detach()
    if v.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v)):
        raise ValueError(f"{name} must be finite, got {float(v)}")
    return value


def positive(name: str, value):
    """Check that a process parameter is a positive, finite scalar; return it unchanged."""
    if not bool(torch.as_tensor(real(name, value)).detach() > 0):
        raise ValueError(f"{name} must be positive and finite, got {float(value)}")
    return value


def integer_at_least(name: str, value, minimum: int) -> int:
    """``value`` as a Python int (numpy integers too; bool refused) that is at least ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {value}")
    return value


def unit_tolerance(dtype: torch.dtype) -> float:
    """| |x| − 1 | accepted for unit vectors stored in ``dtype``: 1e-3, or four times the dtype's
    epsilon where that is larger (a correctly rounded unit vector is off by at most about half
    an epsilon, one normalised in that dtype by a few: 0.031 in bfloat16, 0.0039 in float16)."""
    return max(1e-3, 4 * torch.finfo(dtype).eps)


def check_unit_vectors(x: Tensor, name: str, process, size: int, what: str) -> None:
    """Raise unless ``x`` is a float tensor of unit vectors (..., ``size``) (``what`` names
    them in messages); norms are checked on the host, in float32 at least."""
    require_float(x, name, process)
    if x.ndim < 1 or x.shape[-1] != size:
        raise ValueError(f"{name} must be {what} of shape (..., {size}), got shape "
                         f"{tuple(x.shape)}")
    if not on_host(x) or not x.numel():
        return
    tolerance = unit_tolerance(x.dtype)
    y = x.reshape(-1, size).to(torch.promote_types(x.dtype, torch.float32))
    smallest, largest = torch.aminmax((y * y) @ y.new_ones(size))   # squared norms
    if (1 - tolerance) ** 2 <= float(smallest) and float(largest) <= (1 + tolerance) ** 2:
        return                          # (NaN and ±inf have no norm within the tolerance)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} must be finite {what}: some are NaN or infinite")
    off = max(abs(float(smallest) ** 0.5 - 1), abs(float(largest) ** 0.5 - 1))
    raise ValueError(f"{name} must be {what}: some norms differ from 1 by more than "
                     f"{tolerance:.3g} (the largest by {off:.3g})")


def require_float(x: Tensor, name: str, process) -> None:
    """Raise TypeError unless ``x`` is a floating-point tensor."""
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor for {type(process).__name__}, "
                        f"got dtype {x.dtype}")


def exact_rejection(propose, n: int, like: Tensor, device_rounds: int) -> Tensor:
    """Exact draws (n, ...) by rejection from ``propose(rows) -> (candidates, accepted)``.

    Device path: ``rejection``'s ``device_rounds`` fixed rounds over every element (no host
    sync), then ``finish_rejection``: one host decision, and rounds on the leftovers only.
    Host path: the first round covers every element and ``finish_rejection`` runs the next
    ones on the pending elements only (``rejection``'s host path, without its per-round
    bookkeeping over all elements, which on CPUs can cost more than a round of a cheap
    sampler). Rejection is memoryless, so either way every element keeps its first accepted
    candidate: exact.
    """
    if use_host_path(like):
        draws, accepted = propose(slice(None))
    else:
        draws, accepted = rejection(propose, n, device_rounds, like)
    return finish_rejection(propose, draws, accepted)
