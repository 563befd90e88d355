"""Shared by the hostile-input, fault and fuzz tests: tiny EMT runs, and the check that every
file of a run directory is complete and loadable."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mlff_distiller.cli import app
from mlff_distiller.config import load_config
from mlff_distiller.data.dataset import load_dataset
from mlff_distiller.data.store import read_arrays
from mlff_distiller.deploy.artefact import load_student
from mlff_distiller.pipeline import check_checkpoint
from mlff_distiller.training.trainer import CSV_FIELDS

#: MD validation of a moment: one test system, tens of steps at one temperature.
QUICK_MD = {
    "n_systems": 1,
    "nve_student_steps": 20,
    "nve_teacher_steps": 10,
    "temperatures_K": [300],
    "nvt_student_steps": 20,
    "nvt_teacher_steps": 10,
    "on_policy_frames": 2,
}

#: A run of seconds: 5 molecules, EMT, a PaiNN of 8 features trained for 2 epochs.
SMALL = {
    "threads": 1,
    "structures": {
        "ase_molecules": ["CH4", "H2O", "NH3", "C2H6", "CH3OH"],
        "rattle": {"frames": 1, "stdev": 0.05},
        "md": {"frames": 0},
    },
    "teacher": {"name": "emt", "shard_size": 4},
    "data": {"val_fraction": 0.1, "test_fraction": 0.2},
    "model": {"n_features": 8, "n_blocks": 1, "n_rbf": 4, "cutoff": 3.0},
    "training": {"epochs": 2, "batch_size": 4},
    "validate_md": QUICK_MD,
}


#: A run whose every stage takes a moment (for kills and faults): 7 molecules of 5 frames
#: (the initial one, 2 rattled, 2 of EMT MD at 300 and 600 K), shards of 3, 6 epochs.
STAGED = {
    **SMALL,
    "structures": {
        "ase_molecules": ["CH4", "H2O", "NH3", "C2H6", "CH3OH", "HCN", "H2CO"],
        "rattle": {"frames": 2, "stdev": 0.05},
        "md": {"temperatures_K": [300, 600], "frames": 1, "interval": 15},
    },
    "teacher": {"name": "emt", "shard_size": 3},
    "training": {"epochs": 6, "batch_size": 4},
}


def write_config(path: Path, run_dir: Path, base: dict | None = None, **sections) -> Path:
    """Write ``base`` (default :data:`SMALL`) with ``run_dir`` and whole sections replaced."""
    config = {**(SMALL if base is None else base), "run_dir": str(run_dir), **sections}
    path.write_text(yaml.safe_dump(config))
    return path


# --- every file of a run directory is complete and loadable ------------------------------


def _png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert data.endswith(b"IEND\xaeB`\x82")


def _extxyz(path: Path) -> None:
    assert len(ase.io.read(path, index=":", format="extxyz")) >= 1


def _csv(path: Path) -> None:
    rows = list(csv.DictReader(path.open()))
    assert rows, "no rows"
    assert all(set(CSV_FIELDS) <= set(row) and all(row.values()) for row in rows)


def _json(path: Path) -> None:
    assert isinstance(json.loads(path.read_text()), dict)


def _html(path: Path) -> None:
    assert path.read_text(encoding="utf-8").rstrip().endswith("</html>")


def _markdown(path: Path) -> None:
    assert path.read_text(encoding="utf-8").startswith("# ")


def _nothing(path: Path) -> None:
    """Append-only logs (TensorBoard events): readers skip a truncated last record."""


#: File pattern (relative to the run directory) -> a function that raises unless it loads.
LOADERS: dict[str, Callable[[Path], object]] = {
    "config.yaml": load_config,
    "structures/system-*.extxyz": _extxyz,
    "data/shard-*.h5": read_arrays,
    "data/dataset.h5": load_dataset,
    "checkpoints/*.ckpt": check_checkpoint,
    "model/student.pt": load_student,
    "model/student.torchscript.pt": torch.jit.load,
    "logs/metrics.csv": _csv,
    "logs/events.out.tfevents.*": _nothing,
    "logs/error.log": lambda path: path.read_text(),
    "report/metrics.json": _json,
    "report/md.json": _json,
    "report/index.html": _html,
    "report/model_card.md": _markdown,
    "data/filters.json": _json,
    "report/data_report.json": _json,
    "report/*.png": _png,
}


def artefact_problems(
    run_dir: Path, planted: tuple[str, ...] = (), temporaries: bool = False
) -> list[str]:
    """Every file of ``run_dir`` that is not complete and loadable; empty when all are.

    ``planted`` are files a test damaged on purpose (relative paths); ``temporaries`` allows
    the temporary files a SIGKILL leaves (the next command removes them).
    """
    problems = []
    if not run_dir.exists():
        return problems
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        name = path.relative_to(run_dir).as_posix()
        if name in planted:
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            if not temporaries:
                problems.append(f"{name}: a temporary file was left behind")
            continue
        loader = next((f for pattern, f in LOADERS.items() if fnmatch(name, pattern)), None)
        if loader is None:
            problems.append(f"{name}: unknown artefact (teach LOADERS in {__file__} to load it)")
            continue
        try:
            loader(path)
        except Exception as exc:
            problems.append(f"{name}: {type(exc).__name__}: {exc}")
    return problems


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` and its content."""
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def assert_same_results(run: Path, reference: Path) -> None:
    """The data, training history, student and metrics of two runs are equal, bit for bit."""
    structures = sorted(p.name for p in (reference / "structures").iterdir())
    assert sorted(p.name for p in (run / "structures").iterdir()) == structures
    for name in structures:
        assert (run / "structures" / name).read_bytes() == (
            reference / "structures" / name
        ).read_bytes(), name
    ours, theirs = (
        read_arrays(run / "data" / "dataset.h5"),
        read_arrays(reference / "data" / "dataset.h5"),
    )
    assert ours[1] == theirs[1]
    assert ours[0].keys() == theirs[0].keys()
    for key, value in theirs[0].items():
        assert (ours[0][key] == value).all(), key

    def history(path: Path) -> tuple[list[dict], dict]:
        state = torch.load(path, map_location="cpu", weights_only=True)
        rows = [{k: v for k, v in row.items() if k != "seconds"} for row in state["history"]]
        return rows, state["model"]

    ours_rows, ours_model = history(run / "checkpoints" / "last.ckpt")
    ref_rows, ref_model = history(reference / "checkpoints" / "last.ckpt")
    # Every epoch once, with the same losses: training resumed where it stopped. (NaN, where
    # a quantity is absent, equals NaN here.)
    np.testing.assert_equal(ours_rows, ref_rows)
    assert all(torch.equal(ours_model[k], v) for k, v in ref_model.items())
    student, reference_student = (
        torch.load(r / "model" / "student.pt", weights_only=True) for r in (run, reference)
    )
    np.testing.assert_equal(student["metadata"], reference_student["metadata"])
    for key, value in reference_student["state_dict"].items():
        assert torch.equal(student["state_dict"][key], value), key
    np.testing.assert_equal(
        json.loads((run / "report" / "metrics.json").read_text()),
        json.loads((reference / "report" / "metrics.json").read_text()),
    )

    def csv_rows(path: Path) -> list[dict]:
        return [
            {k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(path.open())
        ]

    metrics_csv = Path("logs") / "metrics.csv"
    assert csv_rows(run / metrics_csv) == csv_rows(reference / metrics_csv)


# --- runs -------------------------------------------------------------------------------


@pytest.fixture
def keep_torch_threads() -> Iterator[None]:
    """In-process runs set torch's thread count from the config; give it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A run directory of :data:`SMALL` where every stage is done (copy it before changing)."""
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("finished")
    config = write_config(root / "small.yaml", root / "run")
    result = CliRunner().invoke(app, ["run", str(config)])
    torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return root / "run"


@contextmanager
def read_only(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make ``directory`` and everything under it unwritable.

    chmod does not stop root (CI runs tests as root): there, every way the project creates,
    renames or deletes files (``os.open``, ``os.mkdir``, ``os.replace``, ``os.unlink``) is
    refused with EACCES inside ``directory``, as a read-only mount would.
    """
    directory = directory.resolve()
    if os.geteuid() != 0:
        folders = [directory, *(p for p in directory.rglob("*") if p.is_dir())]
        modes = {p: p.stat().st_mode for p in folders}
        for p in folders:
            p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                p.chmod(mode)
        return

    def inside(path) -> bool:
        return Path(os.path.abspath(os.fspath(path))).is_relative_to(directory)

    def refuse(path):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))

    real_open, real_mkdir = os.open, os.mkdir
    real_replace, real_unlink = os.replace, os.unlink

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and inside(path):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if inside(path):
            if Path(path).is_dir():
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    def fake_replace(src, dst, *args, **kwargs):
        if inside(dst):
            refuse(dst)
        return real_replace(src, dst, *args, **kwargs)

    def fake_unlink(path, *args, **kwargs):
        if inside(path):
            refuse(path)
        return real_unlink(path, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(os, "open", fake_open)
        patch.setattr(os, "mkdir", fake_mkdir)
        patch.setattr(os, "replace", fake_replace)
        patch.setattr(os, "unlink", fake_unlink)
        yield


def copy_run(source: Path, destination: Path) -> Path:
    """A copy of a run directory (``mlff-distill`` uses the directory it is given)."""
    shutil.copytree(source, destination)
    return destination


class Helpers:
    """The helpers of this file, for test modules (which cannot import a conftest)."""

    SMALL = SMALL
    STAGED = STAGED
    write_config = staticmethod(write_config)
    artefact_problems = staticmethod(artefact_problems)
    snapshot = staticmethod(snapshot)
    read_only = staticmethod(read_only)
    copy_run = staticmethod(copy_run)
    assert_same_results = staticmethod(assert_same_results)


@pytest.fixture(scope="session")
def hostile() -> type[Helpers]:
    """:class:`Helpers`."""
    return Helpers
