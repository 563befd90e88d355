"""Samplers (rattle, teacher MD) and filters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from mlff_distiller.structures.filters import min_distance_filter, shortest_distance
from mlff_distiller.structures.samplers import (
    BatchedLangevin,
    MDInstabilityError,
    batched_langevin_md,
    langevin_md,
    rattle,
    teacher_md,
)
from mlff_distiller.structures.sources import from_smiles
from mlff_distiller.teachers.ase import ASECalculatorTeacher


def teacher_model(*args):
    """A TorchSim model of a batched prediction (skips the test without TorchSim)."""
    pytest.importorskip("torch_sim")
    from mlff_distiller.teachers.torchsim import TeacherModel

    return TeacherModel(*args)


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


# --------------------------------------------------------------------------- batched teacher MD


class EMTBatch:
    """EMT of every structure of a flat batch, on the host: a real potential as a batched model.

    One calculator per slot of the batch, so that its neighbour list is updated, not rebuilt.
    """

    def __init__(self):
        self.calculators: list[EMT] = []

    def __call__(self, positions, numbers, cell, pbc, ptr, stress=True):
        energies, forces, stresses = [], [], []
        bounds = ptr.tolist()
        for b in range(len(bounds) - 1):
            if b == len(self.calculators):
                self.calculators.append(EMT())
            start, stop = bounds[b], bounds[b + 1]
            atoms = Atoms(
                numbers[start:stop].numpy(),
                positions=positions[start:stop].numpy(),
                cell=cell[b].numpy(),
                pbc=pbc[b].numpy(),
            )
            atoms.calc = self.calculators[b]
            energies.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces())
            periodic = atoms.pbc.all()
            stresses.append(atoms.get_stress(voigt=False) if periodic else np.full((3, 3), np.nan))
        return {
            "energy": torch.tensor(energies),
            "forces": torch.from_numpy(np.concatenate(forces)),
            "stress": torch.from_numpy(np.stack(stresses)),
        }


class BatchedEMT(ASECalculatorTeacher):
    """EMT as a teacher that offers a TorchSim model (a toy of a batching teacher)."""

    batch_atoms = 40

    def __init__(self):
        super().__init__(EMT(), "emt-batched", "test-0", elements=[1, 6, 8, 29])

    def torchsim_model(self):
        return teacher_model(EMTBatch(), "cpu", self.elements, self.name)


def spring_model(spring: float):
    """A TorchSim model pulling every atom to its structure's centroid (eV/Å²).

    Structures of three atoms or fewer feel no force.
    """

    def predict(positions, numbers, cell, pbc, ptr, stress=True):
        owner = torch.repeat_interleave(torch.arange(len(ptr) - 1), ptr[1:] - ptr[:-1])
        counts = (ptr[1:] - ptr[:-1]).double().unsqueeze(-1)
        k = torch.where(counts > 3, spring, 0.0)[owner]  # water (3 atoms) is left alone
        centroid = torch.zeros(len(ptr) - 1, 3, dtype=positions.dtype)
        centroid = centroid.index_add(0, owner, positions) / counts
        offset = positions - centroid[owner]
        energy = torch.zeros(len(ptr) - 1, dtype=positions.dtype)
        energy = energy.index_add(0, owner, 0.5 * (k * offset**2).sum(-1))
        stress = torch.zeros(len(ptr) - 1, 3, 3, dtype=positions.dtype)
        return {"energy": energy, "forces": -k * offset, "stress": stress}

    return teacher_model(predict, "cpu", frozenset({1, 6, 8}), "spring")


@pytest.fixture
def cu_crystal():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2)
    cu.info["system_id"] = "Cu-fcc"
    return cu


def test_batched_md_follows_ase_langevin(ethanol, cu_crystal):
    """Batched frames are those of ASE's Langevin with the same seeds (EMT, float64)."""
    slab = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    slab.pbc = (True, True, False)  # partly periodic: through ASE
    slab.center(vacuum=5.0, axis=2)
    slab.info["system_id"] = "Cu-slab"
    structures = [ethanol, cu_crystal, slab]
    seeds = [[11, 12], [21, 22], [31, 32]]
    frames = teacher_md(structures, BatchedEMT(), [300.0, 900.0], seeds, n_frames=3, interval=4)
    for atoms, mine, pair in zip(structures, frames, seeds, strict=True):
        reference = [
            frame
            for temperature, seed in zip([300.0, 900.0], pair, strict=True)
            for frame in langevin_md(atoms, EMT(), temperature, n_frames=3, interval=4, seed=seed)
        ]
        assert len(mine) == len(reference) == 6
        for frame, expected in zip(mine, reference, strict=True):
            np.testing.assert_allclose(frame.positions, expected.positions, atol=1e-9)
            assert frame.info == expected.info
            np.testing.assert_array_equal(frame.cell.array, atoms.cell.array)
            np.testing.assert_array_equal(frame.pbc, atoms.pbc)
            _assert_fresh(frame)
    assert [f.info["sampler"] for f in frames[0]] == ["md-300K"] * 3 + ["md-900K"] * 3


