import errno
import json
import os
import subprocess
import sys

import pytest

from mlff_distiller.atomic import WriteError, atomic_path, remove_stale_temporaries, write_json


def test_failed_write_leaves_nothing_and_keeps_old_file(tmp_path):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})

    def killed_mid_write():
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        killed_mid_write()
    assert path.read_text().strip().startswith("{")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    write_json(path, {"a": 1})

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src))

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(WriteError) as info:
        write_json(path, {"a": 2})
    assert str(info.value).startswith(f"cannot write {path}: No space left on device; free")
    assert info.value.errno == errno.ENOSPC
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_file_where_a_folder_must_be(tmp_path):
    (tmp_path / "data").write_text("")
    with pytest.raises(WriteError, match="a file is where a folder must be"):
        write_json(tmp_path / "data" / "x.json", {})


def test_only_temporaries_of_dead_processes_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "data" / f".shard-00001.h5.{dead.pid}.tmp"
    live = tmp_path / f".config.yaml.{os.getppid()}.tmp"
    stale.parent.mkdir()
    for path in (stale, live, tmp_path / ".notes.tmp"):
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists()
    assert (tmp_path / ".notes.tmp").exists()
