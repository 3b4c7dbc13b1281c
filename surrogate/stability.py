"""MD stability check of a final potential.

A potential can be accurate on held-out frames and still fall apart in MD: it has never
seen the high-energy regions a trajectory wanders into, and one hole is enough for a
bond to break or atoms to fuse. So the last word on a potential is to run it: several
independent Langevin trajectories from a seed structure, each checked every few steps
for a covalent bond broken or formed relative to the seed (:func:`sapis.validity.bond_graph`),
two atoms closer than a floor, a total energy (potential + kinetic) risen more than a
bound per atom above the start, a non-finite energy, force or position, or the calculator
raising. The first failure ends that trajectory and is recorded with its time and reason;
a calculator error is a failure, not a crash.

Works with any ASE calculator, or a zero-argument factory giving a fresh one per
trajectory. Imports only numpy, ASE and the sapis core (no Prefect, no torch).
"""

import contextlib
import statistics
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator

from sapis.dynamics import langevin
from sapis.errors import InputError
from sapis.validity import bond_graph, invalid_reason, min_distance

#: Bonds named at most in a failure reason.
MAX_BONDS_NAMED = 3

CalculatorSource = BaseCalculator | Callable[[], BaseCalculator]


@dataclass(frozen=True)
class StabilitySettings:
    """How the check was run (``steps`` per trajectory follows from picoseconds and
    timestep)."""

    temperature: float
    trajectories: int
    picoseconds: float
    timestep: float
    friction: float
    rng_seed: int
    check_every: int
    min_distance: float
    max_energy_rise: float

    @property
    def steps(self) -> int:
        return max(1, round(self.picoseconds * 1000.0 / self.timestep))

    @property
    def length_ps(self) -> float:
        """What a trajectory that survives runs: ``picoseconds`` to a whole step."""
        return self.steps * self.timestep / 1000.0


@dataclass(frozen=True)
class TrajectoryStability:
    """One trajectory: whether it survived, else when (ps, to the check that saw it) and
    why it first failed."""

    index: int
    survived: bool
    time_to_failure_ps: float | None
    reason: str | None
    steps: int


@dataclass
class StabilityResult:
    settings: StabilitySettings
    trajectories: list[TrajectoryStability] = field(default_factory=list)

    @property
    def survived_fraction(self) -> float:
        return sum(t.survived for t in self.trajectories) / len(self.trajectories)

    @property
    def first_failure_ps(self) -> float | None:
        """Earliest failure over all trajectories; None when all survived."""
        times = [t.time_to_failure_ps for t in self.trajectories if not t.survived]
        return min(times) if times else None

    @property
    def median_time_to_failure_ps(self) -> float:
        """Median time to failure, a survivor counting as the full length."""
        length = self.settings.length_ps
        return float(
            statistics.median(
                length if t.survived else t.time_to_failure_ps for t in self.trajectories
            )
        )

    def to_dict(self) -> dict:
        """JSON-ready summary, settings and trajectories."""
        return {
            "survived_fraction": self.survived_fraction,
            "first_failure_ps": self.first_failure_ps,
            "median_time_to_failure_ps": self.median_time_to_failure_ps,
            "settings": {
                **asdict(self.settings),
                "steps": self.settings.steps,
                "length_ps": self.settings.length_ps,
            },
            "trajectories": [asdict(t) for t in self.trajectories],
        }


