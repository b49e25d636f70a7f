r"""Numerics of the isotropic Gaussian law on SO(3), IGSO(3), and of the S³ heat kernel.

``eps2`` = ε² is the per-axis variance of the rotation-vector increments; τ = ε²/4 is the
time of the Brownian motion (generator ½Δ) on the unit sphere S³ of unit quaternions that
projects onto it (a rotation by ω is at S³-distance ω/2 from the identity). The rotation
angle ω ∈ [0, π] of a draw has Haar density f(ω) (and angle density (1 − cos ω)/π · f(ω)),
written in two exact forms:

* series:  f(ω) = Σ_l (2l+1) e^{−l(l+1)ε²/2} D_l(ω),  D_l(ω) = sin((l+½)ω)/sin(ω/2)
  = 1 + 2 Σ_{j≤l} cos(jω), used for ε² ≥ 1 where l ≤ 9 leaves out less than e^{−45};
* images:  f(ω) = e^{ε²/8} √(2π) ε^{−3} Σ_k (−1)^k (ω − 2πk) e^{−(ω−2πk)²/(2ε²)} / sin(ω/2),
  used for ε² < 1 with |k| ≤ 3 (the next images weigh less than e^{−80}); the terms ±k are
  summed in pairs so that nothing is divided by sin(ω/2) → 0.

On S³ the heat kernel at distance d is K_τ(d) = e^{τ/2}(2πτ)^{−3/2} Σ_n (d + 2πn)/sin d ·
e^{−(d+2πn)²/(2τ)}; its image factor R_τ (``image_factor``) is the ratio of the sum to its
n = 0 term. Both the forward sampler here and the bridge (``_so3_bridge``) accept Euclidean
Gaussian proposals with probabilities built from it.

Everything takes and returns floating tensors that broadcast against each other and
computes in their dtype (float32 or float64): each formula is written without
cancellation, so float32 inputs lose only float32 rounding.
"""

import math

import torch
from torch import Tensor

from ._util import exact_rejection, use_host_path

SERIES_FROM = 1.0   # ε² at and above which the series form is used
_L = 9              # series terms l = 0..L
_L_HAAR = 5         # for ε² > 4.6 (Haar proposals) l ≤ 5 leaves out less than 1e-39
_K = 3              # image pairs k = 1..K
_J = 10             # Hermite terms in the images CDF: (ε²/4)^J / √((2J)!) < 1e-15 for ε² < 1
GAUSSIAN_UP_TO = 1.15  # forward sampler: Gaussian proposal up to this τ = ε²/4, Haar above
DEVICE_ROUNDS = 6   # device path: fixed rounds on every element; acceptance ≥ 0.915 leaves
                    # each element pending with probability < 1e-6, finished on that subset


def tiny(x: Tensor) -> float:
    """The smallest normal number of ``x``'s dtype (a floor that keeps divisions finite)."""
    return torch.finfo(x.dtype).tiny


def _exp(x: Tensor) -> Tensor:
    """e^x with x clamped at the log of the dtype's smallest normal number: every term it feeds
    is then negligible next to terms of order 1, and CPUs stay off their slow subnormal path."""
    return torch.exp(x.clamp_min(math.log(tiny(x))))


def _h(x: Tensor) -> Tensor:
    """(1 − e^{−2x}) / (2x) for x ≥ 0, with its limit 1 at x = 0."""
    x = x.clamp_min(tiny(x))
    return -torch.expm1(-2 * x) / (2 * x)


def sinc(x: Tensor) -> Tensor:
    """sin x / x for x ≥ 0, 1 at 0 (torch.sinc is several times slower on CPUs): the tiny
    offsets change the ratio by at most tiny/x, far below rounding."""
    t = tiny(x)
    return (torch.sin(x) + t) / (x + t)


