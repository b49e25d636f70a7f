r"""Brownian motion on the unit sphere S²: the exact heat-kernel forward law and bridge.

Conventions. ``SphereBrownian(rate)`` has generator (rate/2)·Δ_{S²}: over a short time t the
displacement in the tangent plane is ≈ N(0, rate·t·I₂). With τ = rate·t, the density of x_t
with respect to the area measure of S² (total area 4π), as a function of z = cos ∠(x_0, x_t), is

    p_τ(z) = Σ_{l≥0} (2l+1)/(4π) · e^{−l(l+1)τ/2} · P_l(z).

Numerics of p_τ (all in float64):

* τ ≥ ``SERIES_FROM``: the Legendre series up to l = ``_L`` (the terms left out weigh less
  than e^{−l(l+1)/4} < 1e-20 next to the l = 0 term, and for τ ≥ 0.5 the series cancels by
  at most a factor 400 at the antipode: relative error below 1e-13);
* τ < ``SERIES_FROM``: the exact fibre integral. x_t = R·x_0 with R an IGSO(3) rotation of
  parameter ε² = τ, so p_τ is the IGSO(3) density averaged over the circle of rotations taking
  x_0 to x. Written with the unwrapped (SU(2)) rotation angle ω and the fibre angle α,
  cos(ω/2) = cos(θ/2)·cos(α/2), it is

      p_τ(θ) = e^{τ/8} / (2 π^{3/2} τ^{3/2}) · 2^{−1/2} ∫_0^{2π} ω e^{−ω²/(2τ)} / sin(ω/2) dα

  (the Abel–Mehler form of the S² heat kernel; the other images of the IGSO(3) density weigh
  less than e^{−2π²/τ} < 1e-17 relative for τ < 0.5). The integrand is even, analytic and
  Gaussian-like in α, so the midpoint rule on [0, A] with ``_NODES`` nodes, A cut where the
  Gaussian factor has fallen by e^{−45}, is accurate to ~1e-13 relative for every θ and τ
  (tests/test_sphere.py checks it to 1e-12 against independent oracles).

The bridge samples this fibre itself (``SphereBrownian``; its β is α/2).
"""

import math

import torch
from torch import Tensor

from . import _igso3, _so3_bridge
from ._util import as_param, check_unit_vectors, exact_rejection, positive, use_host_path
from .process import Process

__all__ = ["SphereBrownian"]

SERIES_FROM = 0.5       # τ at and above which p_τ is evaluated by its Legendre series
_L = 16                 # series terms l = 0..L
_NODES = 14             # fibre-quadrature nodes on [0, A]
_CUT = 45.0             # the fibre is cut where e^{−(ω² − θ²)/(2τ)} < e^{−45}
FIBRE_ROUNDS = 6        # fibre-angle rounds before the host decides on the leftovers
_GAMMA = math.log(math.pi / 2) / (math.pi / 2) ** 2  # d/sin d ≤ e^{γd²} on [0, π/2]
_LOG_NORMALISER = math.log(2 * math.pi ** 1.5)
_CHUNK = 1 << 15          # kernel evaluations on the CPU run in chunks of this many angles


# ---------------------------------------------------------------- the heat kernel

def _log_heat(half_sin: Tensor, half_cos: Tensor, tau: Tensor) -> Tensor:
    """log p_τ at the angle θ with sin(θ/2) = ``half_sin``, cos(θ/2) = ``half_cos`` (both ≥ 0),
    float64 tensors of one shape."""
    if half_sin.device.type == "cpu" and half_sin.numel() > _CHUNK:
        # elementwise, so chunks give the same numbers; (chunk, _NODES) temporaries stay in cache
        parts = [_log_heat(*args) for args in
                 zip(*(x.reshape(-1).split(_CHUNK) for x in (half_sin, half_cos, tau)))]
        return torch.cat(parts).reshape(half_sin.shape)
    return _igso3.select(tau < SERIES_FROM, _fibre, _series, half_sin, half_cos, tau)


