"""Every source of structures checked before any work: SMILES, ASE molecule names, files.

A distillation run takes hours, and an input found bad at its turn loses the work done
before it. :func:`collect_systems` parses every SMILES, looks up every name, reads every file
and checks every frame first, and raises one :class:`StructureInputError` that lists each bad
input (the SMILES, the name, the file and frame) with its fix. A frame must have atoms, and not
too many; known elements; finite positions and cell; coordinates of a sane size; a cell of
nonzero volume where it is periodic; and no two atoms closer than ``min_distance``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import ase
import ase.io
import numpy as np

from mlff_distiller import keys
from mlff_distiller.structures.filters import shortest_distance
from mlff_distiller.structures.sources import INITIAL, from_ase_molecule, from_smiles

MAX_ATOMS = 10_000
"""Most atoms a frame may have: students learn from structures of tens to hundreds of atoms,
and a frame of ten thousand (a supercell built too large) takes the teacher minutes each."""

MAX_SMILES_ATOMS = 1_000
"""Most atoms (hydrogens included) of a SMILES: RDKit's 3D embedding of larger molecules takes
hours."""

MAX_COORDINATE = 1e5
"""Largest coordinate or cell component in Å: beyond it a file is in other units, or broken."""

_MAX_LISTED_PROBLEMS = 10
_FILE_FIX = "check the file, and that its extension names a format ASE reads (.extxyz, .cif...)"


class StructureInputError(ValueError):
    """A source of structures (a SMILES, a name, a file or a frame) that cannot be used."""


@dataclass(frozen=True)
class SystemSource:
    """One system of a run: what it is and how its starting structure is built.

    Attributes
    ----------
    system_id
        The system's name (splits are by system).
    origin
        How messages name its source, e.g. ``SMILES 'CCO'`` or ``frame 2 of mols.xyz``.
    numbers
        (N,) atomic numbers of the starting structure, hydrogens included.
    build
        Builds the starting structure (``info["system_id"]`` and ``info["sampler"]`` set).
    """

    system_id: str
    origin: str
    numbers: np.ndarray
    build: Callable[[], ase.Atoms]

    def placeholder(self) -> ase.Atoms:
        """Atoms of the right composition and ``system_id`` (for element checks; no geometry)."""
        return ase.Atoms(numbers=self.numbers, info={keys.SYSTEM_ID: self.system_id})


def collect_systems(
    smiles: Sequence[str],
    ase_molecules: Sequence[str],
    files: Sequence[str | Path],
    min_distance: float,
) -> list[SystemSource]:
    """Check every source and return the systems in order: SMILES, ASE names, file frames.

    Parameters
    ----------
    smiles
        SMILES strings; the ``k``-th is embedded with seed ``k``.
    ase_molecules
        Names known to :func:`ase.build.molecule`.
    files
        ASE-readable structure files; each frame is a system ``"{file name}:{frame}"``.
    min_distance
        Smallest interatomic distance (Å) a frame from a file may have.

    Returns
    -------
    list[SystemSource]
        One per SMILES, name and frame, nothing built yet except the frames read from files.

    Raises
    ------
    StructureInputError
        Listing every source that cannot be used, each with its fix.
    """
    systems: list[SystemSource] = []
    problems: list[str] = []
    for k, text in enumerate(smiles):
        try:
            numbers = smiles_numbers(text)
        except StructureInputError as exc:
            problems.append(str(exc))
            continue
        build = partial(from_smiles, text, seed=k)
        systems.append(SystemSource(text, f"SMILES {_quoted(text)}", numbers, build))
    for name in ase_molecules:
        try:
            atoms = from_ase_molecule(name)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        systems.append(SystemSource(name, f"ASE molecule {name!r}", atoms.numbers, atoms.copy))
    for path in files:
        try:
            frames = read_frames(path, fix=_FILE_FIX)
        except StructureInputError as exc:
            problems.append(str(exc))
            continue
        for k, atoms in enumerate(frames):
            where = f"frame {k} of {path}"
            found = frame_problems(atoms, min_distance)
            if found:
                problems.append(f"{where}: " + ", ".join(found))
                continue
            initial = _initial_frame(atoms, f"{Path(path).name}:{k}")
            systems.append(
                SystemSource(initial.info[keys.SYSTEM_ID], where, initial.numbers, initial.copy)
            )
    if problems:
        listed = problems[:_MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        raise StructureInputError(
            f"{len(problems)} structure input(s) cannot be used (checked before generating "
            "anything): " + "; ".join(listed) + (f"; and {more} more" if more else "")
        )
    return systems


def smiles_numbers(smiles: str) -> np.ndarray:
    """Atomic numbers (explicit hydrogens included) of a SMILES fit for a teacher.

    Raises
    ------
    StructureInputError
        If RDKit cannot parse it, or it has no atoms, a wildcard atom, a net charge, unpaired
        electrons or more than :data:`MAX_SMILES_ATOMS` atoms.
    """
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():
        mol = Chem.MolFromSmiles(smiles, sanitize=False)
        if mol is None:
            raise StructureInputError(
                f"SMILES {_quoted(smiles)} cannot be parsed: check its syntax (brackets, "
                "ring-closure digits, element symbols)"
            )
        try:
            Chem.SanitizeMol(mol)
        except Exception as exc:  # RDKit raises its own classes, with the chemistry in them
            raise StructureInputError(
                f"SMILES {_quoted(smiles)} is not a valid molecule ({exc}): check its valences and "
                "aromatic rings"
            ) from None
    if mol.GetNumAtoms() == 0:
        raise StructureInputError(f"SMILES {_quoted(smiles)} has no atoms: remove it")
    if any(atom.GetAtomicNum() == 0 for atom in mol.GetAtoms()):
        raise StructureInputError(
            f"SMILES {_quoted(smiles)} has a wildcard atom '*', which is no element: write the "
            "element"
        )
    charge = sum(atom.GetFormalCharge() for atom in mol.GetAtoms())
    if charge:
        raise StructureInputError(
            f"SMILES {_quoted(smiles)} has a net charge of {charge:+d}, but teachers label neutral "
            "structures: give the neutral molecule (e.g. with its counter-ion)"
        )
    radicals = sum(atom.GetNumRadicalElectrons() for atom in mol.GetAtoms())
    if radicals:
        raise StructureInputError(
            f"SMILES {_quoted(smiles)} has {radicals} unpaired electron(s) (bracket atoms such as "
            "[CH3] get no implicit hydrogens): write every hydrogen, e.g. [CH4] or C"
        )
    numbers = np.array([atom.GetAtomicNum() for atom in Chem.AddHs(mol).GetAtoms()])
    if len(numbers) > MAX_SMILES_ATOMS:
        raise StructureInputError(
            f"SMILES {_quoted(smiles)} has {len(numbers)} atoms with its hydrogens, more than "
            f"{MAX_SMILES_ATOMS}; embedding it in 3D would take hours: give a structure file"
        )
    return numbers


def _quoted(smiles: str, limit: int = 60) -> str:
    """A SMILES for a message: quoted, long ones cut."""
    if len(smiles) <= limit:
        return repr(smiles)
    return f"{smiles[: limit - 10]!r}... ({len(smiles)} characters)"


def read_frames(path: str | Path, fix: str, format: str | None = None) -> list[ase.Atoms]:
    """Every frame of a structure file, or an error that names the file.

    Parameters
    ----------
    path
        The file.
    fix
        What the user should do if it cannot be read (ends the message).
    format
        ASE format name; ``None`` guesses it from the name and the content.

    Raises
    ------
    StructureInputError
        If the file is missing, not a file, unreadable, not parseable, or holds no frame.
    """
    path = Path(path)
    if not path.exists():
        raise StructureInputError(f"{path} does not exist: check the path")
    if not path.is_file():
        raise StructureInputError(f"{path} is not a file: give a structure file")
    try:
        frames = ase.io.read(path, index=":", format=format)
    except Exception as exc:  # parsers fail in many ways; each means the same to the user
        raise StructureInputError(
            f"{path} cannot be read as a structure file ({_reason(exc)}): {fix}"
        ) from None
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise StructureInputError(f"{path} holds no structure (it is empty): {fix}")
    return frames


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"unknown element symbol or key {exc.args[0]!r}" if exc.args else "KeyError"
    if isinstance(exc, UnicodeDecodeError):
        return "binary content where text was expected"
    text = " ".join(str(exc).split())
    text = text if len(text) <= 120 else text[:117] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def frame_problems(atoms: ase.Atoms, min_distance: float) -> list[str]:
    """Why a frame cannot be a starting structure (empty list: it can).

    Parameters
    ----------
    atoms
        The frame.
    min_distance
        Smallest allowed interatomic distance in Å, periodic images included.

    Returns
    -------
    list[str]
        Each problem and its fix, in words.
    """
    n = len(atoms)
    if n == 0:
        return ["it has no atoms: remove it"]
    if n > MAX_ATOMS:
        return [f"it has {n} atoms, more than {MAX_ATOMS}: cut it into smaller structures"]
    numbers = atoms.numbers
    unknown = sorted({int(z) for z in numbers if not 1 <= z <= 118})
    if unknown:
        return [f"atomic numbers {unknown} are no elements: fix the species column"]
    problems = []
    positions = np.asarray(atoms.positions, dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if len(bad):
        problems.append(
            f"{len(bad)} atom(s) have non-finite positions (atom {bad[0]}: "
            f"{positions[bad[0]].tolist()}): fix or remove this frame"
        )
    cell = np.asarray(atoms.cell[:], dtype=np.float64)
    if not np.isfinite(cell).all():
        problems.append("its cell is not finite: fix the lattice")
    if problems:
        return problems
    largest = float(max(np.abs(positions).max(), np.abs(cell).max()))
    if largest > MAX_COORDINATE:
        return [
            f"a coordinate of {largest:.3g} Å is beyond {MAX_COORDINATE:g} Å: positions and "
            "cell must be in Å"
        ]
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any():
        volume = abs(np.linalg.det(cell))
        if volume < 1e-9:
            return [
                f"it is periodic (pbc={pbc.tolist()}) but its cell has zero volume: give every "
                "cell vector (vacuum along non-periodic directions) or make it non-periodic"
            ]
        # Distance between opposite faces of the cell along each cell vector.
        heights = volume / np.linalg.norm(
            np.cross(np.roll(cell, -1, 0), np.roll(cell, -2, 0)), axis=1
        )
        if heights[pbc].min() < min_distance:
            return [
                f"its cell is {heights[pbc].min():.3g} Å thick along a periodic direction, so "
                "every atom is closer than structures.min_distance "
                f"({min_distance:g} Å) to its own periodic image: give the real cell"
            ]
    distance = shortest_distance(atoms, min_distance)
    if distance < min_distance:
        return [
            f"two atoms are {distance:.3f} Å apart, closer than structures.min_distance "
            f"({min_distance:g} Å): fix the overlapping atoms or remove this frame"
        ]
    return []


def _initial_frame(atoms: ase.Atoms, system_id: str) -> ase.Atoms:
    """A frame from a file as a starting structure: no calculator or labels, tagged."""
    frame = atoms.copy()
    frame.calc = None
    frame.info[keys.SYSTEM_ID] = system_id
    frame.info[keys.SAMPLER] = INITIAL
    return frame
