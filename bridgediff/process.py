"""The process protocol: what a space must provide to be diffused.

This module is a leaf: it imports nothing else from bridgediff, so every other module can
build on it.
"""

import abc

import torch
from torch import Tensor


class Process(abc.ABC):
    r"""Base class of every diffusion process.

    A process noises data forward in time (t = 0 is data) and can sample its bridge
    p(x_s | x_0, x_t) for 0 < s < t. A new process implements two methods on plain tensors:

    * ``sample_forward(t, x0, generator)``: a draw of x_t ~ p(x_t | x_0);
    * ``endpoint_conditioned_sample(s, t, x0, x_t, generator)``: a draw of
      x_s ~ p(x_s | x_0, x_t).

    The free functions (``bd.sample_forward``, ``bd.endpoint_conditioned_sample``, ...)
    validate the arguments, walk tuples, lists, dicts and masks, cast the result to the
    input's dtype, and pass ``s`` and ``t`` as tensors on the data's device, in its float
    dtype (float32 at least; the default float dtype for integer data), that broadcast
    against the data: 0-d, or (B, 1, ..., 1). Batching of t, masks, tuples and
    ``sample_backward`` then need no further code.

    Optional hooks, each with a default; override what applies:

    ======================================  ==================================================
    hook                                    meaning (default)
    ======================================  ==================================================
    ``event_ndim`` (class attribute)        trailing dimensions forming one element: 0 for
                                            scalars, 1 for vectors such as quaternions (0);
                                            masks and losses have the shape without them
    ``sample_equilibrium(shape, *,          a draw from the stationary law (raises
    generator, device, dtype)``             ValueError: none)
    ``check_state(x, name)``                raise TypeError/ValueError for an invalid state;
                                            value checks only where ``on_host`` (accept all)
    ``check_endpoints(x0, x_t)``            validate a bridge's x0 against x_t (same shape,
                                            and ``check_state(x0)``)
    ``check_prediction(x0_hat, x0)``        validate a model's output for the loss (same
                                            shape as x0, floating point)
    ``loss(x0_hat, x0)``                    per-element training loss, state shape without
                                            event dimensions (NotImplementedError)
    ``scaler(t)``                           default time scaler of the standard loss
                                            (NotImplementedError)
    ``forward_transition(s, t, x_s,         a draw of x_t ~ p(x_t | x_s) for s < t: the
    generator)``                            renoising move of the correctors
                                            (``sample_forward(t - s, x_s)``, right for every
                                            time-homogeneous process)
    ``eta_bridge(s, t, x0, x_t, eta,        the eta-step from x_t to x_s, eta in [0, 1):
    generator)``                            keeps forward(s, x0) as the law of x_s; eta = 0 is
                                            DDIM's deterministic step (ValueError: none)
    ``guide(x0_uncond, x0_cond, w)``        guidance: combine two guesses with weight w
                                            (w = 0: x0_uncond, w = 1: x0_cond; never called
                                            with those) (NotImplementedError)
    ``forward_log_prob(t, x0, x_t)``        log density of ``sample_forward``'s law at x_t,
                                            per element (NotImplementedError); for ``bd.elbo``
    ``equilibrium_log_prob(x)``             log density of the stationary law, per element
                                            (NotImplementedError)
    ``bridge_log_prob(s, t, x0, x_t,        log density of ``endpoint_conditioned_sample``'s
    x_s)``                                  law at x_s (by the Markov property from
                                            ``forward_log_prob``)
    ``sample_variational(t0, t, T, x0,      x_t from the ELBO's variational law, x0 sitting
    generator)``                            at time t0 (``sample_forward(t - t0, x0)``)
    ``bridge_kl(t0, s, t, x0, x0_hat,       KL(p(x_s | x_t0 = x0, x_t) || p(x_s | x_0 =
    x_t, generator)``                       x0_hat, x_t)) per element (one-draw Monte Carlo
                                            from ``bridge_log_prob``)
    ``prior_kl(t0, T, x0, generator)``      KL(variational law of x_T || the chain's start)
                                            per element (one-draw Monte Carlo from
                                            ``forward_log_prob``, ``equilibrium_log_prob``)
    ======================================  ==================================================

    The likelihood hooks measure densities per element, with respect to Lebesgue measure for
    real data, counting measure for discrete states, Lebesgue measure on [-π, π) for angles,
    the Haar probability measure for rotations and area for the sphere; their defaults assume a time-homogeneous
    process (every built-in one is), and a process without what a default needs raises
    NotImplementedError naming the hook to implement.

    Example::

        class Drift(bd.Process):                       # x_t = x0 + t, deterministic
            def sample_forward(self, t, x0, generator=None):
                return x0 + t
            def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
                return x0 + s
    """

    event_ndim: int = 0

    @abc.abstractmethod
    def sample_forward(self, t: Tensor, x0: Tensor, generator=None) -> Tensor:
        """Draw x_t ~ p(x_t | x_0 = x0). ``t`` broadcasts against ``x0``."""

    @abc.abstractmethod
    def endpoint_conditioned_sample(self, s: Tensor, t: Tensor, x0: Tensor, x_t: Tensor,
                                    generator=None) -> Tensor:
        """Draw x_s ~ p(x_s | x_0 = x0, x_t) for 0 < s < t."""

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None) -> Tensor:
        """Draw from the stationary law, a tensor of the given shape."""
        raise ValueError(f"{type(self).__name__} has no equilibrium distribution; start the "
                         f"backward chain from sample_forward(process, T, x0) instead")

    def sample_backward(self, guess, timesteps, x_T, **options):
        """Same as ``bd.sample_backward(guess, self, timesteps, x_T, **options)``."""
        import bridgediff  # the free function lives above this leaf module
        return bridgediff.sample_backward(guess, self, timesteps, x_T, **options)

    # ------------------------------------------------------------ optional hooks

    def check_state(self, x: Tensor, name: str) -> None:
        """Raise TypeError or ValueError if ``x`` is not a valid state tensor.

        Called by the free functions on their inputs; value checks should run only where
        ``bridgediff._util.on_host(x)``, so that no call synchronises with an accelerator.
        """

    def check_endpoints(self, x0: Tensor, x_t: Tensor) -> None:
        """Raise ValueError if a bridge's x0 does not fit x_t (default: same shape, and a
        valid state)."""
        if x0.shape != x_t.shape:
            raise ValueError(f"x0 has shape {tuple(x0.shape)} but x_t has shape "
                             f"{tuple(x_t.shape)}; they must match for {type(self).__name__}")
        self.check_state(x0, "x0")

    def check_prediction(self, x0_hat: Tensor, x0: Tensor) -> None:
        """Raise TypeError or ValueError if the model output ``x0_hat`` cannot be scored
        against the data ``x0`` by ``loss`` (default: a float tensor of x0's shape)."""
        if not x0_hat.is_floating_point():
            raise TypeError(f"x0_hat must be a floating-point tensor for "
                            f"{type(self).__name__}, got dtype {x0_hat.dtype}")
        if x0_hat.shape != x0.shape:
            raise ValueError(f"x0_hat has shape {tuple(x0_hat.shape)} but x0 has shape "
                             f"{tuple(x0.shape)}; they must match for {type(self).__name__}")

    def loss(self, x0_hat: Tensor, x0: Tensor) -> Tensor:
        """Per-element training loss of a prediction, with the shape of the state (no event dims)."""
        raise NotImplementedError(f"{type(self).__name__} defines no standard loss")

    def scaler(self, t: Tensor) -> Tensor:
        """Default time scaler of the standard loss (the loss is divided by it)."""
        raise NotImplementedError(f"{type(self).__name__} defines no loss scaler")

    def forward_transition(self, s: Tensor, t: Tensor, x_s: Tensor, generator=None) -> Tensor:
        """Draw x_t ~ p(x_t | x_s) for s < t (default: ``sample_forward(t - s, x_s)``, the law
        of a time-homogeneous Markov process; a process whose law depends on the time itself,
        such as ``bd.TimeChanged``, overrides it)."""
        return self.sample_forward(t - s, x_s, generator)

    def eta_bridge(self, s: Tensor, t: Tensor, x0: Tensor, x_t: Tensor, eta: float,
                   generator=None) -> Tensor:
        """The eta-step from x_t to x_s given x0, for 0 <= eta < 1 (eta = 1 is the bridge,
        which the free functions call instead): a draw whose law, when x_t ~ forward(t, x0),
        is forward(s, x0), with eta = 0 deterministic. Only Gaussian processes have one."""
        raise ValueError(f"{type(self).__name__} has no eta-step (eta_bridge): pass eta=1 for "
                         f"it (for a structure of processes eta may be a matching structure, "
                         f"e.g. (0.0, 1.0))")

    def guide(self, x0_uncond: Tensor, x0_cond: Tensor, w: float) -> Tensor:
        """Combine an unconditional and a conditional guess with guidance weight ``w`` (a
        float other than 0 and 1, which ``bd.Guided`` answers itself)."""
        raise NotImplementedError(f"{type(self).__name__} defines no guidance: override "
                                  f"guide(x0_uncond, x0_cond, w)")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={_short(v)}" for k, v in vars(self).items()
                           if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"

    # ------------------------------------------------------------ likelihood hooks (bd.elbo)
    # Plain tensors, as for the samplers: times broadcast against the data, results have the
    # state's shape (no event dimensions). The defaults assume time homogeneity: the law of
    # x_t given x_r is the forward law for time t - r.

    def forward_log_prob(self, t: Tensor, x0: Tensor, x_t: Tensor) -> Tensor:
        """log p(x_t | x_0 = x0) per element: the density of ``sample_forward(t, x0)``."""
        raise NotImplementedError(_missing(self, "forward_log_prob(t, x0, x_t)"))

    def equilibrium_log_prob(self, x: Tensor) -> Tensor:
        """log density of the stationary law at ``x``, per element."""
        raise NotImplementedError(_missing(self, "equilibrium_log_prob(x)"))

    def bridge_log_prob(self, s: Tensor, t: Tensor, x0: Tensor, x_t: Tensor,
                        x_s: Tensor) -> Tensor:
        """log p(x_s | x_0 = x0, x_t) per element, by the Markov property:
        log p_s(x0 → x_s) + log p_{t−s}(x_s → x_t) − log p_t(x0 → x_t)."""
        return (self.forward_log_prob(s, x0, x_s) + self.forward_log_prob(t - s, x_s, x_t)
                - self.forward_log_prob(t, x0, x_t))

    def sample_variational(self, t0: Tensor, t: Tensor, T: Tensor, x0: Tensor,
                           generator=None) -> Tensor:
        """Draw x_t (t0 < t <= T) from the ELBO's variational law given x_{t0} = x0: the
        forward process run from x0 for t − t0 (a process whose chain starts from a point
        mass may condition on it, see AbsorbingDiscrete)."""
        return self.sample_forward(t - t0, x0, generator)

    def bridge_kl(self, t0: Tensor, s: Tensor, t: Tensor, x0: Tensor, x0_hat: Tensor,
                  x_t: Tensor, generator=None) -> Tensor:
        """KL(p(x_s | x_{t0} = x0, x_t) || p(x_s | x_0 = x0_hat, x_t)) per element, for
        t0 < s < t: one draw x_s from the first bridge, log q(x_s) − log p(x_s) (unbiased)."""
        x_s = self.endpoint_conditioned_sample(s - t0, t - t0, x0, x_t, generator)
        return (self.bridge_log_prob(s - t0, t - t0, x0, x_t, x_s)
                - self.bridge_log_prob(s, t, x0_hat, x_t, x_s))

    def prior_kl(self, t0: Tensor, T: Tensor, x0: Tensor, generator=None) -> Tensor:
        """KL(p(x_T | x_{t0} = x0) || equilibrium) per element: one draw x_T, log q − log π."""
        x_T = self.sample_forward(T - t0, x0, generator)
        return self.forward_log_prob(T - t0, x0, x_T) - self.equilibrium_log_prob(x_T)


def _missing(process: Process, hook: str) -> str:
    return (f"{type(process).__name__} has no {hook.split('(')[0]}: implement "
            f"{hook} (see bd.Process) to use it in bd.elbo")


def _short(v) -> str:
    if isinstance(v, Tensor) and v.ndim > 0:
        return f"tensor(shape={tuple(v.shape)})"
    return repr(float(v)) if isinstance(v, Tensor) else repr(v)


def time_dtype(*tensors: Tensor) -> torch.dtype:
    """The float dtype in which times are passed: the first floating input's (float32 at least:
    half-precision times would round 0.3 to 0.3008), else the default."""
    for x in tensors:
        if x.is_floating_point():
            return torch.promote_types(x.dtype, torch.float32)
    return torch.get_default_dtype()
