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
(:class:`Capacity`, :func:`pad_batch`) in the one layout of
:func:`mlff_distiller.graph.pad_graph`: then every step has the same shapes (what a
CUDA-graph captured step needs), and padding atoms, edges and empty structure slots
contribute exactly zero (their targets and weights are zero).

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
from mlff_distiller.graph import AtomicGraph, copy_into_padded, pad_graph, structure_cell

RESIDENT_FRACTION = 0.25
"""Largest share of the free GPU memory the whole training set may take on the device."""

Targets = dict[str, torch.Tensor]


ATOM_TARGETS = (keys.FORCES,)
"""Targets with one row per atom; every other target has one row per structure slot."""


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

    @classmethod
    def of(cls, graph: AtomicGraph) -> Capacity:
        """The smallest capacity that holds ``graph`` (an unpadded batch)."""
        return cls(graph.n_structures, graph.positions.shape[0] + 1, graph.edge_index.shape[1])

    def holds(self, other: Capacity) -> bool:
        """Whether a batch that needs ``other`` fits this capacity."""
        return (
            other.structures <= self.structures
            and other.atoms <= self.atoms
            and other.edges <= self.edges
        )

    def union(self, other: Capacity) -> Capacity:
        """The smallest capacity that holds both."""
        return Capacity(
            max(self.structures, other.structures),
            max(self.atoms, other.atoms),
            max(self.edges, other.edges),
        )


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


def pad_batch(
    graph: AtomicGraph, targets: Targets, capacity: Capacity, padding_length: float
) -> tuple[AtomicGraph, Targets]:
    """A batch padded to ``capacity`` in the layout of :func:`mlff_distiller.graph.pad_graph`.

    Parameters
    ----------
    graph, targets
        An unpadded batch of :meth:`GraphSet.gather` (``B`` structures, ``N`` atoms).
    capacity
        The capacities; ``B`` at most ``capacity.structures``.
    padding_length
        Length (Å) of padding edges, beyond the model's cutoff
        (:func:`mlff_distiller.graph.padding_length`).

    Returns
    -------
    tuple
        The padded graph (``capacity.structures + 1`` structures, the last one owning the
        padding atoms and edges) and its targets: ``capacity.structures`` rows per
        structure and ``capacity.atoms`` per atom, zero (weights included) beyond the real
        ones, so that the loss is that of the unpadded batch.

    Raises
    ------
    ValueError
        If the batch does not fit ``capacity``.
    """
    padded_graph = pad_graph(
        graph, capacity.atoms, capacity.edges, padding_length, capacity.structures
    )
    padded_targets = {
        name: value.new_zeros(
            (capacity.atoms if name in ATOM_TARGETS else capacity.structures, *value.shape[1:])
        )
        for name, value in targets.items()
    }
    _copy_targets(padded_targets, targets)
    return padded_graph, padded_targets


def copy_into_padded_batch(
    padded: tuple[AtomicGraph, Targets],
    graph: AtomicGraph,
    targets: Targets,
    padding_length: float,
) -> None:
    """Overwrite a batch of :func:`pad_batch` in place with another unpadded batch.

    Only in-place copies and fills: the buffers keep their storage (what a captured CUDA
    graph reads) and nothing waits for the device.

    Raises
    ------
    ValueError
        If the batch does not fit the capacities of ``padded``.
    """
    padded_graph, padded_targets = padded
    copy_into_padded(padded_graph, graph, padding_length)
    _copy_targets(padded_targets, targets)


def _copy_targets(padded: Targets, targets: Targets) -> None:
    """Real rows copied, every row beyond them zeroed (weights and labels of padding)."""
    for name, buffer in padded.items():
        value = targets[name]
        buffer[: value.shape[0]].copy_(value)
        buffer[value.shape[0] :].zero_()


