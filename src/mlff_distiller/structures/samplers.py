"""Perturbing structures into training frames: random displacements and teacher MD.

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

import ase
import numpy as np
from ase import units
from ase.calculators.calculator import Calculator
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary

try:
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # ase < 3.29 has only the older name of the same Maxwell-Boltzmann draw
    from ase.md.velocitydistribution import (  # noqa: N813
        MaxwellBoltzmannDistribution as thermalize_momenta,
    )

from mlff_distiller import keys
from mlff_distiller.structures.filters import shortest_distance

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
    max_temperature = max(
        _EXPLOSION_TEMPERATURE_FACTOR * temperature_K, _EXPLOSION_TEMPERATURE_FLOOR_K
    )

    def check_stable() -> None:
        reason = _instability(md_atoms, max_temperature)
        if reason is not None:
            system = md_atoms.info.get(keys.SYSTEM_ID, md_atoms.get_chemical_formula())
            raise MDInstabilityError(
                f"MD of system {system!r} at {temperature_K:g} K became unstable at step "
                f"{dyn.nsteps} ({reason}): lower the temperature or the time step "
                f"(now {timestep_fs:g} fs), or remove this system"
            )

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
