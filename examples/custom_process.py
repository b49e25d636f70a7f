"""A new process in thirty lines: geometric Brownian motion for positive data.

    python examples/custom_process.py [--quick] [--out DIR]

bridgediff diffuses any space for which you can draw the forward law and the bridge:
subclass ``bd.Process`` and write those two methods on plain tensors. Batched times,
masks, tuples and the backward sampler then come for free.

Here each data point is a pair (size > 0, feature). The size diffuses by geometric
Brownian motion, exact through logarithms; the feature by ``bd.OrnsteinUhlenbeck``. The
data law is a known two-cluster mixture, so the guess can draw x0 from the exact posterior
p(x0 | x_t): then every backward step is an exact reverse transition and the samples follow
the data law whatever the number of steps. A trained network would take the guess's place.
"""

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

import bridgediff as bd
from _common import device, parse_args, save


class GeometricBrownian(bd.Process):
    r"""dX = X (r/2 dt + √r dW) on positive tensors: log X is Brownian motion of rate r.

    * forward: log x_t ~ N(log x0, r t);
    * bridge:  log x_s ~ N(log x0 + (s/t)(log x_t − log x0), r s (t − s) / t);
    * no equilibrium: start the backward chain from ``sample_forward(P, T, reference)``.
    """

    def __init__(self, rate=1.0):
        self.rate = rate

    def check_state(self, x, name):  # optional: bad input fails early with a clear message
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {x.dtype}")
        if x.device.type == "cpu" and not bool((x > 0).all()):
            raise ValueError(f"{name} must be positive for GeometricBrownian")

    def sample_forward(self, t, x0, generator=None):
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        return x0 * torch.exp((self.rate * t).sqrt() * noise)

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        log_x0, log_xt = x0.log(), x_t.log()
        noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype, device=x_t.device)
        sd = (self.rate * s * (t - s) / t).sqrt()
        return torch.exp(log_x0 + (s / t) * (log_xt - log_x0) + sd * noise)


# The data law: a cluster c in {0, 1} with equal odds, log size ~ N(M[c], TAU²) and
# feature ~ N(MU[c], SIGMA²) independently given c.
M, TAU = (-1.0, 1.0), 0.35
MU, SIGMA = (-1.5, 1.5), 0.6
RATE = 1.0  # of the geometric Brownian motion
size_process, feature_process = GeometricBrownian(RATE), bd.OrnsteinUhlenbeck(0.0, 1.0, 0.5)


def sample_data(n, generator, dev):
    c = torch.randint(0, 2, (n,), generator=generator, device=dev)
    z = torch.randn(2, n, generator=generator, device=dev)
    m, mu = torch.tensor(M, device=dev)[c], torch.tensor(MU, device=dev)[c]
    return torch.exp(m + TAU * z[0]), mu + SIGMA * z[1]


def exact_guess(feature_held: bool, generator):
    """A guess (x_t, t) -> x0 that draws from the exact posterior p(x0 | x_t).

    A held feature (mask False) is observed exactly; a diffused one through the OU law
    feature_t ~ N(a MU[c], a² SIGMA² + v) with a = exp(-t/2), v = 1 - exp(-t).
    """
    def guess(x_t, t):
        size_t, feature_t = x_t
        m, mu = torch.tensor(M, device=t.device), torch.tensor(MU, device=t.device)
        y, f = size_t.log().unsqueeze(-1), feature_t.unsqueeze(-1)  # (B, 1) against clusters
        var_y = TAU ** 2 + RATE * t
        a, v = torch.exp(-t / 2), -torch.expm1(-t)
        var_f = a ** 2 * SIGMA ** 2 + v  # of the diffused feature given c
        f_mean, f_var = (mu, SIGMA ** 2) if feature_held else (a * mu, var_f)
        # both clusters share the variances, so the Gaussian normalisers cancel
        logits = -(y - m) ** 2 / (2 * var_y) - (f - f_mean) ** 2 / (2 * f_var)
        c = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
        m, mu, y, f = m[c], mu[c], y.squeeze(-1), f.squeeze(-1)
        z = torch.randn(2, len(c), generator=generator, device=t.device)
        gain_y, gain_f = TAU ** 2 / var_y, a * SIGMA ** 2 / var_f
        log_size0 = m + gain_y * (y - m) + (gain_y * RATE * t).sqrt() * z[0]
        feature0 = mu + gain_f * (f - a * mu) + (SIGMA ** 2 * v / var_f).sqrt() * z[1]
        return torch.exp(log_size0), feature_t if feature_held else feature0
    return guess