def _series(sh: Tensor, ch: Tensor, tau: Tensor) -> Tensor:
    z = ch * ch - sh * sh
    p_prev, p = torch.ones_like(z), z                      # P_0, P_1
    total = torch.full_like(z, 1 / (4 * math.pi))
    for l in range(1, _L + 1):
        w = (2 * l + 1) / (4 * math.pi) * torch.exp(-l * (l + 1) / 2 * tau)
        total = total + w * p
        p_prev, p = p, ((2 * l + 1) * z * p - l * p_prev) / (l + 1)
    return torch.log(total)


def _fibre(sh: Tensor, ch: Tensor, tau: Tensor) -> Tensor:
    theta = 2 * torch.atan2(sh, ch)
    # cut point A: ω(A)² = θ² + 2·CUT·τ; sin²(ω/2) − sin²(θ/2) = sin((ω−θ)/2) sin((ω+θ)/2)
    d = 2 * _CUT * tau / (torch.sqrt(theta ** 2 + 2 * _CUT * tau) + theta)
    full = theta + d >= 2 * math.pi - theta
    cut = 2 * torch.atan2(torch.sqrt((torch.sin(d / 2) * torch.sin(theta + d / 2)).clamp_min(0)),
                          torch.cos((theta + d) / 2))
    A = torch.where(full, 2 * math.pi, cut)
    j = torch.arange(_NODES, dtype=tau.dtype, device=tau.device)
    alpha = (A[..., None] / _NODES) * (j + 0.5)
    s_om = torch.sqrt(sh[..., None] ** 2 + (ch[..., None] * torch.sin(alpha / 2)) ** 2)
    c_om = ch[..., None] * torch.cos(alpha / 2)     # sin, cos(ω/2) without cancellation
    omega = 2 * torch.atan2(s_om, c_om)             # > 0: the midpoints avoid α = 0
    t = tau[..., None]
    log_g = torch.log(omega / s_om) - omega * omega / (2 * t)
    log_sum = torch.logsumexp(log_g, -1)
    return (log_sum + torch.log(A / _NODES) - 0.5 * math.log(2)
            + tau / 8 - 1.5 * torch.log(tau) - _LOG_NORMALISER)


# ---------------------------------------------------------------- geometry

def _unit64(x: Tensor) -> Tensor:
    x = x.double()
    return x / x.norm(dim=-1, keepdim=True)


def _halves(a: Tensor, b: Tensor):
    """sin and cos of half the angle between unit vectors a and b: |a − b|/2, |a + b|/2."""
    return (a - b).norm(dim=-1) / 2, (a + b).norm(dim=-1) / 2


def _rotate(q: Tensor, v: Tensor) -> Tensor:
    """v rotated by unit quaternions q (XYZW): v + 2w (u × v) + 2 u × (u × v)."""
    u, w = q[..., :3], q[..., 3:]
    uv = torch.linalg.cross(u, v)
    return v + 2 * (w * uv + torch.linalg.cross(u, uv))


# ---------------------------------------------------------------- samplers

def _forward_rotations(tau: Tensor, generator) -> Tensor:
    """IGSO(3) rotations of parameter ε² = τ (N,), unit quaternions (N, 4): ``_igso3``'s exact
    sampler, whose time is that of S³, ε²/4."""
    return _igso3.sample(tau / 4, tau.shape[0], generator)


