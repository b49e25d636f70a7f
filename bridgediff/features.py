"""Random Fourier features of time, a fixed embedding for the model's t input."""

import math
import numbers

import torch
from torch import Tensor

from ._util import positive

__all__ = ["RandomFourierFeatures"]


class RandomFourierFeatures(torch.nn.Module):
    r"""Fixed random Fourier features (Tancik et al., 2020), as in Diffusions.jl.

    .. math::
        \phi(t) = [\cos(2\pi t w),\ \sin(2\pi t w)], \qquad w \sim N(0, \sigma^2 I_{d/2})

    The frequencies ``w`` are drawn once, at construction, and kept as a buffer: they follow
    ``.to(device)`` and ``state_dict`` but are never trained.

    Args:
        dim: the (even) number of features d.
        scale: the standard deviation σ of the frequencies.
        generator: a CPU ``torch.Generator`` for reproducible frequencies.

    Shapes: t (...) -> features (..., d), in the promoted dtype of t and the buffer.
    """

    weight: Tensor

    def __init__(self, dim: int, scale: float, *, generator=None):
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int):
            raise TypeError(f"dim must be an int, got {type(dim).__name__}")
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim must be a positive even number, got {dim}")
        positive("scale", scale)
        self.dim, self.scale = dim, float(scale)
        self.register_buffer("weight", torch.randn(dim // 2, generator=generator) * self.scale)

    def forward(self, t) -> Tensor:
        """Features (..., d) of times ``t``: a tensor (...) or a float (then d features)."""
        if isinstance(t, Tensor):
            t = t.unsqueeze(-1)
            if not t.is_floating_point():
                t = t.to(self.weight.dtype)
        elif isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise TypeError(f"t must be a tensor or a float, got {type(t).__name__}")
        else:
            t = float(t)                   # numpy scalars too
        angle = 2 * math.pi * t * self.weight
        return torch.cat([angle.cos(), angle.sin()], dim=-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}"
