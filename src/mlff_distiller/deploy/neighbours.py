"""Verlet neighbour lists with a skin, on the CPU or the GPU (vesin-torch), for MD.

A list of the pairs within ``cutoff + skin`` stays valid while no atom has moved more than
``skin / 2`` since it was built: a pair can then have come closer by at most ``skin``, so
every pair now within ``cutoff`` is in the list. Pairs of the list that are beyond the cutoff
contribute exactly zero to the student (its cutoff function is 0 there, value and gradient),
so results equal those of an exact list. Edges are stored as integer cell shifts, so the
list also stays valid for atoms that leave the cell: nothing is wrapped.

The list is rebuilt when

- an atom moved more than ``skin / 2`` since the last build;
- any cell vector, periodicity flag or structure boundary (``ptr``) changed (NPT, a new batch);
- on the first call.

Each call costs one small device-to-host read (the rebuild decision); a rebuild costs one
vesin call per periodic structure plus one for all non-periodic structures together.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from vesin_torch import NeighborList


class SkinNeighbourList:
    """Pairs within ``cutoff + skin``, recomputed only when they may have become wrong.

    Parameters
    ----------
    cutoff
        Interaction cutoff of the model in Å.
    skin
        Extra radius in Å. Larger skins rebuild less often but give more edges to evaluate;
        0 rebuilds at every call (an exact list).

    Attributes
    ----------
    builds : int
        Number of times the list was built so far.
    calls : int
        Number of calls so far.
    build_seconds : float
        Wall time spent building lists, in s.
    """

    def __init__(self, cutoff: float, skin: float = 1.0) -> None:
        if cutoff <= 0 or skin < 0:
            raise ValueError(f"need cutoff > 0 and skin >= 0 (got {cutoff}, {skin})")
        self.cutoff = float(cutoff)
        self.skin = float(skin)
        self.builds = 0
        self.calls = 0
        self.build_seconds = 0.0
        self._nl = NeighborList(cutoff=self.cutoff + self.skin, full_list=True)
        self._reference: tuple[torch.Tensor, ...] | None = None
        self._edges: tuple[torch.Tensor, torch.Tensor] | None = None

    def __call__(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, ptr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The neighbour list of the current configuration, rebuilt only if needed.

        Parameters
        ----------
        positions
            (N, 3) Å, any float dtype, on the device where the list is computed.
        cell
            (B, 3, 3) Å, cell vectors as rows (zeros for a non-periodic structure).
        pbc
            (B, 3) bool.
        ptr
            (B + 1,) int64: atoms of structure ``b`` are ``ptr[b]:ptr[b+1]``.

        Returns
        -------
        tuple[torch.Tensor, torch.Tensor, bool]
            ``edge_index`` (2, E) int64 (``[i, j]``, both directions), ``cell_shifts`` (E, 3)
            in the dtype of ``positions``, and whether the list was rebuilt by this call.
        """
        self.calls += 1
        if self._must_rebuild(positions, cell, pbc, ptr):
            start = time.perf_counter()
            self._edges = self._build(positions, cell, pbc, ptr)
            self._reference = (
                positions.detach().clone(),
                cell.detach().clone(),
                pbc.clone(),
                ptr.clone(),
            )
            self.builds += 1
            self.build_seconds += time.perf_counter() - start
            return (*self._edges, True)
        assert self._edges is not None
        return (*self._edges, False)

    def _must_rebuild(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, ptr: torch.Tensor
    ) -> bool:
        ref = self._reference
        if ref is None or self.skin == 0.0:
            return True
        ref_positions, ref_cell, ref_pbc, ref_ptr = ref
        if (
            ref_positions.shape != positions.shape
            or ref_ptr.shape != ptr.shape
            or ref_positions.device != positions.device
        ):
            return True
        if positions.device.type == "cpu":
            # numpy on views of the caller's arrays: a few microseconds per step, where each
            # torch CPU op costs several.
            d = positions.detach().numpy() - ref_positions.numpy()
            return bool(
                np.einsum("ij,ij->i", d, d).max(initial=0.0) > (0.5 * self.skin) ** 2
                or cell.detach().numpy().tobytes() != ref_cell.numpy().tobytes()
                or pbc.numpy().tobytes() != ref_pbc.numpy().tobytes()
                or ptr.numpy().tobytes() != ref_ptr.numpy().tobytes()
            )
        # One reduction and one host read for the whole decision.
        moved = torch.sum((positions.detach() - ref_positions) ** 2, dim=-1).max()
        changed = (
            (cell.detach() != ref_cell).any()
            | (pbc != ref_pbc).any()
            | (ptr != ref_ptr).any()
            | (moved > (0.5 * self.skin) ** 2)
        )
        return bool(changed)

    def _build(
        self, positions: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, ptr: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        bounds = ptr.tolist()
        periodic = pbc.any(dim=1).tolist()
        # The search runs in float64 whatever the model's dtype: it decides which pairs exist.
        x = positions.detach().to(torch.float64)
        boxes = cell.detach().to(torch.float64)
        edges: list[torch.Tensor] = []
        shifts: list[torch.Tensor] = []
        for b, is_periodic in enumerate(periodic):
            if not is_periodic:
                continue
            start, stop = bounds[b], bounds[b + 1]
            # vesin-torch reads the flags' memory ignoring strides: pass a contiguous copy.
            flags = pbc[b].contiguous()
            i, j, s = self._nl.compute(x[start:stop], boxes[b], flags, quantities="ijS")
            edges.append(torch.stack([i, j]).to(torch.int64) + start)
            shifts.append(s)
        molecules = [b for b, is_periodic in enumerate(periodic) if not is_periodic]
        if molecules:
            i, j = self._molecule_pairs(x, bounds, molecules)
            edges.append(torch.stack([i, j]))
            shifts.append(torch.zeros((i.shape[0], 3), dtype=torch.int32, device=x.device))
        if not edges:
            return (
                torch.zeros((2, 0), dtype=torch.int64, device=x.device),
                positions.new_zeros((0, 3)),
            )
        return torch.cat(edges, dim=1), torch.cat(shifts).to(positions.dtype)

    def _molecule_pairs(
        self, x: torch.Tensor, bounds: list[int], molecules: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pairs of all non-periodic structures in one vesin call.

        Each structure is moved along x, away from the others, by more than the search
        radius (in float64, so the shifted coordinates keep their precision); pairs found
        then never join two structures. The caller's positions are not changed.
        """
        # Atom indices of the molecules and the molecule of each, in a few vector ops (a
        # batch of hundreds of replicas would otherwise cost two launches per structure).
        starts = torch.tensor([bounds[b] for b in molecules], device=x.device)
        counts = torch.tensor([bounds[b + 1] - bounds[b] for b in molecules], device=x.device)
        total = int(sum(bounds[b + 1] - bounds[b] for b in molecules))
        owner = torch.repeat_interleave(
            torch.arange(len(molecules), device=x.device), counts, output_size=total
        )
        first = torch.cumsum(counts, 0) - counts  # position of each molecule in the list
        index = torch.arange(total, device=x.device) + (starts - first).index_select(0, owner)
        points = x.index_select(0, index)
        if len(molecules) > 1:
            # Width of each structure's bounding box along x, then a gap of twice the radius.
            lo = torch.full((len(molecules),), float("inf"), dtype=x.dtype, device=x.device)
            hi = torch.full((len(molecules),), -float("inf"), dtype=x.dtype, device=x.device)
            lo = lo.scatter_reduce(0, owner, points[:, 0], reduce="amin")
            hi = hi.scatter_reduce(0, owner, points[:, 0], reduce="amax")
            width = hi - lo + 2.0 * (self.cutoff + self.skin) + 1.0
            start = torch.cumsum(width, 0) - width - lo
            points = points.clone()
            points[:, 0] += start.index_select(0, owner)
        box = torch.zeros((3, 3), dtype=x.dtype, device=x.device)
        i, j = self._nl.compute(points, box, False, quantities="ij")
        return index.index_select(0, i.to(torch.int64)), index.index_select(0, j.to(torch.int64))
