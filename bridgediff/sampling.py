"""The free functions: validation, structure and mask dispatch, and the backward sampler.

Processes implement the mathematics on plain tensors (see ``bd.Process``); everything
here is written once for all of them.
"""

import numbers
import operator

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ._tree import (_check_match, _rebuild, children, is_node, leaves, map_data, map_tree,
                    rewrap, split, unmasked)
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

def _bridge_leaf(process: Process, s, t, x0, x_t, eta, generator, validate: bool,
                 x0_name: str):
    eta = check_eta(eta)
    xt, mask = split(x_t, process, "x_t")
    x0 = x0.x if isinstance(x0, Masked) else x0  # the guess's x0 inherits x_t's mask
    if not isinstance(x0, Tensor):
        raise TypeError(f"{x0_name} must be a tensor or bd.Masked, got {type(x0).__name__}")
    if validate:
        process.check_state(xt, "x_t")
    check_endpoints(process, x0, xt, x0_name)
    dtype = time_dtype(xt, x0)
    ss, tt = as_time(s, xt, process, dtype, "s"), as_time(t, xt, process, dtype, "t")
    if validate:
        check_positive(ss, "s")
        check_positive(tt, "t")
        check_order(ss, tt)
    if eta == 1:
        out = process.endpoint_conditioned_sample(ss, tt, x0, xt, generator)
        return rewrap(_cast(out, xt, process, "endpoint_conditioned_sample"), xt, mask, process)
    out = process.eta_bridge(ss, tt, x0, xt, eta, generator)
    return rewrap(_cast(out, xt, process, "eta_bridge"), xt, mask, process)


def check_eta(eta) -> float:
    """``eta`` as a float in [0, 1] (a real number; tensors are refused: no sync)."""
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real):
        raise TypeError(f"eta must be a real number in [0, 1] (or a structure of them matching "
                        f"the processes), got {type(eta).__name__}")
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must lie in [0, 1] (1: the bridge, 0: the deterministic DDIM "
                         f"step), got {eta!r}")
    return float(eta)


def check_endpoints(process: Process, x0: Tensor, xt: Tensor, x0_name: str) -> None:
    """``process.check_endpoints``, its message naming ``x0_name`` (the guess, in a chain)."""
    if x0_name == "x0":
        process.check_endpoints(x0, xt)
        return
    try:
        process.check_endpoints(x0, xt)
    except (TypeError, ValueError) as error:
        raise type(error)(f"{x0_name} returned an invalid x0: {error}") from None


def endpoint_conditioned_sample(process, s, t, x0, x_t, *, generator=None, eta=1.0):
    r"""Draw x_s from the bridge p(x_s | x_0 = x0, x_t) for 0 < s < t, or take an eta-step.

    With ``eta`` < 1 (Gaussian processes: OU, Brownian motion and time changes of them) the
    step keeps the marginal instead of the bridge: with forward law N(m_u(x0), v_u) and
    bridge variance b,

    .. math::
        x_s = m_s + \sqrt{(v_s - \eta^2 b)/v_t}\,(x_t - m_t) + \eta\sqrt{b}\, z,

    so x_t ~ forward(t, x0) gives x_s ~ forward(s, x0) for every eta; eta = 1 is the bridge
    (the process's ``endpoint_conditioned_sample`` itself), eta = 0 DDIM's deterministic
    step (no draw).

    Args:
        process: a ``bd.Process`` or a (nested) tuple, list or dict of them.
        s, t: times with 0 < s < t; each a real number, 0-d tensor or 1-D tensor of length
            B, or a structure matching ``process`` (one time per component).
        x0: the clean endpoint (for discrete processes, hard states or probabilities
            (..., k)); its mask, if any, is ignored in favour of ``x_t``'s.
        x_t: the noisy endpoint, a tensor or ``bd.Masked``; held elements are returned
            unchanged.
        generator: a ``torch.Generator``.
        eta: a real number in [0, 1], or a structure matching ``process``; a process without
            an eta-step (``eta_bridge``) raises ValueError for eta != 1.

    Returns:
        x_s with the structure, device and dtype of ``x_t``.
    """
    return _bridge(process, s, t, x0, x_t, generator, validate=True, eta=eta)


