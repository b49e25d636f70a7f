r"""The exact bridge of Brownian motion on SO(3), by rejection from three exact proposals.

Notation (per element). On the unit sphere S³ of quaternions the process is Brownian motion
with generator ½Δ run for the time r·t (rotation-vector variance 4rt per axis); write
α = r s, β = r (t − s), T = α + β, σ² = αβ/T. Lift x0, x_t to q0, q_t with ⟨q0, q_t⟩ ≥ 0,
at S³-distance θ = ∠(x0⁻¹x_t)/2 ∈ [0, π/2]. ρ_τ(d) = Σ_n (d+2πn)/τ e^{−(d+2πn)²/(2τ)} is
K_τ(d) sin d up to a constant (K_τ the S³ heat kernel), ρ^main_τ its n = 0 term and
R_τ = ρ_τ/ρ^main_τ ∈ [0, 1] (τ ≤ π²) its image factor (``_igso3.image_factor``).

**The law.** With respect to Haar, p(x_s) ∝ f_{4α}(∠(x0⁻¹x_s)) f_{4β}(∠(x_s⁻¹x_t)) (f the
IGSO(3) density). Lifted to S³ it is the mixture, with weights ∝ K_T(Θ_±), of the two S³
bridges from q0 to ±q_t, at distances Θ₊ = θ and Θ₋ = π − θ (project with x ~ −x and
K_τ(π − d) = K_τ(d(−x, ·))). In the coordinates d0 = d(q0, x), d1 = d(x, q1) and the
azimuth ψ of x around the great circle through q0 and q1 (q1 = ±q_t at distance Θ), the S³
volume is (sin d0 sin d1 / sin Θ) dd0 dd1 dψ on the spherical triangle region
Δ_Θ = {|d0 − d1| ≤ Θ ≤ d0 + d1 ≤ 2π − Θ} (the projection of S³ on a 2-plane is uniform on
the disc), so each S³ bridge is ρ_α(d0) ρ_β(d1) 1_{Δ_Θ}, ψ uniform and independent, of mass
C N(Θ) with C = √(2π)σ/T and N(Θ) = Σ_n (Θ+2πn) e^{−(Θ+2πn)²/(2T)} = T ρ_T(Θ) (the
sin Θ of the volume is common to both lifts). Given (d0, d1, ψ) the point is
q0 ⊗ (sin d0 (cos γ ŵ + sin γ n̂), cos d0): ŵ the direction of q1 seen from q0, n̂ ⊥ ŵ of
azimuth ψ and γ the spherical triangle's angle at q0, tan²(γ/2) =
sin(s1/2) sin(s2/2) / (sin(s3/2) sin(s4/2)), s1 = d0+d1−Θ, s2 = Θ+d1−d0, s3 = Θ+d0−d1,
s4 = 2π−Θ−d0−d1.

**EP, Euclidean pair (both lifts).** Y = μŵ + σZ, μ = αΘ/T, Z ~ N(0, I₃), is the Euclidean
Brownian bridge in ℝ³ from 0 to Θŵ. Bipolar coordinates d0 = |Y|, d1 = |Y − Θŵ| have
d³Y = (d0 d1/Θ) dd0 dd1 dψ, and |Y|²/α + |Y − Θŵ|²/β = |Y − μŵ|²/σ² + Θ²/T, so (d0, d1)
has density ∝ ρ^main_α ρ^main_β on the Euclidean region {|d0 − d1| ≤ Θ ≤ d0 + d1} ⊃ Δ_Θ, of
mass C Θ e^{−Θ²/(2T)}, and the azimuth of Z around ŵ is uniform and independent. Kept with
probability R_α(d0) R_β(d1) 1_{Δ_Θ} ≤ 1, it is the S³ bridge exactly; per-lift acceptance
R_T(Θ) ≥ 1 − 3e^{−π²/T} for Θ ≤ π/2, whatever the endpoints' distance. The spherical γ is
the Euclidean angle corrected by its half-angle tangent, tan²(γ/2) / tan²(γ_E/2) =
sinc(s1/2) sinc(s2/2) / (sinc(s3/2) sinc(S)), S = (d0+d1+Θ)/2 (sinc x = sin x / x), a
ratio that absolute rounding of the s_i cannot spoil; tan(γ_E/2) = h/(d0 + p) = (d0 − p)/h
with p, h the components of Y along and across ŵ (the cancellation-free one is used).

**ANT, the −q_t lift near the antipode.** For Θ = π − θ → π the band d0 + d1 ∈ [Θ, 2π−Θ]
is thin and EP's acceptance R_T(π − θ) → 0. With y = π − d0, integrating d1 over the section
I(d0) = [|y − θ|, min(y+θ, 2π−y−θ)] of Δ_Θ and bounding ρ ≤ ρ^main,
1 − e^{−2x} ≤ 2x and log(y(π−y)) by its tangent at y0:
ρ^main_α(d0) ∫_I ρ^main_β ≤ (2θ/αβ) e^{−Θ²/(2T)} y0(π−y0) e^{g0(y−y0)} e^{−(y−y1)²/(2σ²)},
y1 = (βπ + αθ)/T, g0 = 1/y0 − 1/(π−y0): a Gaussian envelope N(y1 + σ²g0, σ²) in y of mass
C (2θ/σ²) e^{−Θ²/(2T)} y0(π−y0) e^{g0(y1−y0) + g0²σ²/2}, y0 the root of
y0 = y1 + σ² g0(y0) (the envelope's own mean, which minimises its mass). d1 | d0 is then
drawn from ρ^main_β on I(d0) by inversion, ψ uniform, and the draw kept with probability
[(1 − e^{−X})/X] min(1, Θd0/(yθ)) · y(π−y)e^{−g0(y−y0)}/(y0(π−y0)) · R_α(d0) R_β(d1) ≤ 1,
X = 2 min(yθ, Θd0)/β. In the band, γ comes from the same half-angle formula written with
the band's own offsets d1 − |y−θ| and min(y+θ, 2π−y−θ) − d1 (so θ = 0, x_t = x0 exactly,
is no special case: γ is then uniform in cos γ, as it must be).

**Mixing the lifts.** Each round picks the lift with probability ∝ its envelope mass (E₊
of EP; E₋ the smaller of EP's and ANT's for −q_t), draws from that lift's proposal and keeps
it with the probability above: the kept pair (lift, x) has density ∝ mass × bridge, which
is the mixture of the law. Per round A_combo = C[N(θ) + N(π−θ)] / (E₊ + E₋).

**NF, narrow forward (large times).** x = c·Q, Q ~ IGSO(3)(4 min(α, β)) around the endpoint
c with the smaller time (one round of the forward sampler's proposal, ``_igso3.propose``,
with its keep probability), then kept with probability f_{4max}(∠ to the other
endpoint)/f_{4max}(0) ≤ 1 (f is largest at 0): acceptance
A_NF = A_forward · f_{4T}(2θ)/f_{4max}(0) (Chapman–Kolmogorov). EP and ANT need
max(α, β) ≤ 4 (R ≤ 1 needs ≤ π²; three image pairs suffice up to 4); beyond, NF is used.

**Choice.** Per element: NF where max(α, β) > 4 or (T > 0.5 and A_NF > A_combo), else the
combination, with ANT for the −q_t lift where it is a candidate (2πθ/T < 1.2) and its envelope
is the smaller. Any deterministic function of (s, t, x0, x_t) keeps the law exact; this one
takes the larger closed-form acceptance (``acceptance``): ≥ 0.76 per round over every
(s, t, Ω) (the worst near t = 1.75, s = t/2, Ω ≈ 0.5), 1 − A < 3e-5 for rt ≤ 0.3 and
< 1e-14 for rt ≤ 0.1.

**Rounds.** ``_util.exact_rejection``: on other devices ``_util.rejection`` runs a fixed
number of rounds over every element and every branch (no host sync), then
``_util.finish_rejection`` makes one host decision and, if any element is left
(probability (1 − A)^6 each), runs more rounds on those only; on the host the first round
covers every element and the next ones only the pending elements. Rejection is memoryless:
exact either way.

**Numerics.** Everything runs in the data's float dtype (float32 for float32 data): no
formula above cancels (the distances come from |Y| and |Y − Θŵ|, the angle γ from the
Euclidean half-angle and sinc ratios, the band offsets of ANT from their own inversion, the
lift weights from log odds), so rounding is the only error. The quantities that depend only
on (s, t) are computed once per call when the times are scalars.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _igso3
from ._igso3 import (components, image_factor, image_terms, quat_mul, sinc, sinc_, tiny,
                     unit_stack)
from ._util import exact_rejection, use_host_path

PI = math.pi
COMBO_TAU_MAX = 4.0   # EP and ANT for max(α, β) ≤ 4 (image factors ≤ 1, three pairs)
NF_FROM = 0.5         # NF considered only where T > 0.5 (below, A_combo > 0.98 > A_NF)
ANT_BELOW = 1.2       # ANT a candidate where 2πθ/T < 1.2 (it wins only below ≈ 1)
DEVICE_ROUNDS = 6     # device path: A ≥ 0.76 leaves an element pending with prob. < 2e-4
_BISECTIONS = 24      # for the ANT tangent point y0 (any y0 is exact; this one is tight)

# The computations are written on components (x, y, z, w) of quaternions and vectors, each a
# tensor (m,), and select with exact 0/1 blends (torch.lerp at weight 0 or 1): on CPUs
# torch.where, torch.sinc, cross products and norms over a last dimension of 3 or 4 each
# cost several elementwise passes.


# ---------------------------------------------------------------- per-element constants

def _take(c: dict, rows) -> dict:
    """The constants of the elements ``rows`` (an index tensor or slice(None)); 0-d tensors
    (one value for every element: times given once for the call) and flags are kept, and
    the row indices precomputed for all elements are dropped."""
    if isinstance(rows, slice):
        return c
    return {k: (v[rows] if isinstance(v, Tensor) and v.ndim > 0 else v)
            for k, v in c.items() if not k.endswith("_rows")}


def _log_sinc(x: Tensor) -> Tensor:
    """log(sin x / x) for x ∈ [0, π)."""
    return torch.log(sinc(x))


def time_constants(alpha: Tensor, beta: Tensor) -> dict:
    """What depends only on the times: 0-d tensors if α, β are (one pair for the call, as in
    a sampling step: computed once, not per element or per block), else per element (n,)."""
    T = alpha + beta
    tau_n, tau_w = torch.minimum(alpha, beta), torch.maximum(alpha, beta)
    log_peak_w = _igso3.log_peak(4 * tau_w)
    # log(A_NF/A_combo) = nf_gain + softplus(log odds) + log(θ/sin θ) − θ²/(2T) (``_choose_nf``)
    nf_gain = (_igso3.log_acceptance(tau_n) - log_peak_w + T / 2 - 1.5 * torch.log(T)
               + 0.5 * math.log(2 * PI) - math.log(4))
    return dict(alpha=alpha, beta=beta, T=T, sigma=torch.sqrt(alpha * beta / T),
                mu=alpha / T, odds_slope=-PI / (2 * T), ant_below=ANT_BELOW / (2 * PI) * T,
                from_start=alpha <= beta, tau_n=tau_n, eps2_w=4 * tau_w, log_peak_w=log_peak_w,
                nf_gain=nf_gain, combo_ok=tau_w <= COMBO_TAU_MAX, nf_maybe=T > NF_FROM)


def setup(k: dict, q0: Tensor, qt: Tensor) -> dict:
    """Everything a round needs: the time constants ``k`` (``time_constants``) and what
    depends on the endpoints q0, qt (n, 4). Returns a dict of tensors, 0-d or (n,), and
    of flags."""
    host = use_host_path(q0)
    a, b = components(q0), components(qt)
    # x0⁻¹ x_t = conj(q0) ⊗ qt, lifted to w ≥ 0 (the sign is folded into the axis); the
    # chains below write into their own temporaries (fresh buffers cost more than arithmetic)
    rx, ry, rz, rw = quat_mul((-a[0], -a[1], -a[2], a[3]), b)
    sign = torch.copysign(torch.ones((), dtype=rw.dtype, device=rw.device), rw)
    rz.add_(sign, alpha=tiny(rw) ** 0.5)   # makes the axis e_z where x_t = x0 (θ = 0)
    v_norm = rx * rx
    v_norm.addcmul_(ry, ry).addcmul_(rz, rz).sqrt_()
    theta = torch.atan2(v_norm, rw.abs_())
    scale = sign.div_(v_norm)
    rx.mul_(scale), ry.mul_(scale), rz.mul_(scale)
    span = theta.mul(-2).add_(PI)          # Θ₋ − Θ₊
    c = dict(k, theta=theta, span=span, ax=rx, ay=ry, az=rz, q0x=a[0], q0y=a[1], q0z=a[2],
             q0w=a[3], qt=qt, host=host)
    c["image_cut"] = _image_cut(k["tau_n"], k["eps2_w"] / 4, theta.dtype) if host else -1.0

    # log E₋/E₊ with EP for −q_t: log(Θ/θ) − π(π − 2θ)/(2T); with ANT where that is smaller
    log_odds = theta.neg().add_(PI).div_(theta).log_().addcmul_(span, k["odds_slope"])
    candidate = (theta < k["ant_below"]) & k["combo_ok"]
    c.update(_on_rows(candidate, _ant_constants, c, log_odds))
    c["p_minus"] = torch.sigmoid(c["log_odds"])
    c["nf"] = _choose_nf(c)
    if host:   # which branches occur at all, and their rows, once for the first round
        c["any_minus"] = bool(c["p_minus"].max() > 0) if theta.numel() else False
        c["all_nf"] = bool(c["nf"].all())
        for name in ("ant", "nf"):
            c[name + "_rows"] = c[name].nonzero().squeeze(1) if bool(c[name].any()) else None
    return c


def _image_cut(tau_n: Tensor, tau_w: Tensor, dtype) -> float:
    """A distance below which R_τ(d) rounds to 1 for every τ of the call (host):
    |R − 1| ≤ 2 (2 + 8π²/τ_min) e^{2π(d − π)/τ_max} < eps/8 there."""
    if tau_n.numel() == 0:
        return -1.0                     # no elements: no cut (as on the device path)
    tau_min, tau_max = float(tau_n.min()), float(tau_w.max())
    eps = torch.finfo(dtype).eps
    return PI + tau_max / (2 * PI) * math.log(eps / (16 * (2 + 8 * PI ** 2 / tau_min)))


def _choose_nf(c: dict) -> Tensor:
    """NF where it accepts more: log(A_NF/A_combo) > 0 (``acceptance``; f_{4T}(2θ) cancels)
    = gain(α, β) + softplus(log odds) + log(θ/sin θ) − θ²/(2T). For T < 3 the last two
    terms together are ≤ 0 (their derivative is ≈ θ/3 − θ/T), so where
    gain + softplus(max log odds) ≤ 0 the host skips the rest."""
    T, theta, gain, combo_ok = c["T"], c["theta"], c["nf_gain"], c["combo_ok"]
    if c["host"] and T.ndim == 0 and bool(combo_ok):
        if not bool(c["nf_maybe"]) or (float(T) < 3 and theta.numel() and float(
                gain + F.softplus(c["log_odds"].max())) <= 0):
            return torch.zeros_like(theta, dtype=torch.bool)
    log_ratio = gain + F.softplus(c["log_odds"]) - _log_sinc(theta) - theta * theta / (2 * T)
    return ~combo_ok | (c["nf_maybe"] & (log_ratio > 0))


def _on_rows(candidate: Tensor, fn, c: dict, log_odds: Tensor) -> dict:
    """ANT's constants (y0, g0, y_mean) where ``candidate`` (n,), whether ANT is chosen there
    (``ant``: its envelope is the smaller), and the log odds of the −q_t lift updated to
    that envelope. On the host computed only on the candidate rows (the other rows' ANT
    constants are never read), elsewhere on all rows."""
    if not c["host"]:
        k = fn(c)
        ant = candidate & (k["log_mass"] < log_odds)
        k.update(ant=ant, log_odds=torch.minimum(log_odds, k.pop("log_mass")))
        return k
    like = c["theta"]
    out = dict(y0=torch.empty_like(like), g0=torch.empty_like(like),
               y_mean=torch.empty_like(like), ant=torch.zeros_like(like, dtype=torch.bool),
               log_odds=log_odds)
    if bool(candidate.any()):
        rows = candidate.nonzero().squeeze(1)
        k = fn(_take(c, rows))
        for name in ("y0", "g0", "y_mean"):
            out[name][rows] = k[name]
        old = log_odds[rows]
        out["ant"][rows] = k["log_mass"] < old
        log_odds[rows] = torch.minimum(old, k["log_mass"])
    return out


def _ant_constants(c: dict) -> dict:
    """The ANT envelope: the tangent point y0, g0, the envelope mean y1 + σ²g0, and
    log(E_ANT/E₊) = log(2 y0(π−y0)/σ²) + g0(y1 − y0) + g0²σ²/2 − π(π − 2θ)/(2T)."""
    alpha, beta, T, sigma, theta = c["alpha"], c["beta"], c["T"], c["sigma"], c["theta"]
    s2 = sigma * sigma
    y1 = (beta * PI + alpha * theta) / T
    # y0 solves (y − y1) y (π − y) = σ²(π − 2y): one root, between y1 and π/2
    half = torch.full_like(y1, PI / 2)
    lo, hi = torch.minimum(y1, half), torch.maximum(y1, half)
    for _ in range(_BISECTIONS):
        mid = (lo + hi) / 2
        above = (mid - y1) * mid * (PI - mid) > s2 * (PI - 2 * mid)
        lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
    y0 = ((lo + hi) / 2).clamp(1e-3, PI - 1e-3)
    g0 = 1 / y0 - 1 / (PI - y0)
    log_mass = (torch.log(2 * y0 * (PI - y0) / s2) + g0 * (y1 - y0) + g0 * g0 * s2 / 2
                - PI / (2 * T) * c["span"])
    return dict(y0=y0, g0=g0, y_mean=y1 + s2 * g0, log_mass=log_mass)


def acceptance(c: dict) -> Tensor:
    """The closed-form probability (n,) that one round keeps its draw, for the method that
    ``setup`` chose for each element: A_NF = A_forward(min(α, β)) f_{4T}(2θ)/f_{4max}(0), or,
    with C[N(θ) + N(π−θ)] = C f_{4T}(2θ) sin θ · 4 T^{3/2} e^{−T/2}/√(2π) (the alternating
    image sum) and E₊ + E₋ = C θ e^{−θ²/2T} (1 + e^{log odds}),
    A_combo = f_{4T}(2θ) (sin θ/θ) 4 T^{3/2} e^{θ²/2T − T/2} / (√(2π) (1 + e^{log odds}))."""
    T, theta = c["T"], c["theta"]
    log_f = _igso3.log_density(2 * theta, 4 * T)
    log_nf = _igso3.log_acceptance(c["tau_n"]) + log_f - c["log_peak_w"]
    log_combo = (log_f + _log_sinc(theta) + math.log(4) + 1.5 * torch.log(T) - T / 2
                 + theta * theta / (2 * T) - 0.5 * math.log(2 * PI) - F.softplus(c["log_odds"]))
    return torch.where(c["nf"], log_nf, log_combo).exp()


# ---------------------------------------------------------------- one round

def propose(c: dict, generator=None):
    """One rejection round for every element of ``c``: candidates x_s (m, 4) (unit
    quaternions) and whether each is kept (m,), bool."""
    theta = c["theta"]
    m = theta.shape[0]
    if c["host"] and not c.get("any_minus", True):
        minus = torch.zeros(m, dtype=torch.bool, device=theta.device)
    else:
        minus = _rand(theta, generator) < c["p_minus"]
    c = dict(c, minus=minus)
    if not c["host"]:
        return _device_round(c, generator)
    if c.get("all_nf", False):                   # large times: no EP draw to overwrite
        return _kept(*_nf(c, generator), generator)
    cand, keep = _ep(c, generator)
    for name, fn in (("ant", _ant), ("nf", _nf)):
        rows = _rows(c, name, minus)
        if rows is not None and rows.numel():
            cand[rows], keep[rows] = _kept(*fn(_take(c, rows), generator), generator)
    return cand, keep


def _rand(like: Tensor, generator) -> Tensor:
    return torch.rand(like.shape, generator=generator, dtype=like.dtype, device=like.device)


def _kept(cand: Tensor, keep: Tensor, generator):
    """Candidates and the Bernoulli(keep) decisions."""
    return cand, _rand(keep, generator) < keep


def _rows(c: dict, name: str, minus: Tensor):
    """The rows (host) of this round that take branch ``name``: NF where chosen; ANT where
    chosen and the −q_t lift was drawn."""
    rows = c.get(name + "_rows", 0)
    if isinstance(rows, int):      # a subset of the elements: find them
        mask = c[name] & minus & ~c["nf"] if name == "ant" else c[name]
        return mask.nonzero().squeeze(1) if bool(mask.any()) else None
    if rows is None or name == "nf":
        return rows
    return rows[minus[rows] & ~c["nf"][rows]]


def _device_round(c: dict, generator):
    """Every branch on every row, picked per row by torch.where: no host sync."""
    cand, keep = _ep(c, generator)
    ant = c["ant"] & c["minus"] & ~c["nf"]
    for mask, fn in ((ant, _ant), (c["nf"], _nf)):
        a, k = _kept(*fn(c, generator), generator)
        cand, keep = torch.where(mask[:, None], a, cand), torch.where(mask, k, keep)
    return cand, keep


def _compose(c: dict, rel) -> Tensor:
    """x = x0 ⊗ rel, normalised, (m, 4), for the components of rel in x0's frame."""
    return unit_stack(quat_mul((c["q0x"], c["q0y"], c["q0z"], c["q0w"]), rel))


