r"""Brownian motion on SO(3): the exact IGSO(3) forward law and an SO(3) bridge."""

import math

import roma
import torch
import torch.nn.functional as F
from torch import Tensor

from . import _igso3
from ._util import as_param, on_host, positive, rejection, require_float, use_host_path
from .process import Process

__all__ = ["RotationDiffusion", "igso3_angle_pdf", "igso3_angle_cdf"]

UNIT_TOLERANCE = 1e-3   # largest accepted | |q| - 1 | of an input quaternion
BRIDGE_TRIES = 16       # exact rejection tries per bridge draw
BRIDGE_CANDIDATES = 64  # importance-resampling candidates where no try is accepted
NARROW = 0.25           # proposal weight of the IGSO(3) around the nearer endpoint


class RotationDiffusion(Process):
    r"""Brownian motion on the rotation group SO(3), on unit quaternions (..., 4), XYZW.

    Rotation-vector increments have per-axis variance :math:`\varepsilon_t^2 = 4 r t`, the
    limit of Diffusions.jl's ``RotationDiffusion(rate)`` (which composes small steps
    :math:`q \leftarrow q \exp(\mathrm{quat}(0, \sigma n))` with :math:`\sum \sigma^2 = r t`).

    * forward: :math:`x_t = x_0 R` with :math:`R \sim \mathrm{IGSO}(3)(\varepsilon_t^2)`:
      a uniform axis and an angle ω with density ``igso3_angle_pdf(ω, 4 r t)``, drawn
      exactly for every 4rt from 1e-8 to 1e3 (vectorised rejection, inverse-CDF fallback);
    * bridge: density with respect to Haar
      :math:`p(x_s \mid x_0, x_t) \propto f_{4rs}(\angle(x_0^{-1} x_s))\, f_{4r(t-s)}(\angle(x_s^{-1} x_t))`,
      drawn exactly by rejection from the narrower factor (16 tries) and otherwise by
      importance resampling over 64 IGSO(3) proposals around the geodesic from x0 to x_t
      (both ways round) and around the nearer endpoint; its distance to the exact law is below
      the sampling noise of 1e5 draws (tests/test_rotation.py), endpoints far apart included;
    * equilibrium: Haar-uniform rotations.

    q and −q are the same rotation everywhere; outputs are unit quaternions in the input's
    dtype (the sampling itself runs in float64; the forward sampler composes its float64
    draw with x0 in x0's dtype).

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
        require_float(x, name, self)
        if x.ndim < 1 or x.shape[-1] != 4:
            raise ValueError(f"{name} must be unit quaternions of shape (..., 4), XYZW, got "
                             f"shape {tuple(x.shape)}")
        if on_host(x) and x.numel() and not bool(
                ((x.norm(dim=-1) - 1).abs() <= UNIT_TOLERANCE).all()):
            raise ValueError(f"{name} must be unit quaternions: some norms differ from 1 by "
                             f"more than {UNIT_TOLERANCE}")

    def _eps2(self, t: Tensor, x: Tensor) -> Tensor:
        """ε² = 4 r t per rotation, flattened to (N,), in float64."""
        t = t.double()
        eps2 = 4 * as_param(self.rate, t) * t
        return torch.broadcast_to(eps2, x.shape)[..., 0].reshape(-1)

    def sample_forward(self, t, x0, generator=None):
        noise = _igso3.sample_relative(self._eps2(t, x0), generator).to(x0.dtype)
        return _unit(roma.quat_product(_unit(x0).reshape(-1, 4), noise)).reshape(x0.shape)

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        eps2_s = self._eps2(s, x_t)
        eps2_rest = self._eps2(t.double() - s.double(), x_t)
        q0, qt = _unit64(x0).reshape(-1, 4), _unit64(x_t).reshape(-1, 4)
        x_s = _resampled_bridge(eps2_s, eps2_rest, q0, qt, generator)
        return x_s.reshape(x_t.shape).to(x_t.dtype)

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None):
        shape = torch.Size(shape)
        if len(shape) < 1 or shape[-1] != 4:
            raise ValueError(f"shape must end with 4 (quaternions, XYZW), got {tuple(shape)}")
        z = torch.randn(shape, generator=generator, device=device,
                        dtype=dtype or torch.get_default_dtype())
        return _unit(z)

    def loss(self, x0_hat, x0):
        """Diffusions.jl's surrogate of the squared angle: with x = |<q̂, q>|,
        (1 − x)(x − 13)²/18 / 4, per rotation (shape ``x0.shape[:-1]``); sign-blind."""
        x = (x0_hat * x0).sum(dim=-1).abs()
        return (1 - x) * (x - 13) ** 2 / 72

    def scaler(self, t):
        """√(1 − e^{−5rt}), shaped to broadcast against the per-rotation loss."""
        value = (-torch.expm1(-5 * as_param(self.rate, t) * t)).sqrt()
        return value[..., 0] if value.ndim > 0 else value

    def guide(self, x0_uncond: Tensor, x0_cond: Tensor, w: float) -> Tensor:
        """Along the geodesic from the unconditional guess: q_u exp(w log(q_u⁻¹ q_c)), the
        shorter way round; unit quaternions (..., 4), XYZW."""
        q_u, q_c = _unit(x0_uncond), _unit(x0_cond)
        relative = roma.quat_product(roma.quat_conjugation(q_u), q_c)
        step = roma.rotvec_to_unitquat(w * roma.unitquat_to_rotvec(relative))
        return _unit(roma.quat_product(q_u, step))

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


def _unit(q: Tensor) -> Tensor:
    return q / q.norm(dim=-1, keepdim=True)


def _unit64(q: Tensor) -> Tensor:
    return _unit(q.double())


def _resampled_bridge(eps2_s, eps2_rest, q0, qt, generator, tries=BRIDGE_TRIES,
                      candidates=BRIDGE_CANDIDATES):
    r"""Draw x_s for rotations q0, qt (N, 4) float64 and ε_s², ε_{t−s}² (N,).

    Proposal g: a mixture of three IGSO(3) laws whose Haar densities are known exactly,
    R = c · Q with

    * Q ~ IGSO(3)(σ²), σ² = ε_s² ε_{t−s}²/ε_t², centred on the geodesic point
      c = q0 exp(κ ℓ), κ = ε_s²/ε_t², for ℓ = log(q0⁻¹qt) (|ℓ| ≤ π) and for the long way
      round ℓ − 2π ℓ/|ℓ|, weighted ∝ e^{−|ℓ|²/(2ε_t²)} (together 1 − ``NARROW``);
    * Q ~ IGSO(3)(min(ε_s², ε_{t−s}²)) centred on the endpoint of the narrower factor
      (weight ``NARROW``), the proposal of the rejection step.

    First, exact rejection: up to ``tries`` draws from the narrower factor alone
    (IGSO(3) around its endpoint), each kept with probability f_wider(∠ to the other
    endpoint)/f_wider(0); acceptance f_{ε_t²}(Ω)/f_wider(0) per draw, high unless the
    endpoints are far apart (Ω = ∠(q0⁻¹qt)). Where none is kept, an independent set of
    ``candidates`` mixture proposals is importance-resampled: one is kept with probability
    ∝ p/g, p the bridge density (streaming Gumbel-max, memory O(N)). The weights are
    nearly constant exactly where rejection fails (small ε, far-apart endpoints).
    """
    exact, accepted = _rejection(eps2_s, eps2_rest, q0, qt, generator, tries)
    # On CPU only the rejected rotations are resampled; elsewhere all are (no host sync).
    todo = ((~accepted).nonzero().squeeze(1) if use_host_path(q0)
            else torch.arange(q0.shape[0], device=q0.device))
    resampled = _importance_resample(eps2_s[todo], eps2_rest[todo], q0[todo], qt[todo],
                                     generator, candidates)
    out = exact.clone()
    out[todo] = torch.where(accepted[todo, None], exact[todo], resampled)
    return _unit(out)


def _rejection(eps2_s, eps2_rest, q0, qt, generator, tries):
    """Exact bridge draws by rejection from the narrower factor; returns (draws, accepted)."""
    from_start = (eps2_s <= eps2_rest)[:, None]
    centre, other_end = torch.where(from_start, q0, qt), torch.where(from_start, qt, q0)
    narrow_var, wider_var = torch.minimum(eps2_s, eps2_rest), torch.maximum(eps2_s, eps2_rest)
    log_peak = _igso3.log_density(torch.zeros_like(wider_var), wider_var)

    def propose(rows):
        cand = roma.quat_product(centre[rows], _igso3.sample_relative(narrow_var[rows], generator))
        angle = _igso3.relative_angle(cand, other_end[rows])
        log_ratio = _igso3.log_density(angle, wider_var[rows]) - log_peak[rows]
        u = torch.rand(angle.shape, generator=generator, dtype=torch.float64, device=q0.device)
        return cand, torch.log(u) < log_ratio

    return rejection(propose, q0.shape[0], tries, q0)


def _importance_resample(eps2_s, eps2_rest, q0, qt, generator, candidates):
    """One of ``candidates`` mixture proposals, kept with probability ∝ p/g."""
    eps2_t = eps2_s + eps2_rest
    kappa, var = eps2_s / eps2_t, eps2_s * eps2_rest / eps2_t
    ell = roma.unitquat_to_rotvec(roma.quat_product(roma.quat_conjugation(q0), qt))
    length = ell.norm(dim=-1, keepdim=True)
    axis = torch.where(length > 0, ell / length.clamp_min(1e-300),
                       torch.tensor([0.0, 0.0, 1.0], dtype=ell.dtype, device=ell.device))
    narrow_var, from_start = torch.minimum(eps2_s, eps2_rest), eps2_s <= eps2_rest
    ways = [roma.quat_product(q0, roma.rotvec_to_unitquat(kappa[:, None] * way))
            for way in (ell, ell - 2 * math.pi * axis)]                 # short, long way round
    narrow_centre = torch.where(from_start[:, None], q0, qt)
    length = length[:, 0]
    logit_long = (length ** 2 - (2 * math.pi - length) ** 2) / (2 * eps2_t)
    log_geodesic = math.log1p(-NARROW)
    log_ways = [log_geodesic + F.logsigmoid(-logit_long), log_geodesic + F.logsigmoid(logit_long)]
    draw = dict(generator=generator, dtype=torch.float64, device=q0.device)

    def propose():
        """A candidate R ~ g and log(p/g)."""
        u = torch.rand(var.shape, **draw)
        narrow = u < NARROW
        long_way = u >= NARROW + (1 - NARROW) * torch.sigmoid(-logit_long)
        centre = torch.where(narrow[:, None], narrow_centre,
                             torch.where(long_way[:, None], ways[1], ways[0]))
        cand = roma.quat_product(
            centre, _igso3.sample_relative(torch.where(narrow, narrow_var, var), generator))
        log_from_start = _igso3.log_density(_igso3.relative_angle(q0, cand), eps2_s)
        log_to_end = _igso3.log_density(_igso3.relative_angle(cand, qt), eps2_rest)
        log_g = [log_way + _igso3.log_density(_igso3.relative_angle(c, cand), var)
                 for log_way, c in zip(log_ways, ways)]
        # the narrow component's density is one of the target's two factors
        log_g.append(math.log(NARROW) + torch.where(from_start, log_from_start, log_to_end))
        log_proposal = torch.logsumexp(torch.stack(log_g), dim=0)
        return cand, log_from_start + log_to_end - log_proposal

    resampled, best_key = q0, torch.full_like(var, -math.inf)
    for _ in range(candidates):
        cand, log_weight = propose()
        key = log_weight - torch.log(-torch.log(torch.rand(var.shape, **draw)))  # + Gumbel
        better = key > best_key
        resampled, best_key = torch.where(better[:, None], cand, resampled), torch.maximum(key, best_key)
    return resampled
