"""Building blocks of the student: radial basis, smooth cutoff, per-element reference energies.

The radial basis and the cutoff together decide how smooth the potential energy surface is
where a neighbour enters or leaves the cutoff sphere; the reference energies carry the large,
composition-only part of the total energy so that the network learns only what is left.
"""

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

N_ELEMENTS = 119
"""Length of per-element tables: index ``Z`` for ``Z`` in 0..118 (0 is unused)."""


class BesselBasis(nn.Module):
    r"""Radial Bessel basis of DimeNet and PaiNN.

    .. math:: e_n(r) = \sqrt{2 / r_c}\, \sin(n \pi r / r_c) / r, \quad n = 1 \dots n_{rbf}

    Parameters
    ----------
    n_rbf
        Number of radial functions.
    cutoff
        Cutoff radius :math:`r_c` in Å.

    Notes
    -----
    Input ``r`` has shape (E,) in Å and must be strictly positive; the output has shape
    (E, n_rbf) in Å⁻¹. Every function vanishes at ``r = cutoff`` but its slope does not:
    multiply by :class:`CosineCutoff` for a smooth potential.
    """

    def __init__(self, n_rbf: int, cutoff: float) -> None:
        super().__init__()
        self.n_rbf = int(n_rbf)
        self.cutoff = float(cutoff)
        self.prefactor = math.sqrt(2.0 / self.cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """Evaluate the basis: ``r`` (E,) in Å -> (E, n_rbf) in Å⁻¹."""
        # Frequencies are made in the dtype of r, not kept as a buffer: a buffer created in
        # float32 and cast to float64 would carry float32 rounding into a float64 model.
        n = torch.arange(1, self.n_rbf + 1, dtype=r.dtype, device=r.device)
        r = r.unsqueeze(-1)
        return self.prefactor * torch.sin(n * (math.pi / self.cutoff) * r) / r


class CosineCutoff(nn.Module):
    r"""Cosine cutoff envelope, :math:`\tfrac12(\cos(\pi r / r_c) + 1)` inside and 0 outside.

    Continuous with zero first derivative at :math:`r_c`, so energies and forces both go to
    zero smoothly when a neighbour leaves the cutoff sphere.

    Parameters
    ----------
    cutoff
        Cutoff radius :math:`r_c` in Å.

    Notes
    -----
    Input ``r`` (E,) in Å; output (E,), dimensionless, exactly zero for ``r >= cutoff``.
    """

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        """Evaluate the envelope: ``r`` (E,) in Å -> (E,)."""
        inside = 0.5 * (torch.cos(r * (math.pi / self.cutoff)) + 1.0)
        # torch.where (not a multiply by a mask) so the gradient outside is exactly zero too.
        return torch.where(r < self.cutoff, inside, torch.zeros_like(r))


def fit_reference_energies(
    numbers_list: Sequence[np.ndarray | Sequence[int]], energies: np.ndarray | Sequence[float]
) -> torch.Tensor:
    """Per-element reference energies by least squares on the composition counts.

    Solves ``counts @ e_ref ≈ energies`` where ``counts[b, Z]`` is the number of atoms of
    element ``Z`` in structure ``b``. When compositions are collinear (e.g. every structure is
    a multiple of H2O) the system is rank deficient and the minimum-norm solution is returned;
    it reproduces the composition-only part of the energies just as well.

    Parameters
    ----------
    numbers_list
        Atomic numbers of each of the ``B`` structures, each an integer array (N_b,).
    energies
        Total energy of each structure, shape (B,), in eV.

    Returns
    -------
    torch.Tensor
        Reference energy per element, shape (119,), float64, in eV; 0 for elements absent
        from every structure.
    """
    energies = np.asarray(energies, dtype=np.float64).reshape(-1)
    if len(numbers_list) != energies.shape[0]:
        raise ValueError(
            f"got {len(numbers_list)} structures but {energies.shape[0]} energies: "
            "pass one energy per structure"
        )
    counts = np.zeros((len(numbers_list), N_ELEMENTS), dtype=np.float64)
    for row, numbers in enumerate(numbers_list):
        np.add.at(counts[row], np.asarray(numbers, dtype=np.int64), 1.0)
    present = np.flatnonzero(counts.sum(axis=0))
    reference = np.zeros(N_ELEMENTS, dtype=np.float64)
    if present.size:
        solution, *_ = np.linalg.lstsq(counts[:, present], energies, rcond=None)
        reference[present] = solution
    return torch.from_numpy(reference)
