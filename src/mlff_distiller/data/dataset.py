"""The packed training set (``RUN/data/dataset.h5``): all labelled structures plus the split.

Splits are by ``system_id`` (the molecule or crystal a frame came from), never by frame:
frames of one molecule in both train and test would measure memorisation, not distillation.

The file also holds the neighbour list of every structure (``edge_ptr``, ``edges``,
``cell_shifts``; see :mod:`mlff_distiller.data.store`), computed once when the labels are
packed, with its cutoff in the attribute ``neighbour_cutoff`` (Å): training reads them
instead of searching neighbours again. A dataset written before neighbour lists were stored,
or packed for another cutoff, still loads: :meth:`PackedDataset.with_neighbours` then builds
the lists in memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ase
import numpy as np

from mlff_distiller import keys
from mlff_distiller.data.store import LabelStore, read_arrays, reorder, write_arrays
from mlff_distiller.graph import neighbour_list, structure_cell

SPLITS = ("train", "val", "test")

NEIGHBOUR_CUTOFF = "neighbour_cutoff"
"""Attribute of ``dataset.h5``: cutoff (Å) of the stored neighbour lists."""


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
        Shard-layout arrays, plus ``split`` (n,) when packed and the neighbour lists
        (``edge_ptr``, ``edges``, ``cell_shifts``) when ``neighbour_cutoff`` is set.
    teacher_name, teacher_version
        Provenance of the labels.
    neighbour_cutoff
        Cutoff (Å) of the stored neighbour lists; None when there are none.
    """

    arrays: dict[str, np.ndarray]
    teacher_name: str
    teacher_version: str
    neighbour_cutoff: float | None = None

    def __len__(self) -> int:
        return len(self.arrays[keys.TEACHER_ENERGY])

    def subset(self, split: str) -> PackedDataset:
        """The structures of one split (``train``, ``val`` or ``test``)."""
        order = np.flatnonzero(self.arrays["split"] == SPLITS.index(split))
        sub = reorder(self.arrays, order)
        sub["split"] = self.arrays["split"][order]
        return PackedDataset(sub, self.teacher_name, self.teacher_version, self.neighbour_cutoff)

    def with_neighbours(self, cutoff: float) -> PackedDataset:
        """The dataset with neighbour lists of ``cutoff`` (Å): itself if it has them."""
        if self.neighbour_cutoff == float(cutoff):
            return self
        arrays = {**self.arrays, **neighbour_arrays(self.arrays, cutoff)}
        return PackedDataset(arrays, self.teacher_name, self.teacher_version, float(cutoff))

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


def neighbour_arrays(arrays: dict[str, np.ndarray], cutoff: float) -> dict[str, np.ndarray]:
    """Neighbour lists of every structure of shard-layout ``arrays``.

    The same vesin search as :func:`mlff_distiller.graph.from_atoms`, in the same edge order,
    so a graph built from these arrays equals the one built from the structure.

    Parameters
    ----------
    arrays
        Shard-layout arrays (``ptr``, ``positions``, ``cell``, ``pbc``, ...).
    cutoff
        Cutoff radius, Å.

    Returns
    -------
    dict[str, numpy.ndarray]
        ``edge_ptr`` (n + 1,) int64, ``edges`` (E, 2) int32 atom indices within each
        structure, ``cell_shifts`` (E, 3) integer images (int8 when they fit, else int32).
    """
    ptr = arrays["ptr"]
    edges, shifts = [], []
    for k in range(len(ptr) - 1):
        a, b = ptr[k], ptr[k + 1]
        pbc = arrays["pbc"][k]
        name = f"{k} ({arrays[keys.SYSTEM_ID][k]})" if keys.SYSTEM_ID in arrays else str(k)
        cell = structure_cell(arrays["cell"][k], pbc, name)
        edge_index, cell_shifts = neighbour_list(arrays["positions"][a:b], cell, pbc, cutoff)
        edges.append(edge_index.T)
        shifts.append(cell_shifts)
    counts = np.array([len(e) for e in edges], dtype=np.int64)
    all_shifts = np.concatenate(shifts) if shifts else np.zeros((0, 3), dtype=np.int64)
    small = all_shifts.size == 0 or np.abs(all_shifts).max() <= np.iinfo(np.int8).max
    return {
        "edge_ptr": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "edges": (np.concatenate(edges) if edges else np.zeros((0, 2))).astype(np.int32),
        "cell_shifts": all_shifts.astype(np.int8 if small else np.int32),
    }


def pack(
    store: LabelStore,
    path: Path,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    cutoff: float,
) -> PackedDataset:
    """Join the shards of ``store``, split by system, add neighbour lists, write ``path``.

    The file is written atomically; the neighbour lists use ``cutoff`` (Å), the student's.
    """
    arrays, attrs = store.read_all()
    return pack_arrays(arrays, attrs, path, val_fraction, test_fraction, seed, cutoff)


def pack_arrays(
    arrays: dict[str, np.ndarray],
    attrs: dict[str, str],
    path: Path,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    cutoff: float,
) -> PackedDataset:
    """Split shard-layout ``arrays`` by system, add neighbour lists, write ``path``.

    Parameters
    ----------
    arrays, attrs
        Labelled structures and their provenance, as :meth:`LabelStore.read_all` returns
        them (possibly a selection of them).
    path
        The dataset file, written atomically.
    val_fraction, test_fraction, seed
        The split (:func:`split_by_system`).
    cutoff
        Cutoff of the stored neighbour lists, Å (the student's).
    """
    arrays = dict(arrays)
    arrays["split"] = split_by_system(arrays[keys.SYSTEM_ID], val_fraction, test_fraction, seed)
    arrays.update(neighbour_arrays(arrays, cutoff))
    write_arrays(path, arrays, {**attrs, NEIGHBOUR_CUTOFF: repr(float(cutoff))})
    return PackedDataset(
        arrays, attrs[keys.TEACHER_NAME], attrs[keys.TEACHER_VERSION], float(cutoff)
    )


def load_dataset(path: Path) -> PackedDataset:
    """Read a packed dataset written by :func:`pack` (neighbour lists or not)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no packed dataset (run the label stage first)")
    arrays, attrs = read_arrays(path)
    cutoff = attrs.get(NEIGHBOUR_CUTOFF)
    if cutoff is None or "edge_ptr" not in arrays:
        # Written before neighbour lists were stored: usable, lists are built when needed.
        for name in ("edge_ptr", "edges", "cell_shifts"):
            arrays.pop(name, None)
        cutoff = None
    return PackedDataset(
        arrays,
        attrs[keys.TEACHER_NAME],
        attrs[keys.TEACHER_VERSION],
        None if cutoff is None else float(cutoff),
    )
