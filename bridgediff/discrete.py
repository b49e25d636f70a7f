r"""Discrete processes: continuous-time Markov chains on integer states, exact in closed form.

A chain with generator Q (rows sum to 0) has transition matrices P(u) = exp(uQ):

* forward: :math:`x_t \sim \mathrm{Categorical}(P(t)[x_0, :])`;
* bridge, hard x0 = i, x_t = l: :math:`p(x_s = j) \propto P(s)[i, j]\, P(t-s)[j, l]`;
* bridge, soft x0 (the guess returns probabilities :math:`\hat p` over x0 given x_t):

  .. math::
      p(x_s = j \mid x_t = l) = \sum_i \hat p_i\, P(s)[i, j]\, P(t-s)[j, l] / P(t)[i, l],

  the exact marginal over x0 when :math:`\hat p` is the posterior p(x0 | x_t). Dividing by
  P(t)[i, l] removes x_t's evidence that the posterior already holds (Diffusions.jl omits it
  and counts that evidence twice). Weight on an x0 that cannot reach x_t is ignored.

States are tensors of any integer dtype that can hold them (int64 in the examples; indices are
computed in int64 and outputs keep the input's dtype); soft x0 is a float tensor (..., k) of
non-negative weights, normalised internally. The loss takes logits (..., k).
"""

import math

import torch
from torch import Tensor

from ._util import as_param, integer_at_least, on_host, positive, rand, use_host_path
from .process import Process

__all__ = ["UniformDiscrete", "IndependentDiscrete", "GeneralDiscrete", "AbsorbingDiscrete"]

# Integer dtypes accepted for parameters (pi, Q); states take any integer dtype.
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

# Diffusions.jl's standardloss: cross-entropy divided by (k - 1)/k, times 1.44.
_LOSS_GAIN = 1.44


# ---------------------------------------------------------------- helpers

def _categorical(weights: Tensor, generator=None) -> Tensor:
    """Draw indices (...) int64 with probabilities ∝ ``weights`` (..., k), by inverse CDF."""
    cdf = weights.cumsum(-1)
    u = rand(cdf, generator, shape=cdf.shape[:-1] + (1,)) * cdf[..., -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(weights.shape[-1] - 1)


def _sample_cdf(cdf: Tensor, shape, generator=None) -> Tensor:
    """Draw int64 indices of ``shape`` from a 1-D cumulative distribution ``cdf`` (k,)."""
    u = rand(cdf, generator, shape=shape) * cdf[-1]
    return torch.searchsorted(cdf, u, right=True).clamp_max(cdf.shape[0] - 1)


def _alias_table(p: Tensor):
    """Walker's alias table for probabilities p (k,) float64, by Vose's construction.

    Drawing i uniformly from [0, k) and keeping it with probability ``accept[i]``, else
    taking ``alias[i]``, draws i with probability p_i: O(1) per draw whatever k is.
    Returns (accept (k,) float64, alias (k,) int64).
    """
    k = p.shape[0]
    scaled = (p * k).tolist()
    accept, alias = [1.0] * k, list(range(k))
    small = [i for i, v in enumerate(scaled) if v < 1]
    large = [i for i, v in enumerate(scaled) if v >= 1]
    while small and large:
        lo, hi = small.pop(), large.pop()
        accept[lo], alias[lo] = scaled[lo], hi
        scaled[hi] += scaled[lo] - 1
        (small if scaled[hi] < 1 else large).append(hi)
    # Whatever is left holds probability 1 up to rounding: it keeps itself.
    return torch.tensor(accept, dtype=torch.float64), torch.tensor(alias, dtype=torch.int64)


def _integer_info(dtype: torch.dtype):
    """``torch.iinfo(dtype)`` for an integer dtype (bool excluded), else None."""
    if dtype == torch.bool or dtype.is_floating_point or dtype.is_complex:
        return None
    try:
        return torch.iinfo(dtype)
    except (TypeError, RuntimeError, ValueError):  # quantized and other exotic dtypes
        return None


def _looks_like_probabilities(x: Tensor) -> bool:
    """Whether every entry of ``x`` (..., k) is in [0, 1] and every row sums to 1 (1e-5)."""
    x = x.detach()
    return bool(((x >= 0) & (x <= 1)).all() & ((x.sum(-1) - 1).abs() <= 1e-5).all())


def _float64_tensor(name: str, value, ndim: int) -> Tensor:
    """A parameter as a float64 CPU tensor with ``ndim`` dimensions and finite entries."""
    try:
        # a list of floats is read in float64, not in the default dtype (that would round pi)
        v = (value.detach() if isinstance(value, Tensor) else
             torch.as_tensor(value, dtype=torch.float64))
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor or a nested sequence of numbers, "
                        f"got {type(value).__name__}") from None
    if not (v.is_floating_point() or v.dtype in _INT_DTYPES):
        raise TypeError(f"{name} must be real-valued, got dtype {v.dtype}")
    if v.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {tuple(v.shape)}")
    v = v.to("cpu", torch.float64)
    if not bool(torch.isfinite(v).all()):
        raise ValueError(f"{name} must be finite")
    return v


