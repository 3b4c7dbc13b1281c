"""ASE calculator for an ensemble: mean energy and forces, uncertainty in ``results``.

With ``bias`` w > 0 (1/eV) it is the uncertainty-biased potential of exploration
(Kulichenko et al., Nat. Comput. Sci. 2023): E = Ē − w·σ²_E, so trajectories are pulled
toward where the members disagree; its forces add w·∂σ²_E/∂x
(:func:`~sapis.surrogate.guidance.energy_variance_gradient`).
"""

from ase.calculators.calculator import Calculator, all_changes

from sapis.errors import InputError
from sapis.surrogate.ensemble import Ensemble
from sapis.surrogate.guidance import energy_variance_gradient


class EnsembleCalculator(Calculator):
    """Ensemble-mean energy (eV) and forces (eV/Å), minus ``bias``·σ²_E when biased.

    ``results`` also holds ``energy_std``, ``forces_std`` (per-atom raw spread),
    ``forces_std_calibrated``, ``max_force_dev`` and ``max_force_dev_calibrated``.
    """

    implemented_properties = ("energy", "free_energy", "forces")

    def __init__(self, ensemble: Ensemble | str, bias: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        if not bias >= 0.0:
            raise InputError(f"the uncertainty bias must be >= 0 (1/eV), got {bias}")
        self.ensemble = ensemble if isinstance(ensemble, Ensemble) else Ensemble.load(ensemble)
        self.bias = bias

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        pred = self.ensemble.predict([self.atoms])
        std = pred.force_std(0)
        cal = pred.calibration
        energy, forces = float(pred.energy_mean[0]), pred.force_mean(0)
        if self.bias:
            energy -= self.bias * float(pred.energy_std[0]) ** 2
            forces = forces + self.bias * energy_variance_gradient(
                pred.energies[:, 0], pred.forces[0]
            )
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": forces,
            "energy_std": float(pred.energy_std[0]),
            "forces_std": std,
            "forces_std_calibrated": cal.forces(std),
            "max_force_dev": float(std.max()),
            "max_force_dev_calibrated": float(cal.forces(std).max()),
        }
