"""Stages over a run directory: file inputs, resumable labelling, provenance."""

import ase.io
import numpy as np
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list
from rich.console import Console

from mlff_distiller import keys
from mlff_distiller.config import load_config
from mlff_distiller.data.dataset import load_dataset
from mlff_distiller.data.store import LabelStore
from mlff_distiller.graph import from_atoms
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


def test_a_cell_smaller_than_the_cutoff_is_handled_by_images(tmp_path):
    copper = bulk("Cu", "fcc", a=3.6)  # faces 2.1 Å apart, cutoff 4 Å: images within the cutoff
    ase.io.write(tmp_path / "cu.extxyz", [copper, bulk("Cu", "fcc", a=3.7)])
    config = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            f"structures.files=[{tmp_path / 'cu.extxyz'}]",
            "structures.ase_molecules=[CH4, H2O]",
            "structures.md.frames=0",
            "teacher.name=emt",
            "model.cutoff=4.0",
            "data.val_fraction=0.2",
            "data.test_fraction=0.2",
        ],
    )
    prepare_run_dir(config)
    console = Console(quiet=True)
    generate(config, console)
    label(config, console)
    dataset = load_dataset(tmp_path / "run" / "data" / "dataset.h5")
    graph = from_atoms(
        dataset.atoms(dataset.arrays[keys.SYSTEM_ID].tolist().index("cu.extxyz:0")), 4.0
    )
    assert graph.edge_index.shape[1] == len(neighbor_list("i", copper, 4.0)) == 18  # 12 + 6 images


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
