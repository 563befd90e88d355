"""Molecular dynamics of the student beside its teacher: ``report/md.json`` and its plots.

On held-out test systems, student and teacher run the same dynamics from the same start
(same geometry, same seeded Maxwell-Boltzmann velocities with no net momentum or rotation),
with ASE's integrators only:

- **NVE** (velocity Verlet): the drift of the total energy, the slope of a linear fit of
  energy per atom against time (meV/atom/ps), and its fluctuation, the standard deviation
  (meV/atom).
- **NVT** (Langevin) at each configured temperature, the student longer than the teacher.
  A run is *stable* while every bond of the start holds (covalent radii, ASE's
  ``natural_cutoffs``, times ``bond_break_factor``) and no new one forms
  (``bond_form_factor``), no two atoms come closer than ``min_distance_A``, positions,
  velocities and forces stay finite, and the mean kinetic temperature stays within
  ``temperature_factor`` of the target (see :class:`StabilityMonitor`). A run stops at its
  first failing step, which is recorded with the reason.
- **Structure**: bond-length and bond-angle distributions of the NVT frames (and the radial
  distribution function of periodic cells), student against teacher over the same time
  window of each run (the teacher's, unless the student failed sooner), compared by the
  Wasserstein-1 distance (Å, degrees) and the L1 distance of the RDFs (Å).
- **On-policy error**: frames of the student's own NVT trajectories, labelled by the teacher:
  the error where the student's simulation actually goes, beside the held-out error of
  ``report/metrics.json``.

A system passes when the student's NVE drift and on-policy force RMSE are within the
thresholds of the ``validate_md`` config and every student run is stable; a failing system
lists its reasons. The functions below take ASE calculators, so any pair of potentials can
be compared (the tests use EMT for both).
"""

from __future__ import annotations

import math
import platform
import re
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase
import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
import torch
import vesin
from ase import units
from ase.calculators.calculator import Calculator
from ase.geometry import find_mic
from ase.md.langevin import Langevin
from ase.md.md import MolecularDynamics
from ase.md.velocitydistribution import Stationary, ZeroRotation, force_temperature
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import natural_cutoffs
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text
from scipy.stats import wasserstein_distance

import mlff_distiller
from mlff_distiller import keys
from mlff_distiller.atomic import atomic_path, write_json
from mlff_distiller.config import Config, ValidateMDConfig
from mlff_distiller.data.dataset import PackedDataset, load_dataset

try:
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # ase < 3.29 has only the older name of the same Maxwell-Boltzmann draw
    from ase.md.velocitydistribution import (  # noqa: N813
        MaxwellBoltzmannDistribution as thermalize_momenta,
    )

RDF_MAX_DISTANCE = 6.0
"""Largest pair distance of the radial distribution functions, Å."""
RDF_BIN_WIDTH = 0.05
"""Bin width of the radial distribution functions, Å."""
EXPLOSION_FACTOR = 10.0
"""Any run (NVE too) is unstable once its kinetic temperature exceeds this many times its
starting temperature (and :data:`EXPLOSION_FLOOR_K`): the student's forces blew up."""
EXPLOSION_FLOOR_K = 5000.0
"""Kinetic temperature, K, below which no run counts as exploded."""

#: Called with the number of MD steps just done (progress display).
StepCallback = Callable[[int], None]


# --- stability ---------------------------------------------------------------------------


def _pairs(atoms: ase.Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Atom pairs closer than ``cutoff`` (Å), each once, periodic images included.

    Returns ``i`` and ``j`` (P,) with ``i <= j`` and their distances ``d`` (P,) Å.
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = np.asarray(atoms.cell[:], dtype=np.float64) if pbc.any() else np.zeros((3, 3))
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=False)
    i, j, d = nl.compute(
        points=np.ascontiguousarray(atoms.positions, dtype=np.float64),
        box=cell,
        periodic=pbc,
        quantities="ijd",
    )
    i, j = np.asarray(i, dtype=np.int64), np.asarray(j, dtype=np.int64)
    return np.minimum(i, j), np.maximum(i, j), np.asarray(d, dtype=np.float64)


def covalent_radii(atoms: ase.Atoms) -> np.ndarray:
    """(N,) covalent radius of every atom, Å (ASE's ``natural_cutoffs``)."""
    return np.asarray(natural_cutoffs(atoms), dtype=np.float64)


def bonds(atoms: ase.Atoms, factor: float) -> np.ndarray:
    """Bonded pairs: closer than ``factor`` times the sum of their covalent radii.

    Parameters
    ----------
    atoms
        The structure; periodic images count (an atom may bond to an image of itself).
    factor
        Multiple of the summed covalent radii within which two atoms are bonded.

    Returns
    -------
    numpy.ndarray
        (B, 2) int64 atom indices ``i <= j``, sorted; a pair bonded through several periodic
        images appears once per image.
    """
    radii = covalent_radii(atoms)
    if len(atoms) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    i, j, d = _pairs(atoms, factor * 2 * radii.max())
    bonded = d < factor * (radii[i] + radii[j])
    pairs = np.stack([i[bonded], j[bonded]], axis=1)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))] if len(pairs) else pairs


def _atom(atoms: ase.Atoms, k: int) -> str:
    return f"{atoms.get_chemical_symbols()[k]}{k}"


