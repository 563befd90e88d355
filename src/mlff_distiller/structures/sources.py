"""Where structures come from: SMILES strings and ASE's molecule collection.

Every structure leaves here with ``info["system_id"]`` (the molecule or crystal it is, used
to split train and test) and ``info["sampler"] = "initial"``. Molecules are centred on the
origin, with no cell and ``pbc=False``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import ase
import numpy as np
from ase.build import molecule

from mlff_distiller.keys import SAMPLER, SYSTEM_ID

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
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ValueError(f"RDKit cannot parse the SMILES {smiles!r}: check its syntax and valences")
    n_hydrogens = sum(atom.GetTotalNumHs() + (atom.GetAtomicNum() == 1) for atom in mol.GetAtoms())
    mol = Chem.AddHs(mol)
    assert sum(atom.GetAtomicNum() == 1 for atom in mol.GetAtoms()) == n_hydrogens

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
