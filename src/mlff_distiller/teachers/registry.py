"""Teacher names -> factories; packages of heavy teachers are imported only when asked for."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mlff_distiller.teachers.base import DEFAULT_BATCH_ATOMS, Teacher

#: Teachers whose weights come from a local file (``teacher.weights``), not their package.
WEIGHTS_FILE_TEACHERS = frozenset({"orb", "mace"})


def _emt(device: str, batch_atoms: int | None, weights: Path | None, model: str | None) -> Teacher:
    from mlff_distiller.teachers.emt import emt_teacher

    del device, batch_atoms, weights, model  # EMT is plain numpy, one structure at a time
    return emt_teacher()


def _sevennet0(
    device: str, batch_atoms: int | None, weights: Path | None, model: str | None
) -> Teacher:
    from mlff_distiller.teachers.sevenn import sevennet0_teacher

    del weights, model  # bundled in the wheel
    return sevennet0_teacher(device, batch_atoms)


def _chgnet(
    device: str, batch_atoms: int | None, weights: Path | None, model: str | None
) -> Teacher:
    del weights, model  # bundled in the wheel
    try:
        from mlff_distiller.teachers.chgnet import chgnet_teacher
    except ImportError as exc:
        raise ImportError(
            "the 'chgnet' teacher needs chgnet: pip install 'mlff-distiller[chgnet]'"
        ) from exc
    return chgnet_teacher(device, batch_atoms)


def _orb(device: str, batch_atoms: int | None, weights: Path | None, model: str | None) -> Teacher:
    try:
        from mlff_distiller.teachers.orb import orb_teacher
    except ImportError as exc:
        raise ImportError(
            "the 'orb' teacher needs orb-models: pip install 'mlff-distiller[orb]'"
        ) from exc
    if model is None:
        raise ValueError(
            "the 'orb' teacher needs teacher.model, the Orb architecture of the weights file "
            "(e.g. orb-v3-conservative-inf-omat)"
        )
    assert weights is not None  # checked by get_teacher
    return orb_teacher(weights, model, device, batch_atoms)


def _mace(device: str, batch_atoms: int | None, weights: Path | None, model: str | None) -> Teacher:
    try:
        from mlff_distiller.teachers.mace import mace_teacher
    except ImportError as exc:
        raise ImportError(
            "the 'mace' teacher needs mace-torch, which cannot be installed beside sevenn: "
            "pip install 'mlff-distiller[mace]' in an environment without the [teachers] extra"
        ) from exc
    assert weights is not None  # checked by get_teacher
    del model  # a MACE model file holds its own architecture
    return mace_teacher(weights, device, batch_atoms)


#: Registry name -> factory taking a torch device name, a batch budget in atoms (``None``:
#: one structure at a time; teachers that cannot batch ignore it), a local weights file and
#: an architecture name (used by the teachers of :data:`WEIGHTS_FILE_TEACHERS`).
TEACHERS: dict[str, Callable[[str, int | None, Path | None, str | None], Teacher]] = {
    "emt": _emt,
    "7net-0": _sevennet0,
    "chgnet": _chgnet,
    "orb": _orb,
    "mace": _mace,
}


def available_teachers() -> list[str]:
    """Registry names of all teachers, sorted."""
    return sorted(TEACHERS)


def get_teacher(
    name: str,
    device: str = "cpu",
    batch_atoms: int | None = DEFAULT_BATCH_ATOMS,
    weights: str | Path | None = None,
    model: str | None = None,
) -> Teacher:
    """Build the teacher registered as ``name`` on ``device``.

    Parameters
    ----------
    name
        A registry name, see :func:`available_teachers`.
    device
        Torch device for teachers that run on torch (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    batch_atoms
        Most atoms per model call of teachers that batch (``7net-0``, ``chgnet``, ``orb``,
        ``mace``); ``None`` labels one structure at a time through the teacher's ASE calculator.
    weights
        Local weights file of a teacher in :data:`WEIGHTS_FILE_TEACHERS` (``orb``, ``mace``);
        must be ``None`` for the others, whose weights ship with their package.
    model
        Architecture name of the weights (``orb``: a key of orb-models'
        ``ORB_PRETRAINED_MODELS``); ignored by the other teachers.

    Raises
    ------
    ValueError
        If ``name`` is not registered (the message lists the available names), or a weights
        file is missing for, or given to, a teacher that needs none.
    FileNotFoundError
        If ``weights`` is not a file.
    """
    factory = TEACHERS.get(name)
    if factory is None:
        raise ValueError(
            f"unknown teacher {name!r}; available teachers: {', '.join(available_teachers())}"
        )
    if name in WEIGHTS_FILE_TEACHERS:
        from mlff_distiller.teachers.weights import check_weights_file

        if weights is None:
            raise ValueError(
                f"the {name!r} teacher needs teacher.weights, a local weights file "
                "(nothing is downloaded); see the README, section 'Teachers'"
            )
        weights = check_weights_file(weights, name)
    elif weights is not None:
        raise ValueError(
            f"the {name!r} teacher uses the weights bundled with its package; remove "
            f"teacher.weights ({weights}) or choose one of {sorted(WEIGHTS_FILE_TEACHERS)}"
        )
    return factory(device, batch_atoms, weights, model)