class StabilityMonitor:
    """Judges every MD step against the start: topology, close contacts, temperature.

    Parameters
    ----------
    start
        The starting structure; its bonds (``settings.bond_factor``) are the topology.
    settings
        The ``validate_md`` config (bond factors, ``min_distance_A``, temperature bounds,
        ``timestep_fs``).
    temperature_K
        Temperature of the starting velocities, K: an instantaneous temperature above
        :data:`EXPLOSION_FACTOR` times it (at least :data:`EXPLOSION_FLOOR_K`) is an explosion.
    thermostat
        Whether the run is thermostatted at ``temperature_K``: then the running mean
        temperature is judged too (``settings.temperature_factor``).
    """

    def __init__(
        self,
        start: ase.Atoms,
        settings: ValidateMDConfig,
        temperature_K: float,
        thermostat: bool = False,
    ) -> None:
        self.settings = settings
        self.radii = covalent_radii(start)
        self.reference = Counter(map(tuple, bonds(start, settings.bond_factor).tolist()))
        radius = float(self.radii.max()) if len(start) else 0.0
        self.cutoff = max(settings.bond_break_factor * 2 * radius, settings.min_distance_A)
        self.temperature_K = temperature_K
        self.thermostat = thermostat
        self.max_temperature_K = max(EXPLOSION_FACTOR * temperature_K, EXPLOSION_FLOOR_K)
        self.window = max(1, round(settings.temperature_window_fs / settings.timestep_fs))
        self._temperatures: deque[float] = deque(maxlen=self.window)
        self._seen = 0
        self._sum_after_equilibration = 0.0

    def check(self, atoms: ase.Atoms) -> str | None:
        """Why the current state is unstable, or ``None`` while it is stable.

        Call it once per MD step (the running temperature mean counts the calls).
        """
        # Every step ends with the momenta updated by the forces: non-finite forces show there.
        if not (np.isfinite(atoms.positions).all() and np.isfinite(atoms.get_momenta()).all()):
            return "non-finite positions, velocities or forces"
        temperature = atoms.get_temperature()
        if temperature > self.max_temperature_K:
            return (
                f"kinetic temperature {temperature:.0f} K, above {self.max_temperature_K:.0f} K "
                "(exploded)"
            )
        i, j, d = _pairs(atoms, self.cutoff)
        close = d < self.settings.min_distance_A
        if close.any():
            k = int(np.argmin(np.where(close, d, np.inf)))
            return (
                f"atoms {_atom(atoms, i[k])} and {_atom(atoms, j[k])} {d[k]:.2f} Å apart, "
                f"closer than {self.settings.min_distance_A:g} Å"
            )
        if self.settings.require_topology:
            reason = self._topology(atoms, i, j, d)
            if reason is not None:
                return reason
        if self.thermostat:
            return self._temperature(temperature)
        return None

    def _topology(
        self, atoms: ase.Atoms, i: np.ndarray, j: np.ndarray, d: np.ndarray
    ) -> str | None:
        covalent = self.radii[i] + self.radii[j]
        kept = Counter(
            map(tuple, np.stack([i, j], 1)[d < self.settings.bond_break_factor * covalent].tolist())
        )
        for pair, count in self.reference.items():
            if kept[pair] < count:
                a, b = pair
                now = atoms.get_distance(a, b, mic=bool(atoms.pbc.any()))
                return (
                    f"bond {_atom(atoms, a)}-{_atom(atoms, b)} broke ({now:.2f} Å, beyond "
                    f"{self.settings.bond_break_factor:g} x {self.radii[a] + self.radii[b]:.2f} "
                    "Å, the sum of covalent radii)"
                )
        close = d < self.settings.bond_form_factor * covalent
        formed = Counter(map(tuple, np.stack([i, j], 1)[close].tolist())) - self.reference
        if formed:
            a, b = next(iter(formed))
            now = atoms.get_distance(a, b, mic=bool(atoms.pbc.any()))
            return f"new bond {_atom(atoms, a)}-{_atom(atoms, b)} formed ({now:.2f} Å)"
        return None

    def _temperature(self, temperature: float) -> str | None:
        """Heating: the mean over the last window; cooling: the mean since equilibration.

        The first window is equilibration: velocities drawn at T share their energy with
        the potential, and the temperature dips before the thermostat restores it, which
        lowers a window's mean (so only the cooling check waits for it). A mean over the
        whole run after it is steady enough for molecules of a few atoms, whose
        temperature over one window fluctuates by tens of percent.
        """
        self._temperatures.append(temperature)
        self._seen += 1
        target, factor = self.temperature_K, self.settings.temperature_factor
        window = self.settings.temperature_window_fs
        if self._seen >= self.window:
            mean = sum(self._temperatures) / self.window
            if mean > target * factor:
                return (
                    f"mean temperature {mean:.0f} K over the last {window:g} fs, above "
                    f"{factor:g} x {target:g} K"
                )
        if self._seen > self.window:
            self._sum_after_equilibration += temperature
        if self._seen >= 2 * self.window:
            mean = self._sum_after_equilibration / (self._seen - self.window)
            if mean < target / factor:
                return (
                    f"mean temperature {mean:.0f} K since the first {window:g} fs, below "
                    f"{target:g} K / {factor:g}"
                )
        return None


# --- dynamics ----------------------------------------------------------------------------


@dataclass
class Trajectory:
    """What one MD run recorded (``S`` steps done, ``F`` frames kept).

    Attributes
    ----------
    steps
        Steps done: the requested number, or the failing step of an unstable run.
    time_fs
        (S + 1,) time of every step from the start, fs.
    total_energy
        (S + 1,) potential plus kinetic energy per atom, eV/atom.
    temperature
        (S + 1,) kinetic temperature, K.
    frames
        (F, N, 3) positions every ``sample_interval`` steps from the start, Å.
    failure
        Why the run stopped early, or ``None``.
    """

    steps: int
    time_fs: np.ndarray
    total_energy: np.ndarray
    temperature: np.ndarray
    frames: np.ndarray
    failure: str | None = None

    @property
    def stable(self) -> bool:
        """Whether the run finished without a failure."""
        return self.failure is None


def starting_momenta(atoms: ase.Atoms, temperature_K: float, seed: Any) -> np.ndarray:
    """Seeded Maxwell-Boltzmann momenta with no net momentum (nor rotation, for molecules).

    The kinetic temperature is exactly ``temperature_K`` (a draw for a few atoms is far off),
    also after the centre-of-mass motion (and rigid rotation) is removed. Returns (N, 3)
    momenta in ASE units (amu Å/ASE time); ``atoms`` is not changed.
    """
    work = atoms.copy()
    thermalize_momenta(work, temperature_K=temperature_K, rng=np.random.default_rng(seed))
    force_temperature(work, temperature_K)
    Stationary(work)
    moments = work.get_moments_of_inertia() if not work.pbc.any() else np.zeros(3)
    # ASE's ZeroRotation divides by every principal moment: a linear molecule has a zero one.
    if moments.min() > 1e-6 * moments.max():
        ZeroRotation(work)
    return work.get_momenta()


