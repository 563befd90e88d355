"""SevenNet-0 (``sevenn``, weights bundled in the wheel) as a teacher, batched.

:class:`SevenNetTeacher` labels structures in batches: the network in ``sevenn``'s own batch
mode (``set_is_batch_data(True)``, as ``sevenn inference`` runs it) on one graph of many
structures, whose edges come from a neighbour list on the teacher's device (vesin-torch,
exact, all molecules of a batch in one call). Edge vectors are formed in float64 and the
network runs in float32, as in ``sevenn``'s ASE calculator, so per-structure energies, forces
and stresses equal the calculator's to float32 tolerance (tested). The same prediction is
offered to TorchSim (:meth:`SevenNetTeacher.torchsim_model`) for batched teacher MD; TorchSim's
own SevenNet wrapper is not used because the one of TorchSim 0.3 does not import with
``sevenn`` 0.13, and the one ``sevenn`` ships for TorchSim >= 0.4 does not exist for 0.3.

The ASE calculator (``sevenn.calculator.SevenNetCalculator``, built on first use) labels one
structure at a time when ``batch_atoms`` is ``None`` and drives ASE MD; it returns stress in
eV/Å³ with ASE's sign (checked against a finite difference of the energy under strain in the
tests).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ase
import torch
from ase.calculators.calculator import Calculator

from mlff_distiller.teachers.base import DEFAULT_BATCH_ATOMS, Labels
from mlff_distiller.teachers.batched import BatchedTeacher, split_labels, stack_structures

NAME = "7net-0"
#: Date tag of the SevenNet-0 weights that sevenn 0.13 resolves "7net-0" to.
_CHECKPOINT_TAG = "11Jul2024"


def sevennet0_checkpoint_path() -> Path:
    """Path of the SevenNet-0 checkpoint bundled inside the installed ``sevenn`` package.

    Returns
    -------
    Path
        The ``checkpoint_sevennet_0.pth`` file of the 11 Jul 2024 weights.

    Raises
    ------
    ImportError
        If ``sevenn`` is not installed.
    FileNotFoundError
        If the installed package lacks the checkpoint (nothing is downloaded).
    """
    try:
        from sevenn import _const
    except ImportError as exc:
        raise ImportError(
            "the '7net-0' teacher needs sevenn: pip install 'mlff-distiller[sevenn]'"
        ) from exc
    path = Path(_const.SEVENNET_0_11Jul2024)
    if not path.is_file():
        raise FileNotFoundError(
            f"the SevenNet-0 checkpoint is missing from the installed sevenn package: {path}. "
            "Reinstall it (pip install --force-reinstall sevenn==0.13.0)."
        )
    return path


class SevenNetTeacher(BatchedTeacher):
    """A SevenNet model as a batched teacher.

    Parameters
    ----------
    model
        The network (``sevenn.nn.sequential.AtomGraphSequential``); it is put in batch mode
        and evaluation mode on ``device``.
    make_calculator
        Builds the ASE calculator of the same model (on first use).
    device
        Torch device of the model.
    name, version
        Registry name and version string.
    batch_atoms
        Most atoms per model call (``None``: one structure at a time through the calculator).
    """

    def __init__(
        self,
        model: Any,
        make_calculator: Callable[[], Calculator],
        device: torch.device | str,
        name: str,
        version: str,
        batch_atoms: int | None = DEFAULT_BATCH_ATOMS,
    ) -> None:
        from mlff_distiller.deploy.neighbours import SkinNeighbourList

        super().__init__(
            make_calculator,
            name=name,
            version=version,
            elements=model.type_map.keys(),
            cutoff=float(model.cutoff),
            batch_atoms=batch_atoms,
        )
        self.device = torch.device(device)
        model.set_is_batch_data(True)
        self._model = model.to(self.device).eval()
        # Exact pairs within the cutoff at every call (no skin), as the calculator finds them.
        self._neighbours = SkinNeighbourList(float(model.cutoff), skin=0.0)
        self._torchsim_model: Any = None

    def predict(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        ptr: torch.Tensor,
        stress: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Energies, forces and stresses of ``B`` structures (``N`` atoms) in one model call.

        Parameters
        ----------
        positions
            (N, 3) Å, float64 for labels of the calculator's precision.
        numbers
            (N,) int64 atomic numbers.
        cell
            (B, 3, 3) Å, cell vectors as rows (any value for a non-periodic structure).
        pbc
            (B, 3) bool.
        ptr
            (B + 1,) int64: the atoms of structure ``b`` are ``ptr[b]:ptr[b + 1]``.
        stress
            Whether to return stress.

        Returns
        -------
        dict[str, torch.Tensor]
            Float64, detached, on the model's device: ``energy`` (B,) eV, ``forces`` (N, 3)
            eV/Å and, if ``stress``, ``stress`` (B, 3, 3) eV/Å³ with ASE's sign (meaningful
            only for structures periodic along all three directions).
        """
        from sevenn import _keys as keys
        from sevenn.atom_graph_data import AtomGraphData

        device = self.device
        positions = positions.to(device, torch.float64)
        numbers = numbers.to(device, torch.int64)
        pbc = pbc.to(device)
        cell = torch.where(pbc.any(dim=1).view(-1, 1, 1), cell.to(device, torch.float64), 0.0)
        ptr = ptr.to(device, torch.int64)
        n_atoms, n_structures = positions.shape[0], ptr.shape[0] - 1
        counts = ptr[1:] - ptr[:-1]
        batch = torch.repeat_interleave(
            torch.arange(n_structures, device=device), counts, output_size=n_atoms
        )
        edge_index, shifts, _ = self._neighbours(positions, cell, pbc, ptr)
        i, j = edge_index
        vectors = positions[j] - positions[i]
        vectors = vectors + torch.einsum("ek,ekl->el", shifts, cell.index_select(0, batch[i]))
        data = AtomGraphData(
            x=numbers,
            edge_index=edge_index,
            pos=positions.float(),
            atomic_numbers=numbers,
            edge_vec=vectors.float(),
            cell_volume=torch.linalg.det(cell).abs().float(),
            num_atoms=counts,
            batch=batch,
            ptr=ptr,
        )
        data[keys.INFO] = {}
        out = self._model(data)
        # No edge at all (isolated atoms): the network's autograd gives no forces.
        forces = out[keys.PRED_FORCE] if keys.PRED_FORCE in out else torch.zeros_like(positions)
        results = {
            "energy": out[keys.PRED_TOTAL_ENERGY].detach().double().reshape(n_structures),
            "forces": forces.detach().double(),
        }
        if stress:
            # sevenn's order xx yy zz xy yz zx, sign opposite to ASE's.
            xx, yy, zz, xy, yz, zx = out[keys.PRED_STRESS].detach().double().unbind(-1)
            full = torch.stack([xx, xy, zx, xy, yy, yz, zx, yz, zz], dim=-1)
            results["stress"] = -full.view(n_structures, 3, 3)
        return results

    def _predict_batch(self, structures: list[ase.Atoms]) -> list[Labels]:
        tensors = stack_structures(structures, self.device)
        stress = any(bool(atoms.pbc.all()) for atoms in structures)
        out = self.predict(*tensors, stress=stress)
        return split_labels(structures, out["energy"], out["forces"], out.get("stress"))

    def torchsim_model(self) -> Any:
        """The batched prediction as a TorchSim model (float64 states), or ``None``.

        ``None`` when TorchSim is not installed or :attr:`batch_atoms` is ``None``.
        """
        if self.batch_atoms is None:
            return None
        if self._torchsim_model is None:
            try:
                from mlff_distiller.teachers.torchsim import TeacherModel
            except ImportError:
                return None
            self._torchsim_model = TeacherModel(self.predict, self.device, self.elements, self.name)
        return self._torchsim_model


def sevennet0_teacher(
    device: str = "cpu", batch_atoms: int | None = DEFAULT_BATCH_ATOMS
) -> SevenNetTeacher:
    """SevenNet-0 on ``device``, labelling in batches of at most ``batch_atoms`` atoms.

    The supported elements and the cutoff come from the checkpoint's own configuration.
    """
    import sevenn
    from sevenn.util import load_checkpoint

    path = sevennet0_checkpoint_path()

    def make_calculator() -> Calculator:
        from sevenn.calculator import SevenNetCalculator

        with warnings.catch_warnings():
            # Emitted on every load on machines without cuEquivariance/FlashTP; not actionable.
            warnings.filterwarnings("ignore", message="No tensor product accelerator")
            return SevenNetCalculator(str(path), device=device)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No tensor product accelerator")
        model = load_checkpoint(str(path)).build_model()
    return SevenNetTeacher(
        model,
        make_calculator,
        device,
        name=NAME,
        version=f"sevenn-{sevenn.__version__}/SevenNet-0_{_CHECKPOINT_TAG}",
        batch_atoms=batch_atoms,
    )
