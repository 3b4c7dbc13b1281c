"""MD stability check: a good potential survives, broken ones are flagged with a reason."""

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule
from ase.calculators.calculator import Calculator, all_changes
from tblite.ase import TBLite  # loaded here, so that threadpool_limits below reaches its OpenMP
from threadpoolctl import threadpool_limits

from sapis.errors import InputError
from sapis.surrogate.stability import (
    StabilityResult,
    StabilitySettings,
    TrajectoryStability,
    check_stability,
)


class Toy(Calculator):
    """Energy and forces from ``model(positions - centre of mass)``; counts its calls and
    raises ``RuntimeError`` on call number ``fail_after + 1`` when that is set."""

    implemented_properties = ("energy", "forces")

    def __init__(self, model, fail_after: int | None = None):
        super().__init__()
        self.model, self.fail_after, self.calls = model, fail_after, 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise RuntimeError("SCF did not converge")
        self.calls += 1
        r = self.atoms.positions - self.atoms.get_center_of_mass()
        energy, forces = self.model(r, self.calls)
        self.results = {"energy": float(energy), "forces": forces}


def spring(k: float):
    """Every atom on a spring to the centre of mass: k < 0 pushes the molecule apart,
    k > 0 pulls it together."""
    return lambda r, calls: (0.5 * k * (r**2).sum(), -k * r)


def pump(r, calls):
    """No forces, and an energy climbing 2 eV a call."""
    return 2.0 * calls, np.zeros_like(r)


def nan_after_three(r, calls):
    return 0.0, np.full_like(r, np.nan if calls > 3 else 0.0)


def test_a_good_potential_survives():
    made = []

    def factory():
        made.append(TBLite(method="GFN2-xTB", verbosity=0))
        return made[-1]

    # tblite's OpenMP threads fight anything else on a small machine: 30-100x slower
    with threadpool_limits(limits=1):
        result = check_stability(
            factory, molecule("CH4"), temperature=500.0, trajectories=2, picoseconds=0.2
        )
    assert len(made) == 2 and made[0] is not made[1]  # a fresh calculator per trajectory
    assert result.survived_fraction == 1.0
    assert result.first_failure_ps is None
    assert result.median_time_to_failure_ps == 0.2
    assert [(t.index, t.survived, t.steps, t.reason) for t in result.trajectories] == [
        (0, True, 400, None),
        (1, True, 400, None),
    ]
    summary = json.loads(json.dumps(result.to_dict()))
    assert summary["settings"]["steps"] == 400 and summary["settings"]["temperature"] == 500.0
    assert summary["trajectories"][1]["time_to_failure_ps"] is None


@pytest.mark.parametrize(
    "model, reasons",
    [
        (spring(-20.0), ("bond broken: 0-1",)),
        (spring(20.0), ("atoms 0 and ", "bond formed: ")),
        (pump, ("energy rose ",)),
        (nan_after_three, ("non-finite ",)),
    ],
    ids=["repulsive", "attractive", "energy-pump", "nan-forces"],
)
def test_a_broken_potential_is_flagged(model, reasons):
    result = check_stability(Toy(model), molecule("H2O"), trajectories=3, picoseconds=0.2)
    assert result.survived_fraction == 0.0
    for t in result.trajectories:
        assert not t.survived and t.reason.startswith(reasons), t.reason
        assert 0 < t.steps < 400 and t.time_to_failure_ps == pytest.approx(t.steps * 0.5e-3)
    assert 0 < result.first_failure_ps < 0.2
    assert result.median_time_to_failure_ps < 0.2


def test_the_reason_gives_numbers():
    collapsed = check_stability(Toy(spring(20.0)), molecule("H2O"), trajectories=1)
    assert collapsed.trajectories[0].reason.endswith(" Å")
    pumped = check_stability(Toy(pump), molecule("H2O"), trajectories=1)
    assert pumped.trajectories[0].reason.endswith(" eV/atom")
    rise = float(pumped.trajectories[0].reason.split()[2])
    assert rise == pytest.approx(2.0 * 10 / 3, abs=0.1)  # 10 steps of 2 eV on 3 atoms


