r"""Classifier-free guidance: a guess that combines a conditional and an unconditional one.

For Euclidean processes with posterior-mean guesses, Tweedie's formula makes the score
affine in x0, ∇log p_t(x) = (m_t(x0_hat) − x)/v_t, so the guided x0
u + w (c − u) is the x0 of the combined score (1 − w) ∇log p_t(x) + w ∇log p_t(x | y)
= ∇log [p_t(x)^{1−w} p_t(x | y)^w]. Each space combines its guesses in its own geometry
(the process's ``guide`` hook): affine in x0 (Euclidean), in logits (discrete), in the
tangent space (circle, rotations, along great circles on the sphere).

What guidance samples: with w = 0 or 1 and exact guesses, the unconditional or conditional
law; for other w, not the tilted law p(x) p(y | x)^w in general, even for Gaussians: the
geometric mixtures p_t^{1−w} p_t(· | y)^w are not one diffusion's marginals (Bradley &
Nakkiran 2024, "Classifier-free guidance is a predictor-corrector"). The chain's law
depends on the sampler (eta, steps, correctors); tests/test_guidance.py computes it exactly
for a linear-Gaussian model and measures its distance to the tilted law.
"""

import numbers

from torch import Tensor

from ._tree import leaves, map_tree
from .masked import Masked
from .process import Process
from .sampling import check_endpoints

__all__ = ["Guided"]


def _check_weight(w) -> float:
    if isinstance(w, bool) or not isinstance(w, numbers.Real):
        raise TypeError(f"w must be a real number (or a structure of them matching the "
                        f"processes), got {type(w).__name__}")
    w = float(w)
    if w != w or w in (float("inf"), float("-inf")):
        raise ValueError(f"w must be finite, got {w}")
    return w


class Guided:
    r"""A guess for ``bd.sample_backward`` that guides a conditional guess by an unconditional one.

    ``guess(x_t, t)`` calls ``conditional(x_t, t)`` and ``unconditional(x_t, t)`` and
    combines them component by component with the process's ``guide(u, c, w)``:

    * Euclidean (OU, Brownian motion): u + w (c − u);
    * discrete: the geometric mixture ∝ u^{1−w} c^w of probabilities (..., k) (affine in the
      logits); probabilities in, probabilities out; hard states only for w ∈ {0, 1};
    * circle: wrap(u + w · wrap(c − u));
    * rotations: q_u exp(w log(q_u⁻¹ q_c)) (the geodesic through both, extrapolated for w > 1);
    * sphere: along the great circle from u through c, to the angle w·∠(u, c);
    * ``bd.TimeChanged``: its base process's rule; a custom process: its ``guide`` hook.

    Both guesses are checked against x_t as ``sample_backward`` checks a guess (shape, dtype
    and, for CPU tensors, values), each blamed by name. w = 1 returns the conditional guess
    and w = 0 the unconditional one unchanged, for every process (the hook is not called);
    a guess that only w = 0 (or only w = 1) needs is not
    evaluated for structures whose weights are all 1 (all 0).

    Args:
        process: the process (or structure of processes) of x_t.
        conditional, unconditional: guesses, callables (x_t, t) -> x0 estimate.
        w: the guidance weight, a real number (shared) or a structure of them matching
            ``process``; w > 1 strengthens the condition.

    Example::

        guess = bd.Guided(P, lambda x, t: model(x, t, label), lambda x, t: model(x, t, null), 3.0)
        x = bd.sample_backward(guess, P, timesteps, x_T)
    """

    def __init__(self, process, conditional, unconditional, w):
        for name, f in (("conditional", conditional), ("unconditional", unconditional)):
            if not callable(f):
                raise TypeError(f"{name} must be callable (x_t, t) -> x0_hat, "
                                f"got {type(f).__name__}")
        self.weights = map_tree(lambda p, ww: _check_weight(ww), process, (w,), ("w",),
                                shared=(0,))
        self.process, self.conditional, self.unconditional, self.w = (process, conditional,
                                                                      unconditional, w)

    def __call__(self, x_t, t):
        weights = leaves(self.weights)
        if all(w == 1 for w in weights):
            return self.conditional(x_t, t)
        if all(w == 0 for w in weights):
            return self.unconditional(x_t, t)
        return map_tree(_guide_leaf, self.process,
                        (x_t, self.unconditional(x_t, t), self.conditional(x_t, t), self.weights),
                        ("x_t", "unconditional(x_t, t)", "conditional(x_t, t)", "w"), out=2)

    def __repr__(self) -> str:
        return f"Guided(w={self.w!r})"


def _guide_leaf(process: Process, x_t, u, c, w: float):
    """One component: both guesses checked against x_t as a bridge checks its x0 (shape,
    dtype and, on the host, values), then combined by the process's rule."""
    x_t = x_t.x if isinstance(x_t, Masked) else x_t
    u = u.x if isinstance(u, Masked) else u
    c = c.x if isinstance(c, Masked) else c
    for name, x in (("unconditional", u), ("conditional", c)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name}(x_t, t) must return tensors matching x_t's structure, "
                            f"got {type(x).__name__}")
        check_endpoints(process, x, x_t, f"{name}(x_t, t)")
    if w == 1:
        return c
    if w == 0:
        return u
    return process.guide(u, c, w)
