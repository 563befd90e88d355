"""Crash-safe writes: every file the project produces appears whole or not at all.

A write goes to a temporary file beside its target and is renamed onto it only when complete,
so a kill, a full disk or a permission error leaves the previous version (or nothing) in
place, never half a file. A failed write raises :class:`WriteError`, which names the target
and the fix; a file that is not whole when read back is a :class:`CorruptFileError`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Temporary files are named ``.{target}.{pid}.tmp``.
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp$")

_HINTS = {
    errno.ENOSPC: "free some disk space and run the same command again (everything finished "
    "before is kept)",
    errno.EDQUOT: "free some of your disk quota and run the same command again (everything "
    "finished before is kept)",
    errno.EACCES: "make the directory writable, or choose another run_dir",
    errno.EPERM: "make the directory writable, or choose another run_dir",
    errno.EROFS: "the file system is read-only: choose another run_dir",
    errno.ENOTDIR: "a file is where a folder must be: move it away, or choose another run_dir",
    errno.EEXIST: "a file is where a folder must be: move it away, or choose another run_dir",
}


class WriteError(OSError):
    """A file could not be written (disk full, no permission...); its previous version is kept.

    ``filename`` is the file that was being written, ``errno`` and ``strerror`` the cause.
    """

    def __str__(self) -> str:
        hint = _HINTS.get(self.errno or 0)
        return f"cannot write {self.filename}: {self.strerror}" + (f"; {hint}" if hint else "")


class CorruptFileError(ValueError):
    """A file that is truncated, corrupted or of another kind; the message names it and the fix."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    The temporary name starts with a dot, so globs for finished files (``shard-*.h5``) never
    see it, and it is removed if the block raises (including ``KeyboardInterrupt``). It is
    created before the block runs, so an unwritable directory fails before any work.

    Raises
    ------
    WriteError
        If the directory, the temporary file or the rename fails with an ``OSError`` (disk
        full, permission denied, a file where a folder must be); ``path`` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.touch()
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if isinstance(exc, WriteError):
            raise
        raise WriteError(exc.errno, exc.strerror or str(exc), str(path)) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete temporary files under ``directory`` left by processes that no longer run.

    A killed process (SIGKILL, power loss) cannot remove its temporary file; the finished
    file it was writing never appeared, so the temporary holds nothing worth keeping.
    Temporaries of running processes (another command on the same directory) are kept.

    Returns
    -------
    list[pathlib.Path]
        The files removed.
    """
    removed = []
    for tmp in Path(directory).rglob(".*.tmp"):
        match = _TEMPORARY.match(tmp.name)
        if match is None or not tmp.is_file() or _is_running(int(match.group(1))):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _is_running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process holds no temporary between two commands
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or an absurd number): leave it alone
    return True


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON (indented, keys in insertion order) atomically."""
    write_text(path, json.dumps(data, indent=2) + "\n")
