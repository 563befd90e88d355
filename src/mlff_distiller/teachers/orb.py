"""Orb (``orb-models==0.5.5``) from a local weights file as a teacher, batched.

Nothing is downloaded: the user names one of Orb's pretrained architectures
(``teacher.model``, a key of ``orb_models.forcefield.pretrained.ORB_PRETRAINED_MODELS`` such
as ``orb-v3-conservative-inf-omat``) and a local file of its weights (``teacher.weights``, the
``.ckpt`` state dict Orb publishes). Orb's own builder of that name makes the network and loads
the file strictly, so a file of another architecture is an error. The builder sets torch's
global default dtype and float32 matmul precision; both are restored after loading.

Conservative models (``orb-v3-conservative-*``) give forces and stress as gradients of the
energy; direct models (``orb-v3-direct-*``, ``orb-v2``) predict them with separate heads, so
their forces are not exactly ``-dE/dx``: prefer a conservative model as a teacher.

Labels: energy in eV, forces in eV/Å and stress in eV/Å³ with ASE's sign, as Orb's ASE
calculator (``ORBCalculator``) returns them (the stress sign and Voigt order are checked
against a finite difference of the energy under strain in the tests). :class:`OrbTeacher`
labels many structures in one model call by batching Orb's per-structure graphs
(``batch_graphs``), which gives the calculator's labels to float32 tolerance (tested). Orb
does not support structures periodic along only some axes (a slab): such a structure is a
:class:`~mlff_distiller.teachers.base.LabellingError` naming it. OMol-trained models
(``*-omol``) need ``charge`` and ``spin`` in each structure's ``info``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ase
import torch
from ase.calculators.calculator import Calculator
from ase.stress import voigt_6_to_full_3x3_stress

from mlff_distiller.teachers.base import DEFAULT_BATCH_ATOMS, Labels
from mlff_distiller.teachers.batched import BatchedTeacher
from mlff_distiller.teachers.weights import check_weights_file, weights_tag

NAME = "orb"
#: Orb embeds atomic numbers as a one-hot vector of 118 classes (indices 0 to 117).
_ELEMENTS = range(1, 118)


class OrbTeacher(BatchedTeacher):
    """An Orb model as a batched teacher.

    Parameters
    ----------
    model
        The loaded network (``DirectForcefieldRegressor`` or
        ``ConservativeForcefieldRegressor``), in evaluation mode.
    make_calculator
        Builds Orb's ASE calculator of the same model (on first use).
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
        super().__init__(
            make_calculator,
            name=name,
            version=version,
            elements=_ELEMENTS,
            cutoff=float(model.system_config.radius),
            batch_atoms=batch_atoms,
        )
        self.device = torch.device(device)
        self._model = model
        self._dtype = next(model.parameters()).dtype
        # Which outputs are the labels, as Orb's calculator picks them.
        conservative = hasattr(model, "grad_forces_name")
        self._forces_key = model.grad_forces_name if conservative else "forces"
        self._stress_key = (
            (model.grad_stress_name if conservative else "stress") if model.has_stress else None
        )
        self._energy_key = "energy"

    def _predict_batch(self, structures: list[ase.Atoms]) -> list[Labels]:
        from orb_models.forcefield.atomic_system import ase_atoms_to_atom_graphs
        from orb_models.forcefield.base import batch_graphs

        conditioner = self._model.model.conditioner
        for atoms in structures:
            if conditioner is not None and not {"charge", "spin"} <= atoms.info.keys():
                raise ValueError("atoms.info must contain both 'charge' and 'spin'")
        graphs = [
            ase_atoms_to_atom_graphs(
                atoms,
                system_config=self._model.system_config,
                device=self.device,
                output_dtype=self._dtype,
                graph_construction_dtype=self._dtype,
            )
            for atoms in structures
        ]
        out = self._model.predict(batch_graphs(graphs).to(self.device))
        energies = out[self._energy_key].detach().double().cpu().numpy().reshape(-1)
        forces = out[self._forces_key].detach().double().cpu().numpy()
        stresses = None
        if self._stress_key is not None:
            stresses = out[self._stress_key].detach().double().cpu().numpy().reshape(-1, 6)
        labels = []
        start = 0
        for b, atoms in enumerate(structures):
            stop = start + len(atoms)
            stress = None
            if stresses is not None and atoms.pbc.all():
                stress = voigt_6_to_full_3x3_stress(stresses[b])
            labels.append(
                Labels(energy=float(energies[b]), forces=forces[start:stop].copy(), stress=stress)
            )
            start = stop
        return labels


def load_orb_model(architecture: str, weights: Path, device: str = "cpu") -> Any:
    """Orb's network ``architecture`` with the weights of a local file, for inference.

    Parameters
    ----------
    architecture
        A key of ``ORB_PRETRAINED_MODELS`` (e.g. ``orb-v3-conservative-inf-omat``).
    weights
        Local state-dict file of that architecture.
    device
        Torch device name.

    Raises
    ------
    ValueError
        If ``architecture`` is not one of Orb's (the message lists them), or the file does not
        hold the weights of that architecture.
    """
    from orb_models.forcefield.pretrained import ORB_PRETRAINED_MODELS

    builder = ORB_PRETRAINED_MODELS.get(architecture)
    if builder is None:
        raise ValueError(
            f"unknown Orb architecture teacher.model={architecture!r}; orb-models has: "
            f"{', '.join(sorted(ORB_PRETRAINED_MODELS))}. Set teacher.model to the name of "
            "the model whose weights teacher.weights holds."
        )
    dtype, matmul = torch.get_default_dtype(), torch.get_float32_matmul_precision()
    try:
        with warnings.catch_warnings():
            # "Setting global torch default dtype": undone below.
            warnings.filterwarnings("ignore", module="orb_models")
            return builder(
                weights_path=str(weights), device=device, precision="float32-highest", compile=False
            )
    except RuntimeError as exc:  # load_state_dict(strict=True) of another architecture
        raise ValueError(
            f"{weights} does not hold weights of Orb architecture {architecture!r}: {exc}. "
            "Set teacher.model to the architecture the file was trained as."
        ) from exc
    finally:
        torch.set_default_dtype(dtype)
        torch.set_float32_matmul_precision(matmul)


def orb_teacher(
    weights: str | Path,
    architecture: str,
    device: str = "cpu",
    batch_atoms: int | None = DEFAULT_BATCH_ATOMS,
) -> OrbTeacher:
    """Orb ``architecture`` with the weights of the local file ``weights`` on ``device``.

    The version string names orb-models' version, the architecture and the first
    12 hex digits of the file's sha256, e.g.
    ``orb-models-0.5.5/orb-v3-conservative-inf-omat/sha256:1a2b3c4d5e6f``.

    Raises
    ------
    FileNotFoundError
        If ``weights`` is not a file.
    ValueError
        If ``architecture`` is unknown or does not match the file.
    """
    from importlib.metadata import version

    path = check_weights_file(weights, NAME)
    model = load_orb_model(architecture, path, device)

    def make_calculator() -> Calculator:
        from orb_models.forcefield.calculator import ORBCalculator

        return ORBCalculator(model, device=device)

    return OrbTeacher(
        model,
        make_calculator,
        device,
        name=NAME,
        version=(f"orb-models-{version('orb-models')}/{architecture}/{weights_tag(path)}"),
        batch_atoms=batch_atoms,
    )
