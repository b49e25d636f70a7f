"""bd.testing, the conformance kit: it passes every built-in process, a tuple and the custom
process of examples/custom_process.py, and it fails the approximate circle bridge and each
planted bug below (each written here as a small subclass, independently of the library)."""

import math
from pathlib import Path

import numpy as np
import pytest
import roma
import torch

import bridgediff as bd
from bridgediff.testing import ProcessCheckError

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- data laws (sample_x0)

def two_atoms(n, g, dim=4):
    """Two narrow clusters at ±1 in R^dim."""
    sign = 2.0 * (torch.rand(n, 1, generator=g) < 0.5) - 1
    return sign + 0.1 * torch.randn(n, dim, generator=g)


def states(k, length=3, weights=None):
    probs = torch.ones(k) if weights is None else torch.tensor(weights, dtype=torch.float)
    return lambda n, g: torch.multinomial(probs, n * length, replacement=True,
                                          generator=g).reshape(n, length)


def angles(n, g):
    """Angles around 2.8, close to the cut at ±π, so that wrapping is exercised."""
    return torch.remainder(2.8 + 0.3 * torch.randn(n, 2, generator=g) + math.pi,
                           2 * math.pi) - math.pi


def rotations(n, g):
    """Rotations (n, 1, 4) within about 0.3 rad of a fixed one."""
    centre = roma.rotvec_to_unitquat(torch.tensor([0.5, -1.0, 2.0]))
    near = roma.rotvec_to_unitquat(0.3 * torch.randn(n, 1, 3, generator=g))
    return roma.quat_product(centre.expand(n, 1, 4), near)


def directions(n, g):
    """Unit vectors (n, 2, 3) near two fixed directions."""
    centre = torch.tensor([[0.0, 0.6, 0.8], [1.0, 0.0, 0.0]])
    x = centre + 0.2 * torch.randn(n, 2, 3, generator=g)
    return x / x.norm(dim=-1, keepdim=True)


def residues(n, g):
    """Positions (n, 4, 3) of four residues near a fixed shape, off-centre."""
    shape = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [2, 1, 1]])
    return shape + 3.0 + 0.1 * torch.randn(n, 4, 3, generator=g)


Q = torch.tensor([[-1.0, 0.7, 0.3], [0.2, -0.5, 0.3], [1.5, 0.5, -2.0]])

BUILT_INS = {
    "ornstein_uhlenbeck": (bd.OrnsteinUhlenbeck(0.5, 1.3, 0.7), two_atoms),
    "brownian": (bd.BrownianMotion(2.0), two_atoms),
    "uniform_discrete": (bd.UniformDiscrete(1.5, 5), states(5, weights=[5, 1, 1, 2, 1])),
    "independent_discrete": (bd.IndependentDiscrete(1.0, [0.1, 0.2, 0.3, 0.4]),
                             states(4, weights=[1, 0, 0, 3])),
    "general_discrete": (bd.GeneralDiscrete(Q), states(3, weights=[3, 1, 0])),
    "absorbing_discrete": (bd.AbsorbingDiscrete(1.0, 4), states(4, weights=[4, 3, 2, 1])),
    "wrapped_brownian": (bd.WrappedBrownian(1.0), angles),
    "rotation": (bd.RotationDiffusion(1.0), rotations),
    "sphere": (bd.SphereBrownian(1.0), lambda n, g: directions(n, g)),
    "centered_ou": (bd.CenteredOrnsteinUhlenbeck(1.3, 0.7), lambda n, g: residues(n, g)),
    "time_changed_ou": (bd.TimeChanged(bd.OrnsteinUhlenbeck(), bd.ddpm_schedule("linear")),
                        two_atoms),
}


def test_the_masking_clock_passes_on_its_own_horizon():
    """MDLM's clock is defined for t < 1/(1 − eps): the checks run inside it."""
    process = bd.TimeChanged(bd.AbsorbingDiscrete(1.0, 4), bd.LogLinearMasking())
    bd.testing.assert_process_ok(process, states(4, weights=[4, 3, 2, 1]), n=50_000,
                                 times=((0.05, 0.1), (0.3, 0.6), (0.6, 0.95)))


