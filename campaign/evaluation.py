"""How good a round's ensemble is: ensemble-mean errors on the evaluation set, and the
parity plot of ``round-NNN/parity.png``."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms

from sapis.campaign.campaign import Campaign
from sapis.campaign.report import plot_parity
from sapis.surrogate.ensemble import Ensemble


def evaluate(ensemble_dir: Path, test: Sequence[Atoms]) -> dict:
    """Ensemble-mean errors on ``test``: force MAE (eV/Å), energy MAE (eV), and the
    reference and predicted values for a parity plot."""
    if not test:
        return {"force_mae": float("nan"), "energy_mae": float("nan"), "n": 0}
    pred = Ensemble.load(ensemble_dir).predict(test)
    ref_f = np.concatenate([a.get_forces().ravel() for a in test])
    pred_f = np.concatenate([pred.force_mean(i).ravel() for i in range(len(test))])
    n_atoms = np.array([len(a) for a in test])
    ref_e = np.array([a.get_potential_energy() for a in test])
    return {
        "force_mae": float(np.mean(np.abs(ref_f - pred_f))),
        "energy_mae": float(np.mean(np.abs(ref_e - pred.energy_mean))),
        "n": len(test),
        "parity": (ref_e / n_atoms, pred.energy_mean / n_atoms, ref_f, pred_f),
    }


def evaluate_round(campaign: Campaign, ensemble_dir: Path, r: int) -> dict:
    """Round ``r``'s test errors (force MAE eV/Å, energy MAE eV, count) on the campaign's
    evaluation set; the parity plot goes into the round's folder."""
    out = evaluate(ensemble_dir, campaign.evaluation_set())
    parity = out.pop("parity", None)
    if parity is not None:
        plot_parity(
            *parity,
            campaign.folder.round_dir(r) / "parity.png",
            title=f"round {r}: ensemble mean on {out['n']} test structures",
        )
    return out
