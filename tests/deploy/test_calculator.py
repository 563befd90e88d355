import pickle

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.md.verlet import VelocityVerlet

from mlff_distiller import load_calculator
from mlff_distiller.deploy.artefact import load_student, save_student
from mlff_distiller.graph import from_atoms
from mlff_distiller.models import predict
from mlff_distiller.testing import tiny_painn


@pytest.fixture
def run_dir(tmp_path):
    model = tiny_painn(dtype=torch.float32)
    save_student(
        tmp_path / "model" / "student.pt",
        model,
        {"elements": [1, 6, 7, 8, 29], "teacher_name": "toy", "teacher_version": "0"},
    )
    return tmp_path


def test_round_trip_gives_the_same_model(run_dir):
    model, meta = load_student(run_dir)
    reference = tiny_painn(dtype=torch.float32)
    atoms = molecule("CH3CH2OH")
    graph = from_atoms(atoms, 4.0)
    torch.testing.assert_close(model(graph), reference(graph))
    assert meta["teacher_name"] == "toy"
    assert meta["units"]["energy"] == "eV"
    assert meta["cutoff"] == pytest.approx(4.0)


def test_calculator_matches_predict_and_is_fresh_after_moves(run_dir):
    calc = load_calculator(run_dir)
    atoms = molecule("CH3CH2OH")
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    f0 = atoms.get_forces()
    expected = predict(tiny_painn(dtype=torch.float32), from_atoms(atoms, 4.0))
    assert e0 == pytest.approx(float(expected["energy"][0]), abs=1e-5)
    np.testing.assert_allclose(f0, expected["forces"].detach().numpy(), atol=1e-5)

    atoms.positions[0] += [0.1, -0.05, 0.02]
    e1 = atoms.get_potential_energy()
    assert e1 != e0
    np.testing.assert_allclose(
        atoms.get_forces(),
        predict(tiny_painn(dtype=torch.float32), from_atoms(atoms, 4.0))["forces"].detach(),
        atol=1e-5,
    )
    atoms.numbers[1] = 7  # a changed element is a change too
    assert atoms.get_potential_energy() != e1


def test_stress_for_periodic_cells_only(run_dir):
    cu = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    cu.calc = load_calculator(run_dir)
    assert cu.get_stress().shape == (6,)
    cu.set_cell(cu.cell * 0.98, scale_atoms=True)  # cell change -> new stress
    assert np.isfinite(cu.get_stress()).all()
    mol = molecule("H2O")
    mol.calc = load_calculator(run_dir)
    with pytest.raises(Exception, match="stress"):
        mol.get_stress()


def test_ase_md_runs(run_dir):
    atoms = molecule("CH3CH2OH")
    atoms.calc = load_calculator(run_dir)
    start = atoms.positions.copy()
    VelocityVerlet(atoms, timestep=0.25).run(5)
    assert not np.allclose(atoms.positions, start)
    assert np.isfinite(atoms.get_potential_energy())


def test_unseen_element_is_a_clear_error(run_dir):
    atoms = molecule("PH3")
    atoms.calc = load_calculator(run_dir)
    with pytest.raises(ValueError, match="never trained on P"):
        atoms.get_potential_energy()


def test_file_from_elsewhere_never_runs_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    path = tmp_path / "student.pt"
    path.write_bytes(pickle.dumps({"format": Evil()}, protocol=2))
    with pytest.raises(pickle.UnpicklingError):
        load_student(path)


def test_missing_student_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="mlff-distill train"):
        load_calculator(tmp_path)


def test_cell_and_pbc_changes_are_seen(run_dir):
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
    atoms.rattle(0.05, seed=2)
    atoms.calc = load_calculator(run_dir)
    periodic = atoms.get_potential_energy()
    atoms.pbc = False  # the same atoms as a cluster: a different energy, and no stress
    cluster = atoms.get_potential_energy()
    assert cluster != periodic
    assert "stress" not in atoms.calc.results
    atoms.pbc = True
    assert atoms.get_potential_energy() == pytest.approx(periodic, abs=1e-6)
    atoms.set_cell(atoms.cell * 1.01)  # positions kept, cell stretched
    assert atoms.get_potential_energy() != pytest.approx(periodic, abs=1e-6)
