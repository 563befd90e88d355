import numpy as np
import pytest
from ase.build import bulk, molecule

from mlff_distiller import keys
from mlff_distiller.data.dataset import load_dataset, pack, split_by_system
from mlff_distiller.data.store import (
    LabelStore,
    ShardMismatchError,
    frames_to_arrays,
    shard_name,
    write_arrays,
)
from mlff_distiller.teachers.base import Labels


def _frames(n):
    frames = []
    for k in range(n):
        atoms = molecule("H2O") if k % 2 else bulk("Cu", "fcc", a=3.6)
        atoms.rattle(0.01, seed=k)
        atoms.info[keys.SYSTEM_ID] = f"sys{k % 5}"
        atoms.info[keys.SAMPLER] = "rattle"
        frames.append(atoms)
    return frames


def _labels(frames):
    return [
        Labels(
            energy=float(k),
            forces=np.full((len(a), 3), float(k)),
            stress=np.eye(3) * k if a.pbc.all() else None,
        )
        for k, a in enumerate(frames)
    ]


def test_shards_round_trip_in_index_order(tmp_path):
    frames = _frames(6)
    labels = _labels(frames)
    store = LabelStore(tmp_path / "data")
    # write out of order: the store must give back structure order
    store.write_shard(frames[3:], labels[3:], [3, 4, 5], "toy", "1")
    store.write_shard(frames[:3], labels[:3], [0, 1, 2], "toy", "1")
    assert store.labelled_indices("toy") == set(range(6))
    arrays, attrs = store.read_all()
    assert attrs[keys.TEACHER_NAME] == "toy"
    np.testing.assert_array_equal(arrays[keys.TEACHER_ENERGY], np.arange(6.0))
    for k, atoms in enumerate(frames):
        a, b = arrays["ptr"][k], arrays["ptr"][k + 1]
        np.testing.assert_allclose(arrays["positions"][a:b], atoms.positions)
        np.testing.assert_allclose(arrays[keys.TEACHER_FORCES][a:b], k)
        assert arrays["has_stress"][k] == atoms.pbc.all()
    assert list(arrays[keys.SYSTEM_ID]) == [f"sys{k % 5}" for k in range(6)]


def test_shards_are_named_by_their_first_frame_beside_numbered_ones(tmp_path):
    """Numbered shards of earlier versions are read; a new shard's name never collides."""
    frames = _frames(8)
    labels = _labels(frames)
    store = LabelStore(tmp_path)
    # An earlier version's run: shard-00000 held frames 0-1, shard-00002 frames 4-5 (the
    # damaged shard-00001, frames 2-3, was deleted); the next shard starts at frame 2.
    write_arrays(tmp_path / "shard-00000.h5", frames_to_arrays(frames[:2], labels[:2], [0, 1]), {})
    write_arrays(
        tmp_path / "shard-00002.h5", frames_to_arrays(frames[4:6], labels[4:6], [4, 5]), {}
    )
    assert store.labelled_indices() == {0, 1, 4, 5}
    path = store.write_shard(frames[2:4], labels[2:4], [2, 3], "toy", "1")
    assert path.name == shard_name(2) == "shard-from-0000002.h5"
    store.write_shard(frames[6:], labels[6:], [6, 7], "toy", "1")
    assert len(store.shard_paths()) == 4
    arrays, _ = store.read_all()
    np.testing.assert_array_equal(arrays["index"], np.arange(8))
    np.testing.assert_array_equal(arrays[keys.TEACHER_ENERGY], np.arange(8.0))


def test_other_teacher_is_refused(tmp_path):
    frames = _frames(2)
    store = LabelStore(tmp_path)
    store.write_shard(frames, _labels(frames), [0, 1], "emt", "x")
    with pytest.raises(ShardMismatchError, match="labelled by teacher 'emt'"):
        store.labelled_indices("7net-0")


def test_leftover_of_a_killed_write_is_never_read(tmp_path):
    frames = _frames(2)
    store = LabelStore(tmp_path)
    (tmp_path / ".shard-00000.h5.4242.tmp").write_bytes(b"half-written")
    assert store.shard_paths() == []
    assert store.labelled_indices() == set()
    store.write_shard(frames, _labels(frames), [0, 1], "toy", "1")
    arrays, _ = store.read_all()
    assert len(arrays[keys.TEACHER_ENERGY]) == 2


def test_split_is_by_system_never_by_frame():
    ids = [f"mol{k // 7}" for k in range(7 * 20)]
    split = split_by_system(ids, val_fraction=0.1, test_fraction=0.2, seed=3)
    for system in set(ids):
        codes = {int(c) for c, s in zip(split, ids, strict=True) if s == system}
        assert len(codes) == 1, f"{system} is in more than one split"
    per_system = {s: int(c) for c, s in zip(split, ids, strict=True)}
    assert sorted(per_system.values()).count(2) == 4
    assert sorted(per_system.values()).count(1) == 2
    with pytest.raises(ValueError, match="cannot be split"):
        split_by_system(["a", "b"], 0.1, 0.2, 0)


def test_pack_and_load(tmp_path):
    frames = _frames(10)
    store = LabelStore(tmp_path / "data")
    store.write_shard(frames, _labels(frames), list(range(10)), "toy", "1")
    packed = pack(store, tmp_path / "data" / "dataset.h5", 0.2, 0.2, seed=0, cutoff=4.0)
    loaded = load_dataset(tmp_path / "data" / "dataset.h5")
    assert len(loaded) == len(packed) == 10
    test = loaded.subset("test")
    assert set(test.systems()).isdisjoint(loaded.subset("train").systems())
    atoms = test.atoms(0)
    k = int(test.arrays["index"][0])
    np.testing.assert_allclose(atoms.positions, frames[k].positions)
    assert atoms.info[keys.TEACHER_ENERGY] == pytest.approx(k)
