"""ASE calculator for a trained student: a drop-in replacement for the teacher in ASE MD."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ase
import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from mlff_distiller import keys
from mlff_distiller.deploy.artefact import load_student
from mlff_distiller.graph import from_atoms
from mlff_distiller.models import PaiNN, predict


class StudentCalculator(Calculator):
    """Energy, forces and (for fully periodic cells) stress from a student.

    ASE's base class discards the results whenever positions, cell, numbers or pbc change,
    so every call after a change recomputes; nothing is cached across structures.

    Parameters
    ----------
    model
        The student (eval mode).
    metadata
        Its metadata from :func:`mlff_distiller.deploy.artefact.load_student`.
    device
        Torch device the student runs on.
    """

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(
        self,
        model: PaiNN,
        metadata: dict[str, Any] | None = None,
        device: torch.device | str = "cpu",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.metadata = metadata or {}
        self.dtype = next(model.parameters()).dtype
        self.cutoff = float(model.hyperparameters["cutoff"])
        self.elements = set(self.metadata.get("elements", []))

    def calculate(
        self,
        atoms: ase.Atoms | None = None,
        properties: tuple[str, ...] = ("energy",),
        system_changes: tuple[str, ...] = all_changes,
    ) -> None:
        """Compute ``energy``, ``free_energy``, ``forces`` and, if periodic, ``stress``."""
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        unseen = set(atoms.numbers.tolist()) - self.elements if self.elements else set()
        if unseen:
            symbols = ", ".join(sorted(ase.data.chemical_symbols[z] for z in unseen))
            raise ValueError(
                f"{atoms.get_chemical_formula()}: the student was never trained on {symbols}; "
                "distil a student on data that contains these elements"
            )
        periodic = bool(np.all(atoms.pbc))
        graph = from_atoms(atoms, self.cutoff, self.dtype).to(self.device)
        out = predict(self.model, graph, forces=True, stress=periodic)
        energy = float(out[keys.ENERGY].sum())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out[keys.FORCES].detach().double().cpu().numpy(),
        }
        if periodic:
            stress = out[keys.STRESS][0].detach().double().cpu().numpy()
            self.results["stress"] = full_3x3_to_voigt_6_stress(stress)


def load_calculator(path: str | Path, device: torch.device | str = "cpu") -> StudentCalculator:
    """ASE calculator of the student in a run directory (or a ``student.pt`` file).

    Examples
    --------
    >>> from mlff_distiller import load_calculator
    >>> atoms.calc = load_calculator("runs/quickstart")  # doctest: +SKIP
    """
    model, metadata = load_student(path, device=device)
    return StudentCalculator(model, metadata, device=device)
