"""Samplers (rattle, strain, rattle-relax, normal modes, teacher MD) and filters."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.optimize import BFGS
from ase.vibrations import Vibrations

from mlff_distiller.structures.filters import min_distance_filter, shortest_distance
from mlff_distiller.structures.samplers import (
    BatchedLangevin,
    MDInstabilityError,
    batched_langevin_md,
    langevin_md,
    normal_mode_frames,
    normal_modes,
    rattle,
    rattle_relax,
    relax,
    rigid_modes,
    strain,
    teacher_hessian,
    teacher_md,
    vibrational_modes,
)
from mlff_distiller.structures.sources import from_smiles
from mlff_distiller.teachers.ase import ASECalculatorTeacher
from mlff_distiller.teachers.emt import emt_teacher


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


# --------------------------------------------------------------------------- strain


def test_strain_deforms_cell_and_atoms_together(cu_crystal):
    rattled = cu_crystal.copy()
    rattled.rattle(0.05, seed=3)  # fractional coordinates that are not all on a grid
    frames = strain(rattled, n_frames=20, max_strain=0.02, seed=0)
    assert len(frames) == 20
    strains = []
    for frame in frames:
        e = np.linalg.solve(rattled.cell.array, frame.cell.array) - np.eye(3)
        np.testing.assert_allclose(e, e.T, atol=1e-12)
        strains.append(e)
        np.testing.assert_allclose(frame.positions, rattled.positions @ (np.eye(3) + e), atol=1e-9)
        np.testing.assert_allclose(
            frame.get_scaled_positions(wrap=False),
            rattled.get_scaled_positions(wrap=False),
            atol=1e-12,
        )
        assert frame.pbc.all()
        assert frame.info["sampler"] == "strain-0.02"
        assert frame.info["system_id"] == "Cu-fcc"
        _assert_fresh(frame)
    strains = np.stack(strains)
    assert np.abs(strains).max() <= 0.02
    assert np.abs(strains).max() > 0.015  # the range is used, diagonal and shear alike
    assert np.abs(strains[:, 0, 1]).max() > 0.01
    # Compression and expansion both occur: the teacher sees both signs of stress.
    volumes = [frame.get_volume() / rattled.get_volume() for frame in frames]
    assert min(volumes) < 0.99 < 1.01 < max(volumes)


def test_strain_is_reproducible_and_leaves_molecules_alone(cu_crystal, ethanol):
    a = strain(cu_crystal, 3, 0.05, seed=1)
    b = strain(cu_crystal, 3, 0.05, seed=1)
    c = strain(cu_crystal, 3, 0.05, seed=2)
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x.cell.array, y.cell.array)
        assert not np.allclose(x.cell.array, z.cell.array)
    assert strain(ethanol, 3, 0.02) == []
    slab = cu_crystal.copy()
    slab.pbc = (True, True, False)
    assert strain(slab, 3, 0.02) == []


# --------------------------------------------------------------------------- rattle-relax


def test_rattle_relax_chains_lower_the_teacher_energy(ethanol):
    n_chains, length, stdev = 2, 3, 0.1
    frames = rattle_relax(ethanol, EMT(), n_chains, length, stdev, fmax=0.05, steps=5, seed=4)
    assert len(frames) == n_chains * length
    again = rattle_relax(ethanol, EMT(), n_chains, length, stdev, fmax=0.05, steps=5, seed=4)
    other = rattle_relax(ethanol, EMT(), n_chains, length, stdev, fmax=0.05, steps=5, seed=5)
    np.testing.assert_array_equal(frames[-1].positions, again[-1].positions)
    assert not np.allclose(frames[-1].positions, other[-1].positions)

    def energy(atoms):
        atoms = atoms.copy()
        atoms.calc = EMT()
        return atoms.get_potential_energy()

    # The rattled structure of every link, from the draws the docstring promises.
    rng = np.random.default_rng(4)
    for c in range(n_chains):
        previous = ethanol
        for j in range(length):
            frame = frames[c * length + j]
            d = rng.normal(0.0, stdev, size=(len(ethanol), 3))
            rattled = previous.copy()
            rattled.positions += d - d.mean(axis=0)
            assert energy(frame) < energy(rattled) - 0.05  # eV: the relaxation went downhill
            moved = np.linalg.norm(frame.positions - rattled.positions, axis=1).max()
            assert 0.0 < moved < 1.0  # a few steps, not a full relaxation elsewhere
            assert frame.info["sampler"] == "rattle-relax-0.1"
            assert frame.info["system_id"] == "ethanol"
            _assert_fresh(frame)
            previous = frame
    # Chains start afresh from the input; links carry on from the previous frame.
    assert not np.allclose(frames[0].positions, frames[length].positions)


# --------------------------------------------------------------------------- normal modes


@pytest.fixture(scope="module")
def emt_ethanol():
    """Ethanol at a tight minimum of EMT (its toy H, C, O parameters), and its Hessian."""
    start = from_smiles("CCO", system_id="ethanol")
    minimum = relax(start, EMT(), fmax=1e-4, steps=2000, optimizer=BFGS)
    check = minimum.copy()
    check.calc = EMT()
    assert np.abs(check.get_forces()).max() < 1e-4
    return minimum, teacher_hessian(minimum, emt_teacher(), delta=0.01)


def test_teacher_hessian_of_a_molecule(emt_ethanol, tmp_path):
    minimum, hessian = emt_ethanol
    assert hessian.shape == (27, 27)
    # Central differences of a smooth potential: symmetric up to the O(delta^2) error.
    assert np.abs(hessian - hessian.T).max() < 1e-3 * np.abs(hessian).max()
    assert rigid_modes(minimum) == 6
    modes = vibrational_modes(hessian, minimum.get_masses(), rigid_modes(minimum))
    assert modes.rigid.sum() == 6
    assert modes.vibrational.sum() == 21
    assert modes.imaginary.sum() == 0
    largest = modes.eigenvalues.max()
    assert np.abs(modes.eigenvalues[modes.rigid]).max() < 1e-4 * largest  # translations, rotations
    assert modes.eigenvalues[modes.vibrational].min() > 1e-3 * largest
    # The same vibrations as ASE's own finite differences (hbar omega in eV).
    reference = minimum.copy()
    reference.calc = EMT()
    vib = Vibrations(reference, delta=0.01, name=str(tmp_path / "vib"))
    vib.run()
    ase_energies = np.sort(np.real(vib.get_energies()))[6:]
    hbar_omega = units._hbar * 1e10 / np.sqrt(units._e * units._amu)
    mine = hbar_omega * np.sqrt(np.sort(modes.eigenvalues[modes.vibrational]))
    np.testing.assert_allclose(mine, ase_energies, rtol=1e-6)
    # A mode vector moves the atoms along a unit mass-weighted direction.
    k = int(np.flatnonzero(modes.vibrational)[0])
    weighted = modes.vectors[k] * np.sqrt(minimum.get_masses())[:, None]
    assert np.linalg.norm(weighted) == pytest.approx(1.0)


def test_normal_mode_frames_hold_half_kt_per_mode(emt_ethanol):
    """In the harmonic limit (1 K) each of the 21 modes holds kT/2 of potential energy.

    EMT's toy ethanol is anharmonic: the mean is 5 % above at 5 K and 38 % at 50 K.
    """
    minimum, hessian = emt_ethanol
    modes = vibrational_modes(hessian, minimum.get_masses(), 6)
    temperature = 1.0
    frames = normal_mode_frames(minimum, modes, temperature, n_frames=400, seed=0)
    assert len(frames) == 400
    teacher = emt_teacher()
    e0 = teacher.label([minimum])[0].energy
    energies = np.array([labels.energy for labels in teacher.label(frames)]) - e0
    expected = 21 * 0.5 * units.kB * temperature
    # The mean of 400 draws of a sum of 21 kT/2 chi-square terms: 2 % standard error.
    assert energies.mean() == pytest.approx(expected, rel=0.08)
    # Rigid modes are not excited: the centre of mass stays where it was.
    masses = minimum.get_masses()
    for frame in frames[:20]:
        displacement = frame.positions - minimum.positions
        shift = (masses[:, None] * displacement).sum(0) / masses.sum()
        assert np.abs(shift).max() < 1e-3 * np.sqrt((displacement**2).mean())
        assert frame.info["sampler"] == "normal-modes-1K"
        assert frame.info["system_id"] == "ethanol"
        _assert_fresh(frame)


def test_normal_modes_sampler_on_the_teacher(emt_ethanol):
    minimum, _ = emt_ethanol
    teacher = emt_teacher()
    a = normal_modes(minimum, teacher, 300.0, n_frames=3, seed=1)
    b = normal_modes(minimum, teacher, 300.0, n_frames=3, seed=1)
    c = normal_modes(minimum, teacher, 300.0, n_frames=3, seed=2)
    assert len(a) == 3
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x.positions, y.positions)
        assert not np.allclose(x.positions, z.positions)
        assert x.info["sampler"] == "normal-modes-300K"


def test_normal_modes_of_a_crystal_skip_three_translations():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True)
    hessian = teacher_hessian(cu, emt_teacher())
    assert rigid_modes(cu) == 3
    modes = vibrational_modes(hessian, cu.get_masses(), rigid_modes(cu))
    largest = modes.eigenvalues.max()
    assert np.abs(modes.eigenvalues[modes.rigid]).max() < 1e-6 * largest
    assert modes.vibrational.sum() == 3 * len(cu) - 3  # perfect fcc: a minimum
    frames = normal_mode_frames(cu, modes, 300.0, n_frames=2, seed=0)
    assert all(np.array_equal(f.cell.array, cu.cell.array) and f.pbc.all() for f in frames)


def test_imaginary_modes_are_skipped_with_a_count():
    """Linear water is a maximum along its bends: two imaginary modes, not displaced."""
    water = Atoms("OH2", positions=[(0, 0, 0), (0.97, 0, 0), (-0.97, 0, 0)])
    water.info["system_id"] = "linear-water"
    # Forces along the line keep it linear: the relaxation stops at the saddle.
    water = relax(water, EMT(), fmax=1e-5, steps=500, optimizer=BFGS)
    assert np.abs(water.positions[:, 1:]).max() < 1e-12
    assert rigid_modes(water) == 5
    hessian = teacher_hessian(water, emt_teacher())
    modes = vibrational_modes(hessian, water.get_masses(), 5)
    assert modes.imaginary.sum() == 2
    with pytest.warns(UserWarning, match=r"'linear-water': 2 imaginary mode\(s\) of 9 skipped"):
        frames = normal_modes(water, emt_teacher(), 300.0, n_frames=5, seed=0)
    # Only the stretches are displaced: the molecule stays on its line.
    for frame in frames:
        np.testing.assert_allclose(frame.positions[:, 1:], 0.0, atol=1e-9)
    with pytest.raises(ValueError, match="temperature_K > 0"):
        normal_mode_frames(water, modes, 0.0, n_frames=1)


# --------------------------------------------------------------------------- temperature ladder


@pytest.mark.parametrize("batched", [False, True])
def test_md_temperature_ladder_continues_each_trajectory(ethanol, cu_crystal, batched):
    """Each rung starts from the previous rung's last frame, on either MD path."""
    teacher = BatchedEMT() if batched else emt_teacher()
    structures, temperatures, seeds = [ethanol, cu_crystal], [300.0, 600.0], [[1, 2], [3, 4]]
    frames = teacher_md(structures, teacher, temperatures, seeds, 2, 3, ladder=True)
    for atoms, mine, pair in zip(structures, frames, seeds, strict=True):
        cold = langevin_md(atoms, EMT(), 300.0, n_frames=2, interval=3, seed=pair[0])
        hot = langevin_md(cold[-1], EMT(), 600.0, n_frames=2, interval=3, seed=pair[1])
        assert len(mine) == 4
        for frame, expected in zip(mine, cold + hot, strict=True):
            np.testing.assert_allclose(frame.positions, expected.positions, atol=1e-9)
            assert frame.info == expected.info
            _assert_fresh(frame)
        assert [f.info["sampler"] for f in mine] == ["md-300K"] * 2 + ["md-600K"] * 2
    # Without the ladder the hot trajectory starts again from the structure.
    (side_by_side, _) = teacher_md(structures, teacher, temperatures, seeds, 2, 3)
    fresh = langevin_md(ethanol, EMT(), 600.0, n_frames=2, interval=3, seed=2)
    np.testing.assert_allclose(side_by_side[2].positions, fresh[0].positions, atol=1e-9)
    assert not np.allclose(side_by_side[2].positions, frames[0][2].positions)
