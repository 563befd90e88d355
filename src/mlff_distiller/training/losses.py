"""The distillation loss: student predictions against the teacher's labels.

Three terms: energy per atom, force components and, for periodic structures with a stress
label, stress components. Each is a weighted sum over the batch whose weights
(:mod:`mlff_distiller.data.batching`) make it a mean, and each is divided by its *scale*
(:class:`LossScales`): the mean square, over the training set, of what a student made of the
fitted per-element reference energies alone would get wrong (the residual energy per atom,
every force component, every stress component). A normalised term is therefore about 1 at
the start of training and 0 for a perfect student, whatever the units, the chemistry or the
size of the targets, and the weights say how much a *fraction of unexplained variance* of
each target counts. Without the normalisation the energy term of small organic molecules is
some 100 times smaller than the force term and energies are hardly trained.

Squared errors or, with ``huber_delta``, a Huber penalty on the normalised residual ``r``:
``r²`` for ``|r| < delta`` and ``2 delta |r| - delta²`` beyond (so it equals the squared
error for small residuals and grows linearly for outliers).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from mlff_distiller import keys
from mlff_distiller.data.dataset import PackedDataset
from mlff_distiller.models.components import fit_reference_energies

ENERGY_SCALE_FLOOR = 1e-6
"""Smallest energy scale, (eV/atom)²: 1 meV/atom, for data whose energies are all alike."""
FORCE_SCALE_FLOOR = 1e-4
"""Smallest force scale, (eV/Å)²: 0.01 eV/Å."""
STRESS_SCALE_FLOOR = 1e-8
"""Smallest stress scale, (eV/Å³)²: 1e-4 eV/Å³ (16 MPa)."""


@dataclass(frozen=True)
class LossScales:
    """Mean squares of the targets that the loss terms are divided by.

    Attributes
    ----------
    energy
        Mean square of the teacher's energy per atom minus the fitted reference energies,
        (eV/atom)².
    forces
        Mean square of the teacher's force components, (eV/Å)².
    stress
        Mean square of the teacher's stress components over labelled structures, (eV/Å³)²;
        1 when there are none.
    """

    energy: float = 1.0
    forces: float = 1.0
    stress: float = 1.0

    @classmethod
    def from_dataset(cls, dataset: PackedDataset) -> LossScales:
        """The scales of a training set (floored at ``*_SCALE_FLOOR``)."""
        a = dataset.arrays
        ptr = a["ptr"]
        numbers = [a["numbers"][ptr[k] : ptr[k + 1]] for k in range(len(dataset))]
        refs = fit_reference_energies(numbers, a[keys.TEACHER_ENERGY]).numpy()
        n_atoms = np.diff(ptr)
        reference = np.array([refs[z].sum() for z in numbers])
        residual = (a[keys.TEACHER_ENERGY] - reference) / n_atoms
        has_stress = a["has_stress"].astype(bool)
        stress = 1.0
        if has_stress.any():
            stress = max(
                float(np.mean(a[keys.TEACHER_STRESS][has_stress] ** 2)), STRESS_SCALE_FLOOR
            )
        return cls(
            energy=max(float(np.mean(residual**2)), ENERGY_SCALE_FLOOR),
            forces=max(float(np.mean(a[keys.TEACHER_FORCES] ** 2)), FORCE_SCALE_FLOOR),
            stress=stress,
        )


@dataclass(frozen=True)
class DistillationLoss:
    """Weighted, normalised sum of the energy, force and stress terms.

    Attributes
    ----------
    energy_weight, force_weight, stress_weight
        Weights of the normalised terms.
    scales
        What each term is divided by; ``LossScales()`` (all 1) gives raw squared errors in
        (eV/atom)², (eV/Å)² and (eV/Å³)².
    huber_delta
        Huber threshold on the normalised residuals; None for squared errors.
    """

    energy_weight: float
    force_weight: float
    stress_weight: float = 0.0
    scales: LossScales = field(default_factory=LossScales)
    huber_delta: float | None = None

    def __call__(
        self, pred: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], batch: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of one batch (or one process's share of it).

        Parameters
        ----------
        pred
            ``energy`` (B',), ``forces`` (N, 3) and optionally ``stress`` (B', 3, 3) from
            :func:`mlff_distiller.models.predict.predict`; ``B'`` may exceed the ``S``
            structure slots of the targets by a padding structure, which is ignored. Stress
            must be finite for every slot (cells of zero volume replaced, see
            :func:`mlff_distiller.training.step.cells_for_stress`), or its NaN would reach
            the gradients.
        targets
            Labels and weights of :meth:`mlff_distiller.data.batching.GraphSet.gather`.
        batch
            (N,) structure of every atom (``graph.batch``).

        Returns
        -------
        tuple
            The scalar loss (differentiable) and each normalised, unweighted term as a
            detached 0-d tensor (reading them does not synchronise).
        """
        S = targets[keys.ENERGY].shape[0]
        n_atoms = targets["n_atoms"].clamp(min=1).to(targets[keys.ENERGY].dtype)
        e_err = (pred[keys.ENERGY][:S] - targets[keys.ENERGY]) / n_atoms
        energy = torch.sum(targets["energy_weight"] * self._penalty(e_err, self.scales.energy))
        extra = pred[keys.ENERGY].shape[0] - S  # the padding structure, if any
        atom_weight = torch.nn.functional.pad(targets["force_weight"], (0, extra))[batch]
        f_pen = self._penalty(pred[keys.FORCES] - targets[keys.FORCES], self.scales.forces)
        forces = torch.sum(atom_weight * f_pen.sum(dim=1))
        loss = self.energy_weight * energy + self.force_weight * forces
        terms = {"energy": energy.detach(), "forces": forces.detach()}
        if keys.STRESS in pred:
            s_err = pred[keys.STRESS][:S] - targets[keys.STRESS]
            s_pen = self._penalty(s_err, self.scales.stress).sum(dim=(1, 2))
            stress = torch.sum(targets["stress_weight"] * s_pen)
            loss = loss + self.stress_weight * stress
            terms["stress"] = stress.detach()
        return loss, terms

    def _penalty(self, error: torch.Tensor, scale: float) -> torch.Tensor:
        r = error * (1.0 / float(np.sqrt(scale)))
        if self.huber_delta is None:
            return r * r
        delta = self.huber_delta
        return torch.where(r.abs() < delta, r * r, 2 * delta * r.abs() - delta * delta)

    def of_mean_squares(self, energy: float, forces: float, stress: float | None = None) -> float:
        """The squared-error loss from mean squared errors (eV/atom)², (eV/Å)², (eV/Å³)².

        Validation uses it, with squared errors even when training uses Huber.
        """
        value = (
            self.energy_weight * energy / self.scales.energy
            + self.force_weight * forces / self.scales.forces
        )
        if stress is not None:
            value += self.stress_weight * stress / self.scales.stress
        return value
