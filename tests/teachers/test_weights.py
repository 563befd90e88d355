"""Local weights files: existence check and the sha256 tag of the version string."""

from __future__ import annotations

import hashlib

import pytest

from mlff_distiller.teachers.weights import SHA_DIGITS, check_weights_file, weights_tag


def test_weights_tag_is_a_sha256_prefix(tmp_path):
    path = tmp_path / "w.ckpt"
    path.write_bytes(b"\x00\x01" * (1 << 20))  # more than one read chunk
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert weights_tag(path) == f"sha256:{digest[:SHA_DIGITS]}"


def test_missing_weights_file_names_path_teacher_and_key(tmp_path):
    missing = tmp_path / "absent.model"
    with pytest.raises(FileNotFoundError, match=r"teacher 'mace' not found: .*absent\.model"):
        check_weights_file(missing, "mace")
    with pytest.raises(FileNotFoundError, match=r"teacher\.weights"):
        check_weights_file(tmp_path, "orb")  # a directory is no weights file
