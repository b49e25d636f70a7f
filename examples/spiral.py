"""Diffusion of a 2-D spiral: train an x0-predictor, then sample backward with bridges.

    python examples/spiral.py [--quick] [--out DIR]

The data are points on a spiral. An Ornstein-Uhlenbeck process noises them towards a
standard normal; an MLP learns to predict x0 from (x_t, t), seeing t through random
Fourier features and its own previous estimate (self-conditioning). To generate, start
from the equilibrium and step backward: at each time predict x0, then draw x_s from the
exact OU bridge p(x_s | x0, x_t).
"""

import math

import matplotlib.pyplot as plt
import torch
from torch import nn

import bridgediff as bd
from _common import device, parse_args, save

PROCESS = bd.OrnsteinUhlenbeck(mean=0.0, volatility=1.0, reversion=0.5)  # equilibrium N(0, 1)
T_MIN, T_MAX = 1e-3, 12.0  # at T_MAX the data's trace has decayed by exp(-6)


def sample_spiral(n, generator, dev):
    """n points (n, 2) on a noisy two-turn spiral, scaled to about unit variance."""
    u = torch.rand(n, generator=generator, device=dev)
    angle = math.pi * (1 + 3 * u.sqrt())
    points = torch.stack([angle * angle.cos(), angle * angle.sin()], dim=-1) / 7
    return points + 0.03 * torch.randn(n, 2, generator=generator, device=dev)


class Denoiser(nn.Module):
    """x0_hat = exp(-t/2) x_t + MLP(x_t, x0_prev, Fourier features of log t) for points (B, 2).

    exp(-t/2) x_t is E[x0 | x_t] for unit-variance Gaussian data: the MLP learns the rest.
    """

    def __init__(self, width=256, n_features=32):
        super().__init__()
        self.time_features = bd.RandomFourierFeatures(n_features, 0.5)
        self.net = nn.Sequential(
            nn.Linear(2 + 2 + n_features, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, 2))

    def forward(self, x_t, x0_prev, t):
        log_t = t.log().expand(x_t.shape[0])  # t is (B,) in training, 0-d when sampling
        correction = self.net(torch.cat([x_t, x0_prev, self.time_features(log_t)], dim=-1))
        return torch.exp(-t / 2).reshape(-1, 1) * x_t + correction


def sample_times(n, generator, dev):
    """Training times, log-uniform on [T_MIN, T_MAX] like the sampling schedule."""
    u = torch.rand(n, generator=generator, device=dev)
    return T_MIN * (T_MAX / T_MIN) ** u


def training_step(model, optimizer, batch_size, generator):
    """One step of Adam on the standard loss with self-conditioning; returns the loss."""
    dev = generator.device
    x0 = sample_spiral(batch_size, generator, dev)
    t = sample_times(batch_size, generator, dev)
    x_t = bd.sample_forward(PROCESS, t, x0, generator=generator)
    x0_prev = bd.self_conditioning_input(model, x_t, t, generator=generator)
    loss = bd.standard_loss(PROCESS, t, model(x_t, x0_prev, t), x0)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def train(model, steps, batch_size, generator, verbose=True):
    """``steps`` training steps with a cosine decay of the learning rate."""
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for step in range(1, steps + 1):
        loss = training_step(model, optimizer, batch_size, generator)
        lr_schedule.step()
        if verbose and step % (steps // 10) == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}")


def generate(model, n, n_steps, generator, tracker=None):
    """n points from the backward chain over a log-spaced grid of n_steps times."""
    dev = generator.device
    timesteps = bd.time_schedule(torch.exp, T_MIN, T_MAX, n_steps, finv=math.log).to(dev)
    x_T = bd.sample_equilibrium(PROCESS, (n, 2), generator=generator, device=dev)
    with torch.no_grad():
        return bd.sample_backward(bd.SelfConditioned(model), PROCESS, timesteps, x_T,
                                  tracker=tracker, generator=generator, progress=True)


def plot(data, samples, tracker, out, name):
    """Data vs samples, and a few backward trajectories from noise to the spiral."""
    data, samples = data.cpu(), samples.cpu()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 5.2))
    left.scatter(data[:, 0], data[:, 1], s=3, alpha=0.4, label="data")
    left.scatter(samples[:, 0], samples[:, 1], s=3, alpha=0.4, label="samples")
    left.set_title("data vs samples")
    left.legend(markerscale=5, loc="upper right")
    paths = torch.cat([torch.stack(tracker.x)[:, :6].cpu(), samples[None, :6]])
    right.scatter(data[:, 0], data[:, 1], s=2, color="0.85")
    right.plot(paths[..., 0], paths[..., 1], lw=0.7)
    right.scatter(paths[-1, :, 0], paths[-1, :, 1], color="k", s=12, zorder=3)
    right.set_title("six backward trajectories (dots: their ends)")
    for ax in (left, right):
        ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal")
    fig.tight_layout()
    save(fig, out, name)


def main():
    args = parse_args(__doc__.splitlines()[0])
    dev = device()
    torch.manual_seed(0)  # the model's initial weights and Fourier frequencies
    generator = torch.Generator(dev).manual_seed(0)
    steps, n_samples, n_timesteps = (100, 500, 20) if args.quick else (4000, 4000, 100)

    model = Denoiser().to(dev)
    print(f"training for {steps} steps on {dev}")
    train(model, steps, 512, generator)

    tracker = bd.Tracker()
    samples = generate(model, n_samples, n_timesteps, generator, tracker)
    plot(sample_spiral(n_samples, generator, dev), samples, tracker, args.out, "spiral.png")


if __name__ == "__main__":
    main()
