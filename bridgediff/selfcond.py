r"""Self-conditioning: the model also sees its own previous estimate of x0.

The model has the signature ``model(x_t, x0_prev, t) -> x0_hat`` and returns what
``bd.standard_loss`` takes: x0 itself for continuous components, logits (..., k) for
discrete ones. Its *estimate*, the x0_prev it is fed, is that output with discrete logits
turned into probabilities (softmax over the last dimension); before any estimate exists
x0_prev is zeros of the estimate's shape (x_t's shape, or (..., k) for discrete components).
The same model serves training (``self_conditioning_input``) and sampling
(``SelfConditioned``).

Discrete components are recognised by their integer x_t. Their number of states k is not in
x_t, so both helpers take ``process`` (a process or tuple matching x_t) whenever x_t has a
discrete component; discrete processes expose ``k``, the number of data states.
"""

import torch
from torch import Tensor

from ._tree import leaves, map_data, map_tree, unmasked
from .process import time_dtype

__all__ = ["SelfConditioned", "self_conditioning_input"]


class SelfConditioned:
    """A guess for ``bd.sample_backward`` that feeds the model its previous estimate.

    Each call ``guess(x_t, t)`` returns ``model(x_t, x0_prev, t)`` as an estimate (discrete
    logits as probabilities (..., k), which the bridge marginalises over) and keeps it,
    detached, as the next call's x0_prev. The first call gets zeros.

    Args:
        model: callable ``(x_t, x0_prev, t) -> x0_hat`` (see the module's docstring).
        process: the process (or tuple) of x_t; needed only if x_t has discrete components.

    Example::

        guess = bd.SelfConditioned(model, process)
        with torch.no_grad():
            x0 = bd.sample_backward(guess, process, timesteps, x_T)
        guess.reset()  # before the next chain

    One instance remembers one chain: call ``reset()`` (or make a new one) between chains.
    """

    def __init__(self, model, process=None):
        if not callable(model):
            raise TypeError(f"model must be callable (x_t, x0_prev, t), "
                            f"got {type(model).__name__}")
        self.model = model
        self.process = process
        self.x0_prev = None

    def reset(self) -> None:
        """Forget the previous estimate: the next call starts from zeros."""
        self.x0_prev = None

    def __call__(self, x_t, t):
        x = unmasked(x_t)
        if self.x0_prev is None:
            self.x0_prev = _blank_estimate(x, self.process)
        estimate = _estimate(self.model(x, self.x0_prev, t), x)
        self.x0_prev = map_data(Tensor.detach, estimate)
        return estimate


def self_conditioning_input(model, x_t, t, *, p=0.5, generator=None, process=None):
    r"""The x0_prev input of a self-conditioned training step.

    Runs ``model(x_t, zeros, t)`` once without gradient and returns its estimate for each
    batch element with probability ``p`` and zeros for the others (one Bernoulli(p) draw
    per batch element, shared by all tuple components). The training step then computes
    ``standard_loss(process, t, model(x_t, x0_prev, t), x0)``.

    Args:
        model: callable ``(x_t, x0_prev, t) -> x0_hat`` (see the module's docstring).
        x_t: noisy data (B, ...), a tensor, ``bd.Masked`` (the model sees the plain tensor)
            or a (nested) tuple of them.
        t: the times passed to the model unchanged.
        p: probability in [0, 1] that an example gets the model's estimate.
        generator: a ``torch.Generator`` on x_t's device for the Bernoulli draws.
        process: the process (or tuple) of x_t; needed only if x_t has discrete components.

    Returns:
        x0_prev, structured like x_t (discrete components (..., k) probabilities), on x_t's
        device, without gradient.
    """
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"p must be a float, got {type(p).__name__}")
    if not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    if not callable(model):
        raise TypeError(f"model must be callable (x_t, x0_prev, t), got {type(model).__name__}")
    x = unmasked(x_t)
    zeros = _blank_estimate(x, process)
    with torch.no_grad():
        estimate = _estimate(model(x, zeros, t), x)
    first = leaves(x)[0]
    if first.ndim == 0:
        raise ValueError("x_t must have a leading batch dimension")
    keep = torch.rand(first.shape[0], generator=generator, device=first.device) < p
    return map_data(lambda e, z: torch.where(keep.reshape((-1,) + (1,) * (z.ndim - 1)), e, z),
                    estimate, zeros)


def _blank_estimate(x, process):
    """Zeros shaped like the model's estimate of the plain tensor(s) ``x``.

    Float components give zeros like x; integer (discrete) components give zeros
    (..., k) in the first float component's dtype (else the default), with k from the
    matching ``process``.
    """
    for leaf in leaves(x):
        if not isinstance(leaf, Tensor):
            raise TypeError(f"x_t must be a tensor, bd.Masked or a structure of them, "
                            f"got {type(leaf).__name__}")
    dtype = time_dtype(*leaves(x))
    if process is None:
        return map_data(lambda leaf: _blank(None, leaf, dtype), x)
    return map_tree(lambda p, leaf: _blank(p, leaf, dtype), process, (x,), ("x_t",))


def _blank(process, x: Tensor, dtype) -> Tensor:
    if x.is_floating_point():
        return torch.zeros_like(x)
    k = getattr(process, "k", None)
    if k is None:
        raise ValueError("x_t has a discrete (integer) component: pass process= (whose k, the "
                         "number of states, sets the estimate's shape (..., k))")
    return torch.zeros(x.shape + (k,), dtype=dtype, device=x.device)


def _estimate(x0_hat, x):
    """The model's output as an estimate: probabilities for discrete components."""
    def leaf(state, out):
        if not isinstance(out, Tensor):
            raise TypeError(f"model must return tensors matching x_t's structure, got "
                            f"{type(out).__name__}")
        return out if state.is_floating_point() else out.softmax(dim=-1)

    return map_data(leaf, x, x0_hat, names=["the model's output"], what="x_t")