def sinc_(x: Tensor) -> Tensor:
    """``sinc(x)``, overwriting x (a temporary): on CPUs a fresh buffer per operation costs
    more than the arithmetic, so the samplers' long chains reuse theirs."""
    t = tiny(x)
    return torch.sin(x).add_(t).div_(x.add_(t))


def quat_mul(p, q):
    """The product p ⊗ q of quaternions given as components (x, y, z, w) (tuples of tensors
    (m,), or 0-d): written out with fused multiply-adds, as CPUs run that several times
    faster than the same product on (m, 4) tensors (no cross product, no reduction over a
    last dimension of 4)."""
    px, py, pz, pw = p
    qx, qy, qz, qw = q
    return (_sum_of_products(pw, qx, qw, px, py, qz, pz, qy),
            _sum_of_products(pw, qy, qw, py, pz, qx, px, qz),
            _sum_of_products(pw, qz, qw, pz, px, qy, py, qx),
            _sum_of_products(pw, qw, px, qx, py, qy, pz, qz, signs=(-1, -1, -1)))


def _sum_of_products(a0, b0, a1, b1, a2, b2, a3, b3, signs=(1, 1, -1)):
    """a0 b0 ± a1 b1 ± a2 b2 ± a3 b3, in four fused passes into one new buffer."""
    shapes = {x.shape for x in (a0, b0, a1, b1, a2, b2, a3, b3)}
    total = a0 * b0
    if len(shapes) > 1:                    # (torch.broadcast_shapes is slow in Python)
        shape = torch.broadcast_shapes(*shapes)
        if total.shape != shape:
            total = total.expand(shape).clone()
    for (a, b), sign in zip(((a1, b1), (a2, b2), (a3, b3)), signs):
        total.addcmul_(a, b, value=sign)
    return total


def unit_stack(q) -> Tensor:
    """Components (x, y, z, w) (m,) of non-zero quaternions, normalised, as a contiguous
    (m, 4) tensor (each component scaled straight into its column: torch.stack along the
    last dimension is several times slower on CPUs)."""
    scale = _sum_of_products(*(c for c in q for _ in range(2)), signs=(1, 1, 1)).rsqrt_()
    out = scale.new_empty(scale.shape + (4,))
    for i, c in enumerate(q):
        torch.mul(c, scale, out=out[..., i])
    return out


def components(q: Tensor):
    """The components (x, y, z, w) of quaternions (m, 4) as contiguous tensors (m,): copied once
    (four strided copies are several times faster than a transposing copy), after which each
    use reads 4 bytes per element instead of a strided 16."""
    return tuple(c.contiguous() for c in q.unbind(-1))


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
        bracket = bracket + (-1) ** k * e * (1 + _exp(-2 * x) - 8 * math.pi ** 2 * k ** 2 * _h(x) / eps2)
    log_c = eps2 / 8 + 0.5 * math.log(2 * math.pi) - 1.5 * torch.log(eps2)
    log_q = math.log(2) - torch.log(torch.sinc(omega / (2 * math.pi)))
    return log_c - omega ** 2 / (2 * eps2) + log_q + torch.log(bracket.clamp_min(tiny(bracket)))


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
    density = series_density(omega, eps2)
    return torch.log(density.clamp_min(tiny(density)))


def log_peak(eps2: Tensor) -> Tensor:
    """log f(0), the largest value of the Haar density (f(0) ≥ f(ω) since |D_l| ≤ 2l+1)."""
    return log_density(torch.zeros_like(eps2), eps2)


def angle_cdf(omega: Tensor, eps2: Tensor) -> Tensor:
    """F(ω) = P(angle ≤ ω), clamped to [0, 1]."""
    omega, eps2 = torch.broadcast_tensors(omega, eps2)
    return select(eps2 < SERIES_FROM, images_cdf, series_cdf, omega, eps2).clamp(0, 1)


