"""Training loop: AdamW, EMA, ReduceLROnPlateau, gradient clipping, checkpoint/resume, logs.

Everything lives in the run directory: ``checkpoints/last.ckpt`` (full state, rewritten
atomically after each epoch, so Ctrl-C or a kill loses at most the epoch in progress),
``checkpoints/best.ckpt`` (weights with the lowest validation loss), ``logs/metrics.csv``
(one row per epoch, rewritten from the checkpoint's history so it never disagrees with it),
TensorBoard events when tensorboard is installed, and at the end ``model/student.pt``.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mlff_distiller import keys
from mlff_distiller.atomic import atomic_path, write_text
from mlff_distiller.config import Config
from mlff_distiller.data.batching import GraphSet
from mlff_distiller.data.dataset import PackedDataset, load_dataset
from mlff_distiller.deploy.artefact import save_student
from mlff_distiller.evaluation.metrics import error_metrics, predict_set
from mlff_distiller.models import PaiNN, predict
from mlff_distiller.models.components import fit_reference_energies
from mlff_distiller.training.losses import distillation_loss

CSV_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    "val_energy_mae_mev_per_atom",
    "val_force_rmse_ev_per_a",
    "seconds",
)


def build_student(config: Config, train: PackedDataset) -> PaiNN:
    """A fresh student whose per-element reference energies and scale fit the training set.

    The reference energies are a least-squares fit of the teacher's total energies on
    composition, so the network only learns the (much smaller) interaction energy; the
    output scale is the RMS of the teacher's force components.
    """
    torch.manual_seed(config.training.seed)
    model = PaiNN(**config.model.model_dump())
    ptr = train.arrays["ptr"]
    numbers = [train.arrays["numbers"][ptr[k] : ptr[k + 1]] for k in range(len(train))]
    refs = fit_reference_energies(numbers, train.arrays[keys.TEACHER_ENERGY])
    model.reference_energies.copy_(refs.to(model.reference_energies.dtype))
    rms_force = float(np.sqrt(np.mean(train.arrays[keys.TEACHER_FORCES] ** 2)))
    model.scale.fill_(max(rms_force, 1e-3))
    return model


def _csv_text(history: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue()


def _tensorboard(log_dir: Path, purge_step: int) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


class Trainer:
    """Trains the student of one run directory; resumes from ``checkpoints/last.ckpt``.

    Parameters
    ----------
    config
        The resolved run configuration.
    run_dir
        The run directory (holds ``data/dataset.h5``).
    console
        Where progress and epoch lines go.
    """

    def __init__(self, config: Config, run_dir: Path, console: Console | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.console = console or Console()
        self.last_path = self.run_dir / "checkpoints" / "last.ckpt"
        self.best_path = self.run_dir / "checkpoints" / "best.ckpt"
        self.student_path = self.run_dir / "model" / "student.pt"
        self.device = torch.device(config.training.device)

    def is_done(self) -> bool:
        """Whether training finished and the student file exists."""
        if not (self.last_path.is_file() and self.student_path.is_file()):
            return False
        state = torch.load(self.last_path, map_location="cpu", weights_only=True)
        return self._finished(state)

    def _finished(self, state: dict[str, Any]) -> bool:
        # Judged against the current config, so raising ``epochs`` continues a finished run.
        if not state["history"]:
            return False
        last = state["history"][-1]
        elapsed = sum(row["seconds"] for row in state["history"])
        return bool(self._stop_reason(last["epoch"], last["lr"], elapsed))

    def _save(self, path: Path, state: dict[str, Any]) -> None:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def run(self) -> Path:
        """Train until done (epochs, minimum LR or time budget); return the student path."""
        cfg = self.config.training
        dataset = load_dataset(self.run_dir / "data" / "dataset.h5")
        train_data, val_data = dataset.subset("train"), dataset.subset("val")
        if len(val_data) == 0:
            val_data = train_data  # no validation systems: select on training error
        cutoff = self.config.model.cutoff
        with self.console.status("building neighbour lists"):
            train_set = GraphSet.from_dataset(train_data, cutoff, device=self.device)
            val_set = GraphSet.from_dataset(val_data, cutoff, device=self.device)

        model = build_student(self.config, train_data).to(self.device)
        ema = AveragedModel(
            model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True
        )
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, factor=cfg.lr_factor, patience=cfg.lr_patience
        )
        generator = torch.Generator().manual_seed(cfg.seed)
        state: dict[str, Any] = {"epoch": 0, "best_val": math.inf, "history": [], "finished": False}
        if self.last_path.is_file():
            state = torch.load(self.last_path, map_location=self.device, weights_only=True)
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"].cpu())
            state["finished"] = self._finished(state)
            self.console.print(f"resuming training after epoch {state['epoch']}")

        log_dir = self.run_dir / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        writer = _tensorboard(log_dir, purge_step=state["epoch"] + 1)
        elapsed = sum(row["seconds"] for row in state["history"])
        stop_reason = state.get("stop_reason", "")
        try:
            with self._progress() as progress:
                task = progress.add_task(
                    "training", total=cfg.epochs, completed=state["epoch"], loss=math.nan
                )
                while not state["finished"]:
                    epoch = state["epoch"] + 1
                    start = time.perf_counter()
                    train_loss = self._train_epoch(model, ema, optimizer, train_set, generator)
                    val = error_metrics(
                        predict_set(ema.module, val_set, cfg.batch_size), val_data.arrays
                    )
                    val_loss = (
                        cfg.energy_weight * (val["energy_rmse_mev_per_atom"] / 1000) ** 2
                        + cfg.force_weight * val["force_rmse_ev_per_a"] ** 2
                    )
                    scheduler.step(val_loss)
                    seconds = time.perf_counter() - start
                    elapsed += seconds
                    row = {
                        "epoch": epoch,
                        "lr": optimizer.param_groups[0]["lr"],
                        "train_loss": train_loss,
                        "val_loss": val_loss,
                        "val_energy_mae_mev_per_atom": val["energy_mae_mev_per_atom"],
                        "val_force_rmse_ev_per_a": val["force_rmse_ev_per_a"],
                        "seconds": seconds,
                    }
                    improved = val_loss < state["best_val"]
                    if improved:
                        self._save(
                            self.best_path,
                            {"epoch": epoch, "model": ema.module.state_dict(), "val": val},
                        )
                    stop_reason = self._stop_reason(epoch, row["lr"], elapsed)
                    state = {
                        "epoch": epoch,
                        "best_val": min(val_loss, state["best_val"]),
                        "history": [*state["history"], row],
                        "finished": bool(stop_reason),
                        "stop_reason": stop_reason,
                        "model": model.state_dict(),
                        "ema": ema.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "generator": generator.get_state(),
                    }
                    self._save(self.last_path, state)
                    write_text(log_dir / "metrics.csv", _csv_text(state["history"]))
                    if writer is not None:
                        for name, value in row.items():
                            if name != "epoch":
                                writer.add_scalar(name, value, epoch)
                    self._report(progress, task, row, improved)
        finally:
            if writer is not None:
                writer.close()
        self.console.print(f"training finished: {stop_reason}")
        self._export(dataset)
        return self.student_path

    def _stop_reason(self, epoch: int, lr: float, elapsed: float) -> str:
        cfg = self.config.training
        if epoch >= cfg.epochs:
            return f"reached {cfg.epochs} epochs"
        if lr < cfg.min_lr:
            return f"learning rate fell below {cfg.min_lr:g}"
        if cfg.max_minutes is not None and elapsed > 60 * cfg.max_minutes:
            return f"time budget of {cfg.max_minutes:g} min used after epoch {epoch}"
        return ""

    def _train_epoch(
        self,
        model: PaiNN,
        ema: AveragedModel,
        optimizer: torch.optim.Optimizer,
        train_set: GraphSet,
        generator: torch.Generator,
    ) -> float:
        cfg = self.config.training
        model.train()
        total, count = 0.0, 0
        for graph, targets in train_set.batches(cfg.batch_size, shuffle=True, generator=generator):
            optimizer.zero_grad(set_to_none=True)
            pred = predict(
                model, graph, forces=True, stress=cfg.stress_weight > 0, create_graph=True
            )
            loss, _ = distillation_loss(
                pred, targets, cfg.energy_weight, cfg.force_weight, cfg.stress_weight
            )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            ema.update_parameters(model)
            total += float(loss.detach()) * graph.n_structures
            count += graph.n_structures
        return total / count

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("epoch {task.completed}/{task.total}"),
            TextColumn("val loss {task.fields[loss]:.4g}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.console.is_terminal,
        )

    def _report(self, progress: Progress, task: Any, row: dict[str, Any], improved: bool) -> None:
        progress.update(task, completed=row["epoch"], loss=row["val_loss"])
        if not self.console.is_terminal:
            mark = " *" if improved else ""
            self.console.print(
                f"epoch {row['epoch']:4d}  lr {row['lr']:.2e}  train {row['train_loss']:.4g}  "
                f"val E {row['val_energy_mae_mev_per_atom']:.2f} meV/atom  "
                f"F {row['val_force_rmse_ev_per_a']:.4f} eV/Å  ({row['seconds']:.1f} s){mark}"
            )

    def _export(self, dataset: PackedDataset) -> None:
        best = torch.load(self.best_path, map_location="cpu", weights_only=True)
        model = PaiNN(**self.config.model.model_dump())
        model.load_state_dict(best["model"])
        save_student(
            self.student_path,
            model,
            {
                "elements": sorted(int(z) for z in np.unique(dataset.arrays["numbers"])),
                keys.TEACHER_NAME: dataset.teacher_name,
                keys.TEACHER_VERSION: dataset.teacher_version,
                "best_epoch": int(best["epoch"]),
                "val_metrics": best["val"],
            },
        )
