"""Teacher names -> factories; packages of heavy teachers are imported only when asked for."""

from __future__ import annotations

from collections.abc import Callable

from mlff_distiller.teachers.base import Teacher


def _emt(device: str) -> Teacher:
    from mlff_distiller.teachers.emt import emt_teacher

    del device  # EMT is plain numpy
    return emt_teacher()


def _sevennet0(device: str) -> Teacher:
    from mlff_distiller.teachers.sevenn import sevennet0_teacher

    return sevennet0_teacher(device)


def _chgnet(device: str) -> Teacher:
    try:
        from mlff_distiller.teachers.chgnet import chgnet_teacher
    except ImportError as exc:
        raise ImportError(
            "the 'chgnet' teacher needs chgnet: pip install 'mlff-distiller[chgnet]'"
        ) from exc
    return chgnet_teacher(device)


#: Registry name -> factory taking a torch device name.
TEACHERS: dict[str, Callable[[str], Teacher]] = {
    "emt": _emt,
    "7net-0": _sevennet0,
    "chgnet": _chgnet,
}


def available_teachers() -> list[str]:
    """Registry names of all teachers, sorted."""
    return sorted(TEACHERS)


def get_teacher(name: str, device: str = "cpu") -> Teacher:
    """Build the teacher registered as ``name`` on ``device``.

    Parameters
    ----------
    name
        A registry name, see :func:`available_teachers`.
    device
        Torch device for teachers that run on torch (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

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
    return factory(device)
