"""Teachers that label many structures in one model call.

A :class:`BatchedTeacher` is an :class:`~mlff_distiller.teachers.ase.ASECalculatorTeacher`
(its ASE calculator still drives ASE MD and labels one structure at a time when asked) whose
:meth:`~BatchedTeacher.label` cuts the structures into consecutive batches of at most
``batch_atoms`` atoms and labels each batch in one call of the model. The labels are those of
the one-by-one path to float32 tolerance (tested per teacher): a structure's energy does not
depend on the structures that share its batch.

The contract of :meth:`Teacher.label <mlff_distiller.teachers.base.Teacher.label>` holds as
for one-by-one labelling: elements are checked before any work, every label is checked for
NaN and infinity naming its structure, and when the model fails on a batch, its structures
are labelled one at a time to name the one that fails alone; if none does, the error is the
batch's (most often the device's memory) and says to lower ``teacher.batch_atoms``.

Tensor-level helpers (:func:`stack_structures`, :func:`split_labels`) serve teachers whose
model takes flat batched tensors (SevenNet-0), the same layout as a TorchSim state.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NoReturn

import ase
import numpy as np
from ase.calculators.calculator import Calculator

from mlff_distiller.teachers.ase import ASECalculatorTeacher
from mlff_distiller.teachers.base import (
    DEFAULT_BATCH_ATOMS,
    LabellingError,
    Labels,
    check_elements,
    check_finite,
)

if TYPE_CHECKING:
    import torch


class BatchedTeacher(ASECalculatorTeacher, abc.ABC):
    """A teacher that labels structures in batches of at most ``batch_atoms`` atoms.

    Parameters
    ----------
    calc
        The teacher's ASE calculator (one structure at a time; ASE MD).
    name, version, elements, cutoff
        As for :class:`~mlff_distiller.teachers.ase.ASECalculatorTeacher`.
    batch_atoms
        Most atoms per model call; a structure with more atoms is labelled alone. ``None``
        labels one structure at a time through ``calc``.

    Attributes
    ----------
    batch_atoms : int or None
        The batch budget (settable).
    """

    def __init__(
        self,
        calc: Calculator,
        name: str,
        version: str,
        elements: Iterable[int],
        cutoff: float | None = None,
        batch_atoms: int | None = DEFAULT_BATCH_ATOMS,
    ) -> None:
        super().__init__(calc, name, version, elements, cutoff)
        if batch_atoms is not None and batch_atoms < 1:
            raise ValueError(f"batch_atoms must be at least 1 or None, not {batch_atoms}")
        self.batch_atoms = batch_atoms

    def label(self, structures: Sequence[ase.Atoms]) -> list[Labels]:
        """Energy in eV, forces in eV/Å and (fully periodic only) 3x3 stress in eV/Å³.

        Parameters
        ----------
        structures
            Structures to label; not modified. Consecutive structures share a batch.

        Returns
        -------
        list[Labels]
            One entry per structure, in order.

        Raises
        ------
        UnsupportedElementError
            Before any work, if a structure holds an element outside :attr:`elements`.
        LabellingError
            If the model fails on a structure or returns a non-finite value for it, or
            fails on a batch whose structures it labels one at a time.
        """
        from mlff_distiller.data.batching import plan_batches

        structures = list(structures)
        check_elements(self, structures)
        if self.batch_atoms is None:
            return super().label(structures)
        n_atoms = np.array([len(atoms) for atoms in structures], dtype=np.int64)
        batches = plan_batches(
            np.arange(len(structures)),
            n_atoms,
            np.zeros_like(n_atoms),
            max_structures=max(len(structures), 1),
            max_atoms=self.batch_atoms,
        )
        labels: list[Labels] = []
        for batch in batches:
            indices = batch.tolist()
            members = [structures[k] for k in indices]
            try:
                predicted = self._predict_batch(members)
            except Exception as exc:
                self._explain_failed_batch(structures, indices, exc)
            assert len(predicted) == len(members), (len(predicted), len(members))
            for k, atoms, result in zip(indices, members, predicted, strict=True):
                assert result.forces.shape == (len(atoms), 3), result.forces.shape
                check_finite(result, atoms, k, self.name)
            labels.extend(predicted)
        return labels

    def _explain_failed_batch(
        self, structures: list[ase.Atoms], indices: list[int], error: Exception
    ) -> NoReturn:
        """Raise the error of a failed batch, naming its culprit if one structure is one.

        The batch's structures are labelled one at a time: one that fails alone is named
        (:class:`LabellingError` of the one-by-one path). If none fails alone, the batch
        itself is the problem (most often the device's memory) and the error says so.
        """
        for k in indices:
            self._label_one(structures[k], k)
        first, last = indices[0], indices[-1]
        raise LabellingError(
            f"teacher {self.name!r} failed on the batch of structures {first} to {last} "
            f"({sum(len(structures[k]) for k in indices)} atoms), which it labels one at a "
            f"time: {type(error).__name__}: {error}. If the device ran out of memory, lower "
            f"teacher.batch_atoms (now {self.batch_atoms}); teacher.batch_atoms=null labels "
            "one structure at a time"
        ) from error

    @abc.abstractmethod
    def _predict_batch(self, structures: list[ase.Atoms]) -> list[Labels]:
        """Labels of ``structures`` from one call of the model, in order.

        Stress only for structures periodic along all three cell vectors (``None``
        otherwise). May raise anything: :meth:`label` then looks for the culprit.
        """


def stack_structures(
    structures: Sequence[ase.Atoms], device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flat batched tensors of ``B`` structures (``N`` atoms in all), on ``device``.

    Returns
    -------
    tuple of torch.Tensor
        ``positions`` (N, 3) float64 Å; ``numbers`` (N,) int64; ``cell`` (B, 3, 3) float64 Å,
        cell vectors as rows; ``pbc`` (B, 3) bool; ``ptr`` (B + 1,) int64, the atoms of
        structure ``b`` being ``ptr[b]:ptr[b + 1]``.
    """
    import torch

    counts = [len(atoms) for atoms in structures]
    positions = np.concatenate([atoms.positions for atoms in structures]).astype(np.float64)
    numbers = np.concatenate([atoms.numbers for atoms in structures]).astype(np.int64)
    cell = np.stack([atoms.cell.array for atoms in structures]).astype(np.float64)
    pbc = np.stack([atoms.pbc for atoms in structures]).astype(bool)
    ptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return tuple(  # type: ignore[return-value]
        torch.from_numpy(array).to(device) for array in (positions, numbers, cell, pbc, ptr)
    )


def split_labels(
    structures: Sequence[ase.Atoms],
    energy: torch.Tensor,
    forces: torch.Tensor,
    stress: torch.Tensor | None,
) -> list[Labels]:
    """Per-structure :class:`Labels` from batched model outputs (one copy to the host).

    Parameters
    ----------
    structures
        The ``B`` structures of the batch (``N`` atoms in all), in batch order.
    energy
        (B,) eV.
    forces
        (N, 3) eV/Å.
    stress
        (B, 3, 3) eV/Å³ with ASE's sign, or ``None``; kept only for structures periodic along
        all three cell vectors.

    Returns
    -------
    list[Labels]
        Float64 labels, one per structure.
    """
    energies = energy.detach().double().cpu().numpy()
    all_forces = forces.detach().double().cpu().numpy()
    stresses = None if stress is None else stress.detach().double().cpu().numpy()
    labels = []
    start = 0
    for b, atoms in enumerate(structures):
        stop = start + len(atoms)
        periodic = stresses is not None and bool(atoms.pbc.all())
        labels.append(
            Labels(
                energy=float(energies[b]),
                forces=all_forces[start:stop].copy(),
                stress=stresses[b].copy() if periodic else None,
            )
        )
        start = stop
    return labels
