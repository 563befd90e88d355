"""Property-based fuzzing: random but well-typed configs and structure files never traceback.

The config loader either returns a config or raises one ``ConfigError``; the structure
readers either return checked systems or raise one ``StructureInputError``. Nothing else,
whatever the keys, values, overrides, numbers, coordinates, cells and bytes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import ase
import ase.io
import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from mlff_distiller.config import Config, ConfigError, load_config
from mlff_distiller.structures.validate import StructureInputError, collect_systems, read_frames

#: 50 examples per test in the suite; ``MLFF_FUZZ_EXAMPLES=5000`` fuzzes longer.
FUZZ = settings(
    max_examples=int(os.environ.get("MLFF_FUZZ_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys.extend(_keys(field.annotation, f"{prefix}{name}."))
    return keys


KEYS = _keys(Config)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
#: Known keys (most of the time), misspelt ones, and anything.
keys = st.sampled_from(KEYS) | st.sampled_from(KEYS).map(lambda k: k[:-1]) | st.text(max_size=10)


def _nested(flat: dict[str, object]) -> dict:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``; a later key wins where two collide."""
    out: dict = {}
    for dotted, value in flat.items():
        node = out
        *parents, last = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                node[key] = {}
            node = node[key]
        node[last] = value
    return out


@FUZZ
@given(st.dictionaries(keys, values, max_size=6))
def test_config_files_never_traceback(tmp_path, flat):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_nested(flat)))
    with contextlib.suppress(ConfigError):
        load_config(path)


@FUZZ
@given(st.lists(st.tuples(keys, values), max_size=4), st.lists(st.text(max_size=20), max_size=2))
def test_overrides_never_traceback(pairs, raw):
    overrides = [
        f"{key}={yaml.safe_dump(value, default_flow_style=True).strip()}" for key, value in pairs
    ]
    with contextlib.suppress(ConfigError):
        load_config(None, [*overrides, *raw])


@FUZZ
@given(st.text(max_size=200).map(str.encode) | st.binary(max_size=200))
def test_config_bytes_never_traceback(tmp_path, data):
    path = tmp_path / "config.yaml"
    path.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_config(path)


# --- structure files ------------------------------------------------------------------------

coordinates = st.floats(allow_nan=True, allow_infinity=True) | st.floats(-20, 20)


@st.composite
def extxyz_frames(draw) -> str:
    """An extxyz frame of random atomic numbers, positions, cell and periodicity."""
    n = draw(st.integers(0, 6))
    numbers = draw(st.lists(st.integers(-2, 130), min_size=n, max_size=n))
    positions = draw(
        st.lists(st.tuples(coordinates, coordinates, coordinates), min_size=n, max_size=n)
    )
    cell = draw(st.lists(coordinates, min_size=9, max_size=9))
    pbc = " ".join(draw(st.lists(st.sampled_from("TF"), min_size=3, max_size=3)))
    lines = [f"{z} {x!r} {y!r} {w!r}" for z, (x, y, w) in zip(numbers, positions, strict=True)]
    header = f'Lattice="{" ".join(map(repr, cell))}" Properties=Z:I:1:pos:R:3 pbc="{pbc}"'
    return f"{n}\n{header}\n" + "".join(line + "\n" for line in lines)


@st.composite
def molecules(draw) -> ase.Atoms:
    """Well-formed structures ASE writes itself: known elements, finite positions."""
    n = draw(st.integers(1, 6))
    numbers = draw(st.lists(st.integers(1, 86), min_size=n, max_size=n))
    positions = np.array(draw(st.lists(st.floats(-8, 8), min_size=3 * n, max_size=3 * n)))
    periodic = draw(st.booleans())
    size = draw(st.floats(0.5, 20))
    return ase.Atoms(
        numbers=numbers,
        positions=positions.reshape(n, 3),
        cell=np.eye(3) * size if periodic else None,
        pbc=periodic,
    )


def _check_file(path: Path) -> None:
    with contextlib.suppress(StructureInputError):
        collect_systems([], [], [path], min_distance=0.6)


@FUZZ
@given(st.lists(extxyz_frames(), min_size=1, max_size=3))
def test_extxyz_files_never_traceback(frames):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.extxyz"
        path.write_text("".join(frames))
        _check_file(path)


@FUZZ
@given(molecules(), st.sampled_from(["extxyz", "xyz", "vasp", "cif", "json", "traj"]))
def test_files_ase_writes_never_traceback(atoms, format):
    if format in ("vasp", "cif") and not atoms.pbc.any():
        atoms.cell = np.eye(3) * 30
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz.{format}"
        ase.io.write(path, atoms, format=format)
        _check_file(path)


@FUZZ
@given(st.binary(max_size=2000), st.sampled_from(["xyz", "extxyz", "cif", "pdb", "traj", "bin"]))
def test_random_bytes_never_traceback(data, extension):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz.{extension}"
        path.write_bytes(data)
        with contextlib.suppress(StructureInputError):
            read_frames(path, fix="fix it")
        _check_file(path)