def _half_angle(cos2: Tensor, sin2: Tensor, cos_sin: Tensor):
    """cos γ and sin γ from cos2 ∝ cos²(γ/2), sin2 ∝ sin²(γ/2) (≥ 0) and cos_sin ∝
    cos(γ/2) sin(γ/2) with the same factor."""
    total = (cos2 + sin2).clamp_min(tiny(cos2))
    return (cos2 - sin2) / total, 2 * cos_sin / total


def _image_factors(c: dict, d0: Tensor, d1: Tensor) -> Tensor:
    """R_α(d0) R_β(d1) (α, β as in ``c``)."""
    terms = image_terms(COMBO_TAU_MAX, d0.dtype)
    return image_factor(d0, c["alpha"], terms) * image_factor(d1, c["beta"], terms)


def _keep_images(c: dict, d0: Tensor, d1: Tensor, inside: Tensor, generator) -> Tensor:
    """inside & (u < R_α(d0) R_β(d1)), bool. On the host only the rows where an image
    factor may differ from 1 after rounding (a distance above ``image_cut``) draw u."""
    if not c["host"]:
        return inside & (_rand(d0, generator) < _image_factors(c, d0, d1))
    far = inside & (torch.maximum(d0, d1) > c["image_cut"])
    if bool(far.any()):
        rows = far.nonzero().squeeze(1)
        d0, d1 = d0[rows], d1[rows]
        inside = inside.clone()
        inside[rows] = _rand(d0, generator) < _image_factors(_take(c, rows), d0, d1)
    return inside


