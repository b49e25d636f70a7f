"""Processes on the circle: wrapped Brownian motion with its exact bridge, and Diffusions.jl's
approximate interpolating bridge."""

import math

import torch
from torch import Tensor

from ._util import (as_param, on_host, positive, rand, randn, rejection, require_float,
                    use_host_path)
from .process import Process

__all__ = ["WrappedBrownian", "WrappedInterpolatedBrownian"]

_TWO_PI = 2 * math.pi
# Windings |n| <= _WINDOW are enumerated while tau = rt / (2 pi)^2 <= 1; the mass left out is
# below exp(-((_WINDOW + 1/2)^2 - 1/4) / 2) < 1e-19 relative to the most likely winding.
_WINDOW = 9
# Rounds of the discrete-Gaussian rejection sampler used when tau > 1. Each accepts with
# probability >= 0.63, so an element is left unaccepted with probability < 0.37^40 < 1e-17.
_ROUNDS = 40


def _wrap(x: Tensor) -> Tensor:
    """x mod 2 pi, in [-pi, pi). The remainder can round up to 2 pi (for the float just below
    -pi in float64, say): that is mapped to -pi."""
    y = torch.remainder(x + math.pi, _TWO_PI) - math.pi
    return torch.where(y >= math.pi, -math.pi, y)


def _window(rt_max: float) -> int:
    """The least W >= 1 such that windings |n| <= W hold all but 1e-19 of the mass for every
    rt <= rt_max, capped at _WINDOW (enough for tau <= 1).

    For d in [-pi, pi) the left-out terms are at most exp(-2 pi^2 m (m - 1) / rt) for |n| = m
    > W, which sum to below 1e-19 once W (W + 1) >= rt ln(4e19) / (2 pi^2).
    """
    need = rt_max * math.log(4e19) / (2 * math.pi ** 2)
    return min(_WINDOW, max(1, math.ceil((math.sqrt(1 + 4 * need) - 1) / 2)))


def _enumerated_winding(d: Tensor, rt: Tensor, generator, window: int = _WINDOW) -> Tensor:
    """Winding n in [-window, window] drawn by inverting the CDF of the truncated law.

    log p(n) = -((d + 2 pi n)^2 - d^2) / (2rt) = -2 pi n (pi n + d) / rt, which is <= 0 for
    d in [-pi, pi), with 0 at n = 0: the weights exp(log p(n)) need no normalising shift.
    The loop runs over the 2 window + 1 windings, each step elementwise over all of d.
    """
    scale = -_TWO_PI / rt
    weights = [torch.exp((math.pi * n + d) * (n * scale)) if n else 1.0
               for n in range(-window, window + 1)]
    u = rand(d, generator) * sum(weights)
    n, below = torch.full_like(d, -window), torch.zeros_like(d)
    for w in weights[:-1]:
        below = below + w
        n = n + (below < u)
    return n


def _propose_winding(c: Tensor, tau: Tensor, generator):
    r"""One round of the discrete Gaussian p(n) ∝ exp(-(n - c)^2 / (2 tau)) by rejection from
    a rounded normal; returns (m, accepted).

    Propose y ~ N(c, tau') with tau' = tau + sqrt(tau)/2 and m = round(y); accept with
    probability exp((y - c)^2 / (2 tau') - (m - c)^2 / (2 tau) - 1/(4 sqrt(tau))). As
    |y - c| <= |m - c| + 1/2 and max_x [(x + 1/2)^2 / (2 tau') - x^2 / (2 tau)] = 1/(4 sqrt(tau)),
    that is a probability; an accepted y has density ∝ exp(-(round(y) - c)^2 / (2 tau)), so m
    is exact. A round accepts with probability about e^{-1/(4 sqrt(tau))} / sqrt(1 + 1/(2
    sqrt(tau))) (0.636 at tau = 1, more above).
    """
    root = tau.sqrt()
    spread = tau + root / 2
    y = c + spread.sqrt() * randn(c, generator)
    m = torch.round(y)
    log_accept = ((y - c) ** 2 / spread - (m - c) ** 2 / tau) / 2 - 1 / (4 * root)
    return m, rand(c, generator) < log_accept.exp()


def _rejected_winding(c: Tensor, tau: Tensor, generator, rounds: int = _ROUNDS):
    """Up to ``rounds`` rounds of ``_propose_winding`` for each element of ``c`` (``tau``
    broadcasts against it), by the shared rejection driver: on the host only the pending
    elements propose again (about 1.6 proposals each), on the device path every round covers
    all. Returns (n, accepted), both of ``c``'s shape."""
    flat_c, flat_tau = c.reshape(-1), tau.expand_as(c).reshape(-1)
    n, accepted = rejection(lambda rows: _propose_winding(flat_c[rows], flat_tau[rows], generator),
                            flat_c.numel(), rounds, c)
    return n.reshape(c.shape), accepted.reshape(c.shape)


