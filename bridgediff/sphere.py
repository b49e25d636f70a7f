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

The slope λ = d log p_τ / dz, needed by the bridge, is the same average of the derivative of
the integrand (or the derivative of the series).
"""

import math

import torch
from torch import Tensor

from . import _igso3
from ._util import as_param, check_unit_vectors, exact_rejection, positive, use_host_path
from .process import Process

__all__ = ["SphereBrownian"]

SERIES_FROM = 0.5       # τ at and above which p_τ is evaluated by its Legendre series
_L = 16                 # series terms l = 0..L
_NODES = 14             # fibre-quadrature nodes on [0, A]
_CUT = 45.0             # the fibre is cut where e^{−(ω² − θ²)/(2τ)} < e^{−45}
BRIDGE_ROUNDS = 6       # bridge rounds before the host decides on the leftovers (≤ 1e-7 left
                        # where a round accepts 0.95, 0.4% at 0.6)
_TANGENT_MAX = math.pi - 1e-3  # tangent points stay off the antipode, where λ is 0/0
_LOG_NORMALISER = math.log(2 * math.pi ** 1.5)
_CHUNK = 1 << 15          # kernel evaluations on the CPU run in chunks of this many angles


# ---------------------------------------------------------------- the heat kernel

def _log_heat(half_sin: Tensor, half_cos: Tensor, tau: Tensor, slope: bool = False):
    """log p_τ at the angle θ with sin(θ/2) = ``half_sin``, cos(θ/2) = ``half_cos`` (both ≥ 0),
    float64 tensors of one shape; with ``slope`` also λ = d log p_τ/dz (z = cos θ), which is
    accurate for θ ≤ π − 1e-3 (at the antipode it is 0/0 and is not computed)."""
    if half_sin.device.type == "cpu" and half_sin.numel() > _CHUNK:
        # elementwise, so chunks give the same numbers; (chunk, _NODES) temporaries stay in cache
        parts = [_log_heat(*args, slope=slope) for args in
                 zip(*(x.reshape(-1).split(_CHUNK) for x in (half_sin, half_cos, tau)))]
        if slope:
            return tuple(torch.cat(p).reshape(half_sin.shape) for p in zip(*parts))
        return torch.cat(parts).reshape(half_sin.shape)

    def series(sh, ch, tau):
        return _series(sh, ch, tau, slope)

    def fibre(sh, ch, tau):
        return _fibre(sh, ch, tau, slope)

    return _igso3.select(tau < SERIES_FROM, fibre, series, half_sin, half_cos, tau)


def _series(sh: Tensor, ch: Tensor, tau: Tensor, slope: bool):
    z = ch * ch - sh * sh
    p_prev, p = torch.ones_like(z), z                      # P_0, P_1
    d_prev, d = torch.zeros_like(z), torch.ones_like(z)    # P_0', P_1'
    total = torch.full_like(z, 1 / (4 * math.pi))
    total_d = torch.zeros_like(z)
    for l in range(1, _L + 1):
        w = (2 * l + 1) / (4 * math.pi) * torch.exp(-l * (l + 1) / 2 * tau)
        total = total + w * p
        total_d = total_d + w * d
        p_prev, p, d_prev, d = (p, ((2 * l + 1) * z * p - l * p_prev) / (l + 1),
                                d, d_prev + (2 * l + 1) * p)
    log_p = torch.log(total)
    return (log_p, total_d / total) if slope else log_p


def _fibre(sh: Tensor, ch: Tensor, tau: Tensor, slope: bool):
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
    log_p = (log_sum + torch.log(A / _NODES) - 0.5 * math.log(2)
             + tau / 8 - 1.5 * torch.log(tau) - _LOG_NORMALISER)
    if not slope:
        return log_p
    # d/dz at fixed α: ∂ω/∂z = −cot(ω/2)/(2v), v = cos²(θ/2); d/dω log g = 1/ω − ω/τ − cot(ω/2)/2
    cot = c_om / s_om
    v = (ch * ch).clamp_min(1e-300)[..., None]
    derivative = (omega * cot / t - _q_cot(omega, cot)) / (2 * v)
    weights = torch.exp(log_g - log_sum[..., None])
    return log_p, (weights * derivative).sum(-1)


def _q_cot(omega: Tensor, cot: Tensor) -> Tensor:
    """(1/ω − cot(ω/2)/2)·cot(ω/2), by its Taylor series below ω = 0.1 (the next term,
    ω⁸/2395008, is below 5e-15 there; above it the direct form loses at most 1e-13)."""
    o2 = omega * omega
    series = 1 / 6 - o2 * (1 / 90 + o2 * (1 / 2520 + o2 / 75600))
    direct = (1 / omega - cot / 2) * cot
    return torch.where(omega < 0.1, series, direct)


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


def _tangent_basis(n: Tensor):
    """Two unit vectors completing the unit vectors n (N, 3) to orthonormal bases (Duff et
    al., 2017: branch-free and exact at every n)."""
    x, y, z = n.unbind(-1)
    sign = torch.where(z >= 0, 1.0, -1.0).to(n.dtype)
    a = -1 / (sign + z)
    b = x * y * a
    e1 = torch.stack([1 + sign * x * x * a, sign * b, -sign * x], -1)
    e2 = torch.stack([b, sign + y * y * a, -y], -1)
    return e1, e2


def _von_mises_fisher(mu: Tensor, kappa: Tensor, generator) -> Tensor:
    r"""Draws x ∝ e^{κ μ·x} on S², (N, 3), by inverting the law of 1 − μ·x exactly:
    w = −log(1 − u (1 − e^{−2κ}))/κ, then a uniform azimuth."""
    draw = dict(generator=generator, dtype=mu.dtype, device=mu.device)
    u = torch.rand(mu.shape[0], **draw)
    phi = 2 * math.pi * torch.rand(mu.shape[0], **draw)
    k = kappa.clamp_min(1e-300)
    w = -torch.log1p(u * torch.expm1(-2 * k)) / k
    w = w.clamp(0, 2)
    radial = torch.sqrt(w * (2 - w))
    e1, e2 = _tangent_basis(mu)
    return ((1 - w)[:, None] * mu
            + radial[:, None] * (torch.cos(phi)[:, None] * e1 + torch.sin(phi)[:, None] * e2))


# ---------------------------------------------------------------- samplers

def _forward_rotations(tau: Tensor, generator) -> Tensor:
    """IGSO(3) rotations of parameter ε² = τ (N,), unit quaternions (N, 4): ``_igso3``'s exact
    sampler, whose time is that of S³, ε²/4."""
    return _igso3.sample(tau / 4, tau.shape[0], generator)


def _log_sinhc(x: Tensor) -> Tensor:
    """log(sinh(x)/x) for x ≥ 0, without overflow or cancellation."""
    big = x - torch.log(2 * x.clamp_min(1e-300)) + torch.log1p(-torch.exp(-2 * x))
    return torch.where(x > 1e-3, big, x * x / 6)


def _log_exp_integral(slope: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """log ∫_lo^hi e^{−slope·w} dw = −slope·m + log Δ + log sinhc(slope Δ/2), m the midpoint."""
    width = (hi - lo).clamp_min(0)
    return (-slope * (lo + hi) / 2 + torch.log(width)
            + _log_sinhc((slope * width / 2).abs()))


def _exp_draw(slope: Tensor, lo: Tensor, hi: Tensor, u: Tensor) -> Tensor:
    """w on [lo, hi] with density ∝ e^{−slope·w}, by inverting its CDF from the heavier end."""
    width = (hi - lo).clamp_min(0)
    k = slope.abs().clamp_min(1e-300)
    depth = (-torch.log1p(u * torch.expm1(-k * width)) / k).clamp(min=torch.zeros_like(width),
                                                                    max=width)
    return torch.where(slope >= 0, lo + depth, hi - depth)


class _VonMisesFisherEnvelope:
    r"""The bridge envelope from the tangents of both kernels: a von Mises–Fisher law.

    For endpoints a, b and z_a = a·x, z_b = b·x the bridge density is ∝ p_{τa}(z_a) p_{τb}(z_b).
    Each log-concave factor lies below its tangent at any point z*:
    p_τ(z) ≤ p_τ(z*) e^{λ(z − z*)} with λ = (log p_τ)'(z*). Hence

        p_{τa}(z_a) p_{τb}(z_b) ≤ E(x) = C · e^{m·x},   m = λ_a a + λ_b b,

    a von Mises–Fisher law with direction m/|m| and concentration K = |m|, drawn exactly; its
    mass is C·4π sinh(K)/K. The tangent points are the bridge's mode on the geodesic in the
    flat limit, at angles κΩ from a and (1 − κ)Ω from b (κ = τa/(τa + τb), Ω = ∠(a, b),
    capped at π − 1e-3): then m points at that mode and K is the bridge's precision across
    the geodesic.
    """

    def __init__(self, a, b, tau_a, tau_b, omega, kappa):
        self.a, self.b, self.tau_a, self.tau_b = a, b, tau_a, tau_b
        theta_a = (kappa * omega).clamp(max=_TANGENT_MAX)
        theta_b = ((1 - kappa) * omega).clamp(max=_TANGENT_MAX)
        self.log_pa, self.slope_a = _log_heat_at(theta_a, tau_a)
        self.log_pb, self.slope_b = _log_heat_at(theta_b, tau_b)
        self.w_a, self.w_b = 1 - torch.cos(theta_a), 1 - torch.cos(theta_b)
        m = self.slope_a[:, None] * a + self.slope_b[:, None] * b
        self.kappa = m.norm(dim=-1)
        self.mu = torch.where(self.kappa[:, None] > 0,
                              m / self.kappa.clamp_min(1e-300)[:, None], a)

    def log_mass(self) -> Tensor:
        """log ∫ E dA, with log E(x) = log C + m·x."""
        log_c = (self.log_pa + self.log_pb - self.slope_a * (1 - self.w_a)
                 - self.slope_b * (1 - self.w_b))
        return log_c + math.log(4 * math.pi) + _log_sinhc(self.kappa)

    def log_envelope(self, x, rows):
        """log E at points x (m, 3) for the elements ``rows``, from x's half angles."""
        w_a, w_b = 2 * _halves(x, self.a[rows])[0] ** 2, 2 * _halves(x, self.b[rows])[0] ** 2
        return (self.log_pa[rows] + self.slope_a[rows] * (self.w_a[rows] - w_a)
                + self.log_pb[rows] + self.slope_b[rows] * (self.w_b[rows] - w_b))

    def propose(self, rows, generator):
        x = _von_mises_fisher(self.mu[rows], self.kappa[rows], generator)
        return x, _accept(x, self, rows, generator)