def _ep(c: dict, generator):
    """EP: the Euclidean bridge Y = μŵ + σZ kept with probability R_α(d0) R_β(d1) 1_Δ.
    (Temporaries are overwritten in place: on CPUs a fresh buffer per operation costs more
    than the arithmetic; nothing in ``c`` is written.)"""
    theta, sigma = c["theta"], c["sigma"]
    ax, ay, az = c["ax"], c["ay"], c["az"]
    lift = c["minus"].to(theta.dtype)                       # 0/1: the −q_t lift drawn
    big = torch.addcmul(theta, lift, c["span"])             # its distance Θ
    lift.mul_(-2).add_(1)                                   # its direction is lift · ŵ
    z = torch.randn((3,) + theta.shape, generator=generator, dtype=theta.dtype,
                    device=theta.device)
    along = z[0] * ax
    along.addcmul_(z[1], ay).addcmul_(z[2], az)
    cx, cy, cz = (z[0].addcmul_(along, ax, value=-1), z[1].addcmul_(along, ay, value=-1),
                  z[2].addcmul_(along, az, value=-1))      # Z across ŵ
    width = cx * cx
    width.addcmul_(cy, cy).addcmul_(cz, cz).sqrt_()
    p = along.mul_(lift).mul_(sigma).addcmul_(big, c["mu"])  # Y along lift · ŵ
    h = width * sigma                                       # and across it
    d0 = torch.hypot(p, h)
    d1 = torch.sub(big, p).hypot_(h)
    total = d0 + d1
    diff = d1 - d0
    s1 = total.sub(big).mul_(0.5).clamp_min_(0)             # s1/2 = (d0 + d1 − Θ)/2
    total.add_(big).mul_(0.5)                                # S = (d0 + d1 + Θ)/2
    keep = _keep_images(c, d0, d1, total <= PI, generator)  # Δ: d0 + d1 ≤ 2π − Θ
    s2 = torch.add(big, diff).mul_(0.5).clamp_min_(0)
    s3 = diff.neg_().add_(big).mul_(0.5).clamp_min_(0)
    # γ, the angle at q0: with L = d0 + |p|, (d0 + p, d0 − p) is (L, h²/L) or (h²/L, L);
    # tan²(γ/2) = (d0 − p) sinc(s1/2) sinc(s2/2) / ((d0 + p) sinc(s3/2) sinc(S)), the
    # Euclidean half-angle tangent corrected by ratios that rounding of the s_i cannot spoil
    ahead = (p >= 0).to(theta.dtype)
    wide = p.abs_().add_(d0).clamp_min_(tiny(h))
    narrow = h * h
    narrow.div_(wide)
    plus = torch.lerp(narrow, wide, ahead)                  # d0 + p
    minus = narrow.lerp_(wide, ahead.neg_().add_(1))        # d0 − p
    k3 = sinc_(s3).mul_(sinc_(total))
    k12 = sinc_(s1).mul_(sinc_(s2))
    cos2, sin2 = plus.mul_(k3), minus.mul_(k12)
    cos_sin = k3.mul_(k12).clamp_min_(0).sqrt_().mul_(h)
    norm = torch.add(cos2, sin2).clamp_min_(tiny(h))
    cos_g, sin_g = cos2.sub_(sin2).div_(norm), cos_sin.mul_(2).div_(norm)
    sin_d0 = torch.sin(d0)
    along_k = cos_g.mul_(sin_d0).mul_(lift)
    across_k = sin_g.mul_(sin_d0).div_(width.clamp_min_(tiny(width)))
    rel = (cx.mul_(across_k).addcmul_(along_k, ax), cy.mul_(across_k).addcmul_(along_k, ay),
           cz.mul_(across_k).addcmul_(along_k, az), d0.cos_())
    return _compose(c, rel), keep


