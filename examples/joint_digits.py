"""Joint diffusion of images and labels; class-conditional digits by masking the label.

    python examples/joint_digits.py [--quick] [--out DIR]

Each data point is a tuple (pixels, label): scikit-learn's 8x8 digits, scaled to [-1, 1]
and noised by Ornstein-Uhlenbeck, and their class in 0..9, noised by UniformDiscrete. One
MLP predicts both: the pixels and the logits of the label. For half of each training batch
the label is held clean (mask False) and the model is told so; then generating with the
label held at a requested class yields digits of that class. Self-conditioning feeds the
model its previous estimate, for the label as probabilities over the ten classes.
"""

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.nn.functional import one_hot

import bridgediff as bd
from _common import device, parse_args, save

PROCESS = (bd.OrnsteinUhlenbeck(mean=0.0, volatility=1.0, reversion=0.5),
           bd.UniformDiscrete(rate=0.5, k=10))
T_MIN, T_MAX = 1e-3, 12.0  # at T_MAX both components are within exp(-6) of equilibrium


def digits(dev):
    """The 1797 digits: pixels (N, 64) in [-1, 1] and labels (N,)."""
    data = load_digits()
    pixels = torch.tensor(data.data, dtype=torch.float32) / 8 - 1
    return pixels.to(dev), torch.tensor(data.target, dtype=torch.int64, device=dev)


class Denoiser(nn.Module):
    """(pixels, label logits) = MLP(x_t, x0_prev, whether the label is held, features of log t)."""

    def __init__(self, width=512, n_features=32):
        super().__init__()
        self.time_features = bd.RandomFourierFeatures(n_features, 0.5)
        self.net = nn.Sequential(
            nn.Linear(2 * (64 + 10) + 1 + n_features, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, 64 + 10))

    def forward(self, x_t, x0_prev, t, label_held):
        (pixels, labels), (prev_pixels, prev_label_probs) = x_t, x0_prev
        batch = pixels.shape[0]
        held = torch.as_tensor(label_held, dtype=pixels.dtype, device=pixels.device)
        out = self.net(torch.cat([
            pixels, one_hot(labels, 10).to(pixels.dtype), prev_pixels, prev_label_probs,
            held.expand(batch)[:, None], self.time_features(t.log().expand(batch))], dim=-1))
        return out[:, :64], out[:, 64:]


def training_step(model, optimizer, data, batch_size, generator):
    """One step of Adam on the joint loss, the label held clean for a random half."""
    pixels, labels = data
    dev = pixels.device
    index = torch.randint(len(pixels), (batch_size,), generator=generator, device=dev)
    t = T_MIN * (T_MAX / T_MIN) ** torch.rand(batch_size, generator=generator, device=dev)
    held = torch.rand(batch_size, generator=generator, device=dev) < 0.5
    x0 = (pixels[index], bd.masked(labels[index], ~held))  # held labels stay clean
    x_t = bd.sample_forward(PROCESS, t, x0, generator=generator)
    x_t = bd.unmasked(x_t)  # the model sees plain tensors, and `held`

    def net(x, x0_prev, t):
        return model(x, x0_prev, t, held)

    x0_prev = bd.self_conditioning_input(net, x_t, t, generator=generator, process=PROCESS)
    loss = bd.standard_loss(PROCESS, t, net(x_t, x0_prev, t), x0)  # labels: masked ones only
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def generate(model, labels, n_steps, generator):
    """One digit per entry of ``labels``, with the label held at that class."""
    dev = labels.device
    timesteps = bd.time_schedule(torch.exp, T_MIN, T_MAX, n_steps, finv=math.log).to(dev)
    x_T = (bd.sample_equilibrium(PROCESS[0], (len(labels), 64), generator=generator, device=dev),
           bd.masked(labels, torch.zeros_like(labels, dtype=torch.bool)))
    guess = bd.SelfConditioned(lambda x, x0_prev, t: model(x, x0_prev, t, True), PROCESS)
    with torch.no_grad():
        pixels, _ = bd.sample_backward(guess, PROCESS, timesteps, x_T, generator=generator,
                                       progress=True)
    return pixels


def main():
    args = parse_args(__doc__.splitlines()[0])
    dev = device()
    torch.manual_seed(0)  # the model's initial weights and Fourier frequencies
    generator = torch.Generator(dev).manual_seed(0)
    steps, n_timesteps = (100, 20) if args.quick else (6000, 100)

    data = digits(dev)
    model = Denoiser().to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    print(f"training for {steps} steps on {dev}")
    for step in range(1, steps + 1):
        loss = training_step(model, optimizer, data, 256, generator)
        lr_schedule.step()
        if step % (steps // 10) == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}")

    per_class = 10
    labels = torch.arange(10, device=dev).repeat_interleave(per_class)
    images = generate(model, labels, n_timesteps, generator).reshape(10, per_class, 8, 8).cpu()
    fig, axes = plt.subplots(10, per_class, figsize=(per_class * 0.8, 10 * 0.8 + 0.4))
    for (row, col), ax in np.ndenumerate(axes):
        ax.imshow(images[row, col], cmap="gray_r", vmin=-1, vmax=1)
        ax.set(xticks=[], yticks=[])
        if col == 0:
            ax.set_ylabel(str(row), rotation=0, labelpad=10, fontsize=12)
    fig.suptitle("generated digits, one row per requested class")
    fig.tight_layout()
    save(fig, args.out, "joint_digits.png")


if __name__ == "__main__":
    main()
