"""The universal teacher adapter: any ASE calculator becomes a :class:`Teacher`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import ase
import numpy as np
from ase.calculators.calculator import BaseCalculator, Calculator
from ase.stress import voigt_6_to_full_3x3_stress

from mlff_distiller.teachers.base import (
    LabellingError,
    Labels,
    check_elements,
    check_finite,
    describe_structure,
)


class ASECalculatorTeacher:
    """Label structures with an ASE calculator, one structure at a time.

    Each structure is labelled on a copy (the input is never modified and keeps no
    calculator), and the calculator is reset first, so a result cached for other positions
    is never returned. Stress is returned as a 3x3 matrix in eV/Å³ (ASE sign) for structures
    periodic along all three cell vectors, and ``None`` otherwise.

    Parameters
    ----------
    calc
        The ASE calculator; it must implement ``energy`` and ``forces``, and ``stress`` if
        fully periodic structures are labelled. Or a function without arguments that builds
        it when first needed (a teacher that labels in batches then loads no second model
        unless its calculator is asked for).
    name
        Registry name of the teacher.
    version
        Package and model version string stored with every label.
    elements
        Atomic numbers the calculator supports.
    cutoff
        Interaction cutoff in Å, or ``None`` when not defined.
    """

    def __init__(
        self,
        calc: Calculator | Callable[[], Calculator],
        name: str,
        version: str,
        elements: Iterable[int],
        cutoff: float | None = None,
    ) -> None:
        ready = isinstance(calc, BaseCalculator)
        self._calc: Calculator | None = calc if ready else None  # type: ignore[assignment]
        self._make_calc = None if ready else calc
        self.name = name
        self.version = version
        self.elements = frozenset(int(z) for z in elements)
        self.cutoff = None if cutoff is None else float(cutoff)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, version={self.version!r})"

    def calculator(self) -> Calculator:
        """The wrapped ASE calculator (shared with :meth:`label`), built on first use."""
        if self._calc is None:
            assert self._make_calc is not None
            self._calc = self._make_calc()
        return self._calc

    def label(self, structures: Sequence[ase.Atoms]) -> list[Labels]:
        """Energy in eV, forces in eV/Å and (fully periodic only) 3x3 stress in eV/Å³.

        Parameters
        ----------
        structures
            Structures to label; not modified.

        Returns
        -------
        list[Labels]
            One entry per structure, in order.

        Raises
        ------
        UnsupportedElementError
            Before any work, if a structure holds an element outside :attr:`elements`.
        LabellingError
            If the calculator fails on a structure or returns a non-finite value.
        """
        structures = list(structures)
        check_elements(self, structures)
        return [self._label_one(atoms, index) for index, atoms in enumerate(structures)]

    def _label_one(self, atoms: ase.Atoms, index: int) -> Labels:
        work = atoms.copy()
        calc = self.calculator()
        # Some calculators compare only part of the state before reusing results; a reset
        # makes every structure a fresh calculation.
        calc.reset()
        work.calc = calc
        try:
            energy = float(work.get_potential_energy())
            forces = np.array(work.get_forces(), dtype=np.float64)
            stress = None
            if work.pbc.all():
                voigt = np.asarray(work.get_stress(voigt=True), dtype=np.float64)
                stress = voigt_6_to_full_3x3_stress(voigt)
        except Exception as exc:
            raise LabellingError(
                f"teacher {self.name!r} failed on {describe_structure(atoms, index)}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            work.calc = None
        assert forces.shape == (len(atoms), 3), forces.shape
        labels = Labels(energy=energy, forces=forces, stress=stress)
        check_finite(labels, atoms, index, self.name)
        return labels
