"""The fast path of the student for MD: skin neighbour lists, static shapes, CUDA graphs.

Eager PyTorch runs a small student as about a thousand tiny kernels per step, each launched
from Python: for one molecule on a GPU the launches, not the arithmetic, set the time. The
engine removes them:

1. a :class:`~mlff_distiller.deploy.neighbours.SkinNeighbourList` keeps the edges until an
   atom has moved half the skin, so most steps build no graph at all;
2. the graph is padded to fixed capacities (:func:`mlff_distiller.graph.pad_graph`), with
   headroom, so that its shapes stay the same from step to step;
3. on CUDA, energy, forces and stress (:func:`mlff_distiller.models.predict.predict`, the one
   place that derives them) are captured once in a CUDA graph and replayed; a capture is
   redone only when the atoms or edges outgrow the capacities or the number of structures
   changes. Optionally the model is first compiled with ``torch.compile`` (fewer, fused
   kernels), then captured.

On the CPU the engine runs on the unpadded graph: by default ``predict`` eagerly; with
``compile=True`` the energy and both derivatives as one function of ``torch.func``
(:func:`functional_predict`), compiled by ``torch.compile`` with dynamic shapes, so that
inductor fuses forward and backward into a few C++ loops and a new number of edges needs no
recompilation. Skin reuse applies there only when asked for (:func:`auto_skin`). Results
equal the eager reference path to float32 round-off (tested).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from typing import Any

import torch

from mlff_distiller.deploy.neighbours import SkinNeighbourList
from mlff_distiller.graph import AtomicGraph, copy_into_padded, pad_graph, padding_length
from mlff_distiller.keys import ENERGY, FORCES, STRESS
from mlff_distiller.models.predict import functional_predict, predict, sum_per_structure

DEFAULT_SKIN = None
"""Default Verlet skin: chosen by :func:`auto_skin` from the device and the number of atoms."""

LAUNCH_BOUND_ATOMS = 1500
"""Below this many atoms in one call, a CUDA step is bound by kernel launches, not edges."""

DEFAULT_HEADROOM = 1.1
"""Edge capacity of a capture as a multiple of the edges present when it is made."""

CPU_COMPILE_OPTIONS = {"cpp_wrapper": True, "cpp.threads": 1}
"""Inductor options of the compiled CPU path (``compile=True`` without CUDA graphs).

