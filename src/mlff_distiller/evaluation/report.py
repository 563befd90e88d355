"""Held-out evaluation of the student against the teacher: metrics.json, plots, table."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import mlff_distiller
from mlff_distiller import keys
from mlff_distiller.atomic import atomic_path, write_json
from mlff_distiller.config import Config
from mlff_distiller.data.batching import GraphSet
from mlff_distiller.data.dataset import load_dataset
from mlff_distiller.deploy.artefact import load_student
from mlff_distiller.evaluation.metrics import error_metrics, per_system_errors, predict_set


def evaluate(config: Config, run_dir: Path) -> dict[str, Any]:
    """Score the trained student on the test systems; write ``report/metrics.json``.

    The test split holds systems (molecules, crystals) that were in neither training nor
    validation, so the errors measure distillation, not memorisation. Errors are against the
    teacher: the student cannot be better than its teacher, only as close as possible.
    """
    run_dir = Path(run_dir)
    device = torch.device(config.training.device)
    model, meta = load_student(run_dir, device=device)
    dataset = load_dataset(run_dir / "data" / "dataset.h5")
    test = dataset.subset("test")
    graphs = GraphSet.from_dataset(test, float(meta["cutoff"]), device=device)
    has_stress = bool(test.arrays["has_stress"].any())
    pred = predict_set(model, graphs, config.evaluation.batch_size, stress=has_stress)
    metrics: dict[str, Any] = {
        "teacher": dataset.teacher_name,
        "teacher_version": dataset.teacher_version,
        "split": "test (systems never seen in training or validation)",
        "n_test_structures": len(test),
        "n_test_systems": len(test.systems()),
        "n_test_atoms": int(test.n_atoms().sum()),
        "test_systems": test.systems(),
        **error_metrics(pred, test.arrays),
        "per_system": per_system_errors(pred, test.arrays),
        "student": {
            "architecture": type(model).__name__,
            **model.hyperparameters,
            "parameters": sum(p.numel() for p in model.parameters()),
            "best_epoch": meta.get("best_epoch"),
        },
        "environment": environment(device),
    }
    report = run_dir / "report"
    plot_parity(pred, test.arrays, report / "parity.png", dataset.teacher_name, metrics)
    plot_error_histograms(pred, test.arrays, report / "errors.png")
    if (run_dir / "logs" / "metrics.csv").is_file():
        plot_learning_curves(run_dir / "logs" / "metrics.csv", report / "learning_curves.png")
    # Last: metrics.json marks the evaluation done, so a run stopped before it plots again.
    write_json(report / "metrics.json", metrics)
    return metrics


def environment(device: torch.device) -> dict[str, Any]:
    """Versions and hardware of this process: what the evaluation (and report) ran on."""
    env: dict[str, Any] = {
        "mlff_distiller": mlff_distiller.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "device": str(device),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def cpu_name() -> str:
    """The processor's model name (Linux ``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux
    return platform.processor() or platform.machine()