def run_md(
    start: ase.Atoms,
    calculator: Calculator,
    momenta: np.ndarray,
    steps: int,
    settings: ValidateMDConfig,
    temperature_K: float,
    thermostat: bool = False,
    seed: Any = 0,
    on_steps: StepCallback | None = None,
) -> Trajectory:
    """NVE (velocity Verlet) or, with ``thermostat``, NVT (Langevin) from ``start``.

    The run stops at the first step that :class:`StabilityMonitor` judges unstable; frames
    are kept only of stable steps.

    Parameters
    ----------
    start
        Starting structure (not modified).
    calculator
        ASE calculator driving the dynamics.
    momenta
        (N, 3) starting momenta (:func:`starting_momenta`).
    steps
        Steps to run.
    settings
        ``timestep_fs``, ``friction_per_fs``, ``sample_interval`` and the stability criteria.
    temperature_K
        Temperature of ``momenta`` and, with ``thermostat``, the Langevin target, K.
    thermostat
        Run Langevin NVT; otherwise NVE.
    seed
        Seed of the Langevin noise (the same seed gives student and teacher the same noise).
    on_steps
        Called with the number of steps done since its last call (about every 10 steps).
    """
    atoms = start.copy()
    atoms.calc = calculator
    atoms.set_momenta(momenta)
    timestep = settings.timestep_fs * units.fs
    dyn: MolecularDynamics
    if not thermostat:
        dyn = VelocityVerlet(atoms, timestep=timestep)
        interval = 0
    else:
        dyn = Langevin(
            atoms,
            timestep=timestep,
            temperature_K=temperature_K,
            friction=settings.friction_per_fs / units.fs,
            # fixcm=True biases the NVT distribution of small systems (ASE >= 3.28 warns).
            fixcm=False,
            rng=np.random.default_rng(seed),
        )
        interval = settings.sample_interval
    monitor = StabilityMonitor(start, settings, temperature_K, thermostat)
    n_atoms = len(atoms)
    energies, temperatures, frames = [], [], []
    failure, reported = None, 0
    try:
        for _ in dyn.irun(steps):
            energies.append(atoms.get_total_energy() / n_atoms)
            temperatures.append(atoms.get_temperature())
            reason = monitor.check(atoms)
            if reason is not None:
                failure = f"step {dyn.nsteps}: {reason}"
                break
            if interval and dyn.nsteps % interval == 0:
                frames.append(atoms.positions.copy())
            if on_steps is not None and dyn.nsteps - reported >= 10:
                on_steps(dyn.nsteps - reported)
                reported = dyn.nsteps
    finally:
        atoms.calc = None
    if on_steps is not None:
        on_steps(steps - reported)  # the steps a failure skipped count as done
    done = dyn.nsteps
    return Trajectory(
        steps=done,
        time_fs=np.arange(done + 1) * settings.timestep_fs,
        total_energy=np.asarray(energies[: done + 1], dtype=np.float64),
        temperature=np.asarray(temperatures[: done + 1], dtype=np.float64),
        frames=np.asarray(frames, dtype=np.float64).reshape(-1, n_atoms, 3),
        failure=failure,
    )


def energy_drift(trajectory: Trajectory) -> tuple[float | None, float | None]:
    """Drift (meV/atom/ps) and fluctuation (meV/atom) of the total energy of a run.

    The drift is the slope of a least-squares line through the total energy per atom
    against time, the fluctuation its standard deviation, both over the finite energies (an
    exploded run keeps its finite part); ``None`` where they cannot be computed (fewer than
    2 finite points) or are not finite.
    """
    t_ps = trajectory.time_fs / 1000.0
    e = trajectory.total_energy
    ok = np.isfinite(e)
    if ok.sum() < 2:
        return None, None
    slope = np.polyfit(t_ps[ok], e[ok], 1)[0] * 1000.0
    fluctuation = float(np.std(e[ok]) * 1000.0)
    return _finite(slope), _finite(fluctuation)


def _finite(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


# --- structure ---------------------------------------------------------------------------


def _vectors(
    frames: np.ndarray, start: np.ndarray, end: np.ndarray, reference: ase.Atoms
) -> np.ndarray:
    """(F, P, 3) vectors from atoms ``start`` to ``end`` (P,), minimum image if periodic."""
    vectors = frames[:, end] - frames[:, start]
    if reference.pbc.any() and vectors.size:
        flat, _ = find_mic(vectors.reshape(-1, 3), reference.cell, reference.pbc)
        vectors = flat.reshape(vectors.shape)
    return vectors


def bond_lengths(frames: np.ndarray, pairs: np.ndarray, reference: ase.Atoms) -> np.ndarray:
    """Lengths of the bonds ``pairs`` (B, 2) in every frame (F, N, 3): (F * B,) Å."""
    pairs = np.unique(pairs, axis=0)
    if len(frames) == 0 or len(pairs) == 0:
        return np.zeros(0)
    return np.linalg.norm(_vectors(frames, pairs[:, 0], pairs[:, 1], reference), axis=-1).ravel()


def bond_angles(frames: np.ndarray, pairs: np.ndarray, reference: ase.Atoms) -> np.ndarray:
    """Angles between every two bonds ``pairs`` (B, 2) sharing an atom: (F * T,) degrees."""
    pairs = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
    triples = []
    for centre in np.unique(pairs):
        ends = np.concatenate([pairs[pairs[:, 0] == centre, 1], pairs[pairs[:, 1] == centre, 0]])
        triples += [(a, centre, b) for n, a in enumerate(ends) for b in ends[n + 1 :]]
    if len(frames) == 0 or not triples:
        return np.zeros(0)
    t = np.asarray(triples, dtype=np.int64)
    u = _vectors(frames, t[:, 1], t[:, 0], reference)
    v = _vectors(frames, t[:, 1], t[:, 2], reference)
    cosine = np.sum(u * v, axis=-1) / (np.linalg.norm(u, axis=-1) * np.linalg.norm(v, axis=-1))
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))).ravel()


def radial_distribution(frames: np.ndarray, reference: ase.Atoms) -> np.ndarray:
    """Radial distribution function g(r) of a periodic cell, averaged over the frames.

    Returns (R,) g(r) on bins of :data:`RDF_BIN_WIDTH` up to :data:`RDF_MAX_DISTANCE` Å
    (all pairs, normalised by the ideal gas of the same density).
    """
    edges = np.arange(0.0, RDF_MAX_DISTANCE + RDF_BIN_WIDTH / 2, RDF_BIN_WIDTH)
    counts = np.zeros(len(edges) - 1)
    work = reference.copy()
    for positions in frames:
        work.positions = positions
        _, _, d = _pairs(work, RDF_MAX_DISTANCE)
        counts += np.histogram(d, bins=edges)[0]
    n, volume = len(reference), reference.get_volume()
    shell = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    # Each pair is counted once: 2 x pairs / N is the mean number of neighbours per atom.
    return 2.0 * counts / (max(len(frames), 1) * n * (n / volume) * shell)


