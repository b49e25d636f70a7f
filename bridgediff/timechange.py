r"""Time changes: any process run on a new clock, and ready-made clocks of popular models.

A time change runs a process P on the clock τ: an increasing function with τ(0) = 0. The
time-changed process X_t = P_{τ(t)} is again a Markov process, and its laws are P's at the
changed times, exactly:

.. math::
    p(x_t \mid x_0) = p^P_{\tau(t)}(x_t \mid x_0), \qquad
    p(x_s \mid x_0, x_t) = p^P(x_{\tau(s)} \mid x_0, x_{\tau(t)}), \qquad
    p(x_t \mid x_s) = p^P(x_{\tau(t)} \mid x_{\tau(s)}).

So a noise schedule is a time change: diffusers' DDPM schedules are time changes of the
Ornstein-Uhlenbeck process (``ddpm_schedule``, ``AlphaBarSchedule``), MDLM's log-linear
masking one of the absorbing process (``LogLinearMasking``).
"""

import math

import torch
from torch import Tensor

from ._util import integer_at_least, on_host, positive, real
from .process import Process

__all__ = ["TimeChanged", "AlphaBarSchedule", "ddpm_schedule", "LogLinearMasking"]


class TimeChanged(Process):
    r"""The process ``process`` run on the clock ``tau``: :math:`X_t = P_{\tau(t)}`.

    * forward: P's forward law at τ(t); bridge: P's bridge at (τ(s), τ(t)); renoising
      (``forward_transition``) from s to t: P's from τ(s) to τ(t); eta-steps (when P has
      them): P's at (τ(s), τ(t)). All exact, for any process P, custom ones included;
    * equilibrium, state checks, ``event_ndim``, ``k``, the loss and guidance: P's;
    * likelihoods (``bd.elbo``): P's densities and KLs with every time mapped by τ;
    * the loss scaler follows the clock: ``scaler(t) = P.scaler(τ(t))``.

    Args:
        process: a ``bd.Process`` (a single one; wrap each component of a structure).
        tau: the clock, a callable on tensors, elementwise, increasing, with τ(0) = 0 and
            τ(t) > 0 for t > 0; it receives times (0-d or (B, 1, ..., 1)) on the data's
            device and dtype and returns a tensor of the same shape. On the host its values
            are checked (positive, finite, τ(s) < τ(t)): a time outside the clock's domain
            raises ValueError.

    Example (diffusers' DDPM with its linear betas; t = (n + 1)/1000 is diffusers' step n)::

        P = bd.TimeChanged(bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5), bd.ddpm_schedule("linear"))
        x_t = bd.sample_forward(P, 0.5, x0)   # sqrt(ᾱ_499) x0 + sqrt(1 − ᾱ_499) ε
    """

    def __init__(self, process, tau):
        if not isinstance(process, Process):
            raise TypeError(f"process must be a bd.Process, got {type(process).__name__}")
        if not callable(tau):
            raise TypeError(f"tau must be callable on tensors, got {type(tau).__name__}")
        zero = tau(torch.zeros((), dtype=torch.float64))
        if not isinstance(zero, Tensor):
            raise TypeError(f"tau must return a tensor of its argument's shape (it is called on "
                            f"tensors; use torch functions, not math), got "
                            f"{type(zero).__name__}")
        if zero.shape != () or float(zero) != 0:
            raise ValueError(f"tau must map a 0-d tensor 0 to a 0-d tensor 0 (a clock starts at "
                             f"0), got {zero!r}")
        check_base = getattr(tau, "_check_base", None)
        if check_base is not None:       # the ready-made clocks know the process they drive
            check_base(process)
        self.process = process
        self.tau = tau

    @property
    def event_ndim(self) -> int:
        return self.process.event_ndim

    @property
    def k(self):
        """The base process's number of data states (discrete processes only)."""
        try:
            return self.process.k
        except AttributeError:
            raise AttributeError(f"{type(self.process).__name__} has no attribute 'k'") from None

    def clock(self, t: Tensor, name: str = "t") -> Tensor:
        """τ(t), checked on the host (positive and finite, of t's shape)."""
        u = self.tau(t)
        if not isinstance(u, Tensor) or u.shape != t.shape:
            got = tuple(u.shape) if isinstance(u, Tensor) else type(u).__name__
            raise TypeError(f"tau must return a tensor of its input's shape {tuple(t.shape)}, "
                            f"got {got}")
        if on_host(u) and not bool(((u > 0) & torch.isfinite(u)).all()):
            raise ValueError(f"tau({name}) must be positive and finite; {name} lies outside the "
                             f"clock's domain (got tau({name}) = {u.flatten()[:8].tolist()})")
        return u.to(t.dtype)

    def _clocks(self, s: Tensor, t: Tensor):
        """(τ(s), τ(t)), checked to keep their order on the host."""
        us, ut = self.clock(s, "s"), self.clock(t, "t")
        if on_host(ut) and not bool((us < ut).all()):
            raise ValueError("tau(s) must be smaller than tau(t): tau must be strictly "
                             "increasing (in the data's dtype)")
        return us, ut

    def sample_forward(self, t, x0, generator=None):
        return self.process.sample_forward(self.clock(t), x0, generator)

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        us, ut = self._clocks(s, t)
        return self.process.endpoint_conditioned_sample(us, ut, x0, x_t, generator)

    def sample_equilibrium(self, shape, *, generator=None, device=None, dtype=None):
        return self.process.sample_equilibrium(shape, generator=generator, device=device,
                                               dtype=dtype)

    def check_state(self, x, name):
        self.process.check_state(x, name)

    def check_endpoints(self, x0, x_t):
        self.process.check_endpoints(x0, x_t)

    def check_prediction(self, x0_hat, x0):
        self.process.check_prediction(x0_hat, x0)

    def loss(self, x0_hat, x0):
        return self.process.loss(x0_hat, x0)

    def scaler(self, t):
        return self.process.scaler(self.clock(t))

    def forward_transition(self, s, t, x_s, generator=None):
        us, ut = self._clocks(s, t)
        return self.process.forward_transition(us, ut, x_s, generator)

    def eta_bridge(self, s, t, x0, x_t, eta, generator=None):
        us, ut = self._clocks(s, t)
        return self.process.eta_bridge(us, ut, x0, x_t, eta, generator)

    def guide(self, x0_uncond, x0_cond, w):
        return self.process.guide(x0_uncond, x0_cond, w)

    # ------------------------------------------------------------ likelihood (bd.elbo)
    # Every time is absolute, so each maps through the clock; P is homogeneous on its own.

    def forward_log_prob(self, t, x0, x_t):
        return self.process.forward_log_prob(self.clock(t), x0, x_t)

    def equilibrium_log_prob(self, x):
        return self.process.equilibrium_log_prob(x)

    def bridge_log_prob(self, s, t, x0, x_t, x_s):
        us, ut = self._clocks(s, t)
        return self.process.bridge_log_prob(us, ut, x0, x_t, x_s)

    def sample_variational(self, t0, t, T, x0, generator=None):
        return self.process.sample_variational(self.clock(t0, "t0"), self.clock(t),
                                               self.clock(T, "T"), x0, generator)

    def bridge_kl(self, t0, s, t, x0, x0_hat, x_t, generator=None):
        us, ut = self._clocks(s, t)
        return self.process.bridge_kl(self.clock(t0, "t0"), us, ut, x0, x0_hat, x_t, generator)

    def prior_kl(self, t0, T, x0, generator=None):
        return self.process.prior_kl(self.clock(t0, "t0"), self.clock(T, "T"), x0, generator)


