"""Brownian motion on SO(3) (placeholder: being written for issue 6)."""

from .process import Process

__all__ = ["RotationDiffusion", "igso3_angle_pdf", "igso3_angle_cdf"]


class RotationDiffusion(Process):
    event_ndim = 1

    def __init__(self, *args, **kwargs):
        raise NotImplementedError


def igso3_angle_pdf(omega, eps2):
    raise NotImplementedError


def igso3_angle_cdf(omega, eps2):
    raise NotImplementedError
