"""The packed training set (``RUN/data/dataset.h5``): all labelled structures plus the split.

Splits are by ``system_id`` (the molecule or crystal a frame came from), never by frame:
frames of one molecule in both train and test would measure memorisation, not distillation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ase
import numpy as np

from mlff_distiller import keys
from mlff_distiller.data.store import LabelStore, read_arrays, reorder, write_arrays

SPLITS = ("train", "val", "test")


def split_by_system(
    system_ids: Sequence[str], val_fraction: float, test_fraction: float, seed: int
) -> np.ndarray:
    """Assign every frame to a split through its system.

    Parameters
    ----------
    system_ids
        (n,) system of each frame.
    val_fraction, test_fraction
        Fractions of *systems* for validation and test; each gets at least one system when
        its fraction is positive, and at least one system is left to train on.
    seed
        Seed of the random assignment of systems.

    Returns
    -------
    numpy.ndarray
        (n,) int8 split code of each frame: 0 train, 1 val, 2 test (see ``SPLITS``).
    """
    systems = np.array(sorted(set(system_ids)))
    n = len(systems)
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    if n_test + n_val >= n:
        raise ValueError(
            f"{n} systems cannot be split into train/val/test with val_fraction={val_fraction} "
            f"and test_fraction={test_fraction}: add systems or lower the fractions"
        )
    order = np.random.default_rng(seed).permutation(n)
    code = np.zeros(n, dtype=np.int8)
    code[order[:n_test]] = 2
    code[order[n_test : n_test + n_val]] = 1
    lookup = dict(zip(systems.tolist(), code.tolist(), strict=True))
    return np.array([lookup[s] for s in system_ids], dtype=np.int8)


@dataclass(frozen=True)
class PackedDataset:
    """Labelled structures in the shard layout of :mod:`mlff_distiller.data.store`.

    Attributes
    ----------
    arrays
        Shard-layout arrays, plus ``split`` (n,) when packed.
    teacher_name, teacher_version
        Provenance of the labels.
    """

    arrays: dict[str, np.ndarray]
    teacher_name: str
    teacher_version: str

    def __len__(self) -> int:
        return len(self.arrays[keys.TEACHER_ENERGY])

    def subset(self, split: str) -> PackedDataset:
        """The structures of one split (``train``, ``val`` or ``test``)."""
        order = np.flatnonzero(self.arrays["split"] == SPLITS.index(split))
        sub = reorder(self.arrays, order)
        sub["split"] = self.arrays["split"][order]
        return PackedDataset(sub, self.teacher_name, self.teacher_version)

    def n_atoms(self) -> np.ndarray:
        """(n,) atoms per structure."""
        return np.diff(self.arrays["ptr"])

    def atoms(self, k: int) -> ase.Atoms:
        """Structure ``k`` as :class:`ase.Atoms` (labels in ``info``/``arrays``)."""
        a, b = self.arrays["ptr"][k], self.arrays["ptr"][k + 1]
        atoms = ase.Atoms(
            numbers=self.arrays["numbers"][a:b],
            positions=self.arrays["positions"][a:b],
            cell=self.arrays["cell"][k],
            pbc=self.arrays["pbc"][k],
        )
        atoms.info[keys.SYSTEM_ID] = str(self.arrays[keys.SYSTEM_ID][k])
        atoms.info[keys.TEACHER_ENERGY] = float(self.arrays[keys.TEACHER_ENERGY][k])
        atoms.arrays[keys.TEACHER_FORCES] = self.arrays[keys.TEACHER_FORCES][a:b].copy()
        if self.arrays["has_stress"][k]:
            atoms.info[keys.TEACHER_STRESS] = self.arrays[keys.TEACHER_STRESS][k].copy()
        return atoms

    def systems(self) -> list[str]:
        """Distinct system ids, sorted."""
        return sorted(set(self.arrays[keys.SYSTEM_ID].tolist()))


def pack(
    store: LabelStore, path: Path, val_fraction: float, test_fraction: float, seed: int
) -> PackedDataset:
    """Join the shards of ``store``, split them by system and write ``path`` atomically."""
    arrays, attrs = store.read_all()
    arrays["split"] = split_by_system(arrays[keys.SYSTEM_ID], val_fraction, test_fraction, seed)
    write_arrays(path, arrays, attrs)
    return PackedDataset(arrays, attrs[keys.TEACHER_NAME], attrs[keys.TEACHER_VERSION])


def load_dataset(path: Path) -> PackedDataset:
    """Read a packed dataset written by :func:`pack`."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no packed dataset (run the label stage first)")
    arrays, attrs = read_arrays(path)
    return PackedDataset(arrays, attrs[keys.TEACHER_NAME], attrs[keys.TEACHER_VERSION])
