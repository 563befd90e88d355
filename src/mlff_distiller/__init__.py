"""mlff-distiller: distil a large pretrained interatomic potential into a small, fast student."""

__version__ = "0.1.0"