def inverse_angle_cdf(u: Tensor, eps2: Tensor, iterations: int = 52) -> Tensor:
    """The ω with F(ω) = u, by bisection on [0, π] (to π 2^{−52}, branch-free). Not used by
    the samplers (rejection is exact and cheaper); a second, independent way to draw the
    angle law."""
    lo, hi = torch.zeros_like(u), torch.full_like(u, math.pi)
    for _ in range(iterations):
        mid = (lo + hi) / 2
        below = angle_cdf(mid, eps2) < u
        lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
    return (lo + hi) / 2


# ---------------------------------------------------------------- the S³ heat kernel

def image_terms(tau_max: float, dtype: torch.dtype) -> int:
    """Image pairs n = 1..N that ``image_factor`` needs for τ ≤ tau_max in ``dtype``: the pair n
    is at most e^{−2π²n(n−1)/τ} (2 + 8π²n²/τ) on d ∈ [0, π]; the first one below a tenth of
    the dtype's epsilon ends the sum (the next ones fall off faster still)."""
    eps = torch.finfo(dtype).eps
    n = 1
    while math.exp(-2 * math.pi ** 2 * (n + 1) * n / tau_max) * (
            2 + 8 * math.pi ** 2 * (n + 1) ** 2 / tau_max) > eps / 10:
        n += 1
    return n


def image_factor(d: Tensor, tau, terms: int) -> Tensor:
    r"""R_τ(d) = ρ_τ(d)/ρ^main_τ(d) for d ∈ [0, π], with ρ_τ(d) = Σ_n (d+2πn)/τ e^{−(d+2πn)²/(2τ)}
    (= K_τ(d) sin d up to a constant) and ρ^main_τ its n = 0 term, a Rayleigh density.

    For τ ≤ π², 0 ≤ R_τ ≤ 1: ρ_τ ≥ 0 on [0, π], and the terms ±n pair to
    g(2πn + d) − g(2πn − d) ≤ 0 with g(y) = y e^{−y²/(2τ)} decreasing on [√τ, ∞) ∋ 2πn − d.
    Summed in that pairing, R = 1 + Σ_{n≤terms} E_n [1 + e^{−2x_n} − 8π²n² h(x_n)/τ] with
    E_n = e^{2πn(d − πn)/τ} ≤ 1, x_n = 2πnd/τ and h as in ``_h`` (no division by d).
    d is clamped to [0, π].
    """
    d = d.clamp(0, math.pi)
    total = torch.ones_like(d * tau)
    for n in range(1, terms + 1):
        x = (2 * math.pi * n) * d / tau
        bracket = 1 + _exp(-2 * x) - (8 * math.pi ** 2 * n ** 2) * _h(x) / tau
        total = total + _exp((2 * math.pi * n) * (d - math.pi * n) / tau) * bracket
    return total


def image_factor_needed(d: Tensor, tau) -> bool:
    """Whether R_τ(d) may differ from 1 after rounding for some element of d (those that
    matter: pass 0 for the others): on the host False when
    |R − 1| ≤ 2 (2 + 8π²/τ_min) e^{2π(d_max − π)/τ_max} is below an eighth of the dtype's
    epsilon (small τ, d far from π); always True on other devices (no values are read)."""
    if not use_host_path(d):
        return True
    if d.numel() == 0:
        return False
    tau = torch.as_tensor(tau)
    d_max = min(float(d.max()), math.pi)
    bound = 2 * (2 + 8 * math.pi ** 2 / float(tau.min())) * math.exp(
        2 * math.pi * (d_max - math.pi) / float(tau.max()))
    return bound >= torch.finfo(d.dtype).eps / 8


# ---------------------------------------------------------------- sampling IGSO(3)

def _gaussian_variance(tau):
    """τ' = 3τ/(3 + τ): the proposal variance for which sin(d)/d · e^{d²/2τ' − d²/2τ} ≤ 1."""
    return 3 * tau / (3 + tau)


