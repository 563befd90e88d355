"""SevenNet-0 (``sevenn``, weights bundled in the wheel) as a teacher.

Its ASE calculator already returns stress in eV/Å³ with ASE's sign (checked against a finite
difference of the energy under strain in the tests), so the universal adapter is used as is.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from mlff_distiller.teachers.ase import ASECalculatorTeacher

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


def sevennet0_teacher(device: str = "cpu") -> ASECalculatorTeacher:
    """SevenNet-0 through ``sevenn.calculator.SevenNetCalculator`` on ``device``.

    The supported elements and the cutoff come from the checkpoint's own configuration.
    """
    import sevenn
    from sevenn.calculator import SevenNetCalculator

    path = sevennet0_checkpoint_path()
    with warnings.catch_warnings():
        # Emitted on every load on machines without cuEquivariance/FlashTP; not actionable.
        warnings.filterwarnings("ignore", message="No tensor product accelerator")
        calc = SevenNetCalculator(str(path), device=device)
    return ASECalculatorTeacher(
        calc,
        name=NAME,
        version=f"sevenn-{sevenn.__version__}/SevenNet-0_{_CHECKPOINT_TAG}",
        elements=calc.type_map.keys(),
        cutoff=float(calc.cutoff),
    )
