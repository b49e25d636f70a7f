"""Diffusion of rotations: Brownian motion on SO(3) learns rotations clustered near three.

    python examples/rotations.py [--quick] [--out DIR]

The data are rotations (unit quaternions, roma's XYZW order) scattered by about 0.15 rad
around three centres. Brownian motion on SO(3) noises them towards the uniform (Haar) law;
an MLP sees the rotation matrix of x_t and Fourier features of log t and predicts the
turn from x_t to x0 as a unit quaternion, trained with ``bd.standard_loss``. Sampling steps
backward with the exact bridge of Brownian motion on SO(3). The figure shows where each
rotation sends the x, y and z axes: points on the unit sphere.
"""

import math

import matplotlib.pyplot as plt
import numpy as np
import roma
import torch
from torch import nn

import bridgediff as bd
from _common import device, parse_args, save

PROCESS = bd.RotationDiffusion(rate=0.25)  # rotation-vector variance 4 * rate * t = t per axis
T_MIN, T_MAX = 1e-3, 10.0  # at T_MAX the law is within exp(-10) of uniform
CENTRES = [[0.8, 0.0, 0.0], [0.0, -0.9, 1.0], [1.9, 1.1, 0.0]]  # rotation vectors


def sample_rotations(n, generator, dev):
    """n unit quaternions (n, 4): a random centre composed with a rotation of about 0.15 rad."""
    centres = roma.rotvec_to_unitquat(torch.tensor(CENTRES, device=dev))
    c = torch.randint(len(CENTRES), (n,), generator=generator, device=dev)
    scatter = roma.rotvec_to_unitquat(0.15 * torch.randn(n, 3, generator=generator, device=dev))
    return roma.quat_product(centres[c], scatter)


class RotationPredictor(nn.Module):
    """x0_hat = x_t * normalise(1 + MLP(rotation matrix of x_t, Fourier features of log t)).

    The MLP predicts the turn from x_t to x0 as a quaternion near the identity 1 = (0, 0, 0, 1):
    near t = 0 it only learns a small correction, and x_t and -x_t (the same rotation)
    give the same prediction. Shapes (B, 4) -> (B, 4).
    """

    def __init__(self, width=256, n_features=32):
        super().__init__()
        self.time_features = bd.RandomFourierFeatures(n_features, 0.5)
        self.net = nn.Sequential(
            nn.Linear(9 + n_features, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, 4))

    def forward(self, x_t, t):
        log_t = t.log().expand(x_t.shape[0])  # t is (B,) in training, 0-d when sampling
        matrix = roma.unitquat_to_rotmat(x_t).flatten(-2)  # the same for x_t and -x_t
        turn = self.net(torch.cat([matrix, self.time_features(log_t)], dim=-1))
        identity = roma.identity_quat(dtype=turn.dtype, device=turn.device)
        return roma.quat_product(x_t, nn.functional.normalize(identity + turn, dim=-1))


def plot_axes(ax, quats, title):
    """The images of the x, y, z axes (red, green, blue) under each rotation, as longitude
    and latitude on an equal-area map of the sphere."""
    matrices = roma.unitquat_to_rotmat(quats).cpu().numpy()
    for axis, colour in enumerate(["tab:red", "tab:green", "tab:blue"]):
        x, y, z = matrices[:, :, axis].T  # column `axis` of R is R e_axis
        ax.scatter(np.arctan2(y, x), np.arcsin(np.clip(z, -1, 1)), s=2, color=colour,
                   alpha=0.4, label="xyz"[axis] + " axis")
    ax.set_title(title)
    ax.set(xticklabels=[])
    ax.grid(True, lw=0.5)


def main():
    args = parse_args(__doc__.splitlines()[0])
    dev = device()
    torch.manual_seed(0)  # the model's initial weights and Fourier frequencies
    generator = torch.Generator(dev).manual_seed(0)
    steps, n_samples, n_timesteps = (100, 500, 20) if args.quick else (3000, 3000, 100)

    model = RotationPredictor().to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    print(f"training for {steps} steps on {dev}")
    for step in range(1, steps + 1):
        x0 = sample_rotations(512, generator, dev)
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
    x_T = bd.sample_equilibrium(PROCESS, (n_samples, 4), generator=generator, device=dev)
    with torch.no_grad():
        samples = bd.sample_backward(model, PROCESS, timesteps, x_T, generator=generator,
                                     progress=True)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 3.8),
                                      subplot_kw={"projection": "mollweide"})
    plot_axes(left, sample_rotations(n_samples, generator, dev), "data")
    plot_axes(right, samples, "samples")
    right.legend(markerscale=5, loc="lower right", bbox_to_anchor=(1.12, -0.05))
    fig.suptitle("where each rotation sends the x, y and z axes (points on the sphere)")
    save(fig, args.out, "rotations.png")


if __name__ == "__main__":
    main()
