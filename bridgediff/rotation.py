r"""Brownian motion on SO(3): the exact IGSO(3) forward law and the exact SO(3) bridge."""

import math

import roma
import torch
from torch import Tensor

from . import _igso3, _so3_bridge
from ._util import as_param, check_unit_vectors, on_host, positive
from .process import Process

__all__ = ["RotationDiffusion", "igso3_angle_pdf", "igso3_angle_cdf"]



class RotationDiffusion(Process):
    r"""Brownian motion on the rotation group SO(3), on unit quaternions (..., 4), XYZW.

    Rotation-vector increments have per-axis variance :math:`\varepsilon_t^2 = 4 r t`, the
    limit of Diffusions.jl's ``RotationDiffusion(rate)`` (which composes small steps
    :math:`q \leftarrow q \exp(\mathrm{quat}(0, \sigma n))` with :math:`\sum \sigma^2 = r t`).
    On the sphere S³ of unit quaternions this is Brownian motion with generator ½Δ run for
    the time τ = r t.

    * forward: :math:`x_t = x_0 R` with :math:`R \sim \mathrm{IGSO}(3)(\varepsilon_t^2)`:
      a uniform axis and an angle ω with density ``igso3_angle_pdf(ω, 4 r t)``. Drawn
      exactly by rejection: R = exp of the rotation vector 2Y, Y ~ N(0, τ'I₃) with
      τ' = 3τ/(3+τ), kept with probability R_τ(|Y|) (sin|Y|/|Y|) e^{|Y|²/6} 1{|Y| ≤ π}
      (R_τ the image factor of the S³ heat kernel; acceptance e^{−τ/2}(1+τ/3)^{3/2}) for
      τ ≤ 1.15, and a Haar proposal kept with f(ω)/f(0) above (acceptance ≥ 0.91).
    * bridge: the exact law, with density with respect to Haar
      :math:`p(x_s \mid x_0, x_t) \propto f_{4rs}(\angle(x_0^{-1} x_s))\, f_{4r(t-s)}(\angle(x_s^{-1} x_t))`,
      for every s < t and every pair of endpoints (far apart, antipodal or equal). Lifted
      to S³ it is a mixture of the two S³ bridges to ±x_t; each is drawn by rejection from
      the Euclidean Brownian bridge in ℝ³ mapped to S³ by its distances to both endpoints
      and its azimuth, kept with the ratio of image sums (≤ 1); the bridge to the far lift
      near the antipode, and large times, have two more exact proposals; each element uses
      the one with the larger closed-form acceptance (≥ 0.76 per round, ≈ 1 for rt ≤ 0.3).
      The derivation is in ``bridgediff/_so3_bridge.py``.
    * equilibrium: Haar-uniform rotations.

    q and −q are the same rotation everywhere; outputs are unit quaternions in the input's
    dtype. float64 data are sampled in float64, all others in float32: every formula is
    free of cancellation, so the draws are exact up to the rounding of that dtype (float32
    normals and uniforms have 24-bit resolution: tails beyond 5.7σ and acceptance
    probabilities finer than 6e-8 are lost, a total variation below 1e-7).

    Example::

        P = bd.RotationDiffusion(rate=1.0)
        x0 = roma.random_unitquat(8)                       # (8, 4)
        x_t = bd.sample_forward(P, 0.3, x0)
        x_s = bd.endpoint_conditioned_sample(P, 0.1, 0.3, x0, x_t)
    """

    event_ndim = 1

    def __init__(self, rate=1.0):
        self.rate = positive("rate", rate)

    def check_state(self, x: Tensor, name: str) -> None:
        check_unit_vectors(x, name, self, 4, "unit quaternions (XYZW)")

    def _times(self, t: Tensor, x: Tensor, dtype: torch.dtype) -> Tensor:
        """r·t in ``dtype``: 0-d if t is (one time for the whole call), else one per rotation (N,)."""
        tau = as_param(self.rate, t.to(dtype)) * t.to(dtype)
        if tau.ndim == 0:
            return tau
        return torch.broadcast_to(tau, x.shape)[..., 0].reshape(-1)

    def sample_forward(self, t, x0, generator=None):
        dtype = _compute_dtype(x0)
        x = x0.reshape(-1, 4).to(dtype)
        x_t = _igso3.sample(self._times(t, x0, dtype), x.shape[0], generator,
                            left=_igso3.components(x))
        return x_t.reshape(x0.shape).to(x0.dtype)

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        dtype = _compute_dtype(x_t)
        s, t = s.to(dtype), t.to(dtype)
        alpha, beta = self._times(s, x_t, dtype), self._times(t - s, x_t, dtype)
        x_s = _so3_bridge.sample(alpha, beta, x0.reshape(-1, 4).to(dtype),
                                 x_t.reshape(-1, 4).to(dtype), generator)
        return x_s.reshape(x_t.shape).to(x_t.dtype)

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None):
        shape = torch.Size(shape)
        if len(shape) < 1 or shape[-1] != 4:
            raise ValueError(f"shape must end with 4 (quaternions, XYZW), got {tuple(shape)}")
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype for unit quaternions, got {dtype}")
        z = torch.randn(shape, generator=generator, device=device,
                        dtype=torch.promote_types(dtype, torch.float32))
        return _unit(z).to(dtype)

    def loss(self, x0_hat, x0):
        """Diffusions.jl's surrogate of the squared angle, per rotation (shape
        ``x0.shape[:-1]``): with a = |⟨q̂, q⟩| / (|q̂| |q|) ∈ [0, 1], (1 − a)(a − 13)²/18 / 4.

        Both quaternions are normalised first (|q̂| floored at the dtype's epsilon, so the
        gradient is finite everywhere, the zero vector included), so the loss is ≥ 0 and
        vanishes only at q̂ = ±c q, c > 0: a model cannot lower it by scaling q̂. Sign-blind.
        """
        eps = torch.finfo(x0_hat.dtype).eps
        norms = ((x0_hat * x0_hat).sum(dim=-1).clamp_min(eps * eps)
                 * (x0 * x0).sum(dim=-1).clamp_min(eps * eps)).sqrt()
        a = ((x0_hat * x0).sum(dim=-1).abs() / norms).clamp(max=1)
        return (1 - a) * (a - 13) ** 2 / 72

    def scaler(self, t):
        """√(1 − e^{−5rt}), shaped to broadcast against the per-rotation loss."""
        value = (-torch.expm1(-5 * as_param(self.rate, t) * t)).sqrt()
        return value[..., 0] if value.ndim > 0 else value

    def guide(self, x0_uncond: Tensor, x0_cond: Tensor, w: float) -> Tensor:
        """Along the geodesic from the unconditional guess: q_u exp(w log(q_u⁻¹ q_c)), the
        shorter way round; unit quaternions (..., 4), XYZW, computed in float32 or wider and
        returned in the unconditional guess's dtype."""
        dtype = torch.promote_types(torch.promote_types(x0_uncond.dtype, x0_cond.dtype),
                                    torch.float32)
        q_u, q_c = _unit(x0_uncond.to(dtype)), _unit(x0_cond.to(dtype))
        relative = roma.quat_product(roma.quat_conjugation(q_u), q_c)
        step = roma.rotvec_to_unitquat(w * roma.unitquat_to_rotvec(relative))
        return _unit(roma.quat_product(q_u, step)).to(x0_uncond.dtype)

    # ---------------------------------------------------------------- likelihood (bd.elbo)
    # Densities with respect to the Haar probability measure, one per rotation (shape
    # x.shape[:-1]); bridges and KLs by the defaults (Markov property, Monte Carlo).

    def forward_log_prob(self, t, x0, x_t):
        """log f_{4rt}(∠(x0⁻¹ x_t)), the IGSO(3) Haar density (computed in float64)."""
        t = t.double()
        eps2 = 4 * as_param(self.rate, t) * (t[..., 0] if t.ndim > 0 else t)
        angle = _igso3.relative_angle(_unit64(x0), _unit64(x_t))
        return _igso3.log_density(angle, eps2.expand_as(angle)).to(x_t.dtype)

    def equilibrium_log_prob(self, x):
        return torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)