def _fibre_constants(sh: Tensor, ch: Tensor, tau: Tensor) -> dict:
    r"""The envelope of the fibre-angle law (``SphereBrownian``'s docstring) per element, from
    the half angle h of ∠(x0, x_t) (sin h = ``sh``, cos h = ``ch``, (N,)) and τ = r t (0-d or
    (N,)), all float64.

    *Gaussian + flat* where λ = 1/(2T) − γ > 0 and κ = 1 − (2h/π)² > 0 (T = τ/4):
    E(β) = π²C_T [e^{−λ(h² + κβ²)} + (π/2) e^{−π²/(8T)}]; else *flat*: E = min(f(0),
    f(2h) + f(π)/2). The first is taken where its Gaussian is narrow (sd ≤ 1/2) or its mass
    is the smaller (any deterministic choice is exact); the flat bound is evaluated (on the
    host) only where it may be taken. ``log_mass`` is log ∫E dβ: a round accepts
    4π² p_τ(θ)/mass, θ = 2h."""
    T = tau / 4
    h = torch.atan2(sh, ch)
    kappa = (1 - 2 * h / math.pi) * (1 + 2 * h / math.pi)
    lam = 1 / (2 * T) - _GAMMA
    ok = (lam > 0) & (kappa > 0)
    lam_k = torch.where(ok, lam * kappa, torch.ones_like(h))
    sd = torch.rsqrt(2 * lam_k)
    log_scale = T / 2 + 0.5 * math.log(math.pi) - 1.5 * math.log(2) - 1.5 * torch.log(T)
    log_gauss = torch.where(ok, log_scale - lam * h * h, torch.full_like(h, -math.inf))
    log_flat_gu = log_scale + math.log(math.pi / 2) - math.pi ** 2 / (8 * T)
    log_mass_gauss = log_gauss + 0.5 * torch.log(math.pi / lam_k)
    log_mass_gu = torch.logaddexp(log_mass_gauss, log_flat_gu + math.log(math.pi))

    def flat(h, tau):                  # min(f(0), f(2h) + f(π)/2), in logs
        edge = _igso3.log_density(torch.full_like(h, math.pi), tau)
        return torch.minimum(_igso3.log_density(torch.zeros_like(h), tau),
                             torch.logaddexp(_igso3.log_density(2 * h, tau), edge - math.log(2)))

    maybe = ~(ok & (sd <= 0.5))
    if not use_host_path(h):
        log_flat = torch.where(maybe, flat(h, tau), math.inf)
    else:
        log_flat = torch.full_like(h, math.inf)
        if bool(maybe.any()):
            rows = maybe.nonzero().squeeze(1)
            log_flat[rows] = flat(h[rows], tau if tau.ndim == 0 else tau[rows])
    gu = ok & (log_mass_gu < log_flat + math.log(math.pi))
    log_mass = torch.where(gu, log_mass_gu, log_flat + math.log(math.pi))
    squeeze = torch.where(lam > 0, log_scale + torch.log1p(-5 * torch.exp(-math.pi ** 2 / T)),
                          -math.inf)
    return dict(sh=sh, ch=ch, tau=tau, T=T, lam_k=lam_k, sd=sd, squeeze=squeeze, log_mass=log_mass,
                log_gauss=torch.where(gu, log_gauss, -math.inf),
                log_flat=torch.where(gu, log_flat_gu, log_flat),
                p_gauss=torch.where(gu, torch.sigmoid(log_mass_gauss - log_flat_gu
                                                      - math.log(math.pi)), 0.0))


def _fibre_propose(c: dict, rows, generator):
    """One round for the elements ``rows``: candidate fibre angles β (m,) and whether each is
    kept, with probability f_τ(2d(β)) / E(β) ≤ 1."""
    if not isinstance(rows, slice):
        c = {k: v if v.ndim == 0 else v[rows] for k, v in c.items()}
    sh = c["sh"]
    draw = dict(generator=generator, dtype=sh.dtype, device=sh.device)
    pick, u, v = (torch.rand(sh.shape, **draw) for _ in range(3))
    z = torch.randn(sh.shape, **draw)
    beta = torch.where(pick < c["p_gauss"], z * c["sd"], (u - 0.5) * math.pi)
    inside = beta.abs() <= math.pi / 2
    beta = beta.clamp(-math.pi / 2, math.pi / 2)
    # sin d, cos d without cancellation: sin²d = sin²h + cos²h sin²β, cos d = cos h cos β
    d = torch.atan2(torch.sqrt(sh * sh + (c["ch"] * torch.sin(beta)) ** 2),
                    c["ch"] * torch.cos(beta))
    log_v = torch.log(v) + torch.logaddexp(c["log_gauss"] - c["lam_k"] * beta * beta,
                                           c["log_flat"])
    if not use_host_path(sh):
        return beta, inside & (log_v < _igso3.log_density(2 * d, c["tau"]))
    # squeeze: f(2d) ≥ π²C_T (d/sin d) e^{−d²/(2T)} (1 − 5e^{−π²/T}) for d ≤ π/2, T ≤ 2.7
    keep = log_v < c["squeeze"] - d * d / (2 * c["T"]) - torch.log(_igso3.sinc(d))
    todo = (inside & ~keep).nonzero().squeeze(1)
    if todo.numel():
        tau = c["tau"] if c["tau"].ndim == 0 else c["tau"][todo]
        keep[todo] = log_v[todo] < _igso3.log_density(2 * d[todo], tau)
    return beta, inside & keep


