"""The free functions: validation, structure and mask dispatch, and the backward sampler.

Processes implement the mathematics on plain tensors (see ``bd.Process``); everything
here is written once for all of them.
"""

import numbers
import operator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._tree import leaves, map_tree, rewrap, split, unmasked
from ._util import on_host
from .masked import Masked
from .process import Process, time_dtype

__all__ = ["sample_forward", "endpoint_conditioned_sample", "sample_backward",
           "sample_equilibrium", "Tracker"]


# ---------------------------------------------------------------- times

def as_time(t, like: Tensor, process: Process, dtype: torch.dtype, name: str) -> Tensor:
    """``t`` as a tensor on ``like``'s device that broadcasts against it: 0-d or (B, 1, ..., 1).

    ``t`` is a real number, a 0-d tensor or a 1-D tensor of one time per batch element (the
    leading dimension of ``like``, which must have one besides the event dimensions).
    """
    if isinstance(t, Tensor):
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be real, got a tensor of dtype {t.dtype}")
        t = t.to(device=like.device, dtype=dtype)
    elif isinstance(t, numbers.Real) and not isinstance(t, bool):
        # torch.full fills on the device; a copy from the host would synchronise with it
        t = torch.full((), float(t), dtype=dtype, device=like.device)
    else:
        raise TypeError(f"{name} must be a real number or a tensor, got {type(t).__name__}")
    if t.ndim == 0:
        return t
    if t.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a 1-D tensor of one time per batch "
                         f"element, got shape {tuple(t.shape)}")
    if like.ndim <= process.event_ndim or t.shape[0] != like.shape[0]:
        batch = like.shape[0] if like.ndim > process.event_ndim else "none (one element)"
        raise ValueError(f"{name} has length {t.shape[0]}, but the batch size (the data's "
                         f"leading dimension) is {batch}")
    return t.reshape((-1,) + (1,) * (like.ndim - 1))


def check_positive(t: Tensor, name: str) -> None:
    """On the host, raise unless every time is positive and finite."""
    if on_host(t) and not bool(((t > 0) & torch.isfinite(t)).all()):
        raise ValueError(f"{name} must be positive and finite, got {t.flatten()[:8].tolist()}")


def check_order(s: Tensor, t: Tensor) -> None:
    """On the host, raise unless s < t elementwise."""
    if on_host(t) and not bool((s < t).all()):
        raise ValueError("s must be smaller than t (elementwise, in the data's dtype)")


def _cast(out, like: Tensor, process: Process, method: str) -> Tensor:
    """A process's output in ``like``'s dtype, after checking that it is a tensor of its shape."""
    if not isinstance(out, Tensor) or out.shape != like.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise TypeError(f"{type(process).__name__}.{method} must return a tensor of shape "
                        f"{tuple(like.shape)}, got {got}")
    return out.to(like.dtype)


# ---------------------------------------------------------------- forward

def _forward_leaf(process: Process, t, x0, generator):
    x, mask = split(x0, process, "x0")
    process.check_state(x, "x0")
    tt = as_time(t, x, process, time_dtype(x), "t")
    check_positive(tt, "t")
    out = _cast(process.sample_forward(tt, x, generator), x, process, "sample_forward")
    return rewrap(out, x, mask, process)


def sample_forward(process, t, x0, *, generator=None):
    """Draw x_t ~ p(x_t | x_0 = x0) by running ``process`` forward for time ``t``.

    Args:
        process: a ``bd.Process`` or a (nested) tuple, list or dict of them.
        t: positive time; a real number, a 0-d tensor or a 1-D tensor of length B (one per
            batch element), shared by every component, or a structure matching ``process``
            (one time per component).
        x0: data, a tensor (B, ...) or ``bd.Masked`` (held elements are kept), or a
            structure of them matching ``process``.
        generator: a ``torch.Generator`` for reproducible draws.

    Returns:
        x_t with the structure, device and dtype of ``x0``.
    """
    return map_tree(lambda p, x, tt: _forward_leaf(p, tt, x, generator), process, (x0, t),
                    ("x0", "t"), shared=(1,))


# ---------------------------------------------------------------- bridge

