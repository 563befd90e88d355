"""The distillation loss: student predictions against the teacher's labels."""

from __future__ import annotations

import torch

from mlff_distiller import keys


def distillation_loss(
    pred: dict[str, torch.Tensor],
    targets: dict[str, torch.Tensor],
    energy_weight: float,
    force_weight: float,
    stress_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted sum of mean squared errors.

    Terms: energy per atom (eV/atom)², force components (eV/Å)², and stress components
    (eV/Å³)² over the structures that have a stress label.

    Parameters
    ----------
    pred
        ``energy`` (B,), ``forces`` (N, 3) and, when ``stress_weight > 0``, ``stress``
        (B, 3, 3) from :func:`mlff_distiller.models.predict.predict`.
    targets
        Teacher labels from :meth:`mlff_distiller.data.batching.GraphSet.batch`.

    Returns
    -------
    tuple
        The scalar loss (differentiable) and each unweighted term as a float.
    """
    n_atoms = targets["n_atoms"].to(pred[keys.ENERGY].dtype)
    e_err = (pred[keys.ENERGY] - targets[keys.ENERGY]) / n_atoms
    energy = torch.mean(e_err**2)
    forces = torch.mean((pred[keys.FORCES] - targets[keys.FORCES]) ** 2)
    loss = energy_weight * energy + force_weight * forces
    parts = {"energy": float(energy.detach()), "forces": float(forces.detach())}
    mask = targets["has_stress"]
    if stress_weight > 0 and bool(mask.any()):
        stress = torch.mean((pred[keys.STRESS][mask] - targets[keys.STRESS][mask]) ** 2)
        loss = loss + stress_weight * stress
        parts["stress"] = float(stress.detach())
    return loss, parts
