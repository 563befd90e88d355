"""mlff-distiller: distil a large pretrained interatomic potential into a small, fast student."""

__version__ = "0.1.0"

__all__ = ["__version__", "load_calculator"]


def __getattr__(name: str):  # lazy, so that `import mlff_distiller` stays light
    if name == "load_calculator":
        from mlff_distiller.deploy.calculator import load_calculator

        return load_calculator
    raise AttributeError(f"module 'mlff_distiller' has no attribute {name!r}")
