"""Euclidean processes: Ornstein-Uhlenbeck and Brownian motion, exact in closed form."""

import math

import torch
from torch import Tensor

from ._util import as_param, on_host, positive, randn, real, require_float
from .process import Process

__all__ = ["OrnsteinUhlenbeck", "BrownianMotion"]


def _normal(offset: Tensor, terms, sd: Tensor, like: Tensor, generator) -> Tensor:
    """offset + Σ c·x over (c, x) in terms + sd·ε, ε ~ N(0, I) of ``like``'s shape.

    One fused multiply-add pass per term: these samplers run at the speed of the noise draw.
    """
    out = torch.addcmul(offset, sd, randn(like, generator))
    for coef, x in terms:
        out = out.addcmul_(coef, x)
    return out


def _eta_step(x0: Tensor, x_t: Tensor, mean, a_s, a_t, v_s, v_t, b, eta: float, generator):
    r"""The eta-step of a Gaussian process whose forward law is N(m_u(x0), v_u) with
    m_u(x0) = μ + a_u (x0 − μ), and whose bridge from t to s has variance b:

    .. math::
        x_s = m_s + \sqrt{(v_s - \eta^2 b) / v_t}\,(x_t - m_t) + \eta \sqrt{b}\, z

    If x_t ~ N(m_t, v_t) then x_s ~ N(m_s, v_s) for every eta in [0, 1]; eta = 1 is the bridge,
    eta = 0 draws nothing (DDIM). (v_s − η² b) / v_t is formed as (v_s / v_t)(1 − η² b / v_s),
    free of cancellation for eta < 1.
    """
    k = (v_s / v_t * (1 - eta ** 2 * b / v_s)).sqrt()
    offset = mean * (1 - a_s - k * (1 - a_t))
    terms = [(a_s - k * a_t, x0), (k, x_t)]
    if eta == 0:
        return offset + terms[0][0] * x0 + k * x_t
    return _normal(offset, terms, eta * b.sqrt(), x_t, generator)


def _gaussian_log_prob(x: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """log N(x; mean, var), elementwise."""
    return -0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))


