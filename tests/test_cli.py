"""End to end: the CLI on a tiny EMT config, resuming, interruption and clear errors."""

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from mlff_distiller.cli import app

runner = CliRunner()

TINY = {
    "structures": {
        "ase_molecules": ["CH4", "H2O", "NH3", "C2H6", "CH3OH", "C2H4", "HCN", "CO2", "H2CO"],
        "rattle": {"frames": 2, "stdev": 0.05},
        "md": {"temperatures_K": [300], "frames": 2, "interval": 2},
    },
    "teacher": {"name": "emt"},
    "data": {"val_fraction": 0.1, "test_fraction": 0.2},
    "model": {"n_features": 16, "n_blocks": 2, "n_rbf": 8, "cutoff": 4.0},
    "training": {"epochs": 2, "batch_size": 4},
    "validate_md": {
        "nve_student_steps": 20,
        "nve_teacher_steps": 10,
        "temperatures_K": [300],
        "nvt_student_steps": 20,
        "nvt_teacher_steps": 10,
        "on_policy_frames": 2,
    },
}

ONE_ATOM_XYZ = "1\nProperties=species:S:1:pos:R:3\nH 0 0 0\n"

REQUIRED = (
    "teacher",
    "n_test_structures",
    "n_test_systems",
    "energy_mae_mev_per_atom",
    "force_mae_ev_per_a",
    "force_rmse_ev_per_a",
    "force_cosine",
)


def _write_config(tmp_path, **changes):
    config = {**TINY, "run_dir": str(tmp_path / "run"), **changes}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_run_all_stages_then_continue(tmp_path):
    path = _write_config(tmp_path)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    metrics = json.loads((run / "report" / "metrics.json").read_text())
    for key in REQUIRED:
        assert key in metrics
    assert metrics["teacher"] == "emt"
    assert metrics["n_test_systems"] == 2
    assert all(math.isfinite(metrics[k]) for k in REQUIRED[3:])
    assert -1 <= metrics["force_cosine"] <= 1
    assert "force MAE" in result.output
    for produced in (
        "config.yaml",
        "data/dataset.h5",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        "model/student.pt",
        "logs/metrics.csv",
        "report/parity.png",
        "report/learning_curves.png",
        "report/md.json",
        "data/filters.json",
        "report/data_report.json",
        "report/data/histograms.png",
        "report/data/elements.png",
    ):
        assert (run / produced).is_file(), produced
    assert len((run / "logs" / "metrics.csv").read_text().splitlines()) == 1 + 2

    # Running again does nothing new; raising the epochs continues training from the checkpoint.
    again = runner.invoke(app, ["run", str(path)])
    assert again.exit_code == 0, again.output
    assert "generate: done" in again.output
    assert "data-report: " in again.output
    assert "train: done" in again.output
    more = runner.invoke(app, ["train", str(run), "training.epochs=3", "--accept-changes"])
    assert more.exit_code == 0, more.output
    assert "resuming training after epoch 2" in more.output
    assert len((run / "logs" / "metrics.csv").read_text().splitlines()) == 1 + 3


def test_changed_config_on_an_existing_run_is_refused(tmp_path):
    path = _write_config(tmp_path, structures={**TINY["structures"], "ase_molecules": ["CH4"]})
    run = tmp_path / "run"
    (run / "structures").mkdir(parents=True)
    (run / "structures" / "system-0000.extxyz").write_text(ONE_ATOM_XYZ)
    (run / "config.yaml").write_text("training:\n  epochs: 99\n")
    result = runner.invoke(app, ["generate", str(path)])
    assert result.exit_code == 2
    assert "training.epochs" in result.output
    assert "--accept-changes" in result.output


def test_a_run_directory_without_outputs_takes_a_corrected_config(tmp_path):
    bad = _write_config(tmp_path, structures={**TINY["structures"], "smiles": ["C1CC"]})
    result = runner.invoke(app, ["generate", str(bad)])
    assert result.exit_code == 2
    assert "'C1CC'" in result.output
    assert (tmp_path / "run" / "config.yaml").is_file()
    structures = {**TINY["structures"], "md": {"frames": 0}, "rattle": {"frames": 0}}
    fixed = _write_config(tmp_path, structures=structures)
    result = runner.invoke(app, ["generate", str(fixed)])
    assert result.exit_code == 0, result.output


def test_unknown_key_is_one_clear_error(tmp_path):
    path = _write_config(tmp_path, trainig={"epochs": 1})
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "unknown key 'trainig'" in result.output
    assert not (tmp_path / "run").exists()


def test_unsupported_element_is_one_clear_error(tmp_path):
    structures = {**TINY["structures"], "ase_molecules": ["CH4", "H2O", "SiH4", "NH3"]}
    structures["md"] = {"frames": 0}
    path = _write_config(tmp_path, structures=structures)
    result = runner.invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    assert "SiH4" in result.output
    assert "Si" in result.output


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_the_run_continues(tmp_path):
    path = _write_config(
        tmp_path, training={**TINY["training"], "epochs": 200, "max_minutes": None}
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mlff_distiller.cli", "run", str(path)]
    # A shell that starts jobs in the background (as CI may) makes them ignore SIGINT, and
    # Python then never turns Ctrl-C into KeyboardInterrupt: give the child the default.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert last.exists(), proc.communicate()[0].decode()
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0].decode()
    assert proc.returncode == 130, output
    assert "run the same command again to continue" in output
    leftovers = [p for p in (tmp_path / "run").rglob(".*.tmp")]
    assert leftovers == []

    resumed = runner.invoke(app, ["train", str(path), "training.epochs=1", "--accept-changes"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming training after epoch" in resumed.output
    assert (tmp_path / "run" / "model" / "student.pt").is_file()


def test_export_data_writes_a_split_as_extxyz(tmp_path, packed_dataset_path, packed_dataset):
    import shutil

    import ase.io

    (tmp_path / "run" / "data").mkdir(parents=True)
    shutil.copy(packed_dataset_path, tmp_path / "run" / "data" / "dataset.h5")
    out = tmp_path / "train.extxyz"
    result = runner.invoke(
        app, ["export-data", str(tmp_path / "run"), str(out), "--split", "train"]
    )
    assert result.exit_code == 0, result.output
    n_train = int((packed_dataset.arrays["split"] == 0).sum())
    assert f"({n_train} structures, split train)" in result.output
    frames = ase.io.read(out, index=":")
    assert len(frames) == n_train
    assert {f.info["split"] for f in frames} == {"train"}
    missing = runner.invoke(app, ["export-data", str(tmp_path / "nowhere"), str(out)])
    assert missing.exit_code == 2
    assert "is not a run directory" in missing.output