def _ant(c: dict, generator):
    """ANT: y = π − d0 from the Gaussian envelope, d1 by inversion in the band, kept with
    probability f34 f5 R_α(d0) R_β(d1)."""
    beta, sigma, theta = c["beta"], c["sigma"], c["theta"]
    y0, g0 = c["y0"], c["g0"]
    ax, ay, az = c["ax"], c["ay"], c["az"]                  # the −q_t lift points along −ŵ
    big = PI - theta
    draw = dict(generator=generator, dtype=theta.dtype, device=theta.device)
    z = torch.randn((3,) + theta.shape, **draw)
    along = z[0] * ax + z[1] * ay + z[2] * az
    cx, cy, cz = z[0] - along * ax, z[1] - along * ay, z[2] - along * az
    width = torch.sqrt(cx * cx + cy * cy + cz * cz)
    y_raw = c["y_mean"] + sigma * along
    inside = ((y_raw > 0) & (y_raw < PI)).to(theta.dtype)
    y = y_raw.clamp(tiny(y_raw), PI * (1 - torch.finfo(y_raw.dtype).eps))
    d0 = PI - y
    lo = (y - theta).abs()
    hi = torch.minimum(y + theta, 2 * PI - y - theta)
    band = 4 * torch.minimum(y * theta, big * d0)          # hi² − lo²
    x = (band / (2 * beta)).clamp_min(1e-15)               # X; ℓ(u, X) → u below 1e-15
    u = torch.rand(theta.shape, **draw)
    ell = -torch.log1p(u * torch.expm1(-x)) / x            # (d1² − lo²)/(hi² − lo²)
    x_max = 60.0 if theta.dtype != torch.float64 else 600.0
    ell_c = torch.where(x <= x_max, torch.log1p((1 - u) * torch.expm1(x.clamp_max(x_max))) / x,
                        1 - ell)                           # (hi² − d1²)/(hi² − lo²)
    d1 = torch.sqrt(lo * lo + band * ell)
    a_half = band * ell / (2 * (d1 + lo)).clamp_min(tiny(y))   # (d1 − lo)/2
    b_half = band * ell_c / (2 * (hi + d1)).clamp_min(tiny(y))  # (hi − d1)/2
    num = ell * (hi + d1) * sinc(a_half) * torch.sin((d1 + lo) / 2)      # ∝ sin²(γ/2)
    den = ell_c * (d1 + lo) * sinc(b_half) * torch.sin((hi + d1) / 2)    # ∝ cos²(γ/2)
    cos_g, sin_g = _half_angle(den, num, torch.sqrt(num * den))
    f34 = _igso3._h(x / 2) * torch.clamp(big * d0 / (y * theta).clamp_min(tiny(y)), max=1.0)
    f5 = y * (PI - y) / (y0 * (PI - y0)) * torch.exp(-g0 * (y - y0))
    keep = inside * f34 * f5 * _image_factors(c, d0, d1)
    sin_d0 = torch.sin(y)
    along_k, across_k = -sin_d0 * cos_g, sin_d0 * sin_g / width.clamp_min(tiny(width))
    rel = (along_k * ax + across_k * cx, along_k * ay + across_k * cy,
           along_k * az + across_k * cz, -torch.cos(y))
    return _compose(c, rel), keep


