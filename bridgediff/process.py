"""The process protocol: what a space must provide to be diffused."""

import torch
from torch import Tensor


class Process:
    r"""Base class of every diffusion process.

    A process noises data forward in time (t = 0 is data) and can sample its bridge
    p(x_s | x_0, x_t) for 0 < s < t. A new process implements, on plain tensors,

    * ``sample_forward(t, x0, generator)``: a draw of x_t ~ p(x_t | x_0);
    * ``endpoint_conditioned_sample(s, t, x0, x_t, generator)``: a draw of
      x_s ~ p(x_s | x_0, x_t);

    and optionally ``sample_equilibrium(shape, generator=, device=, dtype=)``. The free
    functions (``bd.sample_forward``, ``bd.endpoint_conditioned_sample``, ...) validate the
    arguments, unwrap masks and tuples, and pass ``s`` and ``t`` as tensors on the data's
    device, in its float dtype, that broadcast against the data: 0-d, or (B, 1, ..., 1).
    Batching of t, masks, tuples and ``sample_backward`` then need no further code.

    Class attribute ``event_ndim``: the number of trailing dimensions that form one element
    (0 for scalars, 1 for quaternions); masks have the data's shape without them.

    Example::

        class Drift(bd.Process):                       # x_t = x0 + t, deterministic
            def sample_forward(self, t, x0, generator=None):
                return x0 + t
            def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
                return x0 + s
    """

    event_ndim: int = 0

    def sample_forward(self, t: Tensor, x0: Tensor, generator=None) -> Tensor:
        """Draw x_t ~ p(x_t | x_0 = x0). ``t`` broadcasts against ``x0``."""
        raise NotImplementedError(f"{type(self).__name__} must implement sample_forward")

    def endpoint_conditioned_sample(self, s: Tensor, t: Tensor, x0: Tensor, x_t: Tensor,
                                    generator=None) -> Tensor:
        """Draw x_s ~ p(x_s | x_0 = x0, x_t) for 0 < s < t."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement endpoint_conditioned_sample")

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None) -> Tensor:
        """Draw from the stationary law, a tensor of the given shape."""
        raise ValueError(f"{type(self).__name__} has no equilibrium distribution; start the "
                         f"backward chain from sample_forward(process, T, x0) instead")

    def sample_backward(self, guess, timesteps, x_T, *, tracker=None, generator=None,
                        progress=False):
        """Same as ``bd.sample_backward(guess, self, timesteps, x_T, ...)``."""
        from .sampling import sample_backward
        return sample_backward(guess, self, timesteps, x_T, tracker=tracker,
                               generator=generator, progress=progress)

    # Hooks for validation and training; subclasses override what applies to them.

    def check_state(self, x: Tensor, name: str) -> None:
        """Raise TypeError or ValueError if ``x`` is not a valid state tensor.

        Called by the free functions on their inputs; value checks should run only for CPU
        tensors so that no call synchronises with an accelerator.
        """

    def check_endpoints(self, x0: Tensor, x_t: Tensor) -> None:
        """Raise ValueError if a bridge's x0 does not fit x_t (default: same shape)."""
        if x0.shape != x_t.shape:
            raise ValueError(f"x0 has shape {tuple(x0.shape)} but x_t has shape "
                             f"{tuple(x_t.shape)}; they must match for {type(self).__name__}")

    def loss(self, x0_hat: Tensor, x0: Tensor) -> Tensor:
        """Per-element training loss of a prediction, with the shape of the state (no event dims)."""
        raise NotImplementedError(f"{type(self).__name__} defines no standard loss")

    def scaler(self, t: Tensor) -> Tensor:
        """Default time scaler of the standard loss (the loss is divided by it)."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss scaler")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={_short(v)}" for k, v in vars(self).items()
                           if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


def _short(v) -> str:
    if isinstance(v, Tensor) and v.ndim > 0:
        return f"tensor(shape={tuple(v.shape)})"
    return repr(float(v)) if isinstance(v, Tensor) else repr(v)


def time_dtype(*tensors: Tensor) -> torch.dtype:
    """The float dtype in which times are passed: the first floating input's, else the default."""
    for x in tensors:
        if x.is_floating_point():
            return x.dtype
    return torch.get_default_dtype()
