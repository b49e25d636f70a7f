"""Class-conditional digits with classifier-free guidance.

    python examples/guided_digits.py [--quick] [--out DIR] [--guidance W]

scikit-learn's 8x8 digits, scaled to [-1, 1], are noised by Ornstein-Uhlenbeck. One MLP
predicts x0 from (x_t, t, class), where the class is replaced by an eleventh "no class"
token for a random 20% of each training batch: the same network is then a conditional and
an unconditional guess. ``bd.Guided`` combines them, x0 = u + w (c - u); w = 1 is the plain
conditional model and w > 1 pushes samples towards what distinguishes the class. A
logistic-regression classifier trained on the real digits scores how often a generated
digit is read as the class it was asked for.
"""

import argparse
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.nn.functional import one_hot

import bridgediff as bd
from _common import device, save

PROCESS = bd.OrnsteinUhlenbeck(mean=0.0, volatility=1.0, reversion=0.5)
T_MIN, T_MAX = 1e-3, 12.0
NO_CLASS = 10            # the eleventh token: "any digit"
DROP = 0.2               # fraction of training examples that see NO_CLASS


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tiny run of a few seconds")
    parser.add_argument("--out", default="out", help="folder for the PNG figure (default: ./out)")
    parser.add_argument("--guidance", type=float, default=3.0, metavar="W",
                        help="guidance weight compared with w = 1 (default 3)")
    return parser.parse_args()


class Denoiser(nn.Module):
    """x0_hat = MLP(x_t, one-hot class or NO_CLASS, Fourier features of log t)."""

    def __init__(self, width=512, n_features=32):
        super().__init__()
        self.time_features = bd.RandomFourierFeatures(n_features, 0.5)
        self.net = nn.Sequential(
            nn.Linear(64 + 11 + n_features, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, width), nn.SiLU(),
            nn.Linear(width, 64))

    def forward(self, x_t, t, labels):
        batch = x_t.shape[0]
        features = self.time_features(t.log().expand(batch))
        return self.net(torch.cat([x_t, one_hot(labels, 11).to(x_t.dtype), features], dim=-1))


def training_step(model, optimizer, pixels, labels, batch_size, generator):
    dev = pixels.device
    index = torch.randint(len(pixels), (batch_size,), generator=generator, device=dev)
    t = T_MIN * (T_MAX / T_MIN) ** torch.rand(batch_size, generator=generator, device=dev)
    dropped = torch.rand(batch_size, generator=generator, device=dev) < DROP
    label = torch.where(dropped, NO_CLASS, labels[index])
    x0 = pixels[index]
    x_t = bd.sample_forward(PROCESS, t, x0, generator=generator)
    loss = bd.standard_loss(PROCESS, t, model(x_t, t, label), x0)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()


def generate(model, labels, w, n_steps, generator):
    """One digit per entry of ``labels``, guided with weight ``w``."""
    timesteps = bd.time_schedule(torch.exp, T_MIN, T_MAX, n_steps, finv=math.log)
    x_T = bd.sample_equilibrium(PROCESS, (len(labels), 64), generator=generator,
                                device=labels.device)
    guess = bd.Guided(PROCESS,
                      conditional=lambda x, t: model(x, t, labels),
                      unconditional=lambda x, t: model(x, t, torch.full_like(labels, NO_CLASS)),
                      w=w)
    return bd.sample_backward(guess, PROCESS, timesteps.to(labels.device), x_T,
                              generator=generator)


def main():
    args = parse_args()
    dev = device()
    torch.manual_seed(0)  # initial weights and Fourier frequencies
    generator = torch.Generator(dev).manual_seed(0)
    steps, n_timesteps, width = (150, 20, 256) if args.quick else (8000, 100, 512)

    data = load_digits()
    pixels = torch.tensor(data.data, dtype=torch.float32, device=dev) / 8 - 1
    labels = torch.tensor(data.target, dtype=torch.int64, device=dev)
    classifier = LogisticRegression(max_iter=2000).fit(pixels.cpu().numpy(), data.target)

    model = Denoiser(width).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    print(f"training for {steps} steps on {dev}")
    for step in range(1, steps + 1):
        loss = training_step(model, optimizer, pixels, labels, 256, generator)
        schedule.step()
        if step % (steps // 10) == 0:
            print(f"step {step:5d}  loss {loss.item():.4f}")

    per_class = 10
    requested = torch.arange(10, device=dev).repeat_interleave(per_class)
    weights = (1.0, args.guidance)
    fig, axes = plt.subplots(1, len(weights), figsize=(4.6 * len(weights), 5.0))
    model.eval()
    for ax, w in zip(axes, weights):
        images = generate(model, requested, w, n_timesteps, generator).cpu()
        probs = classifier.predict_proba(images.clamp(-1, 1).numpy())
        wanted = requested.cpu().numpy()
        accuracy = float(np.mean(probs.argmax(1) == wanted))
        confidence = float(np.mean(probs[np.arange(len(wanted)), wanted]))
        print(f"w = {w:g}: {100 * accuracy:.0f}% of the digits read as their requested class, "
              f"mean probability of that class {confidence:.3f}")
        cells = torch.nn.functional.pad(images.reshape(10, per_class, 8, 8), (0, 1, 0, 1),
                                        value=-1)                      # a blank line between
        ax.imshow(cells.permute(0, 2, 1, 3).reshape(90, 9 * per_class), cmap="gray_r",
                  vmin=-1, vmax=1)
        ax.set(xticks=[], yticks=4 + 9 * np.arange(10), yticklabels=range(10),
               title=f"w = {w:g}: {100 * accuracy:.0f}% read as requested (p = {confidence:.2f})")
    fig.suptitle("classifier-free guidance, one row per requested class")
    fig.tight_layout()
    save(fig, args.out, "guided_digits.png")


if __name__ == "__main__":
    main()