def propose_gaussian(tau: Tensor, m: int, generator=None):
    r"""m proposal quaternions around the identity for S³ times τ (0-d or (m,)), as components
    (x, y, z, w) (m,), and the probabilities (m,) of keeping them, so that kept ones follow
    IGSO(3)(ε² = 4τ).

    Y ~ N(0, τ' I₃), τ' = 3τ/(3+τ), mapped to the quaternion (sin|Y| Ŷ, cos|Y|) (the rotation
    by the vector 2Y). Through this map the heat kernel on the ball |Y| ≤ π has density
    K_τ(|Y|) sin²|Y| / |Y|² = M N(Y; 0, τ') R_τ(|Y|) (sin|Y|/|Y|) e^{|Y|²/6} with
    M = e^{τ/2} (3/(3+τ))^{3/2}; log(sin d / d) ≤ −d²/6 (its Taylor coefficients are all
    negative), so the keep probability R_τ(d) (sin d / d) e^{d²/6} 1{d ≤ π} is at most 1 and
    the acceptance is 1/M = e^{−τ/2} (1 + τ/3)^{3/2} (≥ 0.915 for τ ≤ 1.15).
    """
    y = torch.randn((3, m), generator=generator, dtype=tau.dtype, device=tau.device)
    y.mul_(torch.sqrt(_gaussian_variance(tau)))
    d2 = y[0] * y[0]
    d2.addcmul_(y[1], y[1]).addcmul_(y[2], y[2])
    d = d2.sqrt()
    inside = (d <= math.pi).to(d.dtype)
    keep = d2.clamp_max_(12.0).mul_(1 / 6).exp_().mul_(inside)   # e^{d²/6} 1{d ≤ π}
    if image_factor_needed(d * inside, tau):
        keep.mul_(image_factor(d, tau, image_terms(GAUSSIAN_UP_TO, tau.dtype)))
    s = sinc(d)
    keep.mul_(s)
    return (y[0].mul_(s), y[1].mul_(s), y[2].mul_(s), d.cos_()), keep


def propose_haar(tau: Tensor, m: int, generator=None):
    """m Haar-uniform proposal quaternions (normalised standard normal 4-vectors) and their
    keep probabilities f(ω)/f(0) ≤ 1 (series l ≤ 5): acceptance 1/f(0) ≥ 0.916 for τ > 1.15.
    Quaternions as components (x, y, z, w), like ``propose_gaussian``'s."""
    z = torch.randn((4, m), generator=generator, dtype=tau.dtype, device=tau.device)
    vector = torch.sqrt(z[0] * z[0] + z[1] * z[1] + z[2] * z[2])
    omega = 2 * torch.atan2(vector, z[3].abs())
    eps2 = 4 * tau
    keep = series_density(omega, eps2, _L_HAAR) / series_peak(eps2, _L_HAAR)
    scale = torch.rsqrt(vector * vector + z[3] * z[3])
    return tuple(c * scale for c in z), keep


def propose(tau: Tensor, m: int, generator=None):
    """m IGSO(3)(4τ) proposals around the identity, components (x, y, z, w) (m,), and their
    keep probabilities (m,), for τ 0-d or (m,): Gaussian for τ ≤ ``GAUSSIAN_UP_TO``, Haar
    above (whichever accepts more)."""
    if tau.ndim == 0 and use_host_path(tau):
        fn = propose_gaussian if float(tau) <= GAUSSIAN_UP_TO else propose_haar
        return fn(tau, m, generator)
    tau = tau.expand(m)

    def both(fn):
        return lambda t: (lambda q, keep: (*q, keep))(*fn(t, t.shape[0], generator))
    *q, keep = select(tau <= GAUSSIAN_UP_TO, both(propose_gaussian), both(propose_haar), tau)
    return tuple(q), keep