def plot_error_histograms(
    pred: dict[str, np.ndarray], arrays: dict[str, np.ndarray], path: Path
) -> None:
    """Histograms of the student's errors against the teacher, with logarithmic counts.

    Parameters
    ----------
    pred
        :func:`~mlff_distiller.evaluation.metrics.predict_set` output: ``energy`` (n,) eV,
        ``forces`` (A, 3) eV/Å.
    arrays
        Shard-layout arrays of the same structures holding the teacher labels.
    path
        PNG to write (atomically): energy error per atom (meV/atom) of each structure, and
        force error (eV/Å) of each Cartesian component.
    """
    n_atoms = np.diff(arrays["ptr"])
    e_err = (pred[keys.ENERGY] - arrays[keys.TEACHER_ENERGY]) / n_atoms * 1000
    f_err = (pred[keys.FORCES] - arrays[keys.TEACHER_FORCES]).ravel()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), constrained_layout=True)
    for ax, err, label in (
        (axes[0], e_err, "energy error per atom, student − teacher (meV/atom)"),
        (axes[1], f_err, "force component error, student − teacher (eV/Å)"),
    ):
        ax.hist(err, bins=60, color="C0")
        ax.axvline(0.0, color="0.4", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("count")
    fig.suptitle("error distributions on the held-out test systems")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_learning_curves(csv_path: Path, path: Path) -> None:
    """Validation energy and force errors and the learning rate per epoch."""
    rows = np.genfromtxt(csv_path, delimiter=",", names=True)
    rows = np.atleast_1d(rows)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    panels = (
        ("val_energy_mae_mev_per_atom", "validation energy MAE (meV/atom)"),
        ("val_force_rmse_ev_per_a", "validation force RMSE (eV/Å)"),
        ("lr", "learning rate"),
    )
    for ax, (column, label) in zip(axes, panels, strict=True):
        ax.plot(rows["epoch"], rows[column], marker=".")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_yscale("log")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_parity(
    pred: dict[str, np.ndarray],
    arrays: dict[str, np.ndarray],
    path: Path,
    teacher: str,
    metrics: dict[str, Any],
) -> None:
    """Student against teacher: energy per atom and force components, side by side."""
    n_atoms = np.diff(arrays["ptr"])
    e_ref = arrays[keys.TEACHER_ENERGY] / n_atoms
    e_pred = pred[keys.ENERGY] / n_atoms
    f_ref = arrays[keys.TEACHER_FORCES].ravel()
    f_pred = pred[keys.FORCES].ravel()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), constrained_layout=True)
    notes = (
        f"MAE {metrics['energy_mae_mev_per_atom']:.1f} meV/atom",
        f"MAE {metrics['force_mae_ev_per_a']:.3f} eV/Å\n"
        f"RMSE {metrics['force_rmse_ev_per_a']:.3f} eV/Å",
    )
    for ax, ref, est, label, note in (
        (axes[0], e_ref, e_pred, "energy (eV/atom)", notes[0]),
        (axes[1], f_ref, f_pred, "force component (eV/Å)", notes[1]),
    ):
        ax.text(0.04, 0.96, note, transform=ax.transAxes, va="top")
        lo, hi = float(min(ref.min(), est.min())), float(max(ref.max(), est.max()))
        ax.plot([lo, hi], [lo, hi], color="0.6", lw=1)
        ax.scatter(ref, est, s=4, alpha=0.5)
        ax.set_xlabel(f"teacher ({teacher}) {label}")
        ax.set_ylabel(f"student {label}")
    fig.suptitle("held-out test systems")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def metrics_table(metrics: dict[str, Any]) -> Table:
    """The headline held-out metrics as a rich table."""
    table = Table(
        title=(
            f"Student vs teacher ({metrics['teacher']}) on {metrics['n_test_systems']} held-out "
            f"systems, {metrics['n_test_structures']} structures"
        )
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("unit")
    rows = [
        ("energy MAE", metrics["energy_mae_mev_per_atom"], ".2f", "meV/atom"),
        ("energy RMSE", metrics["energy_rmse_mev_per_atom"], ".2f", "meV/atom"),
        ("force MAE", metrics["force_mae_ev_per_a"], ".4f", "eV/Å"),
        ("force RMSE", metrics["force_rmse_ev_per_a"], ".4f", "eV/Å"),
        ("force cosine", metrics["force_cosine"], ".4f", ""),
    ]
    if "stress_mae_gpa" in metrics:
        rows.append(("stress MAE", metrics["stress_mae_gpa"], ".3f", "GPa"))
    for name, value, fmt, unit in rows:
        table.add_row(name, format(value, fmt), unit)
    for symbol, value in metrics["force_rmse_per_element_ev_per_a"].items():
        table.add_row(f"force RMSE, {symbol}", format(value, ".4f"), "eV/Å")
    return table


def print_metrics(metrics: dict[str, Any], console: Console | None = None) -> None:
    """Print :func:`metrics_table`."""
    (console or Console()).print(metrics_table(metrics))
