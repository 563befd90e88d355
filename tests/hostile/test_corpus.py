"""A corpus of hostile inputs: each gets one clear message, its exit code, and no damage.

Every case asserts the exit code of ``mlff-distill``, that no traceback is printed, that the
message names the culprit (the key, file, frame, SMILES or path), and that every file left in
the run directory is complete and loadable. Model files are also given to
``load_calculator``, which must raise a ``ValueError`` naming the file.

``docs/hostile-inputs.md`` is generated from :data:`CASES` and the messages they get; a test
fails when it is out of date. Regenerate it with::

    MLFF_UPDATE_DOCS=1 .venv/bin/python -m pytest tests/hostile/test_corpus.py
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import pytest
import torch
from typer.testing import CliRunner

from mlff_distiller import load_calculator
from mlff_distiller.cli import app

DOCS = Path(__file__).parents[2] / "docs" / "hostile-inputs.md"
MOLECULES = ["CH4", "H2O", "NH3", "C2H6", "CH3OH"]


@dataclass
class Ctx:
    """Where a case builds its inputs: a fresh directory and a finished run to copy."""

    tmp: Path
    finished: Path
    hostile: type
    monkeypatch: pytest.MonkeyPatch
    stack: ExitStack

    @property
    def run(self) -> Path:
        return self.tmp / "run"

    def config(self, *overrides: str, **sections) -> list[str]:
        """``CONFIG [overrides]`` of the small EMT run, sections replaced."""
        path = self.hostile.write_config(self.tmp / "config.yaml", self.run, **sections)
        return [str(path), *overrides]

    def structures(self, **changes) -> dict:
        return {**self.hostile.SMALL["structures"], **changes}

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / "inputs" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def with_file(self, name: str, content: str | bytes) -> list[str]:
        """``run CONFIG`` whose structures are the small run's molecules plus this file."""
        path = self.file(name, content)
        return ["run", *self.config(structures=self.structures(files=[str(path)]))]

    def copy(self) -> Path:
        """The finished run, copied to ``self.run``."""
        return self.hostile.copy_run(self.finished, self.run)

    def export(self, path: Path) -> list[str]:
        return ["export", str(path), "-o", str(self.tmp / "exported.pt")]


@dataclass(frozen=True)
class Case:
    """One hostile input.

    Attributes
    ----------
    name
        Test id.
    kind
        config, structure file, SMILES, run directory or model file.
    input
        What is hostile about it, in words (the table's second column).
    make
        Builds the input in a :class:`Ctx` and returns the ``mlff-distill`` arguments.
    culprit
        Text the message must contain: the key, file, frame, SMILES or path.
    exit_code
        2 for an error the user fixes; 0 where the damage is repaired without asking.
    planted
        Files of the run directory the case damaged on purpose (not checked afterwards).
    model_file
        The file ``load_calculator`` must refuse with a ``ValueError`` naming it.
    run_dir
        The run directory, relative to the case's directory.
    """

    name: str
    kind: str
    input: str
    make: Callable[[Ctx], list[str]]
    culprit: str
    exit_code: int = 2
    planted: tuple[str, ...] = ()
    model_file: str | None = None
    run_dir: str = "run"


# --- inputs -----------------------------------------------------------------------------

PROPERTIES = "Properties=species:S:1:pos:R:3"


def xyz(*atoms: str, lattice: str | None = None, pbc: str = "F F F") -> str:
    """One extxyz frame; ``atoms`` are lines such as ``"C 0 0 0"``."""
    cell = f'Lattice="{lattice}" ' if lattice is not None else ""
    return f'{len(atoms)}\n{cell}{PROPERTIES} pbc="{pbc}"\n' + "\n".join(atoms) + "\n"


WATER = ("O 0 0 0.12", "H 0 0.76 -0.48", "H 0 -0.76 -0.48")
GARBAGE = bytes((i * 73 + 11) % 256 for i in range(4096))


def grid(n: int, spacing: float = 1.5) -> list[str]:
    side = round(n ** (1 / 3)) + 1
    points = [(i, j, k) for i in range(side) for j in range(side) for k in range(side)][:n]
    return [f"H {i * spacing} {j * spacing} {k * spacing}" for i, j, k in points]


