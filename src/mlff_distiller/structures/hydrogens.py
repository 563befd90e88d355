"""Organic molecules must carry their hydrogens: checks on geometry and on bond orders.

Structure files lose hydrogens silently: X-ray PDB entries have none, many tools write heavy
atoms only, united-atom models fold them into carbon. A student trained on such molecules
learns chemistry that does not exist, and nothing downstream notices, so every structure file
is checked before any work (:mod:`mlff_distiller.structures.validate`).

:func:`missing_hydrogen_problems` reads the geometry alone. Two atoms are bonded when closer
than :data:`BOND_FACTOR` times the sum of their covalent radii. An atom lacks hydrogens when:

======================  =====================================================================
atom                    lacks hydrogens when it has
======================  =====================================================================
carbon                  no neighbour; one neighbour, unless a triple bond to N or O (CO,
                        isocyanides); two neighbours at an angle below
                        :data:`MIN_LINEAR_ANGLE` (sp carbon is linear); three neighbours
                        whose angles sum below :data:`MIN_PLANAR_ANGLE_SUM` (sp2 carbon is
                        planar, sp3 carbon missing its H is a pyramid, ~328°)
nitrogen                no neighbour; a single carbon farther than a C≡N bond
oxygen                  no neighbour; a single carbon farther than a C=O bond
sulfur                  no neighbour; a single carbon farther than a C=S bond
======================  =====================================================================

Carbon bonded only to other elements (CO2, CF4, CCl4, CF3CN) passes, as it should; hydrogens
missing from nitrogen or oxygen that keep a heavy-atom geometry (a ring N-H, an amide) cannot
be seen from positions. Where bond orders are known (SDF/MOL files),
:func:`implicit_hydrogens` counts the hydrogens RDKit's valence model expects and the file
lacks, which sees those too.
"""

from __future__ import annotations

import ase
import numpy as np
from ase.data import covalent_radii
from ase.neighborlist import neighbor_list

BOND_FACTOR = 1.2
"""Two atoms are bonded when closer than this times the sum of their covalent radii."""

MIN_LINEAR_ANGLE = 150.0
"""Degrees: carbon with two neighbours is sp (180°) above it, missing hydrogens below
(sp2 ~120°, sp3 ~109.5°)."""

MIN_PLANAR_ANGLE_SUM = 340.0
"""Degrees: carbon with three neighbours is sp2 (360°, C60 ~348°) above this sum of its
three bond angles, an sp3 carbon that lost a hydrogen (~328°) below."""

#: Longest bond (Å) from a lone heavy atom to its single carbon neighbour that still satisfies
#: the atom's valence without hydrogen: C≡N (1.16), C=O (1.21), C=S (1.67), with room for
#: thermal motion; the single bonds C-N (1.47), C-O (1.43) and C-S (1.82) are beyond them.
_MAX_MULTIPLE_BOND_TO_CARBON = {7: 1.33, 8: 1.36, 16: 1.76}
#: Longest bond (Å) from a carbon to its single N or O neighbour that is a triple bond:
#: carbon monoxide (1.13) and isocyanides (1.17), not C=O (1.21) or C=N (1.28).
_MAX_CARBON_TRIPLE_BOND = {7: 1.22, 8: 1.19}

_CARBON, _NITROGEN, _OXYGEN, _SULFUR = 6, 7, 8, 16
_MAX_LISTED_ATOMS = 5


def missing_hydrogen_problems(atoms: ase.Atoms) -> list[str]:
    """Atoms of a structure that lack hydrogens, judged from the geometry (module docstring).

    Parameters
    ----------
    atoms
        The structure; periodic directions (``atoms.pbc``) bond across the cell.

    Returns
    -------
    list[str]
        One description per offending atom (at most a few, then a count), e.g.
        ``"C 3 has 2 neighbours at 118°"``; empty when every C, N, O and S is saturated.
    """
    numbers = atoms.numbers
    checked = np.isin(numbers, (_CARBON, _NITROGEN, _OXYGEN, _SULFUR))
    if not checked.any():
        return []
    radii = covalent_radii[numbers] * BOND_FACTOR
    i, j, d, vectors = neighbor_list("ijdD", atoms, radii, self_interaction=False)
    problems = []
    for atom in np.flatnonzero(checked):
        mine = i == atom
        reason = _atom_problem(int(numbers[atom]), numbers[j[mine]], d[mine], vectors[mine])
        if reason is not None:
            problems.append(f"{atoms.get_chemical_symbols()[atom]} {atom} {reason}")
    if len(problems) > _MAX_LISTED_ATOMS:
        more = len(problems) - _MAX_LISTED_ATOMS
        problems = [*problems[:_MAX_LISTED_ATOMS], f"and {more} more atoms"]
    return problems


def _atom_problem(
    z: int, neighbours: np.ndarray, distances: np.ndarray, vectors: np.ndarray
) -> str | None:
    """Why an atom of element ``z`` with these bonded neighbours lacks hydrogens, or None."""
    n = len(neighbours)
    if n == 0:
        return "has no bonded neighbour"
    if z == _CARBON:
        if n == 1:
            limit = _MAX_CARBON_TRIPLE_BOND.get(int(neighbours[0]))
            if limit is None or distances[0] > limit:
                return f"has a single neighbour, {distances[0]:.2f} Å away"
        elif n == 2:
            angle = _angle(vectors[0], vectors[1])
            if angle < MIN_LINEAR_ANGLE:
                return f"has 2 neighbours at {angle:.0f}° (sp carbon is linear)"
        elif n == 3:
            total = sum(_angle(vectors[a], vectors[b]) for a, b in ((0, 1), (0, 2), (1, 2)))
            if total < MIN_PLANAR_ANGLE_SUM:
                return (
                    f"has 3 neighbours in a pyramid (angles sum to {total:.0f}°; sp2 carbon "
                    "is planar, 360°)"
                )
        return None
    if n == 1 and neighbours[0] == _CARBON and distances[0] > _MAX_MULTIPLE_BOND_TO_CARBON[z]:
        return f"has a single carbon neighbour, {distances[0]:.2f} Å away (a single bond)"
    return None


def _angle(u: np.ndarray, v: np.ndarray) -> float:
    """Angle between two vectors, degrees."""
    cosine = np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v))
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def implicit_hydrogens(mol: object) -> int:
    """Hydrogens RDKit's valence model expects on a molecule with bond orders but lacks.

    Parameters
    ----------
    mol
        A sanitised :class:`rdkit.Chem.Mol` read with its hydrogens kept
        (``removeHs=False``), e.g. from an SDF record.

    Returns
    -------
    int
        Implicit hydrogens over all atoms: 0 when every hydrogen is in the file.
    """
    return int(sum(atom.GetNumImplicitHs() for atom in mol.GetAtoms()))
