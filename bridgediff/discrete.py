"""Discrete processes (placeholder: being written for issue 4)."""

from .process import Process

__all__ = ["UniformDiscrete", "IndependentDiscrete", "GeneralDiscrete", "AbsorbingDiscrete"]


class UniformDiscrete(Process):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError


class IndependentDiscrete(Process):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError


class GeneralDiscrete(Process):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError


class AbsorbingDiscrete(Process):
    def __init__(self, *args, **kwargs):
        raise NotImplementedError