def test_batched_md_does_not_depend_on_batch_mates(ethanol):
    water = from_smiles("O", system_id="water")
    structures, temperatures, seeds = [ethanol, ethanol, water], [300.0, 600.0, 300.0], [1, 2, 3]
    model = BatchedEMT().torchsim_model()
    together = batched_langevin_md(structures, model, temperatures, seeds, 2, 5)
    budget = batched_langevin_md(structures, model, temperatures, seeds, 2, 5, batch_atoms=10)
    for k, atoms in enumerate(structures):
        (alone,) = batched_langevin_md([atoms], model, [temperatures[k]], [seeds[k]], 2, 5)
        for a, b, c in zip(together[k], budget[k], alone, strict=True):
            np.testing.assert_allclose(a.positions, c.positions, atol=1e-12)
            np.testing.assert_allclose(b.positions, c.positions, atol=1e-12)
    assert not np.allclose(together[0][-1].positions, together[1][-1].positions)


def test_batched_md_holds_the_temperature():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    replicas = 4
    md = BatchedLangevin(
        [cu] * replicas,
        BatchedEMT().torchsim_model(),
        [600.0] * replicas,
        seeds=range(replicas),
        timestep_fs=2.0,
        friction=0.1,
    )
    md.run(20)  # kinetic energy flows into the lattice, the thermostat (10 fs) refills it
    samples = []
    for _ in range(10):
        md.run(3)
        samples.append(md.temperature())
    mean = float(torch.stack(samples).mean())
    assert mean == pytest.approx(600.0, rel=0.1)


def test_batched_md_without_friction_conserves_energy(cu_crystal):
    md = BatchedLangevin(
        [cu_crystal], BatchedEMT().torchsim_model(), [600.0], [0], timestep_fs=2.0, friction=0.0
    )
    start = float(md.energy[0] + md.kinetic_energy()[0])
    md.run(50)
    end = float(md.energy[0] + md.kinetic_energy()[0])
    assert float(md.kinetic_energy()[0]) > 0.1  # it moved
    assert abs(end - start) < 2e-3  # eV, 32 atoms over 100 fs


@pytest.mark.parametrize(
    ("spring", "reason"),
    [(0.2, r"apart, below 0.5 Å"), (100.0, r"kinetic temperature \d+ K, above 5000 K")],
)
def test_unstable_batched_md_names_system_and_temperature(ethanol, spring, reason):
    water = from_smiles("O", system_id="water")
    with pytest.raises(MDInstabilityError, match=rf"'ethanol' at 300 K .*step \d+ \(.*{reason}\)"):
        batched_langevin_md(
            [ethanol, water], spring_model(spring), [300.0, 300.0], [0, 1], n_frames=10, interval=50
        )


def test_batched_md_rejects_mixed_periodicity(ethanol, cu_crystal):
    model = BatchedEMT().torchsim_model()
    with pytest.raises(ValueError, match="periodic along all three directions, or along none"):
        BatchedLangevin([ethanol, cu_crystal], model, [300.0, 300.0], [0, 1])
    with pytest.raises(ValueError, match="one temperature and one seed per structure"):
        batched_langevin_md([ethanol], model, [300.0, 600.0], [0], n_frames=1, interval=1)


@pytest.mark.slow
def test_sevennet_batched_md_follows_ase_langevin_and_the_labels(sevennet0, ethanol):
    """SevenNet-0's TorchSim model: ASE's trajectory (float32 forces) and the teacher's labels."""
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    si.rattle(0.02, seed=0)
    si.info["system_id"] = "Si8"
    frames = teacher_md([ethanol, si], sevennet0, [600.0], [[1], [2]], n_frames=2, interval=4)
    for atoms, mine, seed in zip([ethanol, si], frames, [1, 2], strict=True):
        reference = langevin_md(atoms, sevennet0.calculator(), 600.0, 2, 4, seed=seed)
        for frame, expected in zip(mine, reference, strict=True):
            np.testing.assert_allclose(frame.positions, expected.positions, atol=1e-5)
    # The MD's energies are the teacher's labels of its frames.
    md = BatchedLangevin([ethanol], sevennet0.torchsim_model(), [600.0], [1])
    md.run(4)
    (frame,) = md.frames()
    assert float(md.energy[0]) == pytest.approx(sevennet0.label([frame])[0].energy, abs=1e-4)
    frame.calc = sevennet0.calculator()
    assert float(md.energy[0]) == pytest.approx(frame.get_potential_energy(), abs=1e-4)
