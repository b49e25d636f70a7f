"""The free functions: validation, tuple and mask dispatch, and the backward sampler.

Processes implement the mathematics on plain tensors (see ``bd.Process``); everything
here is written once for all of them.
"""

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._util import on_host
from .masked import Masked
from .process import Process, time_dtype

__all__ = ["sample_forward", "endpoint_conditioned_sample", "sample_backward",
           "sample_equilibrium", "Tracker"]


# ---------------------------------------------------------------- tuples and masks

def _map_tree(fn, process, args, names):
    """Apply ``fn(leaf_process, *leaf_args)`` over a (nested) tuple of processes."""
    if isinstance(process, tuple):
        for a, name in zip(args, names):
            if not isinstance(a, tuple):
                raise TypeError(f"{name} must be a tuple of {len(process)} components to match "
                                f"the tuple of processes, got {type(a).__name__}")
            if len(a) != len(process):
                raise ValueError(f"{name} has {len(a)} components but the tuple of processes "
                                 f"has {len(process)}")
        return tuple(_map_tree(fn, p, tuple(a[i] for a in args), names)
                     for i, p in enumerate(process))
    if not isinstance(process, Process):
        raise TypeError(f"process must be a bd.Process or a tuple of them, "
                        f"got {type(process).__name__}")
    return fn(process, *args)


def _unmask(x, process: Process, name: str):
    """Split a leaf into (tensor, mask or None), checking the mask's shape."""
    if isinstance(x, Masked):
        data, mask = x.x, x.mask
        expected = data.shape[:data.ndim - process.event_ndim]
        if mask.shape != expected:
            raise ValueError(f"{name}'s mask has shape {tuple(mask.shape)}, expected "
                             f"{tuple(expected)} for {type(process).__name__}")
        return data, mask
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor or bd.Masked, got {type(x).__name__}")
    return x, None


def _remask(new: Tensor, old: Tensor, mask, process: Process):
    """Keep ``old`` where ``mask`` is False; wrap the result like the input was."""
    if mask is None:
        return new
    keep = mask.reshape(mask.shape + (1,) * process.event_ndim)
    return Masked(torch.where(keep, new, old), mask)


def _strip(x):
    """The plain tensors of a (nested) tuple of possibly masked leaves."""
    if isinstance(x, tuple):
        return tuple(_strip(c) for c in x)
    return x.x if isinstance(x, Masked) else x


# ---------------------------------------------------------------- times

def _as_time(t, like: Tensor, dtype: torch.dtype, name: str) -> Tensor:
    """``t`` as a tensor on ``like``'s device that broadcasts against it: 0-d or (B, 1, ..., 1)."""
    if isinstance(t, bool) or not isinstance(t, (int, float, Tensor)):
        raise TypeError(f"{name} must be a float or a tensor, got {type(t).__name__}")
    if isinstance(t, Tensor):
        t = t.to(device=like.device, dtype=dtype)
    else:  # torch.full fills on the device; a copy from the host would synchronise with it
        t = torch.full((), t, dtype=dtype, device=like.device)
    if t.ndim == 1:
        if like.ndim == 0 or t.shape[0] != like.shape[0]:
            batch = like.shape[0] if like.ndim else "none (0-d data)"
            raise ValueError(f"{name} has length {t.shape[0]}, but the batch size (the data's "
                             f"leading dimension) is {batch}")
        return t.reshape((-1,) + (1,) * (like.ndim - 1))
    if t.ndim != 0:
        raise ValueError(f"{name} must be a scalar or a 1-D tensor of one time per batch "
                         f"element, got shape {tuple(t.shape)}")
    return t


def _check_positive_times(t: Tensor, name: str) -> None:
    if on_host(t) and not bool(((t > 0) & torch.isfinite(t)).all()):
        raise ValueError(f"{name} must be positive and finite, got {t.flatten()[:8].tolist()}")