def _fits_on_device(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= RESIDENT_FRACTION * free


class GraphSet:
    """Every structure of a split, with neighbour lists and labels, as flat tensors.

    Build it with :meth:`from_dataset`.

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
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:
            # "cuda" and "cuda:0" are different devices to ``!=``, but tensors say "cuda:0".
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.storage = tensors["positions"].device

    def nbytes(self) -> int:
        """Bytes of the arrays (where :attr:`storage` says)."""
        return sum(t.numel() * t.element_size() for t in self._t.values())

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
        cells = np.array([structure_cell(a["cell"][k], a["pbc"][k], str(k)) for k in range(n)])

        def floats(x: np.ndarray) -> torch.Tensor:
            return torch.tensor(x, dtype=dtype)

        tensors = {
            "positions": floats(a["positions"]).reshape(-1, 3),
            "numbers": torch.tensor(a["numbers"], dtype=torch.long),
            "atom_ptr": torch.tensor(a["ptr"], dtype=torch.long),
            "cell": floats(cells).reshape(-1, 3, 3),
            "pbc": torch.tensor(a["pbc"].astype(bool)).reshape(-1, 3),
            "edges": torch.tensor(a["edges"].T, dtype=torch.long).reshape(2, -1),
            "cell_shifts": floats(a["cell_shifts"]).reshape(-1, 3),
            "edge_ptr": torch.tensor(a["edge_ptr"], dtype=torch.long),
            "energy": floats(a[keys.TEACHER_ENERGY]),
            "forces": floats(a[keys.TEACHER_FORCES]).reshape(-1, 3),
            "stress": floats(a[keys.TEACHER_STRESS]).reshape(-1, 3, 3),
            "has_stress": torch.tensor(a["has_stress"].astype(bool)),
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
        self, index: Sequence[int] | np.ndarray, weights: np.ndarray | None = None
    ) -> tuple[AtomicGraph, Targets]:
        """The batch of structures ``index``, gathered where the arrays live.

        Parameters
        ----------
        index
            (S,) structure indices, in batch order.
        weights
            (3, S) energy, force and stress weights (:class:`StepPlan`); None: the plain
            means over this batch.

        Returns
        -------
        tuple
            The :class:`AtomicGraph`, equal to :func:`mlff_distiller.graph.batch_graphs` of
            the structures' own graphs, and its targets (module docstring), on
            :attr:`device`. :func:`pad_batch` pads it to fixed capacities.
        """
        index = np.ascontiguousarray(index, dtype=np.int64)
        if weights is None:
            weights = _mean_weights(index, self.n_atoms, self.has_stress)
        graph, targets = self._gather(
            torch.as_tensor(index).to(self.storage, non_blocking=True),
            int(self.n_atoms[index].sum()),
            int(self.n_edges[index].sum()),
        )
        if self.storage != self.device:
            graph = _to(graph, self.device)
            targets = {k: _to_device(v, self.device) for k, v in targets.items()}
        w = torch.as_tensor(weights, dtype=targets[keys.ENERGY].dtype, device=self.device)
        for name, row in zip(("energy_weight", "force_weight", "stress_weight"), w, strict=True):
            targets[name] = row
        return graph, targets

    def _gather(
        self, index: torch.Tensor, n_atoms: int, n_edges: int
    ) -> tuple[AtomicGraph, Targets]:
        """Device-side gather: output sizes from the host, index arithmetic only, no sync."""
        t = self._t
        zero = index.new_zeros(1)
        a0 = t["atom_ptr"][index]
        na = t["atom_ptr"][index + 1] - a0
        e0 = t["edge_ptr"][index]
        ne = t["edge_ptr"][index + 1] - e0
        slots = torch.arange(index.shape[0], device=index.device)
        batch = torch.repeat_interleave(slots, na, output_size=n_atoms)
        ptr = torch.cat([zero, torch.cumsum(na, 0)])
        atom = torch.arange(n_atoms, device=index.device) - ptr[batch] + a0[batch]
        edge_owner = torch.repeat_interleave(slots, ne, output_size=n_edges)
        edge_ptr = torch.cat([zero, torch.cumsum(ne, 0)])
        edge = torch.arange(n_edges, device=index.device) - edge_ptr[edge_owner] + e0[edge_owner]
        graph = AtomicGraph(
            positions=t["positions"][atom],
            numbers=t["numbers"][atom],
            cell=t["cell"][index],
            pbc=t["pbc"][index],
            edge_index=t["edges"][:, edge] + ptr[edge_owner],
            cell_shifts=t["cell_shifts"][edge],
            batch=batch,
            ptr=ptr,
        )
        targets = {
            keys.ENERGY: t["energy"][index],
            keys.FORCES: t["forces"][atom],
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
    return AtomicGraph(*(_to_device(field, device) for field in graph))


def _to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``: through pinned memory (asynchronous) from the host to a GPU."""
    if tensor.device.type == "cpu" and device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


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