@dataclass
class Distributions:
    """Structure samples of one set of NVT runs: bond lengths (Å), angles (°), g(r)."""

    bond_lengths: np.ndarray
    angles: np.ndarray
    rdf: np.ndarray | None = None


def distributions(frames: np.ndarray, pairs: np.ndarray, reference: ase.Atoms) -> Distributions:
    """Bond lengths, angles and (periodic cells only) g(r) of frames (F, N, 3)."""
    return Distributions(
        bond_lengths(frames, pairs, reference),
        bond_angles(frames, pairs, reference),
        radial_distribution(frames, reference) if reference.pbc.all() and len(frames) else None,
    )


def distribution_distances(student: Distributions, teacher: Distributions) -> dict[str, Any]:
    """Wasserstein-1 distances of bond lengths (Å) and angles (°), L1 distance of g(r) (Å).

    Each is ``None`` where either side has no samples (no bonds, no angles, not periodic).
    """

    def w1(a: np.ndarray, b: np.ndarray) -> float | None:
        return float(wasserstein_distance(a, b)) if len(a) and len(b) else None

    rdf_l1 = None
    if student.rdf is not None and teacher.rdf is not None:
        rdf_l1 = float(np.sum(np.abs(student.rdf - teacher.rdf)) * RDF_BIN_WIDTH)
    return {
        "bond_length_w1_A": w1(student.bond_lengths, teacher.bond_lengths),
        "angle_w1_deg": w1(student.angles, teacher.angles),
        "rdf_l1": rdf_l1,
    }


# --- on-policy errors --------------------------------------------------------------------


def on_policy_errors(
    frames: Sequence[ase.Atoms], student: Calculator, teacher: Calculator
) -> dict[str, Any]:
    """Student against teacher on ``frames`` (e.g. from the student's own trajectories).

    Returns ``n_frames``, ``force_rmse_ev_per_a`` (over all Cartesian components) and
    ``energy_mae_mev_per_atom``; the errors are ``None`` without frames.
    """
    force_sq, n_components, energy_err = 0.0, 0, []
    for frame in frames:
        predicted = []
        for calc in (student, teacher):
            work = frame.copy()
            work.calc = calc
            predicted.append((work.get_potential_energy(), np.asarray(work.get_forces())))
            work.calc = None
        (e_s, f_s), (e_t, f_t) = predicted
        force_sq += float(np.sum((f_s - f_t) ** 2))
        n_components += f_s.size
        energy_err.append(abs(e_s - e_t) / len(frame))
    if not frames:
        return {"n_frames": 0, "force_rmse_ev_per_a": None, "energy_mae_mev_per_atom": None}
    return {
        "n_frames": len(frames),
        "force_rmse_ev_per_a": _finite(math.sqrt(force_sq / n_components)),
        "energy_mae_mev_per_atom": _finite(float(np.mean(energy_err)) * 1000.0),
    }


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """At most ``n`` items spread evenly over ``items``, in order, the last one included."""
    if len(items) <= n:
        return list(items)
    picks = np.unique(np.linspace(len(items) - 1, 0, n).round().astype(int))
    return [items[k] for k in picks]


# --- one system --------------------------------------------------------------------------


def _nve_summary(trajectory: Trajectory, timestep_fs: float) -> dict[str, Any]:
    drift, fluctuation = energy_drift(trajectory)
    return {
        "steps": trajectory.steps,
        "time_ps": trajectory.steps * timestep_fs / 1000.0,
        "drift_mev_per_atom_per_ps": drift,
        "fluctuation_mev_per_atom": fluctuation,
        "stable": trajectory.stable,
        "failure": trajectory.failure,
    }


def _nvt_summary(trajectory: Trajectory) -> dict[str, Any]:
    step = None
    if trajectory.failure is not None:
        step = trajectory.steps
    return {
        "steps": trajectory.steps,
        "stable": trajectory.stable,
        "first_failure_step": step,
        "failure": trajectory.failure,
        "mean_temperature_K": _finite(float(np.mean(trajectory.temperature))),
    }


def judge(entry: dict[str, Any], settings: ValidateMDConfig) -> tuple[list[str], list[str]]:
    """Reasons a system fails acceptance, and notes on the teacher (which is not judged).

    Parameters
    ----------
    entry
        A system of ``md.json`` (``nve``, ``nvt`` and ``on_policy`` filled in).
    settings
        The thresholds.
    """
    reasons, notes = [], []
    nve = entry["nve"]
    student, teacher = nve["student"], nve["teacher"]
    limit = settings.max_drift_mev_per_atom_per_ps
    if not student["stable"]:
        reasons.append(f"NVE unstable at {student['failure']}")
    drift = student["drift_mev_per_atom_per_ps"]
    if drift is None:
        reasons.append("NVE drift could not be measured (non-finite energies)")
    elif abs(drift) > limit:
        reasons.append(f"NVE drift {drift:+.2f} meV/atom/ps beyond ±{limit:g} meV/atom/ps")
    if not teacher["stable"]:
        notes.append(f"teacher NVE unstable at {teacher['failure']}")
    elif teacher["drift_mev_per_atom_per_ps"] is not None and (
        abs(teacher["drift_mev_per_atom_per_ps"]) > limit
    ):
        notes.append(
            f"teacher NVE drift {teacher['drift_mev_per_atom_per_ps']:+.2f} meV/atom/ps is "
            "also beyond the threshold (shorten the time step?)"
        )
    for run in entry["nvt"]:
        temperature = f"{run['temperature_K']:g} K"
        if not run["student"]["stable"]:
            reasons.append(f"NVT {temperature} unstable at {run['student']['failure']}")
        if not run["teacher"]["stable"]:
            notes.append(f"teacher NVT {temperature} unstable at {run['teacher']['failure']}")
    rmse = entry["on_policy"]["force_rmse_ev_per_a"]
    limit = settings.max_on_policy_force_rmse_ev_per_a
    if rmse is None:
        reasons.append("no on-policy error: the student's NVT runs kept no frame")
    elif rmse > limit:
        reasons.append(f"on-policy force RMSE {rmse:.3f} eV/Å beyond {limit:g} eV/Å")
    return reasons, notes


