"""Local weights files of teachers that do not bundle their weights (Orb, MACE).

Nothing is ever downloaded: the user points ``teacher.weights`` at a file, which must exist,
and the version string stored with every label names a prefix of the file's sha256, so a
dataset says exactly which weights produced it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: Hex digits of the weights file's sha256 in a teacher's version string.
SHA_DIGITS = 12


def check_weights_file(path: str | Path, teacher: str) -> Path:
    """The weights file of ``teacher`` as a path, or a clear error if it is not a file.

    Raises
    ------
    FileNotFoundError
        Naming the path, the teacher and the config key to fix.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"weights file of teacher {teacher!r} not found: {path}. Set teacher.weights to "
            "a local file (nothing is downloaded); see the README, section 'Teachers'."
        )
    return path


def weights_tag(path: Path) -> str:
    """``sha256:`` and the first :data:`SHA_DIGITS` hex digits of the file's sha256."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:SHA_DIGITS]}"
