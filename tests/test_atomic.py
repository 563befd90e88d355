import pytest

from mlff_distiller.atomic import atomic_path, write_json


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
