"""Every source of structures checked before any work.

The sources: SMILES (inline and files), ASE molecule names, crystals, structure files and
labelled files. A distillation run takes hours, and an input found bad at its turn loses the
work done before it. :func:`collect_systems` parses every SMILES, looks up every name, builds
every crystal, reads every file and checks every frame first, and raises one
:class:`StructureInputError` that lists each bad input (the SMILES, the name, the file and
frame) with its fix. A frame must have atoms, and not too many; known elements; finite
positions and cell; coordinates of a sane size; a cell of nonzero volume where it is
periodic; no two atoms closer than ``min_distance``; and, for a molecule from a file, all its
hydrogens (:mod:`mlff_distiller.structures.hydrogens`). A labelled frame must also have its
labels under the keys the config names.
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
from mlff_distiller.config import CrystalConfig, LabelledFileConfig, SmilesFileConfig
from mlff_distiller.structures.filters import shortest_distance
from mlff_distiller.structures.hydrogens import missing_hydrogen_problems
from mlff_distiller.structures.imported import frame_system_id, labelled_frame
from mlff_distiller.structures.sources import (
    INITIAL,
    SDF_SUFFIXES,
    conformers_from_smiles,
    crystal,
    from_ase_molecule,
    from_smiles,
    read_sdf,
    read_smiles_file,
)

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
    """One system of a run: what it is and how its starting structures are built.

    Attributes
    ----------
    system_id
        The system's name (splits are by system).
    origin
        How messages name its source, e.g. ``SMILES 'CCO'`` or ``frame 2 of mols.xyz``.
    numbers
        (N,) atomic numbers of the starting structure, hydrogens included (of a labelled
        system: its first frame's).
    build
        Builds the (first) starting structure (``info["system_id"]`` and ``info["sampler"]``
        set).
    source
        The input it came from, for reports: ``smiles``, ``smiles_file mols.smi``,
        ``ase_molecules``, ``crystals``, ``file x.pdb`` or ``labelled_file x.extxyz``.
    build_all
        Builds every starting structure (a molecule's conformers); None: ``[build()]``.
    labelled
        Its structures are labelled frames read from a file (``sampler`` ``imported``), kept
        as they are: no sampling, no teacher.
    elements
        Atomic numbers of every element of the system, ascending (for element checks).
    """

    system_id: str
    origin: str
    numbers: np.ndarray
    build: Callable[[], ase.Atoms]
    source: str = ""
    build_all: Callable[[], list[ase.Atoms]] | None = None
    labelled: bool = False
    elements: tuple[int, ...] = ()

    def placeholder(self) -> ase.Atoms:
        """Atoms of the right composition and ``system_id`` (for element checks; no geometry)."""
        others = sorted(set(self.elements) - set(self.numbers.tolist()))
        numbers = np.concatenate([self.numbers, np.asarray(others, dtype=int)])
        return ase.Atoms(numbers=numbers, info={keys.SYSTEM_ID: self.system_id})

    def starting_structures(self) -> list[ase.Atoms]:
        """Every starting structure (or, of a labelled system, every frame), freshly built."""
        return [self.build()] if self.build_all is None else self.build_all()


def collect_systems(
    smiles: Sequence[str],
    ase_molecules: Sequence[str],
    files: Sequence[str | Path],
    min_distance: float,
    *,
    smiles_files: Sequence[SmilesFileConfig] = (),
    conformers: int = 1,
    embedding_seed: int = 0,
    crystals: Sequence[CrystalConfig] = (),
    labelled_files: Sequence[LabelledFileConfig] = (),
    allow_missing_hydrogens: bool = False,
) -> list[SystemSource]:
    """Check every source and return the systems in order.

    The order: SMILES (inline, then files), ASE names, crystals, file frames, labelled systems.

    Parameters
    ----------
    smiles
        SMILES strings; with those of ``smiles_files`` after them, the ``k``-th is embedded
        with seed ``embedding_seed + k``.
    ase_molecules
        Names known to :func:`ase.build.molecule`.
    files
        Structure files; each frame is a system ``"{file name}:{frame}"``. SDF/MOL files are
        read with RDKit (:func:`..sources.read_sdf`), others with ASE.
    min_distance
        Smallest interatomic distance (Å) a frame from a file may have.
    smiles_files
        Files of SMILES (:class:`~mlff_distiller.config.SmilesFileConfig`).
    conformers
        Starting conformers per SMILES (:func:`..sources.conformers_from_smiles`).
    embedding_seed
        Offset of the embedding seeds.
    crystals
        Bulk crystals (:class:`~mlff_distiller.config.CrystalConfig`).
    labelled_files
        Files of labelled frames (:class:`~mlff_distiller.config.LabelledFileConfig`);
        frames sharing a ``system_key`` value are one system.
    allow_missing_hydrogens
        Accept molecules from ``files`` and ``labelled_files`` that lack hydrogens
        (:mod:`..hydrogens`); otherwise each is a problem naming the file, frame and atoms.

    Returns
    -------
    list[SystemSource]
        One per SMILES, name, crystal and frame (labelled frames: per system), nothing
        built yet except what was read from files.

    Raises
    ------
    StructureInputError
        Listing every source that cannot be used, each with its fix.
    """
    systems: list[SystemSource] = []
    problems: list[str] = []
    molecules = [(text, None, "smiles") for text in smiles]
    for entry in smiles_files:
        try:
            listed = read_smiles_file(entry.path, entry.column, entry.name_column)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        molecules += [(text, name, f"smiles_file {entry.path}") for text, name in listed]
    for k, (text, name, source) in enumerate(molecules):
        try:
            numbers = smiles_numbers(text)
        except StructureInputError as exc:
            where = f" (in {source.removeprefix('smiles_file ')})" if source != "smiles" else ""
            problems.append(str(exc) + where)
            continue
        system_id = text if name is None else name
        seed = embedding_seed + k
        origin = f"SMILES {_quoted(text)}" + (f" ({name})" if name else "")
        systems.append(
            SystemSource(
                system_id,
                origin,
                numbers,
                partial(from_smiles, text, system_id, seed),
                source=source,
                build_all=None
                if conformers == 1
                else partial(conformers_from_smiles, text, conformers, system_id, seed),
            )
        )
    for name in ase_molecules:
        try:
            atoms = from_ase_molecule(name)
        except ValueError as exc:
            problems.append(str(exc))
            continue
        systems.append(
            SystemSource(
                name, f"ASE molecule {name!r}", atoms.numbers, atoms.copy, source="ase_molecules"
            )
        )
    for entry in crystals:
        try:
            atoms = crystal(
                entry.name,
                entry.crystalstructure,
                entry.a,
                entry.c,
                entry.cubic,
                entry.supercell,
                entry.system_id,
            )
        except ValueError as exc:
            problems.append(str(exc))
            continue
        where = f"crystal {atoms.info[keys.SYSTEM_ID]!r}"
        found = frame_problems(atoms, min_distance)
        if found:
            problems.append(f"{where}: " + ", ".join(found))
            continue
        systems.append(
            SystemSource(
                atoms.info[keys.SYSTEM_ID], where, atoms.numbers, atoms.copy, source="crystals"
            )
        )
    for path in files:
        try:
            frames, implicit = _structure_file(path)
        except StructureInputError as exc:
            problems.append(str(exc))
            continue
        is_pdb = Path(path).suffix.lower() in (".pdb", ".ent")
        for k, atoms in enumerate(frames):
            where = f"frame {k} of {path}"
            found = frame_problems(atoms, min_distance)
            if not found and not allow_missing_hydrogens:
                found = hydrogen_problems(atoms, implicit[k], molecule=is_pdb)
            if found:
                problems.append(f"{where}: " + ", ".join(found))
                continue
            initial = _initial_frame(atoms, f"{Path(path).name}:{k}")
            systems.append(
                SystemSource(
                    initial.info[keys.SYSTEM_ID],
                    where,
                    initial.numbers,
                    initial.copy,
                    source=f"file {path}",
                )
            )
    for entry in labelled_files:
        try:
            systems += _labelled_systems(entry, min_distance, allow_missing_hydrogens)
        except StructureInputError as exc:
            problems.append(str(exc))
    if problems:
        listed = problems[:_MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        raise StructureInputError(
            f"{len(problems)} structure input(s) cannot be used (checked before generating "
            "anything): " + "; ".join(listed) + (f"; and {more} more" if more else "")
        )
    return systems


_HYDROGEN_FIX = (
    "give the structure with all its hydrogens (e.g. add them with RDKit, Open Babel or "
    "pdbfixer), or set structures.allow_missing_hydrogens=true if it truly has dangling bonds"
)


def hydrogen_problems(atoms: ase.Atoms, implicit: int | None, molecule: bool = False) -> list[str]:
    """Why a frame from a file is a molecule that lacks hydrogens (empty list: it is not).

    Parameters
    ----------
    atoms
        The frame. Only molecules are checked: non-periodic frames, or any frame when
        ``molecule`` (a PDB file's, whose CRYST1 record makes it periodic).
    implicit
        Hydrogens its bond orders imply it lacks (SDF/MOL records), or None when unknown.
    molecule
        Check it even if it is periodic.
    """
    if implicit:
        return [
            f"it lacks {implicit} hydrogen(s) that its bond orders imply (RDKit finds them "
            f"implicit): {_HYDROGEN_FIX}"
        ]
    if np.asarray(atoms.pbc).any() and not molecule:
        return []
    found = missing_hydrogen_problems(atoms)
    if found:
        return [f"an organic molecule lacking hydrogens ({'; '.join(found)}): {_HYDROGEN_FIX}"]
    return []


def _structure_file(path: str | Path) -> tuple[list[ase.Atoms], list[int | None]]:
    """Frames of a structure file and the implicit hydrogens of each (None: unknown)."""
    if Path(path).suffix.lower() not in SDF_SUFFIXES:
        frames = read_frames(path, fix=_FILE_FIX)
        return frames, [None] * len(frames)
    _check_is_file(Path(path))
    try:
        records = read_sdf(path)
    except ValueError as exc:
        raise StructureInputError(str(exc)) from None
    return [atoms for atoms, _ in records], [implicit for _, implicit in records]


def _labelled_systems(
    entry: LabelledFileConfig, min_distance: float, allow_missing_hydrogens: bool
) -> list[SystemSource]:
    """The systems of a file of labelled frames, each frame checked (problems all at once)."""
    path = Path(entry.path)
    fix = "check the file, and that ASE reads it with its labels (extxyz)"
    raw = read_frames(path, fix=fix)
    problems = []
    by_system: dict[str, list[ase.Atoms]] = {}
    for k, atoms in enumerate(raw):
        where = f"frame {k} of {path}"
        system_id = frame_system_id(atoms, entry.system_key, path, k)
        found = frame_problems(atoms, min_distance)
        if not found and not allow_missing_hydrogens:
            found = hydrogen_problems(atoms, None)
        if found:
            problems.append(f"{where}: " + ", ".join(found))
            continue
        frame, found = labelled_frame(
            atoms, entry.energy_key, entry.forces_key, entry.stress_key, system_id
        )
        if frame is None:
            problems.append(
                f"{where}: " + ", ".join(found) + ": set the labelled_files entry's "
                "energy_key/forces_key/stress_key to the keys the file uses"
            )
            continue
        by_system.setdefault(system_id, []).append(frame)
    if problems:
        listed = problems[:_MAX_LISTED_PROBLEMS]
        more = len(problems) - len(listed)
        raise StructureInputError(
            "; ".join(listed) + (f"; and {more} more frame(s) of {path}" if more else "")
        )
    systems = []
    for system_id, frames in by_system.items():
        elements = tuple(sorted({int(z) for frame in frames for z in frame.numbers}))
        systems.append(
            SystemSource(
                system_id,
                f"system {system_id!r} of {path} ({len(frames)} labelled frames)",
                frames[0].numbers,
                frames[0].copy,
                source=f"labelled_file {path}",
                build_all=partial(_copies, tuple(frames)),
                labelled=True,
                elements=elements,
            )
        )
    return systems


def _copies(frames: tuple[ase.Atoms, ...]) -> list[ase.Atoms]:
    return [frame.copy() for frame in frames]


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
    _check_is_file(path)
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


def _check_is_file(path: Path) -> None:
    if not path.exists():
        raise StructureInputError(f"{path} does not exist: check the path")
    if not path.is_file():
        raise StructureInputError(f"{path} is not a file: give a structure file")


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
