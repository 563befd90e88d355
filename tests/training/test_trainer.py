"""The training step on padded batches, stop reasons, learning on EMT data, DDP and resume."""

import io
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from rich.console import Console

from mlff_distiller import keys
from mlff_distiller.config import ConfigError, load_config
from mlff_distiller.data.batching import GraphSet, capacity, pad_batch
from mlff_distiller.data.dataset import pack
from mlff_distiller.data.store import LabelStore
from mlff_distiller.graph import padding_length
from mlff_distiller.models import predict
from mlff_distiller.pipeline import prepare_run_dir
from mlff_distiller.teachers.base import Labels
from mlff_distiller.testing import SYMMETRY, tiny_painn
from mlff_distiller.training.losses import DistillationLoss, LossScales
from mlff_distiller.training.step import cells_for_stress
from mlff_distiller.training.trainer import Trainer

CUTOFF = 4.0
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
TINY_MODEL = ["model.n_features=16", "model.n_blocks=2", "model.n_rbf=8", "model.cutoff=4.0"]


def _loss_and_gradients(model, loss, graph, targets):
    model.zero_grad(set_to_none=True)
    pred = predict(
        model, cells_for_stress(graph), stress=True, create_graph=True, check_cells=False
    )
    value, _ = loss(pred, targets, graph.batch)
    value.backward()
    return value.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("huber_delta", [None, 0.5])
def test_padded_step_equals_unpadded_step(packed_dataset, huber_delta):
    """Static shapes change nothing: same loss, same gradients (molecules and cells mixed)."""
    data = packed_dataset.subset("train")
    graphs = GraphSet.from_dataset(data, CUTOFF, dtype=torch.float64)
    assert graphs.has_stress.any()
    assert not graphs.has_stress.all()
    model = tiny_painn(dtype=torch.float64)
    loss = DistillationLoss(1.0, 1.0, 1.0, LossScales(0.01, 0.5, 1e-4), huber_delta)
    index = np.arange(len(data))[::-1][:6]
    expected = _loss_and_gradients(model, loss, *graphs.gather(index))
    static = capacity(graphs.n_atoms, graphs.n_edges, max_structures=8)
    padded = pad_batch(*graphs.gather(index), static, padding_length(CUTOFF))
    assert padded[0].positions.shape[0] > len(padded[1][keys.FORCES]) - 1
    got = _loss_and_gradients(model, loss, *padded)
    torch.testing.assert_close(got[0], expected[0], **SYMMETRY)
    for a, b in zip(got[1], expected[1], strict=True):
        torch.testing.assert_close(a, b, **SYMMETRY)


def _emt_run(tmp_path, *overrides):
    """A run directory with a packed dataset of EMT-labelled, rattled small molecules."""
    names = ["CH4", "H2O", "NH3", "C2H6", "CH3OH", "C2H4", "HCN", "CO2", "H2CO", "CH3CHO"]
    frames, labels = [], []
    for k, name in enumerate(names):
        for r in range(6):
            atoms = molecule(name)
            atoms.rattle(0.08, seed=10 * k + r)
            atoms.info[keys.SYSTEM_ID] = name
            atoms.calc = EMT()
            labels.append(Labels(energy=atoms.get_potential_energy(), forces=atoms.get_forces()))
            frames.append(atoms)
    config = load_config(None, [f"run_dir={tmp_path}", *TINY_MODEL, *overrides])
    prepare_run_dir(config)
    store = LabelStore(tmp_path / "data")
    store.write_shard(frames, labels, list(range(len(frames))), "emt", "test")
    pack(store, tmp_path / "data" / "dataset.h5", 0.2, 0.2, seed=0, cutoff=CUTOFF)
    return config


def _train_emt(run_dir, *overrides):
    """Train on EMT data for 20 short epochs; the checkpoint's state."""
    config = _emt_run(
        run_dir,
        "training.epochs=20",
        "training.batch_size=4",
        "training.lr=3e-3",
        "training.ema_decay=0.9",
        *overrides,
    )
    Trainer(config, run_dir, Console(quiet=True)).run()
    return config, torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)


def test_default_loss_trains_energies_and_forces(tmp_path):
    """The default (normalised) loss learns energies; the old raw weights hardly did."""
    config, state = _train_emt(tmp_path / "default")
    scales, history = state["loss_scales"], state["history"]
    first, best = history[0], min(history, key=lambda row: row["val_loss"])
    assert len(history) == 20
    assert history[-1]["lr"] == pytest.approx(config.training.min_lr)
    # Both errors end below what a student of reference energies alone gets.
    assert best["val_energy_rmse_mev_per_atom"] / 1000 < 0.8 * np.sqrt(scales["energy"])
    assert best["val_force_rmse_ev_per_a"] < 0.35 * np.sqrt(scales["forces"])
    assert best["val_energy_rmse_mev_per_atom"] < 0.5 * first["val_energy_rmse_mev_per_atom"]
    assert (tmp_path / "default" / "model" / "student.pt").is_file()
    # The former defaults: raw squared errors, energy weight 1, force weight 10.
    _, raw = _train_emt(
        tmp_path / "raw",
        "training.normalise_loss=false",
        "training.energy_weight=1",
        "training.force_weight=10",
    )
    raw_best = min(raw["history"], key=lambda row: row["val_loss"])
    assert best["val_energy_rmse_mev_per_atom"] < 0.6 * raw_best["val_energy_rmse_mev_per_atom"]


