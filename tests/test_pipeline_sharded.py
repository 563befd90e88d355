"""``generate`` and ``label`` shared out over 2 gloo processes (``--workers 2``).

They write the same system files, shards and packed dataset as one process, even when the
launcher's process group is SIGKILLed in the middle of labelling (its processes die with it)
and the same command run again: every frame is labelled exactly once. A failing process is
named, and its error shown with its rank. (One test, not two, for the sharded runs: every
command starts 3 processes that each take seconds to import torch.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import yaml
from rich.console import Console

from mlff_distiller import keys
from mlff_distiller.config import load_config
from mlff_distiller.data.dataset import load_dataset
from mlff_distiller.pipeline import generate, label, prepare_run_dir

pytestmark = pytest.mark.slow  # processes of their own: seconds each

#: 8 molecules of 26 frames (the initial one, 24 rattled, 1 of EMT MD): 208 frames, shards of
#: 2, so labelling writes 104 shards (52 a process) and a kill lands in its middle.
CONFIG = {
    "threads": 1,
    "structures": {
        "ase_molecules": ["CH4", "H2O", "NH3", "C2H6", "CH3OH", "HCN", "H2CO", "C2H4"],
        "rattle": {"frames": 24, "stdev": 0.05},
        "md": {"temperatures_K": [300], "frames": 1, "interval": 5},
    },
    "teacher": {"name": "emt", "shard_size": 2},
    "data": {"val_fraction": 0.2, "test_fraction": 0.2},
}
N_FRAMES = 8 * 26

#: Packed arrays that must be equal, bit for bit.
COMPARED = ("index", "numbers", "positions", keys.TEACHER_ENERGY, keys.TEACHER_FORCES, "split")


def write_config(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "run_dir": str(tmp_path / name)}))
    return path


def command(verb: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "mlff_distiller", verb, str(config), "--workers", "2"]


def cli(verb: str, config: Path) -> str:
    """``mlff-distill VERB CONFIG --workers 2``; its output, once it succeeded."""
    result = subprocess.run(
        command(verb, config), capture_output=True, text=True, timeout=300, env=_env()
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


def shard_indices(run: Path) -> list[int]:
    """Frame indices of every shard, concatenated (a frame in two shards appears twice)."""
    indices: list[int] = []
    for path in (run / "data").glob("shard-*.h5"):
        with h5py.File(path, "r") as f:
            indices += f["index"][...].tolist()
    return indices


def assert_same_dataset(run: Path, reference: Path) -> None:
    got, want = (load_dataset(r / "data" / "dataset.h5") for r in (run, reference))
    for name in COMPARED:
        np.testing.assert_array_equal(got.arrays[name], want.arrays[name], err_msg=name)
    assert got.arrays[keys.SYSTEM_ID].tolist() == want.arrays[keys.SYSTEM_ID].tolist()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The run directory of one process (in this process): generated and labelled."""
    tmp_path = tmp_path_factory.mktemp("one")
    config = load_config(write_config(tmp_path, "run"))
    prepare_run_dir(config)
    console = Console(quiet=True)
    generate(config, console)
    label(config, console)
    return tmp_path / "run"


@pytest.mark.timeout(300)
def test_two_processes_generate_and_label_like_one_through_a_sigkill(tmp_path, reference):
    config = write_config(tmp_path, "run")
    run = tmp_path / "run"
    assert "8 systems shared out over 2 processes" in cli("generate", config)
    systems = sorted(p.name for p in (reference / "structures").iterdir())
    assert sorted(p.name for p in (run / "structures").iterdir()) == systems
    for name in systems:
        assert (run / "structures" / name).read_bytes() == (
            reference / "structures" / name
        ).read_bytes(), name

    # Labelling, SIGKILLed (the launcher's process group) once the first shard is written.
    launcher = subprocess.Popen(
        command("label", config),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not any((run / "data").glob("shard-*.h5")):
            assert launcher.poll() is None, "the launcher ended before writing a shard"
            assert time.monotonic() < deadline, "no shard was written in 2 minutes"
            time.sleep(0.001)
        workers = psutil.Process(launcher.pid).children(recursive=True)
        os.killpg(launcher.pid, signal.SIGKILL)
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=60)
    assert len(workers) == 2
    # torchrun puts its processes in sessions of their own: they die with the launcher.
    _, alive = psutil.wait_procs(workers, timeout=30)
    assert alive == []
    labelled = shard_indices(run)
    assert 0 < len(labelled) < N_FRAMES, "the kill did not land in the middle of labelling"
    assert not (run / "data" / "dataset.h5").exists()

    output = cli("label", config)
    assert "shards shared out over 2 processes" in output
    assert "label: done (208 structures" in output
    assert sorted(shard_indices(run)) == list(range(N_FRAMES))
    assert not list((run / "data").glob(".*.tmp")), "a killed write's temporary is left"
    # Shards are cut from the whole list: the same files whatever the number of processes.
    shards = sorted(p.name for p in (reference / "data").glob("shard-*.h5"))
    assert sorted(p.name for p in (run / "data").glob("shard-*.h5")) == shards
    assert_same_dataset(run, reference)


@pytest.mark.timeout(300)
def test_a_failing_process_is_named_and_its_error_shown(tmp_path):
    config = write_config(tmp_path, "run")  # nothing generated: labelling fails at once
    result = subprocess.run(
        command("label", config), capture_output=True, text=True, timeout=300, env=_env()
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "missing (run the generate stage first)" in result.stderr
    assert "Traceback" not in result.stderr
    # Each process's error names its rank; the launcher names the process that failed.
    assert "rank 0: error: " in result.stderr or "rank 1: error: " in result.stderr
    assert "stopped with exit code 2 (of 2 processes" in result.stderr
