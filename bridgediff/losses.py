"""The standard training loss: a per-process error, divided by a time scaler, averaged."""

import torch
from torch import Tensor

from ._tree import check_mask, leaves, map_tree, split, state_mask
from ._util import on_host
from .masked import Masked
from .process import Process, time_dtype
from .sampling import as_time, check_positive

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
    * RotationDiffusion: ℓ = (1 − a)(a − 13)² / 72 with a = |⟨q̂, q⟩| / (|q̂| |q|)
      (Diffusions.jl's surrogate of the squared angle, /4; q̂ normalised, so ℓ ≥ 0 with
      equality only at ±q), c(t) = √(1 − e^{−5rt});
    * SphereBrownian: ℓ = |x̂/|x̂| − x|² (the squared chord), c(t) = √(1 − e^{−rt});
    * CenteredOrnsteinUhlenbeck: as OrnsteinUhlenbeck; TimeChanged(P, τ): P's ℓ and c(τ(t));
    * discrete processes: ℓ = cross-entropy of logits x̂ at state x, · 1.44 k/(k − 1);
      c(t) = √(1 − e^{−rt}), r the rate (GeneralDiscrete: the mean exit rate).

    Args:
        process: a ``bd.Process`` or a (nested) tuple, list or dict of them; for a structure
            the result is the sum of the components' losses.
        t: positive time of each example: a real number, 0-d tensor or 1-D tensor of length
            B, or a structure matching ``process`` (one time per component).
        x0_hat: the model's prediction, structured like ``x0``: for discrete components logits
            (..., k) (probabilities are refused: pass their log); for rotations quaternions
            (..., 4), normalised inside the loss.
        x0: the data (B, ...), a tensor or ``bd.Masked``. Only elements whose mask is True
            count; the mask comes from ``x0``, else from ``x0_hat`` if that is ``bd.Masked``.
            A component with no masked element (or no element at all) contributes 0.
        scaler: optional callable ``(process, t) -> tensor`` replacing ``process.scaler``; it
            receives t on the data's device and dtype, 0-d or shaped (B, 1, ..., 1) like the
            state, and must return a tensor that broadcasts like t: 0-d, (B,), or
            (B, 1, ..., 1). One callable serves every leaf of a structure; a structure of
            callables matching ``process`` gives each component its own (None: the
            process's default).

    Returns:
        a 0-d tensor, differentiable with respect to ``x0_hat``.
    """
    losses = map_tree(lambda p, a, b, tt, c: _leaf_loss(p, tt, a, b, c),
                      process, (x0_hat, x0, t, scaler), ("x0_hat", "x0", "t", "scaler"),
                      shared=(2, 3))
    return sum(leaves(losses))


def _leaf_loss(process: Process, t, x0_hat, x0, scaler) -> Tensor:
    if scaler is not None and not callable(scaler):
        raise TypeError(f"scaler must be callable (process, t) -> tensor, or a structure of "
                        f"them matching the processes, got {type(scaler).__name__}")
    x, mask = split(x0, process, "x0")
    if isinstance(x0_hat, Masked):
        if mask is None:
            check_mask(x0_hat.mask, x, process, "x0_hat")
            mask = x0_hat.mask
        x0_hat = x0_hat.x
    if not isinstance(x0_hat, Tensor):
        raise TypeError(f"x0_hat must be a tensor or bd.Masked, got {type(x0_hat).__name__}")
    process.check_state(x, "x0")
    process.check_prediction(x0_hat, x)
    tt = as_time(t, x, process, time_dtype(x0_hat, x), "t")
    check_positive(tt, "t")
    loss = process.loss(x0_hat, x)
    state = x.shape[:x.ndim - process.event_ndim]
    if not isinstance(loss, Tensor) or loss.shape != state:
        got = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise TypeError(f"{type(process).__name__}.loss must return one loss per element, "
                        f"shape {tuple(state)}, got {got}")
    scale = process.scaler(tt) if scaler is None else scaler(process, tt)
    per_element = loss / _per_batch(scale, loss, tt)
    if mask is None:
        return per_element.sum() / max(per_element.numel(), 1)
    keep = state_mask(mask, x, process)
    return torch.where(keep, per_element, 0).sum() / keep.sum().clamp(min=1)


def _per_batch(scale, loss: Tensor, t: Tensor) -> Tensor:
    """A scaler's value as a tensor that broadcasts against the loss, one value per batch
    element: 0-d, (B,) or (B, 1, ..., 1) of the state's or the data's rank.

    A scaler that underflows to 0 (t below ~1e-38) is floored so that a perfect prediction
    costs 0, not NaN.
    """
    try:
        scale = torch.as_tensor(scale, dtype=loss.dtype, device=loss.device)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"the scaler must return a tensor or a number, got "
                        f"{type(scale).__name__}") from None
    if on_host(scale) and bool((scale < 0).any() | scale.isnan().any()):
        raise ValueError("the scaler returned negative or NaN values; a scaler divides the "
                         "loss and must be positive")
    if scale.ndim > 0:
        batch = t.shape[0] if t.ndim else None
        per_row = scale.shape[0] == batch and all(n == 1 for n in scale.shape[1:])
        if not per_row or loss.ndim == 0:
            raise ValueError(f"the scaler returned shape {tuple(scale.shape)}; expected a "
                             f"scalar or one value per batch element, like t "
                             f"{tuple(t.shape)}")
        scale = scale.reshape((-1,) + (1,) * (loss.ndim - 1))
    return scale.clamp(min=torch.finfo(loss.dtype).tiny)
