"""Every source of structures checked before any work (the corpus in tests/hostile has more)."""

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule

from mlff_distiller.config import (
    CrystalConfig,
    LabelledFileConfig,
    SmilesFileConfig,
    load_config,
)
from mlff_distiller.structures.validate import (
    StructureInputError,
    collect_systems,
    frame_problems,
    smiles_numbers,
)

QUICKSTART = Path(__file__).parents[2] / "configs" / "quickstart.yaml"


def test_the_quickstart_sources_are_all_valid():
    cfg = load_config(QUICKSTART).structures
    systems = collect_systems(cfg.smiles, cfg.ase_molecules, cfg.files, cfg.min_distance)
    assert len(systems) == len(cfg.smiles) + len(cfg.ase_molecules)
    assert systems[0].system_id == cfg.smiles[0]


def test_every_bad_source_is_listed_at_once(tmp_path):
    bad = tmp_path / "bad.xyz"
    bad.write_bytes(b"\x00\xff" * 100)
    with pytest.raises(StructureInputError) as info:
        collect_systems(["CCO", "C1CC", "[CH3]"], ["CH4", "NoSuchThing"], [bad], 0.6)
    message = str(info.value)
    assert message.startswith("4 structure input(s) cannot be used")
    for culprit in ("'C1CC'", "'[CH3]'", "'NoSuchThing'", str(bad)):
        assert culprit in message


def test_file_frames_become_systems_built_lazily(tmp_path):
    path = tmp_path / "two.extxyz"
    ase.io.write(path, [molecule("H2O"), molecule("NH3")])
    systems = collect_systems([], [], [path], 0.6)
    assert [s.system_id for s in systems] == ["two.extxyz:0", "two.extxyz:1"]
    atoms = systems[1].build()
    assert atoms.info["sampler"] == "initial"
    assert atoms.calc is None
    assert systems[1].build() is not atoms  # a fresh copy each time


@pytest.mark.parametrize(
    ("smiles", "n_atoms"), [("CCO", 9), ("C[N+](=O)[O-]", 7), ("[H][H]", 2), ("NCC(=O)O", 10)]
)
def test_smiles_numbers_include_hydrogens(smiles, n_atoms):
    assert len(smiles_numbers(smiles)) == n_atoms


def test_a_periodic_crystal_and_a_molecule_pass():
    assert frame_problems(bulk("Cu", "fcc", a=3.6), 0.6) == []
    assert frame_problems(molecule("C6H6"), 0.6) == []


def test_a_cell_thinner_than_min_distance_is_refused():
    atoms = bulk("Cu", "fcc", a=3.6)
    atoms.cell[2] = [0.0, 0.0, 0.3]
    (problem,) = frame_problems(atoms, 0.6)
    assert "own periodic image" in problem


def test_non_finite_positions_are_named():
    atoms = molecule("H2O")
    atoms.positions[1] = np.nan
    (problem,) = frame_problems(atoms, 0.6)
    assert "atom 1" in problem


def test_smiles_files_conformers_and_crystals_become_systems(tmp_path):
    (tmp_path / "mols.csv").write_text("smiles,name\nCCCCO,butanol\nCN,\n")
    systems = collect_systems(
        ["CCO"],
        ["H2O"],
        [],
        0.6,
        smiles_files=[SmilesFileConfig(path=tmp_path / "mols.csv", name_column="name")],
        conformers=3,
        embedding_seed=10,
        crystals=[CrystalConfig(name="Cu", cubic=True, supercell=[2, 1, 1])],
    )
    assert [s.system_id for s in systems] == ["CCO", "butanol", "CN", "H2O", "Cu-ase-cubic-2x1x1"]
    assert [s.source for s in systems] == [
        "smiles",
        f"smiles_file {tmp_path / 'mols.csv'}",
        f"smiles_file {tmp_path / 'mols.csv'}",
        "ase_molecules",
        "crystals",
    ]
    conformers = systems[1].starting_structures()
    assert len(conformers) >= 2
    assert {c.info["system_id"] for c in conformers} == {"butanol"}
    assert len(systems[3].starting_structures()) == 1
    assert len(systems[4].build()) == 8


