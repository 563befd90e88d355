"""Energies, forces and stress from any per-atom energy model: the one audited place.

Forces are ``-dE/dpositions``. Stress uses the strain trick: a zero displacement tensor
``eps`` (B, 3, 3), symmetrised, deforms positions and cell as ``x -> x (1 + eps)`` (row
vectors), and ``stress = (1/V) dE/d eps`` at ``eps = 0``. That is ASE's convention: a
compressed cell has negative stress and ``pressure = -trace(stress) / 3``.
"""

import math
from collections.abc import Callable

import torch

from mlff_distiller.graph import AtomicGraph
from mlff_distiller.keys import ENERGY, FORCES, STRESS

_MIN_VOLUME = 1e-9
"""Cell volumes (Å³) at or below this are treated as zero: no stress can be defined."""


def predict(
    model: Callable[[AtomicGraph], torch.Tensor],
    graph: AtomicGraph,
    forces: bool = True,
    stress: bool = False,
    create_graph: bool = False,
    check_cells: bool = True,
) -> dict[str, torch.Tensor]:
    """Total energies and, by autograd, forces and stress of every structure in ``graph``.

    Parameters
    ----------
    model
        Maps a graph to per-atom energies (N,) in eV, e.g. :class:`~.painn.PaiNN` or its
        TorchScript version.
    graph
        One or several structures (``N`` atoms, ``B`` structures).
    forces
        Whether to return forces.
    stress
        Whether to return stress; every structure must have a cell of nonzero volume.
    create_graph
        Keep the autograd graph of forces and stress, so that a loss on them can be
        backpropagated into the parameters (training). When False and derivatives are taken,
        every returned tensor is detached.
    check_cells
        With ``stress``, refuse cells of zero volume with a clear error. The check reads the
        volumes on the host, which synchronises with the device; static-shape engines (CUDA
        graph capture) pass False and get NaN stress for zero-volume cells instead.

    Returns
    -------
    dict[str, torch.Tensor]
        ``energy`` (B,) in eV; ``forces`` (N, 3) in eV/Å when asked; ``stress`` (B, 3, 3) in
        eV/Å³ (ASE sign) when asked.

    Raises
    ------
    ValueError
        If stress is asked for a structure whose cell has zero volume (a molecule).
    """
    n_structures = graph.n_structures
    cell = graph.cell
    if not (forces or stress):
        atomic = _per_atom_energies(model, graph)
        return {ENERGY: sum_per_structure(atomic, graph.batch, n_structures)}

    if stress and check_cells:
        volume = cell_volume(cell)
        flat_cells = torch.nonzero(volume <= _MIN_VOLUME).flatten().tolist()
        if flat_cells:
            raise ValueError(
                f"stress was requested but structure(s) {flat_cells} of the batch have a cell of "
                "zero volume (non-periodic?): ask for stress=False for molecules, or give "
                "them a periodic cell"
            )

    with torch.enable_grad():
        positions = graph.positions
        if not positions.requires_grad:
            # A caller's positions that already require grad are kept, so that higher
            # derivatives (e.g. Hessian-vector products) reach them.
            positions = positions.detach().requires_grad_(True)
        displacement: torch.Tensor | None = None
        if stress:
            displacement = zero_displacement(n_structures, positions)
            strained_positions, strained_cell = strain(positions, cell, graph.batch, displacement)
            graph = graph._replace(positions=strained_positions, cell=strained_cell)
        else:
            graph = graph._replace(positions=positions)
        energy = sum_per_structure(_per_atom_energies(model, graph), graph.batch, n_structures)
        force, stress_tensor = derivatives(
            energy, positions, displacement, cell, forces, create_graph
        )

    out = {ENERGY: energy if create_graph else energy.detach()}
    if force is not None:
        out[FORCES] = force
    if stress_tensor is not None:
        out[STRESS] = stress_tensor
    return out


