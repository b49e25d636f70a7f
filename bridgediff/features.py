"""Time features (placeholder: being written for issue 7)."""

import torch

__all__ = ["RandomFourierFeatures"]


class RandomFourierFeatures(torch.nn.Module):
    def __init__(self, dim, scale):
        raise NotImplementedError