def log_acceptance(tau: Tensor) -> Tensor:
    """log of the probability that one ``propose`` round is kept, in closed form:
    −τ/2 + (3/2) log(1 + τ/3) (Gaussian) or −log f_{4τ}(0) (Haar)."""
    gaussian = -tau / 2 + 1.5 * torch.log1p(tau / 3)
    haar = -torch.log(series_peak(4 * tau, _L_HAAR))
    return torch.where(tau <= GAUSSIAN_UP_TO, gaussian, haar)


def rows_of(value: Tensor, rows):
    """``value`` for the elements ``rows``: per-element tensors are indexed, 0-d ones (one value
    for every element) are kept."""
    return value if value.ndim == 0 or isinstance(rows, slice) else value[rows]


HOST_CHUNK = 1 << 17   # host path: elements per block (below)


def in_blocks(fn, n: int, like: Tensor, *per_element) -> Tensor:
    """``fn(m, *args)`` → (m, 4) over all n elements; on the host in blocks of ``HOST_CHUNK``
    elements, each with its own slice of every per-element argument (``_block``). The elements are independent, so this changes nothing in law; it keeps
    each temporary small (0.5 MB in float32), so that the long chains of elementwise passes
    run from cache and from memory the allocator already holds, about 1.5× faster on CPUs
    than on whole 1e6-element tensors."""
    if not use_host_path(like) or n <= HOST_CHUNK:
        return fn(n, *per_element)
    out = like.new_empty((n, 4))
    for start in range(0, n, HOST_CHUNK):
        block = slice(start, min(start + HOST_CHUNK, n))
        out[block] = fn(block.stop - block.start, *(_block(a, block) for a in per_element))
    return out


def _block(value, block: slice):
    """``value`` (a tensor, tuple or dict of them, or None) for the elements ``block``;
    0-d tensors (one value for every element) and other values are kept whole."""
    if isinstance(value, tuple):
        return tuple(_block(v, block) for v in value)
    if isinstance(value, dict):
        return {k: _block(v, block) for k, v in value.items()}
    return value[block] if isinstance(value, Tensor) and value.ndim > 0 else value


def sample(tau: Tensor, n: int, generator=None, left=None) -> Tensor:
    """As ``_sample``, in blocks on the host (``in_blocks``)."""
    return in_blocks(lambda m, t, lf: _sample(t, m, generator, lf), n, tau, tau, left)


def _sample(tau: Tensor, n: int, generator=None, left=None) -> Tensor:
    """n unit quaternions (n, 4), XYZW, of IGSO(3)(ε² = 4τ) rotations R for S³ times τ (0-d
    or (n,)), in τ's dtype, or of left ⊗ R for ``left`` given as components (x, y, z, w)
    (n,) (normalised: the data x0 of a forward draw). Exact rejection from ``propose``;
    after the fixed rounds of the device path one host decision finishes the elements still
    pending (each with probability < 1e-6) on that subset only: rejection is memoryless, so
    the result is exact."""
    def proposal(rows):
        m = n if isinstance(rows, slice) else rows.shape[0]
        q, keep = propose(rows_of(tau, rows), m, generator)
        if left is not None:
            q = quat_mul(tuple(rows_of(c, rows) for c in left), q)
        u = torch.rand(keep.shape, generator=generator, dtype=keep.dtype, device=keep.device)
        return unit_stack(q), u < keep

    return exact_rejection(proposal, n, tau, DEVICE_ROUNDS)


def relative_angle(p: Tensor, q: Tensor) -> Tensor:
    """The rotation angle of p⁻¹q in [0, π] for unit quaternions (..., 4), sign-blind.

    p and q as vectors of ℝ⁴ make the angle θ = 2 atan2(|p − q|, |p + q|) (accurate at
    every θ, unlike acos), and p⁻¹q rotates by 2θ, or by 2(π − θ) for −q.
    """
    apart, together = (p - q).norm(dim=-1), (p + q).norm(dim=-1)
    return 4 * torch.atan2(torch.minimum(apart, together), torch.maximum(apart, together))