class _RingEnvelope:
    r"""The bridge envelope for nearly antipodal endpoints, whose bridge is a thin ring.

    In polar coordinates about the pole a (w = 1 − a·x, azimuth φ about a), the other endpoint
    b at angle Ω is at distance θ_b ≥ |Ω − r| from x (r = ∠(a, x)), so (p_τ increasing in z)
    p_{τb}(z_b) ≤ p_{τb}(c(z_a)), c(z) = z cos Ω + √(1 − z²) sin Ω = cos(Ω − r). The radial
    envelope h(z) = log p_{τa}(z) + log p_{τb}(c(z)) is concave in z (log p_{τb} is concave and
    increasing, c is concave), so its tangents at two points z_hi < z_lo around the ring bound
    it: h ≤ ℓ, ℓ the tangent at z_hi left of a breakpoint and the one at z_lo right of it (each
    tangent bounds h everywhere, so any breakpoint is valid; their crossing is the tightest).
    The proposal draws w from the two-piece exponential e^{ℓ} and φ uniformly; a draw is kept
    with probability p_{τa}(z_a) p_{τb}(z_b) / e^{ℓ} ≤ 1. The tangent points are one radial
    standard deviation σ = √(τa τb/(τa + τb)) either side of the ring's radius r* = κΩ. The pole
    is the endpoint nearer the ring (κ ≤ 1/2), so that w ≤ 1 there and x is formed accurately.
    """

    def __init__(self, a, b, tau_a, tau_b, omega, kappa):
        self.a, self.b, self.tau_a, self.tau_b = a, b, tau_a, tau_b
        self.cos_om, self.sin_om = torch.cos(omega), torch.sin(omega)
        ring = kappa * omega
        sd = torch.sqrt(tau_a * tau_b / (tau_a + tau_b))
        low_end = torch.maximum(omega - _TANGENT_MAX, ring / 2).clamp_min(1e-9)
        r_lo = torch.maximum(ring - sd, low_end)          # nearer the pole: larger z, smaller w
        r_hi = torch.minimum(ring + sd, torch.full_like(ring, _TANGENT_MAX)).maximum(r_lo)
        lines = [self._tangent(r, omega) for r in (r_lo, r_hi)]
        (self.h_lo, self.s_lo, self.w_lo), (self.h_hi, self.s_hi, self.w_hi) = lines
        # ℓ(w) = h_i − s_i (w − w_i), s_i = dh/dz: the line at r_lo for w < w_x, at r_hi beyond
        gap = self.s_hi - self.s_lo
        cross = (self.h_hi - self.h_lo + self.s_hi * self.w_hi - self.s_lo * self.w_lo) / gap
        mid = (self.w_lo + self.w_hi) / 2
        self.w_x = torch.where(gap > 0, cross, mid).maximum(self.w_lo).minimum(self.w_hi)
        zero, two = torch.zeros_like(ring), torch.full_like(ring, 2.0)
        self.log_left = (self.h_lo + self.s_lo * self.w_lo
                         + _log_exp_integral(self.s_lo, zero, self.w_x))
        self.log_right = (self.h_hi + self.s_hi * self.w_hi
                          + _log_exp_integral(self.s_hi, self.w_x, two))

    def _tangent(self, r, omega):
        """h, dh/dz and w at the angle r from the pole."""
        log_pa, slope_a = _log_heat_at(r, self.tau_a)
        log_pb, slope_b = _log_heat_at((omega - r).abs(), self.tau_b)
        dc_dz = self.cos_om - self.sin_om / torch.tan(r)
        return log_pa + log_pb, slope_a + slope_b * dc_dz, 1 - torch.cos(r)

    def log_mass(self) -> Tensor:
        return math.log(2 * math.pi) + torch.logaddexp(self.log_left, self.log_right)

    def propose(self, rows, generator):
        a = self.a[rows]
        draw = dict(generator=generator, dtype=a.dtype, device=a.device)
        u_piece, u, phi = (torch.rand(a.shape[0], **draw) for _ in range(3))
        left = torch.log(u_piece) < self.log_left[rows] - torch.logaddexp(self.log_left[rows],
                                                                          self.log_right[rows])
        zero, two, w_x = torch.zeros_like(u), torch.full_like(u, 2.0), self.w_x[rows]
        slope = torch.where(left, self.s_lo[rows], self.s_hi[rows])
        w = _exp_draw(slope, torch.where(left, zero, w_x), torch.where(left, w_x, two), u)
        e1, e2 = _tangent_basis(a)
        phi = 2 * math.pi * phi
        radial = torch.sqrt(w * (2 - w))
        x = ((1 - w)[:, None] * a
             + radial[:, None] * (torch.cos(phi)[:, None] * e1 + torch.sin(phi)[:, None] * e2))
        return x, _accept(x, self, rows, generator)

    def log_envelope(self, x, rows):
        """ℓ(w) at points x (m, 3) for the elements ``rows``, w = 1 − a·x from x's half angle."""
        w = 2 * _halves(x, self.a[rows])[0] ** 2
        return torch.where(w < self.w_x[rows],
                           self.h_lo[rows] - self.s_lo[rows] * (w - self.w_lo[rows]),
                           self.h_hi[rows] - self.s_hi[rows] * (w - self.w_hi[rows]))


