"""Benchmark worlds where every proposal can be labelled: GFN2-xTB as the ground truth.

For each molecule (rMD17 malonaldehyde, uracil; the seed is the first sample frame,
relaxed at GFN2-xTB) the world holds

- test sets: xTB Langevin MD at 300 and 500 K and a hotter 800 K set (out of
  distribution), frames every ``--test-every`` steps after a picosecond of equilibration;
- a pool: an xTB AIMD run at 500 K, every ``--pool-every`` step kept (the rMD17 way);
  its oracle calls (every MD step) are reported beside the arm that draws from it.

Arms, side by side at equal label counts, each for every seed:

- ``random``: uniform draws from the 500 K pool;
- ``aimd``: AIMD at equal oracle calls: the first N steps of a 500 K xTB trajectory
  from the seed, every step labelled;
- ``campaign``: the campaign's loop from the single seed (library calls, not the Prefect
  flow): displaced copies of the seed, then rounds of surrogate MD at 300 and 600 K,
  the default selection, xTB labels, retraining;
- ``campaign-warm``: the same, each round fine-tuned from the previous ensemble (as the
  Prefect campaign does); ``campaign-biased``: exploring with uncertainty-biased MD
  (``--bias``); ``random-nobootstrap``: the random arm with members on all the data;
- ``pool-<policy>``: pool-based active learning with each selection policy (the first
  batch random, then each round's batch chosen from the pool by the policy).

Every model is the same ensemble (``--size``, ``--members``) trained to convergence or
to ``--max-epochs`` (an epoch budget, reported per arm as the converged fraction).
Metrics per arm and label count: force MAE, RMSE, 99th percentile and max of the
component errors, the force MAE on the 5 % highest-energy 500 K test frames, and the
energy MAE, on each test set; and for the last count, the MD stability of the
potential: ``--stability-trajectories`` Langevin runs at 500 K from the seed,
``--stability-ps`` long.

    .venv/bin/python bench/al_worlds.py [--molecules malonaldehyde uracil] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.optimize import BFGS
from ase.parallel import DummyMPI
from common import DATA, read_records, record, result_path, timestamp, write_markdown

NAME = "al_worlds"
TIMESTEP = 0.5  # fs
TEMPERATURES = (300.0, 500.0, 800.0)


def xtb():
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def relaxed_seed(molecule: str) -> Atoms:
    from sapis.io import read_rmd17

    first = read_rmd17(DATA / f"rmd17_{molecule}_train_01.npz")[0]
    seed = Atoms(first.numbers, first.positions)
    seed.calc = xtb()
    BFGS(seed, logfile=None).run(fmax=0.02)
    seed.positions -= seed.get_center_of_mass()
    return Atoms(seed.numbers, seed.positions)


def xtb_md(
    seed: Atoms, temperature: float, steps: int, every: int, rng_seed: int, equilibrate: int = 0
) -> list[Atoms]:
    """Labelled frames of an xTB Langevin trajectory (every ``every`` steps after
    ``equilibrate`` steps); each frame carries its step."""
    atoms = seed.copy()
    atoms.calc = xtb()
    rng = np.random.default_rng(rng_seed)
    thermalize_momenta(atoms, temperature, comm=DummyMPI(), rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    dyn = Langevin(
        atoms, TIMESTEP * units.fs, temperature_K=temperature, friction=0.01 / units.fs, rng=rng
    )
    dyn.comm = DummyMPI()
    frames: list[Atoms] = []

    def keep() -> None:
        if dyn.nsteps >= equilibrate and (dyn.nsteps - equilibrate) % every == 0:
            frame = Atoms(atoms.numbers, atoms.positions.copy())
            frame.calc = SinglePointCalculator(
                frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces().copy()
            )
            frame.info.update(step=dyn.nsteps, temperature=temperature)
            frames.append(frame)

    dyn.attach(keep, interval=1)
    dyn.run(steps + equilibrate)
    return frames


def labelled(images: list[Atoms]) -> list[Atoms]:
    """``images`` with xTB energies and forces."""
    from sapis.dft.settings import DFTSettings
    from sapis.dft.xtb import label_xtb

    settings = DFTSettings(program="xtb")
    out = []
    for atoms in images:
        result = label_xtb(atoms, settings)
        if not result.converged:
            continue
        frame = Atoms(atoms.numbers, atoms.positions)
        frame.calc = SinglePointCalculator(frame, energy=result.energy, forces=result.forces)
        frame.info.update({k: v for k, v in atoms.info.items() if k in ("source", "step")})
        out.append(frame)
    return out


def split(frames: list[Atoms], rng: np.random.Generator) -> tuple[list[Atoms], list[Atoms]]:
    """80 / 20 train / validation (validation ≥ 2 frames)."""
    order = rng.permutation(len(frames))
    n_val = max(2, round(0.2 * len(frames)))
    return [frames[i] for i in order[n_val:]], [frames[i] for i in order[:n_val]]


def train(frames, folder: Path, args, seed: int, parent=None, bootstrap: bool = True):
    """An ensemble on ``frames`` (80 / 20 train / validation), fine-tuned from ``parent``
    (an ensemble folder) when given."""
    from sapis.surrogate.ensemble import Ensemble
    from sapis.surrogate.ensemble_training import train_ensemble
    from sapis.surrogate.settings import TrainingConfig

    config = TrainingConfig(
        size=args.size,
        members=args.members,
        max_epochs=args.max_epochs,
        patience=args.patience,
        seed=seed,
        batch_size=5,
        bootstrap=bootstrap,
    )
    tr, val = split(frames, np.random.default_rng(seed))
    manifest = train_ensemble(tr, val, folder, config, parent=parent, progress=False)
    return Ensemble.load(folder), manifest, tr


def errors(ensemble, tests: dict[float, list[Atoms]]) -> dict:
    out: dict = {}
    for t, frames in tests.items():
        pred = ensemble.predict(frames)
        ref_f = np.concatenate([a.get_forces().ravel() for a in frames])
        got_f = np.concatenate([pred.force_mean(i).ravel() for i in range(len(frames))])
        err = np.abs(got_f - ref_f)
        e_ref = np.array([a.get_potential_energy() for a in frames])
        e_err = np.abs(pred.energy_mean - e_ref)
        row = {
            "force_mae": float(err.mean()),
            "force_rmse": float(np.sqrt((err**2).mean())),
            "force_p99": float(np.quantile(err, 0.99)),
            "force_max": float(err.max()),
            "energy_mae": float(e_err.mean()),
            "energy_bias": float(np.mean(pred.energy_mean - e_ref)),
        }
        if t == 500.0:
            top = np.argsort(e_ref)[-max(1, len(frames) // 20) :]
            row["force_mae_high_energy"] = float(
                np.mean([np.abs(pred.force_mean(i) - frames[i].get_forces()).mean() for i in top])
            )
        out[f"{t:g}K"] = row
    return out


def stability(ensemble, seed: Atoms, args, rng_seed: int) -> dict:
    from sapis.surrogate.calculator import EnsembleCalculator
    from sapis.surrogate.stability import check_stability

    result = check_stability(
        lambda: EnsembleCalculator(ensemble),
        seed,
        temperature=500.0,
        trajectories=args.stability_trajectories,
        picoseconds=args.stability_ps,
        rng_seed=rng_seed,
    )
    d = result.to_dict()
    return {
        k: d[k]
        for k in ("survived_fraction", "first_failure_ps", "median_time_to_failure_ps")
        if k in d
    }


def _others(frames: list[Atoms], train_set: list[Atoms]) -> list[Atoms]:
    """The frames of ``frames`` not in ``train_set`` (the validation split)."""
    ids = {id(a) for a in train_set}
    return [a for a in frames if id(a) not in ids]


def choose(ensemble, frames, train_set, val_set, budget, policy, seed, stored=None):
    """The campaign's selection step: the quantile trust window (lo: the 0.9 quantile of
    the validation uncertainty, hi: the 0.99 quantile of the frames'), then ``policy``."""
    from sapis.campaign.config import SelectionConfig
    from sapis.campaign.selection import FEATURE_POLICIES, select

    window = SelectionConfig()
    pred = ensemble.predict(frames, features=policy in FEATURE_POLICIES)
    pred.annotate(frames)
    known = None
    if pred.features is not None:
        known = ensemble.predict(train_set, features=True).features
    val_u = ensemble.predict(val_set).max_force_dev_calibrated
    u = pred.max_force_dev_calibrated
    lo = float(np.quantile(val_u, window.lo_quantile))
    hi = max(float(np.quantile(u, window.hi_quantile)), lo * 1.0001 + 1e-9)
    sel = select(
        frames,
        budget,
        lo,
        hi,
        policy,
        stored=stored,
        seed=seed,
        features=pred.features,
        known=known,
    )
    return sel.chosen