def _fibre_angles(sh: Tensor, ch: Tensor, tau: Tensor, generator) -> Tensor:
    """Exact draws of the fibre angle β (N,) (``SphereBrownian``'s docstring)."""
    c = _fibre_constants(sh, ch, tau)
    return exact_rejection(lambda rows: _fibre_propose(c, rows, generator), sh.shape[0], sh,
                           FIBRE_ROUNDS)


def _bridge(a: Tensor, b: Tensor, tau_a, tau_b, dtype, generator) -> Tensor:
    """Exact bridge draws (N, 3) (float64) between unit vectors a, b (N, 3, float64) over times
    τ_a, τ_b (0-d or (N,), float64): R_t = R* ⊗ exp(β a) with β the fibre angle and R* the
    shortest rotation from a to b (axis a × b; where that vanishes, b = ±a, any axis ⊥ a
    gives the same fibre), the SO(3) bridge from the identity to R_t at S³ times τ_a/4, τ_b/4
    in ``dtype``, and x_s = R_s a. Written on components (contiguous (N,) tensors)."""
    n = a.shape[0]
    (ax, ay, az), (bx, by, bz) = _igso3.components(a), _igso3.components(b)
    sh = torch.sqrt((ax - bx) ** 2 + (ay - by) ** 2 + (az - bz) ** 2) / 2
    ch = torch.sqrt((ax + bx) ** 2 + (ay + by) ** 2 + (az + bz) ** 2) / 2
    axis = [ay * bz - az * by, az * bx - ax * bz, ax * by - ay * bx]
    norm = torch.sqrt(axis[0] ** 2 + axis[1] ** 2 + axis[2] ** 2)
    degenerate = norm <= 1e-150
    if not use_host_path(a) or bool(degenerate.any()):   # a × e_x or a × e_y, |·| ≥ 1/2
        small_x = ax.abs() <= 0.5
        other = [torch.where(small_x, 0.0, -az), torch.where(small_x, az, 0.0),
                 torch.where(small_x, -ay, ax)]
        axis = [torch.where(degenerate, o, v) for o, v in zip(other, axis)]
        norm = torch.where(degenerate, torch.sqrt(other[0] ** 2 + other[1] ** 2
                                                  + other[2] ** 2), norm)
    scale = sh / norm.clamp_min(1e-300)
    beta = _fibre_angles(sh, ch, tau_a + tau_b, generator)
    sin_b = torch.sin(beta)
    q_t = _igso3.unit_stack(_igso3.quat_mul((*(v * scale for v in axis), ch),
                                            (sin_b * ax, sin_b * ay, sin_b * az, torch.cos(beta))))
    identity = torch.zeros((n, 4), dtype=dtype, device=a.device)
    identity[:, 3] = 1
    q_s = _so3_bridge.sample(tau_a.to(dtype) / 4, tau_b.to(dtype) / 4, identity, q_t.to(dtype),
                             generator)
    ux, uy, uz, w = _igso3.components(q_s.double())
    # x_s = a + 2w (u × a) + 2 u × (u × a)
    cx, cy, cz = uy * az - uz * ay, uz * ax - ux * az, ux * ay - uy * ax
    out = a.new_empty((n, 3))
    out[:, 0] = ax + 2 * (w * cx + uy * cz - uz * cy)
    out[:, 1] = ay + 2 * (w * cy + uz * cx - ux * cz)
    out[:, 2] = az + 2 * (w * cz + ux * cy - uy * cx)
    return out


