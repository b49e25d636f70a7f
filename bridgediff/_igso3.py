r"""Numerics of the isotropic Gaussian law on SO(3), IGSO(3), in float64.

``eps2`` = ε² is the per-axis variance of the rotation-vector increments. The rotation
angle ω ∈ [0, π] of a draw has Haar density f(ω) (and angle density (1 − cos ω)/π · f(ω)),
written in two exact forms:

* series:  f(ω) = Σ_l (2l+1) e^{−l(l+1)ε²/2} D_l(ω),  D_l(ω) = sin((l+½)ω)/sin(ω/2)
  = 1 + 2 Σ_{j≤l} cos(jω), used for ε² ≥ 1 where l ≤ 9 leaves out less than e^{−45};
* images:  f(ω) = e^{ε²/8} √(2π) ε^{−3} Σ_k (−1)^k (ω − 2πk) e^{−(ω−2πk)²/(2ε²)} / sin(ω/2),
  used for ε² < 1 with |k| ≤ 3 (the next images weigh less than e^{−80}); the terms ±k are
  summed in pairs so that nothing is divided by sin(ω/2) → 0.

Everything takes and returns float64 tensors that broadcast against each other.
"""

import math

import roma
import torch
from torch import Tensor

from ._util import rejection, use_host_path

SERIES_FROM = 1.0   # ε² at and above which the series form is used
_L = 9              # series terms l = 0..L
_L_HAAR = 5         # for ε² > 3 (Haar proposals) l ≤ 5 leaves out less than 1e-25
_K = 3              # image pairs k = 1..K
_J = 10             # Hermite terms in the images CDF: (ε²/4)^J / √((2J)!) < 1e-15 for ε² < 1
GAUSSIAN_UP_TO = 3.0  # forward sampler: Gaussian proposal up to this ε², Haar above
ROUNDS = 16         # rejection rounds; acceptance ≥ 0.687 leaves ≤ 0.313^16 < 1e-8 pending
_TINY = 1e-300


def _exp(x: Tensor) -> Tensor:
    """e^x with x clamped at −300: every term it feeds is negligible there (< 1e-130 next to
    terms of order 1), and it keeps CPUs off their slow subnormal path."""
    return torch.exp(x.clamp_min(-300.0))


# ---------------------------------------------------------------- series form

def _series_weights(eps2: Tensor, last: int = _L):
    """The coefficients (2l+1) e^{−l(l+1)ε²/2}, l = 0..last, as a list of tensors."""
    return [(2 * l + 1) * _exp(-l * (l + 1) * eps2 / 2) for l in range(last + 1)]


def series_density(omega: Tensor, eps2: Tensor, last: int = _L) -> Tensor:
    """f(ω) by the series up to l = last, summing Dirichlet kernels (no division by sin(ω/2))."""
    cos1 = torch.cos(omega)
    cos_prev, cos_j = torch.ones_like(cos1), cos1          # cos(0ω), cos(1ω)
    dirichlet = torch.ones_like(cos1)                       # D_0
    total = torch.zeros_like(cos1)
    for l, w in enumerate(_series_weights(eps2, last)):
        if l > 0:
            dirichlet = dirichlet + 2 * cos_j
            cos_prev, cos_j = cos_j, 2 * cos1 * cos_j - cos_prev
        total = total + w * dirichlet
    return total


def series_peak(eps2: Tensor, last: int = _L) -> Tensor:
    """f(0) = Σ_{l≤last} (2l+1)² e^{−l(l+1)ε²/2}."""
    return sum(w * (2 * l + 1) for l, w in enumerate(_series_weights(eps2, last)))


def series_cdf(omega: Tensor, eps2: Tensor) -> Tensor:
    """F(ω) = (1/π)[ω − sin ω + Σ_{l≥1} (2l+1) e^{−l(l+1)ε²/2} (sin(lω)/l − sin((l+1)ω)/(l+1))]."""
    cos1, sin1 = torch.cos(omega), torch.sin(omega)
    sin_l, sin_next = sin1, 2 * cos1 * sin1                 # sin(lω), sin((l+1)ω) at l = 1
    total = omega - sin1
    for l, w in enumerate(_series_weights(eps2)):
        if l == 0:
            continue
        total = total + w * (sin_l / l - sin_next / (l + 1))
        sin_l, sin_next = sin_next, 2 * cos1 * sin_next - sin_l
    return total / math.pi


# ---------------------------------------------------------------- images form

def _image_pair(omega: Tensor, eps2: Tensor, k: int):
    """e^{x−c} and x for the pair ±k: the images' Gaussians relative to e^{−ω²/(2ε²)} are
    e^{−c ± x} with c = 2π²k²/ε², x = 2πkω/ε² (so x − c ≤ 0 never overflows)."""
    x = 2 * math.pi * k * omega / eps2
    return _exp(x - 2 * math.pi ** 2 * k ** 2 / eps2), x


