"""The benchmark systems: size-resolved molecules and a periodic water box.

Molecules are alanine peptides H-(Ala)n-OH of about 30, 100, 300 and 1,000 atoms, embedded in
3D by RDKit (ETKDG, explicit hydrogens) and relaxed briefly with MMFF; the water box holds
1,000 molecules at 1 g/cm³ (about 3,000 atoms) with random orientations on a cubic grid. They
are written once to ``benchmarks/systems/*.xyz`` (committed), so that machines without RDKit
(the GPU machine) read the same structures.

Run ``python benchmarks/systems.py`` to (re)build missing files.
"""

from __future__ import annotations

from pathlib import Path

import ase
import ase.io
import numpy as np
from scipy.spatial.transform import Rotation

HERE = Path(__file__).parent / "systems"
PEPTIDES = {"ala3": 3, "ala10": 10, "ala30": 30, "ala100": 100}
"""Peptide name -> number of alanine residues (10 atoms each, plus 3)."""
WATER_MOLECULES = 1000
ORDER = ["ala3", "ala10", "ala30", "ala100", "water1000"]
"""All systems, smallest first."""


def peptide(n_residues: int, seed: int = 0) -> ase.Atoms:
    """H-(Ala)n-OH with explicit hydrogens, embedded by RDKit and relaxed with MMFF."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    smiles = "N" + "[C@@H](C)C(=O)N" * (n_residues - 1) + "[C@@H](C)C(=O)O"
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.useRandomCoords = n_residues > 20  # plain ETKDG fails on long chains
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise RuntimeError(f"RDKit could not embed Ala{n_residues}")
    AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
    positions = mol.GetConformer().GetPositions()
    numbers = [atom.GetAtomicNum() for atom in mol.GetAtoms()]
    atoms = ase.Atoms(numbers=numbers, positions=positions)
    atoms.center()
    return atoms


def water_box(n_per_side: int = 10, density_g_cm3: float = 1.0, seed: int = 0) -> ase.Atoms:
    """``n_per_side³`` water molecules in a periodic cube at the given density."""
    rng = np.random.default_rng(seed)
    n = n_per_side**3
    side = (n * 18.015 / 0.602214 / density_g_cm3) ** (1 / 3)  # Å
    spacing = side / n_per_side
    water = np.array([[0.0, 0.0, 0.0], [0.7572, 0.5859, 0.0], [-0.7572, 0.5859, 0.0]])
    grid = np.stack(np.meshgrid(*[np.arange(n_per_side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    rotations = Rotation.random(n, random_state=seed).as_matrix()
    positions = (grid[:, None, :] + 0.5) * spacing + np.einsum("mij,aj->mai", rotations, water)
    positions += rng.normal(scale=0.05, size=(n, 1, 3))
    return ase.Atoms("OH2" * n, positions=positions.reshape(-1, 3), cell=[side] * 3, pbc=True)


def load(name: str) -> ase.Atoms:
    """One benchmark system by name (see ``ORDER``), built and saved first if missing."""
    path = HERE / f"{name}.xyz"
    if not path.exists():
        HERE.mkdir(parents=True, exist_ok=True)
        atoms = water_box() if name.startswith("water") else peptide(PEPTIDES[name])
        ase.io.write(path, atoms, format="extxyz")
    return ase.io.read(path, format="extxyz")


if __name__ == "__main__":
    for name in ORDER:
        atoms = load(name)
        print(f"{name}: {len(atoms)} atoms, pbc={atoms.pbc.tolist()}")
