"""Settings of the ``dft:`` section: the PySCF level of theory and the SCF fallback ladder."""

from typing import Literal

from pydantic import Field, field_validator

from sapis.config import Strict


class Rung(Strict):
    """One rung of the SCF fallback ladder.

    ``max_cycle`` None means ``dft.max_cycle``; ``damp`` is the Fock damping factor
    (applied until DIIS starts at ``diis_start_cycle``),
    ``level_shift`` in Hartree, ``second_order`` switches on PySCF's Newton (SOSCF)
    solver, ``init_guess`` is a PySCF initial guess name.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    max_cycle: int | None = Field(None, ge=1)
    damp: float = Field(0.0, ge=0.0, lt=1.0)
    diis_start_cycle: int = Field(1, ge=1)
    level_shift: float = Field(0.0, ge=0.0)
    second_order: bool = False
    init_guess: Literal["minao", "atom", "huckel", "1e", "sap"] = "minao"


DEFAULT_LADDER: tuple[Rung, ...] = (
    Rung(name="default"),
    Rung(name="damped", max_cycle=150, damp=0.5, diis_start_cycle=12),
    Rung(name="level_shift", max_cycle=150, level_shift=0.5),
    Rung(name="second_order", max_cycle=60, second_order=True),
    Rung(name="huckel_guess", max_cycle=60, second_order=True, init_guess="huckel"),
)


#: Tight-binding methods ``dft.program: xtb`` runs through tblite.
XTB_METHODS = ("GFN2-xTB", "GFN1-xTB")
#: Most threads one label may use (OpenMP runtimes crash far above a node's core count).
MAX_THREADS = 256

#: Fields only ``dft.program: xtb`` reads (PySCF's provenance leaves them out).
XTB_ONLY = frozenset({"program", "method", "accuracy", "electronic_temperature"})


class DFTSettings(Strict):
    """Settings of a label: the program, and its level of theory.

    ``program`` ``pyscf`` (the default) runs Kohn-Sham DFT at ``xc``/``basis``;
    ``xtb`` runs the semi-empirical tight-binding ``method`` (GFN2-xTB or GFN1-xTB) through
    tblite, in milliseconds instead of seconds, with ``accuracy`` (tblite's numerical
    accuracy factor, smaller is tighter) and ``electronic_temperature`` (K) for its SCF.
    The PySCF-only fields are ignored for xTB.

    ``conv_tol`` is the SCF energy convergence in Hartree, ``time_limit`` the wall-time
    limit of one label over all rungs in seconds, ``max_memory`` PySCF's memory in MB,
    ``max_basis_functions`` refuses larger structures before any label (PySCF's time
    grows with the cube of the basis functions: 5000 is hours to days on a node),
    ``threads`` the cores one label uses (the executors reserve that many per label; at
    most :data:`MAX_THREADS`; a campaign running labels on this machine checks that
    ``threads`` × ``executor.workers`` fits its cores).
    ``grid_response`` adds the derivative of the DFT grid weights to the forces, so they
    are the exact gradient of the energy and sum to zero (without it, a net force of a
    few meV/Å remains on a 9-atom molecule at grid level 3).
    """

    program: Literal["pyscf", "xtb"] = "pyscf"
    method: Literal[XTB_METHODS] = "GFN2-xTB"  # type: ignore[valid-type]
    accuracy: float = Field(1.0, gt=0.0, le=1000.0)
    electronic_temperature: float = Field(300.0, gt=0.0)
    xc: str = "PBE"
    basis: str = "def2-svp"
    density_fit: bool = True
    auxbasis: str | None = None
    conv_tol: float = Field(1.0e-9, gt=0.0, le=1.0e-4)
    max_cycle: int = Field(50, ge=1)
    grid_level: int = Field(3, ge=0, le=9)
    grid_response: bool = True
    threads: int = Field(1, ge=1, le=MAX_THREADS)
    max_memory: int = Field(4000, ge=100)
    max_basis_functions: int = Field(5000, ge=1)
    time_limit: float = Field(3600.0, gt=0.0)
    ladder: list[Rung] = Field(default_factory=lambda: list(DEFAULT_LADDER), min_length=1)

    @field_validator("xc")
    @classmethod
    def _known_xc(cls, xc: str) -> str:
        from pyscf.dft import libxc

        if not xc.strip():
            raise ValueError("empty: name a functional (PBE, B3LYP, ...)")
        try:
            libxc.parse_xc(xc)
        except Exception:
            raise ValueError(f"unknown exchange-correlation functional {xc!r}") from None
        return xc

    @field_validator("basis", "auxbasis")
    @classmethod
    def _known_basis(cls, basis: str | None) -> str | None:
        import warnings

        from pyscf.gto import basis as pyscf_basis

        if basis is None:
            return None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pyscf_basis.load(basis, "H")
            except Exception:
                raise ValueError(f"unknown basis set {basis!r}") from None
        return basis.lower()

    @field_validator("ladder")
    @classmethod
    def _unique_rungs(cls, ladder: list[Rung]) -> list[Rung]:
        names = [r.name for r in ladder]
        if len(set(names)) != len(names):
            raise ValueError(f"rung names must be unique, got {names}")
        return ladder

    @property
    def level_of_theory(self) -> str:
        """``XC/basis`` for PySCF (e.g. ``PBE/def2-svp``), the method for xTB (``GFN2-xTB``)."""
        if self.program == "xtb":
            return self.method
        return f"{self.xc.upper()}/{self.basis}"
