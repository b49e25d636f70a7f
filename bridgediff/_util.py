"""Private helpers shared by the processes and the free functions."""

import torch
from torch import Tensor


def randn(like: Tensor, generator=None, shape=None) -> Tensor:
    """Standard normal draws of ``like``'s shape (or ``shape``), device and float dtype."""
    return torch.randn(like.shape if shape is None else shape, generator=generator,
                       dtype=like.dtype, device=like.device)


def rand(like: Tensor, generator=None, shape=None) -> Tensor:
    """Uniform [0, 1) draws of ``like``'s shape (or ``shape``), device and float dtype."""
    return torch.rand(like.shape if shape is None else shape, generator=generator,
                      dtype=like.dtype, device=like.device)


def as_param(value, like: Tensor):
    """A process parameter on ``like``'s device and dtype: Python numbers stay numbers (torch
    passes them to kernels as arguments, with no host-to-device copy), tensors are moved."""
    if isinstance(value, Tensor):
        return value.to(device=like.device, dtype=like.dtype)
    return float(value)


def on_host(x: Tensor) -> bool:
    """Whether value checks on ``x`` are free of host-device synchronisation."""
    return x.device.type == "cpu"


def real(name: str, value):
    """Check that a process parameter is a finite scalar; return it unchanged."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Tensor)):
        raise TypeError(f"{name} must be a float or a 0-d tensor, got {type(value).__name__}")
    v = torch.as_tensor(value).detach()
    if v.ndim != 0:
        raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(v.shape)}")
    if not bool(torch.isfinite(v)):
        raise ValueError(f"{name} must be finite, got {float(v)}")
    return value


def positive(name: str, value):
    """Check that a process parameter is a positive, finite scalar; return it unchanged."""
    if not bool(torch.as_tensor(real(name, value)).detach() > 0):
        raise ValueError(f"{name} must be positive and finite, got {float(value)}")
    return value


def require_float(x: Tensor, name: str, process) -> None:
    """Raise TypeError unless ``x`` is a floating-point tensor."""
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor for {type(process).__name__}, "
                        f"got dtype {x.dtype}")
