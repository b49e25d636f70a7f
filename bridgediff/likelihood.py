r"""Likelihoods: an exact evidence lower bound (ELBO) of the backward chain, for every process.

The chain that ``bd.sample_backward`` runs with a guess is a generative model: it starts from
the equilibrium at T = t_n, steps x_{t_{i-1}} ~ bridge(t_{i-1}, t_i, x0_hat(x_{t_i}), x_{t_i})
and outputs x_{t_0}, which is read as the data. ``elbo`` bounds the negative log likelihood of
data under that chain, per sample, with each term in closed form where the process has one and
by unbiased Monte Carlo with exact log densities elsewhere.
"""

import torch
from torch import Tensor

from ._tree import leaves, map_tree, rewrap, split, state_mask, unmasked
from .masked import Masked
from .process import Process, time_dtype
from .sampling import _cast, _check_callable, _time_grids, as_time, check_endpoints

__all__ = ["elbo"]


def elbo(guess, process, x0, timesteps, *, generator=None) -> Tensor:
    r"""Negative ELBO, in nats, of data ``x0`` under the backward chain of ``guess``: (B,).

    The chain is the one ``bd.sample_backward(guess, process, timesteps, x_T)`` runs from
    x_T ~ equilibrium at T = t_n: :math:`p_\theta(x_{t_{i-1}} | x_{t_i}) =
    p(x_{t_{i-1}} | x_0 = \hat x_0(x_{t_i}, t_i), x_{t_i})`, its output x_{t_0} being the
    data. As variational law of the latents x_{t_1}, ..., x_{t_n} take the forward process
    started at the data at time t_0, :math:`q(x_{t_{1:n}} | x_{t_0} = x_0) = q(x_T | x_0)
    \prod_{i=2}^{n} q(x_{t_{i-1}} | x_{t_i}, x_0)` (by the Markov property its reverse
    transitions are the bridges from x_0 at t_0). Jensen's inequality on
    :math:`p_\theta(x_0) = E_q[p_\theta(x_0, x_{t_{1:n}}) / q(x_{t_{1:n}} | x_0)]` gives

    .. math::
        -\log p_\theta(x_0) \le \mathrm{KL}(q(x_T | x_0) \,\|\, \pi)
        + \sum_{i=2}^{n} E_q\,\mathrm{KL}(q(x_{t_{i-1}} | x_{t_i}, x_0) \,\|\,
          p_\theta(x_{t_{i-1}} | x_{t_i}))
        - E_q \log p_\theta(x_{t_0} = x_0 | x_{t_1}),

    with equality when q is the chain's own posterior of the latents. Each expectation is
    estimated with one draw x_{t_i} ~ q(x_{t_i} | x_0) per step (``sample_variational``), the
    KLs and the last term exactly given that draw (``bridge_kl``, ``bridge_log_prob``), so the
    result is an unbiased estimate of the bound; average over draws (or data) to reduce its
    noise. Started at t_0, not 0, q is the exact posterior of an exact chain, so with the
    exact posterior mean as guess the bound tends to −log p_{t_0}(x_0) as the steps refine
    (0.013 nats above it at 1000 steps on Gaussian data); a q started at 0 would put x_{t_1}
    √t_1 away from x_0 while the chain's last step moves only √(t_1 − t_0), and diverge.

    Densities are per element, summed over every non-batch dimension: with respect to
    Lebesgue measure for real data (on the zero-mean subspace for CenteredOrnsteinUhlenbeck),
    counting measure for discrete states, Lebesgue measure on [−π, π) for angles, the area
    measure of S² (total 4π) for SphereBrownian, and the Haar probability measure for
    rotations. Closed forms: every KL of OrnsteinUhlenbeck (and its centred variant),
    BrownianMotion and the discrete processes (soft x0_hat: the KL of the marginalised bridge;
    O(k) per element for Uniform, Independent and Absorbing, O(k²) for GeneralDiscrete's soft
    x0_hat; in float64). Monte Carlo from exact densities: WrappedBrownian (wrapped normal),
    RotationDiffusion (IGSO(3)) and SphereBrownian (the S² heat kernel). Two chains have no
    equilibrium start, and their prior is stated: BrownianMotion's chain starts from N(0, rate·T) (the law of
    ``sample_forward(P, T, zeros)``); AbsorbingDiscrete's from all-masked, with q conditioned
    on x_T = mask so that its prior KL is 0. A custom process supplies the hooks of
    ``bd.Process`` (``forward_log_prob`` and ``equilibrium_log_prob`` suffice, the rest have
    Monte Carlo defaults); a missing one raises NotImplementedError naming it.

    Args:
        guess: callable (x_t, t) -> x0_hat, as for ``bd.sample_backward`` (for discrete
            components hard states or probabilities (..., k)). It is called once per step,
            from t_n down to t_1, on independent draws x_t, so it must be a function of
            (x_t, t) alone (a stateful guess such as ``bd.SelfConditioned`` is not).
        process: a ``bd.Process`` or a (nested) tuple, list or dict of them; components sum.
        x0: data (B, ...), a tensor or ``bd.Masked`` (only diffusing elements count, held ones
            contribute 0), or a matching structure of them.
        timesteps: increasing positive times (n + 1,), n >= 1, as for ``sample_backward``:
            the chain starts at ``timesteps[-1]`` and outputs at ``timesteps[0]``; or, for a
            structure of processes, a matching structure of such grids, all of one length
            (one clock per component; the guess then receives t as that structure).
        generator: a ``torch.Generator`` for the draws.

    Returns:
        (B,) tensor, the per-sample negative ELBO in nats (an upper bound on −log p_θ(x0) in
        expectation), in the data's float dtype (float32 for half-precision data, the default
        float dtype for discrete data; promoted across components). Not run under ``no_grad``: differentiable with respect
        to the guess's output, so it can serve as a training loss.

    Example::

        P = bd.OrnsteinUhlenbeck(mean=0.0, volatility=1.0, reversion=0.5)
        x0 = torch.randn(1000, 2)                             # data ~ N(0, I)
        posterior_mean = lambda x_t, t: x_t * torch.exp(-0.5 * t)   # exact for N(0, I) data
        times = bd.time_schedule(torch.exp, 1e-3, 8.0, 101, finv=math.log)
        nelbo = bd.elbo(posterior_mean, P, x0, times)         # (1000,) nats
        nelbo.mean()      # about 3.1 nats: −log p(x0) averages log(2πe) = 2.84, and 100
                          # steps with the posterior mean add about 0.145 nats per dimension
    """
    _check_callable(guess, "guess", "(x_t, t) -> x0_hat")
    map_tree(_check_data, process, (x0,), ("x0",))
    states = leaves(unmasked(x0))
    if len({x.shape[0] for x in states}) > 1:
        raise ValueError(f"every component of x0 needs the same batch size B (its first "
                         f"dimension): the result is one value per sample, got batch sizes "
                         f"{[x.shape[0] for x in states]}")
    n, times_at = _time_grids(process, timesteps, x0)
    if n < 2:
        raise ValueError(f"timesteps must hold at least 2 times (one step of the chain), got "
                         f"{n}")
    t0, T = times_at(0), times_at(n - 1)
    # times are shared leaves or structures matching the processes (one grid per component)
    total = _sum(map_tree(lambda p, x, a, b: _prior_leaf(p, a, b, x, generator), process,
                          (x0, t0, T), ("x0", "t0", "T"), shared=(1, 2)))
    for i in range(n - 1, 0, -1):
        s, t = times_at(i - 1), times_at(i)
        x_t = map_tree(lambda p, x, a, u, b: _latent_leaf(p, a, u, b, x, generator), process,
                       (x0, t0, t, T), ("x0", "t0", "t", "T"), shared=(1, 2, 3))
        x0_hat = guess(unmasked(x_t), t)
        step = _step_leaf if i > 1 else _last_leaf
        terms = map_tree(lambda p, x, h, xt, a, u, v: step(p, a, u, v, x, h, xt, generator),
                         process, (x0, x0_hat, x_t, t0, s, t),
                         ("x0", "guess(x_t, t)", "x_t", "t0", "s", "t"), shared=(3, 4, 5))
        total = total + _sum(terms)
    return total


