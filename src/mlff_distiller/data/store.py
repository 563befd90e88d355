"""Append-only shards of teacher-labelled structures, written atomically and resumable.

A shard ``RUN/data/shard-00000.h5`` holds a contiguous block of structures (atoms of all
structures concatenated, ``ptr`` marks where each starts) with their ``teacher_*`` labels and
provenance. A shard is written to a temporary name and renamed into place, so a stopped run
never leaves a half-written file that could be read as data; a restarted run labels only the
structures whose index is in no shard yet.

Datasets in a shard (``n`` structures, ``A`` atoms in total):

==================  ===========  =======  ===========================================
name                shape        unit     meaning
==================  ===========  =======  ===========================================
``index``           (n,)                  position of the structure in the run's list
``ptr``             (n + 1,)              atom offsets
``numbers``         (A,)                  atomic numbers
``positions``       (A, 3)       Å
``cell``            (n, 3, 3)    Å        rows are cell vectors
``pbc``             (n, 3)
``teacher_energy``  (n,)         eV
``teacher_forces``  (A, 3)       eV/Å
``teacher_stress``  (n, 3, 3)    eV/Å³    ASE sign; zeros where ``has_stress`` is False
``has_stress``      (n,)
``system_id``       (n,)                  str
``sampler``         (n,)                  str
==================  ===========  =======  ===========================================

Attributes: ``teacher_name``, ``teacher_version``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import ase
import h5py
import numpy as np

from mlff_distiller import keys
from mlff_distiller.atomic import atomic_path
from mlff_distiller.teachers.base import Labels

_STR = h5py.string_dtype()
PER_STRUCTURE = ("index", "cell", "pbc", keys.TEACHER_ENERGY, keys.TEACHER_STRESS, "has_stress")
PER_ATOM = ("numbers", "positions", keys.TEACHER_FORCES)
STRINGS = (keys.SYSTEM_ID, keys.SAMPLER)


class ShardMismatchError(ValueError):
    """Existing shards were labelled by another teacher than the one now asked for."""


def frames_to_arrays(
    structures: Sequence[ase.Atoms], labels: Sequence[Labels], indices: Sequence[int]
) -> dict[str, np.ndarray]:
    """Concatenate structures and their labels into the shard layout (module docstring)."""
    n_atoms = np.array([len(a) for a in structures])
    stress = np.zeros((len(structures), 3, 3))
    has_stress = np.zeros(len(structures), dtype=bool)
    for k, lab in enumerate(labels):
        if lab.stress is not None:
            stress[k] = lab.stress
            has_stress[k] = True
    return {
        "index": np.asarray(indices, dtype=np.int64),
        "ptr": np.concatenate([[0], np.cumsum(n_atoms)]).astype(np.int64),
        "numbers": np.concatenate([a.numbers for a in structures]).astype(np.int64),
        "positions": np.concatenate([a.positions for a in structures]).astype(np.float64),
        "cell": np.stack([np.asarray(a.cell[:]) for a in structures]).astype(np.float64),
        "pbc": np.stack([np.asarray(a.pbc) for a in structures]).astype(bool),
        keys.TEACHER_ENERGY: np.array([lab.energy for lab in labels], dtype=np.float64),
        keys.TEACHER_FORCES: np.concatenate([lab.forces for lab in labels]).astype(np.float64),
        keys.TEACHER_STRESS: stress,
        "has_stress": has_stress,
        keys.SYSTEM_ID: np.array([str(a.info[keys.SYSTEM_ID]) for a in structures], dtype=object),
        keys.SAMPLER: np.array(
            [str(a.info.get(keys.SAMPLER, "")) for a in structures], dtype=object
        ),
    }


def write_arrays(path: Path, arrays: dict[str, np.ndarray], attrs: dict[str, str]) -> None:
    """Write arrays and attributes to an HDF5 file atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, value in arrays.items():
            if value.dtype == object:
                f.create_dataset(name, data=value.astype(str).tolist(), dtype=_STR)
            else:
                f.create_dataset(name, data=value)
        f.attrs.update(attrs)


def read_arrays(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read every dataset and attribute of an HDF5 file written by :func:`write_arrays`."""
    with h5py.File(path, "r") as f:
        arrays = {}
        for name, ds in f.items():
            arrays[name] = ds.asstr()[...] if ds.dtype == _STR else ds[...]
        return arrays, {k: str(v) for k, v in f.attrs.items()}


def concatenate(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Join shard-layout arrays (offsets ``ptr`` shifted), ordered by ``index``."""
    out: dict[str, np.ndarray] = {}
    for name in (*PER_STRUCTURE, *PER_ATOM, *STRINGS):
        out[name] = np.concatenate([p[name] for p in parts])
    sizes = np.concatenate([np.diff(p["ptr"]) for p in parts])
    out["ptr"] = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    order = np.argsort(out["index"], kind="stable")
    if np.any(order != np.arange(len(order))):
        out = reorder(out, order)
    return out


def reorder(arrays: dict[str, np.ndarray], order: np.ndarray) -> dict[str, np.ndarray]:
    """Select and reorder structures of shard-layout arrays (``order``: structure indices)."""
    ptr = arrays["ptr"]
    atom_idx = np.concatenate([np.arange(ptr[k], ptr[k + 1]) for k in order] or [[]]).astype(int)
    out = {name: arrays[name][order] for name in (*PER_STRUCTURE, *STRINGS)}
    out.update({name: arrays[name][atom_idx] for name in PER_ATOM})
    out["ptr"] = np.concatenate([[0], np.cumsum(np.diff(ptr)[order])]).astype(np.int64)
    return out


class LabelStore:
    """The labelled shards of one run directory (``RUN/data``).

    Parameters
    ----------
    directory
        Folder of the shards; created when missing.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def shard_paths(self) -> list[Path]:
        """Completed shards, in order."""
        return sorted(self.directory.glob("shard-*.h5"))

    def labelled_indices(self, teacher_name: str | None = None) -> set[int]:
        """Indices of structures already labelled; checks every shard's teacher."""
        done: set[int] = set()
        for path in self.shard_paths():
            with h5py.File(path, "r") as f:
                name = str(f.attrs.get("teacher_name", ""))
                if teacher_name is not None and name != teacher_name:
                    raise ShardMismatchError(
                        f"{path} was labelled by teacher '{name}', but this run asks for "
                        f"'{teacher_name}': use a new run directory, or delete {self.directory}"
                        " to relabel"
                    )
                done.update(int(i) for i in f["index"][...])
        return done

    def write_shard(
        self,
        structures: Sequence[ase.Atoms],
        labels: Sequence[Labels],
        indices: Sequence[int],
        teacher_name: str,
        teacher_version: str,
    ) -> Path:
        """Write one shard atomically and return its path."""
        existing = self.shard_paths()
        number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        path = self.directory / f"shard-{number:05d}.h5"
        arrays = frames_to_arrays(structures, labels, indices)
        write_arrays(
            path,
            arrays,
            {keys.TEACHER_NAME: teacher_name, keys.TEACHER_VERSION: teacher_version},
        )
        return path

    def read_all(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """All shards joined in structure order, and the provenance attributes."""
        paths = self.shard_paths()
        if not paths:
            raise FileNotFoundError(f"{self.directory}: no labelled shards (run the label stage)")
        parts, attrs = zip(*(read_arrays(p) for p in paths), strict=True)
        return concatenate(parts), attrs[0]