def pool_arm(policy, pool, world, args, seed, tmp: Path, rows_out):
    """Pool-based active learning with ``policy``: the first count drawn at random, each
    later batch chosen from the pool by the ensemble trained on what came before."""
    from sapis.structures import structure_hash

    rng = np.random.default_rng(seed)
    for a in pool:
        a.info.setdefault("hash", structure_hash(a))
    chosen = [pool[i] for i in rng.choice(len(pool), args.counts[0], replace=False)]
    ensemble, manifest, train_set = train(chosen, tmp / f"{policy}-{len(chosen)}", args, seed)
    rows_out.append(
        row(f"pool-{policy}", len(chosen), len(chosen), ensemble, manifest, world, args, seed)
    )
    for k, n in enumerate(args.counts[1:], start=1):
        stored = {a.info["hash"] for a in chosen}
        rest = [a.copy() for a in pool if a.info["hash"] not in stored]
        picked = choose(
            ensemble,
            rest,
            train_set,
            _others(chosen, train_set),
            n - len(chosen),
            policy,
            seed + k,
            stored,
        )
        hashes = {a.info["hash"] for a in picked}
        chosen += [a for a in pool if a.info["hash"] in hashes]
        ensemble, manifest, train_set = train(chosen, tmp / f"{policy}-{n}", args, seed)
        rows_out.append(row(f"pool-{policy}", n, n, ensemble, manifest, world, args, seed))
    return ensemble