# ---------------------------------------------------------------- DDPM's discrete schedules

def _check_parameter(process, name: str, built_for, law: str) -> None:
    """Refuse a process whose parameter ``name`` differs from the one a clock was built for."""
    value = getattr(process, name, None)
    if value is not None and float(value) != float(built_for):
        raise ValueError(f"this clock was built for {name}={float(built_for)!r} ({law}), but "
                         f"{type(process).__name__} has {name}={float(value)!r}; pass {name}= "
                         f"to the clock")


class AlphaBarSchedule:
    r"""The clock of a discrete variance-preserving schedule ᾱ_0 > ... > ᾱ_{N−1}, for
    ``bd.OrnsteinUhlenbeck(mean=0, volatility=1, reversion=θ)``.

    Time t = (n + 1)/N is step n: :math:`e^{-\theta \tau(t)} = \sqrt{\bar\alpha_n}`, so with
    θ = 1/2 (the default, and OU's) the time-changed forward law is DDPM's
    :math:`x_t = \sqrt{\bar\alpha_n}\, x_0 + \sqrt{1 - \bar\alpha_n}\, \varepsilon` exactly
    (for another θ the variance is (1 − ᾱ_n)/(2θ)). Between grid points (and between t = 0,
    where ᾱ = 1, and t = 1/N) :math:`-\log\bar\alpha` is interpolated linearly in t; beyond
    t = 1 the last segment is extended.

    .. math::
        \tau(t) = \frac{L(t)}{2\theta}, \qquad L((n + 1)/N) = -\log \bar\alpha_n, \quad L(0) = 0

    Args:
        alphas_cumprod: ᾱ (N,), strictly decreasing in (0, 1) (a tensor or sequence; kept
            in float64).
        reversion: θ of the OU process this clock drives.
    """

    def __init__(self, alphas_cumprod, reversion=0.5):
        try:
            abar = torch.as_tensor(alphas_cumprod).detach().to("cpu", torch.float64)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"alphas_cumprod must be a tensor or a sequence of numbers, got "
                            f"{type(alphas_cumprod).__name__}") from None
        if abar.ndim != 1 or abar.numel() < 1:
            raise ValueError(f"alphas_cumprod must be a non-empty 1-D sequence, got shape "
                             f"{tuple(abar.shape)}")
        if not bool(((abar > 0) & (abar < 1)).all() & (abar[1:] < abar[:-1]).all()):
            raise ValueError("alphas_cumprod must be strictly decreasing in (0, 1)")
        self.alphas_cumprod = abar
        self.reversion = positive("reversion", reversion)
        self.num_steps = abar.numel()
        self._log = torch.cat([abar.new_zeros(1), -abar.log()])   # L at k/N, k = 0..N
        self._cache = {}

    def time(self, step) -> Tensor:
        """The time t = (n + 1)/N of step(s) n, float64: an integer or integer tensor in
        [−1, N), where n = −1 is the clean data at t = 0 (DDIM's last target)."""
        n = torch.as_tensor(step)
        if n.is_floating_point() or n.is_complex() or n.dtype == torch.bool:
            raise TypeError(f"step must be an integer or an integer tensor, got {n.dtype}")
        if n.numel() and not bool(((n >= -1) & (n < self.num_steps)).all()):
            raise ValueError(f"step must lie in [-1, {self.num_steps}), got values in "
                             f"[{int(n.min())}, {int(n.max())}]")
        return (n.to(torch.float64) + 1) / self.num_steps

    def _check_base(self, process) -> None:
        _check_parameter(process, "reversion", self.reversion, "e^(-θτ) = sqrt(ᾱ)")

    def _table(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = self._log.to(like.device, like.dtype)
        return self._cache[key]

    def __call__(self, t: Tensor) -> Tensor:
        table, n = self._table(t), self.num_steps
        u = t * n
        k = u.floor().nan_to_num(0.0).clamp(0, n - 1)     # a NaN time gives a NaN τ
        lo = table[k.long()]
        hi = table[k.long() + 1]
        return (lo + (u - k) * (hi - lo)) / (2 * self.reversion)

    def __repr__(self) -> str:
        return f"AlphaBarSchedule(N={self.num_steps}, reversion={self.reversion!r})"


def ddpm_schedule(beta_schedule="linear", *, num_train_timesteps=1000, beta_start=1e-4,
                  beta_end=0.02, reversion=0.5) -> AlphaBarSchedule:
    r"""The clock of diffusers' ``DDPMScheduler(beta_schedule=...)``: an ``AlphaBarSchedule``.

    The betas follow diffusers' documented definitions (computed here in float64), and
    ᾱ_n = Π_{i ≤ n} (1 − β_i):

    * ``"linear"``: β evenly spaced from ``beta_start`` to ``beta_end`` (DDPM);
    * ``"scaled_linear"``: √β evenly spaced from √beta_start to √beta_end (latent diffusion);
    * ``"squaredcos_cap_v2"``: β_n = min(1 − ᾱ(n + 1)/ᾱ(n), 0.999) with the cosine
      :math:`\bar\alpha(i) = \cos^2\big(\frac{i/N + 0.008}{1.008} \frac{\pi}{2}\big)` (GLIDE,
      Nichol & Dhariwal 2021).

    Use it with ``bd.OrnsteinUhlenbeck(mean=0, volatility=1, reversion=reversion)``; time
    t = (n + 1)/N is diffusers' timestep n (``schedule.time(n)``).
    """
    n = integer_at_least("num_train_timesteps", num_train_timesteps, 1)
    beta_start, beta_end = float(real("beta_start", beta_start)), float(real("beta_end", beta_end))
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float64) ** 2
    elif beta_schedule == "squaredcos_cap_v2":
        def alpha_bar(i):
            return math.cos((i / n + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = torch.tensor([min(1 - alpha_bar(i + 1) / alpha_bar(i), 0.999) for i in range(n)],
                             dtype=torch.float64)
    else:
        raise ValueError(f"beta_schedule must be 'linear', 'scaled_linear' or "
                         f"'squaredcos_cap_v2', got {beta_schedule!r}")
    if not bool(((betas > 0) & (betas < 1)).all()):
        raise ValueError(f"the betas must lie in (0, 1); check beta_start={beta_start!r} and "
                         f"beta_end={beta_end!r}")
    return AlphaBarSchedule(torch.cumprod(1 - betas, 0), reversion)


# ---------------------------------------------------------------- MDLM's masking schedule

class LogLinearMasking:
    r"""MDLM's log-linear clock for ``bd.AbsorbingDiscrete(rate=r, k)``: at time t ∈ (0, 1]
    a token is masked with probability (1 − eps)·t.

    .. math::
        1 - e^{-r\tau(t)} = (1 - \epsilon)\, t \quad\Longleftrightarrow\quad
        \tau(t) = -\operatorname{log1p}(-(1 - \epsilon)\, t) / r

    (Sahoo et al. 2024; eps keeps τ(1) finite). The clock is defined for
    t < 1/(1 − eps); beyond it τ is NaN, which the time-changed process refuses on the host.
    """

    def __init__(self, rate=1.0, eps=1e-3):
        self.rate = positive("rate", rate)
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps < 1:
            raise ValueError(f"eps must be a float in (0, 1), got {eps!r}")
        self.eps = float(eps)

    def __call__(self, t: Tensor) -> Tensor:
        return -torch.log1p(-(1 - self.eps) * t) / self.rate

    def _check_base(self, process) -> None:
        _check_parameter(process, "rate", self.rate, "masked with probability (1 - eps) t")

    def __repr__(self) -> str:
        return f"LogLinearMasking(rate={self.rate!r}, eps={self.eps!r})"
