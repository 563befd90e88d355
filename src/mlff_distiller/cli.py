"""``mlff-distill``: one verb per stage, ``run`` for all of them, and ``export``.

Every stage verb takes a config file (or a run directory, whose ``config.yaml`` is used) and any
number of ``key.path=value`` overrides, e.g.::

    mlff-distill run configs/quickstart.yaml training.epochs=5 run_dir=runs/try

Every command has one error path. A failure the user can fix (a bad config, input file or run
directory, a full disk) prints one message naming the culprit and the fix, with exit code 2.
Anything else is a bug: a short message says where the full traceback was written
(``RUN/logs/error.log``) and the exit code is 1. Ctrl-C exits with 130; work finished so far
is kept in every case.

``run``, ``generate``, ``label`` and ``train`` take ``--workers N``: the same command in N
processes of this machine (:func:`mlff_distiller.training.distributed.launch`); under
``torchrun`` every process prefixes its errors with its rank.
"""

from __future__ import annotations

import datetime
import sys
import tempfile
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mlff_distiller import __version__, pipeline
from mlff_distiller.atomic import WriteError, write_text
from mlff_distiller.config import Config, ConfigError, load_config
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
Workers = Annotated[
    int,
    typer.Option(
        "--workers",
        min=1,
        help="Processes to start on this machine (torch.distributed: gloo on CPUs, NCCL and "
        "a GPU each on GPUs): generate and label share their work out, train is data-parallel.",
    ),
]


#: Failures a user can cause and fix: one message, exit code 2. ``OSError`` covers missing
#: and unreadable files, permissions and full disks; ``ValueError`` every bad value or file.
USER_ERRORS = (ValueError, OSError, LabellingError, MDInstabilityError)


def _config(path: Path, overrides: list[str] | None) -> Config:
    overrides = list(overrides or [])
    if not path.is_dir():
        return load_config(path, overrides)
    config = load_config(path / "config.yaml", overrides)
    if any(o.split("=", 1)[0].strip() == "run_dir" for o in overrides):
        return config
    # A run directory is the one named, even where its config says another (it was moved).
    return config.model_copy(update={"run_dir": path})


@dataclass
class _ErrorLog:
    """Where an unexpected error's traceback goes: ``RUN/logs/error.log`` once RUN is known."""

    run_dir: Path | None = None


@contextmanager
def _one_error_path(run_dir: Path | None = None) -> Iterator[_ErrorLog]:
    """Turn every failure into one message and an exit code (module docstring)."""
    from mlff_distiller.training.distributed import Distributed

    log = _ErrorLog(run_dir)
    # Under torchrun each process says which one it is; only process 0 says it stopped.
    dist = Distributed.from_env()
    rank = f"rank {dist.rank}: " if dist.world_size > 1 else ""
    try:
        yield log
    except KeyboardInterrupt:
        if dist.is_main:
            err_console.print(
                f"{rank}[yellow]stopped[/]: everything finished so far is saved; run the same "
                "command again to continue"
            )
        raise typer.Exit(130) from None
    except typer.Exit:
        raise
    except USER_ERRORS as exc:
        err_console.print(f"{rank}[red]error[/]: {_escape(_user_message(exc))}", highlight=False)
        raise typer.Exit(2) from None
    except Exception as exc:
        path = _write_traceback(exc, log.run_dir)
        where = f"the full traceback is in {path}" if path else "no log could be written"
        err_console.print(
            f"{rank}[red]unexpected error[/] {type(exc).__name__}: {_shorten(str(exc))}\n"
            f"This is a bug in mlff-distiller, not in your input; {where}. Work finished "
            "so far is saved: after a fix, the same command continues.",
            highlight=False,
        )
        raise typer.Exit(1) from None


