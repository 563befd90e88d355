"""Teacher names -> factories; packages of heavy teachers are imported only when asked for."""

from __future__ import annotations

from collections.abc import Callable

from mlff_distiller.teachers.base import DEFAULT_BATCH_ATOMS, Teacher


def _emt(device: str, batch_atoms: int | None) -> Teacher:
    from mlff_distiller.teachers.emt import emt_teacher

    del device, batch_atoms  # EMT is plain numpy, one structure at a time
    return emt_teacher()


def _sevennet0(device: str, batch_atoms: int | None) -> Teacher:
    from mlff_distiller.teachers.sevenn import sevennet0_teacher

    return sevennet0_teacher(device, batch_atoms)


def _chgnet(device: str, batch_atoms: int | None) -> Teacher:
    try:
        from mlff_distiller.teachers.chgnet import chgnet_teacher
    except ImportError as exc:
        raise ImportError(
            "the 'chgnet' teacher needs chgnet: pip install 'mlff-distiller[chgnet]'"
        ) from exc
    return chgnet_teacher(device, batch_atoms)


#: Registry name -> factory taking a torch device name and a batch budget in atoms (``None``:
#: one structure at a time), which teachers that cannot batch ignore.
TEACHERS: dict[str, Callable[[str, int | None], Teacher]] = {
    "emt": _emt,
    "7net-0": _sevennet0,
    "chgnet": _chgnet,
}


def available_teachers() -> list[str]:
    """Registry names of all teachers, sorted."""
    return sorted(TEACHERS)


def get_teacher(
    name: str, device: str = "cpu", batch_atoms: int | None = DEFAULT_BATCH_ATOMS
) -> Teacher:
    """Build the teacher registered as ``name`` on ``device``.

    Parameters
    ----------
    name
        A registry name, see :func:`available_teachers`.
    device
        Torch device for teachers that run on torch (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    batch_atoms
        Most atoms per model call of teachers that batch (``7net-0``, ``chgnet``); ``None``
        labels one structure at a time through the teacher's ASE calculator.

    Raises
    ------
    ValueError
        If ``name`` is not registered (the message lists the available names).
    """
    factory = TEACHERS.get(name)
    if factory is None:
        raise ValueError(
            f"unknown teacher {name!r}; available teachers: {', '.join(available_teachers())}"
        )
    return factory(device, batch_atoms)