def damaged(path: Path, keep: float = 0.5) -> None:
    """Cut a file to a fraction of its size (a copy interrupted, a disk that failed)."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def relabel_shards(run: Path, teacher: str) -> None:
    for shard in sorted((run / "data").glob("shard-*.h5")):
        with h5py.File(shard, "r+") as f:
            f.attrs["teacher_name"] = teacher


class CodeOnLoad:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def tiny_torchscript(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates TorchScript
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), str(path))
    return path


def student_payload(c: Ctx) -> dict:
    return torch.load(c.finished / "model" / "student.pt", weights_only=True)


def model_file(c: Ctx, name: str, content: bytes | Callable[[Path], object]) -> list[str]:
    path = c.tmp / "inputs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if callable(content):
        content(path)
    else:
        path.write_bytes(content)
    return c.export(path)


def with_payload(change: Callable[[dict], None]) -> Callable[[Ctx], list[str]]:
    def make(c: Ctx) -> list[str]:
        payload = student_payload(c)
        change(payload)
        return model_file(c, "student.pt", lambda p: torch.save(payload, p))

    return make


def read_only_run(c: Ctx) -> list[str]:
    c.run.mkdir()
    c.stack.enter_context(c.hostile.read_only(c.run, c.monkeypatch))
    return ["run", *c.config()]


def file_instead_of(name: str) -> Callable[[Ctx], list[str]]:
    def make(c: Ctx) -> list[str]:
        run = c.copy()
        shutil.rmtree(run / name)
        (run / name).write_text("not a folder\n")
        return ["run", str(run)]

    return make


def tampered(change: Callable[[Path], object], command: str = "run") -> Callable[[Ctx], list]:
    def make(c: Ctx) -> list[str]:
        run = c.copy()
        change(run)
        return [command, str(run)]

    return make


def corrupt_stored_config(c: Ctx) -> list[str]:
    (c.copy() / "config.yaml").write_bytes(GARBAGE)
    return ["run", *c.config()]


def changed_config(c: Ctx) -> list[str]:
    return ["run", str(c.copy()), "training.lr=0.5"]


def damaged_student_then_evaluate(run: Path) -> None:
    damaged(run / "model" / "student.pt")
    (run / "report" / "metrics.json").unlink()  # else the stored metrics are printed


def truncated_copy(source: Path) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        shutil.copy(source, path)
        damaged(path)

    return make


def empty_config(c: Ctx) -> list[str]:
    c.monkeypatch.chdir(c.tmp)
    return ["run", str(c.file("empty.yaml", ""))]


def smiles(*items: str) -> Callable[[Ctx], list[str]]:
    return lambda c: ["run", *c.config(structures=c.structures(smiles=list(items)))]


def overrides(*items: str) -> Callable[[Ctx], list[str]]:
    return lambda c: ["run", *c.config(*items)]


def sections(**changes) -> Callable[[Ctx], list[str]]:
    return lambda c: ["run", *c.config(**changes)]


def config_text(text: str | bytes) -> Callable[[Ctx], list[str]]:
    return lambda c: ["run", str(c.file("config.yaml", text))]


def structure_file(name: str, content: str | bytes | Callable[[], str]) -> Callable:
    return lambda c: c.with_file(name, content() if callable(content) else content)


# --- the corpus ---------------------------------------------------------------------------

SMALL_TRAINING = {"epochs": 2, "batch_size": 4}

CASES = [
    # configs: keys
    Case(
        "unknown-top-key",
        "config",
        "misspelt section `trainig:`",
        sections(trainig=SMALL_TRAINING),
        "unknown key 'trainig'",
    ),
    Case(
        "unknown-nested-key",
        "config",
        "misspelt key `training.epohcs`",
        sections(training={**SMALL_TRAINING, "epohcs": 3}),
        "unknown key 'training.epohcs'",
    ),
    Case(
        "unknown-deep-key",
        "config",
        "misspelt key three deep `structures.md.temprature`",
        lambda c: ["run", *c.config(structures=c.structures(md={"temprature": 300}))],
        "unknown key 'structures.md.temprature'",
    ),
    Case(
        "unknown-override-key",
        "config",
        "override of an unknown section `modle.n_features=3`",
        overrides("modle.n_features=3"),
        "unknown key 'modle'",
    ),
    Case(
        "unknown-override-deep",
        "config",
        "override `structures.rattle.frame=3`",
        overrides("structures.rattle.frame=3"),
        "unknown key 'structures.rattle.frame'",
    ),
    # configs: types and values
    Case(
        "wrong-type-int",
        "config",
        "`training.epochs=many`",
        overrides("training.epochs=many"),
        "'training.epochs'",
    ),
    Case(
        "wrong-type-float",
        "config",
        "a list for a number: `training.lr=[1, 2]`",
        overrides("training.lr=[1, 2]"),
        "'training.lr'",
    ),
    Case(
        "wrong-type-list",
        "config",
        "a number for a list: `structures.smiles=5`",
        overrides("structures.smiles=5"),
        "'structures.smiles'",
    ),
    Case(
        "wrong-type-bool",
        "config",
        "`structures.include_initial=maybe`",
        overrides("structures.include_initial=maybe"),
        "'structures.include_initial'",
    ),
    Case(
        "section-scalar",
        "config",
        "a section set to a number: `training: 5`",
        sections(training=5),
        "'training'",
    ),
    Case(
        "section-list",
        "config",
        "a section set to a list: `model: [1, 2]`",
        sections(model=[1, 2]),
        "'model'",
    ),
    Case(
        "negative-lr",
        "config",
        "`training.lr=-0.001`",
        overrides("training.lr=-0.001"),
        "'training.lr'",
    ),
    Case("nan-lr", "config", "`training.lr=.nan`", overrides("training.lr=.nan"), "'training.lr'"),
    Case(
        "infinite-cutoff",
        "config",
        "`model.cutoff=.inf`",
        overrides("model.cutoff=.inf"),
        "'model.cutoff'",
    ),
    Case("zero-threads", "config", "`threads=0`", overrides("threads=0"), "'threads'"),
    Case(
        "negative-min-distance",
        "config",
        "`structures.min_distance=-1`",
        overrides("structures.min_distance=-1"),
        "'structures.min_distance'",
    ),
    Case(
        "fractions-leave-nothing",
        "config",
        "`data.val_fraction=0.5 data.test_fraction=0.5`",
        overrides("data.val_fraction=0.5", "data.test_fraction=0.5"),
        "val_fraction",
    ),
    Case(
        "fractions-too-few-systems",
        "config",
        "2 molecules cannot be split into train, validation and test",
        lambda c: ["run", *c.config(structures=c.structures(ase_molecules=["CH4", "H2O"]))],
        "2 systems cannot be split",
    ),
    Case(
        "compile-without-static-shapes",
        "config",
        "`training.compile=true` without static shapes",
        overrides("training.compile=true"),
        "training.compile=true needs training.static_shapes=true",
    ),
    Case(
        "compile-with-lean-messages",
        "config",
        "`training.compile=true` with `model.lean_messages=true`",
        overrides(
            "training.compile=true", "training.static_shapes=true", "model.lean_messages=true"
        ),
        "exclude each other",
    ),
    Case(
        "unknown-teacher",
        "config",
        "`teacher.name=orb-v9`",
        overrides("teacher.name=orb-v9"),
        "'orb-v9'",
    ),
    # configs: override syntax
    Case(
        "override-no-equals",
        "config",
        "override without `=`: `training.epochs`",
        overrides("training.epochs"),
        "override 'training.epochs'",
    ),
    Case("override-empty-key", "config", "override `=5`", overrides("=5"), "override '=5'"),
    Case(
        "override-empty-part",
        "config",
        "override `training..epochs=5`",
        overrides("training..epochs=5"),
        "override 'training..epochs=5'",
    ),
    Case(
        "override-bad-yaml",
        "config",
        "override value that is not YAML: `structures.smiles=[CCO`",
        overrides("structures.smiles=[CCO"),
        "override 'structures.smiles=[CCO'",
    ),
    Case(
        "override-into-value",
        "config",
        "override below a value: `training.epochs.max=3`",
        overrides("training.epochs.max=3"),
        "'training.epochs'",
    ),
    # configs: files
    Case(
        "config-not-yaml",
        "config",
        "config file with an unclosed bracket",
        config_text("training: {epochs: 3\n"),
        "config.yaml: not valid YAML",
    ),
    Case(
        "config-binary",
        "config",
        "config file of binary bytes",
        config_text(GARBAGE),
        "config.yaml: not a text file",
    ),
    Case(
        "config-top-level-list",
        "config",
        "config file whose top level is a list",
        config_text("- training\n- model\n"),
        "config.yaml: the top level must be a mapping",
    ),
    Case(
        "config-missing",
        "config",
        "config path that does not exist",
        lambda c: ["run", str(c.tmp / "nope.yaml")],
        "nope.yaml: no such config file",
    ),
    Case(
        "config-empty",
        "config",
        "empty config file (defaults only: no structures)",
        empty_config,
        "structures: no systems",
        run_dir="runs/default",
    ),
    # structure files
    Case(
        "file-garbage",
        "structure file",
        "4 kB of random bytes as `garbage.xyz`",
        structure_file("garbage.xyz", GARBAGE),
        "garbage.xyz cannot be read",
    ),
    Case(
        "file-empty",
        "structure file",
        "empty `empty.extxyz`",
        structure_file("empty.extxyz", ""),
        "empty.extxyz",
    ),
    Case(
        "file-truncated",
        "structure file",
        "extxyz whose header announces 5 atoms, 2 follow",
        structure_file("cut.extxyz", f"5\n{PROPERTIES}\nC 0 0 0\nH 0 0 1.09\n"),
        "cut.extxyz cannot be read",
    ),
    Case(
        "file-nan",
        "structure file",
        "extxyz frame with NaN positions",
        structure_file("nan.extxyz", xyz("O nan nan nan", *WATER[1:])),
        "frame 0 of {tmp}/inputs/nan.extxyz: 1 atom(s) have non-finite positions",
    ),
    Case(
        "file-inf",
        "structure file",
        "extxyz frame with an infinite coordinate",
        structure_file("inf.extxyz", xyz("O 0 0 inf", *WATER[1:])),
        "frame 0 of {tmp}/inputs/inf.extxyz",
    ),
    Case(
        "file-nan-third-frame",
        "structure file",
        "3 frames, the third with NaN",
        structure_file("three.extxyz", xyz(*WATER) * 2 + xyz(*WATER[:2], "H nan 0 0")),
        "frame 2 of {tmp}/inputs/three.extxyz",
    ),
    Case(
        "file-overlapping-atoms",
        "structure file",
        "two atoms at the same position",
        structure_file("overlap.extxyz", xyz(*WATER, "H 0 0.76 -0.48")),
        "frame 0 of {tmp}/inputs/overlap.extxyz: two atoms are 0.000 Å apart",
    ),
    Case(
        "file-zero-volume-cell",
        "structure file",
        "periodic frame with an all-zero lattice",
        structure_file("flat.extxyz", xyz(*WATER, lattice="0 0 0 0 0 0 0 0 0", pbc="T T T")),
        "flat.extxyz",
    ),
    Case(
        "file-flat-cell",
        "structure file",
        "periodic along z with a zero third cell vector",
        structure_file("slab.extxyz", xyz(*WATER, lattice="5 0 0 0 5 0 0 0 0", pbc="T T T")),
        "frame 0 of {tmp}/inputs/slab.extxyz: it is periodic",
    ),
    Case(
        "file-nan-cell",
        "structure file",
        "periodic frame with NaN in its lattice",
        structure_file("nancell.extxyz", xyz(*WATER, lattice="9 0 0 0 9 0 0 0 nan", pbc="T T T")),
        "frame 0 of {tmp}/inputs/nancell.extxyz: its cell is not finite",
    ),
    Case(
        "file-thin-cell",
        "structure file",
        "a periodic cell 0.3 Å thick: every atom on top of its own image",
        structure_file("thin.extxyz", xyz("Cu 0 0 0", lattice="3 0 0 0 3 0 0 0 0.3", pbc="T T T")),
        "frame 0 of {tmp}/inputs/thin.extxyz: its cell is 0.3 Å thick",
    ),
    Case(
        "file-unknown-element",
        "structure file",
        "species `Xx`",
        structure_file("xx.extxyz", xyz("Xx 0 0 0", *WATER[1:])),
        "xx.extxyz",
    ),
    Case(
        "file-dummy-element",
        "structure file",
        "species `X` (atomic number 0)",
        structure_file("dummy.extxyz", xyz("X 0 0 0", *WATER[1:])),
        "frame 0 of {tmp}/inputs/dummy.extxyz: atomic numbers [0] are no elements",
    ),
    Case(
        "file-zero-atoms",
        "structure file",
        "extxyz frame of 0 atoms",
        structure_file("none.extxyz", f"0\n{PROPERTIES}\n"),
        "none.extxyz",
    ),
    Case(
        "file-too-many-atoms",
        "structure file",
        "one frame of 10 001 atoms",
        structure_file("huge.extxyz", lambda: xyz(*grid(10_001))),
        "frame 0 of {tmp}/inputs/huge.extxyz: it has 10001 atoms",
    ),
    Case(
        "file-absurd-coordinates",
        "structure file",
        "coordinates of 1e7 Å (wrong units)",
        structure_file("far.extxyz", xyz("O 1e7 0 0", "H 1e7 1 0", "H 1e7 0 1")),
        "frame 0 of {tmp}/inputs/far.extxyz: a coordinate of 1e+07 Å",
    ),
    Case(
        "file-missing",
        "structure file",
        "a path that does not exist",
        lambda c: ["run", *c.config(structures=c.structures(files=[str(c.tmp / "gone.xyz")]))],
        "gone.xyz does not exist",
    ),
    Case(
        "file-is-directory",
        "structure file",
        "a directory given as a structure file",
        lambda c: ["run", *c.config(structures=c.structures(files=[str(c.tmp)]))],
        "is not a file",
    ),
    Case(
        "file-unknown-format",
        "structure file",
        "text in a file named `mol.foo`",
        structure_file("mol.foo", "just some words\n"),
        "mol.foo cannot be read",
    ),
    Case(
        "file-broken-cif",
        "structure file",
        "a CIF with a cell and no atoms",
        structure_file("broken.cif", "data_x\n_cell_length_a 5\n_cell_length_b 5\n"),
        "broken.cif",
    ),
    Case(
        "file-element-teacher-lacks",
        "structure file",
        "silicon, which EMT cannot label",
        structure_file("si.extxyz", xyz("Si 0 0 0", "H 1.5 0 0")),
        "'si.extxyz:0'",
    ),
    Case(
        "file-garbage-traj",
        "structure file",
        "random bytes as `run.traj`",
        structure_file("run.traj", GARBAGE),
        "run.traj cannot be read",
    ),
    # SMILES
    Case("smiles-syntax", "SMILES", "unclosed ring `C1CC`", smiles("C1CC"), "'C1CC'"),
    Case(
        "smiles-valence",
        "SMILES",
        "pentavalent carbon `C(C)(C)(C)(C)C`",
        smiles("C(C)(C)(C)(C)C"),
        "'C(C)(C)(C)(C)C' is not a valid molecule",
    ),
    Case(
        "smiles-garbage",
        "SMILES",
        "`not a smiles!`",
        smiles("CCO", "not a smiles!"),
        "'not a smiles!'",
    ),
    Case("smiles-empty", "SMILES", "the empty string", smiles(""), "SMILES '' has no atoms"),
    Case(
        "smiles-aromatic",
        "SMILES",
        "an aromatic ring that cannot be kekulised `c1cccc1`",
        smiles("c1cccc1"),
        "'c1cccc1'",
    ),
    Case(
        "smiles-element-teacher-lacks",
        "SMILES",
        "tetramethylsilane, Si unknown to EMT",
        smiles("CCO", "C[Si](C)(C)C"),
        "C[Si](C)(C)C",
    ),
    Case(
        "smiles-cation",
        "SMILES",
        "ammonium `[NH4+]`",
        smiles("[NH4+]"),
        "'[NH4+]' has a net charge of +1",
    ),
    Case(
        "smiles-anion",
        "SMILES",
        "acetate `CC(=O)[O-]`",
        smiles("CC(=O)[O-]"),
        "'CC(=O)[O-]' has a net charge of -1",
    ),
    Case(
        "smiles-radical",
        "SMILES",
        "methyl radical `[CH3]`",
        smiles("[CH3]"),
        "'[CH3]' has 1 unpaired electron",
    ),
    Case("smiles-wildcard", "SMILES", "wildcard atom `*C`", smiles("*C"), "'*C' has a wildcard"),
    Case(
        "smiles-huge",
        "SMILES",
        "a 400-carbon chain (1 202 atoms)",
        smiles("C" * 400),
        "has 1202 atoms",
    ),
    Case(
        "ase-name-unknown-last",
        "SMILES",
        "unknown ASE molecule after valid ones",
        lambda c: [
            "run",
            *c.config(structures=c.structures(ase_molecules=[*MOLECULES, "NotAMolecule"])),
        ],
        "'NotAMolecule'",
    ),
    Case(
        "many-bad-sources",
        "SMILES",
        "three bad SMILES and a missing file at once",
        lambda c: [
            "run",
            *c.config(
                structures=c.structures(
                    smiles=["C1CC", "[CH3]", "CCO", "[NH4+]"], files=[str(c.tmp / "gone.xyz")]
                )
            ),
        ],
        "4 structure input(s) cannot be used",
    ),
    # run directories
    Case(
        "run-dir-is-file",
        "run directory",
        "`run_dir` names a file",
        lambda c: ["run", *c.config(f"run_dir={c.file('run', 'x')}")],
        "inputs/run is a file",
    ),
    Case(
        "structures-is-file",
        "run directory",
        "a file where `RUN/structures/` must be",
        file_instead_of("structures"),
        "run/structures is a file",
        planted=("structures",),
    ),
    Case(
        "data-is-file",
        "run directory",
        "a file where `RUN/data/` must be",
        file_instead_of("data"),
        "run/data is a file",
        planted=("data",),
    ),
    Case(
        "read-only",
        "run directory",
        "a run directory nobody may write to",
        read_only_run,
        "cannot write {tmp}/run/config.yaml: Permission denied",
    ),
    Case(
        "other-teacher",
        "run directory",
        "shards labelled by another teacher",
        tampered(lambda run: relabel_shards(run, "7net-0")),
        "was labelled by teacher '7net-0'",
        planted=(
            "data/shard-from-0000000.h5",
            "data/shard-from-0000004.h5",
            "data/shard-from-0000008.h5",
        ),
    ),
    Case(
        "half-written-shard",
        "run directory",
        "a shard cut to half its size",
        tampered(lambda run: damaged(run / "data" / "shard-from-0000004.h5")),
        "run/data/shard-from-0000004.h5 is not a readable data file",
        planted=("data/shard-from-0000004.h5",),
    ),
    Case(
        "garbage-shard",
        "run directory",
        "a shard of random bytes",
        tampered(lambda run: (run / "data" / "shard-from-0000000.h5").write_bytes(GARBAGE)),
        "run/data/shard-from-0000000.h5",
        planted=("data/shard-from-0000000.h5",),
    ),
    Case(
        "corrupt-structures",
        "run directory",
        "a generated structure file of random bytes",
        tampered(lambda run: (run / "structures" / "system-0001.extxyz").write_bytes(GARBAGE)),
        "run/structures/system-0001.extxyz cannot be read",
        planted=("structures/system-0001.extxyz",),
    ),
    Case(
        "corrupt-dataset",
        "run directory",
        "the packed dataset cut to half (packed again)",
        tampered(lambda run: damaged(run / "data" / "dataset.h5")),
        "run/data/dataset.h5 is unreadable; packing it again",
        exit_code=0,
    ),
    Case(
        "corrupt-last-checkpoint",
        "run directory",
        "`last.ckpt` of random bytes",
        tampered(lambda run: (run / "checkpoints" / "last.ckpt").write_bytes(GARBAGE)),
        "run/checkpoints/last.ckpt is not a training checkpoint",
        planted=("checkpoints/last.ckpt",),
    ),
    Case(
        "truncated-best-checkpoint",
        "run directory",
        "`best.ckpt` cut to half",
        tampered(lambda run: damaged(run / "checkpoints" / "best.ckpt")),
        "run/checkpoints/best.ckpt is not a training checkpoint",
        planted=("checkpoints/best.ckpt",),
    ),
    Case(
        "foreign-checkpoint",
        "run directory",
        "`last.ckpt` holding another program's dict",
        tampered(lambda run: torch.save({"weights": 1}, run / "checkpoints" / "last.ckpt")),
        "run/checkpoints/last.ckpt is not a training checkpoint",
        planted=("checkpoints/last.ckpt",),
    ),
    Case(
        "corrupt-student-evaluate",
        "run directory",
        "`student.pt` cut to half, evaluated",
        tampered(damaged_student_then_evaluate, "evaluate"),
        "run/model/student.pt is not a readable student file",
        planted=("model/student.pt",),
    ),
    Case(
        "corrupt-metrics",
        "run directory",
        "`metrics.json` cut to half (evaluated again)",
        tampered(lambda run: damaged(run / "report" / "metrics.json"), "evaluate"),
        "run/report/metrics.json is unreadable; evaluating again",
        exit_code=0,
    ),
    Case(
        "corrupt-stored-config",
        "run directory",
        "`RUN/config.yaml` of random bytes",
        corrupt_stored_config,
        "run/config.yaml is not a config written by mlff-distill",
        planted=("config.yaml",),
    ),
    Case(
        "changed-config",
        "run directory",
        "a finished run given other settings",
        changed_config,
        "--accept-changes",
    ),
    Case(
        "evaluate-before-train",
        "run directory",
        "`mlff-distill evaluate` on a new run",
        lambda c: ["evaluate", *c.config()],
        "mlff-distill train",
    ),
    Case(
        "label-before-generate",
        "run directory",
        "`mlff-distill label` on a new run",
        lambda c: ["label", *c.config()],
        "run the generate stage first",
    ),
    # model files: `mlff-distill export FILE` and load_calculator(FILE)
    Case(
        "model-pickle-payload",
        "model file",
        "a pickle (protocol 2) that runs `os.system` when loaded",
        lambda c: model_file(c, "student.pt", pickle.dumps({"format": CodeOnLoad()}, 2)),
        "student.pt was refused: loading it would run code",
        model_file="student.pt",
    ),
    Case(
        "model-pickle-payload-protocol-5",
        "model file",
        "the same payload pickled with protocol 5",
        lambda c: model_file(c, "student.pt", pickle.dumps({"format": CodeOnLoad()}, 5)),
        "student.pt is not a readable student file",
        model_file="student.pt",
    ),
    Case(
        "model-truncated",
        "model file",
        "a student file cut to half",
        lambda c: model_file(c, "student.pt", truncated_copy(c.finished / "model" / "student.pt")),
        "student.pt is not a readable student file: it is truncated or corrupted",
        model_file="student.pt",
    ),
    Case(
        "model-empty",
        "model file",
        "an empty file",
        lambda c: model_file(c, "student.pt", b""),
        "student.pt is not a readable student file: it is empty",
        model_file="student.pt",
    ),
    Case(
        "model-torchscript",
        "model file",
        "a TorchScript file given as a student",
        lambda c: model_file(c, "student.pt", tiny_torchscript),
        "it is a TorchScript export",
        model_file="student.pt",
    ),
    Case(
        "model-state-dict",
        "model file",
        "a plain `torch.save(model.state_dict())`",
        lambda c: model_file(
            c, "student.pt", lambda p: torch.save(torch.nn.Linear(2, 1).state_dict(), p)
        ),
        "student.pt: not an mlff-distiller student file",
        model_file="student.pt",
    ),
    Case(
        "model-text",
        "model file",
        "a text file named `student.pt`",
        lambda c: model_file(c, "student.pt", b"energy: 1.0\n"),
        "student.pt is not a readable student file",
        model_file="student.pt",
    ),
    Case(
        "model-hdf5",
        "model file",
        "the packed dataset given as a student",
        lambda c: model_file(
            c, "student.pt", lambda p: shutil.copy(c.finished / "data" / "dataset.h5", p)
        ),
        "it is an HDF5 file",
        model_file="student.pt",
    ),
    Case(
        "model-zip",
        "model file",
        "an empty zip archive",
        lambda c: model_file(c, "student.pt", lambda p: zipfile.ZipFile(p, "w").close()),
        "student.pt is not a readable student file",
        model_file="student.pt",
    ),
    Case(
        "model-newer-format",
        "model file",
        "a student of format `mlff-distiller-student/9`",
        with_payload(lambda p: p.update(format="mlff-distiller-student/9")),
        "student.pt is a student file of format 'mlff-distiller-student/9'",
        model_file="student.pt",
    ),
    Case(
        "model-bad-hyperparameters",
        "model file",
        "hyperparameters PaiNN does not take",
        with_payload(lambda p: p["hyperparameters"].update(n_heads=4)),
        "student.pt is a corrupted student file",
        model_file="student.pt",
    ),
    Case(
        "model-missing-weights",
        "model file",
        "a state dict without its `scale` tensor",
        with_payload(lambda p: p["state_dict"].pop("scale")),
        "student.pt is a corrupted student file",
        model_file="student.pt",
    ),
    Case(
        "model-missing",
        "model file",
        "a run directory without a trained student",
        lambda c: c.export(c.tmp),
        "no trained student",
    ),
]


# --- running a case -----------------------------------------------------------------------


@dataclass
class Outcome:
    exit_code: int
    output: str
    message: str
    escaped: BaseException | None  # an exception the CLI let through (CliRunner keeps it)
    problems: list[str] = field(default_factory=list)


OUTCOMES: dict[str, Outcome] = {}


def _normalised(text: str, tmp: Path) -> str:
    return text.replace(str(tmp.resolve()), "TMP").replace(str(tmp), "TMP")


def _message(case: Case, output: str, culprit: str) -> str:
    lines = output.splitlines()
    if case.exit_code:
        starts = [i for i, line in enumerate(lines) if line.startswith(("error:", "unexpected"))]
        return "\n".join(lines[starts[0] :]).removeprefix("error: ").strip() if starts else ""
    return next((line for line in lines if culprit in line), "")


def run_case(case: Case, tmp: Path, finished: Path, hostile: type) -> Outcome:
    with pytest.MonkeyPatch.context() as monkeypatch, ExitStack() as stack:
        ctx = Ctx(tmp, finished, hostile, monkeypatch, stack)
        argv = case.make(ctx)
        result = CliRunner().invoke(app, [str(a) for a in argv])
    culprit = case.culprit.format(tmp=tmp)
    escaped = None if isinstance(result.exception, SystemExit) else result.exception
    outcome = Outcome(
        result.exit_code,
        result.output,
        _message(case, result.output, culprit),
        escaped,
        hostile.artefact_problems(tmp / case.run_dir, planted=case.planted),
    )
    if case.model_file is not None:
        path = tmp / "inputs" / case.model_file
        with pytest.raises(ValueError, match=re.escape(str(path))) as info:
            load_calculator(path)
        assert _message(case, f"error: {info.value}", culprit) in outcome.message
    return outcome


@pytest.fixture
def outcome_of(tmp_path_factory, finished_run, hostile, keep_torch_threads):
    def outcome(case: Case) -> Outcome:
        if case.name not in OUTCOMES:
            tmp = tmp_path_factory.mktemp(case.name)
            OUTCOMES[case.name] = run_case(case, tmp, finished_run, hostile)
            OUTCOMES[case.name].message = _normalised(OUTCOMES[case.name].message, tmp)
        return OUTCOMES[case.name]

    return outcome


def test_the_corpus_is_large_and_unique():
    assert len(CASES) >= 50
    assert len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input(case, outcome_of):
    outcome = outcome_of(case)
    assert outcome.escaped is None, outcome.escaped
    assert outcome.exit_code == case.exit_code, outcome.output
    assert "Traceback" not in outcome.output
    culprit = case.culprit.format(tmp="TMP")
    assert culprit in outcome.message, outcome.output
    assert outcome.problems == []


def test_unknown_ase_name_stops_before_any_generation(tmp_path, finished_run, hostile):
    case = next(c for c in CASES if c.name == "ase-name-unknown-last")
    run_case(case, tmp_path, finished_run, hostile)
    assert not list((tmp_path / "run").rglob("system-*.extxyz"))


# --- the table in docs/ ---------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def corpus_table(outcomes: dict[str, Outcome]) -> str:
    lines = [
        "# Hostile inputs and the messages they get",
        "",
        "Generated from the corpus in `tests/hostile/test_corpus.py` by its tests; do not edit.",
        "Regenerate with `MLFF_UPDATE_DOCS=1 .venv/bin/python -m pytest "
        "tests/hostile/test_corpus.py`.",
        "",
        "Each case runs `mlff-distill` in a fresh directory (`TMP`): the exit code is 2 for an",
        "input the user must fix and 0 where the damage is repaired; no case prints a",
        "traceback, and every file left in the run directory is complete and loadable. Model",
        "files also make `load_calculator` raise a `ValueError` with the same message.",
        "",
        f"{len(CASES)} cases.",
        "",
        "| # | case | kind | input | exit | message |",
        "|---|---|---|---|---|---|",
    ]
    for k, case in enumerate(CASES, 1):
        outcome = outcomes[case.name]
        lines.append(
            f"| {k} | `{case.name}` | {case.kind} | {_cell(case.input)} | {outcome.exit_code} "
            f"| {_cell(outcome.message)} |"
        )
    return "\n".join(lines) + "\n"


def test_docs_table_is_in_sync(outcome_of):
    table = corpus_table({case.name: outcome_of(case) for case in CASES})
    if os.environ.get("MLFF_UPDATE_DOCS"):
        DOCS.write_text(table)
    assert DOCS.is_file(), f"{DOCS} is missing: MLFF_UPDATE_DOCS=1 writes it"
    assert DOCS.read_text() == table, (
        f"{DOCS} is out of date: regenerate it with MLFF_UPDATE_DOCS=1 .venv/bin/python -m "
        "pytest tests/hostile/test_corpus.py"
    )
