"""Euclidean processes: Ornstein-Uhlenbeck (also with zero centre of mass) and Brownian motion,
exact in closed form."""

import math

import torch
from torch import Tensor

from ._util import as_param, on_host, positive, randn, real, require_float
from .process import Process

__all__ = ["OrnsteinUhlenbeck", "BrownianMotion", "CenteredOrnsteinUhlenbeck"]


def _normal(offset: Tensor, terms, sd: Tensor, like: Tensor, generator) -> Tensor:
    """offset + Σ c·x over (c, x) in terms + sd·ε, ε ~ N(0, I) of ``like``'s shape.

    One fused multiply-add pass per term: these samplers run at the speed of the noise draw.
    """
    out = torch.addcmul(offset, sd, randn(like, generator))
    for coef, x in terms:
        out = out.addcmul_(coef, x)
    return out


def _eta_step(x0: Tensor, x_t: Tensor, mean, a_s, a_t, v_s, v_t, b, eta: float, generator,
              noise=randn):
    r"""The eta-step of a Gaussian process whose forward law is N(m_u(x0), v_u) with
    m_u(x0) = μ + a_u (x0 − μ), and whose bridge from t to s has variance b:

    .. math::
        x_s = m_s + \sqrt{(v_s - \eta^2 b) / v_t}\,(x_t - m_t) + \eta \sqrt{b}\, z

    If x_t ~ N(m_t, v_t) then x_s ~ N(m_s, v_s) for every eta in [0, 1]; eta = 1 is the bridge,
    eta = 0 draws nothing (DDIM). (v_s − η² b) / v_t is formed as (v_s / v_t)(1 − η² b / v_s),
    free of cancellation for eta < 1. ``noise(like, generator)`` draws z (standard normal).
    """
    k = (v_s / v_t * (1 - eta ** 2 * b / v_s)).sqrt()
    offset = mean * (1 - a_s - k * (1 - a_t))
    deterministic = offset + (a_s - k * a_t) * x0 + k * x_t
    if eta == 0:
        return deterministic
    return torch.addcmul(deterministic, eta * b.sqrt(), noise(x_t, generator))


def _gaussian_log_prob(x: Tensor, mean: Tensor, var: Tensor, dims=1.0) -> Tensor:
    """log N(x; mean, var) elementwise, for ``dims`` dimensions per element (fewer than 1 when
    the law lives on a subspace: its log density summed over the elements is right)."""
    return -0.5 * ((x - mean) ** 2 / var + dims * torch.log(2 * math.pi * var))