def _bridge_leaf(process: Process, s, t, x0, x_t, generator, validate: bool, x0_name: str):
    xt, mask = split(x_t, process, "x_t")
    x0 = x0.x if isinstance(x0, Masked) else x0  # the guess's x0 inherits x_t's mask
    if not isinstance(x0, Tensor):
        raise TypeError(f"{x0_name} must be a tensor or bd.Masked, got {type(x0).__name__}")
    if validate:
        process.check_state(xt, "x_t")
    _check_endpoints(process, x0, xt, x0_name)
    dtype = time_dtype(xt, x0)
    ss, tt = as_time(s, xt, process, dtype, "s"), as_time(t, xt, process, dtype, "t")
    if validate:
        check_positive(ss, "s")
        check_positive(tt, "t")
        check_order(ss, tt)
    out = process.endpoint_conditioned_sample(ss, tt, x0, xt, generator)
    return rewrap(_cast(out, xt, process, "endpoint_conditioned_sample"), xt, mask, process)


def _check_endpoints(process: Process, x0: Tensor, xt: Tensor, x0_name: str) -> None:
    """``process.check_endpoints``, its message naming ``x0_name`` (the guess, in a chain)."""
    if x0_name == "x0":
        process.check_endpoints(x0, xt)
        return
    try:
        process.check_endpoints(x0, xt)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{x0_name} returned an invalid x0: {error}") from None


def endpoint_conditioned_sample(process, s, t, x0, x_t, *, generator=None):
    """Draw x_s from the bridge p(x_s | x_0 = x0, x_t) for 0 < s < t.

    Args:
        process: a ``bd.Process`` or a (nested) tuple, list or dict of them.
        s, t: times with 0 < s < t; each a real number, 0-d tensor or 1-D tensor of length
            B, or a structure matching ``process`` (one time per component).
        x0: the clean endpoint (for discrete processes, hard states or probabilities
            (..., k)); its mask, if any, is ignored in favour of ``x_t``'s.
        x_t: the noisy endpoint, a tensor or ``bd.Masked``; held elements are returned
            unchanged.
        generator: a ``torch.Generator``.

    Returns:
        x_s with the structure, device and dtype of ``x_t``.
    """
    return _bridge(process, s, t, x0, x_t, generator, validate=True)


def _bridge(process, s, t, x0, x_t, generator, validate: bool, x0_name: str = "x0"):
    """The bridge over a structure; ``validate`` checks x_t and the times (the backward loop
    checks them once, before it starts)."""
    return map_tree(
        lambda p, a, b, ss, tt: _bridge_leaf(p, ss, tt, a, b, generator, validate, x0_name),
        process, (x0, x_t, s, t), (x0_name, "x_t", "s", "t"), shared=(2, 3), out=1)


# ---------------------------------------------------------------- equilibrium

def _as_shape(like, name: str) -> torch.Size:
    try:
        shape = torch.Size(operator.index(n) for n in like)
    except TypeError:
        raise TypeError(f"{name} must be a shape (a sequence of integers), a tensor or "
                        f"bd.Masked, got {like!r}") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"{name} must have non-negative sizes, got {tuple(shape)}")
    return shape


def _equilibrium_leaf(process: Process, like, generator, device, dtype, name):
    if isinstance(like, (Tensor, Masked)):
        x, mask = split(like, process, name)
        out = process.sample_equilibrium(x.shape, generator=generator,
                                         device=device or x.device, dtype=dtype or x.dtype)
        return rewrap(out, x, mask, process)
    shape = _as_shape(like, name)
    return process.sample_equilibrium(shape, generator=generator, device=device, dtype=dtype)


def sample_equilibrium(process, shape_or_like, *, generator=None, device=None, dtype=None):
    """Draw from the process's stationary law.

    Args:
        process: a ``bd.Process`` or a (nested) tuple, list or dict of them.
        shape_or_like: a shape (a sequence of integers, or one integer), or a tensor whose
            shape, device and dtype are used (a ``bd.Masked`` keeps its held elements: the
            start of a conditional chain); for a structure of processes, a matching structure
            of these (a tuple of shapes, not one shape).
        device, dtype: override the device and dtype (the process's default dtype if neither
            these nor a tensor give one).
    """
    if isinstance(process, Process) and isinstance(shape_or_like, numbers.Integral):
        shape_or_like = (shape_or_like,)
    elif not isinstance(process, Process) and isinstance(shape_or_like, (tuple, list)) and all(
            isinstance(n, numbers.Integral) for n in shape_or_like):
        raise TypeError(f"shape_or_like must hold one shape (or tensor) per component of the "
                        f"{type(process).__name__} of processes, e.g. ((3,), (4,)); got the "
                        f"single shape {tuple(shape_or_like)}")
    return map_tree(lambda p, like: _equilibrium_leaf(p, like, generator, device, dtype,
                                                      "shape_or_like"),
                    process, (shape_or_like,), ("shape_or_like",))