def generate(n, feature, timesteps, generator, tracker=None):
    """Backward sampling from time T; ``feature`` None diffuses it, a float holds it fixed."""
    dev = timesteps.device
    start_size = bd.sample_forward(size_process, timesteps[-1], torch.ones(n, device=dev),
                                   generator=generator)  # the prior N(log 1, rate T) in log size
    if feature is None:
        x_T = (start_size, bd.sample_equilibrium(feature_process, (n,), generator=generator,
                                                 device=dev))
    else:  # condition: diffuse the size, hold the feature at the given value (mask False)
        held = torch.full((n,), feature, device=dev)
        x_T = (bd.masked(start_size, torch.ones(n, dtype=torch.bool, device=dev)),
               bd.masked(held, torch.zeros(n, dtype=torch.bool, device=dev)))
    x = bd.sample_backward(exact_guess(feature is not None, generator),
                           (size_process, feature_process), timesteps, x_T,
                           tracker=tracker, generator=generator, progress=True)
    return bd.unmasked(x)


def conditional_log_size_density(log_size, feature):
    """The exact density of log size given the feature under the data law (numpy)."""
    w = np.exp(-(feature - np.array(MU)) ** 2 / (2 * SIGMA ** 2))
    w /= w.sum()
    z = (log_size[:, None] - np.array(M)) / TAU
    return (w * np.exp(-z ** 2 / 2)).sum(-1) / (TAU * math.sqrt(2 * math.pi))


def main():
    args = parse_args(__doc__.splitlines()[0])
    dev = device()
    generator = torch.Generator(dev).manual_seed(0)
    n, steps = (2000, 20) if args.quick else (20000, 100)
    timesteps = bd.time_schedule(torch.exp, 1e-3, 20.0, steps, finv=math.log).to(dev)

    print(f"sampling {n} pairs (size, feature) with {steps - 1} backward steps on {dev}")
    data_size, data_feature = sample_data(n, generator, dev)
    tracker = bd.Tracker()
    size, feature = generate(n, None, timesteps, generator, tracker)
    held_feature = 0.25
    print(f"sampling {n} sizes conditioned on feature = {held_feature} (a mask)")
    cond_size, _ = generate(n, held_feature, timesteps, generator)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.scatter(data_size.cpu(), data_feature.cpu(), s=2, alpha=0.3, label="data")
    ax.scatter(size.cpu(), feature.cpu(), s=2, alpha=0.3, label="samples")
    ax.set(xscale="log", xlabel="size", ylabel="feature", title="data vs samples")
    ax.legend(markerscale=5)

    ax = axes[1]
    bins = np.linspace(-3, 3, 61)
    ax.hist(cond_size.log().cpu().numpy(), bins=bins, density=True, alpha=0.6, label="samples")
    ax.plot(bins, conditional_log_size_density(bins, held_feature), "k", label="exact law")
    ax.set(xlabel="log size", ylabel="density",
           title=f"log size given feature = {held_feature} (masked)")
    ax.legend()

    ax = axes[2]
    times = torch.stack(tracker.time).cpu()
    sizes = torch.stack([x[0][:6] for x in tracker.x]).cpu()
    ax.plot(times, sizes)
    ax.set(xscale="log", yscale="log", xlabel="time t", ylabel="size",
           title="six backward trajectories of the size")
    ax.invert_xaxis()
    fig.tight_layout()
    save(fig, args.out, "custom_process.png")


if __name__ == "__main__":
    main()
