"""SIGKILL ``mlff-distill run`` in every stage; the same command then finishes the same run.

A seeded RNG draws the moments. Most kills are *pauses*: the child is stopped right before it
renames a finished file into place (its temporary file complete, the target not yet there),
the most delicate moment of an atomic write, and then killed; which file (which system, shard,
epoch, plot) is drawn at random, so every stage is hit for certain. Two kills are *wild*: at a
random delay after a file appears, wherever the child is. After every kill each file of the
run directory must be complete and loadable; at the end the data, the training history and
the student must equal those of an uninterrupted run, bit for bit, and training must have
resumed from the epoch of the last checkpoint each time.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import pytest
import torch

from mlff_distiller import pipeline
from mlff_distiller.data.store import shard_name

#: The child: the CLI, with an optional pause before ``os.replace`` onto a file name.
CHILD = """
import os, sys, time
from pathlib import Path

pause = os.environ.get("MLFF_TEST_PAUSE")
if pause:
    name, count, marker = pause.split("|")
    real_replace, seen = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            seen[0] += 1
            if seen[0] == int(count):
                Path(marker + ".part").write_text(str(dst))
                real_replace(marker + ".part", marker)
                time.sleep(600)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace

from mlff_distiller.cli import app

app(prog_name="mlff-distill")
"""

#: Pause targets of a stage: (RNG, run directory, config) -> (file name, which write of it).
Moment = Callable[[random.Random, Path, dict], tuple[str, int]]


def last_epoch(run: Path) -> int | None:
    path = run / "checkpoints" / "last.ckpt"
    if not path.is_file():
        return None
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def n_labelled(run: Path) -> int:
    count = 0
    for shard in (run / "data").glob("shard-*.h5"):
        with h5py.File(shard, "r") as f:
            count += len(f["index"])
    return count


def n_frames(run: Path) -> int:
    from ase.io import read

    return sum(len(read(p, index=":")) for p in (run / "structures").glob("system-*.extxyz"))


def stage_in_progress(run: Path, config: dict) -> str:
    """The first stage (or packing) whose output the run directory lacks."""
    systems = list((run / "structures").glob("system-*.extxyz"))
    if len(systems) < len(config["structures"]["ase_molecules"]):
        return "generate"
    if n_labelled(run) < n_frames(run):
        return "label"
    if not (run / "data" / "dataset.h5").is_file():
        return "pack"
    if not (run / "report" / "data_report.json").is_file():
        return "data-report"
    if not (run / "model" / "student.pt").is_file():
        return "train"
    if not (run / "report" / "metrics.json").is_file():
        return "evaluate"
    if not (run / "report" / "md.json").is_file():
        return "validate-md"
    if not (run / "report" / "index.html").is_file():
        return "report"
    return "done"


def missing(pattern: str, run: Path, folder: str, total: int, rng: random.Random) -> int:
    """A random number k < total - 1 whose file ``pattern % k`` is not written yet."""
    left = [k for k in range(total - 1) if not (run / folder / (pattern % k)).exists()]
    assert left, f"nothing left to kill in {folder}: the previous kill went too far"
    return rng.choice(left)


def generate_moment(rng: random.Random, run: Path, config: dict) -> tuple[str, int]:
    n = len(config["structures"]["ase_molecules"])
    k = missing("system-%04d.extxyz", run, "structures", n, rng)
    return f"system-{k:04d}.extxyz", 1


def label_moment(rng: random.Random, run: Path, config: dict) -> tuple[str, int]:
    # Shards are named by their first frame: 0, size, 2 size... (no near-duplicates here).
    size = config["teacher"]["shard_size"]
    shards = -(-n_frames(run) // size)
    left = [k for k in range(shards - 1) if not (run / "data" / shard_name(k * size)).exists()]
    assert left, "nothing left to kill in data: the previous kill went too far"
    return shard_name(rng.choice(left) * size), 1


def train_moment(rng: random.Random, run: Path, config: dict) -> tuple[str, int]:
    done = last_epoch(run) or 0
    epoch = rng.randint(done + 2, config["training"]["epochs"] - 2)
    return "last.ckpt", epoch - done


def pack_moment(rng: random.Random, run: Path, config: dict) -> tuple[str, int]:
    return "dataset.h5", 1


def data_report_moment(rng: random.Random, run: Path, config: dict) -> tuple[str, int]:
    files = ["data/histograms.png", "data/elements.png", "data_report.json"]  # in this order
    left = [f for f in files if not (run / "report" / f).exists()]
    return Path(rng.choice(left)).name, 1


def evaluate_moment(rng: random.Random, run: Path, config: dict) -> tuple[str, int]:
    files = ["parity.png", "errors.png", "learning_curves.png", "metrics.json"]  # in this order
    return rng.choice([f for f in files if not (run / "report" / f).exists()]), 1


def validate_md_moment(rng: random.Random, run: Path, config: dict) -> tuple[str, int]:
    return "md.json", 1  # after the plots, whose names depend on the test systems


def report_moment(rng: random.Random, run: Path, config: dict) -> tuple[str, int]:
    return rng.choice(["model_card.md", "index.html"]), 1  # written in this order


#: Every stage of the pipeline (and packing, inside ``label``) has its kill.
MOMENTS: dict[str, Moment] = {
    "generate": generate_moment,
    "label": label_moment,
    "pack": pack_moment,
    "data-report": data_report_moment,
    "train": train_moment,
    "evaluate": evaluate_moment,
    "validate-md": validate_md_moment,
    "report": report_moment,
}


@dataclass
class Child:
    proc: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text()


def launch(config: Path, log: Path, pause: str | None = None) -> Child:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("MLFF_TEST_PAUSE", None)
    if pause is not None:
        env["MLFF_TEST_PAUSE"] = pause
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, "run", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return Child(proc, log)


def wait_for(condition: Callable[[], bool], child: Child, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert child.proc.poll() is None, f"the child ended early:\n{child.output()}"
        assert time.monotonic() < deadline, f"timed out:\n{child.output()}"
        time.sleep(0.01)


def kill(child: Child) -> None:
    child.proc.send_signal(signal.SIGKILL)
    child.proc.wait(timeout=60)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """Children to kill if the test stops early (a paused child would sleep for minutes)."""
    started: list[Child] = []
    yield started
    for child in started:
        if child.proc.poll() is None:
            kill(child)


def test_every_stage_survives_sigkill(tmp_path, hostile, children):
    assert set(pipeline.STAGES) <= set(MOMENTS), "a new stage needs its kill moment in MOMENTS"
    rng = random.Random(20261125)
    staged = hostile.STAGED
    reference = tmp_path / "reference"
    config = hostile.write_config(tmp_path / "reference.yaml", reference, base=staged)
    uninterrupted = launch(config, tmp_path / "reference.log")
    children.append(uninterrupted)
    run = tmp_path / "run"
    config = hostile.write_config(tmp_path / "staged.yaml", run, base=staged)
    kills: list[tuple[str, str]] = []  # (how, the stage it hit)

    def start(pause: str | None = None) -> tuple[Child, int | None, bool]:
        before = last_epoch(run), (run / "model" / "student.pt").is_file()
        children.append(launch(config, tmp_path / f"child-{len(kills)}.log", pause))
        return children[-1], *before

    def resumed(child: Child, epoch: int | None, had_student: bool) -> None:
        """Training went on from the epoch of the checkpoint the child found."""
        if epoch is not None and not had_student:
            assert f"resuming training after epoch {epoch}" in child.output(), child.output()

    def pause_kill(stage: str) -> None:
        name, count = MOMENTS[stage](rng, run, staged)
        marker = tmp_path / f"paused-{len(kills)}"
        child, epoch, had_student = start(f"{name}|{count}|{marker}")
        wait_for(marker.exists, child)
        kill(child)
        if name == "last.ckpt":  # the checkpoint of the epoch before is intact
            assert last_epoch(run) == (epoch or 0) + count - 1
        else:
            assert not Path(marker.read_text()).exists()
        if stage in ("train", "evaluate"):
            resumed(child, epoch, had_student)
        hit = stage_in_progress(run, staged)
        assert hit == stage, f"paused before {name} #{count}, but the run was in {hit}"
        kills.append((f"before {name} #{count}", hit))
        assert hostile.artefact_problems(run, temporaries=True) == []

    def wild_kill(condition: Callable[[], bool], delay: float) -> None:
        child, epoch, had_student = start()
        wait_for(condition, child)
        time.sleep(rng.uniform(0, delay))
        kill(child)
        if last_epoch(run) != epoch:
            resumed(child, epoch, had_student)
        kills.append(("at random", stage_in_progress(run, staged)))
        assert hostile.artefact_problems(run, temporaries=True) == []

    wild_kill((run / "structures" / "system-0000.extxyz").exists, 0.02)
    if stage_in_progress(run, staged) == "generate":
        pause_kill("generate")
    pause_kill("label")
    pause_kill("pack")
    pause_kill("data-report")
    pause_kill("train")
    epoch = last_epoch(run) or 0
    wild_kill(lambda: (last_epoch(run) or 0) > epoch, 0.5)
    pause_kill("evaluate")
    pause_kill("validate-md")
    pause_kill("report")

    final, epoch, had_student = start()
    assert final.proc.wait(timeout=600) == 0, final.output()
    resumed(final, epoch, had_student)
    assert uninterrupted.proc.wait(timeout=600) == 0, uninterrupted.output()

    print("kills:", kills)  # shown when the test fails
    stages = set(MOMENTS)  # every stage was hit
    assert stages <= {s for _, s in kills}, kills
    assert hostile.artefact_problems(run) == []  # the temporaries of the kills are gone too
    hostile.assert_same_results(run, reference)