def _user_message(exc: BaseException) -> str:
    # The OS's own errors read "[Errno 13] Permission denied: 'x'": the file first is clearer.
    if (
        isinstance(exc, OSError)
        and not isinstance(exc, WriteError)
        and exc.filename is not None
        and exc.strerror
    ):
        return f"{exc.filename}: {exc.strerror}"
    return str(exc)


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _shorten(text: str, limit: int = 300) -> str:
    text = _escape(" ".join(text.split()))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _write_traceback(exc: BaseException, run_dir: Path | None) -> Path | None:
    """Write the traceback of ``exc`` to RUN/logs/error.log (else a temporary file)."""
    text = (
        f"{datetime.datetime.now(datetime.timezone.utc).isoformat()}  mlff-distiller "
        f"{__version__}\n$ {' '.join(sys.argv)}\n\n"
        + "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    )
    candidates = [Path(tempfile.gettempdir()) / "mlff-distill-error.log"]
    if run_dir is not None and run_dir.is_dir():
        candidates.insert(0, run_dir / "logs" / "error.log")
    for path in candidates:
        try:
            write_text(path, text)
        except OSError:
            continue
        return path
    return None


def _run_stages(
    path: Path,
    overrides: list[str] | None,
    stages: tuple[str, ...],
    accept: bool,
    workers: int = 1,
) -> None:
    from mlff_distiller.training.distributed import Distributed, exit_with_launcher

    with _one_error_path() as log:
        exit_with_launcher()
        config = _config(path, overrides)
        log.run_dir = Path(config.run_dir)
        dist = Distributed.from_env()
        if dist.is_main:  # the others wait for it (pipeline.run)
            pipeline.prepare_run_dir(config, accept_changes=accept)
        if workers > 1:
            if dist.world_size > 1:
                raise ConfigError("--workers starts its own processes: leave it out under torchrun")
            _launch(workers, config, [str(path), *(overrides or [])], stages, accept)
            return
        if config.threads is not None:
            import torch

            torch.set_num_threads(config.threads)
        pipeline.run(config, console, stages)


def _launch(
    workers: int, config: Config, arguments: list[str], stages: tuple[str, ...], accept: bool
) -> None:
    """Run the command (``CONFIG [overrides]`` = ``arguments``) in ``workers`` processes."""
    import torch

    from mlff_distiller.training.distributed import WorkerError, launch

    devices = set()
    if {"generate", "label"} & set(stages):
        devices.add(config.teacher.device)
    if "train" in stages:
        devices.add(config.training.device)
    gpus = torch.cuda.device_count()
    if "cuda" in devices and workers > gpus:
        raise ConfigError(
            f"--workers {workers} gives each process a GPU of its own (device cuda), but this "
            f"machine has {gpus}: use --workers {gpus} or fewer, or the CPU (device cpu)"
        )
    verb = "run" if stages == pipeline.STAGES else stages[0]
    try:
        launch(workers, [verb, *arguments, *(["--accept-changes"] if accept else [])])
    except WorkerError as exc:
        err_console.print(f"[red]error[/]: {_escape(str(exc))}", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None  # process 0 said that it stopped


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
def run(
    config: ConfigArg,
    overrides: Overrides = None,
    accept_changes: AcceptChanges = False,
    workers: Workers = 1,
):
    """Run every stage that is not done yet, from generate to report."""
    _run_stages(config, overrides, pipeline.STAGES, accept_changes, workers)


@app.command()
def generate(
    config: ConfigArg,
    overrides: Overrides = None,
    accept_changes: AcceptChanges = False,
    workers: Workers = 1,
):
    """Build the structures: molecules and crystals, rattled and teacher-MD frames."""
    _run_stages(config, overrides, ("generate",), accept_changes, workers)


@app.command()
def label(
    config: ConfigArg,
    overrides: Overrides = None,
    accept_changes: AcceptChanges = False,
    workers: Workers = 1,
):
    """Label the structures with the teacher (resumable shards) and pack the dataset."""
    _run_stages(config, overrides, ("label",), accept_changes, workers)


@app.command("data-report")
def data_report(
    config: ConfigArg, overrides: Overrides = None, accept_changes: AcceptChanges = False
):
    """Report the labelled set: elements, sources, histograms (report/data/), warnings."""
    _run_stages(config, overrides, ("data-report",), accept_changes)


class DataSplit(str, Enum):
    """Splits ``mlff-distill export-data`` writes."""

    train = "train"
    val = "val"
    test = "test"
    all = "all"


@app.command("export-data")
def export_data(
    run: Annotated[Path, typer.Argument(help="Run directory (its data/dataset.h5 is read).")],
    output: Annotated[Path, typer.Argument(help="The extxyz file to write.")],
    split: Annotated[
        DataSplit, typer.Option("--split", help="Which structures: one split, or all.")
    ] = DataSplit.all,
):
    """Write the labelled set as extxyz with teacher_* keys (for graph-pes, MACE, nequip)."""
    from mlff_distiller.data.dataset import load_dataset
    from mlff_distiller.data.export import export_extxyz

    with _one_error_path(run if run.is_dir() else None):
        if not run.is_dir():
            raise FileNotFoundError(f"{run} is not a run directory: give the run_dir of a run")
        dataset = load_dataset(run / "data" / "dataset.h5")
        count = export_extxyz(dataset, output, split.value)
    console.print(f"wrote {output} ({count} structures, split {split.value})")


@app.command()
def train(
    config: ConfigArg,
    overrides: Overrides = None,
    accept_changes: AcceptChanges = False,
    workers: Workers = 1,
):
    """Train the student on the teacher's labels (resumes from the last checkpoint)."""
    _run_stages(config, overrides, ("train",), accept_changes, workers)


@app.command()
def evaluate(config: ConfigArg, overrides: Overrides = None, accept_changes: AcceptChanges = False):
    """Score the student against the teacher on held-out systems; print the table."""
    _run_stages(config, overrides, ("evaluate",), accept_changes)


@app.command("validate-md")
def validate_md(
    config: ConfigArg, overrides: Overrides = None, accept_changes: AcceptChanges = False
):
    """MD of the student beside the teacher on held-out systems; verdicts in report/md.json."""
    _run_stages(config, overrides, ("validate-md",), accept_changes)


@app.command()
def report(config: ConfigArg, overrides: Overrides = None, accept_changes: AcceptChanges = False):
    """Write report/index.html (one self-contained page) and report/model_card.md."""
    _run_stages(config, overrides, ("report",), accept_changes)


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

    with _one_error_path(run if run.is_dir() else None):
        try:
            path = export_student(run, output, format_.value)
        except RuntimeError as exc:
            if format_ is not ExportFormat.aoti:
                raise
            # AOTInductor needs a working C++ compiler, and torch.export may refuse a torch.
            err_console.print(
                f"[red]error[/]: exporting {run} as {format_.value} failed: {_shorten(str(exc))}"
            )
            raise typer.Exit(1) from None
    console.print(f"wrote {path} ({_file_size(path)})")


def _file_size(path: Path) -> str:
    size = path.stat().st_size
    return f"{size / 1e6:.1f} MB" if size >= 1e6 else f"{size / 1e3:.0f} kB"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
