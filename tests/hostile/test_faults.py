"""Faults during writes (disk full, permission denied) and bugs: one message, nothing lost.

A full disk is injected at one write of every stage in turn (the temporary file half
written, then ``ENOSPC``), on one run directory: each command stops with exit code 2 and a
message naming the file, the file keeps its previous content, every other file stays
complete, and the next command goes on from there; in the end the run equals an
uninterrupted one. A folder that cannot be written and an unexpected exception (a bug) are
checked the same way.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mlff_distiller import pipeline
from mlff_distiller.cli import app

runner = CliRunner()

#: (file, which write of it in one command) for a fault in every stage, in pipeline order.
#: ``metrics.csv`` is hit at an epoch before the last: the trainer rewrites it only after an
#: epoch, so a failure at the last epoch's write would leave it one row short.
DISK_FULL = [
    ("config.yaml", 1),
    ("system-0002.extxyz", 1),
    ("shard-from-0000003.h5", 1),  # STAGED: the second shard of 3 frames
    ("dataset.h5", 1),
    ("best.ckpt", 1),
    ("last.ckpt", 2),
    ("metrics.csv", 1),
    ("student.pt", 1),
    ("parity.png", 1),
    ("metrics.json", 1),
    ("md.json", 1),
    ("index.html", 1),
]


def disk_full_at(monkeypatch: pytest.MonkeyPatch, name: str, count: int) -> dict:
    """Make the ``count``-th atomic write of a file ``name`` fail as on a full disk.

    The temporary file is left half written (the disk filled while writing), then the write
    fails before the rename. Returns what the target held before (``"before"``).
    """
    real_replace, seen, record = os.replace, [0], {}

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            seen[0] += 1
            if seen[0] == count:
                record["path"] = Path(dst)
                record["before"] = Path(dst).read_bytes() if Path(dst).exists() else None
                data = Path(src).read_bytes()
                Path(src).write_bytes(data[: len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    return record


def test_a_full_disk_in_every_stage_loses_nothing(tmp_path, hostile, keep_torch_threads):
    run = tmp_path / "run"
    config = hostile.write_config(tmp_path / "staged.yaml", run, base=hostile.STAGED)
    for name, count in DISK_FULL:
        with pytest.MonkeyPatch.context() as monkeypatch:
            record = disk_full_at(monkeypatch, name, count)
            result = runner.invoke(app, ["run", str(config)])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output
        assert f"cannot write {record['path']}: No space left on device" in result.output
        assert "free some disk space and run the same command again" in result.output
        after = record["path"].read_bytes() if record["path"].exists() else None
        assert after == record["before"], f"{name} changed"
        assert hostile.artefact_problems(run) == []
    resumed = runner.invoke(app, ["run", str(config)])
    assert resumed.exit_code == 0, resumed.output

    reference = tmp_path / "reference"
    config = hostile.write_config(tmp_path / "reference.yaml", reference, base=hostile.STAGED)
    uninterrupted = runner.invoke(app, ["run", str(config)])
    assert uninterrupted.exit_code == 0, uninterrupted.output
    hostile.assert_same_results(run, reference)


def test_an_unwritable_model_folder_keeps_the_training(tmp_path, hostile, keep_torch_threads):
    config = hostile.write_config(tmp_path / "small.yaml", tmp_path / "run")
    run = tmp_path / "run"
    (run / "model").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as monkeypatch, hostile.read_only(run / "model", monkeypatch):
        failed = runner.invoke(app, ["run", str(config)])
    assert failed.exit_code == 2, failed.output
    assert f"cannot write {run / 'model' / 'student.pt'}: Permission denied" in failed.output
    assert "make the directory writable" in failed.output
    assert list((run / "model").iterdir()) == []
    assert hostile.artefact_problems(run) == []

    again = runner.invoke(app, ["run", str(config)])
    assert again.exit_code == 0, again.output
    assert "resuming training after epoch 2" in again.output
    assert "epoch    1" not in again.output  # nothing trained twice
    assert (run / "model" / "student.pt").is_file()


def test_a_read_only_run_directory_is_left_as_it_was(tmp_path, finished_run, hostile):
    run = hostile.copy_run(finished_run, tmp_path / "run")
    (run / "report" / "metrics.json").unlink()  # evaluation would write
    before = hostile.snapshot(run)
    with pytest.MonkeyPatch.context() as monkeypatch, hostile.read_only(run, monkeypatch):
        result = runner.invoke(app, ["run", str(run), "training.epochs=3", "--accept-changes"])
    assert result.exit_code == 2, result.output
    assert f"cannot write {run / 'config.yaml'}: Permission denied" in result.output
    assert hostile.snapshot(run) == before


def test_a_bug_gives_a_short_message_and_a_logged_traceback(tmp_path, hostile, monkeypatch):
    def broken(config, console):
        raise ZeroDivisionError("a bug in training")

    monkeypatch.setitem(pipeline.STAGE_FUNCTIONS, "generate", broken)
    config = hostile.write_config(tmp_path / "small.yaml", tmp_path / "run")
    result = runner.invoke(app, ["generate", str(config)])
    assert result.exit_code == 1
    log = tmp_path / "run" / "logs" / "error.log"
    assert "unexpected error ZeroDivisionError: a bug in training" in result.output
    assert str(log) in result.output
    assert "Traceback" not in result.output
    text = log.read_text()
    assert "Traceback (most recent call last)" in text
    assert "ZeroDivisionError: a bug in training" in text
    assert hostile.artefact_problems(tmp_path / "run") == []
