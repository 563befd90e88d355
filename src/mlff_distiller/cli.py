"""``mlff-distill``: one verb per stage, ``run`` for all of them, and ``export``.

Every stage verb takes a config file (or a run directory, whose ``config.yaml`` is used) and any
number of ``key.path=value`` overrides, e.g.::

    mlff-distill run configs/quickstart.yaml training.epochs=5 run_dir=runs/try
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mlff_distiller import __version__, pipeline
from mlff_distiller.config import Config, load_config
from mlff_distiller.structures.samplers import MDInstabilityError
from mlff_distiller.teachers.base import LabellingError

app = typer.Typer(
    help="Distil a large pretrained interatomic potential into a small, fast PaiNN student.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

ConfigArg = Annotated[
    Path, typer.Argument(help="Config YAML, or a run directory holding config.yaml.")
]
Overrides = Annotated[
    list[str] | None, typer.Argument(help="Overrides as key.path=value (YAML values).")
]
AcceptChanges = Annotated[
    bool,
    typer.Option(
        "--accept-changes",
        help="Continue a run directory whose stored config differs from this one.",
    ),
]


def _config(path: Path, overrides: list[str] | None) -> Config:
    if path.is_dir():
        path = path / "config.yaml"
    return load_config(path, overrides or [])


def _run_stages(
    path: Path, overrides: list[str] | None, stages: tuple[str, ...], accept: bool
) -> None:
    try:
        config = _config(path, overrides)
        pipeline.prepare_run_dir(config, accept_changes=accept)
        if config.threads is not None:
            import torch

            torch.set_num_threads(config.threads)
        pipeline.run(config, console, stages)
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]stopped[/]: everything finished so far is saved; run the same command "
            "again to continue"
        )
        raise typer.Exit(130) from None
    except (ValueError, FileNotFoundError, LabellingError, MDInstabilityError) as exc:
        err_console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(2) from None


def _print_version(value: bool) -> None:
    if value:
        console.print(f"mlff-distiller {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Distil a large pretrained interatomic potential into a small, fast PaiNN student."""


@app.command()
def run(config: ConfigArg, overrides: Overrides = None, accept_changes: AcceptChanges = False):
    """Run every stage that is not done yet (generate, label, train, evaluate)."""
    _run_stages(config, overrides, pipeline.STAGES, accept_changes)


@app.command()
def generate(config: ConfigArg, overrides: Overrides = None, accept_changes: AcceptChanges = False):
    """Build the structures: molecules and crystals, rattled and teacher-MD frames."""
    _run_stages(config, overrides, ("generate",), accept_changes)


@app.command()
def label(config: ConfigArg, overrides: Overrides = None, accept_changes: AcceptChanges = False):
    """Label the structures with the teacher (resumable shards) and pack the dataset."""
    _run_stages(config, overrides, ("label",), accept_changes)


@app.command()
def train(config: ConfigArg, overrides: Overrides = None, accept_changes: AcceptChanges = False):
    """Train the student on the teacher's labels (resumes from the last checkpoint)."""
    _run_stages(config, overrides, ("train",), accept_changes)


@app.command()
def evaluate(config: ConfigArg, overrides: Overrides = None, accept_changes: AcceptChanges = False):
    """Score the student against the teacher on held-out systems; print the table."""
    _run_stages(config, overrides, ("evaluate",), accept_changes)


class ExportFormat(str, Enum):
    """Formats of ``mlff-distill export``."""

    torchscript = "torchscript"
    aoti = "aoti"


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run directory, or a student.pt file.")],
    format_: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            help="torchscript: one portable file for any device. aoti: compiled ahead of time "
            "for this CPU with AOTInductor (faster; about a minute to build).",
        ),
    ] = ExportFormat.torchscript,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write; by default beside the student: "
            "RUN/model/student.torchscript.pt (or student.aoti.pt2).",
        ),
    ] = None,
):
    """Write the student as one self-contained file that loads without this package."""
    from mlff_distiller.deploy.export import export_student

    try:
        path = export_student(run, output, format_.value)
    except (ValueError, FileNotFoundError) as exc:
        err_console.print(f"[red]error[/]: {exc}")
        raise typer.Exit(2) from None
    except RuntimeError as exc:
        if format_ is not ExportFormat.aoti:
            raise
        # AOTInductor needs a working C++ compiler, and torch.export may refuse a torch.
        err_console.print(f"[red]error[/]: exporting {run} as {format_.value} failed: {exc}")
        raise typer.Exit(1) from None
    console.print(f"wrote {path} ({_file_size(path)})")


def _file_size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