def campaign_arm(world, args, seed, tmp: Path, rows_out, arm: str = "campaign"):
    """The campaign's loop from the single seed with its default selection settings;
    ``campaign-warm`` fine-tunes each round from the previous ensemble (as the Prefect
    campaign does), ``campaign-biased`` explores with uncertainty-biased MD."""
    from sapis.campaign.config import SelectionConfig
    from sapis.surrogate.md import explore
    from sapis.surrogate.settings import ExploreConfig

    rng = np.random.default_rng(seed)
    seed_atoms = world["seed"]
    displaced = []
    for _ in range(args.counts[0]):
        copy = seed_atoms.copy()
        copy.positions += rng.normal(0.0, 0.05, copy.positions.shape)
        displaced.append(copy)
    data = labelled(displaced)
    calls = len(displaced)
    policy = args.campaign_policy or SelectionConfig().policy
    folder = tmp / f"{arm}-{len(data)}"
    ensemble, manifest, train_set = train(data, folder, args, seed)
    rows_out.append(row(arm, len(data), calls, ensemble, manifest, world, args, seed))
    for k, n in enumerate(args.counts[1:], start=1):
        settings = ExploreConfig(
            temperatures=[300.0, 600.0],
            steps=args.explore_steps,
            sample_every=10,
            stop_force_dev=3.0,
            seed=seed + k,
            bias=args.bias if arm == "campaign-biased" else 0.0,
        )
        frames = explore(ensemble, [seed_atoms], settings, round_=k, progress=False).candidates
        picked = (
            choose(
                ensemble,
                frames,
                train_set,
                _others(data, train_set),
                n - len(data),
                policy,
                seed + k,
            )
            if frames
            else []
        )
        calls += len(picked)
        data += labelled(picked)
        parent = folder if arm == "campaign-warm" else None
        folder = tmp / f"{arm}-{n}"
        ensemble, manifest, train_set = train(data, folder, args, seed, parent=parent)
        rows_out.append(row(arm, len(data), calls, ensemble, manifest, world, args, seed))
    return ensemble


def row(arm, labels, calls, ensemble, manifest, world, args, seed) -> dict:
    return {
        "molecule": world["molecule"],
        "arm": arm,
        "seed": seed,
        "labels": labels,
        "oracle_calls": calls,
        "converged": f"{manifest.converged_members}/{len(manifest.members)}",
        "epochs": [m.epochs for m in manifest.members],
        "errors": errors(ensemble, world["tests"]),
    }


