"""The labelled set as extxyz: read back by ASE, and by a run as a labelled file."""

import ase.io
import numpy as np
import pytest

from mlff_distiller import keys
from mlff_distiller.config import LabelledFileConfig
from mlff_distiller.data.dataset import SPLITS
from mlff_distiller.data.export import export_extxyz
from mlff_distiller.structures.validate import collect_systems


def test_export_round_trips_through_ase(tmp_path, packed_dataset):
    path = tmp_path / "all.extxyz"
    assert export_extxyz(packed_dataset, path) == len(packed_dataset)
    frames = ase.io.read(path, index=":")
    arrays = packed_dataset.arrays
    assert len(frames) == len(packed_dataset)
    for k, frame in enumerate(frames):
        original = packed_dataset.atoms(k)
        np.testing.assert_array_equal(frame.numbers, original.numbers)
        np.testing.assert_allclose(frame.positions, original.positions, atol=1e-8)
        np.testing.assert_allclose(frame.cell[:], original.cell[:], atol=1e-8)
        np.testing.assert_array_equal(frame.pbc, original.pbc)
        assert frame.info[keys.TEACHER_ENERGY] == arrays[keys.TEACHER_ENERGY][k]
        np.testing.assert_allclose(
            frame.arrays[keys.TEACHER_FORCES], original.arrays[keys.TEACHER_FORCES], atol=1e-8
        )
        if arrays["has_stress"][k]:
            np.testing.assert_array_equal(
                frame.info[keys.TEACHER_STRESS], arrays[keys.TEACHER_STRESS][k]
            )
        else:
            assert keys.TEACHER_STRESS not in frame.info
        assert frame.info[keys.SYSTEM_ID] == arrays[keys.SYSTEM_ID][k]
        assert frame.info["split"] == SPLITS[arrays["split"][k]]
        assert frame.info[keys.TEACHER_NAME] == packed_dataset.teacher_name
        assert frame.calc is None  # no bare energy/forces keys for ASE to move


def test_one_split_and_reimport_as_labelled_file(tmp_path, packed_dataset):
    path = tmp_path / "test.extxyz"
    n_test = int((packed_dataset.arrays["split"] == 2).sum())
    assert export_extxyz(packed_dataset, path, "test") == n_test
    systems = collect_systems([], [], [], 0.5, labelled_files=[LabelledFileConfig(path=path)])
    test = packed_dataset.subset("test")
    assert sorted(s.system_id for s in systems) == test.systems()
    frames = [f for s in systems for f in s.starting_structures()]
    energies = sorted(f.info[keys.TEACHER_ENERGY] for f in frames)
    np.testing.assert_array_equal(energies, np.sort(test.arrays[keys.TEACHER_ENERGY]))


def test_an_unknown_split_is_refused(tmp_path, packed_dataset):
    with pytest.raises(ValueError, match="split 'holdout' is none of train, val, test, all"):
        export_extxyz(packed_dataset, tmp_path / "x.extxyz", "holdout")
    assert not (tmp_path / "x.extxyz").exists()