def _log_heat_at(theta: Tensor, tau: Tensor):
    return _log_heat(torch.sin(theta / 2), torch.cos(theta / 2), tau, slope=True)


def _log_flat_lower_bound(sh: Tensor, ch: Tensor, tau: Tensor) -> Tensor:
    """log of the planar heat kernel e^{−θ²/(2τ)}/(2πτ), a lower bound of p_τ(θ) on S²
    (Cheeger and Yau, 1981: Ric ≥ 0 puts the heat kernel above the Euclidean one at equal
    distance; tests/test_sphere.py checks it too)."""
    theta = 2 * torch.atan2(sh, ch)
    return -theta * theta / (2 * tau) - torch.log(2 * math.pi * tau)


def _accept(x: Tensor, envelope, rows, generator) -> Tensor:
    """Accept each draw x (m, 3) of ``envelope`` for the elements ``rows`` with probability
    p_{τa}(∠(a, x)) p_{τb}(∠(x, b)) / envelope(x). On the host a squeeze decides first: a
    uniform below (lower bound)/envelope accepts at once, and only the other draws evaluate
    the kernels exactly (the same decision); elsewhere every draw is evaluated."""
    log_envelope = envelope.log_envelope(x, rows)
    factors = [(*_halves(x, envelope.a[rows]), envelope.tau_a[rows]),
               (*_halves(x, envelope.b[rows]), envelope.tau_b[rows])]
    log_u = torch.log(torch.rand(log_envelope.shape, generator=generator,
                                 dtype=log_envelope.dtype, device=log_envelope.device))
    if not use_host_path(log_envelope):
        return log_u < sum(_log_heat(*f) for f in factors) - log_envelope
    accepted = log_u < sum(_log_flat_lower_bound(*f) for f in factors) - log_envelope
    todo = (~accepted).nonzero().squeeze(1)
    if todo.numel():
        exact = sum(_log_heat(*(part[todo] for part in f)) for f in factors)
        accepted[todo] = log_u[todo] < exact - log_envelope[todo]
    return accepted