def test_stop_reasons(tmp_path):
    config = load_config(
        None,
        [
            f"run_dir={tmp_path}",
            "training.epochs=50",
            "training.max_minutes=1",
            "training.early_stopping_patience=3",
        ],
    )
    trainer = Trainer(config, tmp_path, Console(quiet=True))

    def history(losses, seconds=1.0):
        return [
            {"epoch": k + 1, "val_loss": v, "seconds": seconds, "lr": 1e-3}
            for k, v in enumerate(losses)
        ]

    assert trainer._stop_reason(history([3, 2, 1]), 1.0) == ""
    assert "early stopping" in trainer._stop_reason(history([3, 1, 2, 2, 2]), 1.0)
    assert "time budget" in trainer._stop_reason(history([3, 2, 1], seconds=20.0), 1.0)
    assert "reached 50 epochs" in trainer._stop_reason(history(range(50, 0, -1)), 1.0)


def _torchrun(run_dir, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "mlff_distiller",
        "train",
        str(run_dir),
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.mark.slow
def test_two_processes_follow_one_process_and_resume(packed_dataset_path, tmp_path):
    """gloo, 2 CPU processes, stopped after one epoch and resumed == 1 process, 2 epochs."""
    # Batches of 3 from 10 training structures: the last batch has one structure, so the
    # second process gets a weightless stand-in. Molecules and cells (stress) are mixed.
    overrides = [
        *TINY_MODEL,
        "training.batch_size=3",
        "training.lr_schedule=plateau",  # an LR that does not depend on the epoch budget
        "training.warmup_epochs=0",
        "training.ema_decay=0.5",
    ]
    runs = {}
    for name, epochs in (("one", 2), ("two", 1)):
        config = load_config(
            None, [f"run_dir={tmp_path / name}", *overrides, f"training.epochs={epochs}"]
        )
        prepare_run_dir(config)
        (tmp_path / name / "data").mkdir()
        shutil.copy(packed_dataset_path, tmp_path / name / "data" / "dataset.h5")
        runs[name] = config
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        Trainer(runs["one"], tmp_path / "one", Console(quiet=True)).run()
    finally:
        torch.set_num_threads(threads)
    _torchrun(tmp_path / "two")
    output = _torchrun(tmp_path / "two", "training.epochs=2", "--accept-changes")
    assert "resuming training after epoch 1" in output
    one, two = (
        torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)
        for name in ("one", "two")
    )
    assert [row["epoch"] for row in two["history"]] == [1, 2]
    for part in ("model", "ema"):
        for key, value in one[part].items():
            torch.testing.assert_close(two[part][key], value, rtol=1e-5, atol=1e-6)
    for a, b in zip(one["history"], two["history"], strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=1e-5)
    assert (tmp_path / "two" / "model" / "student.pt").is_file()


@pytest.mark.parametrize("device", DEVICES)
def test_static_training_resumes_like_an_uninterrupted_run(packed_dataset_path, tmp_path, device):
    """Static shapes (captured on CUDA): stopped after one epoch and resumed == two epochs."""
    overrides = [
        *TINY_MODEL,
        "training.batch_size=3",
        "training.lr_schedule=plateau",  # an LR that does not depend on the epoch budget
        "training.warmup_epochs=0.5",
        f"training.device={device}",
        "training.static_shapes=true",
    ]
    states, outputs = {}, []
    for name, epochs in (("one", [2]), ("two", [1, 2])):
        run_dir = tmp_path / name
        for count in epochs:
            config = load_config(
                None, [f"run_dir={run_dir}", *overrides, f"training.epochs={count}"]
            )
            if not run_dir.exists():
                prepare_run_dir(config)
                (run_dir / "data").mkdir()
                shutil.copy(packed_dataset_path, run_dir / "data" / "dataset.h5")
            output = io.StringIO()
            Trainer(config, run_dir, Console(file=output, width=200)).run()
            outputs.append(output.getvalue())
        states[name] = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    captured = device == "cuda"
    assert all(("step captured in a CUDA graph" in text) == captured for text in outputs[:2])
    assert "resuming training after epoch 1" in outputs[2]
    one, two = states["one"], states["two"]
    assert all(group["capturable"] == captured for group in two["optimizer"]["param_groups"])
    for part in ("model", "ema"):
        for key, value in one[part].items():
            torch.testing.assert_close(two[part][key], value, rtol=1e-4, atol=1e-5)


def test_compiled_training_equals_uncompiled_training(packed_dataset_path, tmp_path):
    """``training.compile=true`` (here on a CPU): the trainer's epoch, compiled, is the same
    to float32 round-off."""
    overrides = [
        *TINY_MODEL,
        "training.batch_size=3",
        "training.epochs=1",
        "training.static_shapes=true",
    ]
    states, outputs = {}, {}
    for compiled in (False, True):
        run_dir = tmp_path / str(compiled)
        config = load_config(
            None, [f"run_dir={run_dir}", *overrides, f"training.compile={str(compiled).lower()}"]
        )
        prepare_run_dir(config)
        (run_dir / "data").mkdir()
        shutil.copy(packed_dataset_path, run_dir / "data" / "dataset.h5")
        output = io.StringIO()
        Trainer(config, run_dir, Console(file=output, width=200)).run()
        outputs[compiled] = output.getvalue()
        states[compiled] = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert "compiled (the first step compiles)" in outputs[True]
    assert "compiled" not in outputs[False]
    for part in ("model", "ema"):
        for key, value in states[False][part].items():
            torch.testing.assert_close(states[True][part][key], value, rtol=1e-4, atol=1e-5)


def test_compile_needs_static_shapes_and_excludes_lean_messages():
    with pytest.raises(ConfigError, match=r"training\.compile=true needs training\.static_shapes"):
        load_config(None, ["training.compile=true"])
    with pytest.raises(ConfigError, match="exclude each other"):
        load_config(
            None,
            ["training.compile=true", "training.static_shapes=true", "model.lean_messages=true"],
        )