def _sample_winding(d: Tensor, rt: Tensor, generator) -> Tensor:
    r"""The winding n of a lifted path: P(n) ∝ exp(-(d + 2 pi n)^2 / (2 rt)), d in [-pi, pi).

    With c = -d / (2 pi) and tau = rt / (2 pi)^2 this is the discrete Gaussian around c with
    variance parameter tau: enumerated over |n| <= 9 for tau <= 1, drawn by exact rejection
    for tau > 1 (falling back to the enumeration in the < 1e-17 of cases never accepted).
    On an accelerator both are computed for every element, so nothing depends on the data's
    values and nothing synchronises. On the CPU, where reading values is free, the window is
    sized to the call's largest rt and rejection runs only for the elements that need it, until
    they are accepted: the same law, several times faster.
    """
    rt = torch.clamp(rt, min=torch.finfo(d.dtype).tiny)
    tau = rt / _TWO_PI ** 2
    if not use_host_path(d):
        enumerated = _enumerated_winding(d, rt, generator)
        rejected, accepted = _rejected_winding(-d / _TWO_PI, tau.expand_as(d), generator)
        return torch.where((tau > 1) & accepted, rejected, enumerated)
    large = tau > 1
    window = _window(float(torch.where(large, 0, rt).max())) if rt.numel() else 1
    n = _enumerated_winding(d, rt, generator, window)
    if bool(large.any()):
        large = large.expand_as(d)
        rejected, accepted = _rejected_winding(-d[large] / _TWO_PI, tau.expand_as(d)[large],
                                               generator)
        fallback = _enumerated_winding(d[large], rt.expand_as(d)[large], generator)
        n[large] = torch.where(accepted, rejected, fallback)
    return n


def _in_dtype_of(x_t: Tensor, *tensors: Tensor):
    """The tensors in x_t's dtype, so that a bridge returns x_t's dtype whatever x0's is."""
    return tuple(x.to(x_t.dtype) for x in tensors)


class _Wrapped(Process):
    """What both circle processes share: forward law, equilibrium, checks and loss."""

    def __init__(self, rate=1.0):
        self.rate = positive("rate", rate)

    def check_state(self, x: Tensor, name: str) -> None:
        require_float(x, name, self)
        if on_host(x) and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} must hold finite angles (any real angle is wrapped into "
                             f"[-pi, pi)), got NaN or inf")

    def check_endpoints(self, x0: Tensor, x_t: Tensor) -> None:
        super().check_endpoints(x0, x_t)
        self.check_state(x0, "x0")

    def sample_forward(self, t, x0, generator=None):
        return _wrap(x0 + (as_param(self.rate, x0) * t).sqrt() * randn(x0, generator))

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None):
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype for angles, got {dtype}")
        u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
        return _wrap(math.pi * (2 * u - 1))

    def loss(self, x0_hat: Tensor, x0: Tensor) -> Tensor:
        """Squared minimal angle between x0_hat and x0, of x0's shape; its gradient is finite
        everywhere (at the antipode, where the minimal angle is not differentiable, it is 0)."""
        return _wrap(x0_hat - x0) ** 2

    def scaler(self, t: Tensor) -> Tensor:
        """2 sqrt(1 - exp(-rate t / 8)), Diffusions.jl's default for angles."""
        return 2 * (-torch.expm1(-as_param(self.rate, t) * t / 8)).sqrt()

    def guide(self, x0_uncond: Tensor, x0_cond: Tensor, w: float) -> Tensor:
        """In the tangent space at the unconditional guess: wrap(u + w wrap(c − u))."""
        return _wrap(x0_uncond + w * _wrap(x0_cond - x0_uncond))

    # ---------------------------------------------------------------- likelihood (bd.elbo)
    # Densities with respect to Lebesgue measure on [-π, π); bridges and KLs by the defaults.

    def forward_log_prob(self, t, x0, x_t):
        """log of the wrapped normal density of variance r t around x0, at x_t."""
        x0, t = x0.to(x_t.dtype), t.to(x_t.dtype)
        return _wrapped_normal_log_prob(_wrap(x_t - x0), as_param(self.rate, x_t) * t)

    def equilibrium_log_prob(self, x):
        return torch.full(x.shape, -math.log(_TWO_PI), dtype=x.dtype, device=x.device)


