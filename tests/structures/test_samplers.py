"""Samplers (rattle, teacher MD) and filters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from mlff_distiller.structures.filters import min_distance_filter, shortest_distance
from mlff_distiller.structures.samplers import MDInstabilityError, langevin_md, rattle
from mlff_distiller.structures.sources import from_smiles


@pytest.fixture
def ethanol():
    """A small molecule EMT supports (H, C, O), with a stale label to be dropped."""
    atoms = from_smiles("CCO", system_id="ethanol")
    atoms.info["teacher_energy"] = -1.0
    atoms.arrays["teacher_forces"] = np.zeros((len(atoms), 3))
    return atoms


class CollapsingCalculator(Calculator):
    """A spring (eV/Å²) from every atom to the centroid: atoms are pulled on top of each other."""

    implemented_properties = ("energy", "forces")

    def __init__(self, spring: float):
        super().__init__()
        self.spring = spring

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        offset = self.atoms.positions - self.atoms.positions.mean(axis=0)
        self.results = {
            "energy": 0.5 * self.spring * (offset**2).sum(),
            "forces": -self.spring * offset,
        }


def _assert_fresh(frame):
    assert frame.calc is None
    assert "teacher_energy" not in frame.info
    assert "teacher_forces" not in frame.arrays
    assert "momenta" not in frame.arrays


# --------------------------------------------------------------------------- rattle


def test_rattle(ethanol):
    before = ethanol.positions.copy()
    frames = rattle(ethanol, n_frames=20, stdev=0.05, seed=0)
    assert len(frames) == 20
    np.testing.assert_array_equal(ethanol.positions, before)  # input untouched
    displacements = np.stack([f.positions - before for f in frames])
    assert displacements.std() == pytest.approx(0.05, rel=0.1)
    assert not np.allclose(frames[0].positions, frames[1].positions)
    for frame in frames:
        assert frame.info["system_id"] == "ethanol"
        assert frame.info["sampler"] == "rattle-0.05"
        _assert_fresh(frame)


def test_rattle_is_reproducible(ethanol):
    a = rattle(ethanol, 3, 0.1, seed=7)
    b = rattle(ethanol, 3, 0.1, seed=7)
    c = rattle(ethanol, 3, 0.1, seed=8)
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x.positions, y.positions)
        assert not np.allclose(x.positions, z.positions)


# --------------------------------------------------------------------------- Langevin MD


def test_langevin_md_frames(ethanol):
    before = ethanol.positions.copy()
    frames = langevin_md(ethanol, EMT(), temperature_K=300, n_frames=4, interval=10, seed=0)
    assert len(frames) == 4
    np.testing.assert_array_equal(ethanol.positions, before)
    assert ethanol.calc is None
    positions = [before] + [f.positions for f in frames]
    for a, b in itertools.pairwise(positions):
        assert np.abs(a - b).max() > 1e-3  # frames differ
    for frame in frames:
        assert frame.info["system_id"] == "ethanol"
        assert frame.info["sampler"] == "md-300K"
        assert frame.numbers.tolist() == ethanol.numbers.tolist()
        assert not frame.pbc.any()
        _assert_fresh(frame)


def test_langevin_md_is_reproducible(ethanol):
    a = langevin_md(ethanol, EMT(), temperature_K=500, n_frames=2, interval=5, seed=1)
    b = langevin_md(ethanol, EMT(), temperature_K=500, n_frames=2, interval=5, seed=1)
    c = langevin_md(ethanol, EMT(), temperature_K=500, n_frames=2, interval=5, seed=2)
    np.testing.assert_array_equal(a[-1].positions, b[-1].positions)
    assert not np.allclose(a[-1].positions, c[-1].positions)


def test_langevin_md_frames_are_labelled_fresh(ethanol):
    """A frame labelled later gets the energy of its own positions, not the MD cache."""
    frames = langevin_md(ethanol, EMT(), temperature_K=300, n_frames=2, interval=5, seed=0)
    energies = []
    for frame in frames:
        frame.calc = EMT()
        energies.append(frame.get_potential_energy())
    assert energies[0] != energies[1]


def test_langevin_md_periodic_crystal_keeps_cell():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    cu.info["system_id"] = "Cu-fcc"
    frames = langevin_md(cu, EMT(), temperature_K=600, n_frames=2, interval=5, seed=0)
    assert frames[0].pbc.all()
    np.testing.assert_array_equal(frames[0].cell.array, cu.cell.array)
    assert frames[1].info["sampler"] == "md-600K"


@pytest.mark.parametrize(
    ("spring", "reason"),
    [(0.2, r"apart, below 0.5 Å"), (100.0, r"kinetic temperature \d+ K, above 5000 K")],
)
def test_unstable_md_is_an_error_naming_system_and_temperature(ethanol, spring, reason):
    calc = CollapsingCalculator(spring)
    with pytest.raises(MDInstabilityError, match=rf"'ethanol' at 300 K .*\(.*{reason}\)"):
        langevin_md(ethanol, calc, 300, n_frames=10, interval=50, seed=0)


def test_langevin_md_rejects_bad_arguments(ethanol):
    with pytest.raises(ValueError, match="temperature_K > 0"):
        langevin_md(ethanol, EMT(), temperature_K=0, n_frames=1, interval=1)


# --------------------------------------------------------------------------- filters


def test_shortest_distance_molecule_and_periodic_images():
    dimer = Atoms("H2", positions=[(0, 0, 0), (0, 0, 0.74)])
    assert shortest_distance(dimer, 2.0) == pytest.approx(0.74)
    assert shortest_distance(dimer, 0.5) == float("inf")
    # One atom in a small periodic cell: its own image is 2 Å away.
    single = Atoms("Cu", cell=np.eye(3) * 2.0, pbc=True)
    assert shortest_distance(single, 3.0) == pytest.approx(2.0)


def test_min_distance_filter():
    good = Atoms("H2", positions=[(0, 0, 0), (0, 0, 0.74)])
    clash = Atoms("H2", positions=[(0, 0, 0), (0, 0, 0.3)])
    tight_crystal = Atoms("Cu", cell=np.eye(3) * 0.55, pbc=True)
    kept, rejected = min_distance_filter([good, clash, tight_crystal, good], min_distance=0.6)
    assert kept == [good, good]
    assert rejected[0] is clash
    assert rejected[1] is tight_crystal