# ---------------------------------------------------------------- the process

class SphereBrownian(Process):
    r"""Brownian motion on the unit sphere S², on unit vectors of shape (..., 3).

    The generator is (r/2)·Δ_{S²} (r = ``rate``): for small t the displacement in the tangent
    plane is ≈ N(0, r t I₂). With τ = r t, the law of x_t given x_0 has density with respect
    to area

    .. math::
        p_\tau(x_0, x) = \sum_{l \ge 0} \frac{2l+1}{4\pi} e^{-l(l+1)\tau/2}
                         P_l(x_0 \cdot x),

    the S² heat kernel. Equivalently x_t = R x_0 with R ~ IGSO(3)(ε² = τ) (Brownian motion on
    SO(3) moves x_0 by Brownian motion on S²), and that is how the forward law is drawn:
    exactly, by the IGSO(3) rejection sampler, for τ from 1e-9 to 1e4.

    * bridge: density ∝ p_{rs}(x_0·x) p_{r(t−s)}(x·x_t) with respect to area, drawn exactly
      through SO(3) (below); x0 must be unit vectors like x_t (normalise a network's output);
    * equilibrium: uniform on S²;
    * loss: the squared chord |x̂/|x̂| − x|² = 2 − 2 cos ∠(x̂, x) (≈ the squared angle for close
      vectors; smooth, and x0_hat need not be normalised), per vector (shape ``x.shape[:-1]``);
      scaler √(1 − e^{−rt}): E[x_0·x_t] = e^{−rt}, so the RMS chord between x_0 and x_t is
      √2 times the scaler.

    **The bridge sampler: a lift to SO(3).** Let B be Brownian motion on SO(3) from the
    identity, B_t ~ IGSO(3)(ε² = rt). Its increments are conjugation invariant, so they are
    independent on either side, and x_t = B_t x_0 is this process (x_{t+h} = G x_t, G ~
    IGSO(3)(rh) independent of the past: the forward law above). (x_s, x_t) is a function of
    (B_s, B_t), hence, exactly,

        p(x_s | x_0, x_t) = law of B_s x_0,
        B_t ~ p(B_t | B_t x_0 = x_t),  B_s ~ p(B_s | B_0 = 1, B_t),

    the last being the SO(3) bridge (``_so3_bridge``: exact; its law
    ∝ f(∠B_s) f(∠(B_s⁻¹B_t)) is the same for left and right increments, f conjugation
    invariant), run at the S³ times rs/4, r(t − s)/4 (its ε² is 4× its time, as for the
    forward draw, ``_igso3.sample(τ/4)``). B_t is drawn on its fibre as follows.

    1. *The fibre law.* With a = x_0, b = x_t, θ = ∠(a, b), h = θ/2 and R* the shortest rotation
       from a to b (axis ⊥ a), the rotations taking a to b are R* ⊗ (sin β a, cos β),
       β ∈ (−π/2, π/2] (up to the sign of the quaternion). Haar measure disintegrates over
       R ↦ R a into the uniform measure dβ on each fibre, so β has density ∝ f_τ(2d), f_τ the
       IGSO(3) Haar density (``_igso3.log_density``, τ = rt) and d ∈ [h, π/2] the S³ distance
       of R to the identity: cos d = cos h cos β (the real part of R* ⊗ (sin β a, cos β)).
       (So p_τ(θ) = (1/4π) mean_β f_τ(2d), the fibre integral above; the tests check it.)
    2. *Envelopes.* With T = τ/4, f_τ(2d) = π²C_T [k(d) + k(π − d)], C_T = e^{T/2}(2πT)^{−3/2},
       where C_T k(d), k(d) = (d/sin d) e^{−d²/(2T)} R_T(d), is the S³ heat kernel and
       R_T ∈ [0, 1] its image factor (``_igso3.image_factor``, T ≤ π²). Facts:
       (i) d/sin d ≤ e^{γd²} on [0, π/2], γ = log(π/2)/(π/2)² (log(d/sin d) has positive Taylor
       coefficients in d², so log(d/sin d)/d² increases);
       (ii) d² ≥ h² + κβ², κ = 1 − (2h/π)²: in units of π/2 (u, w, v for h, β, d, so that
       cos(πv/2) = cos(πu/2) cos(πw/2)) it reads ψ(pq) ≤ ψ(p)ψ(q) for ψ(p) = 1 − (2 arccos p/π)²,
       which holds as L(t) = −log ψ(e^{−t}) is convex with L(0) = 0, hence superadditive (a
       one-variable fact; the tests check the bound itself on a fine grid; equality at β = π/2);
       (iii) the S³ heat kernel decreases with the distance, so k(π − d) ≤ k(π/2)
       ≤ (π/2) e^{−π²/(8T)} and f_τ(2d) ≤ π²C_T[k(h) + k(π/2)] ≤ f_τ(2h) + f_τ(π)/2; and
       f_τ(2d) ≤ f_τ(0) (a positive-definite function is largest at 0).
       Hence, where λ = 1/(2T) − γ > 0,
       f_τ(2d) ≤ π²C_T [e^{−λ(h² + κβ²)} + (π/2) e^{−π²/(8T)}] (a Gaussian in β plus a
       constant on |β| ≤ π/2), and everywhere f_τ(2d) ≤ min(f_τ(0), f_τ(2h) + f_τ(π)/2) (flat).
       Each element takes the first where its Gaussian is narrow or its mass is the smaller
       (a deterministic choice: exact either way); a round draws from the envelope's
       components in proportion to their masses and keeps β with probability
       f_τ(2d)/E(β) ≤ 1, so kept draws follow the fibre law exactly. It accepts
       4π² p_τ(θ)/(envelope mass) (the tests measure it): 0.98 for typical endpoints at
       rt = 0.6, ≥ 0.65 everywhere (the least near the antipode). On the host a squeeze,
       f_τ(2d) ≥ π²C_T k(d) ≥ π²C_T (d/sin d) e^{−d²/(2T)} (1 − 5e^{−π²/T}) (R_T(d) ≥ 1 −
       Σ_n 4n e^{−π²n(2n−1)/T} for d ≤ π/2), decides most draws without evaluating f_τ.
    3. B_t = R* ⊗ (sin β a, cos β); B_s from the SO(3) bridge between 1 and B_t; x_s = B_s a.

    Rounds: ``_util.exact_rejection`` (fixed rounds on accelerators, then one host decision
    on the leftovers; rejection is memoryless). Numerics: the fibre angle in float64 (its
    keep probability compares exponents of order θ²/τ, τ down to 1e-9); the SO(3) bridge in
    the data's precision (float32 for all but float64 data: it is free of cancellation, so
    only float32 rounding is lost, as for ``RotationDiffusion``); x_s = B_s a in float64;
    outputs are renormalised unit vectors in the input's dtype.

    Example::

        P = bd.SphereBrownian(rate=1.0)
        x0 = torch.nn.functional.normalize(torch.randn(8, 3), dim=-1)
        x_t = bd.sample_forward(P, 0.3, x0)
        x_s = bd.endpoint_conditioned_sample(P, 0.1, 0.3, x0, x_t)
    """

    event_ndim = 1

    def __init__(self, rate=1.0):
        self.rate = positive("rate", rate)

    def check_state(self, x: Tensor, name: str) -> None:
        check_unit_vectors(x, name, self, 3, "unit vectors")

    def _times(self, t: Tensor, x: Tensor) -> Tensor:
        """τ = r t in float64: 0-d if t is (one time for the call), else per vector (N,)."""
        t = t.double()
        tau = as_param(self.rate, t) * t
        return tau if tau.ndim == 0 else torch.broadcast_to(tau, x.shape)[..., 0].reshape(-1)

    def _tau(self, t: Tensor, x: Tensor) -> Tensor:
        """τ = r t per vector, (N,), in float64."""
        tau = self._times(t, x)
        return tau.expand(x.shape[:-1].numel()).contiguous() if tau.ndim == 0 else tau

    def sample_forward(self, t, x0, generator=None):
        rotations = _forward_rotations(self._tau(t, x0), generator)
        x = _rotate(rotations, _unit64(x0).reshape(-1, 3))
        return _in_dtype(x, x0)

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        s, t = s.double(), t.double()
        tau_s, tau_rest = self._times(s, x_t), self._times(t - s, x_t)
        dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        x = _bridge(_unit64(x0).reshape(-1, 3), _unit64(x_t).reshape(-1, 3), tau_s, tau_rest,
                    dtype, generator)
        return _in_dtype(x, x_t)

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None):
        shape = torch.Size(shape)
        if len(shape) < 1 or shape[-1] != 3:
            raise ValueError(f"shape must end with 3 (unit vectors), got {tuple(shape)}")
        dtype = dtype or torch.get_default_dtype()
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating-point dtype for unit vectors, got {dtype}")
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return z / z.norm(dim=-1, keepdim=True)

    def loss(self, x0_hat, x0):
        """Squared chord |x̂/|x̂| − x|² = 2 − 2 x̂·x/|x̂| per vector (shape ``x0.shape[:-1]``)."""
        norm = x0_hat.norm(dim=-1).clamp_min(torch.finfo(x0_hat.dtype).tiny)
        return 2 - 2 * (x0_hat * x0).sum(dim=-1) / norm

    def scaler(self, t):
        """√(1 − e^{−rt}), shaped to broadcast against the per-vector loss."""
        value = (-torch.expm1(-as_param(self.rate, t) * t)).sqrt()
        return value[..., 0] if value.ndim > 0 else value

    def guide(self, x0_uncond, x0_cond, w):
        """Along the great circle from the unconditional guess u through the conditional c:
        cos(wθ) u + sin(wθ) v, θ = ∠(u, c), v the unit tangent at u towards c (u where c is
        ±u and no direction is defined); unit vectors (..., 3)."""
        u, c = _unit64(x0_uncond), _unit64(x0_cond)
        cos = (u * c).sum(-1, keepdim=True)
        perp = c - cos * u
        sin = perp.norm(dim=-1, keepdim=True)
        theta = torch.atan2(sin, cos)
        direction = perp / sin.clamp_min(1e-300)
        out = torch.where(sin > 0, torch.cos(w * theta) * u + torch.sin(w * theta) * direction, u)
        return _in_dtype(out, x0_uncond)

    # ---------------------------------------------------------------- likelihood (bd.elbo)
    # Densities with respect to the area measure of S² (total 4π), one per vector (shape
    # x.shape[:-1]); bridges and KLs by the defaults (Markov property, Monte Carlo).

    def forward_log_prob(self, t, x0, x_t):
        """log p_{rt}(∠(x0, x_t)), the heat kernel (computed in float64)."""
        half_sin, half_cos = _halves(_unit64(x0), _unit64(x_t))
        tau = self._tau(t, x_t).reshape(half_sin.shape)
        return _log_heat(half_sin, half_cos, tau).to(x_t.dtype)

    def equilibrium_log_prob(self, x):
        return torch.full(x.shape[:-1], -math.log(4 * math.pi), dtype=x.dtype, device=x.device)


def _in_dtype(x: Tensor, like: Tensor) -> Tensor:
    x = x.to(like.dtype)
    return (x / x.norm(dim=-1, keepdim=True)).reshape(like.shape)
