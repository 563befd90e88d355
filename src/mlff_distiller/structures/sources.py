"""Where structures come from: SMILES, ASE's molecules and crystals, SDF/MOL files.

SMILES come inline or from files, embedded as one or several conformers; SDF and MOL files
are read through RDKit, every record with its bond orders.
Every structure leaves here with ``info["system_id"]`` (the molecule or crystal it is, used
to split train and test) and ``info["sampler"] = "initial"``. Molecules are centred on the
origin, with no cell and ``pbc=False``; crystals are periodic along all three cell vectors.
Readers of files raise ``ValueError`` naming the file, the line or record, and the fix.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import ase
import numpy as np
from ase.build import bulk, molecule

from mlff_distiller.keys import SAMPLER, SYSTEM_ID
from mlff_distiller.structures.filters import near_duplicates

if TYPE_CHECKING:
    from rdkit import Chem

INITIAL = "initial"


def from_smiles(smiles: str, system_id: str | None = None, seed: int = 0) -> ase.Atoms:
    """A 3D molecule with explicit hydrogens from a SMILES string (RDKit).

    The molecule is embedded with ETKDG (v3) and then relaxed with MMFF94, or with UFF when
    MMFF has no parameters for it; without either it keeps the ETKDG geometry.

    Parameters
    ----------
    smiles
        The SMILES string; implicit hydrogens are made explicit.
    system_id
        Identifier stored in ``info["system_id"]``; defaults to ``smiles``.
    seed
        Random seed of the embedding (same seed, same geometry).

    Returns
    -------
    ase.Atoms
        Positions in Å centred on the origin, no cell, ``pbc=False``.

    Raises
    ------
    ValueError
        If RDKit cannot parse the SMILES or cannot embed the molecule in 3D.
    """
    from rdkit import rdBase

    # RDKit reports problems on stderr; they are raised (or not worth reporting) here.
    with rdBase.BlockLogs():
        mol = _embedded_molecule(smiles, seed)
    atoms = ase.Atoms(
        numbers=[atom.GetAtomicNum() for atom in mol.GetAtoms()],
        positions=np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64),
    )
    if any(atom.GetIsotope() for atom in mol.GetAtoms()):
        atoms.set_masses([atom.GetMass() for atom in mol.GetAtoms()])
    return _as_initial_molecule(atoms, smiles if system_id is None else system_id)


def _embedded_molecule(smiles: str, seed: int) -> Chem.Mol:
    """Parse, add explicit hydrogens, embed with ETKDG and relax (MMFF, else UFF)."""
    from rdkit.Chem import AllChem

    mol = _molecule_with_hydrogens(smiles)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    if AllChem.EmbedMolecule(mol, params) != 0:
        # Large or strained molecules embed more reliably from random coordinates.
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise ValueError(
                f"RDKit could not embed the SMILES {smiles!r} in 3D (seed {seed}): try "
                "another seed, or provide a 3D structure file instead"
            )
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=2000)
    elif AllChem.UFFHasAllMoleculeParams(mol):
        AllChem.UFFOptimizeMolecule(mol, maxIters=2000)
    return mol


def _molecule_with_hydrogens(smiles: str) -> Chem.Mol:
    """The parsed SMILES with every hydrogen an explicit atom."""
    from rdkit import Chem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse the SMILES {smiles!r}: check its syntax and valences")
    n_hydrogens = sum(atom.GetTotalNumHs() + (atom.GetAtomicNum() == 1) for atom in mol.GetAtoms())
    mol = Chem.AddHs(mol)
    assert sum(atom.GetAtomicNum() == 1 for atom in mol.GetAtoms()) == n_hydrogens
    return mol


CONFORMER_TOLERANCE = 0.05
"""Å: relaxed conformers whose sorted interatomic distances all agree within this are one."""


def conformers_from_smiles(
    smiles: str, n_conformers: int, system_id: str | None = None, seed: int = 0
) -> list[ase.Atoms]:
    """Distinct 3D conformers of a molecule with explicit hydrogens (RDKit ETKDG v3).

    ``n_conformers`` are embedded from one seed, each relaxed with MMFF94 (else UFF, else
    kept as embedded), and conformers that relax to the same geometry (sorted interatomic
    distances within :data:`CONFORMER_TOLERANCE`) are kept once: a rigid molecule gives
    fewer than asked. With ``n_conformers=1`` this is ``[from_smiles(...)]``.

    Parameters
    ----------
    smiles
        The SMILES string; implicit hydrogens are made explicit.
    n_conformers
        Conformers to embed (at least 1).
    system_id
        Identifier stored in every conformer's ``info["system_id"]``; defaults to ``smiles``.
    seed
        Random seed of the embedding (same seed, same conformers).

    Returns
    -------
    list[ase.Atoms]
        Between 1 and ``n_conformers`` molecules, positions in Å centred on the origin, no
        cell, ``pbc=False``, all with the same ``system_id``.

    Raises
    ------
    ValueError
        If RDKit cannot parse the SMILES or embed any conformer.
    """
    if n_conformers == 1:
        return [from_smiles(smiles, system_id, seed)]
    from rdkit import rdBase
    from rdkit.Chem import AllChem

    with rdBase.BlockLogs():
        mol = _molecule_with_hydrogens(smiles)
        params = AllChem.ETKDGv3()
        params.randomSeed = int(seed)
        # Conformer i from seed + i: RDKit's default derives every conformer's seed from
        # the first by multiplication, so a seed of 0 would give n copies of one conformer.
        params.enableSequentialRandomSeeds = True
        ids = list(AllChem.EmbedMultipleConfs(mol, n_conformers, params))
        if not ids:
            params.useRandomCoords = True
            ids = list(AllChem.EmbedMultipleConfs(mol, n_conformers, params))
        if not ids:
            raise ValueError(
                f"RDKit could not embed the SMILES {smiles!r} in 3D (seed {seed}): try "
                "another seed, or provide a 3D structure file instead"
            )
        if AllChem.MMFFHasAllMoleculeParams(mol):
            AllChem.MMFFOptimizeMoleculeConfs(mol, maxIters=2000)
        elif AllChem.UFFHasAllMoleculeParams(mol):
            AllChem.UFFOptimizeMoleculeConfs(mol, maxIters=2000)
    numbers = [atom.GetAtomicNum() for atom in mol.GetAtoms()]
    conformers = []
    for conformer_id in ids:
        atoms = ase.Atoms(
            numbers=numbers,
            positions=np.asarray(mol.GetConformer(conformer_id).GetPositions(), dtype=np.float64),
        )
        if any(atom.GetIsotope() for atom in mol.GetAtoms()):
            atoms.set_masses([atom.GetMass() for atom in mol.GetAtoms()])
        conformers.append(_as_initial_molecule(atoms, smiles if system_id is None else system_id))
    duplicates = set(near_duplicates(conformers, CONFORMER_TOLERANCE))
    return [atoms for k, atoms in enumerate(conformers) if k not in duplicates]


def read_smiles_file(
    path: str | Path, column: str = "smiles", name_column: str | None = None
) -> list[tuple[str, str | None]]:
    """The molecules of a ``.smi`` or ``.csv`` file: (SMILES, name or None) in file order.

    ``.smi``: one molecule a line, the SMILES then an optional name (the rest of the line);
    blank lines, ``#`` comments and a header line whose first word is ``smiles`` are
    skipped. ``.csv``: a header row; the SMILES in ``column``, names in ``name_column``.

    Raises
    ------
    ValueError
        If the file is missing, unreadable, has another extension, lacks the column, or a
        row has no SMILES; the message names the file, the line and the fix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".smi", ".csv"):
        raise ValueError(
            f"{path}: a SMILES file must be .smi (one SMILES a line, then an optional name) "
            "or .csv (a header row and a SMILES column): rename or convert it"
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} cannot be read as text ({exc}): give a text file") from None
    if suffix == ".smi":
        return _smi_lines(path, text)
    return _csv_rows(path, text, column, name_column)


