"""Filters that drop unphysical structures before they are sent to a teacher."""

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
