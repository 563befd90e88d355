"""Filters of frames: minimum distance, near-duplicates, maximum force, element whitelist.

Each takes frames (or labelled arrays) and says which to drop; the pipeline counts what each
dropped and why in ``RUN/data/filters.json``.
"""

from __future__ import annotations

from collections.abc import Sequence

import ase
import numpy as np
import vesin


def shortest_distance(atoms: ase.Atoms, cutoff: float) -> float:
    """Shortest interatomic distance in Å, periodic images included.

    Parameters
    ----------
    atoms
        The structure; ``atoms.pbc`` decides which directions are periodic.
    cutoff
        Only pairs closer than this (Å) are searched.

    Returns
    -------
    float
        The shortest distance, or ``inf`` if no pair is closer than ``cutoff`` (or the
        structure has a single atom and no periodic images within ``cutoff``).
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell[:], dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    if pbc.any() and abs(np.linalg.det(cell)) < 1e-9:
        raise ValueError(
            f"structure {atoms.get_chemical_formula()} is periodic (pbc={pbc.tolist()}) but "
            "its cell has zero volume: set a cell or make it non-periodic"
        )
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=False)
    (distances,) = nl.compute(
        points=np.ascontiguousarray(atoms.positions, dtype=np.float64),
        box=cell,
        periodic=pbc,
        quantities="d",
    )
    return float(distances.min()) if len(distances) else float("inf")


def min_distance_filter(
    structures: Sequence[ase.Atoms], min_distance: float = 0.6
) -> tuple[list[ase.Atoms], list[ase.Atoms]]:
    """Split structures by whether any two atoms are closer than ``min_distance``.

    Parameters
    ----------
    structures
        Structures to check (not modified or copied).
    min_distance
        Smallest allowed interatomic distance in Å (periodic images included).

    Returns
    -------
    kept, rejected
        Structures whose shortest distance is at least ``min_distance``, and the others,
        each in input order.
    """
    kept, rejected = [], []
    for atoms in structures:
        if shortest_distance(atoms, min_distance) < min_distance:
            rejected.append(atoms)
        else:
            kept.append(atoms)
    return kept, rejected


FINGERPRINT_CUTOFF = 6.0
"""Å: pairs within this distance (periodic images included) make a frame's fingerprint."""


def distance_fingerprint(atoms: ase.Atoms, cutoff: float = FINGERPRINT_CUTOFF) -> np.ndarray:
    """Sorted interatomic distances of a frame, the fingerprint of near-duplicates.

    Equal for frames that differ by a rotation, translation, permutation of like atoms or
    mirror image.

    Parameters
    ----------
    atoms
        The frame (periodic directions from ``atoms.pbc``).
    cutoff
        Only pairs closer than this (Å) are counted; a molecule smaller than it contributes
        every pair.

    Returns
    -------
    numpy.ndarray
        (P,) distances in Å, ascending, over the P pairs within ``cutoff``.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell[:], dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=False)
    (distances,) = nl.compute(
        points=np.ascontiguousarray(atoms.positions, dtype=np.float64),
        box=cell,
        periodic=pbc,
        quantities="d",
    )
    return np.sort(distances)


def near_duplicates(structures: Sequence[ase.Atoms], tolerance: float) -> list[int]:
    """Indices of frames that nearly repeat an earlier kept frame of the same system.

    Two frames are near-duplicates when they have the same ``system_id`` (or, without one,
    are compared all together), the same atoms and pbc, cells within ``tolerance`` and
    sorted interatomic distances (:func:`distance_fingerprint`) that all agree within
    ``tolerance``. Frames are kept in order: a frame is dropped when it nearly repeats a frame
    kept before it.

    Parameters
    ----------
    structures
        Frames in order (not modified).
    tolerance
        Largest difference of any sorted distance (and cell component), Å.

    Returns
    -------
    list[int]
        Ascending indices of the frames to drop.
    """
    from scipy.spatial import cKDTree

    groups: dict[tuple, list[int]] = {}
    prints: dict[int, np.ndarray] = {}
    for k, atoms in enumerate(structures):
        fingerprint = distance_fingerprint(atoms)
        if np.asarray(atoms.pbc).any():
            fingerprint = np.concatenate([np.asarray(atoms.cell[:]).ravel(), fingerprint])
        key = (
            str(atoms.info.get("system_id")),
            tuple(np.sort(atoms.numbers)),
            tuple(bool(p) for p in atoms.pbc),
            len(fingerprint),
        )
        groups.setdefault(key, []).append(k)
        prints[k] = fingerprint
    dropped: list[int] = []
    for members in groups.values():
        if len(members) < 2:
            continue
        # Pairs within the tolerance in every component (Chebyshev distance), then greedily:
        # a frame goes when one of its earlier partners was kept.
        tree = cKDTree(np.stack([prints[k] for k in members]))
        partners: dict[int, list[int]] = {}
        for a, b in tree.query_pairs(tolerance, p=np.inf):
            partners.setdefault(max(a, b), []).append(min(a, b))
        kept: set[int] = set()
        for position in range(len(members)):
            if any(earlier in kept for earlier in partners.get(position, ())):
                dropped.append(members[position])
            else:
                kept.add(position)
    return sorted(dropped)


def max_atom_forces(forces: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """Largest force magnitude on any atom of each structure.

    Parameters
    ----------
    forces
        (A, 3) forces in eV/Å of all structures' atoms, concatenated.
    ptr
        (n + 1,) atom offsets of the structures.

    Returns
    -------
    numpy.ndarray
        (n,) max over atoms of |F|, eV/Å (0 for a structure without atoms).
    """
    norms = np.linalg.norm(forces, axis=1)
    out = np.zeros(len(ptr) - 1)
    sizes = np.diff(ptr)
    filled = sizes > 0
    if filled.any():
        out[filled] = np.maximum.reduceat(norms, ptr[:-1][filled])
    return out


def disallowed_elements(numbers: np.ndarray, allowed: Sequence[str]) -> list[str]:
    """Symbols of the elements of ``numbers`` that are not in ``allowed``, sorted by Z.

    Parameters
    ----------
    numbers
        (N,) atomic numbers.
    allowed
        Element symbols of the whitelist.
    """
    from ase.data import atomic_numbers, chemical_symbols

    permitted = {atomic_numbers[symbol] for symbol in allowed}
    return [chemical_symbols[z] for z in sorted(set(numbers.tolist()) - permitted)]