def check_stability(
    calculator: CalculatorSource,
    seed: Atoms,
    temperature: float = 500.0,
    trajectories: int = 8,
    picoseconds: float = 10.0,
    timestep: float = 0.5,
    friction: float = 0.01,
    rng_seed: int = 0,
    check_every: int = 10,
    min_distance: float = 0.7,
    max_energy_rise: float = 1.0,
    progress: bool = False,
) -> StabilityResult:
    """Run ``trajectories`` Langevin trajectories of ``picoseconds`` ps at ``temperature``
    K from ``seed`` (timestep in fs, friction in 1/fs) and record how each one fared.

    ``calculator`` is an ASE calculator (shared, reset between trajectories) or a
    zero-argument factory called once per trajectory; an error raised by the factory
    itself propagates. Trajectory ``i`` draws its momenta and noise from its own generator
    spawned from ``rng_seed``, so it does not depend on how many trajectories run. A
    failure's time is that of the check that saw it (every ``check_every`` steps), or of
    the last completed step when the calculator raised. ``seed`` is copied, never changed.
    """
    settings = _settings(
        temperature=temperature,
        trajectories=trajectories,
        picoseconds=picoseconds,
        timestep=timestep,
        friction=friction,
        rng_seed=rng_seed,
        check_every=check_every,
        min_distance=min_distance,
        max_energy_rise=max_energy_rise,
    )
    _validate(calculator, seed, settings)
    new_calculator = _calculator_source(calculator)
    reference = bond_graph(seed)
    streams = np.random.SeedSequence(settings.rng_seed).spawn(settings.trajectories)
    result = StabilityResult(settings)
    with _progress(progress, settings.trajectories * settings.steps) as advance:
        for i, stream in enumerate(streams):
            rng = np.random.default_rng(stream)
            outcome = _trajectory(i, new_calculator(), seed, reference, settings, rng, advance)
            advance(settings.steps - outcome.steps)
            result.trajectories.append(outcome)
    return result


# --- input ------------------------------------------------------------------------------


def _settings(**values: object) -> StabilitySettings:
    """The settings, whole numbers and reals checked for their kind."""
    whole = ("trajectories", "check_every", "rng_seed")
    for name, value in values.items():
        kinds = (int, np.integer) if name in whole else (int, float, np.integer, np.floating)
        if isinstance(value, bool) or not isinstance(value, kinds):
            kind = "a whole number" if name in whole else "a number"
            raise InputError(f"{name} must be {kind}, got {value!r}")
    return StabilitySettings(**{k: int(v) if k in whole else float(v) for k, v in values.items()})


def _validate(calculator: object, seed: object, s: StabilitySettings) -> None:
    """Refuse bad input, naming the problem, before any MD."""
    if not isinstance(seed, Atoms):
        raise InputError(f"the seed must be an ase.Atoms, not {type(seed).__name__}")
    if len(seed) < 2:
        raise InputError(f"the seed structure needs at least 2 atoms, it has {len(seed)}")
    if not (_is_calculator(calculator) or callable(calculator)):
        raise InputError(
            "calculator must be an ASE calculator or a zero-argument function returning one, "
            f"not {type(calculator).__name__}"
        )
    if s.trajectories < 1:
        raise InputError(f"trajectories must be at least 1, got {s.trajectories}")
    if s.check_every < 1:
        raise InputError(f"check_every must be at least 1, got {s.check_every}")
    if s.rng_seed < 0:
        raise InputError(f"rng_seed must be zero or positive, got {s.rng_seed}")
    for name in ("temperature", "picoseconds", "timestep", "max_energy_rise"):
        value = getattr(s, name)
        if not (np.isfinite(value) and value > 0):
            raise InputError(f"{name} must be positive, got {value}")
    for name in ("friction", "min_distance"):
        value = getattr(s, name)
        if not (np.isfinite(value) and value >= 0):
            raise InputError(f"{name} must be zero or positive, got {value}")
    reason = invalid_reason(seed, None, s.min_distance)
    if reason:
        raise InputError(f"the seed structure is unphysical: {reason}")


def _is_calculator(obj: object) -> bool:
    """An ASE calculator instance (a calculator class counts as a factory)."""
    return not isinstance(obj, type) and (
        isinstance(obj, BaseCalculator) or hasattr(obj, "get_potential_energy")
    )


def _calculator_source(calculator: CalculatorSource) -> Callable[[], BaseCalculator]:
    """A function giving the calculator for the next trajectory."""
    if not _is_calculator(calculator):

        def fresh() -> BaseCalculator:
            made = calculator()
            if not _is_calculator(made):
                raise InputError(
                    f"the calculator factory returned {type(made).__name__}, not an ASE calculator"
                )
            return made

        return fresh

    def shared() -> BaseCalculator:
        reset = getattr(calculator, "reset", None)
        if callable(reset):
            reset()
        return calculator

    return shared


# --- one trajectory -----------------------------------------------------------------------


