"""Filters: near-duplicate frames, maximum force, element whitelist."""

import numpy as np
from ase.build import bulk, molecule

from mlff_distiller.structures.filters import (
    disallowed_elements,
    distance_fingerprint,
    max_atom_forces,
    near_duplicates,
)


def _tagged(atoms, system_id):
    atoms.info["system_id"] = system_id
    return atoms


def test_rotated_translated_and_permuted_copies_are_near_duplicates():
    ethanol = _tagged(molecule("CH3CH2OH"), "ethanol")
    moved = ethanol.copy()
    moved.rotate(73, "x", center="COM")
    moved.translate([1.0, -2.0, 0.5])
    moved = moved[np.random.default_rng(0).permutation(len(moved))]
    np.testing.assert_allclose(distance_fingerprint(moved), distance_fingerprint(ethanol))
    rattled = ethanol.copy()
    rattled.rattle(0.05, seed=0)
    frames = [ethanol, rattled, moved, rattled.copy()]
    assert near_duplicates(frames, 0.01) == [2, 3]


def test_only_frames_of_the_same_system_are_compared():
    frames = [_tagged(molecule("H2O"), "a"), _tagged(molecule("H2O"), "b")]
    assert near_duplicates(frames, 0.01) == []


def test_greedy_keeps_a_frame_whose_only_near_duplicate_was_dropped():
    base = _tagged(molecule("H2"), "h2")
    frames = []
    for stretch in (0.0, 0.008, 0.016):  # 0~1 and 1~2 within 0.01 Å, but 0 and 2 are not
        frame = base.copy()
        frame.positions[1, 2] += stretch
        frames.append(frame)
    assert near_duplicates(frames, 0.01) == [1]


def test_periodic_frames_compare_cells_too():
    small = _tagged(bulk("Cu", "fcc", a=3.60, cubic=True), "cu")
    large = _tagged(bulk("Cu", "fcc", a=3.65, cubic=True), "cu")
    assert near_duplicates([small, large, small.copy()], 0.01) == [2]


def test_max_atom_forces_per_structure():
    forces = np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, -2.0], [1.0, 0.0, 0.0]])
    ptr = np.array([0, 2, 2, 4])  # the middle structure has no atoms
    np.testing.assert_allclose(max_atom_forces(forces, ptr), [5.0, 0.0, 2.0])


def test_disallowed_elements():
    assert disallowed_elements(np.array([1, 6, 35, 8, 53, 35]), ["H", "C", "O"]) == ["Br", "I"]
    assert disallowed_elements(np.array([1, 6]), ["H", "C"]) == []
