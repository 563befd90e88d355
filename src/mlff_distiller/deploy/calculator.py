"""ASE calculator for a trained student: a drop-in replacement for the teacher in ASE MD.

Every call goes through :class:`~mlff_distiller.deploy.engine.StudentEngine`: the neighbour
list is searched on the host (where ASE keeps the positions) with a Verlet skin, and on a
GPU the student runs as a replayed CUDA graph, with one host-to-device copy of the positions
and one device-to-host copy of the results per step.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ase
import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlff_distiller import keys
from mlff_distiller.deploy.artefact import check_elements, load_student
from mlff_distiller.deploy.engine import DEFAULT_SKIN, StudentEngine
from mlff_distiller.graph import batch_graphs, from_atoms
from mlff_distiller.models import PaiNN, predict

DEFAULT_BATCH_ATOMS = 20_000
"""Atoms per batched evaluation in :meth:`StudentCalculator.calculate_batch`."""


class StudentCalculator(Calculator):
    """Energy, forces and (for fully periodic cells) stress from a student.

    ASE's base class discards the results whenever positions, cell, numbers or pbc change,
    so every call after a change recomputes; nothing is cached across structures (the
    neighbour list is reused only while it is provably complete, see
    :mod:`mlff_distiller.deploy.neighbours`).

    Parameters
    ----------
    model
        The student.
    metadata
        Its metadata from :func:`mlff_distiller.deploy.artefact.load_student`.
    device
        Torch device the student runs on.
    skin
        Verlet skin of the neighbour list in Å (0 rebuilds it at every step; ``None``
        picks it from the device and the system size, see
        :func:`~mlff_distiller.deploy.engine.auto_skin`).
    compile
        Compile with ``torch.compile`` (tens of seconds at the first call): on CUDA the
        student before CUDA-graph capture, on the CPU energy and forces as one function
        (see :class:`~mlff_distiller.deploy.engine.StudentEngine`).
    cuda_graph
        Replay CUDA graphs (default: on CUDA devices). False gives the eager path, for
        comparison or debugging.
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(
        self,
        model: PaiNN,
        metadata: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
        skin: float | None = DEFAULT_SKIN,
        compile: bool = False,
        cuda_graph: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.device = torch.device(device)
        self.metadata = metadata or {}
        self.engine = StudentEngine(
            model, self.device, skin=skin, compile=compile, cuda_graph=cuda_graph
        )
        self.model = self.engine.model
        self.dtype = self.engine.dtype
        self.cutoff = self.engine.cutoff
        self.elements = set(self.metadata.get("elements", []))
        self._numbers: np.ndarray | None = None
        self._numbers_tensor = torch.zeros(0, dtype=torch.long)

    def check_state(self, atoms: ase.Atoms, tol: float = 1e-15) -> list[str]:
        """What changed since the last calculation: positions, numbers, cell or pbc.

        ASE's default compares six arrays with ``np.allclose``, which costs more than a
        captured student step; exact comparisons of what the student depends on give the
        same answer (a change below ``tol`` is also recomputed, which is harmless).
        """
        last = self.atoms
        if last is None or len(last) != len(atoms):
            return list(all_changes)
        changes = []
        if not np.array_equal(last.positions, atoms.positions):
            changes.append("positions")
        if not np.array_equal(last.numbers, atoms.numbers):
            changes.append("numbers")
        if not np.array_equal(last.cell[:], atoms.cell[:]):
            changes.append("cell")
        if not np.array_equal(last.pbc, atoms.pbc):
            changes.append("pbc")
        return changes

    def calculate(
        self,
        atoms: ase.Atoms | None = None,
        properties: tuple[str, ...] = ("energy",),
        system_changes: tuple[str, ...] = all_changes,
    ) -> None:
        """Compute ``energy``, ``free_energy``, ``forces`` and, if periodic, ``stress``."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        numbers = self._checked_numbers(atoms)
        periodic = bool(np.all(atoms.pbc))
        cell = atoms.cell[:] if atoms.pbc.any() else np.zeros((3, 3))
        n = len(atoms)
        out = self.engine.compute(
            torch.from_numpy(atoms.positions),
            numbers,
            torch.from_numpy(np.asarray(cell, dtype=np.float64)).unsqueeze(0),
            torch.from_numpy(np.asarray(atoms.pbc, dtype=bool)).unsqueeze(0),
            torch.tensor([0, n]),
            stress=periodic,
            to_host=True,
        )
        energy = float(out[keys.ENERGY][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out[keys.FORCES].numpy(),
        }
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out[keys.STRESS][0].numpy())

    def calculate_batch(
        self, images: Sequence[ase.Atoms], max_atoms: int = DEFAULT_BATCH_ATOMS
    ) -> list[dict[str, Any]]:
        """Evaluate many structures in batched calls (no MD state, no neighbour-list reuse).

        Parameters
        ----------
        images
            The structures; molecules and periodic cells may be mixed.
        max_atoms
            Upper bound on the atoms of one batched model call (memory).

        Returns
        -------
        list[dict[str, Any]]
            One dictionary per structure, in order: ``energy`` (float, eV), ``forces``
            (N, 3) eV/Å and, for fully periodic structures, ``stress`` (6,) Voigt eV/Å³.
        """
        for atoms in images:
            self._checked_numbers(atoms)
        results: list[dict[str, Any]] = []
        for chunk in _chunks(images, max_atoms):
            graph = batch_graphs([from_atoms(a, self.cutoff, self.dtype) for a in chunk])
            periodic = [bool(np.all(a.pbc)) for a in chunk]
            out = predict(
                self.model, graph.to(self.device), stress=any(periodic), check_cells=False
            )
            energies = out[keys.ENERGY].double().cpu().numpy()
            forces = out[keys.FORCES].double().cpu().numpy()
            stresses = out[keys.STRESS].double().cpu().numpy() if any(periodic) else None
            ptr = graph.ptr.tolist()
            for b in range(len(chunk)):
                result = {"energy": float(energies[b]), "forces": forces[ptr[b] : ptr[b + 1]]}
                if stresses is not None and periodic[b]:
                    result["stress"] = full_3x3_to_voigt_6_stress(stresses[b])
                results.append(result)
        return results

    def _checked_numbers(self, atoms: ase.Atoms) -> torch.Tensor:
        """Atomic numbers as a tensor, refused if the student never saw one of the elements."""
        if self._numbers is not None and np.array_equal(atoms.numbers, self._numbers):
            return self._numbers_tensor
        check_elements(atoms.numbers.tolist(), self.elements, atoms.get_chemical_formula())
        self._numbers = atoms.numbers.copy()
        self._numbers_tensor = torch.from_numpy(self._numbers.astype(np.int64))
        return self._numbers_tensor


def _chunks(images: Sequence[ase.Atoms], max_atoms: int) -> list[list[ase.Atoms]]:
    """Consecutive groups of structures with at most ``max_atoms`` atoms (at least one each)."""
    chunks: list[list[ase.Atoms]] = [[]]
    total = 0
    for atoms in images:
        if chunks[-1] and total + len(atoms) > max_atoms:
            chunks.append([])
            total = 0
        chunks[-1].append(atoms)
        total += len(atoms)
    return [c for c in chunks if c]


def load_calculator(
    path: str | Path,
    device: torch.device | str = "cpu",
    skin: float | None = DEFAULT_SKIN,
    compile: bool = False,
) -> StudentCalculator:
    """ASE calculator of the student in a run directory (or a ``student.pt`` file).

    Parameters
    ----------
    path
        Run directory or ``student.pt`` file.
    device
        ``"cpu"`` or a CUDA device; on CUDA the student runs as a replayed CUDA graph.
    skin
        Verlet skin of the neighbour list in Å (``None``: by device and system size).
    compile
        Compile with ``torch.compile``: tens of seconds at the first call, then faster
        steps (CPU: fused C++ loops; CUDA: fewer kernels in the captured graph). Off by
        default because of that first call.

    Examples
    --------
    >>> from mlff_distiller import load_calculator
    >>> atoms.calc = load_calculator("runs/quickstart", device="cuda")  # doctest: +SKIP
    """
    model, metadata = load_student(path, device=device)
    return StudentCalculator(model, metadata, device=device, skin=skin, compile=compile)
