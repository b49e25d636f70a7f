"""Euclidean processes: Ornstein-Uhlenbeck (also with zero centre of mass) and Brownian motion,
exact in closed form."""

import torch
from torch import Tensor

from ._util import as_param, positive, randn, real, require_float
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


class _Euclidean(Process):
    """Shared checks and loss of the real-valued processes (squared error)."""

    def check_state(self, x: Tensor, name: str) -> None:
        require_float(x, name, self)

    def loss(self, x0_hat: Tensor, x0: Tensor) -> Tensor:
        return (x0_hat - x0) ** 2


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

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        # The mean m_s + a_{t-s} v_s / v_t (x_t - m_t) is α x0 + β x_t + μ(1 - α - β) with
        # α = a_s v_{t-s} / v_t and β = a_{t-s} v_s / v_t (using v_t = a_{t-s}² v_s + v_{t-s}).
        a_s, v_s = self._decay_and_variance(s, x_t)
        a_d, v_d = self._decay_and_variance(t - s, x_t)
        _, v_t = self._decay_and_variance(t, x_t)
        alpha, beta = a_s * v_d / v_t, a_d * v_s / v_t
        offset = as_param(self.mean, x_t) * (1 - alpha - beta)
        return _normal(offset, [(alpha, x0), (beta, x_t)], (v_s * v_d / v_t).sqrt(), x_t,
                       generator)

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None):
        z = torch.randn(shape, generator=generator, device=device,
                        dtype=dtype or torch.get_default_dtype())
        sd = as_param(self.volatility, z) / (2 * as_param(self.reversion, z)) ** 0.5
        return as_param(self.mean, z) + sd * z

    def scaler(self, t):
        return (-torch.expm1(-as_param(self.reversion, t) * t)).sqrt()


class BrownianMotion(_Euclidean):
    r"""Brownian motion (variance exploding), elementwise on any float tensor.

    .. math::
        dX = \sqrt{r}\, dW

    * forward: :math:`x_t \sim N(x_0,\ r t)`;
    * bridge: :math:`x_s \sim N(x_0 + (s/t)(x_t - x_0),\ r s (t - s) / t)`;
    * no equilibrium: start the backward chain from ``sample_forward(P, T, x0)``, the
      prior N(x0, rT) around a reference point x0.
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
    :class:`OrnsteinUhlenbeck`'s (squared error, √(1 − e^{−θt})).

    Masks are elementwise (event_ndim 0): the free functions keep unmasked elements at their
    given values after the process has drawn all of them, so with a mask the centroid of the
    result is in general *not* the input's; centre the data on the residues you hold fixed
    before and after sampling if you need it exact.
    """

    def __init__(self, volatility=1.0, reversion=0.5, dim=-2):
        # no ``mean``: the centred part reverts to 0, the centroid stays where it is
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

    def _projected_noise(self, like: Tensor, generator) -> Tensor:
        eps = randn(like, generator)
        return eps - self._centroid(eps)

    def sample_forward(self, t, x0, generator=None):
        a, v = self._decay_and_variance(t, x0)
        c0 = self._centroid(x0)
        return torch.addcmul(c0 + a * (x0 - c0), v.sqrt(), self._projected_noise(x0, generator))

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        a_s, v_s = self._decay_and_variance(s, x_t)
        a_d, v_d = self._decay_and_variance(t - s, x_t)
        _, v_t = self._decay_and_variance(t, x_t)
        alpha, beta = a_s * v_d / v_t, a_d * v_s / v_t
        x0 = x0.to(x_t.dtype)
        c0, c_t = self._centroid(x0), self._centroid(x_t)
        mean = c_t + alpha * (x0 - c0) + beta * (x_t - c_t)
        return torch.addcmul(mean, (v_s * v_d / v_t).sqrt(), self._projected_noise(x_t, generator))

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None):
        shape = torch.Size(shape)
        if not -len(shape) <= self.dim < len(shape) or shape[self.dim] < 2:
            raise ValueError(f"shape must have at least 2 elements along dim={self.dim}, got "
                             f"{tuple(shape)}")
        z = torch.randn(shape, generator=generator, device=device,
                        dtype=dtype or torch.get_default_dtype())
        sd = as_param(self.volatility, z) / (2 * as_param(self.reversion, z)) ** 0.5
        return sd * (z - self._centroid(z))