``cpp_wrapper``: the kernels are called from C++, not Python (cheaper calls), and built as
one file (a faster first compilation). ``cpp.threads = 1``: inductor's own loops run on one
thread, the matrix products still on all of torch's threads. Parallel loops would have to
sum messages onto atoms with atomic adds, which made the whole step about 1.3 times slower
on 2 cores (103 and 1,003 atoms, ``benchmarks/md_speed.py``)."""


def auto_skin(device: torch.device, n_atoms: int) -> float:
    """The Verlet skin in Å that makes MD fastest, by device and system size.

    A skin trades rebuilds for edges: the list within ``cutoff + skin`` has about
    ``((cutoff + skin) / cutoff)³`` times the edges, every one of which the student evaluates.
    Measured with ``benchmarks/md_speed.py`` (``benchmarks/results/``):

    - on a GPU a small system is bound by kernel launches, so extra edges cost almost nothing
      and rare rebuilds keep the captured graph replaying: 1 Å below
      ``LAUNCH_BOUND_ATOMS``; above it the work per edge dominates: 0.3 Å;
    - on a CPU the work per edge dominates at every size measured (33 to 1,003 atoms) and a
      rebuild costs about 1 % of a step: no skin (an exact list at every step) was as fast as
      or faster than 0.3 Å, so 0.
    """
    if device.type == "cuda":
        return 1.0 if n_atoms < LAUNCH_BOUND_ATOMS else 0.3
    return 0.0


class StudentEngine:
    """Energies, forces and stress of a student for configurations that change step by step.

    Parameters
    ----------
    model
        The student, mapping an :class:`AtomicGraph` to per-atom energies. The engine keeps
        its own frozen copy on ``device``; the caller's model is not changed.
    device
        Where the student runs.
    skin
        Verlet skin in Å of the neighbour list (0: rebuild at every call; ``None``: chosen
        at the first call by :func:`auto_skin`).
    cuda_graph
        Capture and replay CUDA graphs; ``None`` means "on CUDA devices".
    compile
        Compile with ``torch.compile``: with CUDA graphs the model, before capture;
        without (the CPU) :func:`functional_predict`, forward and backward fused.
        Compilation takes tens of seconds at the first call (less when inductor's on-disk
        cache already holds it) and again when ``stress`` or the number of structures
        changes; it pays off for long runs.
    headroom
        Edge capacity of a capture relative to the current number of edges.

    Attributes
    ----------
    captures : int
        Number of CUDA-graph captures made so far (without CUDA graphs and with
        ``compile``: calls that compiled).
    capture_seconds : float
        Wall time spent capturing (and compiling), in s.
    rebuild_seconds : float
        Host time spent turning rebuilt neighbour lists into graphs on the device, in s
        (the search itself is ``neighbours.build_seconds``).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device | str = "cpu",
        skin: float | None = DEFAULT_SKIN,
        cuda_graph: bool | None = None,
        compile: bool = False,
        headroom: float = DEFAULT_HEADROOM,
    ) -> None:
        self.device = torch.device(device)
        self.model = copy.deepcopy(model).to(self.device).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.dtype = next(self.model.parameters()).dtype
        self.cutoff = float(self.model.cutoff)
        self.neighbours = SkinNeighbourList(self.cutoff, 0.0 if skin is None else skin)
        self._auto_skin = skin is None
        self.cuda_graph = self.device.type == "cuda" if cuda_graph is None else bool(cuda_graph)
        if self.cuda_graph and self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {self.device}")
        self.compile = bool(compile)
        self.headroom = float(headroom)
        self.captures = 0
        self.capture_seconds = 0.0
        self.rebuild_seconds = 0.0
        self._compiled: Any = None
        self._functional: Any = None
        self._compiled_kinds: set[tuple[bool, int]] = set()
        self._captured: _CapturedPredict | None = None
        self._graph: AtomicGraph | None = None
        self._numbers: torch.Tensor | None = None

    def compute(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        ptr: torch.Tensor,
        stress: bool = False,
        to_host: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energy, forces and optionally stress of one or several structures.

        Inputs may live on the host or on the device: the neighbour list is computed where
        ``positions`` are (host positions, e.g. from ASE, are searched on the CPU), and only
        what changed is copied to the device (positions and cell every call, edges after a
        rebuild).

        Parameters
        ----------
        positions
            (N, 3) Å.
        numbers
            (N,) int64 atomic numbers. Pass the same tensor object while they do not change
            (a new object is compared with the last one).
        cell
            (B, 3, 3) Å, vectors as rows; zeros for a non-periodic structure.
        pbc
            (B, 3) bool.
        ptr
            (B + 1,) int64: atoms of structure ``b`` are ``ptr[b]:ptr[b+1]``.
        stress
            Whether to return stress (NaN for structures whose cell has no volume).
        to_host
            Return float64 tensors on the host, brought back in one device-to-host copy.

        Returns
        -------
        dict[str, torch.Tensor]
            ``energy`` (B,) eV, ``forces`` (N, 3) eV/Å and, when asked, ``stress``
            (B, 3, 3) eV/Å³ (ASE sign), on the engine's device (or the host with
            ``to_host``). The tensors are the caller's.
        """
        if self._auto_skin:
            self._auto_skin = False
            self.neighbours = SkinNeighbourList(
                self.cutoff, auto_skin(self.device, positions.shape[0])
            )
        edge_index, shifts, rebuilt = self.neighbours(positions, cell, pbc, ptr)
        rebuilt = rebuilt or self._numbers_changed(numbers)
        if rebuilt or self._graph is None:
            start = time.perf_counter()
            n = positions.shape[0]
            counts = ptr[1:] - ptr[:-1]
            batch = torch.repeat_interleave(
                torch.arange(counts.shape[0], device=ptr.device), counts, output_size=n
            )
            self._graph = AtomicGraph(
                positions=positions,
                numbers=numbers,
                cell=cell,
                pbc=pbc,
                edge_index=edge_index,
                cell_shifts=shifts,
                batch=batch,
                ptr=ptr,
            ).to(self.device, self.dtype)
            rebuilt = True
            self.rebuild_seconds += time.perf_counter() - start
        if self.cuda_graph:
            captured = self._replay(positions, cell, rebuilt, stress)
            packed = captured.read_host() if to_host else captured.packed
        else:
            if not rebuilt:
                self._graph = self._graph._replace(
                    positions=positions.to(self.device, self.dtype),
                    cell=cell.to(self.device, self.dtype),
                )
            if self.compile:
                out = self._compiled_predict(self._graph, stress)
            else:
                out = predict(
                    self.model, self._graph, forces=True, stress=stress, check_cells=False
                )
            if not to_host:
                return out
            packed = torch.cat([value.reshape(-1) for value in out.values()])
            packed = packed.to("cpu", torch.float64)
        return _unpack(
            packed,
            positions.shape[0],
            ptr.shape[0] - 1,
            stress,
            padded=self.cuda_graph,
            clone=self.cuda_graph and not to_host,
        )

    def _compiled_predict(self, graph: AtomicGraph, stress: bool) -> dict[str, torch.Tensor]:
        """:func:`functional_predict`, compiled at the first call of each kind (CPU path).

        ``torch.compile`` may compile again when ``stress`` or the number of structures
        changes: the first call of each such kind counts as a capture, its time as capture
        time.
        """
        start = time.perf_counter()
        if self._functional is None:
            self._functional = torch.compile(
                functional_predict, dynamic=True, fullgraph=True, options=CPU_COMPILE_OPTIONS
            )
        kind = (stress, graph.n_structures)
        if kind in self._compiled_kinds:
            atomic, forces, stress_tensor = self._functional(self.model, graph, stress)
        else:
            try:
                atomic, forces, stress_tensor = self._functional(self.model, graph, stress)
            except Exception as exc:  # any compiler failure: run eagerly
                # Inductor's CPU path of this function needs torch 2.13 (torch 2.11's dynamo
                # fails on it); the eager path gives the same results, only slower.
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                warnings.warn(
                    f"compile=True failed with torch {torch.__version__} "
                    f"({type(exc).__name__}: {first_line[:200]}); running the student "
                    "eagerly instead (same results, slower)",
                    RuntimeWarning,
                    stacklevel=3,
                )
                self.compile = False
                return predict(self.model, graph, forces=True, stress=stress, check_cells=False)
        if kind not in self._compiled_kinds:
            self._compiled_kinds.add(kind)
            self.captures += 1
            self.capture_seconds += time.perf_counter() - start
        # Summed here, not in the compiled function: inductor (torch 2.13) fails to generate
        # the C++ of a scatter-add into a single structure's energy.
        out = {ENERGY: sum_per_structure(atomic, graph.batch, graph.n_structures)}
        out[FORCES] = forces
        if stress_tensor is not None:
            out[STRESS] = stress_tensor
        return out

    def _numbers_changed(self, numbers: torch.Tensor) -> bool:
        """Whether the atomic numbers differ from the last call's (same tensor: no check)."""
        last, self._numbers = self._numbers, numbers
        if last is numbers:
            return False
        return (
            last is None
            or last.shape != numbers.shape
            or not torch.equal(last.to(numbers.device), numbers)
        )

    def _replay(
        self, positions: torch.Tensor, cell: torch.Tensor, rebuilt: bool, stress: bool
    ) -> _CapturedPredict:
        """Replay (capturing first if needed) with the current positions and cell."""
        graph = self._graph
        assert graph is not None
        captured = self._captured
        if captured is None or not captured.fits(graph, stress):
            n_edges = max(math.ceil(graph.edge_index.shape[1] * self.headroom), 16)
            if captured is not None:
                # Grow, never shrink: a capacity that was once needed is likely needed again.
                n_edges = max(n_edges, captured.n_edges)
            start = time.perf_counter()
            self._captured = captured = _CapturedPredict(
                self._model_for_capture(), graph, n_edges, stress, padding_length(self.cutoff)
            )
            self.capture_seconds += time.perf_counter() - start
            self.captures += 1
        elif rebuilt:
            captured.load(graph)
        captured.replay(positions, cell)
        return captured

    def _model_for_capture(self) -> Any:
        if not self.compile:
            return self.model
        if self._compiled is None:
            self._compiled = torch.compile(self.model, dynamic=False, fullgraph=True)
        return self._compiled


