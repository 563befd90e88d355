"""The one batched graph type passed everywhere, and building it from :class:`ase.Atoms`.

An :class:`AtomicGraph` holds one or several structures as a disjoint union: atoms of all
structures are concatenated, ``batch`` says which structure each atom belongs to and ``ptr``
where each structure starts. Edges come from a vesin neighbour list computed once per
structure; periodic images are encoded as integer cell shifts so that the edge vectors are
recomputed from ``positions`` and ``cell`` inside the model, which is what lets forces and
stress be derived by autograd (the strain trick in :mod:`mlff_distiller.models.predict`).

Fields (``N`` atoms, ``E`` directed edges, ``B`` structures):

==============  ===========  =======  ====================================================
field           shape        unit     meaning
==============  ===========  =======  ====================================================
``positions``   (N, 3)       Å        Cartesian positions
``numbers``     (N,)                  atomic numbers (int64)
``cell``        (B, 3, 3)    Å        cell vectors as rows; zeros for a non-periodic system
``pbc``         (B, 3)                periodicity along each cell vector (bool)
``edge_index``  (2, E)                ``[i, j]``: atom ``i`` sees neighbour ``j``; both
                                      directions are present (full list)
``cell_shifts`` (E, 3)                integer image of ``j`` (stored in the float dtype)
``batch``       (N,)                  index of the structure of each atom (int64)
``ptr``         (B + 1,)              atoms of structure ``b`` are ``ptr[b]:ptr[b+1]``
==============  ===========  =======  ====================================================

The edge vector is ``r_ij = positions[j] - positions[i] + cell_shifts @ cell[batch[i]]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import ase
import numpy as np
import torch
import vesin


class AtomicGraph(NamedTuple):
    """One or several structures with their neighbour lists (see the module docstring)."""

    positions: torch.Tensor
    numbers: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    edge_index: torch.Tensor
    cell_shifts: torch.Tensor
    batch: torch.Tensor
    ptr: torch.Tensor

    @property
    def n_structures(self) -> int:
        """Number of structures ``B`` in the graph."""
        return int(self.ptr.shape[0]) - 1

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> AtomicGraph:
        """Move to ``device``; cast the floating-point fields to ``dtype`` when given."""
        fields = []
        for name, value in zip(self._fields, self, strict=True):
            is_float = name in ("positions", "cell", "cell_shifts")
            fields.append(value.to(device=device, dtype=dtype if is_float else None))
        return AtomicGraph(*fields)


def edge_vectors(graph: AtomicGraph) -> torch.Tensor:
    """Vectors from atom ``i`` to neighbour ``j`` for every edge, shape (E, 3), in Å."""
    i, j = graph.edge_index[0], graph.edge_index[1]
    cell_of_edge = graph.cell[graph.batch[i]]  # (E, 3, 3)
    shift = torch.bmm(graph.cell_shifts.unsqueeze(1), cell_of_edge).squeeze(1)
    return graph.positions[j] - graph.positions[i] + shift


def structure_cell(cell: np.ndarray, pbc: np.ndarray, name: str) -> np.ndarray:
    """The cell a graph stores for a structure: zeros for a molecule.

    Parameters
    ----------
    cell
        (3, 3) cell vectors as rows, Å.
    pbc
        (3,) periodicity along each cell vector.
    name
        How error messages name the structure (e.g. its formula).

    Returns
    -------
    numpy.ndarray
        (3, 3) float64 in Å: ``cell``, or zeros when no direction is periodic (a molecule's
        cell carries no physics; a zero cell keeps the graph free of it).

    Raises
    ------
    ValueError
        If a periodic structure has a cell of zero volume.
    """
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    pbc = np.asarray(pbc, dtype=bool)
    if pbc.any() and abs(np.linalg.det(cell)) < 1e-9:
        raise ValueError(
            f"structure {name} is periodic (pbc={pbc.tolist()}) but "
            "its cell has zero volume: set a cell or make it non-periodic"
        )
    return cell if pbc.any() else np.zeros((3, 3))


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray]:
    """Full neighbour list of one structure (vesin): every pair closer than ``cutoff``.

    Parameters
    ----------
    positions
        (N, 3) float64 positions, Å.
    cell
        (3, 3) cell from :func:`structure_cell`, Å.
    pbc
        (3,) periodicity.
    cutoff
        Cutoff radius, Å.

    Returns
    -------
    tuple[numpy.ndarray, numpy.ndarray]
        ``edge_index`` (2, E) int64, ``[i, j]`` with both directions present, and integer
        ``cell_shifts`` (E, 3) of ``j``, in vesin's order (the order every graph uses).
    """
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = nl.compute(
        points=np.ascontiguousarray(positions, dtype=np.float64),
        box=cell,
        periodic=np.asarray(pbc, dtype=bool),
        quantities="ijS",
    )
    edge_index = np.stack([i, j]).astype(np.int64).reshape(2, -1)
    return edge_index, np.asarray(shifts, dtype=np.int64).reshape(-1, 3)


def from_atoms(atoms: ase.Atoms, cutoff: float, dtype: torch.dtype = torch.float32) -> AtomicGraph:
    """Build the graph of one structure with a vesin neighbour list.

    Parameters
    ----------
    atoms
        The structure; ``atoms.pbc`` decides which directions are periodic.
    cutoff
        Neighbour cutoff radius in Å.
    dtype
        Floating-point dtype of positions, cell and shifts.

    Returns
    -------
    AtomicGraph
        A graph holding one structure (``B = 1``).
    """
    positions = np.ascontiguousarray(atoms.get_positions(), dtype=np.float64)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    cell = structure_cell(atoms.cell[:], pbc, atoms.get_chemical_formula())
    edge_index, shifts = neighbour_list(positions, cell, pbc, cutoff)
    n = len(atoms)
    return AtomicGraph(
        positions=torch.tensor(positions, dtype=dtype),
        numbers=torch.tensor(atoms.numbers, dtype=torch.long),
        cell=torch.tensor(cell, dtype=dtype).unsqueeze(0),
        pbc=torch.tensor(pbc).unsqueeze(0),
        edge_index=torch.tensor(edge_index, dtype=torch.long),
        cell_shifts=torch.tensor(shifts, dtype=dtype),
        batch=torch.zeros(n, dtype=torch.long),
        ptr=torch.tensor([0, n], dtype=torch.long),
    )


def batch_graphs(graphs: Sequence[AtomicGraph]) -> AtomicGraph:
    """Concatenate graphs into one disjoint-union graph (atom indices offset per structure)."""
    if len(graphs) == 1:
        return graphs[0]
    n_atoms = torch.tensor([g.positions.shape[0] for g in graphs])
    n_structs = torch.tensor([g.n_structures for g in graphs])
    atom_offsets = torch.cumsum(n_atoms, 0) - n_atoms
    struct_offsets = torch.cumsum(n_structs, 0) - n_structs
    edge_index = torch.cat(
        [g.edge_index + off for g, off in zip(graphs, atom_offsets.tolist(), strict=True)], 1
    )
    batch = torch.cat(
        [g.batch + off for g, off in zip(graphs, struct_offsets.tolist(), strict=True)]
    )
    ptr = torch.cat(
        [graphs[0].ptr[:1]]
        + [g.ptr[1:] + off for g, off in zip(graphs, atom_offsets.tolist(), strict=True)]
    )
    return AtomicGraph(
        positions=torch.cat([g.positions for g in graphs]),
        numbers=torch.cat([g.numbers for g in graphs]),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
        edge_index=edge_index,
        cell_shifts=torch.cat([g.cell_shifts for g in graphs]),
        batch=batch,
        ptr=ptr,
    )


def padding_length(cutoff: float) -> float:
    """Length (Å) of the padding edges of :func:`pad_graph` for a model of ``cutoff`` Å.

    Beyond the cutoff with a margin, so that a padding edge is never within it.
    """
    return 2.0 * float(cutoff) + 1.0


def pad_graph(
    graph: AtomicGraph,
    n_atoms: int,
    n_edges: int,
    padding_length: float,
    n_structures: int | None = None,
) -> AtomicGraph:
    """Copy ``graph`` into a larger graph of fixed capacity whose padding changes nothing.

    Static shapes let a forward/backward pass be captured once in a CUDA graph (or compiled)
    and replayed for every later graph that fits the same capacities. This is the one
    padding layout of the package (the MD engine and the training step both use it):

    - structure slots ``B .. S-1`` beyond the real structures (``S = n_structures``) are
      empty structures: no atoms, no edges, a zero cell, not periodic;
    - one more structure (index ``S``) owns every padding atom and edge;
    - padding atoms have atomic number 0 and sit at the origin;
    - padding edges join the last padding atom to itself through cell shift ``(1, 0, 0)`` of
      the padding structure's cubic cell of side ``padding_length``, so their length is
      ``padding_length``: beyond the model's cutoff (:func:`padding_length`) they carry
      exactly zero message and zero gradient (and no 0/0 at zero length);
    - the energies, forces and stress of the padding structure and of the empty slots are
      discarded (or weighted zero) by the caller.

    Parameters
    ----------
    graph
        The real structures (``N`` atoms, ``E`` edges, ``B`` structures).
    n_atoms
        Atom capacity; at least ``N + 1`` (one padding atom anchors the padding edges).
    n_edges
        Edge capacity; at least ``E``.
    padding_length
        Length in Å of every padding edge; must exceed the model's cutoff.
    n_structures
        Structure slots ``S``, at least ``B`` (None: ``B``, no empty slots).

    Returns
    -------
    AtomicGraph
        ``n_atoms`` atoms, ``n_edges`` edges and ``S + 1`` structures, on ``graph``'s device.
    """
    S = graph.n_structures if n_structures is None else int(n_structures)
    padded = AtomicGraph(
        positions=graph.positions.new_zeros((n_atoms, 3)),
        numbers=graph.numbers.new_zeros(n_atoms),
        cell=graph.cell.new_zeros((S + 1, 3, 3)),
        pbc=graph.pbc.new_zeros((S + 1, 3)),
        edge_index=graph.edge_index.new_zeros((2, n_edges)),
        cell_shifts=graph.cell_shifts.new_zeros((n_edges, 3)),
        batch=graph.batch.new_zeros(n_atoms),
        ptr=graph.ptr.new_zeros(S + 2),
    )
    copy_into_padded(padded, graph, padding_length)
    return padded


def copy_into_padded(padded: AtomicGraph, graph: AtomicGraph, padding_length: float) -> None:
    """Overwrite the padded graph of :func:`pad_graph` in place with ``graph``.

    Every field is written (real part, empty slots and padding), so ``padded`` may hold
    another graph before, with any number of structures up to its slots. Only in-place
    copies and fills, with sizes known on the host: the tensors keep their storage, which is
    what a captured CUDA graph reads, and nothing waits for the device.

    Raises
    ------
    ValueError
        If ``graph`` does not fit the capacities of ``padded``.
    """
    N, E, B = graph.positions.shape[0], graph.edge_index.shape[1], graph.n_structures
    n_atoms, n_edges = padded.positions.shape[0], padded.edge_index.shape[1]
    S = padded.n_structures - 1
    if n_atoms <= N or n_edges < E or S < B:
        raise ValueError(
            f"a graph of {N} atoms, {E} edges and {B} structures does not fit capacities of "
            f"{n_atoms - 1} atoms, {n_edges} edges and {S} structures"
        )
    padded.positions[:N].copy_(graph.positions)
    padded.positions[N:].zero_()
    padded.numbers[:N].copy_(graph.numbers)
    padded.numbers[N:].zero_()
    padded.cell[:B].copy_(graph.cell)
    padded.cell[B:].zero_()
    padded.cell[S].diagonal().fill_(padding_length)
    padded.pbc[:B].copy_(graph.pbc)
    padded.pbc[B:].fill_(False)
    padded.edge_index[:, :E].copy_(graph.edge_index)
    padded.edge_index[:, E:].fill_(n_atoms - 1)
    padded.cell_shifts[:E].copy_(graph.cell_shifts)
    padded.cell_shifts[E:].zero_()
    padded.cell_shifts[E:, 0].fill_(1.0)
    padded.batch[:N].copy_(graph.batch)
    padded.batch[N:].fill_(S)
    padded.ptr[: B + 1].copy_(graph.ptr)
    padded.ptr[B + 1 : S + 1].fill_(N)
    padded.ptr[S + 1].fill_(n_atoms)