def images_log_density(omega: Tensor, eps2: Tensor) -> Tensor:
    """log f(ω) by the images. With q = ω/sin(ω/2) and h(x) = (1 − e^{−2x})/(2x),
    f = C e^{−ω²/(2ε²)} q [1 + Σ_k (−1)^k e^{x−c} (1 + e^{−2x} − 8π²k² h(x)/ε²)]."""
    bracket = torch.ones_like(omega * eps2)
    for k in range(1, _K + 1):
        e, x = _image_pair(omega, eps2, k)
        x = x.clamp_min(_TINY)
        h = -torch.expm1(-2 * x) / (2 * x)
        bracket = bracket + (-1) ** k * e * (1 + _exp(-2 * x) - 8 * math.pi ** 2 * k ** 2 * h / eps2)
    log_c = eps2 / 8 + 0.5 * math.log(2 * math.pi) - 1.5 * torch.log(eps2)
    log_q = math.log(2) - torch.log(torch.sinc(omega / (2 * math.pi)))
    return log_c - omega ** 2 / (2 * eps2) + log_q + torch.log(bracket.clamp_min(_TINY))


def _re_erf(u: Tensor, eps2: Tensor) -> Tensor:
    """Re erf(x − iy) at x = u/√(2ε²), y = √(ε²/8), by its Taylor series in y:
    erf(x) − (2/√π) e^{−x²} Σ_j (−1)^j y^{2j} H_{2j−1}(x)/(2j)!, with the scaled Hermite
    polynomials h_n = yⁿ H_n(x): h_{n+1} = (u/2) h_n − n (ε²/4) h_{n−1} (no overflow)."""
    x = u / torch.sqrt(2 * eps2)
    y = torch.sqrt(eps2 / 8)
    h_prev, h = torch.ones_like(x), u / 2                   # h_0, h_1
    total, factorial = torch.zeros_like(x), 1.0
    for n in range(1, 2 * _J):
        if n % 2 == 1:
            j = (n + 1) // 2
            factorial *= (2 * j - 1) * (2 * j)
            total = total + (-1) ** j * y * h / factorial
        h_prev, h = h, (u / 2) * h - n * (eps2 / 4) * h_prev
    return torch.erf(x) - 2 / math.sqrt(math.pi) * _exp(-x ** 2) * total


def images_cdf(omega: Tensor, eps2: Tensor) -> Tensor:
    """F(ω) = Σ_k [G(ω − 2πk) − G(−2πk)] over k ∈ {−1, 0, 1}, where
    G(u) = Re erf((u − iε²/2)/√(2ε²)) − (2/π) C ε² sin(u/2) e^{−u²/(2ε²)} is the odd
    antiderivative of (2/π) C sin(u/2) u e^{−u²/(2ε²)} (so the constants G(∓2π) cancel)."""
    c_eps2 = _exp(eps2 / 8) * torch.sqrt(2 * math.pi / eps2)

    def antiderivative(u):
        return _re_erf(u, eps2) - 2 / math.pi * c_eps2 * torch.sin(u / 2) * _exp(-u ** 2 / (2 * eps2))

    return (antiderivative(omega) + antiderivative(omega - 2 * math.pi)
            + antiderivative(omega + 2 * math.pi))


# ---------------------------------------------------------------- switched forms

def select(cond: Tensor, if_true, if_false, *args):
    """``if_true(*args)`` where ``cond`` holds and ``if_false(*args)`` elsewhere.

    Both functions act element by element over ``cond``'s shape S: each arg has shape
    S + (…), and each returns a tensor or a tuple of tensors of shape S + (…). On the host
    each function runs only on its own elements; on other devices both run on all elements
    and ``torch.where`` picks (no host sync).
    """
    if not use_host_path(cond):
        def pick(a, b):
            return torch.where(cond.reshape(cond.shape + (1,) * (a.ndim - cond.ndim)), a, b)
        return _pairwise(pick, if_true(*args), if_false(*args))
    if bool(cond.all()):
        return if_true(*args)
    if not bool(cond.any()):
        return if_false(*args)

    def scatter(a, b):
        out = a.new_empty(cond.shape + a.shape[1:])
        out[cond], out[~cond] = a, b
        return out
    return _pairwise(scatter, if_true(*(x[cond] for x in args)),
                     if_false(*(x[~cond] for x in args)))


def _pairwise(fn, a, b):
    """fn(a, b) for tensors, or fn applied pairwise to tuples of tensors."""
    return tuple(map(fn, a, b)) if isinstance(a, tuple) else fn(a, b)


def log_density(omega: Tensor, eps2: Tensor) -> Tensor:
    """log f(ω), the log Haar density of IGSO(3) at rotation angle ω."""
    omega, eps2 = torch.broadcast_tensors(omega, eps2)
    return select(eps2 < SERIES_FROM, images_log_density, _series_log_density, omega, eps2)