def _rows(mats: Tensor, index: Tensor) -> Tensor:
    """``mats[b, index]`` for each element: mats (Bt, k, k) holds one matrix per time, and the
    elements of ``index`` (B, ...) or (...) are grouped by time along the leading dimension."""
    bt, k = mats.shape[0], mats.shape[-1]
    flat = index.reshape(bt, index.numel() // max(bt, 1))    # -1 is ambiguous for bt = 0
    batch = torch.arange(bt, device=index.device).unsqueeze(-1)
    return mats[batch, flat].reshape(index.shape + (k,))


def _log_at(probs: Tensor, states: Tensor) -> Tensor:
    """log probs[..., states] for probabilities (..., k) and states (...)."""
    return probs.gather(-1, states.long().unsqueeze(-1)).squeeze(-1).log()


def _categorical_kl(q: Tensor, p: Tensor) -> Tensor:
    """KL(q || p) over the last dimension (0 log 0 = 0; +inf where p = 0 < q); rounding of two
    nearly equal laws is clamped at 0."""
    return (torch.xlogy(q, q) - torch.xlogy(q, p)).sum(-1).clamp_min(0)


# ---------------------------------------------------------------- shared base

class _Discrete(Process):
    """Integer states [0, n_states), probabilities over the k data states, and the loss.

    Subclasses set ``rate`` (for the scaler), ``k`` (data states: the length of soft x0 and
    of the loss's logits) and ``_n_states`` (all states), and implement ``_forward``,
    ``_hard_bridge`` and ``_soft_bridge`` on int64 states; the base casts results back to the
    input's integer dtype.
    """

    def _param(self, name: str, like: Tensor) -> Tensor:
        """The float64 CPU parameter ``name`` on ``like``'s device and dtype, cached, so that
        no call copies it from the host again."""
        cache = self.__dict__.setdefault("_cache", {})
        key = (name, like.device, like.dtype)
        if key not in cache:
            cache[key] = getattr(self, name).to(like.device, like.dtype)
        return cache[key]

    def _check_dtype(self, dtype: torch.dtype, name: str) -> None:
        """Raise TypeError unless ``dtype`` is an integer dtype that holds every state."""
        info = _integer_info(dtype)
        if info is None:
            raise TypeError(f"{name} must be an integer tensor of states for "
                            f"{type(self).__name__}, got dtype {dtype}")
        if info.max < self._n_states - 1:
            raise TypeError(f"{name} has dtype {dtype}, which cannot hold the states "
                            f"[0, {self._n_states - 1}] of {type(self).__name__}; use a wider "
                            f"integer dtype such as torch.int64")

    def _check_states(self, x: Tensor, name: str, n: int) -> None:
        """Raise unless ``x`` is an integer tensor of states (values in [0, n) on the host)."""
        self._check_dtype(x.dtype, name)
        if on_host(x) and x.numel():
            v = x.long()  # uint32 and uint64 have no min/max on the CPU; uint64 > 2^63 wraps < 0
            lo, hi = int(v.min()), int(v.max())
            if lo < 0 or hi >= n:
                raise ValueError(f"{name} has states outside [0, {n}) for "
                                 f"{type(self).__name__}: min {lo}, max {hi}")

    def check_state(self, x: Tensor, name: str) -> None:
        self._check_states(x, name, self._n_states)

    def _equilibrium_dtype(self, dtype) -> torch.dtype:
        """int64 unless an integer dtype is asked for; a float dtype is ignored (a tuple of
        processes shares one dtype argument)."""
        if dtype is None or dtype.is_floating_point:
            return torch.int64
        self._check_dtype(dtype, "dtype")
        return dtype

    def check_endpoints(self, x0: Tensor, x_t: Tensor) -> None:
        if not x0.is_floating_point():
            self.check_state(x0, "x0")
            super().check_endpoints(x0, x_t)
            return
        expected = tuple(x_t.shape) + (self.k,)
        if tuple(x0.shape) != expected:
            raise ValueError(f"x0 given as probabilities must have shape {expected} (x_t's shape "
                             f"plus the {self.k} data states of {type(self).__name__}), got "
                             f"{tuple(x0.shape)}")
        if on_host(x0) and not bool(((x0 >= 0) & torch.isfinite(x0)).all()
                                    & (x0.sum(-1) > 0).all()):
            raise ValueError("x0 given as probabilities must be finite, non-negative and have a "
                             "positive sum over the last dimension")

    def sample_forward(self, t, x0, generator=None):
        return self._forward(t, x0.long(), generator).to(x0.dtype)

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        if x0.is_floating_point():
            x_s = self._soft_bridge(s, t, x0, x_t.long(), generator)
        else:
            x_s = self._hard_bridge(s, t, x0.long(), x_t.long(), generator)
        return x_s.to(x_t.dtype)

    def _check_logits(self, x0_hat: Tensor, x0: Tensor) -> None:
        if not x0_hat.is_floating_point():
            raise TypeError(f"x0_hat must be float logits, got dtype {x0_hat.dtype}")
        expected = tuple(x0.shape) + (self.k,)
        if tuple(x0_hat.shape) != expected:
            raise ValueError(f"x0_hat must be logits of shape {expected} (x0's shape plus "
                             f"{self.k} states), got {tuple(x0_hat.shape)}")

    def check_prediction(self, x0_hat: Tensor, x0: Tensor) -> None:
        """x0_hat: float logits (..., k) over the data states; x0: states in [0, k) (for
        AbsorbingDiscrete the mask state k is no target). On the host, refuses an x0_hat that
        holds probabilities (entries in [0, 1], rows summing to 1): the loss takes logits."""
        self._check_logits(x0_hat, x0)
        self._check_states(x0, "x0", self.k)
        if on_host(x0_hat) and x0_hat.numel() and _looks_like_probabilities(x0_hat):
            raise ValueError(f"x0_hat holds probabilities (entries in [0, 1] summing to 1 over "
                             f"the last dimension), but the loss of {type(self).__name__} takes "
                             f"logits: pass the model's logits, or probs.log()")

    def loss(self, x0_hat: Tensor, x0: Tensor) -> Tensor:
        """Cross-entropy of logits ``x0_hat`` (..., k) against states ``x0`` (...), divided by
        (k - 1)/k and times 1.44 (Diffusions.jl's standardloss); shape of ``x0``.

        Only the dtype and shape of ``x0_hat`` are checked here (a wrong last dimension would
        give a wrong loss silently); ``check_prediction`` checks the values."""
        self._check_logits(x0_hat, x0)
        log_p = torch.log_softmax(x0_hat, dim=-1)
        nll = -log_p.gather(-1, x0.long().unsqueeze(-1)).squeeze(-1)
        return nll * (_LOSS_GAIN * self.k / (self.k - 1))

    def scaler(self, t: Tensor) -> Tensor:
        """sqrt(1 - exp(-rate t)), Diffusions.jl's default."""
        return (-torch.expm1(-as_param(self.rate, t) * t)).sqrt()

    def guide(self, x0_uncond: Tensor, x0_cond: Tensor, w: float) -> Tensor:
        r"""Affine in the logits: the geometric mixture :math:`p \propto u^{1-w} c^w` of two
        probability tensors (..., k), normalised; probabilities in, probabilities out.

        A state where either guess puts no weight gets none (the limit for w in (0, 1); for
        w > 1, or w < 0, a state only one guess allows would otherwise weigh infinitely); where no
        state has weight under both, the result is the conditional guess, normalised.
        Hard states cannot be mixed: they are refused (``bd.Guided`` passes them through
        itself for w = 0 and w = 1).
        """
        if not (x0_uncond.is_floating_point() and x0_cond.is_floating_point()):
            raise ValueError(f"guidance of {type(self).__name__} with w = {w} needs guesses "
                             f"given as probabilities (..., {self.k}), not hard states (hard "
                             f"states are accepted only for w = 0 or w = 1)")
        if x0_uncond.shape != x0_cond.shape:
            raise ValueError(f"the unconditional and conditional guesses have shapes "
                             f"{tuple(x0_uncond.shape)} and {tuple(x0_cond.shape)}")
        u = x0_uncond / x0_uncond.sum(-1, keepdim=True)
        c = x0_cond / x0_cond.sum(-1, keepdim=True)
        both = (u > 0) & (c > 0)
        tiny = torch.finfo(u.dtype).tiny
        logits = (1 - w) * u.clamp_min(tiny).log() + w * c.clamp_min(tiny).log()
        mixed = torch.softmax(torch.where(both, logits, -torch.inf), dim=-1)
        return torch.where(both.any(-1, keepdim=True), mixed, c)


class _MarkovChain(_Discrete):
    """Soft-x0 bridge of a chain given P(u)[:, l] (``_column``) and w @ P(u) (``_propagate``)."""

    def _soft_bridge(self, s, t, probs, x_t, generator):
        return _categorical(self._soft_weights(s, t, probs, x_t), generator)

    def _soft_weights(self, s, t, probs, x_t):
        """((p̂ / P(t)[:, l]) @ P(s)) * P(t−s)[:, l]: the unnormalised soft-x0 bridge (..., k)."""
        column_t = self._column(t, x_t)
        w = torch.where(column_t > 0, probs / column_t, 0)
        return self._propagate(w, s) * self._column(t - s, x_t)

    # ---------------------------------------------------------------- likelihood (bd.elbo)
    # Probabilities with respect to counting measure; KLs in closed form, as sums over the k
    # states: O(k) per element for the jump chains, O(k²) for GeneralDiscrete's soft x0.

    def _bridge_probs(self, s, t, x0, x_t):
        """p(x_s = j | x0, x_t) over j, (..., k): x0 hard (...) or probabilities (..., k)."""
        x_t = x_t.long()
        if x0.is_floating_point():
            weights = self._soft_weights(s, t, x0, x_t)
        else:
            weights = self._row(s, x0.long()) * self._column(t - s, x_t)
        return weights / weights.sum(-1, keepdim=True)

    def bridge_log_prob(self, s, t, x0, x_t, x_s):
        return _log_at(self._bridge_probs(s, t, x0, x_t), x_s).to(t.dtype)

    def bridge_kl(self, t0, s, t, x0, x0_hat, x_t, generator=None):
        """Exact KL of the two categorical bridges (x0_hat hard or probabilities; no draw),
        in float64: Σ q log(q/p) cancels where q ≈ p, which float32 would bias upwards."""
        t0, s64, t64 = t0.double(), s.double(), t.double()
        x0_hat = x0_hat.double() if x0_hat.is_floating_point() else x0_hat
        q = self._bridge_probs(s64 - t0, t64 - t0, x0, x_t)
        return _categorical_kl(q, self._bridge_probs(s64, t64, x0_hat, x_t)).to(t.dtype)


# ---------------------------------------------------------------- jumps to a fixed law

class _Jumps(_MarkovChain):
    r"""Chains that jump at rate r to a fresh draw from π: Q = r (1 πᵀ − I),
    P(u) = α_u I + (1 − α_u) 1 πᵀ with α_u = e^{−ru}.

    Hard x0 costs O(1) per element plus one draw from π. The bridge is the mixture
    p(x_s) ∝ α_s (α_{t−s} [x0 = x_t] + (1 − α_{t−s}) π_l) δ_{x0}
    + (1 − α_s) α_{t−s} π_l δ_{x_t} + (1 − α_s)(1 − α_{t−s}) π_l π, with l = x_t.
    Subclasses give π as ``_pi_at(states, like)``, ``_pi_vector(like)`` and ``_fresh``.
    """

    def _decay(self, u: Tensor):
        """(α_u, 1 − α_u), the latter with expm1 so that small ru keep their precision."""
        ru = as_param(self.rate, u) * u
        return torch.exp(-ru), -torch.expm1(-ru)

    def _forward(self, t, x0, generator=None):
        _, jump = self._decay(t)
        moved = rand(t, generator, shape=x0.shape) < jump
        return torch.where(moved, self._fresh(x0.shape, t, generator), x0)

    def _hard_bridge(self, s, t, x0, x_t, generator):
        stay_s, jump_s = self._decay(s)
        stay_d, jump_d = self._decay(t - s)
        pi_l = self._pi_at(x_t, t)
        at_x0 = stay_s * (stay_d * (x0 == x_t) + jump_d * pi_l)
        at_xt = jump_s * stay_d * pi_l
        at_fresh = jump_s * jump_d * pi_l
        u = rand(t, generator, shape=x_t.shape) * (at_x0 + at_xt + at_fresh)
        fresh = self._fresh(x_t.shape, t, generator)
        return torch.where(u < at_x0, x0, torch.where(u < at_x0 + at_xt, x_t, fresh))

    def _column(self, u, l):
        """P(u)[:, l] = α_u e_l + (1 − α_u) π_l, shape l.shape + (k,)."""
        stay, jump = self._decay(u.unsqueeze(-1))
        is_l = torch.arange(self.k, device=l.device) == l.unsqueeze(-1)
        return jump * self._pi_at(l, u).unsqueeze(-1) + stay * is_l

    def _propagate(self, w, u):
        """w @ P(u) = α_u w + (1 − α_u) (Σ w) π."""
        stay, jump = self._decay(u.unsqueeze(-1))
        return stay * w + jump * w.sum(-1, keepdim=True) * self._pi_vector(w)

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None):
        like = torch.empty((), device=device)
        return self._fresh(torch.Size(shape), like, generator).to(self._equilibrium_dtype(dtype))

    # ---------------------------------------------------------------- likelihood (bd.elbo)

    def _row(self, u, i):
        """P(u)[i, :] = α_u e_i + (1 − α_u) π, shape i.shape + (k,)."""
        stay, jump = self._decay(u.unsqueeze(-1))
        is_i = torch.arange(self.k, device=i.device) == i.unsqueeze(-1)
        return stay * is_i + jump * self._pi_vector(u)

    def forward_log_prob(self, t, x0, x_t):
        """log(α_t [x0 = x_t] + (1 − α_t) π_{x_t}), O(1) per element."""
        stay, jump = self._decay(t)
        return torch.log(stay * (x0 == x_t) + jump * self._pi_vector(t)[x_t.long()])

    def equilibrium_log_prob(self, x):
        like = torch.empty((), device=x.device)
        return self._pi_vector(like)[x.long()].log()

    def prior_kl(self, t0, T, x0, generator=None):
        """KL(P(u)[x0, :] || π), u = T − t0, O(1) per element: with q_i = α + (1 − α) π_i,
        q_i log(q_i / π_i) + (1 − α)(1 − π_i) log(1 − α), in float64 (the two terms are O(α)
        and cancel to O(α²))."""
        u = T.double() - t0.double()
        stay, jump = self._decay(u)
        pi_i = self._pi_vector(u)[x0.long()]
        kl = (torch.xlogy(stay + jump * pi_i, stay / pi_i + jump)
              + torch.xlogy(jump * (1 - pi_i), jump))
        return kl.clamp_min(0).to(T.dtype)