def _trajectory(
    index: int,
    calculator: BaseCalculator,
    seed: Atoms,
    reference: frozenset[tuple[int, int]],
    s: StabilitySettings,
    rng: np.random.Generator,
    advance: Callable[[int], None],
) -> TrajectoryStability:
    """Run one trajectory until it fails or has run ``s.steps`` steps."""
    atoms = Atoms(
        seed.numbers, seed.positions, cell=seed.cell, pbc=seed.pbc, masses=seed.get_masses()
    )
    atoms.calc = calculator
    dyn = langevin(atoms, s.temperature, s.timestep, s.friction, rng)

    def failed(reason: str) -> TrajectoryStability:
        ps = dyn.nsteps * s.timestep / 1000.0
        return TrajectoryStability(index, False, ps, reason, dyn.nsteps)

    with np.errstate(all="ignore"):  # a blow-up is reported, not warned about
        try:
            start = _total_energy(atoms)
        except Exception as err:  # whatever the calculator raises fails the trajectory
            return failed(_calculator_error(atoms, err))
        if not np.isfinite(start):
            return failed("non-finite energy at the start")
        while dyn.nsteps < s.steps:
            done = dyn.nsteps
            try:
                dyn.run(min(s.check_every, s.steps - done))
                energy = _total_energy(atoms)
                forces = atoms.get_forces(apply_constraint=False)
            except Exception as err:
                advance(dyn.nsteps - done)
                return failed(_calculator_error(atoms, err))
            advance(dyn.nsteps - done)
            reason = _failure(atoms, energy, forces, start, reference, s)
            if reason:
                return failed(reason)
    return TrajectoryStability(index, True, None, None, dyn.nsteps)


def _total_energy(atoms: Atoms) -> float:
    return float(atoms.get_potential_energy() + atoms.get_kinetic_energy())


def _calculator_error(atoms: Atoms, err: Exception) -> str:
    reason = f"calculator error: {type(err).__name__}: {err}"
    if not np.isfinite(atoms.positions).all():
        return f"non-finite positions ({reason})"
    return reason


def _failure(
    atoms: Atoms,
    energy: float,
    forces: np.ndarray,
    start: float,
    reference: frozenset[tuple[int, int]],
    s: StabilitySettings,
) -> str | None:
    """Why the trajectory failed at this frame, or None. Checked in order: non-finite
    values, close contact, energy rise, bond graph."""
    if not np.isfinite(atoms.positions).all():
        return "non-finite positions"
    if not np.isfinite(forces).all():
        return "non-finite forces"
    if not np.isfinite(energy):
        return "non-finite energy"
    if min_distance(atoms) < s.min_distance:
        i, j, d = _closest_pair(atoms)
        return f"atoms {i} and {j} at {d:.2f} Å"
    rise = (energy - start) / len(atoms)
    if rise > s.max_energy_rise:
        return f"energy rose {rise:.1f} eV/atom"
    return _bond_change(reference, bond_graph(atoms))


def _closest_pair(atoms: Atoms) -> tuple[int, int, float]:
    d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    i, j = np.triu_indices(len(atoms), 1)
    k = int(d[i, j].argmin())
    return int(i[k]), int(j[k]), float(d[i[k], j[k]])


def _bond_change(
    reference: frozenset[tuple[int, int]], bonds: frozenset[tuple[int, int]]
) -> str | None:
    """The change, e.g. "bond broken: 0-3; bond formed: 2-7" (a few of each named), or None."""
    parts = []
    for what, pairs in (("broken", reference - bonds), ("formed", bonds - reference)):
        if pairs:
            named = ", ".join(f"{i}-{j}" for i, j in sorted(pairs)[:MAX_BONDS_NAMED])
            extra = len(pairs) - MAX_BONDS_NAMED
            parts.append(f"bond {what}: {named}" + (f" (+{extra} more)" if extra > 0 else ""))
    return "; ".join(parts) or None


# --- progress -----------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Callable[[int], None]]:
    """A function advancing a rich progress bar by some steps (a no-op when disabled)."""
    if not enabled:
        yield lambda steps: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=True,
    )
    with bar:
        task = bar.add_task("MD stability", total=total)
        yield lambda steps: bar.advance(task, steps)
