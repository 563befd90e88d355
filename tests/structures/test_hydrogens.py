"""Organic molecules must carry their hydrogens: the geometric check and RDKit's count."""

import numpy as np
import pytest
from ase.build import bulk, molecule
from rdkit import Chem

from mlff_distiller.structures.hydrogens import implicit_hydrogens, missing_hydrogen_problems
from mlff_distiller.structures.sources import from_smiles


@pytest.mark.parametrize(
    "name",
    # Saturated by hydrogens, or by other atoms only: sp3, sp2, sp, C=O, C≡N, C=S, CO.
    ["CH3CH2OH", "C6H6", "HCN", "CO2", "CF4", "CCl4", "CF3CN", "CO", "C2H2", "CH3CN", "H2CCO"],
)
def test_complete_molecules_pass(name):
    assert missing_hydrogen_problems(molecule(name)) == []


@pytest.mark.parametrize("smiles", ["CC(N)=S", "CS(C)=O", "O=C1CCCN1", "COP(=O)(OC)OC", "CC=O"])
def test_embedded_smiles_pass(smiles):
    assert missing_hydrogen_problems(from_smiles(smiles)) == []


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("C6H6", "2 neighbours at"),  # aromatic CH without its H: 120°, not linear
        ("CH3CH2OH", "single"),  # CH3 and OH stripped
        ("CH4", "no bonded neighbour"),
        ("C2H6", "single neighbour"),
        ("H3CNH2", "single"),
    ],
)
def test_stripped_molecules_are_found(name, expected):
    atoms = molecule(name)
    problems = missing_hydrogen_problems(atoms[atoms.numbers != 1])
    assert problems
    assert any(expected in p for p in problems), problems


def test_a_pyramidal_carbon_lacks_its_hydrogen():
    atoms = molecule("isobutane")
    carbons = np.flatnonzero(atoms.numbers == 6)
    # The tertiary carbon is the one nearest to all others; drop its one hydrogen.
    tertiary = carbons[np.argmin([atoms.get_distances(c, carbons).sum() for c in carbons])]
    del atoms[
        int(
            np.argmin(
                np.where(
                    atoms.numbers == 1, atoms.get_distances(tertiary, range(len(atoms))), np.inf
                )
            )
        )
    ]
    problems = missing_hydrogen_problems(atoms)
    assert len(problems) == 1
    assert problems[0].startswith(f"C {tertiary} has 3 neighbours in a pyramid")


def test_crystals_of_bare_carbon_are_saturated():
    assert missing_hydrogen_problems(bulk("C", "diamond", a=3.57)) == []
    assert missing_hydrogen_problems(bulk("SiC", "zincblende", a=4.36)) == []


def test_implicit_hydrogens_of_a_molecule_with_bond_orders():
    with_h = Chem.AddHs(Chem.MolFromSmiles("CC(=O)O"))
    assert implicit_hydrogens(with_h) == 0
    assert implicit_hydrogens(Chem.MolFromSmiles("CC(=O)O")) == 4