def _bridge(process, s, t, x0, x_t, generator, validate: bool, x0_name: str = "x0", eta=1.0):
    """The bridge (or eta-step) over a structure; ``validate`` checks x_t and the times (the
    backward loop checks them once, before it starts)."""
    return map_tree(
        lambda p, a, b, ss, tt, e: _bridge_leaf(p, ss, tt, a, b, e, generator, validate,
                                                x0_name),
        process, (x0, x_t, s, t, eta), (x0_name, "x_t", "s", "t", "eta"), shared=(2, 3, 4),
        out=1)


# ---------------------------------------------------------------- renoising

def _transition_leaf(process: Process, s, t, x_s, generator):
    x, mask = split(x_s, process, "x_s")
    dtype = time_dtype(x)
    ss, tt = as_time(s, x, process, dtype, "s"), as_time(t, x, process, dtype, "t")
    out = _cast(process.forward_transition(ss, tt, x, generator), x, process,
                "forward_transition")
    return rewrap(out, x, mask, process)


def _transition(process, s, t, x_s, generator):
    """x_t ~ p(x_t | x_s) over a structure, held elements kept (times checked by the loop)."""
    return map_tree(lambda p, x, ss, tt: _transition_leaf(p, ss, tt, x, generator),
                    process, (x_s, s, t), ("x_s", "s", "t"), shared=(1, 2))


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
        if dtype is None or (dtype.is_floating_point and not x.dtype.is_floating_point):
            dtype = x.dtype        # a float override is for the float components only
        out = process.sample_equilibrium(x.shape, generator=generator,
                                         device=device or x.device, dtype=dtype)
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
            these nor a tensor give one); a floating dtype does not change integer states (a
            structure shares one ``dtype``).
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

    ``sample_backward`` calls it as ``tracker(t, x, x0_hat)`` after each guess, from the
    largest time down (with correctors, their guesses too, at the time they renoise to; with
    one grid per component, t is the structure of the components' times); any callable of
    that signature can serve instead.
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
        collapsed = ""
        original = (timesteps.detach().cpu().double() if isinstance(timesteps, Tensor)
                    else torch.as_tensor(timesteps, dtype=torch.float64))
        if bool((original[1:] > original[:-1]).all()):
            collapsed = (f"; they are, but steps run in {dtype} (the data's), where some "
                         f"of them round to the same time")
        raise ValueError(f"{name} must be strictly increasing (x_T sits at the last time)"
                         f"{collapsed}")
    return times


def _check_callable(f, name: str, signature: str) -> None:
    if not callable(f):
        raise TypeError(f"{name} must be callable {signature}, got {type(f).__name__}")


def _check_start(process: Process, x):
    data, _ = split(x, process, "x_T")
    process.check_state(data, "x_T")


def _check_correctors(correctors) -> int:
    try:
        k = operator.index(correctors)
    except TypeError:
        raise TypeError(f"correctors must be a non-negative integer, got "
                        f"{type(correctors).__name__}") from None
    if isinstance(correctors, bool) or k < 0:
        raise ValueError(f"correctors must be a non-negative integer, got {correctors!r}")
    return k


def _one_grid_per_component(process, timesteps) -> bool:
    """Whether ``timesteps`` is a structure of grids matching ``process`` rather than one
    grid shared by every component (a flat sequence of numbers)."""
    if isinstance(process, Process) or not is_node(timesteps):
        return False
    return isinstance(timesteps, dict) or any(
        is_node(g) or getattr(g, "ndim", 0) >= 1 for g in timesteps)


def _grid_per_leaf(process, timesteps, name: str = "timesteps"):
    """``timesteps`` as a structure with one grid per leaf process: a grid given for a
    sub-structure is shared by its components (as a shared t or eta is)."""
    if not is_node(process):
        return timesteps
    if not _one_grid_per_component(process, timesteps):
        return map_data(lambda p: timesteps, process)
    _check_match(process, timesteps, name)
    keys = [k for k, _ in children(process)]
    return _rebuild(process, keys, [_grid_per_leaf(process[k], timesteps[k], f"{name}[{k!r}]")
                                    for k in keys])


def _time_grids(process, timesteps, x_T):
    """The grid(s), checked on the host in the dtype each component's times take and moved
    to its device: (n, times_at), where ``times_at(i)`` gives step i's time, a 0-d tensor
    (one shared grid) or a structure of them matching ``process`` (one grid per component)."""
    if not _one_grid_per_component(process, timesteps):
        states = leaves(unmasked(x_T))
        promoted = time_dtype(*states)
        for dtype in {time_dtype(x) for x in states} - {promoted}:   # nor in a narrower one
            check_timesteps(timesteps, dtype)
        times = check_timesteps(timesteps, promoted).to(states[0].device)
        return len(times), times.__getitem__

    def grid(p, x, ts):
        data, _ = split(x, p, "x_T")
        return check_timesteps(ts, time_dtype(data), "a grid of timesteps").to(data.device)

    grids = map_tree(grid, process, (x_T, _grid_per_leaf(process, timesteps)),
                     ("x_T", "timesteps"))
    lengths = sorted({len(g) for g in leaves(grids)})
    if len(lengths) != 1:
        raise ValueError(f"the grids of timesteps (one per component) must have one length, "
                         f"got lengths {lengths}")
    return lengths[0], lambda i: map_data(lambda g: g[i], grids)


def _noised_held(process, t, x, x_T, generator):
    """The plain state ``x`` with its held elements (mask False in ``x_T``) replaced by a
    fresh draw from forward(t, their clean values in x_T): RePaint's known part."""
    def leaf(p, state, start, tt):
        if not isinstance(start, Masked):
            return state
        clean = start.x
        tt = as_time(tt, clean, p, time_dtype(clean), "t")
        noised = _cast(p.sample_forward(tt, clean, generator), clean, p, "sample_forward")
        return rewrap(state, noised, start.mask, p).x

    return map_tree(leaf, process, (x, x_T, t), ("x", "x_T", "t"), shared=(2,))


def _with_clean_held(process, x, x_T):
    """``x`` wrapped with ``x_T``'s masks, its held elements set to x_T's (clean) values."""
    def leaf(p, state, start):
        return rewrap(state, start.x, start.mask, p) if isinstance(start, Masked) else state

    return map_tree(leaf, process, (x, x_T), ("x", "x_T"))


def sample_backward(guess, process, timesteps, x_T, *, tracker=None, generator=None,
                    progress=False, eta=1.0, correctors=0, repaint=False):
    r"""Generate by stepping backward through ``timesteps`` with bridges to guessed x0.

    For i = n-1, ..., 1, with s = t_{i-1} < t = t_i: ``x0_hat = guess(x, t)`` (x with masks
    removed, t a 0-d tensor on x's device), ``tracker(t, x, x0_hat)`` if given, then
    x ~ p(x_s | x_0 = x0_hat, x_t = x) (or the eta-step). If ``guess`` draws x0 from the exact
    posterior p(x0 | x_t), every step is an exact reverse transition.

    Options (each off by default):

    * ``eta``: the eta-step of ``bd.endpoint_conditioned_sample`` in place of the bridge
      (Gaussian processes; 0 is DDIM's deterministic sampler).
    * ``correctors`` = k: after each step, k moves that renoise the state from s back to t
      (x' ~ p(x_t | x_s), the process's ``forward_transition``) and step down again from a
      fresh guess at t: x ~ p(x_s | x0 = guess(x', t), x'). The renoising distance is the step
      just taken, so the guesses stay on the grid. Each move leaves p_s invariant when the
      guess is an exact posterior sample; with an approximate guess it pulls the state back
      towards p_s (a predictor-corrector scheme). Cost: 1 + k guesses per step.
    * ``repaint``: zero-shot inpainting (RePaint, Lugmayr et al. 2022) for a model trained
      without masks. The held elements (mask False in ``x_T``) are not held at their clean
      values during the chain: before each step's guess they are a fresh draw from
      forward(t, clean value) (before a corrector's guess, the renoised previous draw: the
      same law, as in RePaint), so the guess sees a state at one noise level; the free
      elements follow the bridges, and the correctors become RePaint's resampling rounds (the
      whole state renoised, the held part then redrawn from its clean values). The returned
      state holds the clean values at held elements. Without ``repaint`` the guess sees the
      clean held values (what a model trained with masks expects).
    * per-component times: for a structure of processes, ``timesteps`` may be a matching
      structure of grids (a grid given for a sub-structure is shared by its components), all
      of one length n, each increasing: component c steps along its
      own grid (fold, inverse-fold or co-design with different noise levels per component),
      and ``guess`` and ``tracker`` receive t as the matching structure of 0-d tensors.

    The loop runs under ``torch.no_grad()``, so no autograd graph builds up across steps; a
    guess that needs gradients (guidance by a classifier, say) enables them inside itself
    with ``torch.enable_grad()``.

    Args:
        guess: callable (x_t, t) -> x0 estimate with x_t's structure (for discrete
            components hard states or probabilities (..., k)); ``bd.Guided`` combines two.
        process: a ``bd.Process`` or a (nested) tuple, list or dict of them.
        timesteps: increasing positive times (n,), x_T sitting at ``timesteps[-1]``; or, for a
            structure of processes, a matching structure of such grids, each of length n.
        x_T: the starting state (tensor, ``bd.Masked`` or a structure of them), validated
            once before the loop.
        tracker: a ``bd.Tracker`` or any callable (t, x, x0_hat), called after each guess
            (the correctors' too).
        generator: a ``torch.Generator``.
        progress: show a tqdm bar over the steps.
        eta: a real number in [0, 1] or a structure of them matching ``process`` (1: the
            bridge).
        correctors: the number k >= 0 of renoise-and-step-back moves after each step.
        repaint: zero-shot inpainting of the held elements, as above; needs a ``bd.Masked``
            somewhere in ``x_T``.

    Returns:
        the state at ``timesteps[0]``, structured like ``x_T``, after (n − 1)(1 + k)
        guesses. The loop never synchronises with the device; on the host each guess is
        checked (shape, dtype, values) before it is used, and a bad one is blamed on ``guess``.
    """
    _check_callable(guess, "guess", "(x_t, t) -> x0_hat")
    if tracker is not None:
        _check_callable(tracker, "tracker", "(t, x, x0_hat)")
    map_tree(_check_start, process, (x_T,), ("x_T",))
    map_tree(lambda p, e: check_eta(e), process, (eta,), ("eta",), shared=(0,))
    correctors = _check_correctors(correctors)
    if not isinstance(repaint, bool):
        raise TypeError(f"repaint must be True or False, got {type(repaint).__name__}")
    if repaint and not any(isinstance(leaf, Masked) for leaf in leaves(x_T)):
        raise ValueError("repaint=True inpaints the held elements of x_T: pass x_T (or a "
                         "component of it) as bd.masked(x, mask), mask False where held")
    n, times_at = _time_grids(process, timesteps, x_T)

    def step(x, s, t):
        plain = unmasked(x)
        x0 = guess(plain, t)
        if tracker is not None:
            tracker(t, plain, x0)
        x = _bridge(process, s, t, x0, x, generator, validate=False, x0_name="guess(x_t, t)",
                    eta=eta)
        return _noised_held(process, s, x, x_T, generator) if repaint else x

    with torch.no_grad():
        x = _noised_held(process, times_at(n - 1), unmasked(x_T), x_T, generator) if repaint \
            else x_T
        for i in tqdm(range(n - 1, 0, -1), disable=not progress, desc="sampling"):
            s, t = times_at(i - 1), times_at(i)
            x = step(x, s, t)
            for _ in range(correctors):
                x = step(_transition(process, s, t, x, generator), s, t)
    return _with_clean_held(process, x, x_T) if repaint else x
