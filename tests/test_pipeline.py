"""Stages over a run directory: file inputs, resumable labelling, provenance."""

import ase.io
import numpy as np
from ase.build import molecule
from rich.console import Console

from mlff_distiller import keys
from mlff_distiller.config import load_config
from mlff_distiller.data.dataset import load_dataset
from mlff_distiller.data.store import LabelStore
from mlff_distiller.pipeline import generate, label, prepare_run_dir, read_structures


def _config(tmp_path, *overrides):
    frames = [molecule("CH4"), molecule("H2O"), molecule("NH3"), molecule("CH3OH")]
    ase.io.write(tmp_path / "input.extxyz", frames)
    return load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            f"structures.files=[{tmp_path / 'input.extxyz'}]",
            "structures.ase_molecules=[C2H6]",
            "structures.rattle.frames=2",
            "structures.md.frames=0",
            "teacher.name=emt",
            "teacher.shard_size=4",
            "data.val_fraction=0.2",
            "data.test_fraction=0.2",
            *overrides,
        ],
    )


def test_files_become_systems_and_labels_resume(tmp_path):
    config = _config(tmp_path)
    prepare_run_dir(config)
    console = Console(quiet=True)
    generate(config, console)
    frames = read_structures(config)
    assert len(frames) == 5 * 3  # 5 systems x (initial + 2 rattled)
    ids = {a.info[keys.SYSTEM_ID] for a in frames}
    assert ids == {"input.extxyz:0", "input.extxyz:1", "input.extxyz:2", "input.extxyz:3", "C2H6"}

    label(config, console)
    store = LabelStore(tmp_path / "run" / "data")
    shards = store.shard_paths()
    assert len(shards) == 4  # 15 structures in shards of 4
    reference = load_dataset(tmp_path / "run" / "data" / "dataset.h5")

    # A run killed during labelling: the last shard and the packed set never got written.
    shards[-1].unlink()
    (tmp_path / "run" / "data" / "dataset.h5").unlink()
    assert len(store.labelled_indices()) == 12
    label(config, console)
    again = load_dataset(tmp_path / "run" / "data" / "dataset.h5")
    assert len(store.shard_paths()) == 4
    np.testing.assert_allclose(
        again.arrays[keys.TEACHER_ENERGY], reference.arrays[keys.TEACHER_ENERGY]
    )
    np.testing.assert_array_equal(again.arrays["split"], reference.arrays["split"])
    assert again.teacher_name == "emt"
    assert again.teacher_version.startswith("ase-")