def file_stem(index: int, system: str) -> str:
    """A file name for a system id (SMILES hold ``/``, ``#``, ``(``...): ``02-CC_O_O``."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", system).strip("_.")[:40]
    return f"{index:02d}-{slug or 'system'}"


@dataclass
class SystemRuns:
    """Every trajectory of one system and its distributions (for plots and tests).

    ``student_distributions`` and ``teacher_distributions`` cover the same time window of
    every NVT run (the shorter of the two); ``student_whole_distributions`` the student's
    whole runs.
    """

    nve_student: Trajectory
    nve_teacher: Trajectory
    nvt_student: list[Trajectory] = field(default_factory=list)
    nvt_teacher: list[Trajectory] = field(default_factory=list)
    student_distributions: Distributions | None = None
    teacher_distributions: Distributions | None = None
    student_whole_distributions: Distributions | None = None


@dataclass(frozen=True)
class MDJob:
    """One MD run of :func:`validate_system`: which potential, from where, for how long.

    Attributes
    ----------
    start
        Starting structure.
    potential
        ``"student"`` or ``"teacher"``.
    momenta
        (N, 3) starting momenta (:func:`starting_momenta`).
    steps
        Steps to run.
    temperature_K
        Temperature of the momenta and, for NVT, of the thermostat, K.
    thermostat
        NVT (Langevin) rather than NVE.
    seed
        Seed of the Langevin noise.
    """

    start: ase.Atoms
    potential: str
    momenta: np.ndarray
    steps: int
    temperature_K: float
    thermostat: bool
    seed: Any


def md_jobs(start: ase.Atoms, settings: ValidateMDConfig, seed: Any = 0) -> list[MDJob]:
    """The runs of one system, in the order :func:`validate_system` reads them.

    NVE student and teacher, then per temperature NVT student and teacher, each pair from
    the same seeded momenta (and the same Langevin noise). The runs are independent, so they
    can go to several processes (:func:`validate_md`).
    """
    seed = list(np.atleast_1d(seed))
    nve_momenta = starting_momenta(start, settings.nve_temperature_K, [*seed, 0])
    jobs = [
        MDJob(
            start,
            "student",
            nve_momenta,
            settings.nve_student_steps,
            settings.nve_temperature_K,
            False,
            0,
        ),
        MDJob(
            start,
            "teacher",
            nve_momenta,
            settings.nve_teacher_steps,
            settings.nve_temperature_K,
            False,
            0,
        ),
    ]
    for t, temperature in enumerate(settings.temperatures_K):
        momenta = starting_momenta(start, temperature, [*seed, 1 + t, 0])
        noise = [*seed, 1 + t, 1]
        jobs.append(
            MDJob(start, "student", momenta, settings.nvt_student_steps, temperature, True, noise)
        )
        jobs.append(
            MDJob(start, "teacher", momenta, settings.nvt_teacher_steps, temperature, True, noise)
        )
    return jobs


def run_job(
    job: MDJob,
    calculator: Calculator,
    settings: ValidateMDConfig,
    on_steps: StepCallback | None = None,
) -> Trajectory:
    """:func:`run_md` of one :class:`MDJob` with the calculator of its potential."""
    return run_md(
        job.start,
        calculator,
        job.momenta,
        job.steps,
        settings,
        job.temperature_K,
        job.thermostat,
        job.seed,
        on_steps,
    )


def validate_system(
    start: ase.Atoms,
    student: Calculator,
    teacher: Calculator,
    settings: ValidateMDConfig,
    system: str | None = None,
    seed: Any = 0,
    on_steps: StepCallback | None = None,
    trajectories: Sequence[Trajectory] | None = None,
) -> tuple[dict[str, Any], SystemRuns]:
    """NVE, NVT, structure and on-policy errors of one system, judged by ``settings``.

    Parameters
    ----------
    start
        Starting structure (not modified).
    student, teacher
        ASE calculators of the two potentials.
    settings
        The ``validate_md`` config.
    system
        Name of the system in the result (default: the chemical formula).
    seed
        Seed of this system's starting velocities and Langevin noise (any
        ``numpy.random.default_rng`` seed, e.g. ``[settings.seed, k]``).
    on_steps
        Progress callback (:func:`run_md`).
    trajectories
        The runs of :func:`md_jobs` (same ``start``, ``settings`` and ``seed``), in its order,
        when they were run elsewhere (other processes); None: run them here, one by one.

    Returns
    -------
    entry, runs
        The system's entry of ``md.json`` (without ``plots``), and the trajectories.
    """
    jobs = md_jobs(start, settings, seed)
    if trajectories is None:
        calculators = {"student": student, "teacher": teacher}
        trajectories = [
            run_job(job, calculators[job.potential], settings, on_steps) for job in jobs
        ]
    if len(trajectories) != len(jobs):
        raise ValueError(f"{len(jobs)} trajectories expected, got {len(trajectories)}")
    runs = SystemRuns(trajectories[0], trajectories[1])
    nvt_entries = []
    for t, temperature in enumerate(settings.temperatures_K):
        pair = trajectories[2 + 2 * t : 4 + 2 * t]
        runs.nvt_student.append(pair[0])
        runs.nvt_teacher.append(pair[1])
        nvt_entries.append(
            {
                "temperature_K": float(temperature),
                "student": _nvt_summary(pair[0]),
                "teacher": _nvt_summary(pair[1]),
            }
        )
    topology = bonds(start, settings.bond_factor)
    # Distances compare the same stretch of time: both runs start out of equilibrium, so a
    # longer run alone would differ from a shorter one of the same potential.
    common = [
        min(len(s.frames), len(t.frames))
        for s, t in zip(runs.nvt_student, runs.nvt_teacher, strict=True)
    ]
    student_frames = [r.frames[:n] for r, n in zip(runs.nvt_student, common, strict=True)]
    teacher_frames = [r.frames[:n] for r, n in zip(runs.nvt_teacher, common, strict=True)]
    runs.student_distributions = distributions(np.concatenate(student_frames), topology, start)
    runs.teacher_distributions = distributions(np.concatenate(teacher_frames), topology, start)
    runs.student_whole_distributions = distributions(
        np.concatenate([r.frames for r in runs.nvt_student]), topology, start
    )
    on_policy_frames = []
    for trajectory in runs.nvt_student:
        for positions in trajectory.frames[1:]:  # frame 0 is the start, a test frame
            frame = start.copy()
            frame.positions = positions
            on_policy_frames.append(frame)
    picks = spread(on_policy_frames, settings.on_policy_frames)
    on_policy = on_policy_errors(picks, student, teacher)
    if on_steps is not None:
        on_steps(2 * settings.on_policy_frames)  # the unit of steps_per_system
    entry: dict[str, Any] = {
        "system": system if system is not None else start.get_chemical_formula(),
        "formula": start.get_chemical_formula(),
        "n_atoms": len(start),
        "passed": False,
        "reasons": [],
        "notes": [],
        "nve": {
            "timestep_fs": settings.timestep_fs,
            "temperature_K": settings.nve_temperature_K,
            "student": _nve_summary(runs.nve_student, settings.timestep_fs),
            "teacher": _nve_summary(runs.nve_teacher, settings.timestep_fs),
        },
        "nvt": nvt_entries,
        "structure": {
            **distribution_distances(runs.student_distributions, runs.teacher_distributions),
            "n_bonds": len(topology),
        },
        "on_policy": on_policy,
    }
    entry["reasons"], entry["notes"] = judge(entry, settings)
    entry["passed"] = not entry["reasons"]
    return entry, runs


def steps_per_system(settings: ValidateMDConfig) -> int:
    """MD steps (and on-policy evaluations) one system takes: the progress bar's unit."""
    n_t = len(settings.temperatures_K)
    return (
        settings.nve_student_steps
        + settings.nve_teacher_steps
        + n_t * (settings.nvt_student_steps + settings.nvt_teacher_steps)
        + 2 * settings.on_policy_frames
    )