def _series_log_density(omega: Tensor, eps2: Tensor) -> Tensor:
    return torch.log(series_density(omega, eps2).clamp_min(_TINY))


def angle_cdf(omega: Tensor, eps2: Tensor) -> Tensor:
    """F(ω) = P(angle ≤ ω), clamped to [0, 1]."""
    omega, eps2 = torch.broadcast_tensors(omega, eps2)
    return select(eps2 < SERIES_FROM, images_cdf, series_cdf, omega, eps2).clamp(0, 1)


def inverse_angle_cdf(u: Tensor, eps2: Tensor, iterations: int = 52) -> Tensor:
    """The ω with F(ω) = u, by bisection on [0, π] (to π 2^{−52}, branch-free)."""
    lo, hi = torch.zeros_like(u), torch.full_like(u, math.pi)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        below = angle_cdf(mid, eps2) < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


# ---------------------------------------------------------------- sampling

def _image_balance(omega: Tensor, eps2: Tensor) -> Tensor:
    """f/Pos ∈ [0, 1], where Pos sums the positive image terms: the probability that turns
    a Gaussian rotation vector, kept with probability max(sinc(r/2), 0), into IGSO(3)."""
    pos, neg = omega.clone(), torch.zeros_like(omega)
    for k in range(1, _K + 1):
        e, x = _image_pair(omega, eps2, k)
        near = (2 * math.pi * k - omega) * e                  # the image at ω − 2πk
        far = (2 * math.pi * k + omega) * e * _exp(-2 * x)  # the image at ω + 2πk
        pos, neg = (pos + near, neg + far) if k % 2 else (pos + far, neg + near)
    return 1 - neg / pos.clamp_min(_TINY)


def _propose(z: Tensor, eps2: Tensor):
    """A proposal quaternion (N, 4) from normals z (N, 4) and its acceptance probability.

    ε² ≤ 3: rotation vector v = ε z[:3] (Gaussian), accepted with max(sinc(|v|/2), 0) times
    the image balance: overall acceptance e^{−ε²/8} ≥ 0.687.
    ε² > 3: Haar quaternion z/|z|, accepted with f(ω)/f(0): acceptance 1/f(0) ≥ 0.69.
    """
    return select(eps2 <= GAUSSIAN_UP_TO, _propose_gaussian, _propose_haar, z, eps2)


def _propose_gaussian(z: Tensor, eps2: Tensor):
    v = torch.sqrt(eps2)[:, None] * z[:, :3]
    r = v.norm(dim=-1)
    angle = (r - 2 * math.pi * torch.round(r / (2 * math.pi))).abs()
    p_accept = torch.sinc(r / (2 * math.pi)).clamp_min(0) * _image_balance(angle, eps2)
    return roma.rotvec_to_unitquat(v), p_accept


def _propose_haar(z: Tensor, eps2: Tensor):
    angle = 2 * torch.atan2(z[:, :3].norm(dim=-1), z[:, 3].abs())
    p_accept = series_density(angle, eps2, _L_HAAR) / series_peak(eps2, _L_HAAR)
    return z / z.norm(dim=-1, keepdim=True), p_accept


def sample_relative(eps2: Tensor, generator=None) -> Tensor:
    """Unit quaternions (N, 4), XYZW, of IGSO(ε²) rotations for ε² (N,) float64.

    At most ``ROUNDS`` vectorised rejection rounds (exact), then the elements still pending
    (each with probability < 1e-8) are drawn by inverse CDF, which on the host runs only if
    some are pending and on other devices always runs, so nothing waits for the host.
    """
    n = eps2.shape[0]
    draw = dict(generator=generator, dtype=torch.float64, device=eps2.device)

    def propose(rows):
        m = eps2[rows].shape[0]
        quat, p_accept = _propose(torch.randn(m, 4, **draw), eps2[rows])
        return quat, torch.rand(m, **draw) < p_accept

    quat, accepted = rejection(propose, n, ROUNDS, eps2)
    if not use_host_path(eps2) or not bool(accepted.all()):
        u, axis = torch.rand(n, **draw), torch.randn(n, 3, **draw)
        omega = inverse_angle_cdf(u, eps2)
        rotvec = omega[:, None] * axis / axis.norm(dim=-1, keepdim=True).clamp_min(_TINY)
        quat = torch.where(accepted[:, None], quat, roma.rotvec_to_unitquat(rotvec))
    return quat


def relative_angle(p: Tensor, q: Tensor) -> Tensor:
    """The rotation angle of p⁻¹q in [0, π] for unit quaternions (..., 4), sign-blind.

    p and q as vectors of ℝ⁴ make the angle θ = 2 atan2(|p − q|, |p + q|) (accurate at
    every θ, unlike acos), and p⁻¹q rotates by 2θ, or by 2(π − θ) for −q.
    """
    apart, together = (p - q).norm(dim=-1), (p + q).norm(dim=-1)
    return 4 * torch.atan2(torch.minimum(apart, together), torch.maximum(apart, together))
