"""bridgediff: diffusion models over mixed data types with exact bridge samplers.

A process noises data forward in time; a model learns to predict x0 from x_t; generation
steps backward by drawing x_s from the bridge p(x_s | x0 = x0_hat, x_t).
"""

from .circle import WrappedBrownian, WrappedInterpolatedBrownian
from .discrete import AbsorbingDiscrete, GeneralDiscrete, IndependentDiscrete, UniformDiscrete
from .euclidean import BrownianMotion, CenteredOrnsteinUhlenbeck, OrnsteinUhlenbeck
from .features import RandomFourierFeatures
from .guidance import Guided
from .likelihood import elbo
from .losses import standard_loss
from ._tree import unmasked
from .masked import Masked, masked
from .process import Process
from .rotation import RotationDiffusion, igso3_angle_cdf, igso3_angle_pdf
from .sampling import (Tracker, endpoint_conditioned_sample, sample_backward,
                       sample_equilibrium, sample_forward)
from .schedules import time_schedule
from .selfcond import SelfConditioned, self_conditioning_input
from .sphere import SphereBrownian
from .timechange import AlphaBarSchedule, LogLinearMasking, TimeChanged, ddpm_schedule
from . import testing  # noqa: E402  (after the processes it checks)

__version__ = "0.1.0"

__all__ = [
    # free functions
    "sample_forward", "endpoint_conditioned_sample", "sample_backward", "sample_equilibrium",
    "standard_loss", "elbo", "time_schedule", "masked", "Masked", "unmasked", "Tracker",
    # training and sampling helpers
    "RandomFourierFeatures", "SelfConditioned", "self_conditioning_input", "Guided",
    # processes
    "Process", "OrnsteinUhlenbeck", "BrownianMotion", "UniformDiscrete", "IndependentDiscrete",
    "GeneralDiscrete", "AbsorbingDiscrete", "WrappedBrownian", "WrappedInterpolatedBrownian",
    "RotationDiffusion", "SphereBrownian", "CenteredOrnsteinUhlenbeck",
    # time changes and ready-made clocks
    "TimeChanged", "AlphaBarSchedule", "ddpm_schedule", "LogLinearMasking",
    # rotation helpers
    "igso3_angle_pdf", "igso3_angle_cdf",
    # conformance kit for custom processes
    "testing",
]