# ---------------------------------------------------------------- backward

class Tracker:
    """Records each backward step: ``time`` (0-d tensors), ``x`` (states) and ``x0`` (guesses).

    ``sample_backward`` calls it as ``tracker(t, x, x0_hat)`` once per step, from the
    largest time down; any callable of that signature can serve instead.
    """

    def __init__(self):
        self.time, self.x, self.x0 = [], [], []

    def __call__(self, t: Tensor, x, x0) -> None:
        self.time.append(t)
        self.x.append(x)
        self.x0.append(x0)

    def __len__(self) -> int:
        return len(self.time)


def check_timesteps(timesteps, dtype: torch.dtype, name: str = "timesteps") -> Tensor:
    """Validate on the host, in the dtype the steps will use (so that no two steps collapse)."""
    if isinstance(timesteps, Tensor):
        if timesteps.is_complex() or timesteps.dtype == torch.bool:
            raise TypeError(f"{name} must be real, got dtype {timesteps.dtype}")
        times = timesteps.detach().to("cpu", dtype)
    else:
        try:
            times = torch.as_tensor(timesteps, dtype=dtype, device="cpu")
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a 1-D tensor or sequence of real numbers, got "
                            f"{type(timesteps).__name__}") from None
    if times.ndim != 1 or times.numel() < 1:
        raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape "
                         f"{tuple(times.shape)}")
    if not bool(((times > 0) & torch.isfinite(times)).all()):
        raise ValueError(f"{name} must be positive and finite")
    if not bool((times[1:] > times[:-1]).all()):
        raise ValueError(f"{name} must be strictly increasing (x_T sits at {name}[-1])")
    return times


def _check_callable(f, name: str, signature: str) -> None:
    if not callable(f):
        raise TypeError(f"{name} must be callable {signature}, got {type(f).__name__}")


def _check_start(process: Process, x):
    data, _ = split(x, process, "x_T")
    process.check_state(data, "x_T")


def sample_backward(guess, process, timesteps, x_T, *, tracker=None, generator=None,
                    progress=False):
    """Generate by stepping backward through ``timesteps`` with bridges to guessed x0.

    For i = n-1, ..., 1: ``x0_hat = guess(x, t_i)`` (x with masks removed, t_i a 0-d
    tensor on x's device), ``tracker(t_i, x, x0_hat)`` if given, then
    x ~ p(x_{t_{i-1}} | x_0 = x0_hat, x_{t_i} = x). If ``guess`` draws x0 from the exact
    posterior p(x0 | x_t), every step is an exact reverse transition.

    The loop runs under ``torch.no_grad()``, so no autograd graph builds up across steps; a
    guess that needs gradients (guidance by a classifier, say) enables them inside itself
    with ``torch.enable_grad()``.

    Args:
        guess: callable (x_t, t) -> x0 estimate with x_t's structure (for discrete
            components hard states or probabilities (..., k)).
        process: a ``bd.Process`` or a (nested) tuple, list or dict of them.
        timesteps: increasing positive times (n,); x_T sits at ``timesteps[-1]``.
        x_T: the starting state (tensor, ``bd.Masked`` or a structure of them), validated
            once before the loop.
        tracker: a ``bd.Tracker`` or any callable (t, x, x0_hat).
        generator: a ``torch.Generator``.
        progress: show a tqdm bar over the steps.

    Returns:
        the state at ``timesteps[0]``, structured like ``x_T``. The loop never synchronises
        with the device; on the host each guess is checked (shape, dtype, values) before it
        is used, and a bad one is blamed on ``guess``.
    """
    _check_callable(guess, "guess", "(x_t, t) -> x0_hat")
    if tracker is not None:
        _check_callable(tracker, "tracker", "(t, x, x0_hat)")
    map_tree(_check_start, process, (x_T,), ("x_T",))
    states = leaves(unmasked(x_T))
    times = check_timesteps(timesteps, time_dtype(*states)).to(states[0].device)
    x = x_T
    with torch.no_grad():
        for i in tqdm(range(len(times) - 1, 0, -1), disable=not progress, desc="sampling"):
            t = times[i]
            x_plain = unmasked(x)
            x0 = guess(x_plain, t)
            if tracker is not None:
                tracker(t, x_plain, x0)
            x = _bridge(process, times[i - 1], t, x0, x, generator, validate=False,
                        x0_name="guess(x_t, t)")
    return x
