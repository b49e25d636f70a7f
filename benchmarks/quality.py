"""Quality per model call on a 1-D Gaussian mixture whose posterior is known exactly.

Data x0 ~ Σ_k w_k N(m_k, s_k²) noised by bd's Ornstein–Uhlenbeck process
dX = θ(μ − X) dt + σ dW stays a Gaussian mixture at every time t:

    p_t = Σ_k w_k N(μ + a_t (m_k − μ), a_t² s_k² + v_t),   a_t = e^{−θt},
    v_t = σ² (1 − e^{−2θt}) / (2θ),

so its score and the posterior p(x0 | x_t) are closed forms. The samplers start from
exact draws of p_T and step down the same geometric grid to t_min, one model call per
step: the bridge sampler with guess = a posterior sample (exact for any number of steps),
with guess = the posterior mean (what an L2-trained model predicts), and Euler–Maruyama on
the reverse SDE dX = [θ(μ − X) − σ² ∇log p_t(X)] dt + σ dW̄ with the exact score. Three
variants of the posterior-mean sampler follow: the deterministic eta = 0 step (DDIM), and
1 or 4 correctors per step (renoise to the time just left and step back, 2 or 5 model
calls per step: ``CALLS_PER_STEP``).
Quality is the Wasserstein-1 distance of the samples to p_{t_min}, computed against its
exact CDF. W1 of a finite sample is itself noisy (the share of each mode fluctuates), so
exact i.i.d. samples of the same size give the level reachable at this n.

Beside W1, the likelihood of the posterior-mean chain: ``bd.elbo`` on n draws of the data,
the mean negative ELBO in nats with its standard error, against the exact −log p(x0) of the
same draws (the bound's limit, up to p_{t_min} versus p_0).
"""

import math

import numpy as np
import torch
from scipy.stats import norm

import bridgediff as bd

WEIGHTS = (0.3, 0.5, 0.2)
MEANS = (-2.0, 0.5, 3.0)
STDS = (0.3, 0.6, 0.2)
T_MIN, T_MAX = 1e-3, 8.0
FULL_STEPS = (5, 10, 20, 50, 100, 200, 500, 1000)
QUICK_STEPS = (5, 20)
IID_DRAWS = 20                   # exact i.i.d. samples that show W1's own spread at this n
SAMPLERS = ("bridge, guess = posterior sample", "bridge, guess = posterior mean",
            "Euler-Maruyama, exact score", "posterior mean, eta = 0",
            "posterior mean, 1 corrector", "posterior mean, 4 correctors")
CALLS_PER_STEP = {SAMPLERS[4]: 2, SAMPLERS[5]: 5}   # model calls per step (others: 1)
ELBO = "negative ELBO (nats), guess = posterior mean"


class NoisedMixture:
    """The data mixture pushed forward by an OU process: p_t for every t > 0 (float64)."""

    def __init__(self, process: bd.OrnsteinUhlenbeck, device):
        self.mu, self.sigma, self.theta = (float(process.mean), float(process.volatility),
                                           float(process.reversion))
        as_tensor = lambda v: torch.tensor(v, dtype=torch.float64, device=device)
        self.weights, self.means, self.vars = (as_tensor(WEIGHTS), as_tensor(MEANS),
                                               as_tensor(STDS) ** 2)

    def _decay_and_variance(self, t):
        t = torch.as_tensor(t, dtype=torch.float64, device=self.means.device)
        return (torch.exp(-self.theta * t),
                -self.sigma ** 2 * torch.expm1(-2 * self.theta * t) / (2 * self.theta))

    def components(self, t):
        """Means and variances (K,) of p_t's components."""
        a, v = self._decay_and_variance(t)
        return self.mu + a * (self.means - self.mu), a ** 2 * self.vars + v

    def _log_joint(self, x, t):
        """log w_k + log N(x; M_k, S_k), shape (N, K)."""
        m, var = self.components(t)
        return (self.weights.log() - 0.5 * (x[:, None] - m) ** 2 / var
                - 0.5 * torch.log(2 * math.pi * var))

    def sample(self, n: int, t, generator) -> torch.Tensor:
        m, var = self.components(t)
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return m[k] + var[k].sqrt() * torch.randn(n, generator=generator, dtype=m.dtype,
                                                  device=m.device)

    def cdf(self, x: np.ndarray, t: float) -> np.ndarray:
        m, var = (c.cpu().numpy() for c in self.components(t))
        return norm.cdf((x[:, None] - m) / np.sqrt(var)) @ self.weights.cpu().numpy()

    def score(self, x, t):
        """∇ log p_t(x) = Σ_k r_k(x) (M_k − x) / S_k."""
        m, var = self.components(t)
        return (torch.softmax(self._log_joint(x, t), -1) * (m - x[:, None]) / var).sum(-1)

    def posterior(self, x_t, t):
        """p(x0 | x_t) = Σ_k r_k N(c_k, d_k): responsibilities (N, K), means (N, K), vars (K,)."""
        a, v = self._decay_and_variance(t)
        var = 1 / (1 / self.vars + a ** 2 / v)
        mean = var * (self.means / self.vars + a * (x_t[:, None] - self.mu * (1 - a)) / v)
        return torch.softmax(self._log_joint(x_t, t), -1), mean, var

    def log_density(self, x, t):
        """log p_t(x), shape (N,)."""
        return torch.logsumexp(self._log_joint(x, t), -1)

    def posterior_mean(self, x_t, t):
        r, mean, _ = self.posterior(x_t, t)
        return (r * mean).sum(-1)

    def posterior_sample(self, x_t, t, generator):
        r, mean, var = self.posterior(x_t, t)
        u = torch.rand(x_t.shape + (1,), generator=generator, dtype=x_t.dtype, device=x_t.device)
        k = (u > r.cumsum(-1)[:, :-1]).sum(-1)     # inverse CDF of the responsibilities
        return mean.gather(1, k[:, None])[:, 0] + var[k].sqrt() * torch.randn(
            x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)


