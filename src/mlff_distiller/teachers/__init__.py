"""Teachers: pretrained potentials that label structures (see :mod:`.base`)."""

from mlff_distiller.teachers.base import (
    LabellingError,
    Labels,
    Teacher,
    UnsupportedElementError,
)
from mlff_distiller.teachers.registry import available_teachers, get_teacher

__all__ = [
    "LabellingError",
    "Labels",
    "Teacher",
    "UnsupportedElementError",
    "available_teachers",
    "get_teacher",
]