class UniformDiscrete(_Jumps):
    r"""Uniform jumps on k states (Diffusions.jl's ``UniformDiscreteDiffusion``).

    .. math::
        Q = r\,(\tfrac{1}{k} 1 1^\top - I), \qquad P(t) = \alpha_t I + \tfrac{1 - \alpha_t}{k}
        1 1^\top, \quad \alpha_t = e^{-rt}

    At rate ``rate`` r the state jumps to a uniform state, itself included, so the visible
    change rate is r (k − 1)/k. Equilibrium: uniform on [0, k). States: integer tensors
    (...) in [0, k); soft x0: probabilities (..., k). Hard x0 costs O(1) per element with no
    k-sized tensor (k = 50 000 is as fast as k = 4); soft x0 costs O(k) per element.
    """

    def __init__(self, rate, k):
        self.rate = positive("rate", rate)
        self.k = integer_at_least("k", k, 2)
        self._n_states = self.k

    def _pi_at(self, states, like):
        return torch.full((), 1 / self.k, dtype=like.dtype, device=like.device)

    def _pi_vector(self, like):
        return torch.full((self.k,), 1 / self.k, dtype=like.dtype, device=like.device)

    def _fresh(self, shape, like, generator):
        return torch.randint(0, self.k, shape, generator=generator, device=like.device)