def functional_predict(
    model: Callable[[AtomicGraph], torch.Tensor], graph: AtomicGraph, stress: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Per-atom energies, forces and stress as :func:`predict` derives them, by ``torch.func``.

    The same derivation (forces ``-dE/dpositions``; stress ``dE/d displacement`` of
    :func:`strain` over the volume) with :func:`torch.func.grad` instead of the autograd
    engine, so that ``torch.compile`` traces energy and derivatives as one graph, which
    inductor fuses into a few kernels. The results stay differentiable with respect to the
    model's parameters by *first-order* autograd: a training loss on the forces is
    backpropagated without ``create_graph``, a backward that ``torch.compile`` can compile
    (it cannot compile a double backward).

    Parameters
    ----------
    model
        Maps a graph to per-atom energies (N,) in eV with plain PyTorch operations, which
        ``torch.func`` can transform.
    graph
        One or several structures (``N`` atoms, ``B`` structures).
    stress
        Whether to derive stress (NaN for cells of zero volume).

    Returns
    -------
    tuple
        Per-atom energies (N,) in eV, forces (N, 3) in eV/Å and stress (B, 3, 3) in eV/Å³
        (ASE sign) or None; attached to the parameters' autograd graph when they require
        grad.
    """

    def total_energy(
        positions: torch.Tensor, displacement: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if stress:
            positions, cell = strain(positions, graph.cell, graph.batch, displacement)
            atomic = model(graph._replace(positions=positions, cell=cell))
        else:
            atomic = model(graph._replace(positions=positions))
        return atomic.sum(), atomic

    displacement = graph.positions.new_zeros((graph.n_structures, 3, 3))
    argnums = (0, 1) if stress else (0,)
    gradients, atomic = torch.func.grad(total_energy, argnums=argnums, has_aux=True)(
        graph.positions.detach(), displacement
    )
    stress_tensor = strain_gradient_to_stress(gradients[1], graph.cell) if stress else None
    return atomic, -gradients[0], stress_tensor


# The functions below are the whole of the strain trick and of the autograd step. They are
# TorchScript-compatible so that the exported student (mlff_distiller.deploy.export) runs
# this very code instead of a copy: no global constants in their bodies (TorchScript cannot
# read them; defaults are fine), no `torch.enable_grad()` (callers set the grad mode), and
# `torch.autograd.grad` without `materialize_grads` (TorchScript lacks it; unused inputs get
# zeros here instead).


def zero_displacement(n_structures: int, positions: torch.Tensor) -> torch.Tensor:
    """The strain-trick leaf: zeros (B, 3, 3) in the dtype and on the device of ``positions``.

    It requires grad; ``stress = (1/V) dE/d displacement`` at this zero displacement.
    """
    return torch.zeros(
        (n_structures, 3, 3), dtype=positions.dtype, device=positions.device
    ).requires_grad_(True)


def strain(
    positions: torch.Tensor, cell: torch.Tensor, batch: torch.Tensor, displacement: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Deform positions and cells by the symmetrised displacement: ``x -> x (1 + eps)``.

    Parameters
    ----------
    positions
        (N, 3) in Å.
    cell
        (B, 3, 3) in Å, vectors as rows.
    batch
        (N,) structure of every atom.
    displacement
        (B, 3, 3), dimensionless; its symmetric part ``eps`` is the strain of each structure.

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        Strained positions (N, 3) and cells (B, 3, 3) in Å; equal to the inputs in value at
        zero displacement, but differentiable with respect to it.
    """
    eps = 0.5 * (displacement + displacement.transpose(1, 2))
    strained = positions + torch.bmm(positions.unsqueeze(1), eps.index_select(0, batch)).squeeze(1)
    return strained, cell + torch.bmm(cell, eps)


def derivatives(
    energy: torch.Tensor,
    positions: torch.Tensor,
    displacement: torch.Tensor | None,
    cell: torch.Tensor,
    forces: bool,
    create_graph: bool,
    min_volume: float = _MIN_VOLUME,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Forces and stress from the total energies by one call of :func:`torch.autograd.grad`.

    Parameters
    ----------
    energy
        Total energies (B,) in eV, computed from ``positions`` (and, for stress, strained by
        ``displacement`` with :func:`strain`) with grad enabled.
    positions
        The unstrained positions (N, 3) in Å: the autograd leaf of the forces.
    displacement
        The leaf of :func:`zero_displacement` for stress, or None for no stress.
    cell
        The unstrained cells (B, 3, 3) in Å, for the volumes.
    forces
        Whether to compute forces.
    create_graph
        Keep the autograd graph of the results (for a loss on them); otherwise the results
        are detached and the graph is freed.
    min_volume
        Cells of this volume (Å³) or less get NaN stress.

    Returns
    -------
    tuple
        Forces (N, 3) in eV/Å, or None when not asked; stress (B, 3, 3) in eV/Å³ (ASE
        sign), or None without ``displacement``. An input the energy does not depend on
        gets zero derivatives, not an error.
    """
    inputs = [positions] if forces else []
    if displacement is not None:
        inputs.append(displacement)
    grads = torch.autograd.grad(
        [energy.sum()],
        inputs,
        retain_graph=create_graph,
        create_graph=create_graph,
        allow_unused=True,
    )
    force: torch.Tensor | None = None
    if forces:
        force = -_zeros_if_none(grads[0], positions)
    stress: torch.Tensor | None = None
    if displacement is not None:
        stress = strain_gradient_to_stress(
            _zeros_if_none(grads[-1], displacement), cell.detach(), min_volume
        )
    return force, stress


def strain_gradient_to_stress(
    gradient: torch.Tensor, cell: torch.Tensor, min_volume: float = _MIN_VOLUME
) -> torch.Tensor:
    """Stress (B, 3, 3) in eV/Å³ (ASE sign) from ``dE/d displacement`` (B, 3, 3) in eV.

    Divides by the volumes of ``cell`` (B, 3, 3), Å; cells of ``min_volume`` Å³ or less get
    NaN stress.
    """
    volume = cell_volume(cell).view(-1, 1, 1)
    nan = torch.full_like(volume, math.nan)
    return gradient / torch.where(volume > min_volume, volume, nan)


def cell_volume(cell: torch.Tensor) -> torch.Tensor:
    """Volumes (B,) in Å³ of cells (B, 3, 3) with vectors as rows.

    The triple product, not ``torch.linalg.det``: a few elementwise kernels with no solver
    workspace, so it can be captured in a CUDA graph.
    """
    return torch.sum(cell[:, 0] * torch.linalg.cross(cell[:, 1], cell[:, 2], dim=-1), -1).abs()


def _per_atom_energies(
    model: Callable[[AtomicGraph], torch.Tensor], graph: AtomicGraph
) -> torch.Tensor:
    """Call the model; a TorchScript model runs without graph-executor optimisation."""
    if isinstance(model, torch.jit.ScriptModule):
        # The profiling executor specialises on the requires_grad flags seen in earlier calls
        # and can then silently drop the gradient with respect to positions (seen with torch
        # 2.13: a call without forces, then one with, gives wrong forces). The unoptimised
        # interpreter is always correct and, without fusers, hardly slower.
        with torch.jit.optimized_execution(False):
            return model(graph)
    return model(graph)


def sum_per_structure(atomic: torch.Tensor, batch: torch.Tensor, n: int) -> torch.Tensor:
    """Sum per-atom values (N,) into per-structure totals (n,)."""
    return atomic.new_zeros(n).index_add(0, batch, atomic)


def _zeros_if_none(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The gradient, or zeros shaped like its input when the output does not depend on it."""
    if grad is None:
        return torch.zeros_like(like)
    return grad