class _Bridge:
    """Per element, the exact envelope of smaller mass (higher acceptance p_t(Ω)/mass) wins.
    The ring is only set up where the von Mises–Fisher concentration K is below half the
    bridge's radial precision 1/σ² (far or nearly antipodal endpoints; on the host only for
    those elements), and taken where its mass is smaller."""

    def __init__(self, a, b, tau_a, tau_b):
        swap = tau_a > tau_b                       # the ring's pole is the nearer endpoint
        self.a = torch.where(swap[:, None], b, a)
        self.b = torch.where(swap[:, None], a, b)
        self.tau_a, self.tau_b = torch.where(swap, tau_b, tau_a), torch.where(swap, tau_a, tau_b)
        sh, ch = _halves(self.a, self.b)
        self.omega = 2 * torch.atan2(sh, ch)
        self.kappa = self.tau_a / (self.tau_a + self.tau_b)
        self.vmf = _VonMisesFisherEnvelope(self.a, self.b, self.tau_a, self.tau_b, self.omega,
                                           self.kappa)
        precision = (self.tau_a + self.tau_b) / (self.tau_a * self.tau_b)
        candidate = self.vmf.kappa < precision / 2
        n = self.a.shape[0]
        if use_host_path(a):
            self.ring_rows = candidate.nonzero().squeeze(1)
        else:
            self.ring_rows = torch.arange(n, device=a.device)
        self.ring, self.use_ring = None, torch.zeros_like(candidate)
        if self.ring_rows.numel():
            r = self.ring_rows
            self.ring = _RingEnvelope(self.a[r], self.b[r], self.tau_a[r], self.tau_b[r],
                                      self.omega[r], self.kappa[r])
            better = candidate[r] & (self.ring.log_mass() < self.vmf.log_mass()[r])
            self.use_ring[r] = better
        self.position = torch.full((n,), -1, dtype=torch.long, device=a.device)
        self.position[self.ring_rows] = torch.arange(self.ring_rows.numel(), device=a.device)

    def log_mass(self) -> Tensor:
        """log of the chosen envelope's mass: a round accepts with probability p_t(Ω)/mass."""
        mass = self.vmf.log_mass()
        if self.ring is not None:
            mass = mass.clone()
            mass[self.ring_rows] = torch.where(self.use_ring[self.ring_rows],
                                               self.ring.log_mass(), mass[self.ring_rows])
        return mass

    def log_envelope(self, x):
        """The chosen envelope at one point x (N, 3) per element (for the tests)."""
        rows = torch.arange(self.a.shape[0], device=x.device)
        out = self.vmf.log_envelope(x, rows)
        if self.ring is not None:
            r = self.ring_rows
            ring = self.ring.log_envelope(x[r], torch.arange(r.numel(), device=x.device))
            out[r] = torch.where(self.use_ring[r], ring, out[r])
        return out

    def propose(self, rows, generator):
        if isinstance(rows, slice):
            rows = torch.arange(self.a.shape[0], device=self.a.device)
        if self.ring is None:
            return self.vmf.propose(rows, generator)
        return _igso3.select(
            self.use_ring[rows],
            lambda r: self.ring.propose(self.position[r].clamp_min(0), generator),
            lambda r: self.vmf.propose(r, generator), rows)