def _stripped(name):
    atoms = molecule(name)
    return atoms[atoms.numbers != 1]


def _sdf_without_hydrogens(path):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    Chem.MolToMolFile(Chem.RemoveHs(mol), str(path))
    return path


def test_molecules_from_files_must_carry_their_hydrogens(tmp_path):
    pdb = tmp_path / "protein.pdb"
    ase.io.write(pdb, _stripped("CH3CH2OH"))
    sdf = _sdf_without_hydrogens(tmp_path / "ethanol.mol")
    fine = tmp_path / "fine.extxyz"  # CO2 and bare crystals have no hydrogen to lose
    ase.io.write(fine, [molecule("CO2"), molecule("CF3CN"), bulk("C", "diamond", a=3.57)])
    with pytest.raises(StructureInputError) as info:
        collect_systems([], [], [pdb, sdf, fine], 0.6)
    message = str(info.value)
    assert message.startswith("2 structure input(s) cannot be used")
    assert f"frame 0 of {pdb}: an organic molecule lacking hydrogens (C 0 has" in message
    assert f"frame 0 of {sdf}: it lacks 6 hydrogen(s) that its bond orders imply" in message
    assert "structures.allow_missing_hydrogens=true" in message
    systems = collect_systems([], [], [pdb, sdf, fine], 0.6, allow_missing_hydrogens=True)
    assert [s.system_id for s in systems] == [
        "protein.pdb:0",
        "ethanol.mol:0",
        "fine.extxyz:0",
        "fine.extxyz:1",
        "fine.extxyz:2",
    ]
    assert systems[1].build().get_chemical_formula() == "C2O"


def _labelled(atoms, system_id=None, energy=-1.0):
    atoms.info["REF_energy"] = energy
    atoms.arrays["REF_forces"] = np.zeros((len(atoms), 3))
    if system_id is not None:
        atoms.info["mol"] = system_id
    return atoms


def test_labelled_frames_are_grouped_into_systems(tmp_path):
    path = tmp_path / "dft.extxyz"
    frames = [
        _labelled(molecule("H2O"), "water", -1.0),
        _labelled(molecule("CH4"), None, -2.0),
        _labelled(molecule("H2O"), "water", -3.0),
    ]
    ase.io.write(path, frames)
    entry = LabelledFileConfig(
        path=path, energy_key="REF_energy", forces_key="REF_forces", system_key="mol"
    )
    systems = collect_systems([], [], [], 0.6, labelled_files=[entry])
    assert [(s.system_id, s.labelled) for s in systems] == [
        ("water", True),
        ("dft.extxyz:1", True),
    ]
    water = systems[0].starting_structures()
    assert [f.info["teacher_energy"] for f in water] == [-1.0, -3.0]
    assert {f.info["sampler"] for f in water} == {"imported"}
    assert systems[0].source == f"labelled_file {path}"


def test_labelled_frames_without_their_labels_are_listed(tmp_path):
    path = tmp_path / "dft.extxyz"
    ase.io.write(path, [_labelled(molecule("H2O")), molecule("NH3"), _stripped("C2H6")])
    with pytest.raises(StructureInputError) as info:
        collect_systems([], [], [], 0.6, labelled_files=[LabelledFileConfig(path=path)])
    message = str(info.value)
    assert message.startswith("1 structure input(s) cannot be used")
    assert f"frame 0 of {path}: it has no energy under 'teacher_energy' (its keys: " in message
    assert "set the labelled_files entry's energy_key/forces_key/stress_key" in message
    assert f"frame 1 of {path}: it has no energy" in message
    assert f"frame 2 of {path}: an organic molecule lacking hydrogens" in message


def test_a_bad_smiles_of_a_file_names_the_file(tmp_path):
    (tmp_path / "mols.smi").write_text("CCO\nC1CC ring\n")
    with pytest.raises(StructureInputError, match=r"SMILES 'C1CC' .* \(in .*mols.smi\)"):
        collect_systems(
            [], [], [], 0.6, smiles_files=[SmilesFileConfig(path=tmp_path / "mols.smi")]
        )