# --- plots -------------------------------------------------------------------------------


def plot_energy(path: Path, title: str, student: Trajectory, teacher: Trajectory) -> None:
    """NVE total energy per atom against time, student and teacher, from the same start."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6), constrained_layout=True)
    for trajectory, label, colour in ((teacher, "teacher", "0.3"), (student, "student", "C0")):
        energy = trajectory.total_energy
        if len(energy):
            ax.plot(trajectory.time_fs, (energy - energy[0]) * 1000.0, color=colour, label=label)
    ax.set_xlabel("time (fs)")
    ax.set_ylabel("total energy - start (meV/atom)")
    ax.set_title(title)
    ax.legend()
    _save(fig, path)


def plot_distributions(
    path: Path,
    title: str,
    student: Distributions,
    teacher: Distributions,
    distances: dict[str, Any],
    student_whole: Distributions | None = None,
) -> None:
    """Bond-length and angle histograms (and g(r)) of the NVT frames, student over teacher.

    ``student`` and ``teacher`` cover the same time window (the distances are theirs);
    ``student_whole``, dashed, the student's whole runs.
    """
    periodic = student.rdf is not None and teacher.rdf is not None
    fig, axes = plt.subplots(
        1, 3 if periodic else 2, figsize=(13 if periodic else 9, 3.6), constrained_layout=True
    )
    whole = student_whole or Distributions(np.zeros(0), np.zeros(0))
    panels = (
        (
            student.bond_lengths,
            teacher.bond_lengths,
            whole.bond_lengths,
            "bond length (Å)",
            "bond_length_w1_A",
            "Å",
        ),
        (student.angles, teacher.angles, whole.angles, "bond angle (°)", "angle_w1_deg", "°"),
    )
    for ax, (s, t, w, label, key, unit) in zip(axes, panels, strict=False):
        if len(s) and len(t):
            bins = np.histogram_bin_edges(np.concatenate([s, t, w]), bins=60)
            ax.hist(t, bins=bins, density=True, histtype="step", color="0.3", label="teacher")
            ax.hist(
                s, bins=bins, density=True, histtype="step", color="C0", label="student, same time"
            )
            if len(w) > len(s):
                ax.hist(
                    w,
                    bins=bins,
                    density=True,
                    histtype="step",
                    color="C0",
                    linestyle="--",
                    label="student, whole run",
                )
            ax.legend(fontsize="small")
            ax.set_title(f"W1 = {distances[key]:.3g} {unit}")
        else:
            ax.text(0.5, 0.5, "none", transform=ax.transAxes, ha="center")
        ax.set_xlabel(label)
        ax.set_ylabel("density")
    if periodic:
        r = np.arange(len(student.rdf)) * RDF_BIN_WIDTH + RDF_BIN_WIDTH / 2
        axes[2].plot(r, teacher.rdf, color="0.3", label="teacher")
        axes[2].plot(r, student.rdf, color="C0", label="student")
        axes[2].set_xlabel("r (Å)")
        axes[2].set_ylabel("g(r)")
        axes[2].set_title(f"L1 = {distances['rdf_l1']:.3g} Å")
        axes[2].legend()
    fig.suptitle(title)
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


# --- the stage ---------------------------------------------------------------------------


def starting_structure(dataset: PackedDataset, system: str) -> ase.Atoms:
    """The starting geometry of ``system``: its ``initial`` frame, else its first frame."""
    ids = dataset.arrays[keys.SYSTEM_ID]
    frames = np.flatnonzero(ids == system)
    samplers = dataset.arrays.get(keys.SAMPLER)
    if samplers is not None:
        initial = [k for k in frames if samplers[k] == "initial"]
        frames = np.asarray(initial or frames)
    atoms = dataset.atoms(int(frames[0]))
    for key in (keys.TEACHER_ENERGY, keys.TEACHER_STRESS):
        atoms.info.pop(key, None)
    atoms.arrays.pop(keys.TEACHER_FORCES, None)
    return atoms


def choose_systems(test: PackedDataset, settings: ValidateMDConfig) -> list[str]:
    """The test systems to run: ``settings.systems``, else ``n_systems`` drawn with ``seed``.

    Systems of a single atom have no dynamics to judge and are never drawn.

    Raises
    ------
    ValueError
        If a system of ``settings.systems`` is not a test system (the message lists them).
    """
    available = test.systems()
    if settings.systems:
        unknown = [s for s in settings.systems if s not in available]
        if unknown:
            raise ValueError(
                f"validate_md.systems: {unknown} are not test systems of this run; choose "
                f"from {available} (held-out systems only), or leave it empty"
            )
        return list(settings.systems)
    n_atoms = dict(zip(test.arrays[keys.SYSTEM_ID].tolist(), test.n_atoms().tolist(), strict=True))
    candidates = [s for s in available if n_atoms[s] > 1]
    n = len(candidates) if settings.n_systems is None else min(settings.n_systems, len(candidates))
    picks = np.random.default_rng(settings.seed).choice(len(candidates), n, replace=False)
    return [candidates[k] for k in sorted(picks)]


def _median(values: Sequence[float | None]) -> float | None:
    finite = [abs(v) for v in values if v is not None]
    return float(np.median(finite)) if finite else None


def summarise(entries: list[dict[str, Any]], heldout: dict[str, Any] | None) -> dict[str, Any]:
    """Medians of |drift| over systems, pooled on-policy force RMSE, held-out RMSE, counts."""
    squares = [
        (e["on_policy"]["force_rmse_ev_per_a"] ** 2, e["on_policy"]["n_frames"] * e["n_atoms"])
        for e in entries
        if e["on_policy"]["force_rmse_ev_per_a"] is not None
    ]
    weight = sum(w for _, w in squares)
    pooled = math.sqrt(sum(s * w for s, w in squares) / weight) if weight else None
    return {
        "student_drift_mev_per_atom_per_ps_median": _median(
            [e["nve"]["student"]["drift_mev_per_atom_per_ps"] for e in entries]
        ),
        "teacher_drift_mev_per_atom_per_ps_median": _median(
            [e["nve"]["teacher"]["drift_mev_per_atom_per_ps"] for e in entries]
        ),
        "student_stable_runs": sum(run["student"]["stable"] for e in entries for run in e["nvt"]),
        "teacher_stable_runs": sum(run["teacher"]["stable"] for e in entries for run in e["nvt"]),
        "nvt_runs": sum(len(e["nvt"]) for e in entries),
        "on_policy_force_rmse_ev_per_a": pooled,
        "on_policy_energy_mae_mev_per_atom": _median(
            [e["on_policy"]["energy_mae_mev_per_atom"] for e in entries]
        ),
        "heldout_force_rmse_ev_per_a": None if heldout is None else heldout["force_rmse"],
        "heldout_energy_mae_mev_per_atom": None if heldout is None else heldout["energy_mae"],
        "n_passed": sum(e["passed"] for e in entries),
        "n_systems": len(entries),
    }


def _heldout(run_dir: Path) -> dict[str, Any] | None:
    """Held-out errors of ``report/metrics.json`` (overall and per system), if readable."""
    import json

    path = run_dir / "report" / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        return {
            "force_rmse": float(metrics["force_rmse_ev_per_a"]),
            "energy_mae": float(metrics["energy_mae_mev_per_atom"]),
            "per_system": dict(metrics.get("per_system", {})),
        }
    except (OSError, ValueError, KeyError, TypeError):
        return None


def thresholds(settings: ValidateMDConfig) -> dict[str, Any]:
    """The acceptance criteria of ``settings``, as ``md.json`` states them."""
    return {
        "max_drift_mev_per_atom_per_ps": settings.max_drift_mev_per_atom_per_ps,
        "min_distance_A": settings.min_distance_A,
        "max_on_policy_force_rmse_ev_per_a": settings.max_on_policy_force_rmse_ev_per_a,
        "require_topology": settings.require_topology,
        "bond_factor": settings.bond_factor,
        "bond_break_factor": settings.bond_break_factor,
        "bond_form_factor": settings.bond_form_factor,
        "temperature_factor": settings.temperature_factor,
        "temperature_window_fs": settings.temperature_window_fs,
    }


def md_workers(devices: Sequence[str], n_jobs: int) -> int:
    """Processes that run the MD of ``validate-md``: one per torch thread on CPUs, else one.

    The molecules of a test set are small: a second thread barely speeds a step up, while
    a second process of one thread runs a second trajectory at full speed. On a GPU one
    process keeps the device to itself.
    """
    if any(torch.device(d).type != "cpu" for d in devices):
        return 1
    return max(1, min(torch.get_num_threads(), n_jobs))


_WORKER: dict[str, Any] = {}
"""The student, the teacher and the settings of a worker process (:func:`_start_worker`)."""


def _start_worker(
    run_dir: str, device: str, teacher: dict[str, Any], settings: dict[str, Any]
) -> None:
    """Load the potentials once per worker process, which runs on one thread."""
    from mlff_distiller.deploy.calculator import load_calculator
    from mlff_distiller.teachers import get_teacher

    torch.set_num_threads(1)
    _WORKER["student"] = load_calculator(run_dir, device=device)
    _WORKER["teacher"] = get_teacher(
        teacher["name"], teacher["device"], weights=teacher["weights"], model=teacher["model"]
    ).calculator()
    _WORKER["settings"] = ValidateMDConfig(**settings)


def _run_in_worker(job: MDJob) -> Trajectory:
    return run_job(job, _WORKER[job.potential], _WORKER["settings"])


def _run_in_processes(
    jobs: list[list[MDJob]],
    workers: int,
    run_dir: Path,
    device: str,
    config: Config,
    on_steps: StepCallback,
) -> list[list[Trajectory]]:
    """The trajectories of every system's jobs, run by ``workers`` processes.

    The teacher's runs (the slow ones) go first, so that the processes finish together.
    Results do not depend on the number of processes: every run has its own seeds.
    """
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    out: list[list[Any]] = [[None] * len(system_jobs) for system_jobs in jobs]
    order = sorted(
        ((k, i) for k, system_jobs in enumerate(jobs) for i in range(len(system_jobs))),
        key=lambda ki: jobs[ki[0]][ki[1]].potential != "teacher",
    )
    settings = config.validate_md.model_dump(mode="json")
    with ProcessPoolExecutor(
        workers,
        mp_context=get_context("spawn"),
        initializer=_start_worker,
        initargs=(str(run_dir), device, config.teacher.model_dump(mode="json"), settings),
    ) as pool:
        futures = {pool.submit(_run_in_worker, jobs[k][i]): (k, i) for k, i in order}
        for future in as_completed(futures):
            k, i = futures[future]
            out[k][i] = future.result()
            on_steps(jobs[k][i].steps)
    return out


def validate_md(config: Config, run_dir: Path, console: Console | None = None) -> dict[str, Any]:
    """The ``validate-md`` stage: MD of student and teacher on test systems, ``md.json``.

    Writes a plot of the NVE energies and one of the distributions per system under
    ``report/md/``, then ``report/md.json`` (last, atomically: it marks the stage done).

    Raises
    ------
    FileNotFoundError
        If the run has no packed dataset or no trained student yet.
    ValueError
        If ``validate_md.systems`` names a system that is not a test system.
    """
    from mlff_distiller.deploy.calculator import load_calculator
    from mlff_distiller.teachers import get_teacher

    console = console or Console()
    began = time.perf_counter()
    run_dir = Path(run_dir)
    settings = config.validate_md
    dataset = load_dataset(run_dir / "data" / "dataset.h5")
    test = dataset.subset("test")
    systems = choose_systems(test, settings)
    device = settings.device or config.training.device
    starts = [starting_structure(test, system) for system in systems]
    jobs = [md_jobs(start, settings, [settings.seed, k]) for k, start in enumerate(starts)]
    workers = md_workers([str(device), config.teacher.device], sum(len(j) for j in jobs))
    heldout = _heldout(run_dir)
    report = run_dir / "report"
    entries = []
    with Progress(console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(
            "MD: student beside teacher", total=len(systems) * steps_per_system(settings)
        )
        trajectories: list[list[Trajectory]] | None = None
        if workers > 1:
            trajectories = _run_in_processes(
                jobs, workers, run_dir, str(device), config, lambda n: progress.advance(task, n)
            )
        student = load_calculator(run_dir, device=device)
        teacher = config.teacher
        teacher_calc = get_teacher(
            teacher.name, teacher.device, weights=teacher.weights, model=teacher.model
        ).calculator()
        for k, (system, start) in enumerate(zip(systems, starts, strict=True)):
            entry, runs = validate_system(
                start,
                student,
                teacher_calc,
                settings,
                system=system,
                seed=[settings.seed, k],
                on_steps=lambda n: progress.advance(task, n),
                trajectories=None if trajectories is None else trajectories[k],
            )
            if heldout is not None and system in heldout["per_system"]:
                entry["on_policy"]["heldout_force_rmse_ev_per_a"] = heldout["per_system"][
                    system
                ].get("force_rmse_ev_per_a")
            stem = file_stem(k, system)
            entry["plots"] = {
                "energy": f"md/{stem}-energy.png",
                "distributions": f"md/{stem}-distributions.png",
            }
            title = f"{system} ({entry['formula']})"
            plot_energy(
                report / entry["plots"]["energy"], title, runs.nve_student, runs.nve_teacher
            )
            assert runs.student_distributions is not None
            assert runs.teacher_distributions is not None
            plot_distributions(
                report / entry["plots"]["distributions"],
                title,
                runs.student_distributions,
                runs.teacher_distributions,
                entry["structure"],
                runs.student_whole_distributions,
            )
            entries.append(entry)
            if not console.is_terminal:
                console.print(
                    f"validate-md: {k + 1}/{len(systems)} {system}: "
                    + ("passed" if entry["passed"] else "failed"),
                    markup=False,
                    highlight=False,
                )
    result: dict[str, Any] = {
        "passed": bool(entries) and all(e["passed"] for e in entries),
        "teacher": dataset.teacher_name,
        "teacher_version": dataset.teacher_version,
        "settings": settings.model_dump(mode="json"),
        "thresholds": thresholds(settings),
        "systems": entries,
        "summary": summarise(entries, heldout),
        "environment": {
            "mlff_distiller": mlff_distiller.__version__,
            "torch": torch.__version__,
            "ase": ase.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "device": str(device),
            "teacher_device": config.teacher.device,
            "threads": torch.get_num_threads(),
            "processes": workers,
        },
        "seconds": time.perf_counter() - began,
    }
    write_json(report / "md.json", result)
    _remove_stale_plots(report, entries)
    return result


def _remove_stale_plots(report: Path, entries: list[dict[str, Any]]) -> None:
    """Delete plots of an earlier validation (other systems) that ``md.json`` no longer names."""
    current = {report / name for e in entries for name in e["plots"].values()}
    for path in (report / "md").glob("*.png"):
        if path not in current:
            path.unlink(missing_ok=True)


def verdict_table(result: dict[str, Any]) -> Table:
    """Per system: NVE drift, NVT stability and on-policy error, student beside teacher.

    The reasons of failed systems are :func:`failure_lines`.
    """
    table = Table(
        title=(
            f"MD validation: student vs teacher ({result['teacher']}), "
            f"{result['summary']['n_passed']}/{result['summary']['n_systems']} systems passed"
        )
    )
    for column in (
        "system",
        "atoms",
        "NVE drift (meV/atom/ps)\nstudent / teacher",
        "NVT stable\nstudent / teacher",
        "on-policy force\nRMSE (eV/Å)",
        "verdict",
    ):
        table.add_column(column, justify="left" if column in ("system", "verdict") else "right")

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:+.2f}"

    for entry in result["systems"]:
        nve, runs = entry["nve"], entry["nvt"]
        stable = [
            f"{r['temperature_K']:g} K: {'yes' if r['student']['stable'] else 'NO'}/"
            f"{'yes' if r['teacher']['stable'] else 'NO'}"
            for r in runs
        ]
        rmse = entry["on_policy"]["force_rmse_ev_per_a"]
        table.add_row(
            Text(entry["system"]),  # a SMILES such as c1cn[nH]c1 is no rich markup
            str(entry["n_atoms"]),
            f"{fmt(nve['student']['drift_mev_per_atom_per_ps'])} / "
            f"{fmt(nve['teacher']['drift_mev_per_atom_per_ps'])}",
            "\n".join(stable),
            "n/a" if rmse is None else f"{rmse:.3f}",
            "passed" if entry["passed"] else "FAILED",
        )
    return table


def failure_lines(result: dict[str, Any]) -> list[str]:
    """One line per failed system of ``md.json``: its name and reasons."""
    return [
        f"{entry['system']} failed: " + "; ".join(entry["reasons"])
        for entry in result["systems"]
        if not entry["passed"]
    ]