# ---------------------------------------------------------------- the terms, per leaf

def _check_data(process: Process, x0) -> None:
    x, _ = split(x0, process, "x0")
    process.check_state(x, "x0")
    if x.ndim <= process.event_ndim:
        raise ValueError(f"x0 must have a leading batch dimension for {type(process).__name__}, "
                         f"got shape {tuple(x.shape)}")


def _prior_leaf(process: Process, t0, T, x0, generator) -> Tensor:
    """KL(q(x_T | x_{t0} = x0) || start of the chain), summed per sample: (B,)."""
    x, mask = split(x0, process, "x0")
    dtype = time_dtype(x)
    tt0, TT = as_time(t0, x, process, dtype, "t0"), as_time(T, x, process, dtype, "T")
    return _per_sample(process.prior_kl(tt0, TT, x, generator), x, mask, process, "prior_kl")


def _latent_leaf(process: Process, t0, t, T, x0, generator):
    """x_t ~ q(x_t | x_{t0} = x0), held elements kept, wrapped like x0."""
    x, mask = split(x0, process, "x0")
    dtype = time_dtype(x)
    tt0, tt, TT = (as_time(u, x, process, dtype, name)
                   for u, name in ((t0, "t0"), (t, "t"), (T, "T")))
    out = _cast(process.sample_variational(tt0, tt, TT, x, generator), x, process,
                "sample_variational")
    return rewrap(out, x, mask, process)


