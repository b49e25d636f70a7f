"""The standard training loss: a per-process error, divided by a time scaler, averaged."""

import torch
from torch import Tensor

from .masked import Masked
from .process import Process, time_dtype
from .sampling import _as_time, _check_positive_times, _map_tree, _unmask

__all__ = ["standard_loss"]


def standard_loss(process, t, x0_hat, x0, *, scaler=None) -> Tensor:
    r"""Diffusions.jl's ``standardloss``: the mean over diffusing elements of loss / scaler(t).

    .. math::
        L = \frac{1}{|M|} \sum_{i \in M} \frac{\ell(\hat x_{0,i}, x_{0,i})}{c(t_{b(i)})}

    where M is the set of masked (diffusing) elements, b(i) the batch element of i, and the
    per-element loss ℓ and default scaler c are the process's ``loss`` and ``scaler``:

    * OrnsteinUhlenbeck: ℓ = (x̂ − x)², c(t) = √(1 − e^{−θt});
    * BrownianMotion: ℓ = (x̂ − x)², c(t) = √(1 − e^{−rt});
    * WrappedBrownian, WrappedInterpolatedBrownian: ℓ = (minimal angle between x̂ and x)²,
      c(t) = 2√(1 − e^{−rt/8});
    * RotationDiffusion: ℓ = (1 − a)(a − 13)² / 72 with a = |⟨q̂, q⟩| (Diffusions.jl's
      surrogate of the squared angle, /4), c(t) = √(1 − e^{−5rt});
    * discrete processes: ℓ = cross-entropy of logits x̂ at state x, · 1.44 k/(k − 1);
      c(t) = √(1 − e^{−rt}), r the rate (GeneralDiscrete: the mean exit rate).

    Args:
        process: a ``bd.Process`` or a (nested) tuple of them; for a tuple the result is the
            sum of the components' losses.
        t: positive time of each example: a float, 0-d tensor or 1-D tensor of length B.
        x0_hat: the model's prediction, structured like ``x0``: for discrete components logits
            (..., k); for rotations unit quaternions (..., 4).
        x0: the data (B, ...), a tensor or ``bd.Masked``. Only elements whose mask is True
            count; the mask comes from ``x0``, else from ``x0_hat`` if that is ``bd.Masked``.
            A component with no masked element contributes 0.
        scaler: optional callable ``(process, t) -> tensor`` replacing ``process.scaler``; it
            receives t on the data's device and dtype, 0-d or shaped (B, 1, ..., 1) like the
            state, and is applied to every leaf of a tuple.

    Returns:
        a 0-d tensor, differentiable with respect to ``x0_hat``.
    """
    losses = _map_tree(lambda p, a, b: _leaf_loss(p, t, a, b, scaler),
                       process, (x0_hat, x0), ("x0_hat", "x0"))
    return _total(losses)


def _total(losses):
    return sum(_total(c) for c in losses) if isinstance(losses, tuple) else losses


def _leaf_loss(process: Process, t, x0_hat, x0, scaler) -> Tensor:
    x, mask = _unmask(x0, process, "x0")
    if isinstance(x0_hat, Masked):
        mask = x0_hat.mask if mask is None else mask
        x0_hat = x0_hat.x
    if not isinstance(x0_hat, Tensor):
        raise TypeError(f"x0_hat must be a tensor or bd.Masked, got {type(x0_hat).__name__}")
    process.check_state(x, "x0")
    state_shape = x.shape[:x.ndim - process.event_ndim]
    if x0_hat.shape[:len(state_shape)] != state_shape:  # would broadcast silently
        raise ValueError(f"x0_hat of shape {tuple(x0_hat.shape)} does not fit x0 of shape "
                         f"{tuple(x.shape)} for {type(process).__name__}")
    if mask is not None and mask.shape != state_shape:
        raise ValueError(f"x0_hat's mask has shape {tuple(mask.shape)}, expected "
                         f"{tuple(state_shape)} for {type(process).__name__}")
    tt = _as_time(t, x, time_dtype(x0_hat, x), "t")
    _check_positive_times(tt, "t")
    loss = process.loss(x0_hat, x)
    scale = process.scaler(tt) if scaler is None else scaler(process, tt)
    per_element = loss / _per_batch(scale, loss)
    if mask is None:
        return per_element.mean()
    total = torch.where(mask, per_element, 0).sum()
    return total / mask.sum().clamp(min=1)


def _per_batch(scale: Tensor, loss: Tensor) -> Tensor:
    """Bring a scaler shaped like the state, (B, 1, ..., 1), to the loss's rank.

    Rotations' states have one more (event) dimension than their loss. A scaler that
    underflows to 0 (t below ~1e-38) is floored so that a perfect prediction costs 0, not NaN.
    """
    scale = torch.as_tensor(scale, dtype=loss.dtype, device=loss.device)
    if scale.ndim > loss.ndim:
        scale = scale.reshape(scale.shape[:loss.ndim])
    return scale.clamp(min=torch.finfo(loss.dtype).tiny)
