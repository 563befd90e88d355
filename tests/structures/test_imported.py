"""Labels users already have: read under their keys, stored as teacher_* labels."""

import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from mlff_distiller import keys
from mlff_distiller.structures.imported import IMPORTED, imported_labels, labelled_frame


def _with_ref_labels(atoms, seed=0):
    rng = np.random.default_rng(seed)
    atoms.info["REF_energy"] = -12.5
    atoms.arrays["REF_forces"] = rng.normal(size=(len(atoms), 3))
    return atoms


def test_user_keys_become_teacher_labels(tmp_path):
    water = _with_ref_labels(molecule("H2O"))
    ase.io.write(tmp_path / "ref.extxyz", water)
    (read,) = ase.io.read(tmp_path / "ref.extxyz", index=":")
    frame, problems = labelled_frame(read, "REF_energy", "REF_forces", "REF_stress", "water")
    assert problems == []
    assert frame.info[keys.TEACHER_ENERGY] == -12.5
    np.testing.assert_allclose(frame.arrays[keys.TEACHER_FORCES], water.arrays["REF_forces"])
    assert keys.TEACHER_STRESS not in frame.info  # a molecule has none
    assert frame.info[keys.SYSTEM_ID] == "water"
    assert frame.info[keys.SAMPLER] == IMPORTED
    assert "REF_energy" not in frame.info
    labels = imported_labels(frame)
    assert labels.energy == -12.5
    np.testing.assert_allclose(labels.forces, water.arrays["REF_forces"])


def test_bare_ase_keys_are_read_from_the_calculator_results(tmp_path):
    copper = bulk("Cu", "fcc", a=3.7, cubic=True)
    copper.rattle(0.05, seed=1)
    copper.calc = EMT()
    energy, forces, stress = (
        copper.get_potential_energy(),
        copper.get_forces(),
        copper.get_stress(voigt=True),
    )
    copper.calc = SinglePointCalculator(copper, energy=energy, forces=forces, stress=stress)
    ase.io.write(tmp_path / "cu.extxyz", copper)
    (read,) = ase.io.read(tmp_path / "cu.extxyz", index=":")
    frame, problems = labelled_frame(read, "energy", "forces", "stress", "cu")
    assert problems == []
    assert frame.info[keys.TEACHER_ENERGY] == pytest.approx(energy)
    np.testing.assert_allclose(frame.arrays[keys.TEACHER_FORCES], forces, atol=1e-7)
    full = frame.info[keys.TEACHER_STRESS]
    assert full.shape == (3, 3)
    np.testing.assert_allclose(full[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]], stress, atol=1e-7)
    assert frame.calc is None
    assert imported_labels(frame).stress.shape == (3, 3)


def test_missing_and_malformed_labels_are_named():
    water = molecule("H2O")
    water.info["REF_energy"] = -1.0
    water.arrays["dft_forces"] = np.zeros((3, 3))
    frame, problems = labelled_frame(water, "REF_energy", "REF_forces", None, "w")
    assert frame is None
    assert problems == ["it has no forces under 'REF_forces' (its keys: REF_energy, dft_forces)"]
    water.arrays["REF_forces"] = np.full((3, 3), np.nan)
    water.info["REF_energy"] = "high"
    _, problems = labelled_frame(water, "REF_energy", "REF_forces", None, "w")
    assert len(problems) == 2
    assert "'REF_energy' is not one finite number" in problems[0]
    assert "'REF_forces' are not all finite" in problems[1]


def test_a_frame_the_teacher_labels_has_no_imported_labels():
    atoms = molecule("CH4")
    atoms.info[keys.SAMPLER] = "initial"
    assert imported_labels(atoms) is None
