"""The generator against surrogate MD as a source of candidates, on rMD17 malonaldehyde.

Side by side in one run, with the same surrogate ensemble (trained here on rMD17 frames):

- surrogate MD (``sapis.surrogate.md.explore``, Langevin at 500 K, the rMD17 temperature);
- the generator trained with the feasibility penalty (λ = 0.1, the default) and without
  it (λ = 0), on the same 500 rMD17 frames for the same minutes, each sampled with and
  without the feasibility pulls on x̂0 (the prior at sampling time);
- the default generator steered toward ensemble disagreement (guided sampling).

Per source: milliseconds per sample, valid fraction (the shared validity filter), the
Wasserstein-1 distance between the surrogate energies of its valid samples and of the
rMD17 test frames (no DFT), the share in the trust window, and in-window candidates per
CPU-second (process CPU time of generation, validity checks and ensemble scoring; the
generator's training is listed apart). The trust window defaults to 0.05–1.5 eV/Å
(calibrated max force deviation), as in the demo: the ensemble here trains for minutes,
not hours. Goals: ≤ 10 ms per sample, ≥ 95 % valid, ≥ 2× MD's
in-window rate.

    .venv/bin/python bench/generator_sources.py [--minutes 3] [--samples 1000]

Appends to bench/results/generator_sources.jsonl; rewrites generator_sources.md and .png.
"""

import argparse
import tempfile
import time
from pathlib import Path

import common
import numpy as np
import torch
from ase import Atoms
from scipy.stats import wasserstein_distance

COLUMNS = [
    "source",
    "samples",
    "ms per sample",
    "valid %",
    "energy W1 (meV)",
    "in window %",
    "CPU-s",
    "in-window per CPU-s",
    "vs MD",
    "bond W1 mean (Å)",
    "training CPU-s",
]


def cpu_seconds() -> float:
    return time.process_time()