@pytest.mark.parametrize("fail_after", [0, 5])
def test_a_calculator_error_fails_the_trajectory_and_the_check_goes_on(fail_after):
    def factory():
        return Toy(spring(0.0), fail_after=fail_after)

    result = check_stability(factory, molecule("H2O"), trajectories=2, picoseconds=0.1)
    assert len(result.trajectories) == 2
    for t in result.trajectories:
        assert not t.survived
        assert t.reason == "calculator error: RuntimeError: SCF did not converge"
        assert t.steps == max(fail_after - 1, 0)  # the first call is the starting energy
        assert t.time_to_failure_ps == pytest.approx(t.steps * 0.5e-3)
    assert result.first_failure_ps == pytest.approx(max(fail_after - 1, 0) * 0.5e-3)


def test_trajectories_are_reproducible_and_independent_of_their_number():
    def reasons(**kwargs):
        result = check_stability(Toy(spring(20.0)), molecule("H2O"), **kwargs)
        return [t.reason for t in result.trajectories]

    three = reasons(trajectories=3, rng_seed=7)
    assert reasons(trajectories=3, rng_seed=7) == three
    assert reasons(trajectories=2, rng_seed=7) == three[:2]
    assert len(set(three)) > 1  # each trajectory has momenta and noise of its own


def test_the_seed_is_not_changed():
    seed = molecule("H2O")
    seed.info["name"] = "water"
    before = seed.copy()
    result = check_stability(Toy(spring(-20.0)), seed, trajectories=2, progress=True)
    assert result.survived_fraction == 0.0
    assert seed.calc is None and not seed.has("momenta") and not seed.constraints
    assert seed == before and seed.info == {"name": "water"}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"trajectories": 0}, "trajectories must be at least 1"),
        ({"trajectories": 2.5}, "trajectories must be a whole number"),
        ({"temperature": -1.0}, "temperature must be positive"),
        ({"temperature": 0.0}, "temperature must be positive"),
        ({"picoseconds": 0.0}, "picoseconds must be positive"),
        ({"timestep": -0.5}, "timestep must be positive"),
        ({"timestep": float("nan")}, "timestep must be positive"),
        ({"friction": -0.01}, "friction must be zero or positive"),
        ({"check_every": 0}, "check_every must be at least 1"),
        ({"rng_seed": -1}, "rng_seed must be zero or positive"),
        ({"seed": Atoms("H")}, "at least 2 atoms, it has 1"),
        ({"seed": Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.3]])}, "seed structure is unphysical"),
        ({"calculator": 42}, "calculator must be an ASE calculator"),
    ],
)
def test_bad_input_is_refused_before_any_md(change, message):
    calls = []
    arguments = {"calculator": lambda: calls.append(1), "seed": molecule("H2O"), **change}
    with pytest.raises(InputError, match=message):
        check_stability(**arguments)
    assert calls == []


def test_a_factory_must_return_a_calculator():
    with pytest.raises(InputError, match="factory returned NoneType"):
        check_stability(lambda: None, molecule("H2O"), trajectories=1)


def test_summary_of_mixed_trajectories():
    settings = StabilitySettings(500.0, 4, 10.0, 0.5, 0.01, 0, 10, 0.7, 1.0)
    result = StabilityResult(
        settings,
        [
            TrajectoryStability(0, True, None, None, 20000),
            TrajectoryStability(1, False, 2.5, "bond broken: 0-3", 5000),
            TrajectoryStability(2, False, 0.5, "atoms 1 and 4 at 0.62 Å", 1000),
            TrajectoryStability(3, True, None, None, 20000),
        ],
    )
    assert result.survived_fraction == 0.5
    assert result.first_failure_ps == 0.5
    assert result.median_time_to_failure_ps == pytest.approx((2.5 + 10.0) / 2)
    assert result.to_dict()["trajectories"][2]["reason"] == "atoms 1 and 4 at 0.62 Å"