def euler_maruyama(mixture: NoisedMixture, times, x, generator):
    """Reverse-SDE steps t_i → t_{i−1}: x += h [θ(x − μ) + σ² score] + σ √h z."""
    for i in range(len(times) - 1, 0, -1):
        t, h = times[i], times[i] - times[i - 1]
        drift = mixture.theta * (x - mixture.mu) + mixture.sigma ** 2 * mixture.score(x, t)
        x = x + h * drift + mixture.sigma * h.sqrt() * torch.randn(
            x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x


def w1_to_cdf(samples: np.ndarray, cdf, lo: float, hi: float, grid: int = 20001) -> float:
    """∫ |F_n(x) − F(x)| dx: F_n is exact on a grid holding every sample, F at midpoints."""
    samples = np.sort(samples)
    points = np.sort(np.concatenate([samples, np.linspace(lo, hi, grid)]))
    empirical = np.searchsorted(samples, points[:-1], side="right") / len(samples)
    return float(np.sum(np.abs(empirical - cdf((points[:-1] + points[1:]) / 2))
                        * np.diff(points)))


def run_quality(n: int, steps_list, device, seed: int = 0) -> dict:
    """W1 to p_{t_min} of each sampler for each number of steps (= model calls).

    Runs on one CPU thread: nothing here is timed, and small tensors on a shared machine
    are several times slower with two threads competing for busy cores.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_quality(n, steps_list, device, seed)
    finally:
        torch.set_num_threads(threads)


def _run_quality(n: int, steps_list, device, seed: int) -> dict:
    process = bd.OrnsteinUhlenbeck(mean=0.0, volatility=1.0, reversion=0.5)
    mixture = NoisedMixture(process, device)
    g = torch.Generator(device).manual_seed(seed)
    lo, hi = min(MEANS) - 12 * max(STDS) - 1, max(MEANS) + 12 * max(STDS) + 1
    w1 = lambda x: w1_to_cdf(x.cpu().numpy(), lambda y: mixture.cdf(y, T_MIN), lo, hi)
    samplers = {
        SAMPLERS[0]: lambda times, x: bd.sample_backward(
            lambda x_t, t: mixture.posterior_sample(x_t, t, g), process, times, x, generator=g),
        SAMPLERS[1]: lambda times, x: bd.sample_backward(
            mixture.posterior_mean, process, times, x, generator=g),
        SAMPLERS[2]: lambda times, x: euler_maruyama(mixture, times, x, g),
        SAMPLERS[3]: lambda times, x: bd.sample_backward(
            mixture.posterior_mean, process, times, x, generator=g, eta=0.0),
        SAMPLERS[4]: lambda times, x: bd.sample_backward(
            mixture.posterior_mean, process, times, x, generator=g, correctors=1),
        SAMPLERS[5]: lambda times, x: bd.sample_backward(
            mixture.posterior_mean, process, times, x, generator=g, correctors=4),
    }
    results = {"n": n, "t_min": T_MIN, "t_max": T_MAX, "steps": list(steps_list),
               "exact iid sample": [w1(mixture.sample(n, T_MIN, g)) for _ in range(IID_DRAWS)]}
    for name, sample in samplers.items():
        results[name] = []
        for steps in steps_list:
            times = bd.time_schedule(torch.exp, T_MIN, T_MAX, steps + 1, finv=math.log)
            times = times.to(device, torch.float64)
            results[name].append(w1(sample(times, mixture.sample(n, T_MAX, g))))
    results.update(_elbo_per_steps(process, mixture, n, steps_list, device, g))
    return results


def _elbo_per_steps(process, mixture: NoisedMixture, n: int, steps_list, device, g) -> dict:
    """Mean −ELBO of the posterior-mean chain on n data draws, per number of steps, with its
    standard error, and the exact −log p_0 of the same draws."""
    x0 = mixture.sample(n, 0.0, g)
    means, errors = [], []
    for steps in steps_list:
        times = bd.time_schedule(torch.exp, T_MIN, T_MAX, steps + 1, finv=math.log)
        nelbo = bd.elbo(mixture.posterior_mean, process, x0, times.to(device, torch.float64),
                        generator=g)
        means.append(float(nelbo.mean()))
        errors.append(float(nelbo.std() / math.sqrt(n)))
    return {ELBO: means, ELBO + " standard error": errors,
            "exact -log p(x0)": float(-mixture.log_density(x0, 0.0).mean())}


def plot_quality(results: dict, path) -> None:
    """W1 against the number of model calls, log–log, with the spread of exact samples' W1."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, marker in zip(SAMPLERS, "os^vDx"):
        calls = [CALLS_PER_STEP.get(name, 1) * steps for steps in results["steps"]]
        ax.loglog(calls, results[name], marker=marker, label=name)
    low, high = np.quantile(results["exact iid sample"], [0.05, 0.95])
    ax.axhspan(low, high, color="gray", alpha=0.25,
               label=f"exact i.i.d. samples (n = {results['n']:,}), 5-95%")
    ax.set_xlabel("model calls (steps × calls per step)")
    ax.set_ylabel(r"$W_1$ to the target $p_{t_{min}}$")
    ax.set_title("1-D Gaussian mixture, OU(θ=0.5, σ=1), exact posterior / score")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
