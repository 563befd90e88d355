"""Every source of structures checked before any work (the corpus in tests/hostile has more)."""

from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule

from mlff_distiller.config import load_config
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
