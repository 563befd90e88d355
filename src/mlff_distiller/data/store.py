"""Append-only shards of teacher-labelled structures, written atomically and resumable.

A shard ``RUN/data/shard-from-0000000.h5`` holds a block of structures (atoms of all
structures concatenated, ``ptr`` marks where each starts) with their ``teacher_*`` labels and
provenance. A shard is written to a temporary name and renamed into place, so a stopped run
never leaves a half-written file that could be read as data; a restarted run labels only the
structures whose index is in no shard yet. A shard is named after the first structure it
holds (:func:`shard_name`), so processes labelling side by side never pick the same name;
shards of earlier versions, numbered in order (``shard-00000.h5``), are read alike.

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

The packed dataset (:mod:`mlff_distiller.data.dataset`) adds the neighbour list of every
structure (``E`` directed edges in total); :func:`reorder` keeps them with their structures:

==================  ===========  =======  ===========================================
``edge_ptr``        (n + 1,)              edge offsets
``edges``           (E, 2)                ``[i, j]`` atom indices within the structure
``cell_shifts``     (E, 3)                integer cell image of ``j``
==================  ===========  =======  ===========================================
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import ase
import h5py
import numpy as np

from mlff_distiller import keys
from mlff_distiller.atomic import CorruptFileError, atomic_path
from mlff_distiller.teachers.base import Labels

_STR = h5py.string_dtype()
PER_STRUCTURE = ("index", "cell", "pbc", keys.TEACHER_ENERGY, keys.TEACHER_STRESS, "has_stress")
PER_ATOM = ("numbers", "positions", keys.TEACHER_FORCES)
STRINGS = (keys.SYSTEM_ID, keys.SAMPLER)
PER_EDGE = ("edges", "cell_shifts")


def shard_name(first: int) -> str:
    """File name of the shard whose first structure has index ``first``.

    Every structure is in one shard at most, so no two shards share a name, whichever
    process writes them; the ``from`` keeps these names apart from the numbered shards of
    earlier versions (``shard-00005.h5`` was the sixth shard, not the one from structure 5).
    """
    return f"shard-from-{first:07d}.h5"


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
    """Read every dataset and attribute of an HDF5 file written by :func:`write_arrays`.

    Raises
    ------
    CorruptFileError
        If the file is not a readable HDF5 file (truncated, corrupted, another format).
    """
    with _reading(path), h5py.File(path, "r") as f:
        arrays = {}
        for name, ds in f.items():
            arrays[name] = ds.asstr()[...] if ds.dtype == _STR else ds[...]
        return arrays, {k: str(v) for k, v in f.attrs.items()}


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn h5py's errors on a damaged file into one that names the file and the fix."""
    try:
        yield
    except (OSError, KeyError, ValueError, TypeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        if Path(path).name.startswith("shard-"):
            fix = "delete it and run the same command again: its structures are labelled again"
        else:
            fix = "delete it and run `mlff-distill label` again: it is packed again from the shards"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise CorruptFileError(
            f"{path} is not a readable data file of this project, truncated or corrupted "
            f"({reason}): {fix}"
        ) from None


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
    """Select and reorder structures of shard-layout arrays (``order``: structure indices).

    Neighbour lists (``edge_ptr``, ``edges``, ``cell_shifts``) follow their structures when
    present.
    """
    order = np.asarray(order, dtype=np.int64)
    out = {name: arrays[name][order] for name in (*PER_STRUCTURE, *STRINGS)}
    out.update(_select_segments(arrays, "ptr", PER_ATOM, order))
    if "edge_ptr" in arrays:
        out.update(_select_segments(arrays, "edge_ptr", PER_EDGE, order))
    return out


def _select_segments(
    arrays: dict[str, np.ndarray], ptr_name: str, names: Sequence[str], order: np.ndarray
) -> dict[str, np.ndarray]:
    """Rows ``ptr[k]:ptr[k + 1]`` of each array in ``names`` for every ``k`` in ``order``."""
    ptr = arrays[ptr_name]
    lengths = np.diff(ptr)[order]
    new_ptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # Row r of the output comes from ptr[k] + (r - new_ptr[k]) for the k it falls in.
    rows = np.arange(new_ptr[-1]) + np.repeat(ptr[order] - new_ptr[:-1], lengths)
    out = {name: arrays[name][rows] for name in names}
    out[ptr_name] = new_ptr
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
        """Completed shards, sorted by name."""
        return sorted(self.directory.glob("shard-*.h5"))

    def labelled_indices(self, teacher_name: str | None = None) -> set[int]:
        """Indices of structures already labelled; checks every shard's teacher."""
        done: set[int] = set()
        for path in self.shard_paths():
            with _reading(path), h5py.File(path, "r") as f:
                name = str(f.attrs.get("teacher_name", ""))
                indices = [int(i) for i in f["index"][...]]
            if teacher_name is not None and name != teacher_name:
                raise ShardMismatchError(
                    f"{path} was labelled by teacher '{name}', but this run asks for "
                    f"'{teacher_name}': use a new run directory, or delete {self.directory}"
                    " to relabel"
                )
            done.update(indices)
        return done

    def write_shard(
        self,
        structures: Sequence[ase.Atoms],
        labels: Sequence[Labels],
        indices: Sequence[int],
        teacher_name: str,
        teacher_version: str,
    ) -> Path:
        """Write one shard atomically and return its path (named by :func:`shard_name`).

        ``indices`` (positions of the structures in the run's list) must be in no shard yet.
        """
        path = self.directory / shard_name(min(indices))
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
