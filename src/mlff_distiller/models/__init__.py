"""The student model and the one place its forces and stress are derived."""

from mlff_distiller.models.painn import PaiNN
from mlff_distiller.models.predict import predict

__all__ = ["PaiNN", "predict"]
