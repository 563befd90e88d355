"""The deployable student file (``RUN/model/student.pt``): weights plus plain-data metadata.

The file is a dictionary of tensors and plain Python values, so it loads with
``torch.load(..., weights_only=True)``: a student file from elsewhere never executes code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import mlff_distiller
from mlff_distiller.atomic import atomic_path
from mlff_distiller.models import PaiNN

FORMAT = "mlff-distiller-student/1"
UNITS = {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å³ (ASE sign)"}


def save_student(path: str | Path, model: PaiNN, metadata: dict[str, Any]) -> None:
    """Write ``model`` and ``metadata`` (plain data: str, numbers, lists, dicts) atomically."""
    payload = {
        "format": FORMAT,
        "architecture": type(model).__name__,
        "hyperparameters": dict(model.hyperparameters),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": {
            **metadata,
            "units": UNITS,
            "cutoff": float(model.hyperparameters["cutoff"]),
            "mlff_distiller_version": mlff_distiller.__version__,
        },
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def student_path(path: str | Path) -> Path:
    """The student file of a run directory, or ``path`` itself if it is a file."""
    path = Path(path)
    candidate = path / "model" / "student.pt" if path.is_dir() else path
    if not candidate.is_file():
        raise FileNotFoundError(
            f"{candidate}: no trained student (run `mlff-distill train` on this run directory)"
        )
    return candidate


def load_student(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[PaiNN, dict[str, Any]]:
    """Load a student from a run directory or a ``student.pt`` file.

    Returns
    -------
    tuple
        The model in eval mode on ``device`` and its metadata (elements, cutoff, teacher...).
    """
    path = student_path(path)
    payload = torch.load(path, map_location=device, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not an mlff-distiller student file (expected {FORMAT})")
    if payload["architecture"] != PaiNN.__name__:
        raise ValueError(f"{path}: unknown architecture {payload['architecture']!r}")
    # Built in the saved dtype: load_state_dict would cast a float64 student to float32.
    dtype = payload["state_dict"]["scale"].dtype
    model = PaiNN(**payload["hyperparameters"]).to(dtype)
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), payload["metadata"]