def _unpack(
    packed: torch.Tensor,
    n_atoms: int,
    n_structures: int,
    stress: bool,
    padded: bool,
    clone: bool,
) -> dict[str, torch.Tensor]:
    """Split ``[energy, forces, stress]`` flattened into one vector back into a dictionary.

    ``padded``: the vector is the output of a padded capture (``B + 1`` structures and the
    atom capacity) rather than exactly ``n_structures`` and ``n_atoms``. ``clone``: copy
    the slices, so that the next replay cannot change what the caller holds.
    """
    n_packed_structures = n_structures + 1 if padded else n_structures
    n_packed_atoms = (packed.shape[0] - n_packed_structures * (10 if stress else 1)) // 3
    n_forces = 3 * n_packed_atoms
    energy = packed[:n_packed_structures]
    forces = packed[n_packed_structures : n_packed_structures + n_forces].view(-1, 3)
    out = {ENERGY: energy[:n_structures], FORCES: forces[:n_atoms]}
    if stress:
        out[STRESS] = packed[n_packed_structures + n_forces :].view(-1, 3, 3)[:n_structures]
    if clone:
        out = {key: value.clone() for key, value in out.items()}
    return out


class _CapturedPredict:
    """One CUDA graph of ``predict`` on a padded graph of fixed capacities.

    Per replay the graph reads one flat input (positions of every atom slot, then the cells
    of the real structures) and writes one flat output (energies, forces, stress of the
    padded graph), so that host callers move each with a single copy through pinned memory.
    Positions of padding atoms are irrelevant: their only edges join an atom to itself.
    """

    def __init__(
        self,
        model: Any,
        graph: AtomicGraph,
        n_edges: int,
        stress: bool,
        padding_length: float,
    ) -> None:
        self.n_atoms = graph.positions.shape[0] + 1
        self.n_edges = n_edges
        self.n_structures = graph.n_structures
        self.stress = stress
        self.padding_length = padding_length
        self.static = pad_graph(graph, self.n_atoms, n_edges, padding_length)
        static = self.static
        dtype, device = static.positions.dtype, static.positions.device
        n_positions = 3 * self.n_atoms
        self.inputs = torch.cat([static.positions.reshape(-1), static.cell[:-1].reshape(-1)])
        self.host_inputs = torch.zeros_like(self.inputs, device="cpu").pin_memory()
        self._host_inputs = self.host_inputs.numpy()

        def run() -> dict[str, torch.Tensor]:
            static.positions.copy_(self.inputs[:n_positions].view(-1, 3))
            static.cell[:-1].copy_(self.inputs[n_positions:].view(-1, 3, 3))
            return predict(model, static, forces=True, stress=stress, check_cells=False)

        # Warm-up on a side stream (cuBLAS handles, autograd buffers, compilation), then
        # capture: the documented recipe of torch.cuda.graphs.
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                run()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            outputs = run()
            # One flat output, so that a host copy of the results is one transfer.
            self.packed = torch.cat([value.reshape(-1) for value in outputs.values()])
        self.host_outputs = torch.zeros_like(self.packed, device="cpu").pin_memory()
        assert self.packed.dtype == dtype

    def fits(self, graph: AtomicGraph, stress: bool) -> bool:
        return (
            stress == self.stress
            and graph.n_structures == self.n_structures
            and graph.positions.shape[0] < self.n_atoms
            and graph.edge_index.shape[1] <= self.n_edges
        )

    def load(self, graph: AtomicGraph) -> None:
        """Take a new neighbour list (and atoms) of ``graph``, which must fit."""
        copy_into_padded(self.static, graph, self.padding_length)

    def replay(self, positions: torch.Tensor, cell: torch.Tensor) -> None:
        """Run the graph for ``positions`` (N, 3) and ``cell`` (B, 3, 3), host or device."""
        n_positions = 3 * self.n_atoms
        if positions.device.type == "cpu":
            # numpy writes into pinned memory, then one blocking copy: no race with the
            # previous replay, whose outputs the caller has read or is about to.
            staged = self._host_inputs
            staged[: positions.numel()] = positions.detach().numpy().reshape(-1)
            staged[n_positions:] = cell.detach().numpy().reshape(-1)
            self.inputs.copy_(self.host_inputs)
        else:
            self.inputs[: positions.numel()].copy_(positions.detach().reshape(-1))
            self.inputs[n_positions:].copy_(cell.detach().reshape(-1))
        self.graph.replay()

    def read_host(self) -> torch.Tensor:
        """The packed outputs of the last replay on the host, float64 (waits for the GPU)."""
        self.host_outputs.copy_(self.packed)
        return self.host_outputs.to(torch.float64)