def failed(report) -> set:
    return {r.name.split(" (")[0] for r in report.failures}


# ---------------------------------------------------------------- every correct process passes

@pytest.mark.parametrize("name", BUILT_INS)
def test_built_in_processes_pass(name):
    process, sample_x0 = BUILT_INS[name]
    # the exact rotation bridge is the slowest sampler: half the draws keep the file fast
    n = 50_000 if name == "rotation" else 100_000
    report = bd.testing.assert_process_ok(process, sample_x0, n=n)
    names = {r.name.split(" (")[0] for r in report.results}
    assert {"bridge", "semigroup", "per-element t", "masks", "generator"} <= names
    discrete = isinstance(getattr(process, "k", None), int)
    assert ("soft x0" in names) == discrete


def test_tuple_of_processes_passes_with_soft_x0_on_its_discrete_component():
    process = (bd.OrnsteinUhlenbeck(), bd.UniformDiscrete(1.0, 4))
    report = bd.testing.assert_process_ok(
        process, lambda n, g: (two_atoms(n, g, dim=2), states(4, length=2)(n, g)))
    soft = [r.name for r in report.results if r.name.startswith("soft x0")]
    assert len(soft) == len(bd.testing.DEFAULT_TIMES)
    assert all(name.endswith("[component 1]") for name in soft)


def test_dict_of_processes_with_list_components_passes():
    process = {"pos": bd.OrnsteinUhlenbeck(), "labels": [bd.UniformDiscrete(1.0, 3)]}
    report = bd.testing.assert_process_ok(
        process, lambda n, g: {"pos": two_atoms(n, g, dim=2), "labels": [states(3)(n, g)]},
        n=20_000)
    assert any(r.name.startswith("soft x0") for r in report.results)


def test_a_wrong_component_fails_its_tuple():
    process = (bd.OrnsteinUhlenbeck(), WrongWindingCircle(1.0, window=0))
    report = bd.testing.check_process(process, lambda n, g: (two_atoms(n, g), angles(n, g)))
    assert failed(report) == {"bridge"}, report
    assert all("[1]" in r.detail for r in report.failures)


