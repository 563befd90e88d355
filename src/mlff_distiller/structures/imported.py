"""Labels users already have: frames of a file read with their energies, forces and stresses.

A frame is read under the keys the user names (``REF_energy``, ``energy``, ``dft_forces``...)
and stored under the project's ``teacher_*`` keys, with ``info["sampler"] = "imported"``, so
the label stage keeps its labels instead of calling the teacher. ASE moves the bare keys
``energy``, ``forces`` and ``stress`` (and ``free_energy``) of an extxyz file into a
calculator's results; they are read from there.
"""

from __future__ import annotations

from pathlib import Path

import ase
import numpy as np
from ase.stress import voigt_6_to_full_3x3_stress

from mlff_distiller import keys
from mlff_distiller.teachers.base import Labels

IMPORTED = "imported"
"""``info["sampler"]`` of a frame whose labels were read from a file."""

#: Keys ASE keeps in a calculator's results, not in ``info`` or ``arrays``.
_CALCULATOR_KEYS = ("energy", "free_energy", "forces", "stress")


def labelled_frame(
    atoms: ase.Atoms,
    energy_key: str,
    forces_key: str,
    stress_key: str | None,
    system_id: str,
) -> tuple[ase.Atoms | None, list[str]]:
    """A frame with its labels under ``teacher_*`` keys, or the problems that prevent it.

    Parameters
    ----------
    atoms
        The frame as read by ASE (not modified).
    energy_key, forces_key
        Where its total energy (eV) and forces ((N, 3), eV/Å) are.
    stress_key
        Where its stress is (eV/Å³, ASE sign, 3x3 or Voigt 6); read only when the frame is
        periodic along all three cell vectors and has it. None: never.
    system_id
        Stored in ``info["system_id"]``.

    Returns
    -------
    frame, problems
        A fresh frame (numbers, positions, cell, pbc, masses if set, ``teacher_energy``,
        ``teacher_forces``, optionally ``teacher_stress``, ``system_id``, ``sampler``) and an
        empty list; or None and each problem with its fix, in words.
    """
    problems = []
    raw_energy = _label(atoms, energy_key)
    energy = _numbers(raw_energy)
    if raw_energy is None:
        problems.append(f"it has no energy under {energy_key!r}{_present(atoms)}")
    elif energy is None or energy.size != 1 or not np.isfinite(energy).all():
        problems.append(
            f"its energy {energy_key!r} is not one finite number (got {_short(raw_energy)})"
        )
    raw_forces = _label(atoms, forces_key)
    forces = _numbers(raw_forces)
    if raw_forces is None:
        problems.append(f"it has no forces under {forces_key!r}{_present(atoms)}")
    elif forces is None:
        problems.append(f"its forces {forces_key!r} are not numbers")
    elif forces.shape != (len(atoms), 3):
        problems.append(
            f"its forces {forces_key!r} have shape {forces.shape}, not ({len(atoms)}, 3)"
        )
    elif not np.isfinite(forces).all():
        problems.append(f"its forces {forces_key!r} are not all finite")
    stress = None
    if stress_key is not None and np.asarray(atoms.pbc).all():
        raw = _label(atoms, stress_key)
        if raw is not None:
            stress = _numbers(raw)
            if stress is None:
                problems.append(f"its stress {stress_key!r} is not numbers")
            elif stress.size == 6:
                stress = voigt_6_to_full_3x3_stress(stress.ravel())
            elif stress.size == 9:
                stress = stress.reshape(3, 3)
            else:
                problems.append(
                    f"its stress {stress_key!r} has {stress.size} components, not 6 (Voigt) "
                    "or 9 (3x3)"
                )
            if stress is not None and stress.shape == (3, 3) and not np.isfinite(stress).all():
                problems.append(f"its stress {stress_key!r} is not all finite")
    if problems:
        return None, problems
    frame = ase.Atoms(
        numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell[:], pbc=atoms.pbc
    )
    if "masses" in atoms.arrays:
        frame.set_masses(atoms.get_masses())
    frame.info[keys.SYSTEM_ID] = system_id
    frame.info[keys.SAMPLER] = IMPORTED
    frame.info[keys.TEACHER_ENERGY] = float(energy.ravel()[0])
    frame.arrays[keys.TEACHER_FORCES] = forces
    if stress is not None:
        frame.info[keys.TEACHER_STRESS] = stress
    return frame, []


def _numbers(value: object) -> np.ndarray | None:
    """A label as a float array, or None when it is not numbers (a string, a dict...)."""
    if value is None:
        return None
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _label(atoms: ase.Atoms, key: str) -> object | None:
    """The value under ``key`` in info, arrays, or (bare ASE keys) the calculator's results."""
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    if key in _CALCULATOR_KEYS and atoms.calc is not None:
        return atoms.calc.results.get(key)
    return None


def _present(atoms: ase.Atoms) -> str:
    """The label-like keys a frame does have, for the message (the fix is one of them)."""
    found = [
        key
        for key, value in atoms.info.items()
        if isinstance(value, float | int | np.ndarray) and not isinstance(value, bool)
    ]
    found += [key for key in atoms.arrays if key not in ("numbers", "positions")]
    if atoms.calc is not None:
        found += [key for key in atoms.calc.results if key in _CALCULATOR_KEYS]
    return f" (its keys: {', '.join(found)})" if found else " (it has no labels at all)"


def frame_system_id(atoms: ase.Atoms, system_key: str | None, path: Path, index: int) -> str:
    """The system of a labelled frame: ``info[system_key]``, else ``"{file name}:{index}"``."""
    if system_key is not None and atoms.info.get(system_key) not in (None, ""):
        return str(atoms.info[system_key])
    return f"{Path(path).name}:{index}"


def imported_labels(frame: ase.Atoms) -> Labels | None:
    """The labels of an imported frame (as generated), or None for a frame the teacher labels."""
    if frame.info.get(keys.SAMPLER) != IMPORTED:
        return None
    stress = frame.info.get(keys.TEACHER_STRESS)
    return Labels(
        energy=float(frame.info[keys.TEACHER_ENERGY]),
        forces=np.asarray(frame.arrays[keys.TEACHER_FORCES], dtype=np.float64),
        stress=None if stress is None else np.asarray(stress, dtype=np.float64).reshape(3, 3),
    )