def _check_order(s: Tensor, t: Tensor) -> None:
    if on_host(t) and not bool((s < t).all()):
        raise ValueError("s must be smaller than t (elementwise, in the data's dtype)")


# ---------------------------------------------------------------- forward

def _forward_leaf(process: Process, t, x0, generator):
    x, mask = _unmask(x0, process, "x0")
    process.check_state(x, "x0")
    tt = _as_time(t, x, time_dtype(x), "t")
    _check_positive_times(tt, "t")
    return _remask(process.sample_forward(tt, x, generator), x, mask, process)


def sample_forward(process, t, x0, *, generator=None):
    """Draw x_t ~ p(x_t | x_0 = x0) by running ``process`` forward for time ``t``.

    Args:
        process: a ``bd.Process`` or a (nested) tuple of them.
        t: positive time; a float, a 0-d tensor or a 1-D tensor of length B (one per
            batch element), shared by every tuple component.
        x0: data, a tensor (B, ...) or ``bd.Masked`` (unmasked elements are kept), or a
            tuple of them matching ``process``.
        generator: a ``torch.Generator`` for reproducible draws.

    Returns:
        x_t with the structure, device and dtype of ``x0``.
    """
    return _map_tree(lambda p, x: _forward_leaf(p, t, x, generator), process, (x0,), ("x0",))


# ---------------------------------------------------------------- bridge

def _bridge_leaf(process: Process, s, t, x0, x_t, generator, validate: bool):
    xt, mask = _unmask(x_t, process, "x_t")
    x0 = x0.x if isinstance(x0, Masked) else x0  # the guess's x0 inherits x_t's mask
    if not isinstance(x0, Tensor):
        raise TypeError(f"x0 must be a tensor or bd.Masked, got {type(x0).__name__}")
    process.check_endpoints(x0, xt)
    dtype = time_dtype(x0, xt)
    ss, tt = _as_time(s, xt, dtype, "s"), _as_time(t, xt, dtype, "t")
    if validate:
        process.check_state(xt, "x_t")
        _check_positive_times(ss, "s")
        _check_order(ss, tt)
    return _remask(process.endpoint_conditioned_sample(ss, tt, x0, xt, generator),
                   xt, mask, process)


def _bridge(process, s, t, x0, x_t, generator, validate: bool, x0_name="x0"):
    return _map_tree(lambda p, a, b: _bridge_leaf(p, s, t, a, b, generator, validate),
                     process, (x0, x_t), (x0_name, "x_t"))


def endpoint_conditioned_sample(process, s, t, x0, x_t, *, generator=None):
    """Draw x_s from the bridge p(x_s | x_0 = x0, x_t) for 0 < s < t.

    Args:
        process: a ``bd.Process`` or a (nested) tuple of them.
        s, t: times with 0 < s < t; each a float, 0-d tensor or 1-D tensor of length B.
        x0: the clean endpoint (for discrete processes, hard states or probabilities
            (..., k)); its mask, if any, is ignored in favour of ``x_t``'s.
        x_t: the noisy endpoint, a tensor or ``bd.Masked``; unmasked elements are returned
            unchanged.
        generator: a ``torch.Generator``.

    Returns:
        x_s with the structure, device and dtype of ``x_t``.
    """
    return _bridge(process, s, t, x0, x_t, generator, validate=True)


# ---------------------------------------------------------------- equilibrium

def _equilibrium_leaf(process: Process, like, generator, device, dtype):
    if isinstance(like, (Tensor, Masked)):
        x, mask = _unmask(like, process, "shape_or_like")
        out = process.sample_equilibrium(x.shape, generator=generator,
                                         device=device or x.device, dtype=dtype or x.dtype)
        return _remask(out, x, mask, process)
    shape = (like,) if isinstance(like, int) else like
    if not isinstance(shape, (tuple, torch.Size)) or not all(isinstance(n, int) for n in shape):
        raise TypeError(f"shape_or_like must be a shape, a tensor or bd.Masked, got {like!r}")
    return process.sample_equilibrium(torch.Size(shape), generator=generator,
                                      device=device, dtype=dtype)


