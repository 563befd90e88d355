"""The deployable student file (``RUN/model/student.pt``): weights plus plain-data metadata.

The file is a dictionary of tensors and plain Python values, so it loads with
``torch.load(..., weights_only=True)``: a student file from elsewhere never executes code.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import ase.data
import torch

import mlff_distiller
from mlff_distiller.atomic import atomic_path
from mlff_distiller.models import PaiNN

FORMAT = "mlff-distiller-student/1"
_FORMAT_FAMILY = FORMAT.split("/")[0] + "/"
_FIX = (
    "give the model/student.pt of a run directory that finished training (`mlff-distill "
    "train` writes it again from the checkpoints)"
)
UNITS = {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å³ (ASE sign)"}


def check_elements(numbers: Iterable[int], elements: set[int] | None, where: str) -> None:
    """Refuse atomic numbers outside the student's training elements (``None``: any).

    Raises
    ------
    ValueError
        Naming ``where`` (the structure or state) and the unseen elements.
    """
    if not elements:
        return
    unseen = {int(z) for z in numbers} - elements
    if unseen:
        symbols = ", ".join(ase.data.chemical_symbols[z] for z in sorted(unseen))
        raise ValueError(
            f"{where}: the student was never trained on {symbols}; distil a student on data "
            "that contains these elements"
        )


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


class StudentFileError(ValueError):
    """A student file that is truncated, corrupted or of another format; names the file."""


class UnsafeStudentFileError(StudentFileError, pickle.UnpicklingError):
    """A file that would run code when loaded; refused without running it."""


def load_student(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[PaiNN, dict[str, Any]]:
    """Load a student from a run directory or a ``student.pt`` file.

    Returns
    -------
    tuple
        The model in eval mode on ``device`` and its metadata (elements, cutoff, teacher...).

    Raises
    ------
    FileNotFoundError
        If there is no student file.
    StudentFileError
        A ``ValueError`` naming the file when it is truncated, corrupted, of another format
        (TorchScript, a plain checkpoint...) or of another version; an
        :class:`UnsafeStudentFileError` when it would run code on loading.
    """
    path = student_path(path)
    try:
        with warnings.catch_warnings():
            # torch's warnings on foreign files (TorchScript, pickle protocols) precede the
            # one clear error raised here.
            warnings.filterwarnings("ignore", ".*(TorchScript archive|pickle protocol)")
            payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch fails in many ways on files that are not its own
        reason = load_error_reason(exc)
        if isinstance(exc, pickle.UnpicklingError) and "GLOBAL" in reason:
            raise UnsafeStudentFileError(
                f"{path} was refused: loading it would run code or build objects a student "
                f"file never holds ({reason}); {_FIX}"
            ) from None
        raise StudentFileError(
            f"{path} is not a readable student file: {_describe(path, reason)}; {_FIX}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        if isinstance(found, str) and found.startswith(_FORMAT_FAMILY):
            raise StudentFileError(
                f"{path} is a student file of format {found!r}, which this version of "
                f"mlff-distiller (format {FORMAT!r}) cannot read: use the version that wrote it"
            )
        raise StudentFileError(
            f"{path}: not an mlff-distiller student file (expected {FORMAT}); {_FIX}"
        )
    if payload.get("architecture") != PaiNN.__name__:
        raise StudentFileError(f"{path}: unknown architecture {payload.get('architecture')!r}")
    try:
        # Built in the saved dtype: load_state_dict would cast a float64 student to float32.
        dtype = payload["state_dict"]["scale"].dtype
        model = PaiNN(**payload["hyperparameters"]).to(dtype)
        model.load_state_dict(payload["state_dict"])
        metadata = dict(payload["metadata"])
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise StudentFileError(
            f"{path} is a corrupted student file ({type(exc).__name__}: {_first_line(exc)}); {_FIX}"
        ) from None
    return model.to(device).eval(), metadata


def load_error_reason(exc: BaseException) -> str:
    """The line of an error of ``torch.load`` that says what is wrong with the file."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported operand" in line:
            return line
    # torch's first sentence names the problem; the rest is generic advice.
    return lines[0].split(". ")[0][:160] if lines else type(exc).__name__


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0][:160] if lines else "") or type(exc).__name__


def _describe(path: Path, reason: str) -> str:
    """What a file that torch cannot load is, as far as its first bytes tell."""
    with path.open("rb") as f:
        head = f.read(8)
    if not head:
        return "it is empty"
    if head.startswith(b"\x89HDF"):
        return "it is an HDF5 file (a dataset or shard?), not a student"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            names = []
        if any(name.endswith("constants.pkl") or "/code/" in name for name in names):
            return "it is a TorchScript export: load it with torch.jit.load, not as a student"
        if any(name.endswith(".json") and "archive_format" in name for name in names):
            return "it is an AOTInductor package: load it with torch._inductor.aoti_load_package"
    if head.startswith(b"PK") or "zip archive" in reason:
        return f"it is truncated or corrupted ({reason})"
    return f"it is not a torch file of this project ({reason})"