class WrappedBrownian(_Wrapped):
    r"""Brownian motion on the circle with rate r: angles, float tensors of any shape (...).

    .. math::
        x_t = \mathrm{wrap}(x_0 + \sqrt{r}\, W_t), \qquad
        \mathrm{wrap}(y) = ((y + \pi) \bmod 2\pi) - \pi \in [-\pi, \pi)

    * forward: the wrapped normal, :math:`x_t = \mathrm{wrap}(x_0 + \sqrt{rt}\,\varepsilon)`
      (Diffusions.jl leaves the sum unwrapped; here every output is in [-π, π));
    * equilibrium: uniform on [-π, π);
    * bridge, exact: lift to the real line. With :math:`d = \mathrm{wrap}(x_t - x_0)`, draw the
      winding :math:`n \in \mathbb{Z}` with :math:`P(n) \propto e^{-(d + 2\pi n)^2 / (2rt)}`,
      then :math:`x_s = \mathrm{wrap}(x_0 + \tfrac{s}{t}(d + 2\pi n)
      + \sqrt{r s (t - s) / t}\,\varepsilon)`.

    The winding is a discrete Gaussian with variance parameter τ = rt / (2π)²: for τ ≤ 1 it
    is drawn from its CDF over |n| ≤ 9 (the mass left out is < 1e-19); for τ > 1 by exact
    rejection from a rounded normal, 40 vectorised rounds that each accept with probability
    ≥ 0.63 (an element never accepted, probability < 1e-17, takes the enumerated draw). So
    the bridge is exact for rt from 1e-7 to beyond 1e6, with per-element times and no sync
    with the device; Diffusions.jl's fixed ±6 windings lose mass once rt ≳ 40. (In float32,
    angles near ±π are resolved to 2.4e-7: for rt ≲ 1e-5 that limits how finely the two
    windings of nearly antipodal endpoints are weighed.)

    Angles outside [-π, π) are accepted and wrapped; ``rate`` keeps Diffusions.jl's meaning
    (``WrappedBrownianDiffusion``: variance r t before wrapping).
    """

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        s, t, x0 = _in_dtype_of(x_t, s, t, x0)
        r = as_param(self.rate, x_t)
        d = _wrap(x_t - x0)
        lifted = d + _TWO_PI * _sample_winding(d, r * t, generator)
        noise = (r * s * (t - s) / t).sqrt() * randn(x_t, generator)
        return _wrap(x0 + (s / t) * lifted + noise)


class WrappedInterpolatedBrownian(_Wrapped):
    r"""Wrapped Brownian motion with Diffusions.jl's *approximate* interpolating bridge.

    Forward law and equilibrium as for :class:`WrappedBrownian` (the wrapped normal of variance
    r t; uniform). The bridge is not the exact one: it runs forward from x0 for time s,
    :math:`b = \mathrm{wrap}(x_0 + \sqrt{rs}\,\varepsilon_1)`, forward again for t - s,
    :math:`c = \mathrm{wrap}(b + \sqrt{r(t-s)}\,\varepsilon_2)`, and moves b by the fraction
    s/t of the shortest signed arc from c to x_t:

    .. math::
        x_s = \mathrm{wrap}\big(b + \tfrac{s}{t}\,\mathrm{wrap}(x_t - c)\big).

    Kept to reproduce models trained with ``WrappedInterpolatedBrownianDiffusion`` (whose code
    scales both variances by r once more; here they are rs and r(t - s), the same at r = 1).
    Use :class:`WrappedBrownian` for exact sampling.
    """

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        s, t, x0 = _in_dtype_of(x_t, s, t, x0)
        r = as_param(self.rate, x_t)
        b = _wrap(x0 + (r * s).sqrt() * randn(x_t, generator))
        c = _wrap(b + (r * (t - s)).sqrt() * randn(x_t, generator))
        return _wrap(b + (s / t) * _wrap(x_t - c))

    # ---------------------------------------------------------------- likelihood (bd.elbo)

    def bridge_log_prob(self, s, t, x0, x_t, x_s):
        raise NotImplementedError(
            "WrappedInterpolatedBrownian's bridge is Diffusions.jl's approximation, whose "
            "density has no closed form: implement bridge_log_prob(s, t, x0, x_t, x_s) in a "
            "subclass, or use WrappedBrownian (exact bridge) with bd.elbo")


# ---------------------------------------------------------------- likelihood (bd.elbo)

_FOURIER_FROM = 10.0  # rt from which the wrapped normal is summed as a Fourier series
_FOURIER_TERMS = 4    # for rt >= 10 the terms beyond m = 4 weigh < e^{-125}


def _wrapped_normal_log_prob(d: Tensor, rt: Tensor) -> Tensor:
    r"""log of the wrapped normal density on [-π, π) (Lebesgue), variance ``rt``, at the offset
    d = wrap(x − mean) in [-π, π); elementwise, broadcasting.

    * rt < 10, images: :math:`-\tfrac{d^2}{2rt} - \tfrac12\log(2\pi rt)
      + \log \sum_{|n| \le 9} e^{-2\pi n(\pi n + d)/rt}`, each term at most 1 (n = 0 gives 1),
      the windings left out weigh < e^{-140};
    * rt ≥ 10, Fourier: :math:`-\log 2\pi + \log(1 + 2\sum_{m \le 4} e^{-m^2 rt/2} \cos md)`.

    Each branch's rt is clamped to its own range, so the branch not taken stays finite.
    """
    near = rt.clamp_max(_FOURIER_FROM)
    scale = -_TWO_PI / near
    images = 1.0
    for n in range(-_WINDOW, _WINDOW + 1):
        if n:
            images = images + torch.exp((math.pi * n + d) * (n * scale))
    log_images = -d ** 2 / (2 * near) - 0.5 * torch.log(_TWO_PI * near) + torch.log(images)
    far = rt.clamp_min(_FOURIER_FROM)
    fourier = sum(torch.exp(-m * m * far / 2) * torch.cos(m * d)
                  for m in range(1, _FOURIER_TERMS + 1))
    log_fourier = torch.log1p(2 * fourier) - math.log(_TWO_PI)
    return torch.where(rt < _FOURIER_FROM, log_images, log_fourier)