def test_custom_process_of_the_example_passes(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    from custom_process import GeometricBrownian
    report = bd.testing.assert_process_ok(
        GeometricBrownian(0.5), lambda n, g: torch.exp(0.3 * torch.randn(n, 3, generator=g)))
    assert any(r.name == "equilibrium" and "skipped" in r.detail for r in report.results)


# ---------------------------------------------------------------- approximate and buggy ones fail

def test_the_approximate_circle_bridge_fails_bridge_consistency():
    report = bd.testing.check_process(bd.WrappedInterpolatedBrownian(1.0), angles)
    assert failed(report) == {"bridge"}, report


def _ou_variance(process, u):
    return process.volatility ** 2 * -torch.expm1(-2 * process.reversion * u) / (
        2 * process.reversion)


class InflatedBridgeOU(bd.OrnsteinUhlenbeck):
    """Bridge variance v_s v_{t-s} / v_t made 3% too large by extra independent noise."""

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        x_s = super().endpoint_conditioned_sample(s, t, x0, x_t, generator)
        var = _ou_variance(self, s) * _ou_variance(self, t - s) / _ou_variance(self, t)
        noise = torch.randn(x_s.shape, generator=generator, dtype=x_s.dtype)
        return x_s + (0.03 * var).sqrt() * noise


def _wrap(x):
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


class WrongWindingCircle(bd.WrappedBrownian):
    """The circle bridge with winding weights exp(-(d + 2πn)² / (r t)): exponent twice too
    large (the factor 2 of 2rt forgotten); ``window=0`` instead keeps only n = 0."""

    def __init__(self, rate, window=4):
        super().__init__(rate)
        self.window = window

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        d = _wrap(x_t - x0)
        n = torch.arange(-self.window, self.window + 1, dtype=d.dtype)
        logits = -(d.unsqueeze(-1) + 2 * math.pi * n) ** 2 / (self.rate * t.unsqueeze(-1))
        pick = torch.multinomial(logits.softmax(-1).reshape(-1, len(n)), 1, generator=generator)
        lifted = d + 2 * math.pi * n[pick.reshape(d.shape)]
        sd = (self.rate * s * (t - s) / t).sqrt()
        noise = torch.randn(d.shape, generator=generator, dtype=d.dtype)
        return _wrap(x0 + (s / t) * lifted + sd * noise)


class DoubleEvidenceDiscrete(bd.UniformDiscrete):
    """Diffusions.jl's soft-x0 bridge: (p̂ @ P(s)) * P(t−s)[:, l], without dividing p̂ by
    P(t)[:, l] (x_t's evidence counted twice). Hard x0 is left exact."""

    def _P(self, u):
        a = torch.exp(-self.rate * u).unsqueeze(-1).unsqueeze(-1)
        return a * torch.eye(self.k) + (1 - a) / self.k

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        if not x0.is_floating_point():
            return super().endpoint_conditioned_sample(s, t, x0, x_t, generator)
        P_s, P_rest = self._P(s), self._P(t - s)
        to_xt = torch.gather(P_rest.expand(x_t.shape + (self.k, self.k)), -1,
                             x_t.long()[..., None, None].expand(x_t.shape + (self.k, 1)))
        w = (x0.unsqueeze(-2) @ P_s).squeeze(-2) * to_xt.squeeze(-1)
        draw = torch.multinomial(w.reshape(-1, self.k), 1, generator=generator)
        return draw.reshape(x_t.shape).to(x_t.dtype)


class SlerpRotation(bd.RotationDiffusion):
    """Diffusions.jl-style rotation bridge: the geodesic point x0 exp((s/t) log(x0⁻¹ x_t))
    with IGSO(3) noise of the Euclidean bridge variance, 4 r s (t − s) / t per axis."""

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        relative = roma.unitquat_to_rotvec(roma.quat_product(roma.quat_conjugation(x0), x_t))
        centre = roma.quat_product(x0, roma.rotvec_to_unitquat((s / t) * relative))
        return super().sample_forward(s * (t - s) / t, centre, generator)


class InPlaceBridgeOU(bd.OrnsteinUhlenbeck):
    """Writes the bridge draw into x_t's storage: held elements of x_t change too."""

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        return x_t.copy_(super().endpoint_conditioned_sample(s, t, x0, x_t, generator))


class GlobalRngOU(bd.OrnsteinUhlenbeck):
    """Ignores the generator in the bridge (draws from torch's global generator)."""

    def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
        return super().endpoint_conditioned_sample(s, t, x0, x_t, None)


PLANTED = {
    "bridge variance 3% too large": (InflatedBridgeOU(), two_atoms, {"bridge"}),
    "winding weight exponent twice too large": (WrongWindingCircle(1.0), angles, {"bridge"}),
    "shortest arc only (|n| <= 0)": (WrongWindingCircle(1.0, window=0), angles, {"bridge"}),
    "soft x0 counts x_t twice": (DoubleEvidenceDiscrete(1.5, 5), states(5), {"soft x0"}),
    "slerp rotation bridge": (SlerpRotation(1.0), rotations, {"bridge"}),
    # overwriting x_t also breaks the bridge identity: x_s - x_t is then 0
    "modifies held elements": (InPlaceBridgeOU(), two_atoms,
                               {"masks", "inputs unchanged", "bridge"}),
    "ignores the generator": (GlobalRngOU(), two_atoms, {"generator"}),
}


@pytest.mark.parametrize("bug", PLANTED)
def test_planted_bug_fails_exactly_the_checks_it_breaks(bug):
    process, sample_x0, expected = PLANTED[bug]
    with pytest.raises(ProcessCheckError) as info:
        bd.testing.assert_process_ok(process, sample_x0)
    assert failed(info.value.report) == expected, info.value.report
    message = str(info.value)
    assert all(name in message for name in expected) and "stat=" in message


# ---------------------------------------------------------------- the report and the API

def test_report_is_reproducible_and_states_its_multiple_testing():
    process, sample_x0 = BUILT_INS["ornstein_uhlenbeck"]
    first = bd.testing.check_process(process, sample_x0, n=2000)
    again = bd.testing.check_process(process, sample_x0, n=2000)
    assert first == again
    other = bd.testing.check_process(process, sample_x0, n=2000, seed=1)
    assert [r.pvalue for r in other.results] != [r.pvalue for r in first.results]
    m = sum(r.pvalue is not None for r in first.results)
    assert first.level == pytest.approx(1e-3 / m)
    assert f"alpha/{m}" in str(first) and "Bonferroni" in str(first)


def test_process_check_error_is_not_an_assertion_error():
    assert not issubclass(ProcessCheckError, AssertionError)


def test_user_statistic_replaces_the_default():
    process, sample_x0 = BUILT_INS["ornstein_uhlenbeck"]
    calls = []

    def first_coordinate(x, ref):
        calls.append(x.shape)
        return {"x1": x[:, 0]}

    report = bd.testing.check_process(process, sample_x0, n=2000, statistic=first_coordinate)
    assert calls and all("x1" in r.detail for r in report.results if r.pvalue is not None)


def test_a_statistic_without_one_value_per_sample_fails_its_rows():
    """Ten values for n samples would be a KS test on ten points: every statistical row fails."""
    process, sample_x0 = BUILT_INS["ornstein_uhlenbeck"]
    report = bd.testing.check_process(process, sample_x0, n=np.int64(1000),
                                      statistic=lambda x, ref: x[:10, 0])
    statistical = [r for r in report.results if r.name.startswith(("bridge", "semigroup"))]
    assert statistical and all(not r.passed and "one value per sample" in r.detail
                               for r in statistical)


def test_time_changed_manifold_processes_get_their_own_statistic():
    from bridgediff.testing import _leaf_statistic
    for base, statistic in ((bd.RotationDiffusion(), bd.testing.quaternion_statistic),
                            (bd.WrappedBrownian(1.0), bd.testing.angle_statistic)):
        clocked = bd.TimeChanged(bd.TimeChanged(base, torch.expm1), torch.expm1)
        assert _leaf_statistic(clocked) is statistic


def test_a_process_that_raises_becomes_a_failed_row():
    class Broken(bd.OrnsteinUhlenbeck):
        def endpoint_conditioned_sample(self, s, t, x0, x_t, generator=None):
            raise RuntimeError("not implemented yet")

    report = bd.testing.check_process(Broken(), two_atoms, n=1000)
    rows = {r.name: r for r in report.failures}
    assert "bridge (0.05, 0.1)" in rows and "RuntimeError" in rows["bridge (0.05, 0.1)"].detail
    assert not any(r.name.startswith("semigroup") for r in report.failures)


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(n=10), ValueError, "n must be"),
    (dict(times=[(1.0, 0.5)]), ValueError, "0 < s < t"),
    (dict(alpha=2.0), ValueError, "alpha"),
    (dict(statistic=3), TypeError, "statistic"),
    (dict(n=1000.0), TypeError, "n must be an integer"),
    (dict(times=(0.5, 1.0)), TypeError, "sequence of pairs"),
    (dict(alpha="0.01"), TypeError, "alpha must be a real"),
])
def test_bad_arguments_are_named(kwargs, err, match):
    with pytest.raises(err, match=match):
        bd.testing.check_process(bd.OrnsteinUhlenbeck(), two_atoms, **kwargs)


def test_sample_x0_of_the_wrong_structure_is_named():
    with pytest.raises(ValueError, match="sample_x0"):
        bd.testing.check_process((bd.OrnsteinUhlenbeck(), bd.BrownianMotion()), two_atoms)
    with pytest.raises(ValueError, match="leading dimension n"):
        bd.testing.check_process(bd.OrnsteinUhlenbeck(), lambda n, g: torch.zeros(4))


@pytest.mark.cuda
def test_device_check_runs_on_cuda():
    process, sample_x0 = BUILT_INS["rotation"]
    report = bd.testing.assert_process_ok(process, sample_x0, device="cuda", n=20_000)
    assert any(r.name.startswith("device cuda") and r.pvalue is not None
               for r in report.results)


def test_device_check_compares_the_law_there_with_the_cpus():
    process, sample_x0 = BUILT_INS["wrapped_brownian"]
    report = bd.testing.assert_process_ok(process, sample_x0, device="cpu", n=20_000)
    row = next(r for r in report.results if r.name.startswith("device cpu"))
    assert row.pvalue is not None and "KS" in row.detail
