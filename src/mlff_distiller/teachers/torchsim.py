"""A teacher's batched model as a TorchSim ``ModelInterface`` (batched teacher MD).

:class:`TeacherModel` wraps a teacher's tensor-level prediction (flat batched tensors, the
layout of :func:`mlff_distiller.teachers.batched.stack_structures`) so that TorchSim's
runners, integrators and optimizers, and :func:`mlff_distiller.structures.samplers.
batched_langevin_md`, drive the teacher on many systems at once. States of TorchSim 0.3 and
of 0.4 and later are read alike (:func:`mlff_distiller.deploy.torchsim.state_to_batch`).

The model declares float64: TorchSim builds states and integrates in float64, and the
teacher's network runs in its own precision inside (float32 for SevenNet-0), as its ASE
calculator does. Outputs follow TorchSim's conventions: ``energy`` (B,) eV, ``forces``
(N, 3) eV/Å, ``stress`` (B, 3, 3) eV/Å³ with ASE's sign, NaN for systems that are not
periodic along all three directions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from ase.data import chemical_symbols

try:
    from torch_sim.models.interface import ModelInterface
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"TorchSim could not be imported ({error}); install it with "
        "pip install 'mlff-distiller[torchsim]'"
    ) from error

from mlff_distiller.deploy.torchsim import state_to_batch

#: ``predict(positions, numbers, cell, pbc, ptr, stress)``: flat batched tensors on the
#: teacher's device (see :func:`~mlff_distiller.teachers.batched.stack_structures`) ->
#: ``energy`` (B,), ``forces`` (N, 3) and, if ``stress``, ``stress`` (B, 3, 3) float64.
Predict = Callable[..., dict[str, torch.Tensor]]


class TeacherModel(ModelInterface):
    """A teacher's batched prediction as a TorchSim model.

    Parameters
    ----------
    predict
        The teacher's tensor-level prediction (see :data:`Predict`).
    device
        Device the teacher runs on; states are moved there.
    elements
        Atomic numbers the teacher supports.
    name
        Registry name of the teacher (named in errors).
    compute_stress
        Whether :meth:`forward` returns stress (settable).
    """

    def __init__(
        self,
        predict: Predict,
        device: torch.device | str,
        elements: frozenset[int],
        name: str,
        *,
        compute_stress: bool = True,
    ) -> None:
        super().__init__()
        self._predict = predict
        self._device = torch.device(device)
        self._dtype = torch.float64
        self._compute_stress = bool(compute_stress)
        self._compute_forces = True
        self._memory_scales_with = "n_atoms_x_density"  # a radial cutoff
        self.elements = frozenset(elements)
        self.name = name
        self._checked_numbers: torch.Tensor | None = None
        self._checked_version = -1

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
            A TorchSim ``SimState`` (``N`` atoms, ``B`` systems) or TorchSim 0.3's dict of
            its fields. Not changed.
        **kwargs
            Ignored (TorchSim's interface allows model-specific options).

        Returns
        -------
        dict[str, torch.Tensor]
            Detached, in the state's dtype and on its device: ``energy`` (B,) eV, ``forces``
            (N, 3) eV/Å and, when :attr:`compute_stress`, ``stress`` (B, 3, 3) eV/Å³ (ASE's
            sign; NaN for systems not periodic along all three directions).

        Raises
        ------
        ValueError
            If the state holds an element the teacher does not support.
        """
        if isinstance(state, Mapping):
            numbers, positions = state["atomic_numbers"], state["positions"]
        else:
            numbers, positions = state.atomic_numbers, state.positions
        self._check_elements(numbers)
        out_dtype, out_device = positions.dtype, positions.device
        positions, numbers, cell, pbc, ptr = state_to_batch(state, self._device)
        out = self._predict(positions, numbers, cell, pbc, ptr, stress=self._compute_stress)
        results = {
            "energy": out["energy"].detach().to(out_device, out_dtype),
            "forces": out["forces"].detach().to(out_device, out_dtype),
        }
        if self._compute_stress:
            periodic = pbc.all(dim=1).view(-1, 1, 1)
            stress = torch.where(periodic, out["stress"].detach(), float("nan"))
            results["stress"] = stress.to(out_device, out_dtype)
        return results

    def _check_elements(self, numbers: torch.Tensor) -> None:
        """Refuse unsupported elements; once per atomic-numbers tensor (MD reuses it)."""
        if numbers is self._checked_numbers and numbers._version == self._checked_version:
            return
        unsupported = sorted(set(torch.unique(numbers).tolist()) - self.elements)
        if unsupported:
            symbols = ", ".join(chemical_symbols[int(z)] for z in unsupported)
            raise ValueError(
                f"the TorchSim state holds {symbols}, which teacher {self.name!r} does not "
                "support: choose a teacher that supports these elements, or remove these "
                "systems"
            )
        self._checked_numbers = numbers
        self._checked_version = numbers._version
