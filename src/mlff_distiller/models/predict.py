"""Energies, forces and stress from any per-atom energy model: the one audited place.

Forces are ``-dE/dpositions``. Stress uses the strain trick: a zero displacement tensor
``eps`` (B, 3, 3), symmetrised, deforms positions and cell as ``x -> x (1 + eps)`` (row
vectors), and ``stress = (1/V) dE/d eps`` at ``eps = 0``. That is ASE's convention: a
compressed cell has negative stress and ``pressure = -trace(stress) / 3``.
"""

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
    if not (forces or stress):
        atomic = _per_atom_energies(model, graph)
        return {ENERGY: _sum_per_structure(atomic, graph.batch, n_structures)}

    if stress:
        volume = torch.linalg.det(graph.cell).abs()
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
        inputs = [positions] if forces else []
        if stress:
            displacement = torch.zeros(
                (n_structures, 3, 3),
                dtype=positions.dtype,
                device=positions.device,
                requires_grad=True,
            )
            inputs.append(displacement)
            strain = 0.5 * (displacement + displacement.transpose(1, 2))
            strained = positions + torch.bmm(
                positions.unsqueeze(1), strain.index_select(0, graph.batch)
            ).squeeze(1)
            cell = graph.cell + torch.bmm(graph.cell, strain)
            graph = graph._replace(positions=strained, cell=cell)
        else:
            graph = graph._replace(positions=positions)

        energy = _sum_per_structure(_per_atom_energies(model, graph), graph.batch, n_structures)
        grads = torch.autograd.grad(
            [energy.sum()],
            inputs,
            create_graph=create_graph,
            retain_graph=create_graph,
            materialize_grads=True,
        )

    out = {ENERGY: energy if create_graph else energy.detach()}
    if forces:
        out[FORCES] = -grads[0]
    if stress:
        out[STRESS] = grads[-1] / volume.view(-1, 1, 1)
    return out


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


def _sum_per_structure(atomic: torch.Tensor, batch: torch.Tensor, n: int) -> torch.Tensor:
    """Sum per-atom values (N,) into per-structure totals (n,)."""
    return atomic.new_zeros(n).index_add(0, batch, atomic)
