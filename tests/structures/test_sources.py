"""Structure sources: SMILES (RDKit, explicit hydrogens) and ASE's molecule collection."""

from __future__ import annotations

import numpy as np
import pytest

from mlff_distiller.structures.filters import shortest_distance
from mlff_distiller.structures.sources import from_ase_molecule, from_smiles


def _bounding_box_centre(atoms):
    return (atoms.positions.min(axis=0) + atoms.positions.max(axis=0)) / 2


@pytest.mark.parametrize(
    ("smiles", "n_atoms", "n_hydrogens"),
    [
        ("CCO", 9, 6),
        ("C", 5, 4),
        ("O", 3, 2),
        ("c1ccccc1", 12, 6),
        ("[NH4+]", 5, 4),
        ("[H][H]", 2, 2),
        ("CC(=O)O", 8, 4),
    ],
)
def test_from_smiles_adds_explicit_hydrogens(smiles, n_atoms, n_hydrogens):
    atoms = from_smiles(smiles)
    assert len(atoms) == n_atoms
    assert (atoms.numbers == 1).sum() == n_hydrogens


def test_from_smiles_metadata_and_geometry():
    atoms = from_smiles("CCO")
    assert atoms.info["system_id"] == "CCO"
    assert atoms.info["sampler"] == "initial"
    assert not atoms.pbc.any()
    assert not atoms.cell.array.any()
    assert atoms.calc is None
    np.testing.assert_allclose(_bounding_box_centre(atoms), 0.0, atol=1e-9)
    # MMFF-relaxed: O-H ~0.97 Å is the shortest bond, no clashes.
    assert 0.9 < shortest_distance(atoms, 3.0) < 1.1


def test_from_smiles_custom_system_id():
    assert from_smiles("CCO", system_id="ethanol").info["system_id"] == "ethanol"


def test_from_smiles_is_reproducible_with_a_seed():
    np.testing.assert_array_equal(
        from_smiles("CCCCO", seed=3).positions, from_smiles("CCCCO", seed=3).positions
    )


def test_from_smiles_keeps_isotope_masses():
    atoms = from_smiles("[2H]C([2H])([2H])[2H]")
    deuterium = atoms.numbers == 1
    np.testing.assert_allclose(atoms.get_masses()[deuterium], 2.014, atol=1e-3)


def test_from_smiles_without_force_field_parameters_still_embeds():
    atoms = from_smiles("[Cu]")
    assert atoms.get_chemical_symbols() == ["Cu"]


def test_invalid_smiles_is_named():
    with pytest.raises(ValueError, match=r"cannot parse the SMILES 'C1CC\('"):
        from_smiles("C1CC(")


def test_from_ase_molecule():
    atoms = from_ase_molecule("C6H6")
    assert len(atoms) == 12
    assert atoms.info["system_id"] == "C6H6"
    assert atoms.info["sampler"] == "initial"
    assert not atoms.pbc.any()
    assert not atoms.cell.array.any()
    np.testing.assert_allclose(_bounding_box_centre(atoms), 0.0, atol=1e-9)


def test_unknown_ase_molecule_is_named():
    with pytest.raises(ValueError, match="ASE has no molecule named 'unobtainium'"):
        from_ase_molecule("unobtainium")
