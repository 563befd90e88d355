"""Shared fixtures: a small packed dataset of molecules and periodic cells."""

import numpy as np
import pytest
from ase.build import bulk, molecule

from mlff_distiller import keys
from mlff_distiller.data.dataset import load_dataset, pack
from mlff_distiller.data.store import LabelStore
from mlff_distiller.teachers.base import Labels

CUTOFF = 4.0
"""Neighbour cutoff (Å) of the packed dataset: that of ``testing.tiny_painn``."""


def _frames():
    """Molecules and periodic cells of different sizes: 18 frames of 9 systems."""
    builders = [
        lambda: molecule("CH3CH2OH"),
        lambda: molecule("H2O"),
        lambda: molecule("C6H6"),
        lambda: bulk("Si", "diamond", a=5.43),
        lambda: bulk("Cu", "fcc", a=3.61, cubic=True),
        lambda: molecule("CH4"),
    ]
    frames = []
    for k in range(18):
        atoms = builders[k % len(builders)]()
        atoms.rattle(0.05, seed=k)
        atoms.info[keys.SYSTEM_ID] = f"sys{k % 9}"
        frames.append(atoms)
    return frames


def _labels(frames):
    """Random labels of plausible size (stress for the periodic cells)."""
    rng = np.random.default_rng(0)
    return [
        Labels(
            energy=float(rng.normal(-3.0 * len(a), 1.0)),
            forces=rng.normal(size=(len(a), 3)),
            stress=rng.normal(scale=0.01, size=(3, 3)) if a.pbc.all() else None,
        )
        for a in frames
    ]


@pytest.fixture(scope="session")
def packed_dataset_path(tmp_path_factory):
    """``dataset.h5`` (with neighbour lists of ``CUTOFF``) of 18 labelled frames."""
    directory = tmp_path_factory.mktemp("packed")
    frames = _frames()
    store = LabelStore(directory)
    store.write_shard(frames, _labels(frames), list(range(len(frames))), "toy", "1")
    pack(store, directory / "dataset.h5", 0.2, 0.2, seed=0, cutoff=CUTOFF)
    return directory / "dataset.h5"


@pytest.fixture(scope="session")
def packed_dataset(packed_dataset_path):
    """The packed dataset of ``packed_dataset_path``."""
    return load_dataset(packed_dataset_path)


@pytest.fixture(scope="session")
def sevennet0():
    """SevenNet-0 on the CPU, labelling in batches (the default budget); loaded once."""
    pytest.importorskip("sevenn")
    from mlff_distiller.teachers import get_teacher

    return get_teacher("7net-0")