def _gaussian_kl(mean_q: Tensor, var_q: Tensor, mean_p: Tensor, var_p: Tensor,
                 dims=1.0) -> Tensor:
    """KL(N(mean_q, var_q) || N(mean_p, var_p)) elementwise, ``dims`` dimensions per element;
    r − 1 − log r as x − log1p(x) with x = (var_q − var_p)/var_p, which keeps its precision
    when the variances are close."""
    x = (var_q - var_p) / var_p
    return 0.5 * ((mean_q - mean_p) ** 2 / var_p + dims * (x - torch.log1p(x)))


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
    # Densities with respect to Lebesgue measure; every KL in closed form. Subclasses whose
    # laws are Gaussian on a subspace override the three laws and ``_dims``.

    def _forward_law(self, t, x0):
        """Mean and variance of the forward law p(x_t | x_0 = x0)."""
        a, v = self._decay_and_variance(t, x0)
        mu = as_param(self.mean, x0)
        return mu + a * (x0 - mu), v

    def _bridge_law(self, s, t, x0, x_t):
        """Mean and variance of the bridge p(x_s | x_0 = x0, x_t) (see the class docstring)."""
        alpha, beta, offset, var = self._bridge_coefficients(s, t, x_t)
        return alpha * x0 + beta * x_t + offset, var

    def _stationary_law(self, like: Tensor):
        """Mean and variance of the equilibrium, broadcasting against ``like``."""
        var = as_param(self.volatility, like) ** 2 / (2 * as_param(self.reversion, like))
        return torch.full_like(like, as_param(self.mean, like)), torch.full_like(like, var)

    def _dims(self, x: Tensor) -> float:
        """Dimensions per element of the space the laws live on."""
        return 1.0

    def forward_log_prob(self, t, x0, x_t):
        return _gaussian_log_prob(x_t, *self._forward_law(t, x0.to(x_t.dtype)), self._dims(x_t))

    def equilibrium_log_prob(self, x):
        return _gaussian_log_prob(x, *self._stationary_law(x), self._dims(x))

    def bridge_log_prob(self, s, t, x0, x_t, x_s):
        return _gaussian_log_prob(x_s, *self._bridge_law(s, t, x0, x_t), self._dims(x_s))

    def bridge_kl(self, t0, s, t, x0, x0_hat, x_t, generator=None):
        """KL of two Gaussian bridges, exact (no draw)."""
        return _gaussian_kl(*self._bridge_law(s - t0, t - t0, x0, x_t),
                            *self._bridge_law(s, t, x0_hat, x_t), self._dims(x_t))

    def prior_kl(self, t0, T, x0, generator=None):
        """KL(q(x_T | x_{t0} = x0) || equilibrium), exact (no draw)."""
        return _gaussian_kl(*self._forward_law(T - t0, x0), *self._stationary_law(x0),
                            self._dims(x0))


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


