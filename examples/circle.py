"""Diffusion of angles: wrapped Brownian motion learns a mixture of von Mises laws.

    python examples/circle.py [--quick] [--out DIR]

The data are angles in [-pi, pi) from a mixture of three von Mises laws. Wrapped Brownian
motion noises them towards the uniform law on the circle; an MLP sees (cos x_t, sin x_t)
and Fourier features of log t and predicts how to turn x_t into x0, trained with the squared minimal
angle (``bd.standard_loss``). Sampling steps backward with the exact wrapped bridge, which
sums over the windings of the path around the circle.
"""

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import bridgediff as bd
from _common import device, parse_args, save

PROCESS = bd.WrappedBrownian(rate=1.0)
T_MIN, T_MAX = 1e-3, 12.0  # at T_MAX the first Fourier mode has decayed by exp(-6)
WEIGHTS, MEANS, CONCENTRATIONS = [0.3, 0.5, 0.2], [-2.0, 0.3, 2.4], [8.0, 3.0, 30.0]


def mixture_density(angle):
    """The target density (numpy): sum_k w_k exp(kappa_k cos(x - mu_k)) / (2 pi I0(kappa_k))."""
    angle = np.asarray(angle)[..., None]
    kappa = np.array(CONCENTRATIONS)
    terms = np.exp(kappa * np.cos(angle - np.array(MEANS))) / (2 * math.pi * np.i0(kappa))
    return (np.array(WEIGHTS) * terms).sum(-1)


def von_mises_data(n, seed=0):
    """A fixed data set of n angles, drawn with numpy's von Mises sampler."""
    rng = np.random.default_rng(seed)
    k = rng.choice(len(WEIGHTS), size=n, p=WEIGHTS)
    return torch.tensor(rng.vonmises(np.array(MEANS)[k], np.array(CONCENTRATIONS)[k]),
                        dtype=torch.float32)


class AnglePredictor(nn.Module):
    """x0_hat = arg(exp(i x_t) (1 + MLP(cos x_t, sin x_t, Fourier features of log t))), (B,).

    The MLP's two outputs, as a complex number, turn x_t towards x0: near t = 0, where
    x0 is close to x_t, it only has to learn a small correction.
    """

    def __init__(self, width=256, n_features=32):
        super().__init__()
        self.time_features = bd.RandomFourierFeatures(n_features, 0.5)
        self.net = nn.Sequential(
            nn.Linear(2 + n_features, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, 2))

    def forward(self, x_t, t):
        log_t = t.log().expand(x_t.shape[0])  # t is (B,) in training, 0-d when sampling
        inputs = torch.stack([x_t.cos(), x_t.sin()], dim=-1)
        turn = self.net(torch.cat([inputs, self.time_features(log_t)], dim=-1))
        return torch.angle(torch.polar(torch.ones_like(x_t), x_t)
                           * torch.complex(1 + turn[:, 0], turn[:, 1]))


def main():
    args = parse_args(__doc__.splitlines()[0])
    dev = device()
    torch.manual_seed(0)  # the model's initial weights and Fourier frequencies
    generator = torch.Generator(dev).manual_seed(0)
    steps, n_samples, n_timesteps = (100, 2000, 20) if args.quick else (5000, 20000, 100)

    data = von_mises_data(20000).to(dev)
    model = AnglePredictor().to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    print(f"training for {steps} steps on {dev}")
    for step in range(1, steps + 1):
        x0 = data[torch.randint(len(data), (512,), generator=generator, device=dev)]
        t = T_MIN * (T_MAX / T_MIN) ** torch.rand(512, generator=generator, device=dev)
        x_t = bd.sample_forward(PROCESS, t, x0, generator=generator)
        loss = bd.standard_loss(PROCESS, t, model(x_t, t), x0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        lr_schedule.step()
        if step % (steps // 10) == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}")

    timesteps = bd.time_schedule(torch.exp, T_MIN, T_MAX, n_timesteps, finv=math.log).to(dev)
    x_T = bd.sample_equilibrium(PROCESS, (n_samples,), generator=generator, device=dev)
    with torch.no_grad():
        samples = bd.sample_backward(model, PROCESS, timesteps, x_T, generator=generator,
                                     progress=True).cpu().numpy()

    grid = np.linspace(-math.pi, math.pi, 400)
    bins = np.linspace(-math.pi, math.pi, 73)
    counts, _ = np.histogram(samples, bins=bins, density=True)
    fig = plt.figure(figsize=(11, 5))
    polar = fig.add_subplot(1, 2, 1, projection="polar")
    polar.bar(bins[:-1], counts, width=np.diff(bins), align="edge", alpha=0.6, label="samples")
    polar.plot(grid, mixture_density(grid), "k", label="target")
    polar.set_title("on the circle (radius: density)")
    polar.legend(loc="lower left", bbox_to_anchor=(-0.15, -0.12))
    line = fig.add_subplot(1, 2, 2)
    line.hist(samples, bins=bins, density=True, alpha=0.6, label="samples")
    line.plot(grid, mixture_density(grid), "k", label="target: von Mises mixture")
    line.set(xlabel="angle", ylabel="density", xlim=(-math.pi, math.pi),
             title="unrolled to [-pi, pi)")
    line.legend()
    fig.tight_layout()
    save(fig, args.out, "circle.png")


if __name__ == "__main__":
    main()
