"""The training set resident on the device, and batches gathered from it by index.

:class:`GraphSet` holds every structure of a split as flat tensors on the training device
(``n`` structures, ``A`` atoms, ``E`` edges): positions, numbers, labels and the neighbour
lists stored in the packed dataset, each structure a contiguous segment marked by offsets.
When the set would take more than :data:`RESIDENT_FRACTION` of the free GPU memory it stays
in pinned host memory instead: batches are then gathered on the host and copied to the GPU
asynchronously; as a training step never waits for the GPU, the gather of the next batch
overlaps the current step.

A batch is planned on the host, from per-structure atom and edge counts kept there
(:func:`plan_batches`, :func:`plan_steps`), and gathered on the device by index
(:meth:`GraphSet.gather`): a dozen index kernels whatever the batch size, no per-structure
Python and no host synchronisation (the output sizes come from the host's counts). Batches
are filled up to a structure count and optional atom and edge budgets, so that structures of
mixed sizes give steps of equal cost. A batch can be padded to fixed capacities
(:class:`Capacity`) in the layout of :func:`mlff_distiller.graph.pad_graph`: then every step
has the same shapes (what a CUDA-graph captured step needs), and padding atoms, edges and
empty structure slots contribute exactly zero.

Targets of a batch (``S`` structure slots, ``N`` atoms):

=================  ==========  ========  ==================================================
key                shape       unit      meaning
=================  ==========  ========  ==================================================
``energy``         (S,)        eV        teacher energy
``forces``         (N, 3)      eV/Å      teacher forces (zeros on padding atoms)
``stress``         (S, 3, 3)   eV/Å³     teacher stress (zeros where ``has_stress`` is False)
``has_stress``     (S,)                  whether the structure has a stress label
``n_atoms``        (S,)                  atoms of each structure (0 for an empty slot)
``energy_weight``  (S,)                  weight of the structure's energy term
``force_weight``   (S,)                  weight of each force component of its atoms
``stress_weight``  (S,)                  weight of each stress component
=================  ==========  ========  ==================================================

The weights make a loss a plain weighted sum (:mod:`mlff_distiller.training.losses`): for one
process they give the means over the batch; split over processes they give each process its
share of the global mean, so that the sum over processes is the one-process loss.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mlff_distiller import keys
from mlff_distiller.data.dataset import PackedDataset
from mlff_distiller.graph import AtomicGraph, structure_cell

RESIDENT_FRACTION = 0.25
"""Largest share of the free GPU memory the whole training set may take on the device."""

Targets = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Capacity:
    """Fixed sizes of a padded batch (the layout of :func:`mlff_distiller.graph.pad_graph`).

    Attributes
    ----------
    structures
        Structure slots; unused slots hold an empty structure.
    atoms
        Atom slots, at least one more than the atoms of any batch (the padding anchor).
    edges
        Edge slots.
    """

    structures: int
    atoms: int
    edges: int


@dataclass(frozen=True)
class StepPlan:
    """One process's share of one optimisation step.

    Attributes
    ----------
    index
        (S,) structures of the share. A process whose share of the global batch is empty
        gets one structure with zero weights, so that every process runs the same step.
    weights
        (3, S) weights of the energy, force-component and stress-component terms of each
        structure (see the module docstring).
    n_atoms, n_edges
        Atoms and edges of the share.
    """

    index: np.ndarray
    weights: np.ndarray
    n_atoms: int
    n_edges: int


def plan_batches(
    order: Sequence[int] | np.ndarray,
    n_atoms: np.ndarray,
    n_edges: np.ndarray,
    max_structures: int,
    max_atoms: int | None = None,
    max_edges: int | None = None,
) -> list[np.ndarray]:
    """Cut ``order`` into consecutive batches that respect a structure count and budgets.

    A batch takes the next structure of ``order`` unless that would exceed
    ``max_structures`` structures, ``max_atoms`` atoms or ``max_edges`` edges; a single
    structure larger than a budget forms a batch of its own. Without budgets every batch but
    the last has exactly ``max_structures`` structures.

    Parameters
    ----------
    order
        Structure indices in the order they are to be used (e.g. a random permutation).
    n_atoms, n_edges
        (n,) atoms and edges of every structure.
    max_structures
        Most structures per batch.
    max_atoms, max_edges
        Atom and edge budgets per batch (None: no budget).

    Returns
    -------
    list[numpy.ndarray]
        The batches, each an int64 array of structure indices.
    """
    order = np.asarray(order, dtype=np.int64)
    if max_atoms is None and max_edges is None:
        return [order[k : k + max_structures] for k in range(0, len(order), max_structures)]
    atom_budget = math.inf if max_atoms is None else max_atoms
    edge_budget = math.inf if max_edges is None else max_edges
    batches, start, atoms, edges = [], 0, 0, 0
    for position, k in enumerate(order.tolist()):
        a, e = int(n_atoms[k]), int(n_edges[k])
        full = position - start == max_structures
        if position > start and (full or atoms + a > atom_budget or edges + e > edge_budget):
            batches.append(order[start:position])
            start, atoms, edges = position, 0, 0
        atoms += a
        edges += e
    if start < len(order):
        batches.append(order[start:])
    return batches


def split_batch(batch: np.ndarray, n_edges: np.ndarray, n_parts: int) -> list[np.ndarray]:
    """Share a batch among ``n_parts`` processes with about equal numbers of edges.

    Each structure, in order, goes to the process with the fewest edges so far, so no share
    exceeds ``total / n_parts`` plus the largest structure. Shares keep the batch's order.
    """
    if n_parts == 1:
        return [batch]
    loads = np.zeros(n_parts, dtype=np.int64)
    owner = np.empty(len(batch), dtype=np.int64)
    for position, k in enumerate(batch.tolist()):
        part = int(np.argmin(loads))
        owner[position] = part
        loads[part] += int(n_edges[k])
    return [batch[owner == part] for part in range(n_parts)]


def plan_steps(
    batches: Sequence[np.ndarray],
    n_atoms: np.ndarray,
    n_edges: np.ndarray,
    has_stress: np.ndarray,
    rank: int = 0,
    world_size: int = 1,
) -> list[StepPlan]:
    """The share of process ``rank`` of every batch, with its loss weights.

    The weights divide by the totals of the whole batch (structures, force components,
    stress components), so that the shares of all processes add up to the batch means.
    """
    plans = []
    for batch in batches:
        share = split_batch(batch, n_edges, world_size)[rank]
        real = 1.0
        if len(share) == 0:  # fewer structures than processes: a weightless stand-in
            share, real = batch[:1], 0.0
        n_stress = int(has_stress[batch].sum())
        weights = np.stack(
            [
                np.full(len(share), real / len(batch)),
                np.full(len(share), real / (3 * int(n_atoms[batch].sum()))),
                real * has_stress[share] / max(9 * n_stress, 1),
            ]
        )
        plans.append(StepPlan(share, weights, int(n_atoms[share].sum()), int(n_edges[share].sum())))
    return plans


def capacity(
    n_atoms: np.ndarray,
    n_edges: np.ndarray,
    max_structures: int,
    max_atoms: int | None = None,
    max_edges: int | None = None,
    world_size: int = 1,
) -> Capacity:
    """Capacities that hold one process's share of any batch of :func:`plan_batches`.

    A batch has at most the ``max_structures`` largest structures and at most the budgets,
    but never less than the largest single structure; a process's share of it
    (:func:`split_batch`) has at most ``1 / world_size`` of its edges plus the largest
    structure's. One atom slot more anchors the padding edges.
    """
    k = min(max_structures, len(n_atoms))
    atoms = int(np.sort(n_atoms)[::-1][:k].sum())
    edges = int(np.sort(n_edges)[::-1][:k].sum())
    if max_atoms is not None:
        atoms = max(min(atoms, max_atoms), int(n_atoms.max()))
    if max_edges is not None:
        edges = max(min(edges, max_edges), int(n_edges.max()))
    if world_size > 1:
        edges = min(edges, -(-edges // world_size) + int(n_edges.max()))
    return Capacity(structures=max_structures, atoms=atoms + 1, edges=max(edges, 1))


def _fits_on_device(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_FRACTION * free


class GraphSet:
    """Every structure of a split, with neighbour lists and labels, as flat tensors.

    Build it with :meth:`from_dataset`. Index ``n`` (:attr:`empty`) is an extra structure
    with no atoms and no edges that fills the unused slots of padded batches.

    Attributes
    ----------
    device : torch.device
        Where batches are delivered.
    storage : torch.device
        Where the arrays live: ``device``, or the host (pinned) when they do not fit.
    n_atoms, n_edges : numpy.ndarray
        (n,) atoms and edges of every structure (on the host, for planning batches).
    has_stress : numpy.ndarray
        (n,) whether each structure has a stress label.
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor],
        n_atoms: np.ndarray,
        n_edges: np.ndarray,
        has_stress: np.ndarray,
        device: torch.device,
    ) -> None:
        self._t = tensors
        self.n_atoms = n_atoms
        self.n_edges = n_edges
        self.has_stress = has_stress
        self.device = device
        self.storage = tensors["positions"].device
        self.empty = len(n_atoms)

    @classmethod
    def from_dataset(
        cls,
        dataset: PackedDataset,
        cutoff: float,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        resident: bool | None = None,
    ) -> GraphSet:
        """Put ``dataset`` with neighbour lists of ``cutoff`` (Å) on ``device``.

        The stored neighbour lists are used when they have this cutoff; otherwise they are
        built here (the edges are those of :func:`mlff_distiller.graph.from_atoms`).

        Parameters
        ----------
        dataset
            The structures and labels (a split of the packed dataset).
        cutoff
            Neighbour cutoff, Å.
        dtype
            Floating-point dtype of positions, cells, shifts and labels.
        device
            Where batches are delivered.
        resident
            Keep the arrays on ``device``; None: when they take at most
            :data:`RESIDENT_FRACTION` of the free memory of a GPU (always on a CPU).
        """
        device = torch.device(device)
        dataset = dataset.with_neighbours(cutoff)
        a = dataset.arrays
        n = len(dataset)
        cells = np.stack(
            [structure_cell(a["cell"][k], a["pbc"][k], str(k)) for k in range(n)]
            + [np.zeros((3, 3))]
        )

        def segment_ptr(ptr: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.append(ptr, ptr[-1]).astype(np.int64))

        def floats(x: np.ndarray) -> torch.Tensor:
            return torch.tensor(x, dtype=dtype)

        def per_structure(x: np.ndarray) -> np.ndarray:
            # One more entry for the empty structure.
            return np.concatenate([x, np.zeros((1, *x.shape[1:]), dtype=x.dtype)])

        tensors = {
            "positions": floats(a["positions"]).reshape(-1, 3),
            "numbers": torch.tensor(a["numbers"], dtype=torch.long),
            "atom_ptr": segment_ptr(a["ptr"]),
            "cell": floats(cells),
            "pbc": torch.tensor(per_structure(a["pbc"].astype(bool))),
            "edges": torch.tensor(a["edges"].T, dtype=torch.long).reshape(2, -1),
            "cell_shifts": floats(a["cell_shifts"]).reshape(-1, 3),
            "edge_ptr": segment_ptr(a["edge_ptr"]),
            "energy": floats(per_structure(a[keys.TEACHER_ENERGY])),
            "forces": floats(a[keys.TEACHER_FORCES]).reshape(-1, 3),
            "stress": floats(per_structure(a[keys.TEACHER_STRESS])),
            "has_stress": torch.tensor(per_structure(a["has_stress"].astype(bool))),
        }
        nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
        if resident is None:
            resident = _fits_on_device(nbytes, device)
        if resident:
            tensors = {name: t.to(device) for name, t in tensors.items()}
        elif device.type == "cuda":
            tensors = {name: t.pin_memory() for name, t in tensors.items()}
        return cls(
            tensors,
            np.diff(a["ptr"]).astype(np.int64),
            np.diff(a["edge_ptr"]).astype(np.int64),
            a["has_stress"].astype(bool),
            device,
        )

    def __len__(self) -> int:
        return len(self.n_atoms)

    def gather(
        self,
        index: Sequence[int] | np.ndarray,
        weights: np.ndarray | None = None,
        capacity: Capacity | None = None,
        padding_length: float | None = None,
    ) -> tuple[AtomicGraph, Targets]:
        """The batch of structures ``index``, gathered where the arrays live.

        Parameters
        ----------
        index
            (S,) structure indices, in batch order.
        weights
            (3, S) energy, force and stress weights (:class:`StepPlan`); None: the plain
            means over this batch.
        capacity
            Pad to these capacities (``S`` at most ``capacity.structures``); None: no
            padding, the graph equals :func:`mlff_distiller.graph.batch_graphs` of the
            structures' own graphs.
        padding_length
            Length (Å) of padding edges, beyond the model's cutoff; needed with ``capacity``.

        Returns
        -------
        tuple
            The :class:`AtomicGraph` and its targets (module docstring), on :attr:`device`.
            A padded graph has ``capacity.structures + 1`` structures, the last one owning
            the padding atoms and edges, as in :func:`~mlff_distiller.graph.pad_graph`.
        """
        index = np.ascontiguousarray(index, dtype=np.int64)
        if weights is None:
            weights = _mean_weights(index, self.n_atoms, self.has_stress)
        n_atoms = int(self.n_atoms[index].sum())
        n_edges = int(self.n_edges[index].sum())
        if capacity is not None:
            if padding_length is None:
                raise ValueError("a padded batch needs the padding_length")
            if (
                len(index) > capacity.structures
                or n_atoms >= capacity.atoms
                or n_edges > capacity.edges
            ):
                raise ValueError(
                    f"a batch of {len(index)} structures, {n_atoms} atoms and {n_edges} "
                    f"edges does not fit {capacity}"
                )
            slots = capacity.structures - len(index)
            index = np.concatenate([index, np.full(slots, self.empty, dtype=np.int64)])
            weights = np.concatenate([weights, np.zeros((3, slots))], axis=1)
            n_atoms, n_edges = capacity.atoms, capacity.edges
        graph, targets = self._gather(
            torch.as_tensor(index).to(self.storage, non_blocking=True),
            n_atoms,
            n_edges,
            padding_length if capacity is not None else None,
        )
        if self.storage != self.device:
            graph = _to(graph, self.device)
            targets = {
                k: (v.pin_memory() if self.device.type == "cuda" else v).to(
                    self.device, non_blocking=True
                )
                for k, v in targets.items()
            }
        w = torch.as_tensor(weights, dtype=targets[keys.ENERGY].dtype, device=self.device)
        for name, row in zip(("energy_weight", "force_weight", "stress_weight"), w, strict=True):
            targets[name] = row
        return graph, targets

    def _gather(
        self, index: torch.Tensor, n_atoms: int, n_edges: int, padding_length: float | None
    ) -> tuple[AtomicGraph, Targets]:
        """Device-side gather: fixed output sizes, index arithmetic only, no host sync."""
        t = self._t
        S = index.shape[0]
        zero = index.new_zeros(1)
        a0 = t["atom_ptr"][index]
        na = t["atom_ptr"][index + 1] - a0
        e0 = t["edge_ptr"][index]
        ne = t["edge_ptr"][index + 1] - e0
        na_all, ne_all = na, ne
        if padding_length is not None:
            # One more structure owns every padding atom and edge.
            na_all = torch.cat([na, (n_atoms - na.sum()).view(1)])
            ne_all = torch.cat([ne, (n_edges - ne.sum()).view(1)])
            a0, e0 = torch.cat([a0, zero]), torch.cat([e0, zero])
        slots = torch.arange(na_all.shape[0], device=index.device)
        batch = torch.repeat_interleave(slots, na_all, output_size=n_atoms)
        ptr = torch.cat([zero, torch.cumsum(na_all, 0)])
        atom = torch.arange(n_atoms, device=index.device) - ptr[batch] + a0[batch]
        edge_owner = torch.repeat_interleave(slots, ne_all, output_size=n_edges)
        edge_ptr = torch.cat([zero, torch.cumsum(ne_all, 0)])
        edge = torch.arange(n_edges, device=index.device) - edge_ptr[edge_owner] + e0[edge_owner]
        if padding_length is not None:
            real_atom, real_edge = batch < S, edge_owner < S
            atom = torch.where(real_atom, atom, 0)
            edge = torch.where(real_edge, edge, 0)
        positions, numbers, forces = t["positions"][atom], t["numbers"][atom], t["forces"][atom]
        edge_index = t["edges"][:, edge] + ptr[edge_owner]
        cell_shifts = t["cell_shifts"][edge]
        cell, pbc = t["cell"][index], t["pbc"][index]
        if padding_length is not None:
            # The padding of graph.pad_graph: atoms at the origin with number 0, edges from
            # the last atom to itself one padding cell away, beyond the cutoff.
            positions = torch.where(real_atom.unsqueeze(1), positions, 0.0)
            forces = torch.where(real_atom.unsqueeze(1), forces, 0.0)
            numbers = torch.where(real_atom, numbers, 0)
            edge_index = torch.where(real_edge, edge_index, n_atoms - 1)
            pad_shift = cell_shifts.new_tensor([1.0, 0.0, 0.0])
            cell_shifts = torch.where(real_edge.unsqueeze(1), cell_shifts, pad_shift)
            pad_cell = torch.eye(3, dtype=cell.dtype, device=cell.device) * padding_length
            cell = torch.cat([cell, pad_cell.unsqueeze(0)])
            pbc = torch.cat([pbc, pbc.new_zeros((1, 3))])
        graph = AtomicGraph(
            positions=positions,
            numbers=numbers,
            cell=cell,
            pbc=pbc,
            edge_index=edge_index,
            cell_shifts=cell_shifts,
            batch=batch,
            ptr=ptr,
        )
        targets = {
            keys.ENERGY: t["energy"][index],
            keys.FORCES: forces,
            keys.STRESS: t["stress"][index],
            "has_stress": t["has_stress"][index],
            "n_atoms": na,
        }
        return graph, targets

    def batch(self, indices: Sequence[int]) -> tuple[AtomicGraph, Targets]:
        """One unpadded batch of the structures ``indices`` (weights: its plain means)."""
        return self.gather(indices)

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[AtomicGraph, Targets]]:
        """Mini-batches of ``batch_size`` structures covering every structure once.

        The last one may be smaller. With ``shuffle``, the order is
        ``torch.randperm(len(self), generator=generator)``.
        """
        order = (
            torch.randperm(len(self), generator=generator).numpy()
            if shuffle
            else np.arange(len(self))
        )
        for batch in plan_batches(order, self.n_atoms, self.n_edges, batch_size):
            yield self.gather(batch)


def _to(graph: AtomicGraph, device: torch.device) -> AtomicGraph:
    """Copy a graph gathered on the host to ``device``; asynchronous from pinned memory."""
    if device.type == "cuda":
        graph = AtomicGraph(*(field.pin_memory() for field in graph))
    return AtomicGraph(*(field.to(device, non_blocking=True) for field in graph))


def _mean_weights(index: np.ndarray, n_atoms: np.ndarray, has_stress: np.ndarray) -> np.ndarray:
    """(3, S) weights that make the weighted sums the plain means over one batch."""
    n_stress = int(has_stress[index].sum())
    return np.stack(
        [
            np.full(len(index), 1.0 / len(index)),
            np.full(len(index), 1.0 / (3 * max(int(n_atoms[index].sum()), 1))),
            has_stress[index] / max(9 * n_stress, 1),
        ]
    )
