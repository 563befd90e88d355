"""ASE's effective-medium theory (EMT) as a toy teacher for fast tests.

EMT is fitted for the metals Al, Cu, Ag, Au, Ni, Pd, Pt; its H, C, N, O parameters are toy
values. It runs in milliseconds, which is all the tests need.
"""

from __future__ import annotations

import ase
from ase.calculators.emt import EMT, parameters
from ase.data import atomic_numbers

from mlff_distiller.teachers.ase import ASECalculatorTeacher

NAME = "emt"


def emt_teacher() -> ASECalculatorTeacher:
    """EMT with the elements of ASE's own parameter table."""
    return ASECalculatorTeacher(
        EMT(),
        name=NAME,
        version=f"ase-{ase.__version__}/EMT",
        elements=(atomic_numbers[symbol] for symbol in parameters),
    )
