"""bridgediff: diffusion models over mixed data types with exact bridge samplers.

A process noises data forward in time; a model learns to predict x0 from x_t; generation
steps backward by drawing x_s from the bridge p(x_s | x0 = x0_hat, x_t).
"""

from .circle import WrappedBrownian, WrappedInterpolatedBrownian
from .discrete import AbsorbingDiscrete, GeneralDiscrete, IndependentDiscrete, UniformDiscrete
from .euclidean import BrownianMotion, CenteredOrnsteinUhlenbeck, OrnsteinUhlenbeck
from .features import RandomFourierFeatures
from .losses import standard_loss
from .masked import Masked, masked
from .process import Process
from .rotation import RotationDiffusion, igso3_angle_cdf, igso3_angle_pdf
from .sampling import (Tracker, endpoint_conditioned_sample, sample_backward,
                       sample_equilibrium, sample_forward)
from .schedules import time_schedule
from .selfcond import SelfConditioned, self_conditioning_input
from .sphere import SphereBrownian

__version__ = "0.1.0"

__all__ = [
    # free functions
    "sample_forward", "endpoint_conditioned_sample", "sample_backward", "sample_equilibrium",
    "standard_loss", "time_schedule", "masked", "Masked", "Tracker",
    # training helpers
    "RandomFourierFeatures", "SelfConditioned", "self_conditioning_input",
    # processes
    "Process", "OrnsteinUhlenbeck", "BrownianMotion", "UniformDiscrete", "IndependentDiscrete",
    "GeneralDiscrete", "AbsorbingDiscrete", "WrappedBrownian", "WrappedInterpolatedBrownian",
    "RotationDiffusion", "SphereBrownian", "CenteredOrnsteinUhlenbeck",
    # rotation helpers
    "igso3_angle_pdf", "igso3_angle_cdf",
]
