"""Masked data: elements that diffuse and elements held fixed (conditioning, inpainting)."""

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Masked:
    """A tensor ``x`` with a boolean ``mask``: True diffuses, False is held at its value.

    ``mask``'s shape is a leading part of the state's shape, the shape of ``x`` without the
    process's event dimensions (for rotations ``x`` is (..., 4) and the state (...)); it is
    broadcast over the remaining trailing dimensions, so a per-residue mask (B, L) serves
    positions (B, L, 3). Forward, bridge and backward sampling return a ``Masked`` with the
    same mask, whose held elements are bit-identical to the input's.

    Raises TypeError or ValueError at construction for a mask that is not a bool tensor, not
    a leading part of ``x``'s shape, or on another device.
    """

    x: Tensor
    mask: Tensor

    def __post_init__(self):
        x, mask = self.x, self.mask
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor, got {got}")
        if mask.ndim > x.ndim or tuple(x.shape[:mask.ndim]) != tuple(mask.shape):
            raise ValueError(f"mask has shape {tuple(mask.shape)}, which is not a leading part "
                             f"of x's shape {tuple(x.shape)}")
        if mask.device != x.device:
            raise ValueError(f"mask is on {mask.device} but x is on {x.device}")

    @property
    def shape(self) -> torch.Size:
        return self.x.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.x.dtype

    @property
    def device(self) -> torch.device:
        return self.x.device


def masked(x: Tensor, mask: Tensor) -> Masked:
    """Wrap ``x`` with a boolean ``mask`` (True: diffuses, False: held fixed).

    Args:
        x: data tensor (...,) or, for rotations, (..., 4).
        mask: bool tensor whose shape is a leading part of ``x.shape`` (broadcast over the
            rest of the state, e.g. one flag per residue for positions (B, L, 3)).
    """
    return Masked(x, mask)