def sample_equilibrium(process, shape_or_like, *, generator=None, device=None, dtype=None):
    """Draw from the process's stationary law.

    Args:
        process: a ``bd.Process`` or a (nested) tuple of them.
        shape_or_like: a shape, or a tensor whose shape, device and dtype are used (a
            ``bd.Masked`` keeps its unmasked elements: the start of a conditional chain);
            for a tuple of processes, a tuple of these.
        device, dtype: override the device and dtype (the process's default dtype if neither
            these nor a tensor give one).
    """
    if isinstance(process, tuple) and not isinstance(shape_or_like, tuple):
        raise TypeError("shape_or_like must be a tuple matching the tuple of processes")
    return _map_tree(lambda p, like: _equilibrium_leaf(p, like, generator, device, dtype),
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


def _check_timesteps(timesteps, dtype: torch.dtype) -> Tensor:
    """Validate on the host, in the dtype the steps will use (so no two steps collapse)."""
    if isinstance(timesteps, Tensor):
        times = timesteps.detach().to("cpu", dtype)
    else:
        times = torch.as_tensor(timesteps, dtype=dtype, device="cpu")
    if times.ndim != 1 or times.numel() < 1:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence, got shape "
                         f"{tuple(times.shape)}")
    if not bool(((times > 0) & torch.isfinite(times)).all()):
        raise ValueError("timesteps must be positive and finite")
    if not bool((times[1:] > times[:-1]).all()):
        raise ValueError("timesteps must be strictly increasing (x_T sits at timesteps[-1])")
    return times


def _first_leaf(x) -> Tensor:
    while isinstance(x, tuple):
        x = x[0]
    return x.x if isinstance(x, Masked) else x


def sample_backward(guess, process, timesteps, x_T, *, tracker=None, generator=None,
                    progress=False):
    """Generate by stepping backward through ``timesteps`` with bridges to guessed x0.

    For i = n-1, ..., 1: ``x0_hat = guess(x, t_i)`` (x with masks removed, t_i a 0-d
    tensor on x's device), ``tracker(t_i, x, x0_hat)`` if given, then
    x ~ p(x_{t_{i-1}} | x_0 = x0_hat, x_{t_i} = x). If ``guess`` draws x0 from the exact
    posterior p(x0 | x_t), every step is an exact reverse transition.

    Args:
        guess: callable (x_t, t) -> x0 estimate with x_t's structure (for discrete
            components hard states or probabilities (..., k)).
        process: a ``bd.Process`` or a (nested) tuple of them.
        timesteps: increasing positive times (n,); x_T sits at ``timesteps[-1]``.
        x_T: the starting state (tensor, ``bd.Masked`` or tuple of them).
        tracker: a ``bd.Tracker`` or any callable (t, x, x0_hat).
        generator: a ``torch.Generator``.
        progress: show a tqdm bar over the steps.

    Returns:
        the state at ``timesteps[0]``, structured like ``x_T``. The loop never synchronises
        with the device.
    """
    leaf = _first_leaf(x_T)
    if not isinstance(leaf, Tensor):
        raise TypeError(f"x_T must be a tensor, bd.Masked or a tuple of them, "
                        f"got {type(leaf).__name__}")
    times = _check_timesteps(timesteps, time_dtype(leaf)).to(leaf.device)
    x = x_T
    for i in tqdm(range(len(times) - 1, 0, -1), disable=not progress, desc="sampling"):
        t = times[i]
        x_plain = _strip(x)
        x0 = guess(x_plain, t)
        if tracker is not None:
            tracker(t, x_plain, x0)
        x = _bridge(process, times[i - 1], t, x0, x, generator, validate=False,
                    x0_name="guess(x_t, t)")
    return x
