"""The loop with and without generator proposals, labelled by PySCF at PBE/def2-SVP.

Both arms run the real campaign flow (Prefect, temporary server, Parsl threads, PySCF
PBE/def2-SVP with density fitting: the rMD17 level of theory) on malonaldehyde from the
same pretraining set (rMD17 train frames, whose labels are at that level), with the same
model size, ensemble, training budget, rounds and label budget. The only difference:
``generator.share`` (0 against the value given) and ``generator.kind`` (the diffusion
model or the normalizing flow, each trained the same minutes per round). Errors are
measured on the rMD17 test split. The rMD17 energies carry a constant offset of ~1 meV
against PySCF's, so only the force error is compared.

    .venv/bin/python bench/generator_loop.py [--rounds 3] [--labels 10] [--share 0.5]

Appends to bench/results/generator_loop.jsonl; rewrites generator_loop.md and .png.
"""

import argparse
import tempfile
import time
from pathlib import Path

import ase.io
import common
import yaml


def run_arm(name: str, share: float, args, root: Path, kind: str = "diffusion") -> dict:
    from sapis.campaign.folder import CampaignFolder
    from sapis.flows.campaign import campaign
    from sapis.flows.parameters import CampaignParameters
    from sapis.io import read_rmd17

    folder = root / name
    folder.mkdir(parents=True)
    train = read_rmd17(common.TRAIN)
    ase.io.write(folder / "pretrain.extxyz", train[: args.pretrain])
    ase.io.write(folder / "seeds.xyz", [train[k] for k in (500, 900)])
    config = {
        "system": {"structures": "seeds.xyz"},
        "dft": {"xc": "PBE", "basis": "def2-svp", "density_fit": True, "threads": args.threads},
        "executor": {"profile": "threads", "workers": 1},
        "test_file": str(common.TEST),
        "database": "data.db",
        "split": {"val": 0.15, "test": 0.0},
        "pretrain": {"labelled": "pretrain.extxyz", "displaced": 0},
        "training": {
            "size": args.size,
            "members": args.members,
            "max_minutes": args.minutes,
            "patience": 40,
        },
        "explore": {"temperatures": [500.0], "steps": args.md_steps, "sample_every": 10},
        "generator": {"share": share, "max_minutes": args.generator_minutes, "kind": kind},
        "selection": {"lo": 0.0, "hi": 3.0, "labels_per_round": args.labels},
        "stop": {"max_rounds": args.rounds},
        "scaling": {"enabled": False},  # the same model size in both arms
    }
    path = folder / "campaign.yaml"
    path.write_text(yaml.safe_dump(config))
    started = time.perf_counter()
    campaign(CampaignParameters(config=str(path)))
    records = CampaignFolder(folder).records()
    return {
        "date": common.timestamp(),
        "arm": name,
        "share": share,
        "kind": kind if share else "-",
        "size": args.size,
        "members": args.members,
        "minutes per member": args.minutes,
        "generator minutes": args.generator_minutes if share else 0,
        "labels per round": args.labels,
        "curve": [(r.labels, r.test_force_mae) for r in records],
        "by_source": [r.by_source for r in records[1:]],
        "dft seconds": round(sum(r.dft_seconds for r in records[1:]), 1),
        "explore seconds": round(sum(r.seconds.get("explore", 0) for r in records[1:]), 1),
        "wall seconds": round(time.perf_counter() - started, 1),
    }


def write_outputs() -> None:
    by_arm = common.latest(common.read_records("generator_loop"), "arm")
    fig, ax = common.subplots(figsize=(5.5, 3.8))
    for name, r in by_arm.items():
        labels, mae = zip(*r["curve"])
        ax.plot(labels, [1000 * m for m in mae], "o-", label=f"{name} (share {r['share']})")
    ax.set(xlabel="labels", ylabel="test force MAE (meV/Å)", title="rMD17 malonaldehyde")
    ax.legend(fontsize=8)
    common.save_figure(fig, "generator_loop")
    lines = [
        "# The loop with and without generator proposals (PySCF PBE/def2-SVP labels)",
        "",
        "Same pretraining (rMD17 train frames), model, ensemble, training budget, rounds and "
        "label budget; force MAE on the rMD17 test split (1000 frames) after each round. "
        "Per round, per source: valid / in the trust window / selected.",
        "",
        "| arm | date | share | kind | size | K | min/member | labels → force MAE (meV/Å) "
        "| sources per round | DFT s | explore s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in by_arm.items():
        curve = ", ".join(f"{n} → {1000 * m:.1f}" for n, m in r["curve"])
        sources = "; ".join(
            " ".join(
                f"{src} {c.get('valid', '?')}/{c.get('candidate', 0)}/{c.get('selected', 0)}"
                for src, c in sorted(by.items())
            )
            for by in r["by_source"]
        )
        lines.append(
            f"| {name} | {r['date'][:10]} | {r['share']} | {r.get('kind', 'diffusion')} | "
            f"{r['size']} | {r['members']} | "
            f"{r['minutes per member']} | {curve} | {sources} | {r['dft seconds']} | "
            f"{r['explore seconds']} | {r['wall seconds']} |"
        )
    lines += ["", "![learning curves](generator_loop.png)", ""]
    common.write_markdown("generator_loop", lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--labels", type=int, default=10, help="per round")
    parser.add_argument("--pretrain", type=int, default=20, help="rMD17 frames")
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--size", default="s")
    parser.add_argument("--members", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=0.5, help="per member and round")
    parser.add_argument("--generator-minutes", type=float, default=1.0, help="per round")
    parser.add_argument("--md-steps", type=int, default=400)
    parser.add_argument("--threads", type=int, default=2, help="PySCF threads")
    parser.add_argument(
        "--arms", nargs="+", default=["generator", "md"], choices=["generator", "flow", "md"]
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="generator-loop-"))
    arms = {
        "generator": ("MD + generator", args.share, "diffusion"),
        "flow": ("MD + flow", args.share, "flow"),
        "md": ("MD only", 0.0, "diffusion"),
    }
    for name, share, kind in (arms[a] for a in args.arms):
        row = run_arm(name, share, args, root, kind)
        print(row)
        common.record("generator_loop", row)
    write_outputs()


if __name__ == "__main__":
    main()
