"""Structure sources: SMILES (strings, files, conformers), ASE molecules, crystals, SDF."""

from __future__ import annotations

import numpy as np
import pytest

from mlff_distiller.structures.filters import near_duplicates, shortest_distance
from mlff_distiller.structures.sources import (
    CONFORMER_TOLERANCE,
    conformers_from_smiles,
    crystal,
    from_ase_molecule,
    from_smiles,
    read_sdf,
    read_smiles_file,
)


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


def test_smi_file_with_header_comments_and_names(tmp_path):
    path = tmp_path / "mols.smi"
    path.write_text("SMILES Name\n# a comment\nCCO ethanol\n\nC\tmethane gas\nc1ccccc1\n")
    assert read_smiles_file(path) == [("CCO", "ethanol"), ("C", "methane gas"), ("c1ccccc1", None)]


def test_csv_file_with_a_named_column(tmp_path):
    path = tmp_path / "mols.csv"
    path.write_text("id,smi,name\n1,CCO,ethanol\n2,CN,\n")
    assert read_smiles_file(path, column="smi", name_column="name") == [
        ("CCO", "ethanol"),
        ("CN", None),
    ]
    with pytest.raises(ValueError, match=r"no column 'smiles' \(its columns: id, smi, name\)"):
        read_smiles_file(path)


def test_a_csv_row_without_smiles_is_named(tmp_path):
    path = tmp_path / "mols.csv"
    path.write_text("smiles\nCCO\n\n ,\n")
    with pytest.raises(ValueError, match=r"line 4 of .*mols.csv has no SMILES"):
        read_smiles_file(path)


def test_a_smiles_file_needs_a_known_extension(tmp_path):
    path = tmp_path / "mols.txt"
    path.write_text("CCO\n")
    with pytest.raises(ValueError, match=r"must be .smi .* or .csv"):
        read_smiles_file(path)


def test_conformers_are_distinct_reproducible_and_share_the_system():
    conformers = conformers_from_smiles("CCCCO", 4, system_id="butanol", seed=1)
    assert 2 <= len(conformers) <= 4
    assert {c.info["system_id"] for c in conformers} == {"butanol"}
    assert near_duplicates(conformers, CONFORMER_TOLERANCE) == []
    again = conformers_from_smiles("CCCCO", 4, system_id="butanol", seed=1)
    for a, b in zip(conformers, again, strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
    # A rigid molecule relaxes to one conformer, however many are asked for.
    assert len(conformers_from_smiles("c1ccccc1", 3)) == 1


def test_one_conformer_is_the_single_embedding():
    (atoms,) = conformers_from_smiles("CCO", 1, seed=2)
    np.testing.assert_array_equal(atoms.positions, from_smiles("CCO", seed=2).positions)


def test_crystals_and_supercells():
    copper = crystal("Cu", "fcc", a=3.6, cubic=True, supercell=(2, 2, 1))
    assert len(copper) == 16
    assert copper.pbc.all()
    np.testing.assert_allclose(copper.cell.lengths(), [7.2, 7.2, 3.6])
    assert copper.info["system_id"] == "Cu-fcc-a3.6-cubic-2x2x1"
    assert copper.info["sampler"] == "initial"
    salt = crystal("NaCl", "rocksalt", a=5.64, system_id="salt")
    assert salt.get_chemical_formula() == "ClNa"
    assert salt.info["system_id"] == "salt"
    assert len(crystal("Si")) == 2  # ASE's reference diamond structure


def test_a_crystal_ase_cannot_build_is_named():
    with pytest.raises(ValueError, match=r"crystal 'NaCl' .*ASE cannot build it"):
        crystal("NaCl")  # a compound needs its structure and lattice constant


def _sdf(path, *smiles_and_hydrogens):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    writer = Chem.SDWriter(str(path))
    for smiles, keep_hydrogens in smiles_and_hydrogens:
        mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
        AllChem.EmbedMolecule(mol, randomSeed=0)
        writer.write(mol if keep_hydrogens else Chem.RemoveHs(mol))
    writer.close()
    return path


def test_sdf_records_and_their_missing_hydrogens(tmp_path):
    path = _sdf(tmp_path / "two.sdf", ("CC(=O)O", True), ("CC(=O)O", False))
    (complete, n_complete), (stripped, n_stripped) = read_sdf(path)
    assert complete.get_chemical_formula() == "C2H4O2"
    assert not complete.pbc.any()
    assert n_complete == 0
    assert stripped.get_chemical_formula() == "C2O2"
    assert n_stripped == 4


def test_a_2d_sdf_record_is_refused(tmp_path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles("CCO")
    AllChem.Compute2DCoords(mol)
    Chem.MolToMolFile(mol, str(tmp_path / "flat.mol"))
    with pytest.raises(ValueError, match=r"record 0 of .*flat.mol has 2D coordinates only"):
        read_sdf(tmp_path / "flat.mol")
