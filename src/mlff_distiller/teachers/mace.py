"""MACE (``mace-torch``) from a local model file as a teacher, batched.

Install with the ``[mace]`` extra, in an environment **without** the ``[teachers]`` or
``[sevenn]`` extras: mace-torch pins ``e3nn==0.4.4`` and sevenn 0.13 needs ``e3nn>=0.5``, so
pip cannot install both in one environment.

Nothing is downloaded: ``teacher.weights`` names a ``.model`` file, a whole MACE model saved
with ``torch.save`` (the format of the published MACE-MP-0, MACE-OFF and MACE-OMAT files and
of ``mace_run_train``'s output), which holds its own architecture, elements and cutoff. The
file is a pickle and is loaded with ``weights_only=False``: load only files you trust.

Labels are those of MACE's ASE calculator (``MACECalculator``; energy in eV, forces in eV/Å,
stress in eV/Å³ with ASE's sign, checked against a finite difference of the energy under
strain in the tests). :class:`MACETeacher` labels many structures in one model call: the
calculator's own graph construction per structure (``AtomicData.from_config``), joined with
``Batch.from_data_list``, which gives the calculator's labels to round-off (tested). A model of
several heads (multi-head fine-tunes) labels with its ``default`` head, as the calculator
chooses. The model runs in the dtype it was saved in.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import ase
import torch
from ase.calculators.calculator import Calculator

from mlff_distiller.teachers.base import DEFAULT_BATCH_ATOMS, Labels
from mlff_distiller.teachers.batched import BatchedTeacher, split_labels
from mlff_distiller.teachers.weights import check_weights_file, weights_tag

NAME = "mace"


class MACETeacher(BatchedTeacher):
    """A MACE model as a batched teacher.

    Parameters
    ----------
    calc
        ``mace.calculators.MACECalculator`` of one model (not a committee).
    name, version
        Registry name and version string.
    batch_atoms
        Most atoms per model call (``None``: one structure at a time through ``calc``).
    """

    def __init__(
        self,
        calc: Calculator,
        name: str,
        version: str,
        batch_atoms: int | None = DEFAULT_BATCH_ATOMS,
    ) -> None:
        (model,) = calc.models
        super().__init__(
            calc,
            name=name,
            version=version,
            elements=(int(z) for z in model.atomic_numbers),
            cutoff=float(calc.r_max),
            batch_atoms=batch_atoms,
        )
        self._model = model

    def _predict_batch(self, structures: list[ase.Atoms]) -> list[Labels]:
        from mace import data as mace_data
        from mace.tools import torch_geometric, torch_tools

        calc: Any = self.calculator()
        # The keys the calculator reads from atoms.info and atoms.arrays (charge, spin, ...).
        keys = mace_data.KeySpecification(
            info_keys=calc.info_keys, arrays_keys={**calc.arrays_keys, calc.charges_key: "charges"}
        )
        with torch_tools.default_dtype(calc.default_dtype):
            graphs = [
                mace_data.AtomicData.from_config(
                    mace_data.config_from_atoms(atoms, key_specification=keys, head_name=calc.head),
                    z_table=calc.z_table,
                    cutoff=calc.r_max,
                    heads=calc.available_heads,
                )
                for atoms in structures
            ]
        batch = torch_geometric.Batch.from_data_list(graphs).to(calc.device)
        stress = any(bool(atoms.pbc.all()) for atoms in structures)
        out = self._model(batch.to_dict(), compute_stress=stress, training=False)
        return split_labels(
            structures, out["energy"], out["forces"], out["stress"] if stress else None
        )


def load_mace_model(path: Path, device: str = "cpu") -> torch.nn.Module:
    """The MACE model saved whole (``torch.save``) in the local file ``path``.

    Raises
    ------
    ValueError
        If the file does not hold a whole MACE model (e.g. a bare state dict).
    """
    try:
        model = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise ValueError(
            f"cannot load the MACE model file {path}: {type(exc).__name__}: {exc}. "
            "teacher.weights must be a whole model saved with torch.save (a .model file)."
        ) from exc
    if not (isinstance(model, torch.nn.Module) and hasattr(model, "atomic_numbers")):
        raise ValueError(
            f"{path} holds a {type(model).__name__}, not a MACE model: teacher.weights must be "
            "a whole model saved with torch.save(model, path) (a .model file), not a state dict"
        )
    return model.eval()


def mace_teacher(
    weights: str | Path, device: str = "cpu", batch_atoms: int | None = DEFAULT_BATCH_ATOMS
) -> MACETeacher:
    """The MACE model of the local file ``weights`` on ``device``.

    The version string names mace-torch's version, the model class and the first 12 hex
    digits of the file's sha256, e.g. ``mace-torch-0.3.16/ScaleShiftMACE/sha256:1a2b3c4d5e6f``.

    Raises
    ------
    FileNotFoundError
        If ``weights`` is not a file.
    ValueError
        If the file does not hold a whole MACE model.
    """
    from importlib.metadata import version

    from mace.calculators import MACECalculator

    path = check_weights_file(weights, NAME)
    model = load_mace_model(path, device)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    mace_logger = logging.getLogger()
    level = mace_logger.level
    # MACECalculator logs its choice of head and dtype at INFO/WARNING on the root logger.
    with contextlib.ExitStack() as stack:
        mace_logger.setLevel(logging.ERROR)
        stack.callback(mace_logger.setLevel, level)
        calc = MACECalculator(models=model, device=device, default_dtype=dtype)
    return MACETeacher(
        calc,
        name=NAME,
        version=f"mace-torch-{version('mace-torch')}/{type(model).__name__}/{weights_tag(path)}",
        batch_atoms=batch_atoms,
    )