def build_world(molecule: str, args) -> dict:
    started = time.perf_counter()
    seed = relaxed_seed(molecule)
    steps = round(args.test_ps * 1000 / TIMESTEP)
    equil = round(1000 / TIMESTEP)
    tests = {
        t: xtb_md(seed, t, steps, args.test_every, 100 + i, equil)
        for i, t in enumerate(TEMPERATURES)
    }
    pool_steps = round(args.pool_ps * 1000 / TIMESTEP)
    pool = xtb_md(seed, 500.0, pool_steps, args.pool_every, 7, equil)
    print(
        f"{molecule}: world built in {time.perf_counter() - started:.0f} s "
        f"({', '.join(f'{len(v)} at {t:g} K' for t, v in tests.items())}; pool {len(pool)} "
        f"frames from {pool_steps + equil} xTB MD steps)",
        flush=True,
    )
    return {
        "molecule": molecule,
        "seed": seed,
        "tests": tests,
        "pool": pool,
        "pool_calls": pool_steps + equil,
    }


def run(args) -> list[dict]:
    """Every arm for each seed and molecule (seeds outermost, so that a run cut short
    still covers every molecule); each result row is recorded as soon as it exists."""
    rows: list[dict] = []
    worlds = [build_world(molecule, args) for molecule in args.molecules]
    for seed in range(args.seeds):
        for world in worlds:
            molecule = world["molecule"]
            with tempfile.TemporaryDirectory() as tmp_name:
                tmp = Path(tmp_name)
                for arm in args.arms:
                    started = time.perf_counter()
                    out: list[dict] = []
                    if arm in ("random", "random-nobootstrap"):
                        rng = np.random.default_rng(seed)
                        order = rng.permutation(len(world["pool"]))
                        for n in args.counts:
                            ens, man, _ = train(
                                [world["pool"][i] for i in order[:n]],
                                tmp / f"{arm}-{n}",
                                args,
                                seed,
                                bootstrap=arm == "random",
                            )
                            out.append(
                                row(arm, n, world["pool_calls"], ens, man, world, args, seed)
                            )
                    elif arm == "aimd":
                        traj = xtb_md(world["seed"], 500.0, max(args.counts), 1, 1000 + seed)
                        for n in args.counts:
                            ens, man, _ = train(traj[:n], tmp / f"aimd-{n}", args, seed)
                            out.append(row("aimd", n, n, ens, man, world, args, seed))
                    elif arm.startswith("campaign"):
                        ens = campaign_arm(world, args, seed, tmp, out, arm)
                    else:
                        ens = pool_arm(
                            arm.removeprefix("pool-"), world["pool"], world, args, seed, tmp, out
                        )
                    if args.stability_trajectories:
                        out[-1]["stability"] = stability(ens, world["seed"], args, seed)
                    for r in out:
                        r.update(
                            seconds=round(time.perf_counter() - started, 1),
                            time=timestamp(),
                            settings=settings(args),
                        )
                        record(NAME, r)
                    rows += out
                    e = out[-1]["errors"]["500K"]
                    print(
                        f"{molecule} seed {seed} {arm}: {out[-1]['labels']} labels, "
                        f"500 K force MAE {1000 * e['force_mae']:.0f} meV/Å, "
                        f"p99 {1000 * e['force_p99']:.0f}, "
                        f"stability {out[-1].get('stability')}, "
                        f"{time.perf_counter() - started:.0f} s",
                        flush=True,
                    )
    return rows


def settings(args) -> dict:
    keys = (
        "size",
        "members",
        "max_epochs",
        "patience",
        "counts",
        "test_ps",
        "pool_ps",
        "stability_trajectories",
        "stability_ps",
        "explore_steps",
        "campaign_policy",
        "bias",
    )
    return {k: getattr(args, k) for k in keys}


