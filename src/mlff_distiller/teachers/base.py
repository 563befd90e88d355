"""What a teacher is: labels for structures, the elements it supports, and its errors.

A teacher is any pretrained potential (or toy calculator) that turns a list of
:class:`ase.Atoms` into :class:`Labels`. Adapters live in sibling modules; the registry in
:mod:`mlff_distiller.teachers.registry` maps names to factories.

A structure a teacher cannot label is always an error that names the structure and the
reason (:class:`UnsupportedElementError` before labelling, :class:`LabellingError` when the
teacher fails or returns a non-finite value): a training set never contains a silent NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import ase
import numpy as np
from ase.calculators.calculator import Calculator
from ase.data import chemical_symbols

from mlff_distiller.keys import SYSTEM_ID

#: Above this many supported elements an error message gives the count, not the list.
_MAX_LISTED_ELEMENTS = 20
#: Most atoms per model call of a batching teacher; the default of ``teacher.batch_atoms``.
DEFAULT_BATCH_ATOMS = 2048


@dataclass(frozen=True, eq=False)
class Labels:
    """Teacher labels of one structure (``N`` atoms).

    ``eq=False``: labels hold arrays, so they compare by identity; compare fields explicitly.

    Attributes
    ----------
    energy
        Total potential energy in eV.
    forces
        Forces on the atoms, shape (N, 3), in eV/Å (float64).
    stress
        Stress, shape (3, 3), in eV/Å³ with ASE's sign (``(1/V) dE/dstrain``: a compressed
        cell has negative stress). ``None`` unless the structure is periodic along all three
        cell vectors.
    """

    energy: float
    forces: np.ndarray
    stress: np.ndarray | None = None


@runtime_checkable
class Teacher(Protocol):
    """A pretrained potential that labels structures.

    Attributes
    ----------
    name
        Registry name (e.g. ``"7net-0"``).
    version
        Package and model version, e.g. ``"sevenn-0.13.0/SevenNet-0_11Jul2024"``; stored with
        every label so a dataset says which model produced it.
    elements
        Atomic numbers the teacher supports.
    cutoff
        Interaction cutoff in Å of one message-passing layer, or ``None`` when not defined.
    """

    name: str
    version: str
    elements: frozenset[int]
    cutoff: float | None

    def label(self, structures: Sequence[ase.Atoms]) -> list[Labels]:
        """Energies, forces and (for fully periodic structures) stresses, one per structure.

        The input structures are not modified. Raises :class:`UnsupportedElementError`
        before any work if a structure holds an element the teacher does not support, and
        :class:`LabellingError` naming the structure if the teacher fails on it.
        """
        ...

    def calculator(self) -> Calculator:
        """An ASE calculator of the same model, e.g. to drive molecular dynamics."""
        ...


@runtime_checkable
class TorchSimTeacher(Teacher, Protocol):
    """A teacher that also offers a TorchSim model, for batched MD of many systems at once.

    Attributes
    ----------
    batch_atoms
        Most atoms per model call (``None``: one structure at a time).
    """

    batch_atoms: int | None

    def torchsim_model(self) -> Any:
        """A ``torch_sim.models.interface.ModelInterface`` of the same model, or ``None``.

        ``None`` when TorchSim is not installed, or when the teacher does not batch
        (``batch_atoms`` is ``None``): callers then fall back to :meth:`calculator`.
        """
        ...


class UnsupportedElementError(ValueError):
    """A structure contains an element the teacher was not trained on."""


class LabellingError(RuntimeError):
    """A teacher failed on a structure or returned a non-finite energy, force or stress."""


def describe_structure(atoms: ase.Atoms, index: int) -> str:
    """Name a structure in a message: its index, its ``system_id`` if any, and its formula."""
    formula = atoms.get_chemical_formula()
    system_id = atoms.info.get(SYSTEM_ID)
    if system_id is not None:
        return f"structure {index} (system_id {system_id!r}, {formula})"
    return f"structure {index} ({formula})"


def check_elements(teacher: Teacher, structures: Sequence[ase.Atoms]) -> None:
    """Raise one :class:`UnsupportedElementError` listing every structure the teacher cannot label.

    Parameters
    ----------
    teacher
        Any object with ``name`` and ``elements`` (atomic numbers).
    structures
        The structures to check.

    Raises
    ------
    UnsupportedElementError
        Naming each offending structure, its unsupported element symbols, and the fix.
    """
    problems = []
    for index, atoms in enumerate(structures):
        unsupported = sorted(set(atoms.numbers.tolist()) - teacher.elements)
        if unsupported:
            symbols = ", ".join(chemical_symbols[z] for z in unsupported)
            problems.append(f"{describe_structure(atoms, index)} contains {symbols}")
    if not problems:
        return
    if len(teacher.elements) <= _MAX_LISTED_ELEMENTS:
        supported = ", ".join(chemical_symbols[z] for z in sorted(teacher.elements))
    else:
        supported = f"{len(teacher.elements)} elements (see teacher.elements)"
    raise UnsupportedElementError(
        f"teacher {teacher.name!r} cannot label {len(problems)} structure(s): "
        + "; ".join(problems)
        + f". It supports {supported}. Choose a teacher that supports these elements, "
        "or remove these structures."
    )


def check_finite(labels: Labels, atoms: ase.Atoms, index: int, teacher_name: str) -> None:
    """Raise :class:`LabellingError` if any label of a structure is NaN or infinite.

    Parameters
    ----------
    labels
        The teacher's labels of ``atoms``.
    atoms
        The structure (named in the message).
    index
        Position of the structure in the list being labelled.
    teacher_name
        Registry name of the teacher (named in the message).
    """
    bad = []
    if not np.isfinite(labels.energy):
        bad.append(f"energy {labels.energy}")
    if not np.isfinite(labels.forces).all():
        bad.append(f"{int((~np.isfinite(labels.forces)).any(axis=1).sum())} atoms' forces")
    if labels.stress is not None and not np.isfinite(labels.stress).all():
        bad.append("stress")
    if bad:
        raise LabellingError(
            f"teacher {teacher_name!r} returned non-finite {', '.join(bad)} for "
            f"{describe_structure(atoms, index)}: check the structure (overlapping atoms, "
            "isolated fragments) or remove it."
        )