def _nf(c: dict, generator):
    """NF: IGSO(3)(4 min(α, β)) around the nearer endpoint, kept with f_{4max}(∠)/f_{4max}(0)."""
    q0 = (c["q0x"], c["q0y"], c["q0z"], c["q0w"])
    qt = components(c["qt"])
    m = qt[0].shape[0]
    q, keep = _igso3.propose(c["tau_n"], m, generator)
    start = c["from_start"].to(q[0].dtype)
    centre = tuple(start * p + (1 - start) * r for p, r in zip(q0, qt))
    cand = quat_mul(centre, q)
    other = unit_stack(tuple(start * r + (1 - start) * p for p, r in zip(q0, qt)))
    angle = _igso3.relative_angle(unit_stack(cand), other)
    keep = keep * torch.exp(_igso3.log_density(angle, c["eps2_w"]) - c["log_peak_w"])
    return unit_stack(cand), keep


# ---------------------------------------------------------------- the sampler

def sample(alpha: Tensor, beta: Tensor, q0: Tensor, qt: Tensor, generator=None) -> Tensor:
    """Unit quaternions x_s (n, 4) of the SO(3) bridge for S³ times α = r s, β = r (t − s)
    (0-d, or (n,)) and endpoints q0, qt (n, 4) (any non-zero norms), all in one float dtype.
    On the host in blocks of elements (``_igso3.in_blocks``)."""
    return _igso3.in_blocks(lambda m, k, p, q: _sample(k, p, q, generator), q0.shape[0], q0,
                            time_constants(alpha, beta), q0, qt)


def _sample(k: dict, q0: Tensor, qt: Tensor, generator=None) -> Tensor:
    c = setup(k, q0, qt)
    return exact_rejection(lambda rows: propose(_take(c, rows), generator), q0.shape[0], q0,
                           DEVICE_ROUNDS)
