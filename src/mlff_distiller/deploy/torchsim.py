"""TorchSim ``ModelInterface`` for a student: batched MD, relaxations, NVT/NPT in TorchSim.

`TorchSim <https://github.com/TorchSim/torch-sim>`_ (``torch-sim-atomistic``) runs many
replicas or structures at once as one batch. :class:`StudentModel` lets its integrators and
optimizers drive a student; the heavy lifting goes through
:class:`~mlff_distiller.deploy.engine.StudentEngine` (skin neighbour lists, and on CUDA a
captured CUDA graph), so results equal the student's ASE calculator.

Install with ``pip install 'mlff-distiller[torchsim]'``. On Python 3.11 the newest TorchSim
that installs is 0.3.0; 0.4 and later need Python 3.12 (0.3.0 and 0.6.2 are tested). What the
model sees differs between the two API generations, and both are handled:

- 0.3: ``forward`` receives a ``SimState`` or a dict of its fields; ``state.pbc`` is one
  Python bool for the whole batch.
- 0.4 and later: ``forward`` receives a ``SimState``; ``state.pbc`` is a bool tensor (3,),
  one flag per direction, still shared by the whole batch.

In both, ``state.cell`` (B, 3, 3) holds the cell vectors as *columns* (``row_vector_cell``
gives ASE's rows), ``state.system_idx`` (N,) says which system each atom belongs to, and the
model returns ``energy`` (B,) eV, ``forces`` (N, 3) eV/Å and ``stress`` (B, 3, 3) eV/Å³ with
ASE's sign (stress = (1/V) dE/dstrain; TorchSim's optimizers and barostats use the same
convention, ``pressure = -trace(stress) / 3``).

A TorchSim batch shares one ``pbc``. Non-periodic structures (molecules: ``pbc`` False, any
cell) are computed without a cell and get NaN stress: stress is defined only for fully
periodic cells, as in :class:`~mlff_distiller.deploy.calculator.StudentCalculator`. A molecule
can join periodic structures in one batch inside a periodic box larger than its size plus
the cutoff.

Examples
--------
>>> import torch_sim as ts  # doctest: +SKIP
>>> from mlff_distiller.deploy.torchsim import load_torchsim_model
>>> model = load_torchsim_model("runs/quickstart", device="cuda")  # doctest: +SKIP
>>> state = ts.io.atoms_to_state([atoms] * 64, model.device, model.dtype)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

try:
    from torch_sim.models.interface import ModelInterface
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"TorchSim could not be imported ({error}); install it with "
        "pip install 'mlff-distiller[torchsim]'"
    ) from error

from mlff_distiller.deploy.artefact import check_elements, load_student
from mlff_distiller.deploy.engine import DEFAULT_SKIN, StudentEngine
from mlff_distiller.keys import ENERGY, FORCES, STRESS
from mlff_distiller.models import PaiNN

__all__ = ["StudentModel", "load_torchsim_model", "state_to_batch"]


class StudentModel(ModelInterface):
    """A student as a TorchSim model (``torch_sim.models.interface.ModelInterface``).

    Parameters
    ----------
    model
        The student. It is not changed: the engine keeps its own copy on ``device``.
    metadata
        Its metadata from :func:`~mlff_distiller.deploy.artefact.load_student`; its
        ``elements`` (atomic numbers) are the only ones the model accepts.
    device
        Torch device the student runs on; TorchSim states must live there too.
    dtype
        Floating-point dtype to run in; ``None`` keeps the student's (float32 for a trained
        student). TorchSim builds its states in this dtype.
    compute_stress
        Whether ``forward`` returns stress. May be changed later
        (``model.compute_stress = False``) to save the strain derivative.
    skin
        Verlet skin of the engine's neighbour list in Å (0: rebuild at every call; ``None``:
        by device and system size, see :func:`~mlff_distiller.deploy.engine.auto_skin`).
    cuda_graph
        Capture and replay CUDA graphs; ``None`` means "on CUDA devices".
    compile
        Compile with ``torch.compile`` (see
        :class:`~mlff_distiller.deploy.engine.StudentEngine`).

    Attributes
    ----------
    engine : StudentEngine
        The engine that evaluates the student.
    metadata : dict
        The student's metadata.
    """

    def __init__(
        self,
        model: PaiNN,
        metadata: Mapping[str, Any] | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
        *,
        compute_stress: bool = True,
        skin: float | None = DEFAULT_SKIN,
        cuda_graph: bool | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if dtype is not None and dtype != next(model.parameters()).dtype:
            model = copy.deepcopy(model).to(dtype)
        self.engine = StudentEngine(
            model, device=device, skin=skin, cuda_graph=cuda_graph, compile=compile
        )
        self.metadata = dict(metadata or {})
        self._device = self.engine.device
        self._dtype = self.engine.dtype
        self._compute_stress = bool(compute_stress)
        self._compute_forces = True
        self._memory_scales_with = "n_atoms_x_density"  # a radial cutoff
        elements = self.metadata.get("elements")
        self._elements = {int(z) for z in elements} if elements else None
        self._checked_numbers: torch.Tensor | None = None
        self._checked_version = -1

    @classmethod
    def from_file(
        cls, path: str | Path, device: torch.device | str = "cpu", **kwargs: Any
    ) -> StudentModel:
        """The student of a run directory or ``student.pt`` file as a TorchSim model.

        Parameters
        ----------
        path
            A run directory (its ``model/student.pt`` is used) or a student file.
        device
            Torch device the student runs on.
        **kwargs
            Passed to :class:`StudentModel` (``dtype``, ``compute_stress``, ``skin``...).

        Returns
        -------
        StudentModel
            The model, ready for TorchSim's runners, integrators and optimizers.
        """
        model, metadata = load_student(path, device=device)
        return cls(model, metadata, device=device, **kwargs)

    @property
    def compute_stress(self) -> bool:
        """Whether :meth:`forward` returns stress (settable)."""
        return self._compute_stress

    @compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        self._compute_stress = bool(value)

    def forward(self, state: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """Energies, forces and (if :attr:`compute_stress`) stress of every system of a state.

        Parameters
        ----------
        state
            A TorchSim ``SimState`` (``N`` atoms, ``B`` systems), or with TorchSim 0.3 a dict
            of its fields (``positions``, ``cell``, ``pbc``, ``atomic_numbers``,
            ``system_idx``). The state is not changed.
        **kwargs
            Ignored (TorchSim's interface allows model-specific options).

        Returns
        -------
        dict[str, torch.Tensor]
            Detached, in the state's dtype and on its device: ``energy`` (B,) in eV,
            ``forces`` (N, 3) in eV/Å and, when :attr:`compute_stress`, ``stress``
            (B, 3, 3) in eV/Å³ with ASE's sign, NaN for systems that are not periodic in
            all three directions.

        Raises
        ------
        ValueError
            If the state holds an element the student was never trained on.
        """
        # The state's own tensor: the check runs once for all steps of an MD run.
        self._check_elements(_state_field(state, "atomic_numbers"))
        positions = _state_field(state, "positions")
        out_dtype, out_device = positions.dtype, positions.device
        device = self._device
        positions, numbers, cell, pbc, ptr = state_to_batch(state, device)
        n_systems = cell.shape[0]

        fully_periodic = pbc.all(dim=1)
        # Molecule-only batches (replica MD) skip the strain derivative altogether.
        stress = self._compute_stress and bool(fully_periodic.any())
        out = self.engine.compute(positions, numbers, cell, pbc, ptr, stress=stress)
        results = {
            "energy": out[ENERGY].detach().to(out_device, out_dtype),
            "forces": out[FORCES].detach().to(out_device, out_dtype),
        }
        if self._compute_stress:
            undefined = torch.full((n_systems, 3, 3), float("nan"), dtype=out_dtype, device=device)
            if stress:
                value = out[STRESS].detach().to(dtype=out_dtype)
                results["stress"] = torch.where(fully_periodic.view(-1, 1, 1), value, undefined)
            else:
                results["stress"] = undefined
            results["stress"] = results["stress"].to(out_device)
        return results

    def _check_elements(self, numbers: torch.Tensor) -> None:
        """Refuse elements the student never saw; one check per atomic-numbers tensor.

        MD and relaxations pass the same tensor at every step, so the check (a read of the
        elements on the host) runs once, not per step. ``_version`` counts in-place changes.
        """
        if self._elements is None:
            return
        if numbers is self._checked_numbers and numbers._version == self._checked_version:
            return
        check_elements(torch.unique(numbers).tolist(), self._elements, "the TorchSim state")
        self._checked_numbers = numbers
        self._checked_version = numbers._version


def load_torchsim_model(
    path: str | Path, device: torch.device | str = "cpu", **kwargs: Any
) -> StudentModel:
    """TorchSim model of the student in a run directory (or a ``student.pt`` file).

    Parameters
    ----------
    path
        A run directory or a student file.
    device
        Torch device the student runs on.
    **kwargs
        Passed to :class:`StudentModel` (``dtype``, ``compute_stress``, ``skin``,
        ``cuda_graph``, ``compile``).

    Returns
    -------
    StudentModel
        The student as a TorchSim ``ModelInterface``.

    Examples
    --------
    >>> import torch_sim as ts  # doctest: +SKIP
    >>> model = load_torchsim_model("runs/quickstart", device="cuda")  # doctest: +SKIP
    >>> final = ts.integrate(  # doctest: +SKIP
    ...     system=[atoms] * 32, model=model, integrator=ts.Integrator.nvt_langevin,
    ...     n_steps=1000, temperature=300.0, timestep=0.0005,
    ... )
    """
    return StudentModel.from_file(path, device=device, **kwargs)


def state_to_batch(
    state: Any, device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The flat batched tensors of a TorchSim state (any supported version) on ``device``.

    Parameters
    ----------
    state
        A ``SimState`` (``N`` atoms, ``B`` systems), or with TorchSim 0.3 a dict of its fields.
    device
        Where the returned tensors live.

    Returns
    -------
    tuple of torch.Tensor
        ``positions`` (N, 3) Å in the state's dtype; ``numbers`` (N,) int64; ``cell``
        (B, 3, 3) Å, cell vectors as rows, zero for a structure periodic in no direction
        (a molecule has no cell, whatever box TorchSim carries for it, as in
        :func:`mlff_distiller.graph.from_atoms`); ``pbc`` (B, 3) bool; ``ptr`` (B + 1,) int64,
        the atoms of system ``b`` being ``ptr[b]:ptr[b + 1]``.
    """
    device = torch.device(device)
    positions, numbers, cell, pbc, system_idx = _read_state(state)
    n_systems = cell.shape[0]
    pbc = _pbc_per_system(pbc, n_systems, device)
    cell = torch.where(pbc.any(dim=1).view(-1, 1, 1), cell.to(device), 0.0)
    # Atoms per system without torch.bincount, which reads its size from the device.
    system_idx = system_idx.to(device, torch.int64)
    counts = torch.zeros(n_systems + 1, dtype=torch.int64, device=device)
    ptr = torch.cumsum(counts.index_add_(0, system_idx + 1, torch.ones_like(system_idx)), 0)
    return positions.to(device), numbers.to(device, torch.int64), cell, pbc, ptr


def _state_field(state: Any, name: str) -> torch.Tensor:
    """One field of a ``SimState`` or of TorchSim 0.3's dict form."""
    return state[name] if isinstance(state, Mapping) else getattr(state, name)


def _read_state(
    state: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Any, torch.Tensor]:
    """Positions (N, 3), atomic numbers (N,), cell rows (B, 3, 3), pbc, system index (N,).

    Reads a ``SimState`` of any supported TorchSim version, or TorchSim 0.3's dict form.
    TorchSim stores cell vectors as columns; the returned cell has them as rows.
    """
    if isinstance(state, Mapping):
        fields = state
        cell = fields["cell"]
        cell = (cell if cell.ndim == 3 else cell.unsqueeze(0)).mT
    else:
        fields = {
            name: getattr(state, name)
            for name in ("positions", "atomic_numbers", "pbc", "system_idx")
        }
        cell = state.row_vector_cell
    positions = fields["positions"]
    system_idx = fields.get("system_idx")
    if system_idx is None:
        system_idx = torch.zeros(positions.shape[0], dtype=torch.int64, device=positions.device)
    return positions, fields["atomic_numbers"], cell, fields["pbc"], system_idx


def _pbc_per_system(pbc: Any, n_systems: int, device: torch.device) -> torch.Tensor:
    """Periodicity (B, 3) bool from TorchSim's ``pbc``: a bool (0.3), (3,) or (B, 3) tensor."""
    flags = torch.as_tensor(pbc, dtype=torch.bool, device=device)
    if flags.ndim == 0:
        flags = flags.expand(3)
    # Contiguous, not an expanded view: vesin-torch 0.6.2 reads the three flags of a
    # structure from memory ignoring strides, and would see other bytes as flags.
    return flags.expand(n_systems, 3).contiguous()
