"""``python -m mlff_distiller``: the ``mlff-distill`` command, e.g. for ``torchrun -m``."""

from mlff_distiller.cli import app

if __name__ == "__main__":
    app(prog_name="mlff-distill")