def summarise(rows: list[dict]) -> None:
    """Markdown: mean ± spread over seeds per molecule, arm and count; and a figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    molecules = sorted({r["molecule"] for r in rows})
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    lines = [
        "# Benchmark worlds: GFN2-xTB ground truth, every arm side by side",
        "",
        f"Settings: `{json.dumps(rows[-1]['settings'])}`",
        "",
        "Errors in meV/Å (forces) and meV (energy): mean over seeds (min–max).",
        "",
    ]
    fig, axes = plt.subplots(
        1, len(molecules), figsize=(6 * len(molecules), 4.4), layout="constrained", squeeze=False
    )
    for ax, mol in zip(axes[0], molecules):
        lines += [
            f"## {mol}",
            "",
            "| arm | labels | oracle calls | converged | F MAE 300 K | "
            "F MAE 500 K | F RMSE 500 K | F p99 500 K | F max 500 K | F MAE top-5 % E | "
            "E MAE 500 K | F MAE 800 K | MD survival 500 K |",
            "|" + "---|" * 13,
        ]
        for arm in arms:
            mine = [r for r in rows if r["molecule"] == mol and r["arm"] == arm]
            counts = sorted({r["labels"] for r in mine})
            curve = []
            for n in counts:
                at = [r for r in mine if r["labels"] == n]

                def cell(t, key, at=at):
                    v = [1000 * r["errors"][t][key] for r in at if key in r["errors"][t]]
                    return f"{np.mean(v):.0f} ({min(v):.0f}–{max(v):.0f})" if v else "-"

                surv = [r["stability"]["survived_fraction"] for r in at if "stability" in r]
                conv = ", ".join(r["converged"] for r in at)
                calls = int(np.mean([r["oracle_calls"] for r in at]))
                lines.append(
                    f"| {arm} | {n} | {calls} | {conv} | {cell('300K', 'force_mae')} | "
                    f"{cell('500K', 'force_mae')} | {cell('500K', 'force_rmse')} | "
                    f"{cell('500K', 'force_p99')} | {cell('500K', 'force_max')} | "
                    f"{cell('500K', 'force_mae_high_energy')} | {cell('500K', 'energy_mae')} | "
                    f"{cell('800K', 'force_mae')} | "
                    f"{f'{100 * np.mean(surv):.0f} %' if surv else '-'} |"
                )
                curve.append(np.mean([1000 * r["errors"]["500K"]["force_mae"] for r in at]))
            ax.plot(counts, curve, "o-", label=arm)
        lines.append("")
        ax.set(
            xscale="log", yscale="log", xlabel="labels", ylabel="500 K force MAE (meV/Å)", title=mol
        )
        ax.legend(fontsize=8)
    fig.savefig(result_path(f"{NAME}.png"), dpi=120)
    lines += [f"![learning curves]({NAME}.png)", ""]
    write_markdown(NAME, lines)


def main() -> None:
    from tblite.ase import TBLite  # noqa: F401  (loaded first, so the thread limit reaches it)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)  # tblite's OpenMP: one thread is fastest for small molecules
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--molecules", nargs="+", default=["malonaldehyde", "uracil"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--counts", type=int, nargs="+", default=[25, 50, 100])
    parser.add_argument(
        "--arms",
        nargs="+",
        default=[
            "random",
            "aimd",
            "campaign",
            "pool-uncertainty",
            "pool-top-k",
            "pool-lcmd",
            "pool-maxdet",
        ],
    )
    parser.add_argument("--size", default="xs")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--max-epochs", type=int, default=400)
    parser.add_argument("--patience", type=int, default=30)
    parser.add_argument("--test-ps", type=float, default=5.0)
    parser.add_argument("--test-every", type=int, default=20)
    parser.add_argument("--pool-ps", type=float, default=10.0)
    parser.add_argument("--pool-every", type=int, default=10)
    parser.add_argument("--explore-steps", type=int, default=1000)
    parser.add_argument("--bias", type=float, default=10.0, help="campaign-biased, 1/eV")
    parser.add_argument(
        "--campaign-policy", help="selection of the campaign arm (default: the campaign's default)"
    )
    parser.add_argument("--stability-trajectories", type=int, default=8)
    parser.add_argument("--stability-ps", type=float, default=10.0)
    parser.add_argument(
        "--summarise", action="store_true", help="only rewrite the page from the recorded rows"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    rows = read_records(NAME) if args.summarise else run(args)
    summarise(rows)
    print(f"done in {time.perf_counter() - started:.0f} s", flush=True)


if __name__ == "__main__":
    main()