def _bridge(a: Tensor, b: Tensor, tau_a: Tensor, tau_b: Tensor, generator) -> Tensor:
    """Exact bridge draws (N, 3) between unit vectors a, b (N, 3) over times τ_a, τ_b (N,)."""
    bridge = _Bridge(a, b, tau_a, tau_b)

    def propose(rows):
        return bridge.propose(rows, generator)

    return exact_rejection(propose, a.shape[0], a, BRIDGE_ROUNDS)


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

    * bridge: density ∝ p_{rs}(x_0·x) p_{r(t−s)}(x·x_t) with respect to area, drawn exactly by
      rejection (below); x0 must be unit vectors like x_t (normalise a network's output);
    * equilibrium: uniform on S²;
    * loss: the squared chord |x̂/|x̂| − x|² = 2 − 2 cos ∠(x̂, x) (≈ the squared angle for close
      vectors; smooth, and x0_hat need not be normalised), per vector (shape ``x.shape[:-1]``);
      scaler √(1 − e^{−rt}): E[x_0·x_t] = e^{−rt}, so the RMS chord between x_0 and x_t is
      √2 times the scaler.

    **Lemma (log-concavity).** For every τ > 0, z ↦ log p_τ(z) is concave on [−1, 1].
    *Proof.* Let u = log P for a positive solution of the heat equation in z,
    ∂_τ P = ½ ∂_z((1 − z²) ∂_z P), and w = u''. Differentiating twice,
    ∂_τ w = −3w − u'² − 3z w' − 4z u' w + ½(1 − z²)(w'' + 2w² + 2u' w').
    At a maximum point of w(·, τ) with value M ≥ 0 (interior: w' = 0, w'' ≤ 0; at z = 1:
    w' ≥ 0; at z = −1: w' ≤ 0, where the (1 − z²) terms vanish) this gives ∂_τ w ≤ C M, C
    bounded while u' is; so M cannot become positive once it is ≤ 0 (Grönwall). A von
    Mises–Fisher start P_0 ∝ e^{kz} has w ≡ 0, hence e^{τA}P_0 is log-concave for all τ, and
    as k → ∞ it tends to p_τ uniformly: p_τ is log-concave. ∎ In particular p_τ is increasing in
    z (a concave function maximal at z = 1, where p_τ(x, x) ≥ p_τ(x, y) by Cauchy–Schwarz),
    and every tangent line bounds it: p_τ(z) ≤ p_τ(z*) e^{λ(z − z*)}, λ = (log p_τ)'(z*).

    **The bridge sampler.** Two envelopes follow from the lemma; each element takes the one of
    smaller mass, and a draw is kept with probability (target)/(envelope) ≤ 1:

    * von Mises–Fisher: the product of the two tangent bounds at the bridge's mode on the
      geodesic (angles κΩ from x_0 and (1 − κ)Ω from x_t, κ = s/t, Ω = ∠(x_0, x_t)) is
      ∝ e^{(λ_0 x_0 + λ_t x_t)·x}, drawn in closed form;
    * ring, for nearly antipodal endpoints (whose bridge is a thin ring about x_0): about the
      pole x_0, p_{r(t−s)}(x·x_t) ≤ p_{r(t−s)}(cos(Ω − r)) at distance r, and the log of
      p_{rs}(cos r) p_{r(t−s)}(cos(Ω − r)) is concave in cos r; two of its tangents make a
      two-piece exponential law of cos r, with a uniform azimuth.

    A round accepts with probability p_{rt}(Ω)/(envelope mass), in closed form (the tests
    measure it). It is 1 − O(rt) for typical endpoints; 0.95 at Ω = 1 and 0.64–0.98 at
    Ω = 2.5 for any small rt; 0.76 at the antipode; its minimum over Ω, for endpoints a few
    standard deviations off antipodal, is 0.07, 0.02, 0.007 at rt = 1e-3, 1e-5, 1e-7 (0.25 at
    rt = 0.1). ``BRIDGE_ROUNDS`` vectorised rounds run on every element, then one host decision
    hands the leftovers to more rounds on those elements only (exact: rejection is memoryless).
    On the host a squeeze (the planar heat kernel is a lower bound, Cheeger–Yau) accepts most
    draws without evaluating p exactly.

    All sampling runs in float64: the densities are of order e^{−θ²/(2τ)} with τ down to 1e-9,
    and 1 − cos θ must be resolved far below float32's resolution; outputs are renormalised
    unit vectors in the input's dtype.

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

    def _tau(self, t: Tensor, x: Tensor) -> Tensor:
        """τ = r t per vector, flattened to (N,), in float64."""
        t = t.double()
        return torch.broadcast_to(as_param(self.rate, t) * t, x.shape)[..., 0].reshape(-1)

    def sample_forward(self, t, x0, generator=None):
        rotations = _forward_rotations(self._tau(t, x0), generator)
        x = _rotate(rotations, _unit64(x0).reshape(-1, 3))
        return _in_dtype(x, x0)

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        tau_s = self._tau(s, x_t)
        tau_rest = self._tau(t.double() - s.double(), x_t)
        x = _bridge(_unit64(x0).reshape(-1, 3), _unit64(x_t).reshape(-1, 3), tau_s, tau_rest,
                    generator)
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
        tau = torch.broadcast_to(as_param(self.rate, t.double()) * t.double(), x_t.shape)[..., 0]
        half_sin, half_cos = _halves(_unit64(x0), _unit64(x_t))
        return _log_heat(half_sin, half_cos, tau.expand_as(half_sin).contiguous()).to(x_t.dtype)

    def equilibrium_log_prob(self, x):
        return torch.full(x.shape[:-1], -math.log(4 * math.pi), dtype=x.dtype, device=x.device)


def _in_dtype(x: Tensor, like: Tensor) -> Tensor:
    x = x.to(like.dtype)
    return (x / x.norm(dim=-1, keepdim=True)).reshape(like.shape)
