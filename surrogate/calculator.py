"""ASE calculator for an ensemble: mean energy and forces, uncertainty in ``results``."""

from ase.calculators.calculator import Calculator, all_changes

from sapis.surrogate.ensemble import Ensemble


class EnsembleCalculator(Calculator):
    """Ensemble-mean energy (eV) and forces (eV/Å).

    ``results`` also holds ``energy_std``, ``forces_std`` (per-atom raw spread),
    ``forces_std_calibrated``, ``max_force_dev`` and ``max_force_dev_calibrated``.
    """

    implemented_properties = ("energy", "free_energy", "forces")

    def __init__(self, ensemble: Ensemble | str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ensemble = ensemble if isinstance(ensemble, Ensemble) else Ensemble.load(ensemble)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        pred = self.ensemble.predict([self.atoms])
        std = pred.force_std(0)
        cal = pred.calibration
        self.results = {
            "energy": float(pred.energy_mean[0]),
            "free_energy": float(pred.energy_mean[0]),
            "forces": pred.force_mean(0),
            "energy_std": float(pred.energy_std[0]),
            "forces_std": std,
            "forces_std_calibrated": cal.forces(std),
            "max_force_dev": float(std.max()),
            "max_force_dev_calibrated": float(cal.forces(std).max()),
        }
