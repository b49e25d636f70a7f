"""Processes on the circle (placeholder: being written for issue 5)."""

from .process import Process

__all__ = ["WrappedBrownian", "WrappedInterpolatedBrownian"]


class WrappedBrownian(Process):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError


class WrappedInterpolatedBrownian(Process):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError
