"""Soak: a campaign killed with SIGKILL at random moments in every stage, resumed after
each kill, run to the end, and compared with an uninterrupted run of the same campaign.

    .venv/bin/python bench/soak.py                 # 30 kill targets; bench/results/soak.*
    .venv/bin/python bench/soak.py --kills 4 --rounds 1 --no-probes

The campaign labels at GFN2-xTB (milliseconds a label, so labelling is cheap enough to be
killed many times) on local threads, with the smallest model, scaling probes and a
report each round. Both runs share one Prefect server, started here on 127.0.0.1.

First the uninterrupted run, whose stage clocks (``round-NNN/clock.json``) give each
stage's duration. Then the soak run: kill targets are drawn per stage (exploration,
selection, labelling, training, evaluation, scaling probes, report) at a random moment
within the stage's duration, in the order the campaign meets them; the driver watches the
clocks and sends SIGKILL to the campaign's process group at that moment, checks the
store, and starts the campaign again.

Checked after every kill: each label stored before it is still there with the same
energy and run id; and, from the batch's audit file (``SAPIS_LABEL_AUDIT``), no label
stored by then was computed again later. At the end: the store (rows,
levels, splits, rounds, energies) and the report's round table (without its times)
equal the uninterrupted run's, and each round selected the same structures (hashes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAPIS = Path(sys.executable).parent / "sapis"
AUDIT_ENV = "SAPIS_LABEL_AUDIT"  # sapis.dft.batch.AUDIT_ENV (not imported: --help stays quick)
STAGES = ("select", "explore", "label", "train", "evaluate", "scaling", "report")
ORDER = {  # the order a round meets its stages
    0: ("select", "label", "train", "evaluate", "scaling", "report"),
    1: ("explore", "select", "label", "train", "evaluate", "scaling", "report"),
}


def stage_order(r: int) -> tuple[str, ...]:
    return ORDER[0] if r == 0 else ORDER[1]


# --- the campaign ---------------------------------------------------------------------


def write_campaign(folder: Path, rounds: int = 3, probes: bool = True, short: bool = False) -> Path:
    """A small GFN2-xTB campaign on ethanol in ``folder`` (``short``: smaller still, for
    the test suite); returns its YAML file."""
    import ase.io
    import yaml
    from ase.build import molecule

    folder.mkdir(parents=True, exist_ok=True)
    ase.io.write(folder / "seed.xyz", molecule("CH3CH2OH"))
    config = {
        "system": {"structures": "seed.xyz"},
        "dft": {"program": "xtb", "method": "GFN2-xTB"},
        "executor": {"profile": "threads", "workers": 1},
        "database": "campaign/data.db",
        "split": {"val": 0.2, "test": 0.2},
        "pretrain": {"displaced": 16 if short else 24, "rattle": 0.1},
        "training": {"size": "xs", "members": 2, "max_epochs": 5 if short else 12, "patience": 4},
        "explore": {
            "temperatures": [300.0, 600.0],
            "steps": 60 if short else 120,
            "sample_every": 4,
            "stop_force_dev": 1000.0,
            "check_bonds": False,
        },
        "selection": {"policy": "lcmd", "labels_per_round": 8 if short else 12},
        "stop": {"max_rounds": rounds, "accurate_fraction": 1.0, "accurate_rounds": 9},
        # pinned: the decision itself weighs measured seconds, which differ run to run;
        # the probes, fits and decisions still run every round
        "scaling": {
            "enabled": True,
            "probes": probes,
            "pin_size": True,
            "pin_labels": True,
            "floor_margin": 0.0,
            "bootstrap": 20,
        },
    }
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """A Prefect server on 127.0.0.1 (:mod:`sapis.flows.server`) with its own home for
    the runs; its API URL."""
    from sapis.flows.server import start_server, stop_server

    saved = {k: os.environ.get(k) for k in ("PREFECT_HOME", "PREFECT_API_URL")}
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.pop("PREFECT_API_URL", None)
    home.mkdir(parents=True, exist_ok=True)
    try:
        process, port = start_server(log=home / "server.log", timeout=300)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        stop_server(process)


# --- watching and killing -------------------------------------------------------------


def running_stage(campaign: Path, since: float) -> tuple[int, str] | None:
    """(round, stage) the campaign in ``campaign`` runs now, by its stage clocks written
    after ``since`` (Unix time; older clocks are a killed run's)."""
    for clock in sorted(campaign.glob("round-*/clock.json"), reverse=True):
        with contextlib.suppress(OSError, ValueError):
            if clock.stat().st_mtime < since:
                continue
            stage = json.loads(clock.read_text()).get("stage")
            if stage:
                return int(clock.parent.name.split("-")[1]), stage
    return None


@dataclass
class Run:
    """One start of the campaign: how it ended, and the stages it was seen in."""

    exit_code: int | None = None
    killed: tuple[int, str] | None = None  # (round, stage) at the kill
    kill_offset: float = 0.0
    seconds: float = 0.0
    seen: dict[str, float] = field(default_factory=dict)  # "r:stage" -> seconds seen


@dataclass
class Target:
    round: int
    stage: str
    offset: float  # seconds into the stage


def start_campaign(config: Path, env: dict, log: Path) -> subprocess.Popen:
    with log.open("a") as out:
        return subprocess.Popen(
            [SAPIS, "campaign", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def position(r: int, stage: str) -> tuple[int, int]:
    """Where a stage comes in the campaign: (round, its place in the round)."""
    return r, stage_order(r).index(stage)


def watch(
    config: Path, env: dict, log: Path, targets: list[Target] | None = None, poll: float = 0.01
) -> Run:
    """Run the campaign until it ends, or until the first of ``targets`` it meets: at
    ``offset`` seconds into that stage its process group gets SIGKILL. Targets the run
    passes without meeting them (a stage that ended sooner) are dropped from the list."""
    targets = targets if targets is not None else []
    campaign = config.parent / "campaign"
    since = time.time() - 0.01
    started = time.monotonic()
    proc = start_campaign(config, env, log)
    run = Run()
    entered: float | None = None
    last, last_t = None, time.monotonic()
    while proc.poll() is None:
        now = time.monotonic()
        current = running_stage(campaign, since)
        if last is not None:
            key = f"{last[0]}:{last[1]}"
            run.seen[key] = run.seen.get(key, 0.0) + now - last_t
        if current != last:
            entered = now
        last, last_t = current, now
        if current is not None:
            here = position(*current)
            while targets and position(targets[0].round, targets[0].stage) < here:
                targets.pop(0)  # passed without meeting it
            target = targets[0] if targets else None
            if (
                target
                and (target.round, target.stage) == current
                and now - entered >= target.offset
            ):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                run.killed, run.kill_offset = current, round(now - entered, 3)
                targets.pop(0)
                break
        time.sleep(poll)
    run.exit_code = proc.wait()
    run.seconds = round(time.monotonic() - started, 2)
    return run


def plan_kills(durations: dict[str, float], kills: int, rng: random.Random) -> list[Target]:
    """``kills`` targets cycling through the stages (each at a random round that has it
    and a random moment within its duration), in the order the campaign meets them."""
    by_stage: dict[str, list[int]] = {}
    for key, seconds in durations.items():
        r, stage = key.split(":")
        if seconds > 0:
            by_stage.setdefault(stage, []).append(int(r))
    stages = [s for s in STAGES if s in by_stage]
    targets = []
    for k in range(kills):
        stage = stages[k % len(stages)]
        r = rng.choice(sorted(by_stage[stage]))
        offset = rng.uniform(0.0, 0.9) * durations[f"{r}:{stage}"]
        targets.append(Target(r, stage, round(offset, 3)))
    return sorted(targets, key=lambda t: (t.round, stage_order(t.round).index(t.stage)))


# --- what the store and the report say ------------------------------------------------


def labels(db: Path) -> dict[str, tuple]:
    """unique_id -> (row id, energy, run) of every labelled row."""
    from sapis.store import DatasetStore

    if not db.exists():
        return {}
    store = DatasetStore(db)
    return {
        r.unique_id: (r.id, float(r.energy), r.get("run"))
        for r in store.db.select(status="labelled", include_data=False)
    }


def computed(audit: Path) -> list[int]:
    """Row ids of every label computation so far, in order (the batch's audit file)."""
    if not audit.is_file():
        return []
    return [int(line.split()[0]) for line in audit.read_text().splitlines() if line.strip()]


def store_view(db: Path) -> dict[str, tuple]:
    """unique_id -> (status, level, split, round, energy) of every row."""
    from sapis.store import DatasetStore

    store = DatasetStore(db)
    out = {}
    for r in store.db.select(include_data=False):
        energy = float(r.energy) if r.get("status") == "labelled" else None
        out[r.unique_id] = (r.get("status"), r.get("level"), r.get("split"), r.get("round"), energy)
    return out


def report_view(campaign: Path) -> list[dict]:
    """The round table without what differs from run to run (seconds, attempts)."""
    from sapis.campaign.folder import CampaignFolder
    from sapis.campaign.report import round_table

    rows = round_table(CampaignFolder(campaign).records())
    timed = {"DFT s", "attempts"}
    return [
        {k: v for k, v in row.items() if k not in timed and not k.endswith(" s")} for row in rows
    ]


def selected_hashes(campaign: Path) -> dict[str, list[str]]:
    from sapis.io import read_frames
    from sapis.structures import structure_hash

    return {
        path.parent.name: sorted(structure_hash(a) for a in read_frames(path))
        for path in sorted(campaign.glob("round-*/selected.extxyz"))
    }


def differences(a: dict, b: dict, what: str) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b), key=str):
        if a.get(key) != b.get(key):
            out.append(f"{what} {key}: {a.get(key)!r} != {b.get(key)!r}")
    return out


# --- the soak -------------------------------------------------------------------------


def soak(
    workdir: Path,
    kills: int = 30,
    rounds: int = 3,
    probes: bool = True,
    seed: int = 0,
    short: bool = False,
) -> dict:
    """The uninterrupted run and the soak run in ``workdir``; returns the figures and
    every broken invariant (``problems``, empty when all held)."""
    rng = random.Random(seed)
    workdir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    with prefect_server(workdir / "prefect") as api:
        env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        env.pop(AUDIT_ENV, None)
        base_config = write_campaign(workdir / "uninterrupted", rounds, probes, short)
        base = watch(base_config, env, workdir / "uninterrupted.log")
        if base.exit_code != 0:
            raise RuntimeError(f"the uninterrupted run failed; see {workdir}/uninterrupted.log")
        targets = plan_kills(base.seen, kills, rng)

        config = write_campaign(workdir / "soak", rounds, probes, short)
        db = config.parent / "campaign" / "data.db"
        log = workdir / "soak.log"
        audit = workdir / "computed.txt"  # each label computation appends its row id
        env = {**env, AUDIT_ENV: str(audit)}
        runs: list[Run] = []
        stored: dict[str, tuple] = {}
        checkpoints: list[tuple[int, set[int]]] = []  # (computations, labelled rows) at a kill
        while targets:
            run = watch(config, env, log, targets)
            runs.append(run)
            now = labels(db)
            checkpoints.append((len(computed(audit)), {v[0] for v in now.values()}))
            lost = [k for k in stored if k not in now]
            changed = [k for k in stored if k in now and now[k] != stored[k]]
            problems += [f"kill {len(runs)}: label {k} lost" for k in lost]
            problems += [
                f"kill {len(runs)}: label {k} changed {stored[k]} -> {now[k]}" for k in changed
            ]
            stored.update(now)
            if run.killed is None:
                if run.exit_code != 0:
                    problems.append(f"run {len(runs)} failed with exit code {run.exit_code}")
                break  # the campaign finished before the remaining targets
        final = watch(config, env, log)
        runs.append(final)
        if final.exit_code != 0:
            problems.append(f"the final run failed with exit code {final.exit_code}")
        now = labels(db)
        problems += [f"final: label {k} lost or changed" for k in stored if now.get(k) != stored[k]]
        rows = computed(audit)
        again = sorted({row for n, done in checkpoints for row in rows[n:] if row in done})
        problems += [f"row {row} labelled again after it was stored" for row in again]

    base_campaign, soak_campaign = base_config.parent / "campaign", config.parent / "campaign"
    problems += differences(store_view(base_campaign / "data.db"), store_view(db), "row")
    problems += differences(
        selected_hashes(base_campaign), selected_hashes(soak_campaign), "selected in"
    )
    base_rows, soak_rows = report_view(base_campaign), report_view(soak_campaign)
    problems += differences(dict(enumerate(base_rows)), dict(enumerate(soak_rows)), "report round")
    killed = [r for r in runs if r.killed is not None]
    by_stage: dict[str, int] = {}
    for r in killed:
        by_stage[r.killed[1]] = by_stage.get(r.killed[1], 0) + 1
    return {
        "targets": kills,
        "kills": len(killed),
        "kills_by_stage": by_stage,
        "kills_at": [f"round {r.killed[0]} {r.killed[1]} +{r.kill_offset:.2f} s" for r in killed],
        "starts": len(runs),
        "uninterrupted_seconds": base.seconds,
        "soak_seconds": round(sum(r.seconds for r in runs), 1),
        "labels": len(now),
        "label_computations": len(rows),
        "rows": len(store_view(db)),
        "records": len(soak_rows),
        "test_force_mae_meV": soak_rows[-1]["test force MAE (meV/Å)"] if soak_rows else None,
        "attempts": _attempts(soak_campaign),
        "problems": problems,
    }


def _attempts(campaign: Path) -> dict[str, int]:
    from sapis.campaign.folder import CampaignFolder

    return {f"round {r.round}": r.attempts for r in CampaignFolder(campaign).records()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--kills", type=int, default=30, help="Kill targets (a stage that ends sooner is missed)."
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-probes", dest="probes", action="store_false")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, help="Work in this folder and keep it.")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    from common import record, result_path, timestamp

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="sapis-soak-"))
    try:
        out = soak(workdir, args.kills, args.rounds, args.probes, args.seed)
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    row = {"time": timestamp(), **vars(args), "keep": None, **out}
    record("soak", row)
    write_page(row, result_path("soak.md"))
    print(json.dumps(out, indent=1))
    if out["problems"]:
        sys.exit(1)


def write_page(row: dict, path: Path) -> None:
    """The result page: the figures of the latest soak."""
    lines = [
        "# Soak: a GFN2-xTB campaign killed with SIGKILL across every stage",
        "",
        f"Recorded {row['time']} by `bench/soak.py` ({row['rounds']} refinement rounds, "
        f"probes {'on' if row['probes'] else 'off'}, seed {row['seed']}).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| kill targets drawn / kills (SIGKILL to the campaign's process group) | "
        f"{row['targets']} / {row['kills']} |",
        f"| kills by stage | {', '.join(f'{k} {v}' for k, v in row['kills_by_stage'].items())} |",
        f"| starts of `sapis campaign` | {row['starts']} |",
        f"| labels lost | {sum('lost' in p for p in row['problems'])} |",
        f"| labels changed | {sum('changed' in p for p in row['problems'])} |",
        f"| labels computed again after they were stored | "
        f"{sum('labelled again' in p for p in row['problems'])} |",
        f"| differences from the uninterrupted run | {len(row['problems'])} |",
        f"| labelled rows at the end | {row['labels']} |",
        f"| label computations (a label cut short by a kill is computed again) | "
        f"{row['label_computations']} |",
        f"| attempts per round | {', '.join(f'{k}: {v}' for k, v in row['attempts'].items())} |",
        f"| wall time, uninterrupted | {row['uninterrupted_seconds']:.0f} s |",
        f"| wall time, soak (all starts) | {row['soak_seconds']:.0f} s |",
        "",
        "Kill moments: " + "; ".join(row["kills_at"]) + ".",
        "",
    ]
    if row["problems"]:
        lines += ["Problems:", "", *[f"- {p}" for p in row["problems"]], ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