class IndependentDiscrete(_Jumps):
    r"""Jumps to an independent draw from π (Diffusions.jl's ``IndependentDiscreteDiffusion``).

    .. math::
        Q = r\,(1 \pi^\top - I), \qquad P(t) = \alpha_t I + (1 - \alpha_t)\, 1 \pi^\top, \quad
        \alpha_t = e^{-rt}

    ``pi``: non-negative weights (k,), normalised to sum to 1 (stored normalised, float64).
    Equilibrium: π. States: integer tensors in [0, k); soft x0: probabilities (..., k). Hard x0
    costs O(1) per element (a draw from π uses Walker's alias table, built once) and no
    (elements × k) tensor; soft x0 costs O(k) per element.
    """

    def __init__(self, rate, pi):
        self.rate = positive("rate", rate)
        pi = _float64_tensor("pi", pi, ndim=1)
        if bool((pi < 0).any()) or not bool(pi.sum() > 0):
            raise ValueError(f"pi must be non-negative with a positive sum, got "
                             f"{pi[:8].tolist()}")
        self.k = integer_at_least("len(pi)", pi.shape[0], 2)
        self._n_states = self.k
        self.pi = pi / pi.sum()
        self._accept, self._alias = _alias_table(self.pi)

    def _pi_at(self, states, like):
        return self._param("pi", like)[states]

    def _pi_vector(self, like):
        return self._param("pi", like)

    def _fresh(self, shape, like, generator):
        """A draw from π by its alias table: one uniform index and one coin per element."""
        i = torch.randint(0, self.k, shape, generator=generator, device=like.device)
        keep = rand(like, generator, shape=shape) < self._param("_accept", like)[i]
        return torch.where(keep, i, self._param("_alias", i)[i])