def _smi_lines(path: Path, text: str) -> list[tuple[str, str | None]]:
    molecules: list[tuple[str, str | None]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split(maxsplit=1)
        if not words or words[0].startswith("#"):
            continue
        if not molecules and number == _first_content_line(text) and words[0].lower() == "smiles":
            continue  # a header
        molecules.append((words[0], words[1].strip() if len(words) > 1 else None))
    if not molecules:
        raise ValueError(f"{path} holds no SMILES: write one molecule a line")
    return molecules


def _first_content_line(text: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            return number
    return 0


def _csv_rows(
    path: Path, text: str, column: str, name_column: str | None
) -> list[tuple[str, str | None]]:
    reader = csv.DictReader(text.splitlines())
    header = reader.fieldnames or []
    for wanted, key in ((column, "column"), (name_column, "name_column")):
        if wanted is not None and wanted not in header:
            raise ValueError(
                f"{path} has no column {wanted!r} (its columns: {', '.join(header) or 'none'})"
                f": set the smiles_files entry's {key} to one of them"
            )
    molecules: list[tuple[str, str | None]] = []
    for row in reader:
        smiles = (row.get(column) or "").strip()
        if not smiles:
            raise ValueError(
                f"line {reader.line_num} of {path} has no SMILES in column {column!r}: fill "
                "it in or remove the row"
            )
        name = (row.get(name_column) or "").strip() if name_column else ""
        molecules.append((smiles, name or None))
    if not molecules:
        raise ValueError(f"{path} holds no rows under its header: add molecules")
    return molecules


def crystal(
    name: str,
    crystalstructure: str | None = None,
    a: float | None = None,
    c: float | None = None,
    cubic: bool = False,
    supercell: Sequence[int] = (1, 1, 1),
    system_id: str | None = None,
) -> ase.Atoms:
    """A bulk crystal from :func:`ase.build.bulk`, repeated into a supercell.

    Parameters
    ----------
    name
        Chemical symbol or formula, e.g. ``"Cu"`` or ``"NaCl"``.
    crystalstructure
        ASE's structure name (``fcc``, ``diamond``, ``rocksalt``...); None: the element's
        reference structure.
    a, c
        Lattice constants in Å; None: the element's reference value (``c``: ideal c/a).
    cubic
        The conventional cubic cell instead of the primitive one.
    supercell
        Repetitions along the three cell vectors.
    system_id
        Stored in ``info["system_id"]``; defaults to :func:`crystal_id` of the arguments.

    Returns
    -------
    ase.Atoms
        Positions and cell (rows) in Å, ``pbc=True``.

    Raises
    ------
    ValueError
        If ASE cannot build it (unknown structure, a compound without a lattice constant).
    """
    try:
        atoms = bulk(name, crystalstructure, a=a, c=c, cubic=cubic)
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(
            f"crystal {name!r} (crystalstructure {crystalstructure}, a {a}): ASE cannot build "
            f"it ({reason}): give a known crystalstructure (fcc, bcc, hcp, diamond, "
            "zincblende, rocksalt...) and, for a compound, the lattice constant a in Å"
        ) from None
    atoms = atoms.repeat(tuple(int(n) for n in supercell))
    atoms.info[SYSTEM_ID] = (
        crystal_id(name, crystalstructure, a, cubic, supercell) if system_id is None else system_id
    )
    atoms.info[SAMPLER] = INITIAL
    return atoms


def crystal_id(
    name: str, crystalstructure: str | None, a: float | None, cubic: bool, supercell: Sequence[int]
) -> str:
    """The default ``system_id`` of a crystal, e.g. ``Cu-fcc-a3.61-cubic-2x2x2``."""
    parts = [name, crystalstructure or "ase"]
    if a is not None:
        parts.append(f"a{a:g}")
    if cubic:
        parts.append("cubic")
    if tuple(supercell) != (1, 1, 1):
        parts.append("x".join(str(int(n)) for n in supercell))
    return "-".join(parts)


SDF_SUFFIXES = (".sdf", ".mol", ".sd")
"""Files read with RDKit (every record, with its bond orders) rather than ASE."""


def read_sdf(path: str | Path) -> list[tuple[ase.Atoms, int]]:
    """Every record of an SDF or MOL file, with the hydrogens its bond orders imply it lacks.

    Parameters
    ----------
    path
        The file; records keep the hydrogens they have (``removeHs=False``).

    Returns
    -------
    list[tuple[ase.Atoms, int]]
        Each record as a molecule (positions in Å, no cell, ``pbc=False``) and its number of
        implicit hydrogens (:func:`..hydrogens.implicit_hydrogens`): 0 when the file has
        every hydrogen.

    Raises
    ------
    ValueError
        If a record cannot be parsed or sanitised, has only 2D coordinates, or the file holds
        none; the message names the file and the record.
    """
    from rdkit import Chem, rdBase

    from mlff_distiller.structures.hydrogens import implicit_hydrogens

    path = Path(path)
    records = []
    with rdBase.BlockLogs():
        supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=False)
        for k, mol in enumerate(supplier):
            where = f"record {k} of {path}"
            if mol is None:
                raise ValueError(f"{where} cannot be parsed as a MOL block: fix or remove it")
            try:
                Chem.SanitizeMol(mol)
            except Exception as exc:  # RDKit raises its own classes, with the chemistry in them
                raise ValueError(
                    f"{where} is not a valid molecule ({exc}): check its atoms and bonds"
                ) from None
            if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
                raise ValueError(
                    f"{where} has 2D coordinates only: give 3D coordinates (e.g. embed it with "
                    "RDKit), or its SMILES under structures.smiles"
                )
            atoms = ase.Atoms(
                numbers=[atom.GetAtomicNum() for atom in mol.GetAtoms()],
                positions=np.asarray(mol.GetConformer().GetPositions(), dtype=np.float64),
            )
            records.append((atoms, implicit_hydrogens(mol)))
    if not records:
        raise ValueError(f"{path} holds no molecule record: check that it is an SDF or MOL file")
    return records


def from_ase_molecule(name: str) -> ase.Atoms:
    """A molecule from ASE's collections (``ase.build.molecule``, e.g. ``"C6H6"``).

    Parameters
    ----------
    name
        A name known to :func:`ase.build.molecule` (G2 set and extras); stored as
        ``info["system_id"]``.

    Returns
    -------
    ase.Atoms
        Positions in Å centred on the origin, no cell, ``pbc=False``.

    Raises
    ------
    ValueError
        If ASE does not know the name.
    """
    try:
        atoms = molecule(name)
    except KeyError:
        from ase.collections import g2

        raise ValueError(
            f"ASE has no molecule named {name!r}; use a name from ase.collections.g2.names "
            f"(e.g. {', '.join(g2.names[:5])}, ...) or build it from SMILES instead"
        ) from None
    return _as_initial_molecule(atoms, name)


def _as_initial_molecule(atoms: ase.Atoms, system_id: str) -> ase.Atoms:
    """Only atoms, positions (and isotope masses), centred, no cell, tagged as initial."""
    molecule_atoms = ase.Atoms(numbers=atoms.numbers, positions=atoms.positions, pbc=False)
    if "masses" in atoms.arrays:
        molecule_atoms.set_masses(atoms.get_masses())
    atoms = molecule_atoms
    atoms.center(about=(0.0, 0.0, 0.0))
    atoms.info[SYSTEM_ID] = system_id
    atoms.info[SAMPLER] = INITIAL
    return atoms