def igso3_angle_pdf(omega, eps2) -> Tensor:
    r"""Density of the rotation angle ω ∈ [0, π] of an IGSO(3) rotation with parameter ε².

    .. math::
        p(\omega) = \frac{1 - \cos\omega}{\pi} f(\omega), \qquad
        f(\omega) = \sum_{l \ge 0} (2l+1) e^{-l(l+1)\varepsilon^2/2}
                    \frac{\sin((l+\tfrac12)\omega)}{\sin(\omega/2)}

    f is the density with respect to the Haar measure (evaluated by this series for
    ε² ≥ 1 and by its exact image sum below). For ``RotationDiffusion(rate)`` at time t,
    ε² = 4·rate·t. ``omega`` and ``eps2`` are tensors (or floats) that broadcast; the
    result has their broadcast shape and the floating dtype of ``omega`` (computed in
    float64). Zero outside [0, π].
    """
    omega, eps2, dtype = _as_float64(omega, eps2)
    inside = (omega >= 0) & (omega <= math.pi)
    w = omega.clamp(0, math.pi)
    pdf = 2 * torch.sin(w / 2) ** 2 / math.pi * torch.exp(_igso3.log_density(w, eps2))
    return torch.where(inside, pdf, torch.zeros_like(pdf)).to(dtype)


def igso3_angle_cdf(omega, eps2) -> Tensor:
    r"""Distribution function P(angle ≤ ω) of the IGSO(3) rotation angle, parameter ε².

    .. math::
        F(\omega) = \frac{1}{\pi}\Big[\omega - \sin\omega + \sum_{l \ge 1} (2l+1)
        e^{-l(l+1)\varepsilon^2/2} \Big(\frac{\sin l\omega}{l}
        - \frac{\sin (l+1)\omega}{l+1}\Big)\Big]

    evaluated by this series for ε² ≥ 1 and, for ε² < 1, by the exact integral of the
    image sum (error functions of complex argument). Shapes and dtype as
    :func:`igso3_angle_pdf`; 0 below ω = 0 and 1 above π.
    """
    omega, eps2, dtype = _as_float64(omega, eps2)
    cdf = _igso3.angle_cdf(omega.clamp(0, math.pi), eps2)
    return torch.where(omega > math.pi, torch.ones_like(cdf), cdf).to(dtype)


# ---------------------------------------------------------------- helpers

def _as_float64(omega, eps2):
    dtype = (omega.dtype if isinstance(omega, Tensor) and omega.is_floating_point()
             else torch.get_default_dtype())
    omega = omega if isinstance(omega, Tensor) else torch.as_tensor(omega, dtype=torch.float64)
    eps2 = eps2 if isinstance(eps2, Tensor) else torch.as_tensor(eps2, dtype=torch.float64)
    if on_host(eps2) and not bool((eps2 > 0).all()):
        raise ValueError("eps2 must be positive (eps2 = 4 * rate * t)")
    omega, eps2 = torch.broadcast_tensors(omega.double(), eps2.to(omega.device).double())
    return omega, eps2, dtype


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for float64 data, float32 for every other float dtype (half precisions included)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _unit(q: Tensor) -> Tensor:
    return q / q.norm(dim=-1, keepdim=True)


def _unit64(q: Tensor) -> Tensor:
    return _unit(q.double())