def score(ensemble, frames, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Surrogate mean energies (eV) and whether each frame is in the trust window."""
    prediction = ensemble.predict(frames)
    u = prediction.max_force_dev_calibrated
    return prediction.energy_mean, (u >= lo) & (u <= hi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="generator training")
    parser.add_argument("--ensemble-minutes", type=float, default=1.5, help="per member")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--md-steps", type=int, default=2000, help="per trajectory")
    parser.add_argument("--guidance", type=float, default=0.05, help="Å per step")
    parser.add_argument("--lo", type=float, default=0.05)
    parser.add_argument("--hi", type=float, default=1.5)
    args = parser.parse_args()

    from sapis.generator.model import molecule_frames
    from sapis.generator.quality import bond_w1, plot_bond_lengths
    from sapis.generator.settings import GeneratorConfig
    from sapis.generator.training import train_generator
    from sapis.io import read_rmd17
    from sapis.surrogate.ensemble import Ensemble
    from sapis.surrogate.ensemble_training import train_ensemble
    from sapis.surrogate.guidance import disagreement_guide
    from sapis.surrogate.md import explore
    from sapis.surrogate.settings import ExploreConfig, TrainingConfig
    from sapis.validity import ValidityFilter

    train = read_rmd17(common.TRAIN)
    test = read_rmd17(common.TEST)[:500]
    work = Path(tempfile.mkdtemp(prefix="generator-sources-"))
    training = TrainingConfig(size="s", members=3, max_minutes=args.ensemble_minutes, patience=40)
    train_ensemble(train[:200], train[200:250], work / "ensemble", training, progress=False)
    ensemble = Ensemble.load(work / "ensemble")
    reference_energies, _ = score(ensemble, test, args.lo, args.hi)
    _, data, _ = molecule_frames(train[:500])
    check = ValidityFilter.from_reference(train[0])

    rows, energies = [], {"rMD17 test (surrogate)": reference_energies}

    def source_row(source: str, n: int, valid: list, seconds: float, train_cpu: float) -> dict:
        """Score ``valid`` (n proposed in ``seconds``) with the ensemble; one row."""
        e, window = score(ensemble, valid, args.lo, args.hi)
        energies[source] = e
        positions = np.array([a.positions for a in valid]).reshape(-1, len(train[0]), 3)
        return {
            "source": source,
            "samples": n,
            "ms per sample": round(1000 * seconds / n, 2),
            "valid %": round(100 * len(valid) / n, 1),
            "energy W1 (meV)": round(1000 * wasserstein_distance(e, reference_energies), 1)
            if len(e)
            else "-",
            "in window %": round(100 * window.mean(), 1) if len(e) else 0.0,
            "in window": int(window.sum()),
            "bond W1 mean (Å)": round(
                float(np.mean(bond_w1(positions, data, sorted(check.bonds)))), 4
            )
            if len(valid)
            else "-",
            "training CPU-s": round(train_cpu) if train_cpu else "-",
        }

    # surrogate MD: four trajectories at 500 K from rMD17 frames; the frames' uncertainty
    # comes with the MD step, so only the MD itself is timed
    settings = ExploreConfig(temperatures=[500.0], steps=args.md_steps, sample_every=10)
    seeds = [train[k] for k in (0, 250, 500, 750)]
    c0, t0 = cpu_seconds(), time.perf_counter()
    md = explore(ensemble, seeds, settings, progress=False)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    unphysical = sum(t.stopped_by.startswith("unphysical") for t in md.trajectories)
    frames = [Atoms(a.numbers, a.positions) for a in md.candidates]
    rows.append(source_row("surrogate MD 500 K", len(frames) + unphysical, frames, seconds, 0))
    rows[-1]["CPU-s"] = round(cpu, 1)

    # (label, λ in training, feasibility pulls in sampling, guided)
    arms = {
        0.1: [
            ("generator: prior in training and sampling", 3, False),
            ("generator: prior in training only", 0, False),
            (f"generator: prior, guided {args.guidance} Å", 3, True),
        ],
        0.0: [("generator: no prior", 0, False), ("generator: prior in sampling only", 3, False)],
    }
    for weight, variants in arms.items():
        config = GeneratorConfig(max_minutes=args.minutes, prior_weight=weight)
        c0 = cpu_seconds()
        gen, _ = train_generator(train[:500], work / f"gen-{weight}", config)
        train_cpu = cpu_seconds() - c0
        for label, pulls, guided in variants:
            steer = disagreement_guide(ensemble, gen.numbers) if guided else None
            gen.meta["config"].update(
                guidance=args.guidance if guided else 0.0, feasibility_steps=pulls
            )
            c0, t0 = cpu_seconds(), time.perf_counter()
            samples = gen.sample(args.samples, seed=1, guide=steer)
            seconds = time.perf_counter() - t0
            valid, _ = check.split(samples)
            rows.append(source_row(label, args.samples, valid, seconds, train_cpu))
            rows[-1]["CPU-s"] = round(cpu_seconds() - c0, 1)
            if pulls and not guided:
                plot_bond_lengths(
                    np.array([a.positions for a in samples]),
                    data,
                    gen.numbers,
                    gen.bonds,
                    common.result_path(f"generator_bonds_lambda{weight}.png"),
                    labels=("rMD17", label),
                )
    md_rate = rows[0]["in window"] / rows[0]["CPU-s"]
    date = common.timestamp()
    for row in rows:
        row["in-window per CPU-s"] = round(row["in window"] / row["CPU-s"], 2)
        row["vs MD"] = round(row["in window"] / row["CPU-s"] / md_rate, 2) if md_rate else "-"
        row.update(
            date=date,
            threads=torch.get_num_threads(),
            generator_minutes=args.minutes,
            window=[args.lo, args.hi],
        )
        common.record("generator_sources", row)
        print(row)
    write_outputs(rows, energies)


def write_outputs(rows: list[dict], energies: dict[str, np.ndarray]) -> None:
    from sapis.campaign.report import markdown_table

    fig, ax = common.subplots(figsize=(6.5, 3.8))
    ref = energies["rMD17 test (surrogate)"]
    bins = np.linspace(ref.min() - 0.5, ref.max() + 1.0, 60)
    for name, e in energies.items():
        if len(e):
            style = {"alpha": 0.4} if name.startswith("rMD17") else {"histtype": "step", "lw": 1.4}
            ax.hist(np.clip(e, bins[0], bins[-1]), bins, density=True, label=name, **style)
    ax.set(xlabel="surrogate energy (eV)", ylabel="density", title="Energies of candidates")
    ax.legend(fontsize=7)
    common.save_figure(fig, "generator_sources")
    lines = [
        "# Generator against surrogate MD as a source of candidates (rMD17 malonaldehyde)",
        "",
        f"Run {rows[0]['date']}, {rows[0]['threads']} CPU threads; generators trained "
        f"{rows[0]['generator_minutes']} min each on 500 rMD17 frames; trust window "
        f"{rows[0]['window']} eV/Å (calibrated max force deviation). CPU-s: process CPU "
        "time of generation, validity filter and ensemble scoring.",
        "",
        *markdown_table(rows, COLUMNS),
        "",
        "![energies](generator_sources.png)",
        "",
    ]
    common.write_markdown("generator_sources", lines)


if __name__ == "__main__":
    main()
