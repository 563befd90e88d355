"""Graphs and targets of a packed dataset, served as shuffled mini-batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from mlff_distiller import keys
from mlff_distiller.data.dataset import PackedDataset
from mlff_distiller.graph import AtomicGraph, batch_graphs, from_atoms


@dataclass(frozen=True)
class GraphSet:
    """Per-structure graphs (neighbour lists computed once) and the teacher's labels.

    Attributes
    ----------
    graphs
        One single-structure :class:`AtomicGraph` per structure.
    energy
        (n,) teacher energies, eV.
    forces
        One (N_k, 3) tensor of teacher forces per structure, eV/Å.
    stress
        (n, 3, 3) teacher stress, eV/Å³ (zeros where ``has_stress`` is False).
    has_stress
        (n,) whether the structure has a stress label.
    """

    graphs: list[AtomicGraph]
    energy: torch.Tensor
    forces: list[torch.Tensor]
    stress: torch.Tensor
    has_stress: torch.Tensor

    @classmethod
    def from_dataset(
        cls,
        dataset: PackedDataset,
        cutoff: float,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> GraphSet:
        """Build the neighbour list of every structure of ``dataset``."""
        arrays = dataset.arrays
        ptr = arrays["ptr"]
        forces = torch.tensor(arrays[keys.TEACHER_FORCES], dtype=dtype, device=device)
        return cls(
            graphs=[
                from_atoms(dataset.atoms(k), cutoff, dtype).to(device) for k in range(len(dataset))
            ],
            energy=torch.tensor(arrays[keys.TEACHER_ENERGY], dtype=dtype, device=device),
            forces=[forces[ptr[k] : ptr[k + 1]] for k in range(len(dataset))],
            stress=torch.tensor(arrays[keys.TEACHER_STRESS], dtype=dtype, device=device),
            has_stress=torch.tensor(arrays["has_stress"], device=device),
        )

    def __len__(self) -> int:
        return len(self.graphs)

    def batch(self, indices: list[int]) -> tuple[AtomicGraph, dict[str, torch.Tensor]]:
        """One batch graph of the structures ``indices`` and its targets.

        Targets: ``energy`` (B,) eV, ``forces`` (N, 3) eV/Å, ``stress`` (B, 3, 3) eV/Å³,
        ``has_stress`` (B,), ``n_atoms`` (B,).
        """
        graph = batch_graphs([self.graphs[k] for k in indices])
        targets = {
            keys.ENERGY: self.energy[indices],
            keys.FORCES: torch.cat([self.forces[k] for k in indices]),
            keys.STRESS: self.stress[indices],
            "has_stress": self.has_stress[indices],
            "n_atoms": torch.diff(graph.ptr),
        }
        return graph, targets

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
    ) -> Iterator[tuple[AtomicGraph, dict[str, torch.Tensor]]]:
        """Mini-batches covering every structure once (the last one may be smaller)."""
        order = (
            torch.randperm(len(self), generator=generator).tolist()
            if shuffle
            else list(range(len(self)))
        )
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])