# ---------------------------------------------------------------- any rate matrix

class GeneralDiscrete(_MarkovChain):
    r"""Any continuous-time Markov chain on k states, given its rate matrix Q (k, k).

    .. math::
        P(t) = \exp(tQ), \qquad Q_{ij} \ge 0 \ (i \ne j), \quad \textstyle\sum_j Q_{ij} = 0

    Transition matrices are computed once per time in a call (one for a scalar t, B for one
    time per batch element; never one per element), in float64 by uniformisation and scaling
    and squaring: with J = I + Q/q (q the largest exit rate, J a stochastic matrix) and
    u·q = τ·2^m (τ ≤ 1, m chosen per time),

    .. math::
        P(u) = \Big(e^{-\tau} \sum_{j \le 18} \tfrac{\tau^j}{j!} J^j\Big)^{2^m},

    every term non-negative, rows renormalised after each squaring: each P(u) is a
    stochastic matrix whose entries, tiny ones included, hold float64's relative precision,
    and large u converge to the limit law (the stationary law, or the absorption law when the
    chain has several closed classes). Times beyond the chain's mixing time (found once, at
    construction) take the limit itself, so the number of squarings is bounded and the
    device path needs no host synchronisation. The bridges' weights stay in float64 whatever
    the data's dtype: a bridge multiplies two small probabilities, P(s)[i, j] P(t−s)[j, l],
    whose float32 product underflows for endpoints a dozen jumps apart at t = 1e-3. Hard x0
    then costs O(k) per element and soft x0 O(k²). No eigendecomposition, so any Q works,
    defective or with complex spectrum.

    ``Q`` is stored in float64 with its diagonal reset to minus the off-diagonal row sums
    (rows must sum to 0 within 1e-6 of the largest rate). ``rate`` is the mean exit rate
    mean(−diag Q), used by the loss scaler. Equilibrium: the stationary law π (πQ = 0), when
    it is unique. States: integer tensors in [0, k); soft x0: probabilities (..., k).
    """

    def __init__(self, Q):
        Q = _float64_tensor("Q", Q, ndim=2)
        if Q.shape[0] != Q.shape[1]:
            raise ValueError(f"Q must be a square rate matrix, got shape {tuple(Q.shape)}")
        self.k = integer_at_least("Q's size", Q.shape[0], 2)
        self._n_states = self.k
        off = Q - torch.diag(Q.diagonal())
        if bool((off < 0).any()):
            raise ValueError("Q's off-diagonal entries (jump rates) must be non-negative")
        scale = float(Q.abs().max())
        if not bool((Q.sum(1).abs() <= 1e-6 * scale).all()):
            raise ValueError(f"Q's rows must sum to 0, got row sums {Q.sum(1)[:8].tolist()}")
        self.Q = off - torch.diag(off.sum(1))
        self.rate = float(-self.Q.diagonal().mean())
        if not self.rate > 0:
            raise ValueError("Q must have at least one positive rate")
        self._stationary = _stationary_law(self.Q)
        self._exit = float(-self.Q.diagonal().min())   # q, the largest exit rate
        jumps = (torch.eye(self.k, dtype=torch.float64) + self.Q / self._exit).clamp_min(0)
        self._powers = _matrix_powers(jumps, _BLOCK)
        self._squarings = _mixing_squarings(self._powers)

    def _transition(self, u: Tensor) -> Tensor:
        """P(u) for each time of ``u`` (0-d or (B, 1, ..., 1)): (Bt, k, k) float64."""
        uq = u.reshape(-1).to(torch.float64) * self._exit
        m = torch.ceil(torch.log2(uq / _TAU))
        mixed = m > self._squarings                    # P(u) is the limit to float64 precision
        m = m.clamp(0, self._squarings)
        tau = torch.where(mixed, _TAU, torch.ldexp(uq, -m))
        p = _normalised_rows(_series(tau, self._param("_powers", uq)))
        if use_host_path(u):
            steps = int(m.max()) if m.numel() else 0
        else:
            steps = self._squarings                    # fixed work: no sync with the device
        squared = (m > torch.arange(steps, device=m.device).unsqueeze(-1))[..., None, None]
        for i in range(steps):
            p = torch.where(squared[i], _normalised_rows(p @ p), p)
        return p

    def _forward(self, t, x0, generator=None):
        # a row of P(t) always holds an entry >= 1/k: t's dtype loses nothing that matters
        return _categorical(_rows(self._transition(t).to(t.dtype), x0), generator)

    def _hard_bridge(self, s, t, x0, x_t, generator):
        from_x0 = _rows(self._transition(s), x0)
        to_xt = _rows(self._transition(t - s).mT, x_t)
        return _categorical(from_x0 * to_xt, generator)

    def _column(self, u, l):
        return _rows(self._transition(u).mT, l)

    def _propagate(self, w, u):
        mats = self._transition(u)
        bt = mats.shape[0]
        return (w.reshape(bt, w.numel() // max(bt * self.k, 1), self.k) @ mats).reshape(w.shape)

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None):
        if self._stationary is None:
            raise ValueError("GeneralDiscrete: Q has no unique stationary distribution (its "
                             "chain has several closed classes); start the backward chain "
                             "from sample_forward(process, T, x0) instead")
        cdf = self._param("_stationary", torch.empty((), device=device)).cumsum(0)
        return _sample_cdf(cdf, torch.Size(shape), generator).to(self._equilibrium_dtype(dtype))

    # ---------------------------------------------------------------- likelihood (bd.elbo)
    # float64 throughout (as the bridges), results in the times' dtype.

    def _row(self, u, i):
        """P(u)[i, :], shape i.shape + (k,), float64."""
        return _rows(self._transition(u), i)

    def _stationary_law_or_raise(self, like: Tensor) -> Tensor:
        if self._stationary is None:
            raise ValueError("GeneralDiscrete: Q has no unique stationary distribution, so the "
                             "backward chain has no equilibrium start and bd.elbo no prior")
        return self._param("_stationary", like)

    def forward_log_prob(self, t, x0, x_t):
        return _log_at(self._row(t, x0.long()), x_t).to(t.dtype)

    def equilibrium_log_prob(self, x):
        pi = self._stationary_law_or_raise(torch.empty((), device=x.device))
        return pi[x.long()].log().to(torch.get_default_dtype())

    def prior_kl(self, t0, T, x0, generator=None):
        """KL(P(T − t0)[x0, :] || π), O(k) per element."""
        q = self._row(T.double() - t0.double(), x0.long())
        return _categorical_kl(q, self._stationary_law_or_raise(q)).to(T.dtype)


# ---------------------------------------------------------------- exp(uQ) by uniformisation

_TAU = 1.0             # scaled time u·q / 2^m at most: sum_{j > 18} 1/j! < 1e-17
_DEGREE = 18
_BLOCK = 5             # Paterson-Stockmeyer: J^0..J^5 cached, then 3 products per series
_MAX_SQUARINGS = 2100  # 2^2100 > u·q for every finite float64 u and q


def _matrix_powers(J: Tensor, n: int) -> Tensor:
    """J^0, ..., J^n stacked: (n + 1, k, k)."""
    powers = [torch.eye(J.shape[0], dtype=J.dtype), J]
    while len(powers) <= n:
        powers.append(powers[-1] @ J)
    return torch.stack(powers[:n + 1])


def _series(tau: Tensor, powers: Tensor) -> Tensor:
    """sum_{j <= 18} tau^j J^j / j! for each tau (Bt,), given J^0..J^s: (Bt, k, k).

    All terms are non-negative (J and tau are), so every entry keeps its relative precision.
    Blocks of s powers are combined by Horner's rule in J^s (Paterson-Stockmeyer).
    """
    s = powers.shape[0] - 1
    blocks = _DEGREE // s + 1
    j = torch.arange(blocks * s, dtype=tau.dtype, device=tau.device)
    coef = tau.unsqueeze(-1) ** j / torch.exp(torch.lgamma(j + 1))
    coef = torch.where(j <= _DEGREE, coef, 0).reshape(-1, blocks, s)
    parts = torch.einsum("bqi,ikl->bqkl", coef, powers[:s])
    out = parts[:, -1]
    for q in range(blocks - 2, -1, -1):
        out = parts[:, q] + out @ powers[s]
    return out


def _normalised_rows(p: Tensor) -> Tensor:
    return p / p.sum(-1, keepdim=True)


def _mixing_squarings(powers: Tensor) -> int:
    """The number of squarings of P(τ/q) after which P no longer changes (each entry within
    a few rounding errors, exact zeros included), plus a margin of two: from then on P(u) is
    the limit law. At most ``_MAX_SQUARINGS`` (then no finite time is ever clamped)."""
    k = powers.shape[-1]
    rtol = 4 * (k + 2) * torch.finfo(torch.float64).eps
    p = _normalised_rows(_series(torch.full((1,), _TAU, dtype=torch.float64), powers))
    for j in range(1, _MAX_SQUARINGS + 1):
        q = _normalised_rows(p @ p)
        if bool(((q - p).abs() <= rtol * q + 1e-300).all()):
            return min(j + 2, _MAX_SQUARINGS)
        p = q
    return _MAX_SQUARINGS


def _stationary_law(Q: Tensor):
    """The unique π ≥ 0 with πQ = 0 and Σπ = 1 (float64), or None if it is not unique."""
    _, sv, vh = torch.linalg.svd(Q.T)
    if not bool(sv[-2] > 1e-10 * sv[0]):
        return None
    pi = vh[-1] / vh[-1].sum()
    pi = pi.clamp_min(0)
    return pi / pi.sum()


# ---------------------------------------------------------------- absorbing

class AbsorbingDiscrete(_Discrete):
    r"""Absorbing ("masking") diffusion: data states [0, k) jump at rate r to the mask state k.

    * forward: :math:`x_t = k` with probability :math:`1 - e^{-rt}`, else :math:`x_0`;
    * bridge: if :math:`x_t \ne k` then :math:`x_s = x_t`; if :math:`x_t = k` then
      :math:`x_s = k` with probability :math:`(1 - e^{-rs}) / (1 - e^{-rt})`, else x0 (soft
      x0: a draw from the probabilities, which is the exact marginal since
      P(t)[i, k] = 1 − e^{−rt} does not depend on i);
    * equilibrium: all k.

    States: integer tensors in [0, k] (k is the mask); soft x0 and the loss's logits are over
    the k data states, (..., k). Hard x0 costs O(1) per element, soft x0 O(k).
    """

    def __init__(self, rate, k):
        self.rate = positive("rate", rate)
        self.k = integer_at_least("k", k, 2)
        self._n_states = self.k + 1

    def _masking(self, u: Tensor) -> Tensor:
        """1 − e^{−ru}, the probability of being masked at time u."""
        return -torch.expm1(-as_param(self.rate, u) * u)

    def _log_unmasking(self, s: Tensor, t: Tensor) -> Tensor:
        """log(1 − ρ), ρ = (1 − e^{−rs}) / (1 − e^{−rt}) the bridge's P(x_s = k | x_t = k):
        1 − ρ = e^{−rs} (1 − e^{−r(t−s)}) / (1 − e^{−rt}), without the cancellation of 1 − ρ
        (ρ rounds to 1 once e^{−rs} < eps)."""
        return (-as_param(self.rate, s) * s + torch.log(self._masking(t - s))
                - torch.log(self._masking(t)))

    def _forward(self, t, x0, generator=None):
        masked = rand(t, generator, shape=x0.shape) < self._masking(t)
        return torch.where(masked, self.k, x0)

    def _hard_bridge(self, s, t, x0, x_t, generator):
        unmasked_by_s = rand(t, generator, shape=x_t.shape) < self._log_unmasking(s, t).exp()
        return torch.where((x_t == self.k) & unmasked_by_s, x0, x_t)

    def _soft_bridge(self, s, t, probs, x_t, generator):
        return self._hard_bridge(s, t, _categorical(probs, generator), x_t, generator)

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None):
        return torch.full(torch.Size(shape), self.k, dtype=self._equilibrium_dtype(dtype),
                          device=device)

    # ---------------------------------------------------------------- likelihood (bd.elbo)
    # Probabilities with respect to counting measure, O(1) per element. The chain starts from
    # the point mass "all masked", which the forward law reaches only as T → ∞; so the ELBO's
    # variational law is the forward process conditioned on x_T = k (still a valid bound: its
    # transitions given x_t are the same bridges), whose prior KL is 0 instead of +∞.

    def _probability_of(self, x0, states):
        """p̂ at ``states`` (...) for x0 hard (...) or probabilities (..., k)."""
        if not x0.is_floating_point():
            return (x0.long() == states.long()).to(torch.get_default_dtype())
        probs = x0 / x0.sum(-1, keepdim=True)
        return probs.gather(-1, states.long().clamp_max(self.k - 1).unsqueeze(-1)).squeeze(-1)

    def forward_log_prob(self, t, x0, x_t):
        masked = self._masking(t)
        return torch.where(x_t == self.k, masked.log(),
                           torch.where(x_t == x0, torch.log1p(-masked), -math.inf))

    def equilibrium_log_prob(self, x):
        zero = torch.zeros(x.shape, device=x.device)
        return torch.where(x == self.k, zero, -math.inf)

    def sample_variational(self, t0, t, T, x0, generator=None):
        """x_t masked with probability (1 − e^{−r(t − t0)}) / (1 − e^{−r(T − t0)}), else x0:
        the forward law given x_{t0} = x0 and x_T = k."""
        still = self._masking(t - t0) / self._masking(T - t0)
        return torch.where(rand(t, generator, shape=x0.shape) < still, self.k, x0.long()
                           ).to(x0.dtype)

    def prior_kl(self, t0, T, x0, generator=None):
        """0: the variational x_T is the chain's start, all masked (see sample_variational)."""
        return torch.zeros(x0.shape, dtype=T.dtype, device=x0.device)

    def bridge_log_prob(self, s, t, x0, x_t, x_s):
        rho = self._masking(s) / self._masking(t)
        p = self._probability_of(x0, x_s).to(t.dtype)
        from_mask = torch.where(x_s == self.k, rho.log(), self._log_unmasking(s, t) + p.log())
        stays = torch.where(x_s == x_t, 0.0, -math.inf).to(t.dtype)
        return torch.where(x_t == self.k, from_mask, stays)

    def bridge_kl(self, t0, s, t, x0, x0_hat, x_t, generator=None):
        r"""Where x_t = k, with ρ = P(x_s = k) under each bridge,
        :math:`ρ_q \log(ρ_q/ρ_p) + (1 − ρ_q) \log((1 − ρ_q) / ((1 − ρ_p)\,\hat p_{x_0}))`;
        0 elsewhere (both bridges stay at x_t). In float64, with 1 − ρ formed in log space (see
        ``_log_unmasking``), so that the bound stays finite and precise for large r·T."""
        dtype, t0, s, t = t.dtype, t0.double(), s.double(), t.double()
        x0_hat = x0_hat.double() if x0_hat.is_floating_point() else x0_hat
        from_mask = x0 == self.k            # x_{t0} already masked: q stays masked
        rho_q = torch.where(from_mask, 1.0, self._masking(s - t0) / self._masking(t - t0))
        rho_p = self._masking(s) / self._masking(t)
        log_unmask_q = torch.where(from_mask, -torch.inf, self._log_unmasking(s - t0, t - t0))
        p = self._probability_of(x0_hat, x0).double()
        log_ratio = log_unmask_q - self._log_unmasking(s, t) - p.log()
        unmask_q = log_unmask_q.exp()       # where p̂ = 0 < unmask_q the KL is +inf
        kl = (torch.xlogy(rho_q, rho_q / rho_p)
              + torch.where(unmask_q > 0, unmask_q * log_ratio, 0.0))
        return torch.where(x_t == self.k, kl.clamp_min(0), 0.0).to(dtype)
