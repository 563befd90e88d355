"""Perturbing structures into training frames.

Random displacements (:func:`rattle`), random cell strains of crystals (:func:`strain`),
rattle-relax chains on the teacher (:func:`rattle_relax`), normal-mode sampling from the
teacher's Hessian (:func:`normal_modes`) and teacher-driven Langevin MD (:func:`teacher_md`),
at several temperatures side by side or as a ladder.

Every frame is a fresh :class:`ase.Atoms`: no calculator, no cached results, no labels of
its parent (``teacher_*`` and bare ``energy``/``forces``/``stress`` keys are removed, since
they belong to other positions) and no momenta. ``info["system_id"]`` is kept and
``info["sampler"]`` says how the frame was made.

Unstable MD is an error, not a skipped system: :func:`langevin_md` raises
:class:`MDInstabilityError` naming the system, temperature and step, because a teacher that
cannot hold a structure together at that temperature would feed the student nonsense, and a
silently shorter dataset hides it. Lower the temperature or timestep, or drop the system.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ase
import numpy as np
from ase import units
from ase.calculators.calculator import Calculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary
from ase.optimize import FIRE
from ase.optimize.optimize import Optimizer

try:
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # ase < 3.29 has only the older name of the same Maxwell-Boltzmann draw
    from ase.md.velocitydistribution import (  # noqa: N813
        MaxwellBoltzmannDistribution as thermalize_momenta,
    )

from mlff_distiller import keys
from mlff_distiller.structures.filters import shortest_distance

if TYPE_CHECKING:
    from mlff_distiller.teachers.base import Teacher

#: MD stops when two atoms come closer than this (Å).
MD_MIN_DISTANCE = 0.5
#: MD counts as exploded above max(factor * target temperature, floor) kelvin.
_EXPLOSION_TEMPERATURE_FACTOR = 10.0
_EXPLOSION_TEMPERATURE_FLOOR_K = 5000.0

#: Keys of labels computed for the parent's positions, which a perturbed frame must not keep.
_STALE_INFO_KEYS = (
    keys.TEACHER_ENERGY,
    keys.TEACHER_STRESS,
    keys.TEACHER_NAME,
    keys.TEACHER_VERSION,
    keys.ENERGY,
    keys.STRESS,
    "free_energy",
)
_STALE_ARRAY_KEYS = (keys.TEACHER_FORCES, keys.FORCES, "momenta")


class MDInstabilityError(RuntimeError):
    """Teacher-driven MD collapsed atoms together or blew up."""


def rattle(atoms: ase.Atoms, n_frames: int, stdev: float, seed: int = 0) -> list[ase.Atoms]:
    """Frames with independent Gaussian displacements of every atom.

    Parameters
    ----------
    atoms
        The reference structure (not modified).
    n_frames
        Number of frames.
    stdev
        Standard deviation of each Cartesian displacement component in Å.
    seed
        Seed of the random generator (same seed, same frames).

    Returns
    -------
    list[ase.Atoms]
        ``n_frames`` frames with ``info["sampler"] = f"rattle-{stdev:g}"``.
    """
    rng = np.random.default_rng(seed)
    sampler = f"rattle-{stdev:g}"
    frames = []
    for _ in range(n_frames):
        frame = _fresh_frame(atoms, sampler)
        frame.positions = atoms.positions + rng.normal(0.0, stdev, size=(len(atoms), 3))
        frames.append(frame)
    return frames


def strain(atoms: ase.Atoms, n_frames: int, max_strain: float, seed: int = 0) -> list[ase.Atoms]:
    """Frames of a crystal under random symmetric strains, its atoms carried with the cell.

    Each frame draws the six independent components of a symmetric strain tensor ``e``
    uniformly in ``[-max_strain, max_strain]`` and deforms the cell by ``I + e``: the cell
    rows become ``cell @ (I + e)`` and the atoms keep their fractional coordinates
    (``set_cell(..., scale_atoms=True)``). Only structures periodic along all three cell
    vectors are strained: a molecule, slab or wire gets no frame, since a strain that
    stretches vacuum changes nothing the teacher sees.

    Parameters
    ----------
    atoms
        The reference structure (not modified).
    n_frames
        Number of frames (of a fully periodic structure).
    max_strain
        Largest absolute value of a strain component (dimensionless, e.g. 0.02 for 2 %).
    seed
        Seed of the random generator (same seed, same frames).

    Returns
    -------
    list[ase.Atoms]
        ``n_frames`` frames with ``info["sampler"] = f"strain-{max_strain:g}"``, or none if
        ``atoms`` is not periodic along all three cell vectors.
    """
    if not atoms.pbc.all():
        return []
    rng = np.random.default_rng(seed)
    sampler = f"strain-{max_strain:g}"
    upper = np.triu_indices(3)
    frames = []
    for _ in range(n_frames):
        e = np.zeros((3, 3))
        e[upper] = rng.uniform(-max_strain, max_strain, size=6)
        e = e + np.triu(e, 1).T
        frame = _fresh_frame(atoms, sampler)
        frame.set_cell(atoms.cell.array @ (np.eye(3) + e), scale_atoms=True)
        frames.append(frame)
    return frames


def relax(
    atoms: ase.Atoms,
    calculator: Calculator,
    fmax: float,
    steps: int,
    optimizer: type[Optimizer] = FIRE,
) -> ase.Atoms:
    """A copy of ``atoms`` with its positions relaxed by an ASE optimiser (cell fixed).

    Parameters
    ----------
    atoms
        The structure (not modified).
    calculator
        ASE calculator giving the forces (e.g. ``teacher.calculator()``).
    fmax
        Stop once every atom's force is below this, eV/Å.
    steps
        Most optimiser steps (the relaxation may stop earlier).
    optimizer
        The ASE optimiser class (``FIRE`` by default; ``BFGS`` for tight minima).

    Returns
    -------
    ase.Atoms
        The relaxed copy, tagged ``info["sampler"] = "relaxed"``, without calculator or
        labels.
    """
    work = _fresh_frame(atoms, "relaxed")
    work.calc = calculator
    try:
        optimizer(work, logfile=None).run(fmax=fmax, steps=steps)
    finally:
        work.calc = None
    return work


def rattle_relax(
    atoms: ase.Atoms,
    calculator: Calculator,
    n_chains: int,
    length: int,
    stdev: float,
    fmax: float = 0.05,
    steps: int = 5,
    seed: int = 0,
) -> list[ase.Atoms]:
    """Rattle-relax chains: frames a little uphill of the teacher's minima, and beyond.

    The rattle-relax-repeat idea of augment-atoms (J. L. A. Gardner et al., "Distillation
    of atomistic foundation models across architectures and chemical domains", 2025): each
    link of a chain rattles the previous link's frame (Gaussian displacements of standard
    deviation ``stdev``, their mean removed so the structure does not drift), then relaxes
    it for at most ``steps`` FIRE steps on the teacher; the partly relaxed structure is the
    link's frame and the start of the next link. The first link starts from ``atoms``.
    Unlike augment-atoms, parents are not drawn from a Boltzmann-weighted family tree, the
    relaxation is ASE's FIRE, and the cell is not rattled (:func:`strain` does that).

    All draws come from one ``numpy.random.default_rng(seed)``, chain by chain and link by
    link: link ``j`` of chain ``c`` adds ``d - d.mean(axis=0)``, ``d`` being the
    ``(c * length + j)``-th draw ``rng.normal(0.0, stdev, size=(N, 3))``.

    Parameters
    ----------
    atoms
        The starting structure (not modified); its cell and ``pbc`` are kept.
    calculator
        The teacher's ASE calculator (``teacher.calculator()``).
    n_chains
        Number of chains, each starting from ``atoms``.
    length
        Links (frames) per chain.
    stdev
        Standard deviation of each Cartesian displacement component of a rattle, Å.
    fmax
        A relaxation stops early once every force is below this, eV/Å.
    steps
        Most FIRE steps after each rattle.
    seed
        Seed of the random generator (same seed, same frames).

    Returns
    -------
    list[ase.Atoms]
        ``n_chains * length`` frames, chain by chain, with
        ``info["sampler"] = f"rattle-relax-{stdev:g}"``.
    """
    rng = np.random.default_rng(seed)
    sampler = f"rattle-relax-{stdev:g}"
    frames = []
    for _ in range(n_chains):
        current = atoms
        for _ in range(length):
            rattled = _fresh_frame(current, sampler)
            displacement = rng.normal(0.0, stdev, size=(len(atoms), 3))
            rattled.positions += displacement - displacement.mean(axis=0)
            current = relax(rattled, calculator, fmax, steps)
            current.info[keys.SAMPLER] = sampler
            frames.append(current)
    return frames


def teacher_hessian(atoms: ase.Atoms, teacher: Teacher, delta: float = 0.01) -> np.ndarray:
    """The teacher's Hessian by central differences of its forces, all in one labelling call.

    Every Cartesian coordinate is moved by ``+delta`` and ``-delta``; the ``6 N`` displaced
    structures are labelled together (:meth:`Teacher.label`, batched where the teacher
    batches), and ``H[i, j] = -(F_j(x + delta e_i) - F_j(x - delta e_i)) / (2 delta)``. The
    result is returned as computed, not symmetrised: its asymmetry measures the
    finite-difference error (:func:`vibrational_modes` symmetrises it).

    Parameters
    ----------
    atoms
        The structure (``N`` atoms; not modified), best a minimum of the teacher.
    teacher
        The teacher giving the forces.
    delta
        Displacement of each coordinate, Å.

    Returns
    -------
    numpy.ndarray
        (3N, 3N) second derivatives of the energy, eV/Å², coordinates ordered atom by atom
        (x, y, z of atom 0, then atom 1, ...).
    """
    n_coordinates = 3 * len(atoms)
    displaced = []
    for i in range(n_coordinates):
        for sign in (1.0, -1.0):
            frame = _fresh_frame(atoms, "hessian")
            positions = frame.positions.copy()
            positions.flat[i] += sign * delta
            frame.positions = positions
            displaced.append(frame)
    forces = np.stack([labels.forces for labels in teacher.label(displaced)])
    forces = forces.reshape(n_coordinates, 2, n_coordinates)
    return -(forces[:, 0] - forces[:, 1]) / (2.0 * delta)


def rigid_modes(atoms: ase.Atoms) -> int:
    """Zero-frequency modes of a free structure: translations, and rotations of a molecule.

    3 for a structure periodic along any cell vector or a single atom, 5 for a linear
    molecule, 6 for any other molecule.
    """
    if atoms.pbc.any() or len(atoms) == 1:
        return 3
    inertia = np.sort(atoms.get_moments_of_inertia())
    return 5 if inertia[0] < 1e-6 * inertia[2] else 6


@dataclass(frozen=True, eq=False)
class VibrationalModes:
    """Harmonic modes of a structure (``N`` atoms): the eigenvectors of its mass-weighted Hessian.

    Attributes
    ----------
    eigenvalues
        (3N,) eigenvalues of the mass-weighted Hessian, ascending, eV/(Å² amu) (the squared
        angular frequencies; negative for imaginary modes).
    vectors
        (3N, N, 3) Cartesian displacement of each mode per unit mass-weighted amplitude,
        1/sqrt(amu): the unit eigenvector divided by the square root of each atom's mass.
    rigid
        (3N,) True for the translations and rotations: the :func:`rigid_modes` modes whose
        eigenvalues are closest to zero.
    """

    eigenvalues: np.ndarray
    vectors: np.ndarray
    rigid: np.ndarray

    @property
    def imaginary(self) -> np.ndarray:
        """(3N,) True for the non-rigid modes with negative eigenvalue (not a minimum)."""
        return ~self.rigid & (self.eigenvalues < 0)

    @property
    def vibrational(self) -> np.ndarray:
        """(3N,) True for the real vibrations: non-rigid modes with positive eigenvalue."""
        return ~self.rigid & (self.eigenvalues > 0)


def vibrational_modes(hessian: np.ndarray, masses: np.ndarray, n_rigid: int) -> VibrationalModes:
    """Diagonalise the symmetrised, mass-weighted Hessian.

    Parameters
    ----------
    hessian
        (3N, 3N) Hessian, eV/Å² (e.g. :func:`teacher_hessian`).
    masses
        (N,) atomic masses, amu.
    n_rigid
        How many modes closest to zero are translations and rotations (:func:`rigid_modes`).

    Returns
    -------
    VibrationalModes
        Eigenvalues in eV/(Å² amu) and Cartesian mode vectors.
    """
    inv_sqrt_mass = np.repeat(1.0 / np.sqrt(np.asarray(masses, dtype=np.float64)), 3)
    symmetric = 0.5 * (hessian + hessian.T)
    weighted = symmetric * inv_sqrt_mass[:, None] * inv_sqrt_mass[None, :]
    eigenvalues, eigenvectors = np.linalg.eigh(weighted)
    vectors = (eigenvectors * inv_sqrt_mass[:, None]).T.reshape(len(eigenvalues), -1, 3)
    rigid = np.zeros(len(eigenvalues), dtype=bool)
    rigid[np.argsort(np.abs(eigenvalues), kind="stable")[:n_rigid]] = True
    return VibrationalModes(eigenvalues, vectors, rigid)


def normal_mode_frames(
    atoms: ase.Atoms,
    modes: VibrationalModes,
    temperature_K: float,
    n_frames: int,
    seed: int = 0,
) -> list[ase.Atoms]:
    """Frames displaced along the vibrational modes with classical Boltzmann amplitudes.

    Each vibrational mode ``k`` (eigenvalue ``w2_k``) gets an independent Gaussian
    mass-weighted amplitude of variance ``kB T / w2_k``, the classical canonical
    distribution of a harmonic oscillator; the displacement is the sum over modes of
    amplitude times :attr:`VibrationalModes.vectors`. In the harmonic limit each mode then
    holds ``kB T / 2`` of potential energy on average. Rigid and imaginary modes are not
    displaced. Very soft modes get large amplitudes: the harmonic picture breaks down
    there, and frames with atoms too close are dropped later by the distance filter.

    Parameters
    ----------
    atoms
        The structure whose Hessian gave ``modes`` (not modified).
    modes
        Its modes (:func:`vibrational_modes`).
    temperature_K
        Temperature of the Boltzmann distribution, K (> 0).
    n_frames
        Number of frames.
    seed
        Seed of the random generator (same seed, same frames).

    Returns
    -------
    list[ase.Atoms]
        ``n_frames`` frames with ``info["sampler"] = f"normal-modes-{temperature_K:g}K"``;
        none if the structure has no vibrational mode.
    """
    if temperature_K <= 0:
        raise ValueError(f"normal_mode_frames needs temperature_K > 0; got {temperature_K}")
    vibrational = modes.vibrational
    if not vibrational.any():
        return []
    rng = np.random.default_rng(seed)
    stdev = np.sqrt(units.kB * temperature_K / modes.eigenvalues[vibrational])
    amplitudes = rng.standard_normal((n_frames, len(stdev))) * stdev
    displacements = np.einsum("fm,mnc->fnc", amplitudes, modes.vectors[vibrational])
    sampler = f"normal-modes-{temperature_K:g}K"
    frames = []
    for displacement in displacements:
        frame = _fresh_frame(atoms, sampler)
        frame.positions = atoms.positions + displacement
        frames.append(frame)
    return frames


def normal_modes(
    atoms: ase.Atoms,
    teacher: Teacher,
    temperature_K: float,
    n_frames: int,
    seed: int = 0,
    delta: float = 0.01,
) -> list[ase.Atoms]:
    """Normal-mode sampling on the teacher's Hessian.

    The normal-mode sampling of ANI-1 (J. S. Smith, O. Isayev and A. E. Roitberg, Chem.
    Sci. 8, 3192 (2017)), with classical Boltzmann amplitudes at ``temperature_K`` instead
    of ANI's random split of a total energy among the modes: :func:`teacher_hessian`,
    :func:`vibrational_modes` (skipping the :func:`rigid_modes` translations and rotations),
    then :func:`normal_mode_frames`. ``atoms`` should be a minimum of the teacher (relax it
    first, e.g. :func:`relax` with ``BFGS``); imaginary modes are skipped, with a warning
    that counts them.

    Parameters
    ----------
    atoms
        The structure (not modified), best relaxed on the teacher.
    teacher
        The teacher whose Hessian defines the modes.
    temperature_K
        Temperature of the Boltzmann distribution, K (> 0).
    n_frames
        Number of frames.
    seed
        Seed of the random generator (same seed, same frames).
    delta
        Finite-difference displacement of the Hessian, Å.

    Returns
    -------
    list[ase.Atoms]
        As :func:`normal_mode_frames`.
    """
    hessian = teacher_hessian(atoms, teacher, delta)
    modes = vibrational_modes(hessian, atoms.get_masses(), rigid_modes(atoms))
    n_imaginary = int(modes.imaginary.sum())
    if n_imaginary:
        system = atoms.info.get(keys.SYSTEM_ID, atoms.get_chemical_formula())
        warnings.warn(
            f"normal modes of system {system!r}: {n_imaginary} imaginary mode(s) of "
            f"{len(modes.eigenvalues)} skipped, the structure is not a minimum of the teacher "
            "(relax it further first: structures.normal_modes.relax_steps or relax_fmax)",
            stacklevel=2,
        )
    return normal_mode_frames(atoms, modes, temperature_K, n_frames, seed)


def langevin_md(
    atoms: ase.Atoms,
    calculator: Calculator,
    temperature_K: float,
    n_frames: int,
    interval: int,
    timestep_fs: float = 0.5,
    friction: float = 0.01,
    seed: int = 0,
) -> list[ase.Atoms]:
    """Snapshots of Langevin (NVT) molecular dynamics driven by ``calculator``.

    Velocities start from a Maxwell-Boltzmann distribution at ``temperature_K`` with zero
    total momentum; the thermostat acts on every degree of freedom, so the centre of mass
    diffuses. The first snapshot is taken after ``interval`` steps (the starting
    structure is not returned).

    Parameters
    ----------
    atoms
        Starting structure (not modified); its cell and ``pbc`` are kept.
    calculator
        ASE calculator driving the dynamics (e.g. ``teacher.calculator()``).
    temperature_K
        Thermostat temperature in K (> 0).
    n_frames
        Number of snapshots.
    interval
        MD steps between snapshots.
    timestep_fs
        Time step in fs.
    friction
        Langevin friction in 1/fs.
    seed
        Seed of the initial velocities and of the thermostat noise.

    Returns
    -------
    list[ase.Atoms]
        ``n_frames`` snapshots without calculator or momenta, with
        ``info["sampler"] = f"md-{temperature_K:g}K"`` and the input's ``system_id``.

    Raises
    ------
    MDInstabilityError
        If two atoms come closer than :data:`MD_MIN_DISTANCE` Å, a position, velocity or
        force becomes non-finite, or the kinetic temperature exceeds
        max(10 x ``temperature_K``, 5000 K); the message names the system, temperature and
        step.
    """
    if temperature_K <= 0 or n_frames < 1 or interval < 1:
        raise ValueError(
            f"langevin_md needs temperature_K > 0, n_frames >= 1 and interval >= 1; got "
            f"{temperature_K}, {n_frames}, {interval}"
        )
    rng = np.random.default_rng(seed)
    md_atoms = atoms.copy()
    md_atoms.calc = calculator
    thermalize_momenta(md_atoms, temperature_K=temperature_K, rng=rng)
    Stationary(md_atoms)
    dyn = Langevin(
        md_atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature_K,
        friction=friction / units.fs,
        # fixcm=True biases the NVT distribution of small systems (ASE >= 3.28 warns); the
        # centre of mass then random-walks, which leaves energies and forces unchanged.
        fixcm=False,
        rng=rng,
    )
    max_temperature = _max_temperature(temperature_K)

    def check_stable() -> None:
        reason = _instability(md_atoms, max_temperature)
        if reason is not None:
            raise _unstable(md_atoms, temperature_K, dyn.nsteps, reason, timestep_fs)

    dyn.attach(check_stable, interval=1)
    sampler = f"md-{temperature_K:g}K"
    frames = []
    try:
        for _ in range(n_frames):
            dyn.run(interval)
            frames.append(_fresh_frame(md_atoms, sampler))
    finally:
        md_atoms.calc = None
    return frames


class BatchedLangevin:
    """ASE's Langevin dynamics of many trajectories at once, driven by a TorchSim model.

    The propagator is that of :class:`ase.md.langevin.Langevin` (Vanden-Eijnden and
    Ciccotti 2006, eq. 23, ``fixcm=False``), applied to all atoms of all trajectories as
    tensors on the model's device; forces come from one model call per step for the whole
    batch. Each trajectory draws its initial velocities (ASE's ``thermalize_momenta`` and
    ``Stationary``) and its noise from its own ``numpy.random.default_rng(seed)``, in the
    order ASE draws them, so a trajectory does not depend on the others in its batch, nor on
    the device, and follows :func:`langevin_md` with the same seed and the teacher's ASE
    calculator (up to the rounding of the model's forces, tested). TorchSim's own
    ``nvt_langevin`` is not used: its noise is one stream for the whole batch (the global
    torch generator in TorchSim 0.3, the state's in 0.4 and later), so a trajectory would
    change with its batch mates, the device and the TorchSim version.

    A batch shares one TorchSim state, and a TorchSim state one ``pbc``: the structures must
    all be periodic along all three directions, or all along none.

    Parameters
    ----------
    structures
        Starting structures (``B`` trajectories, ``N`` atoms in all); not modified.
    model
        A TorchSim ``ModelInterface`` (``energy`` (B,) eV, ``forces`` (N, 3) eV/Å).
    temperatures_K
        Thermostat temperature of each trajectory, K (> 0).
    seeds
        Seed of each trajectory's random generator.
    timestep_fs
        Time step in fs.
    friction
        Langevin friction in 1/fs (0: velocity Verlet, NVE).

    Attributes
    ----------
    steps : int
        Steps taken so far.
    energy : torch.Tensor
        (B,) potential energy of every trajectory now, eV (float64).
    """

    def __init__(
        self,
        structures: Sequence[ase.Atoms],
        model: Any,
        temperatures_K: Sequence[float],
        seeds: Sequence[int],
        timestep_fs: float = 0.5,
        friction: float = 0.01,
    ) -> None:
        import torch
        import torch_sim as ts

        from mlff_distiller.deploy.neighbours import SkinNeighbourList

        structures = list(structures)
        if not len(structures) == len(temperatures_K) == len(seeds) >= 1:
            raise ValueError(
                "BatchedLangevin needs one temperature and one seed per structure; got "
                f"{len(structures)} structures, {len(temperatures_K)} temperatures, "
                f"{len(seeds)} seeds"
            )
        if {tuple(atoms.pbc.tolist()) for atoms in structures} not in (
            {(True, True, True)},
            {(False, False, False)},
        ):
            raise ValueError(
                "BatchedLangevin runs structures periodic along all three directions, or "
                "along none, not both in one batch (nor partly periodic ones)"
            )
        if min(temperatures_K) <= 0 or friction < 0 or timestep_fs <= 0:
            raise ValueError(
                "BatchedLangevin needs temperatures > 0, friction >= 0 and timestep_fs > 0"
            )
        self.structures = structures
        self.temperatures_K = [float(t) for t in temperatures_K]
        self.timestep_fs = float(timestep_fs)
        self._model = model
        device = torch.device(model.device)
        self._device = device
        self._rngs = [np.random.default_rng(seed) for seed in seeds]
        self._counts = [len(atoms) for atoms in structures]
        momenta = []
        for atoms, temperature, rng in zip(
            structures, self.temperatures_K, self._rngs, strict=True
        ):
            # ASE's own draw, as langevin_md makes it: the same generator then goes on.
            work = atoms.copy()
            thermalize_momenta(work, temperature_K=temperature, rng=rng)
            Stationary(work)
            momenta.append(work.get_momenta())

        def tensor(arrays: list[np.ndarray]) -> torch.Tensor:
            return torch.from_numpy(np.concatenate(arrays).astype(np.float64)).to(device)

        self._state = ts.io.atoms_to_state(structures, device, model.dtype)
        self._positions = tensor([atoms.positions for atoms in structures])
        masses = tensor([atoms.get_masses() for atoms in structures]).unsqueeze(-1)
        self._velocities = tensor(momenta) / masses
        self._masses = masses
        self._owner = torch.repeat_interleave(
            torch.arange(len(structures), device=device),
            torch.tensor(self._counts, device=device),
        )
        self._offsets = np.concatenate([[0], np.cumsum(self._counts)])
        self._ptr = torch.from_numpy(self._offsets).to(device)
        self._cell = tensor([atoms.cell.array[None] for atoms in structures])
        self._pbc = torch.from_numpy(np.stack([atoms.pbc for atoms in structures])).to(device)
        # ASE's Langevin coefficients (Langevin.updatevars), per atom.
        dt = self.timestep_fs * units.fs
        fr = friction / units.fs
        kt = torch.tensor(
            [units.kB * t for t in self.temperatures_K], dtype=torch.float64, device=device
        )
        sigma = torch.sqrt(2 * kt.index_select(0, self._owner).unsqueeze(-1) * fr / masses)
        self._dt = dt
        self._c1 = dt / 2.0 - dt * dt * fr / 8.0
        self._c2 = dt * fr / 2 - dt * dt * fr * fr / 8.0
        self._c3 = np.sqrt(dt) * sigma / 2.0 - dt**1.5 * fr * sigma / 8.0
        self._c5 = dt**1.5 * sigma / (2 * np.sqrt(3))
        self._c4 = fr / 2.0 * self._c5
        self._max_temperature = torch.tensor(
            [_max_temperature(t) for t in self.temperatures_K], dtype=torch.float64, device=device
        )
        self._close = SkinNeighbourList(MD_MIN_DISTANCE, skin=0.0)
        self.steps = 0
        self.energy, self._forces = self._evaluate()

    def run(self, n_steps: int) -> None:
        """Advance every trajectory by ``n_steps`` steps.

        Raises
        ------
        MDInstabilityError
            As :func:`langevin_md` does, checked after every step, naming the first
            trajectory that became unstable.
        """
        import torch

        # Each trajectory's noise for all n_steps in one draw per trajectory: the same
        # numbers, in the same order, as ASE's per-step draws of xi, then eta.
        noise = np.concatenate(
            [
                rng.standard_normal((n_steps, 2, n, 3))
                for rng, n in zip(self._rngs, self._counts, strict=True)
            ],
            axis=2,
        )
        noise = torch.from_numpy(noise).to(self._device)
        for step in range(n_steps):
            xi, eta = noise[step]
            rnd_pos = self._c5 * eta
            rnd_vel = self._c3 * xi - self._c4 * eta
            v = self._velocities
            v = v + self._c1 * self._forces / self._masses - self._c2 * v + rnd_vel
            self._positions = self._positions + self._dt * v + rnd_pos
            self.energy, self._forces = self._evaluate()
            v = v + self._c1 * self._forces / self._masses - self._c2 * v + rnd_vel
            self._velocities = v
            self.steps += 1
            self._check()

    def kinetic_energy(self) -> Any:
        """(B,) kinetic energy of every trajectory, eV (float64 tensor)."""
        per_atom = 0.5 * (self._masses * self._velocities**2).sum(dim=-1)
        return self._per_system(per_atom)

    def temperature(self) -> Any:
        """(B,) kinetic temperature of every trajectory, K, as ASE's (3 degrees per atom)."""
        import torch

        counts = torch.tensor(self._counts, device=self._device, dtype=torch.float64)
        return 2 * self.kinetic_energy() / (3 * counts * units.kB)

    def frames(self) -> list[ase.Atoms]:
        """The current snapshot of every trajectory, as :func:`langevin_md` returns them."""
        positions = self._positions.cpu().numpy()
        frames = []
        for b, atoms in enumerate(self.structures):
            frame = _fresh_frame(atoms, f"md-{self.temperatures_K[b]:g}K")
            frame.positions = positions[self._offsets[b] : self._offsets[b + 1]]
            frames.append(frame)
        return frames

    def _per_system(self, per_atom: Any) -> Any:
        """Sum a per-atom quantity (N,) over each trajectory: (B,)."""
        import torch

        total = torch.zeros(len(self._counts), dtype=per_atom.dtype, device=self._device)
        return total.index_add_(0, self._owner, per_atom)

    def _evaluate(self) -> tuple[Any, Any]:
        """Energies (B,) and forces (N, 3) at the current positions, float64."""
        import torch

        self._state.positions = self._positions.to(self._state.positions.dtype)
        out = self._model(self._state)
        return out["energy"].to(torch.float64), out["forces"].to(torch.float64)

    def _check(self) -> None:
        """Raise :class:`MDInstabilityError` for the first trajectory that looks unphysical."""
        import torch

        atoms_finite = torch.isfinite(torch.cat([self._positions, self._velocities], dim=-1)).all(
            dim=-1
        )
        forces_finite = torch.isfinite(self._forces).all(dim=-1)
        bad_state = self._per_system((~atoms_finite).double()) > 0
        bad_forces = self._per_system((~forces_finite).double()) > 0
        temperature = self.temperature()
        hot = temperature > self._max_temperature
        flags = torch.stack([bad_state, bad_forces, hot])
        if bool(flags.any()):
            kind, b = (int(x) for x in flags.nonzero()[0])
            reason = [
                "non-finite positions or velocities",
                "non-finite forces",
                f"kinetic temperature {float(temperature[b]):.0f} K, above "
                f"{float(self._max_temperature[b]):.0f} K",
            ][kind]
            raise _unstable(
                self.structures[b], self.temperatures_K[b], self.steps, reason, self.timestep_fs
            )
        # Only sane positions reach the neighbour search (an exploded box would be huge).
        (i, j), shifts, _ = self._close(self._positions, self._cell, self._pbc, self._ptr)
        if i.numel() == 0:
            return
        owner = self._owner.index_select(0, i)
        vectors = self._positions[j] - self._positions[i]
        vectors = vectors + torch.einsum("ek,ekl->el", shifts, self._cell.index_select(0, owner))
        distance = torch.linalg.norm(vectors, dim=-1)
        close = distance < MD_MIN_DISTANCE
        if bool(close.any()):
            first = int(close.nonzero()[0, 0])
            b = int(owner[first])
            shortest = float(distance[owner == b].min())
            reason = f"two atoms {shortest:.3f} Å apart, below {MD_MIN_DISTANCE} Å"
            raise _unstable(
                self.structures[b], self.temperatures_K[b], self.steps, reason, self.timestep_fs
            )


def batched_langevin_md(
    structures: Sequence[ase.Atoms],
    model: Any,
    temperatures_K: Sequence[float],
    seeds: Sequence[int],
    n_frames: int,
    interval: int,
    timestep_fs: float = 0.5,
    friction: float = 0.01,
    batch_atoms: int | None = None,
) -> list[list[ase.Atoms]]:
    """:func:`langevin_md` of many trajectories at once on a TorchSim model.

    Trajectory ``k`` starts from ``structures[k]`` at ``temperatures_K[k]`` with
    ``seeds[k]``; trajectories run together in batches (:class:`BatchedLangevin`) of at most
    ``batch_atoms`` atoms, fully periodic and non-periodic structures in separate batches.
    The frames schedule is that of :func:`langevin_md`, and so are the frames: the first
    after ``interval`` steps, without calculator, labels or momenta, with
    ``info["sampler"] = f"md-{temperature:g}K"``.

    Parameters
    ----------
    structures
        Starting structures, each periodic along all three cell vectors or along none.
    model
        A TorchSim ``ModelInterface``, e.g. a teacher's ``torchsim_model()``.
    temperatures_K, seeds
        Temperature (K, > 0) and seed of each trajectory.
    n_frames, interval, timestep_fs, friction
        As for :func:`langevin_md`.
    batch_atoms
        Most atoms per batch (``None``: one batch per kind of periodicity); a structure with
        more atoms runs alone.

    Returns
    -------
    list[list[ase.Atoms]]
        The ``n_frames`` frames of each trajectory, in the order of ``structures``.

    Raises
    ------
    MDInstabilityError
        As :func:`langevin_md`, naming the first trajectory that became unstable.
    ValueError
        If the arguments do not match, or a structure is periodic along only some directions.
    """
    from mlff_distiller.data.batching import plan_batches

    if n_frames < 1 or interval < 1:
        raise ValueError(
            f"batched_langevin_md needs n_frames >= 1 and interval >= 1; got {n_frames}, {interval}"
        )
    if not len(structures) == len(temperatures_K) == len(seeds):
        raise ValueError(
            f"batched_langevin_md needs one temperature and one seed per structure; got "
            f"{len(structures)} structures, {len(temperatures_K)} temperatures, "
            f"{len(seeds)} seeds"
        )
    n_atoms = np.array([len(atoms) for atoms in structures], dtype=np.int64)
    frames: list[list[ase.Atoms]] = [[] for _ in structures]
    for periodic in (False, True):
        group = [k for k, atoms in enumerate(structures) if bool(atoms.pbc.all()) == periodic]
        if not group:
            continue
        batches = plan_batches(
            group, n_atoms, np.zeros_like(n_atoms), max_structures=len(group), max_atoms=batch_atoms
        )
        for batch in batches:
            members = batch.tolist()
            md = BatchedLangevin(
                [structures[k] for k in members],
                model,
                [temperatures_K[k] for k in members],
                [seeds[k] for k in members],
                timestep_fs=timestep_fs,
                friction=friction,
            )
            for _ in range(n_frames):
                md.run(interval)
                for k, frame in zip(members, md.frames(), strict=True):
                    frames[k].append(frame)
    return frames


def teacher_md(
    structures: Sequence[ase.Atoms],
    teacher: Teacher,
    temperatures_K: Sequence[float],
    seeds: Sequence[Sequence[int]],
    n_frames: int,
    interval: int,
    timestep_fs: float = 0.5,
    friction: float = 0.01,
    ladder: bool = False,
) -> list[list[ase.Atoms]]:
    """Teacher-driven Langevin MD of every structure at every temperature.

    Batched (:func:`batched_langevin_md`, within the teacher's ``batch_atoms``) on the
    teacher's TorchSim model where it offers one (:class:`~mlff_distiller.teachers.base.
    TorchSimTeacher`); otherwise, and for structures periodic along only some directions,
    one trajectory at a time with ASE's Langevin on the teacher's calculator
    (:func:`langevin_md`). Both follow the same dynamics from the same seeds.

    Without ``ladder`` every trajectory starts from its structure. With ``ladder`` the
    temperatures are rungs climbed in the order given: the trajectory at
    ``temperatures_K[t]`` starts from the last frame of the one at ``temperatures_K[t - 1]``
    (positions carried on, velocities drawn afresh at the new temperature from its own
    seed), the rungs of all structures running together on either path.

    Parameters
    ----------
    structures
        Starting structures (not modified).
    teacher
        The teacher driving the dynamics.
    temperatures_K
        Thermostat temperatures, K: one trajectory per structure and temperature.
    seeds
        ``seeds[i][t]``: seed of structure ``i`` at ``temperatures_K[t]``.
    n_frames, interval, timestep_fs, friction
        As for :func:`langevin_md`.
    ladder
        Run the temperatures one after another, each continuing the previous trajectory.

    Returns
    -------
    list[list[ase.Atoms]]
        For each structure, the frames of its trajectories, temperature by temperature.
    """
    from mlff_distiller.teachers.base import TorchSimTeacher

    model = teacher.torchsim_model() if isinstance(teacher, TorchSimTeacher) else None
    settings = {
        "n_frames": n_frames,
        "interval": interval,
        "timestep_fs": timestep_fs,
        "friction": friction,
    }
    every = range(len(temperatures_K))
    rungs = [[t] for t in every] if ladder else [every]
    starts = list(structures)
    results: dict[tuple[int, int], list[ase.Atoms]] = {}
    for rung in rungs:
        jobs = [(i, t) for i in range(len(structures)) for t in rung]
        results.update(_trajectories(starts, jobs, teacher, model, temperatures_K, seeds, settings))
        if ladder:  # the next rung continues from the last frame of this one
            starts = [results[i, rung[0]][-1] for i in range(len(structures))]
    return [
        [frame for t in range(len(temperatures_K)) for frame in results[i, t]]
        for i in range(len(structures))
    ]


def _trajectories(
    starts: Sequence[ase.Atoms],
    jobs: Sequence[tuple[int, int]],
    teacher: Teacher,
    model: Any,
    temperatures_K: Sequence[float],
    seeds: Sequence[Sequence[int]],
    settings: dict[str, Any],
) -> dict[tuple[int, int], list[ase.Atoms]]:
    """Frames of trajectory ``(i, t)`` from ``starts[i]`` at ``temperatures_K[t]``, per job.

    Batched on ``model`` (a TorchSim model, or ``None``) where the structure's periodicity
    allows it, one by one on the teacher's calculator otherwise.
    """
    uniform = [bool(starts[i].pbc.all()) or not starts[i].pbc.any() for i, _ in jobs]
    batched = [job for job, ok in zip(jobs, uniform, strict=True) if ok and model is not None]
    results: dict[tuple[int, int], list[ase.Atoms]] = {}
    if batched:
        trajectories = batched_langevin_md(
            [starts[i] for i, _ in batched],
            model,
            [temperatures_K[t] for _, t in batched],
            [seeds[i][t] for i, t in batched],
            batch_atoms=teacher.batch_atoms,
            **settings,
        )
        results.update(zip(batched, trajectories, strict=True))
    for i, t in jobs:
        if (i, t) not in results:
            results[i, t] = langevin_md(
                starts[i],
                teacher.calculator(),
                temperature_K=temperatures_K[t],
                seed=seeds[i][t],
                **settings,
            )
    return results


def _max_temperature(temperature_K: float) -> float:
    """Kinetic temperature (K) above which MD at ``temperature_K`` counts as exploded."""
    return max(_EXPLOSION_TEMPERATURE_FACTOR * temperature_K, _EXPLOSION_TEMPERATURE_FLOOR_K)


def _unstable(
    atoms: ase.Atoms, temperature_K: float, step: int, reason: str, timestep_fs: float
) -> MDInstabilityError:
    """The error of an MD run that became unstable, naming system, temperature and step."""
    system = atoms.info.get(keys.SYSTEM_ID, atoms.get_chemical_formula())
    return MDInstabilityError(
        f"MD of system {system!r} at {temperature_K:g} K became unstable at step {step} "
        f"({reason}): lower the temperature or the time step (now {timestep_fs:g} fs), or "
        "remove this system"
    )


def _instability(atoms: ase.Atoms, max_temperature: float) -> str | None:
    """Why an MD state is unphysical, or ``None`` if it looks sane."""
    if not (np.isfinite(atoms.positions).all() and np.isfinite(atoms.get_momenta()).all()):
        return "non-finite positions or velocities"
    if not np.isfinite(atoms.get_forces()).all():
        return "non-finite forces"
    distance = shortest_distance(atoms, MD_MIN_DISTANCE)
    if distance < MD_MIN_DISTANCE:
        return f"two atoms {distance:.3f} Å apart, below {MD_MIN_DISTANCE} Å"
    temperature = atoms.get_temperature()
    if temperature > max_temperature:
        return f"kinetic temperature {temperature:.0f} K, above {max_temperature:.0f} K"
    return None


def _fresh_frame(atoms: ase.Atoms, sampler: str) -> ase.Atoms:
    """A copy without calculator, stale labels or momenta, tagged with ``sampler``."""
    frame = atoms.copy()
    frame.calc = None
    for key in _STALE_INFO_KEYS:
        frame.info.pop(key, None)
    for key in _STALE_ARRAY_KEYS:
        frame.arrays.pop(key, None)
    frame.info[keys.SAMPLER] = sampler
    return frame