def _leaf_times(process: Process, x_t: Tensor, x0_hat: Tensor, *times):
    """The times as tensors broadcasting against x_t, in the dtype a bridge would use."""
    dtype = time_dtype(x_t, x0_hat)
    return tuple(as_time(u, x_t, process, dtype, "t") for u in times)


def _prediction(process: Process, x0_hat, x_t: Tensor) -> Tensor:
    x0_hat = x0_hat.x if isinstance(x0_hat, Masked) else x0_hat   # it inherits x_t's mask
    if not isinstance(x0_hat, Tensor):
        raise TypeError(f"guess(x_t, t) must return a tensor or bd.Masked, got "
                        f"{type(x0_hat).__name__}")
    check_endpoints(process, x0_hat, x_t, "guess(x_t, t)")
    return x0_hat


def _step_leaf(process: Process, t0, s, t, x0, x0_hat, x_t, generator) -> Tensor:
    """KL(q(x_s | x_t, x_{t0} = x0) || p(x_s | x_0 = x0_hat, x_t)), summed per sample: (B,)."""
    x, mask = split(x0, process, "x0")
    xt = split(x_t, process, "x_t")[0]
    x0_hat = _prediction(process, x0_hat, xt)
    tt0, ss, tt = _leaf_times(process, xt, x0_hat, t0, s, t)
    kl = process.bridge_kl(tt0, ss, tt, x, x0_hat, xt, generator)
    return _per_sample(kl, x, mask, process, "bridge_kl")


def _last_leaf(process: Process, t0, s, t, x0, x0_hat, x_t, generator) -> Tensor:
    """−log p(x_{t0} = x0 | x_0 = x0_hat, x_{t1}), summed per sample: (B,)."""
    x, mask = split(x0, process, "x0")
    xt = split(x_t, process, "x_t")[0]
    x0_hat = _prediction(process, x0_hat, xt)
    ss, tt = _leaf_times(process, xt, x0_hat, s, t)
    log_p = process.bridge_log_prob(ss, tt, x0_hat, xt, x)
    return _per_sample(-log_p, x, mask, process, "bridge_log_prob")


def _per_sample(term, x: Tensor, mask, process: Process, hook: str) -> Tensor:
    """A hook's per-element term, checked, held elements zeroed, summed to (B,), in the data's
    float dtype (a float64 guess does not promote float32 data)."""
    state = x.shape[:x.ndim - process.event_ndim]
    if not isinstance(term, Tensor) or term.shape != state:
        got = tuple(term.shape) if isinstance(term, Tensor) else type(term).__name__
        raise TypeError(f"{type(process).__name__}.{hook} must return one value per element, "
                        f"shape {tuple(state)}, got {got}")
    term = term.to(time_dtype(x))
    if mask is not None:
        term = torch.where(state_mask(mask, x, process), term, 0)
    return term.flatten(1).sum(-1) if term.ndim > 1 else term


def _sum(tree) -> Tensor:
    parts = leaves(tree)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total