def _gaussian_kl(mean_q: Tensor, var_q: Tensor, mean_p: Tensor, var_p: Tensor) -> Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)), elementwise; r − 1 − log r as x − log1p(x)
    with x = (var_q − var_p)/var_p, which keeps its precision when the variances are close."""
    x = (var_q - var_p) / var_p
    return 0.5 * ((mean_q - mean_p) ** 2 / var_p + x - torch.log1p(x))


class _Euclidean(Process):
    """Shared checks and loss of the real-valued processes (squared error)."""

    def check_state(self, x: Tensor, name: str) -> None:
        """A real floating-point tensor (complex is refused), finite where checked on the host."""
        require_float(x, name, self)
        if on_host(x) and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} must be finite for {type(self).__name__}, got NaN or inf")

    def loss(self, x0_hat: Tensor, x0: Tensor) -> Tensor:
        return (x0_hat - x0) ** 2

    def guide(self, x0_uncond: Tensor, x0_cond: Tensor, w: float) -> Tensor:
        """Affine in x0: u + w (c − u), the x0 of the combined score (1 − w) ∇log p_t +
        w ∇log p_t(· | y) (Tweedie)."""
        return x0_uncond + w * (x0_cond - x0_uncond)


class OrnsteinUhlenbeck(_Euclidean):
    r"""Ornstein-Uhlenbeck process, elementwise on any float tensor.

    .. math::
        dX = \theta(\mu - X)\,dt + \sigma\,dW, \qquad
        a_u = e^{-\theta u}, \quad v_u = \sigma^2 (1 - a_u^2) / (2\theta)

    * forward: :math:`x_t \sim N(\mu + a_t (x_0 - \mu),\ v_t)`;
    * bridge: :math:`x_s \sim N(m_s + a_{t-s} v_s / v_t\,(x_t - m_t),\ v_s v_{t-s} / v_t)`
      with :math:`m_u = \mu + a_u (x_0 - \mu)`;
    * equilibrium: :math:`N(\mu, \sigma^2 / (2\theta))`.

    Parameters keep Diffusions.jl's meaning (``OrnsteinUhlenbeckDiffusion``): ``mean`` μ,
    ``volatility`` σ, ``reversion`` θ. Variances use ``expm1``, so t from 1e-7 to 1e3 and
    θ up to 50 are exact in float32.
    """

    def __init__(self, mean=0.0, volatility=1.0, reversion=0.5):
        self.mean = real("mean", mean)
        self.volatility = positive("volatility", volatility)
        self.reversion = positive("reversion", reversion)

    def _decay_and_variance(self, u: Tensor, like: Tensor):
        theta, sigma = as_param(self.reversion, like), as_param(self.volatility, like)
        decay = torch.exp(-theta * u)
        return decay, -(sigma ** 2) * torch.expm1(-2 * theta * u) / (2 * theta)

    def sample_forward(self, t, x0, generator=None):
        a, v = self._decay_and_variance(t, x0)
        return _normal(as_param(self.mean, x0) * (1 - a), [(a, x0)], v.sqrt(), x0, generator)

    def _bridge_coefficients(self, s, t, like: Tensor):
        """(α, β, offset, variance) of the bridge: x_s ~ N(α x0 + β x_t + offset, variance).

        The mean m_s + a_{t-s} v_s / v_t (x_t - m_t) is α x0 + β x_t + μ(1 - α - β) with
        α = a_s v_{t-s} / v_t and β = a_{t-s} v_s / v_t (using v_t = a_{t-s}² v_s + v_{t-s}).
        """
        a_s, v_s = self._decay_and_variance(s, like)
        a_d, v_d = self._decay_and_variance(t - s, like)
        _, v_t = self._decay_and_variance(t, like)
        alpha, beta = a_s * v_d / v_t, a_d * v_s / v_t
        return alpha, beta, as_param(self.mean, like) * (1 - alpha - beta), v_s * v_d / v_t

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        alpha, beta, offset, var = self._bridge_coefficients(s, t, x_t)
        return _normal(offset, [(alpha, x0), (beta, x_t)], var.sqrt(), x_t, generator)

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None):
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype for {type(self).__name__}, "
                            f"got {dtype}")
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        sd = as_param(self.volatility, z) / (2 * as_param(self.reversion, z)) ** 0.5
        return as_param(self.mean, z) + sd * z

    def scaler(self, t):
        return (-torch.expm1(-as_param(self.reversion, t) * t)).sqrt()

    def eta_bridge(self, s, t, x0, x_t, eta, generator=None):
        """x_s = m_s + √((v_s − η² b)/v_t) (x_t − m_t) + η √b z with b = v_s v_{t−s} / v_t."""
        a_s, v_s = self._decay_and_variance(s, x_t)
        a_t, v_t = self._decay_and_variance(t, x_t)
        _, v_d = self._decay_and_variance(t - s, x_t)
        return _eta_step(x0, x_t, as_param(self.mean, x_t), a_s, a_t, v_s, v_t,
                         v_s * v_d / v_t, eta, generator)

    # ---------------------------------------------------------------- likelihood (bd.elbo)
    # Densities with respect to Lebesgue measure; every KL in closed form.

    def _bridge_law(self, s, t, x0, x_t):
        """Mean and variance of the bridge p(x_s | x_0 = x0, x_t) (see the class docstring)."""
        alpha, beta, offset, var = self._bridge_coefficients(s, t, x_t)
        return alpha * x0 + beta * x_t + offset, var

    def _stationary_variance(self, like: Tensor):
        return as_param(self.volatility, like) ** 2 / (2 * as_param(self.reversion, like))

    def forward_log_prob(self, t, x0, x_t):
        a, v = self._decay_and_variance(t, x_t)
        mu = as_param(self.mean, x_t)
        return _gaussian_log_prob(x_t, mu + a * (x0 - mu), v)

    def equilibrium_log_prob(self, x):
        var = torch.zeros_like(x) + self._stationary_variance(x)
        return _gaussian_log_prob(x, as_param(self.mean, x), var)

    def bridge_log_prob(self, s, t, x0, x_t, x_s):
        return _gaussian_log_prob(x_s, *self._bridge_law(s, t, x0, x_t))

    def bridge_kl(self, t0, s, t, x0, x0_hat, x_t, generator=None):
        """KL of two Gaussian bridges, exact (no draw)."""
        return _gaussian_kl(*self._bridge_law(s - t0, t - t0, x0, x_t),
                            *self._bridge_law(s, t, x0_hat, x_t))

    def prior_kl(self, t0, T, x0, generator=None):
        r"""KL(N(μ + a(x0 − μ), v_∞(1 − a²)) || N(μ, v_∞)) with a = e^{−θ(T − t0)}:
        :math:`\tfrac12 [a^2 (x_0 - μ)^2 / v_∞ - a^2 - \log(1 - a^2)]`."""
        a, _ = self._decay_and_variance(T - t0, x0)
        a2, mu = a * a, as_param(self.mean, x0)
        return 0.5 * (a2 * (x0 - mu) ** 2 / self._stationary_variance(x0) - a2
                      - torch.log1p(-a2))


class BrownianMotion(_Euclidean):
    r"""Brownian motion (variance exploding), elementwise on any float tensor.

    .. math::
        dX = \sqrt{r}\, dW

    * forward: :math:`x_t \sim N(x_0,\ r t)`;
    * bridge: :math:`x_s \sim N(x_0 + (s/t)(x_t - x_0),\ r s (t - s) / t)`;
    * no equilibrium: start the backward chain from ``sample_forward(P, T, x0)``, the
      prior N(x0, rT) around a reference point x0 (``bd.elbo`` takes x0 = 0: N(0, rT)).
    """

    def __init__(self, rate=1.0):
        self.rate = positive("rate", rate)

    def sample_forward(self, t, x0, generator=None):
        return _normal(x0, [], (as_param(self.rate, x0) * t).sqrt(), x0, generator)

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        r = as_param(self.rate, x_t)
        sd = (r * s * (t - s) / t).sqrt()
        return _normal(x0 * ((t - s) / t), [(s / t, x_t)], sd, x_t, generator)

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None):
        raise ValueError("BrownianMotion has no equilibrium distribution; start the backward "
                         "chain from sample_forward(process, T, x0) instead (the prior "
                         "N(x0, rate*T))")

    def scaler(self, t):
        return (-torch.expm1(-as_param(self.rate, t) * t)).sqrt()

    def eta_bridge(self, s, t, x0, x_t, eta, generator=None):
        """x_s = x0 + √((s − η² s(t − s)/t)/t) (x_t − x0) + η √(r s (t − s)/t) z."""
        r = as_param(self.rate, x_t)
        return _eta_step(x0, x_t, 0.0, 1.0, 1.0, r * s, r * t, r * s * (t - s) / t, eta,
                         generator)

    # ---------------------------------------------------------------- likelihood (bd.elbo)
    # Densities with respect to Lebesgue measure; every KL in closed form.

    def _bridge_law(self, s, t, x0, x_t):
        """Mean and variance of the bridge p(x_s | x_0 = x0, x_t)."""
        return x0 + (s / t) * (x_t - x0), as_param(self.rate, x_t) * s * (t - s) / t

    def forward_log_prob(self, t, x0, x_t):
        return _gaussian_log_prob(x_t, x0, as_param(self.rate, x_t) * t)

    def bridge_log_prob(self, s, t, x0, x_t, x_s):
        return _gaussian_log_prob(x_s, *self._bridge_law(s, t, x0, x_t))

    def bridge_kl(self, t0, s, t, x0, x0_hat, x_t, generator=None):
        """KL of two Gaussian bridges, exact (no draw)."""
        return _gaussian_kl(*self._bridge_law(s - t0, t - t0, x0, x_t),
                            *self._bridge_law(s, t, x0_hat, x_t))

    def prior_kl(self, t0, T, x0, generator=None):
        r"""KL(N(x0, r(T − t0)) || N(0, rT)) per element. Brownian motion has no equilibrium:
        the chain's start is taken to be **N(0, rT)**, the law of
        ``sample_forward(P, T, zeros)`` (centre the data, or subclass to override):
        :math:`\tfrac12 [x_0^2 / (rT) - f - \log(1 - f)]`, f = t0 / T."""
        f = t0 / T
        return 0.5 * (x0 ** 2 / (as_param(self.rate, x0) * T) - f - torch.log1p(-f))