class CenteredOrnsteinUhlenbeck(OrnsteinUhlenbeck):
    r"""Ornstein-Uhlenbeck with zero centre of mass over one dimension, for positions such as
    residues (B, L, 3) with ``dim=-2``.

    With P = I − 11ᵀ/L the projector onto the zero-mean subspace of dimension ``dim`` (size L),
    the process is dX = −θ P X dt + σ P dW: the centroid c = mean_dim(X) never moves, and the
    centred part Y = X − c is an OU process with mean 0 on the subspace. With a_u, v_u as for
    :class:`OrnsteinUhlenbeck` and ε ~ N(0, I), Pε = ε − mean_dim(ε) has covariance P per
    coordinate, so

    * forward: :math:`x_t = c_0 + a_t (x_0 - c_0) + \sqrt{v_t}\, P\varepsilon`;
    * bridge: :math:`x_s = c_t + \alpha (x_0 - c_0) + \beta (x_t - c_t)
      + \sqrt{v_s v_{t-s}/v_t}\, P\varepsilon` with α, β the OU bridge weights (mean 0);
      the result has x_t's centroid c_t (x0's own centroid c_0 is ignored);
    * equilibrium: centroid 0 and :math:`\sqrt{\sigma^2/(2\theta)}\, P\varepsilon`.

    Outputs hold the input's centroid exactly, up to float rounding. The loss and scaler are
    :class:`OrnsteinUhlenbeck`'s (squared error, √(1 − e^{−θt})); the eta-steps are OU's on
    the centred part (with projected noise). Likelihoods (``bd.elbo``) are of the centred
    part given the centroid: densities with respect to Lebesgue measure on the affine
    subspace of the data's centroid (L − 1 dimensions per coordinate), the equilibrium taken
    with that centroid.

    Masks are elementwise (event_ndim 0): the free functions keep held elements at their
    given values after the process has drawn all of them, so with a mask the centroid of the
    result is in general *not* the input's, and a masked step is not this process's bridge
    (the projection couples every residue to the held ones). To hold a motif exactly, use a
    plain :class:`OrnsteinUhlenbeck` in the motif's frame, whose elements are independent
    (``examples/protein_frames.py`` does so).
    """

    mean = 0.0  # OU's formulas with μ = 0 serve the centred part; the centroid stays put

    def __init__(self, volatility=1.0, reversion=0.5, dim=-2):
        self.volatility = positive("volatility", volatility)
        self.reversion = positive("reversion", reversion)
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        self.dim = dim

    def check_state(self, x: Tensor, name: str) -> None:
        super().check_state(x, name)
        if not -x.ndim <= self.dim < x.ndim:
            raise ValueError(f"{name} has {x.ndim} dimensions, so dim={self.dim} of "
                             f"{type(self).__name__} is out of range")
        if x.shape[self.dim] < 2:
            raise ValueError(f"{name} must have at least 2 elements along dim={self.dim} (the "
                             f"centre of mass of one element cannot move), got shape "
                             f"{tuple(x.shape)}")

    def _centroid(self, x: Tensor) -> Tensor:
        return x.mean(dim=self.dim, keepdim=True)

    def _check_shared_time(self, t: Tensor, x: Tensor, name: str = "t") -> None:
        """Refuse times that differ along ``dim``: the projection would mix elements noised to
        different times (say dim resolves to the batch dimension and t is per row)."""
        from_end = x.ndim - self.dim % x.ndim          # dim counted from the right
        if t.ndim >= from_end and t.shape[t.ndim - from_end] > 1:
            raise ValueError(f"{name} varies along dim={self.dim}, the dimension whose centroid "
                             f"{type(self).__name__} holds (data shape {tuple(x.shape)}): the "
                             f"elements of one centroid must share a time; for data (B, L, 3) "
                             f"with one time per row, use dim=-2")

    def _projected_noise(self, like: Tensor, generator) -> Tensor:
        eps = randn(like, generator)
        return eps - self._centroid(eps)

    def _forward_law(self, t, x0):
        self._check_shared_time(t, x0)
        a, v = self._decay_and_variance(t, x0)
        c0 = self._centroid(x0)
        return c0 + a * (x0 - c0), v

    def _bridge_law(self, s, t, x0, x_t):
        self._check_shared_time(s, x_t, "s")
        self._check_shared_time(t, x_t)
        alpha, beta, _, var = self._bridge_coefficients(s, t, x_t)
        x0 = x0.to(x_t.dtype)
        c_t = self._centroid(x_t)
        return c_t + alpha * (x0 - self._centroid(x0)) + beta * (x_t - c_t), var

    def _stationary_law(self, like: Tensor):
        """The equilibrium with its centroid at ``like``'s: the laws are conditioned on it."""
        _, var = super()._stationary_law(like)
        return self._centroid(like).expand_as(like), var

    def _dims(self, x: Tensor) -> float:
        return 1 - 1 / x.shape[self.dim]

    def sample_forward(self, t, x0, generator=None):
        mean, var = self._forward_law(t, x0)
        return torch.addcmul(mean, var.sqrt(), self._projected_noise(x0, generator))

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        mean, var = self._bridge_law(s, t, x0, x_t)
        return torch.addcmul(mean, var.sqrt(), self._projected_noise(x_t, generator))

    def eta_bridge(self, s, t, x0, x_t, eta, generator=None):
        """OU's eta-step on the centred parts, with projected noise; x_t's centroid kept."""
        self._check_shared_time(s, x_t, "s")
        self._check_shared_time(t, x_t)
        a_s, v_s = self._decay_and_variance(s, x_t)
        a_t, v_t = self._decay_and_variance(t, x_t)
        _, v_d = self._decay_and_variance(t - s, x_t)
        x0, c_t = x0.to(x_t.dtype), self._centroid(x_t)
        return c_t + _eta_step(x0 - self._centroid(x0), x_t - c_t, 0.0, a_s, a_t, v_s, v_t,
                               v_s * v_d / v_t, eta, generator, noise=self._projected_noise)

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None):
        shape = torch.Size(shape)
        if not -len(shape) <= self.dim < len(shape) or shape[self.dim] < 2:
            raise ValueError(f"shape must have at least 2 elements along dim={self.dim}, got "
                             f"{tuple(shape)}")
        z = super().sample_equilibrium(shape, generator=generator, device=device, dtype=dtype)
        return z - self._centroid(z)     # OU's equilibrium with μ = 0, projected
