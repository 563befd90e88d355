"""Training loop: warm-up and cosine LR, EMA, early stopping, checkpoint/resume, logs, DDP.

Everything lives in the run directory: ``checkpoints/last.ckpt`` (full state, rewritten
atomically after each epoch, so Ctrl-C or a kill loses at most the epoch in progress),
``checkpoints/best.ckpt`` (weights with the lowest validation loss), ``logs/metrics.csv``
(one row per epoch, rewritten from the checkpoint's history so it never disagrees with it),
TensorBoard events when tensorboard is installed, and at the end ``model/student.pt``.

Data path: the training and validation sets go to the device once
(:class:`~mlff_distiller.data.batching.GraphSet`, with the neighbour lists stored in the
dataset) and every step gathers its batch there by index; the step
(:class:`~mlff_distiller.training.step.TrainStep`) never waits for the device, and the loss
is read back once per epoch. With ``training.static_shapes`` batches are padded to fixed
capacities (:class:`~mlff_distiller.training.step.StaticTrainStep`), and on CUDA the whole
step is captured once in a CUDA graph and replayed (``training.cuda_graph``).

Several processes (``torchrun --nproc-per-node K -m mlff_distiller train RUN``): each plans
the same batches (same seed) and takes its share of every one; DistributedDataParallel sums
the gradients, so K processes follow the trajectory of one process with the same global
batch; validation is shared out and summed; rank 0 alone writes files and prints.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from mlff_distiller import keys
from mlff_distiller.atomic import atomic_path, write_text
from mlff_distiller.config import Config
from mlff_distiller.data.batching import GraphSet, capacity, plan_batches, plan_steps
from mlff_distiller.data.dataset import PackedDataset, load_dataset
from mlff_distiller.deploy.artefact import save_student
from mlff_distiller.graph import padding_length
from mlff_distiller.models import PaiNN, predict
from mlff_distiller.models.components import fit_reference_energies
from mlff_distiller.training.distributed import Distributed
from mlff_distiller.training.losses import DistillationLoss, LossScales
from mlff_distiller.training.schedule import LearningRate, planned_epochs
from mlff_distiller.training.step import (
    ExponentialMovingAverage,
    StaticTrainStep,
    TrainStep,
    cells_for_stress,
    set_capturable,
)

CHECKPOINT_FORMAT = 2
"""Version of ``last.ckpt``; a checkpoint of another version is not resumed."""

CSV_FIELDS = (
    "epoch",
    "lr",
    "train_loss",
    "val_loss",
    "val_energy_mae_mev_per_atom",
    "val_energy_rmse_mev_per_atom",
    "val_force_rmse_ev_per_a",
    "val_stress_rmse_ev_per_a3",
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
        Where progress and epoch lines go (rank 0 only).
    """

    def __init__(self, config: Config, run_dir: Path, console: Console | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir)
        self.dist = Distributed.from_env()
        console = console or Console()
        self.console = console if self.dist.is_main else Console(quiet=True)
        self.last_path = self.run_dir / "checkpoints" / "last.ckpt"
        self.best_path = self.run_dir / "checkpoints" / "best.ckpt"
        self.student_path = self.run_dir / "model" / "student.pt"
        self.device = self.dist.device(config.training.device)

    def is_done(self) -> bool:
        """Whether training finished and the student file exists."""
        if not (self.last_path.is_file() and self.student_path.is_file()):
            return False
        state = torch.load(self.last_path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            return bool(state.get("finished"))  # a finished run of an earlier trainer
        return bool(self._stop_reason(state["history"], state["scheduler"]["plateau_scale"]))

    def _stop_reason(self, history: list[dict[str, Any]], plateau_scale: float) -> str:
        # Judged against the current config, so raising ``epochs`` continues a finished run.
        cfg = self.config.training
        if not history:
            return ""
        epoch = history[-1]["epoch"]
        seconds = [row["seconds"] for row in history]
        planned = planned_epochs(cfg.epochs, cfg.max_minutes, seconds)
        if epoch >= cfg.epochs:
            return f"reached {cfg.epochs} epochs"
        if epoch >= planned:
            return (
                f"time budget of {cfg.max_minutes:g} min used: {epoch} epochs of "
                f"{sum(seconds) / len(seconds):.1f} s"
            )
        if cfg.lr_schedule == "plateau" and cfg.lr * plateau_scale < cfg.min_lr:
            return f"learning rate fell below {cfg.min_lr:g}"
        patience = cfg.early_stopping_patience
        best = min(history, key=lambda row: row["val_loss"])["epoch"]
        if patience is not None and epoch - best >= patience:
            return f"early stopping: no better validation loss in {patience} epochs"
        return ""

    def _save(self, path: Path, state: dict[str, Any]) -> None:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)

    def _load_last(self) -> dict[str, Any]:
        state = torch.load(self.last_path, map_location="cpu", weights_only=True)
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"{self.last_path} was written by an earlier version of the trainer and "
                f"cannot be resumed: delete {self.last_path.parent} to train from the start"
            )
        return state

    def run(self) -> Path:
        """Train until a stop reason (epochs, time, early stopping); return the student path."""
        self.dist.start(self.device)
        try:
            return self._run()
        finally:
            self.dist.stop()

    def _run(self) -> Path:
        cfg = self.config.training
        dist = self.dist
        dataset = load_dataset(self.run_dir / "data" / "dataset.h5")
        train_data, val_data = dataset.subset("train"), dataset.subset("val")
        if len(val_data) == 0:
            val_data = train_data  # no validation systems: select on training error
        cutoff = self.config.model.cutoff
        with self.console.status("putting the data on the device"):
            train_set = GraphSet.from_dataset(
                train_data, cutoff, device=self.device, resident=cfg.resident
            )
            val_set = GraphSet.from_dataset(
                val_data, cutoff, device=self.device, resident=cfg.resident
            )

        model = build_student(self.config, train_data).to(self.device)
        scales = LossScales.from_dataset(train_data) if cfg.normalise_loss else LossScales()
        stress = cfg.stress_weight > 0 and bool(train_set.has_stress.any())
        loss = DistillationLoss(
            cfg.energy_weight,
            cfg.force_weight,
            cfg.stress_weight if stress else 0.0,
            scales,
            cfg.huber_delta,
        )
        ema = ExponentialMovingAverage(model, cfg.ema_decay)
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        schedule = LearningRate(cfg)
        generator = torch.Generator().manual_seed(cfg.seed)
        captured = self._captured()
        state: dict[str, Any] = {"epoch": 0, "best_val": math.inf, "history": []}
        if self.last_path.is_file():
            state = self._load_last()
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["scheduler"])
            generator.set_state(state["generator"])
            self.console.print(f"resuming training after epoch {state['epoch']}")
        else:
            self.console.print(
                f"loss scales: energy {math.sqrt(scales.energy) * 1000:.3g} meV/atom, forces "
                f"{math.sqrt(scales.forces):.3g} eV/Å"
                + (f", stress {math.sqrt(scales.stress):.3g} eV/Å³" if stress else "")
                + f"; data on {train_set.storage}"
                + (f"; {dist.world_size} processes" if dist.world_size > 1 else "")
                + ("; step captured in a CUDA graph" if captured else "")
                + ("; compiled (the first step compiles)" if self._compiled(captured) else "")
            )
        # A loaded optimiser state comes in the mode it was saved in; this run's mode wins.
        set_capturable(optimizer, captured)
        wrapped: torch.nn.Module = model
        if dist.world_size > 1:
            wrapped = torch.nn.parallel.DistributedDataParallel(
                model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False,  # reference energies and scale never change
            )
        step: TrainStep | StaticTrainStep = TrainStep(
            wrapped,
            optimizer,
            ema,
            loss,
            cfg.grad_clip,
            stress=stress,
            world_size=dist.world_size,
            compile=self._compiled(captured),
        )
        if cfg.static_shapes:
            static = capacity(
                train_set.n_atoms,
                train_set.n_edges,
                cfg.batch_size,
                cfg.batch_atoms,
                cfg.batch_edges,
                dist.world_size,
            )
            step = StaticTrainStep(step, static, padding_length(cutoff), cuda_graph=captured)

        log_dir = self.run_dir / "logs"
        writer = None
        if dist.is_main:
            log_dir.mkdir(parents=True, exist_ok=True)
            writer = _tensorboard(log_dir, purge_step=state["epoch"] + 1)
        history: list[dict[str, Any]] = state["history"]
        stop_reason = self._stop_reason(history, schedule.plateau_scale)
        try:
            with self._progress() as progress:
                task = progress.add_task(
                    "training", total=cfg.epochs, completed=state["epoch"], loss=math.nan
                )
                while not stop_reason:
                    epoch = state["epoch"] + 1
                    start = time.perf_counter()
                    total = planned_epochs(
                        cfg.epochs, cfg.max_minutes, [row["seconds"] for row in history]
                    )
                    train_loss, lr = self._train_epoch(
                        step, schedule, train_set, generator, epoch, total
                    )
                    val = self._validate(ema.module, val_set, stress, loss)
                    seconds = dist.agree(time.perf_counter() - start)
                    improved = val["loss"] < state["best_val"]
                    schedule.end_epoch(improved)
                    row = {
                        "epoch": epoch,
                        "lr": lr,
                        "train_loss": train_loss,
                        "val_loss": val["loss"],
                        "val_energy_mae_mev_per_atom": val["energy_mae_mev_per_atom"],
                        "val_energy_rmse_mev_per_atom": val["energy_rmse_mev_per_atom"],
                        "val_force_rmse_ev_per_a": val["force_rmse_ev_per_a"],
                        "val_stress_rmse_ev_per_a3": val.get("stress_rmse_ev_per_a3", math.nan),
                        "seconds": seconds,
                    }
                    history = [*history, row]
                    stop_reason = self._stop_reason(history, schedule.plateau_scale)
                    state = {
                        "format": CHECKPOINT_FORMAT,
                        "epoch": epoch,
                        "best_val": min(val["loss"], state["best_val"]),
                        "history": history,
                        "finished": bool(stop_reason),
                        "stop_reason": stop_reason,
                        "model": model.state_dict(),
                        "ema": ema.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": schedule.state_dict(),
                        "generator": generator.get_state(),
                        "loss_scales": asdict(scales),
                    }
                    if dist.is_main:
                        if improved:
                            self._save(
                                self.best_path,
                                {"epoch": epoch, "model": ema.state_dict(), "val": val},
                            )
                        self._save(self.last_path, state)
                        write_text(log_dir / "metrics.csv", _csv_text(history))
                        if writer is not None:
                            for name, value in row.items():
                                if name != "epoch":
                                    writer.add_scalar(name, value, epoch)
                    self._report(progress, task, row, improved)
        finally:
            if writer is not None:
                writer.close()
        self.console.print(f"training finished: {stop_reason}")
        if dist.is_main:
            self._export(dataset)
        dist.barrier()
        return self.student_path

    def _captured(self) -> bool:
        """Whether the training step is captured in a CUDA graph (``training.cuda_graph``)."""
        cfg = self.config.training
        captured = cfg.cuda_graph
        if captured is None:
            captured = cfg.static_shapes and self.device.type == "cuda"
        if captured and self.dist.world_size > 1:
            if cfg.cuda_graph:
                self.console.print(
                    "training.cuda_graph: the step runs eagerly with several processes "
                    "(DistributedDataParallel's all-reduce is not captured)"
                )
            return False
        return captured

    def _compiled(self, captured: bool) -> bool:
        """Whether the training step is compiled (``training.compile``; None: when captured)."""
        cfg = self.config.training
        compiled = captured if cfg.compile is None else cfg.compile
        if self.config.model.lean_messages and cfg.compile is None:
            return False
        return compiled and self.dist.world_size == 1

    def _train_epoch(
        self,
        step: TrainStep | StaticTrainStep,
        schedule: LearningRate,
        train_set: GraphSet,
        generator: torch.Generator,
        epoch: int,
        total_epochs: int,
    ) -> tuple[float, float]:
        """One pass over the training set; returns the mean step loss and the last LR."""
        cfg = self.config.training
        order = torch.randperm(len(train_set), generator=generator).numpy()
        batches = plan_batches(
            order,
            train_set.n_atoms,
            train_set.n_edges,
            cfg.batch_size,
            cfg.batch_atoms,
            cfg.batch_edges,
        )
        plans = plan_steps(
            batches,
            train_set.n_atoms,
            train_set.n_edges,
            train_set.has_stress,
            self.dist.rank,
            self.dist.world_size,
        )
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        lr = math.nan
        for k, plan in enumerate(plans):
            lr = schedule.at(epoch - 1 + (k + 1) / len(plans), total_epochs)
            step.set_lr(lr)
            total += step(*train_set.gather(plan.index, plan.weights))
        return float(self.dist.sum(total)) / len(plans), lr

    def _validate(
        self, model: torch.nn.Module, val_set: GraphSet, stress: bool, loss: DistillationLoss
    ) -> dict[str, float]:
        """Errors of ``model`` on the validation set, shared out over the processes."""
        # sum |e|, sum e², structures, sum f², force components, sum s², stress components
        sums = torch.zeros(7, dtype=torch.float64, device=self.device)
        mine = np.arange(self.dist.rank, len(val_set), self.dist.world_size)
        size = self.config.evaluation.batch_size
        for start in range(0, len(mine), size):
            graph, targets = val_set.gather(mine[start : start + size])
            if stress:
                graph = cells_for_stress(graph)
            pred = predict(model, graph, forces=True, stress=stress, check_cells=False)
            n = targets["n_atoms"].double()
            e_err = (pred[keys.ENERGY].double() - targets[keys.ENERGY].double()) / n
            f_err = pred[keys.FORCES].double() - targets[keys.FORCES].double()
            parts = [
                e_err.abs().sum(),
                (e_err**2).sum(),
                e_err.new_tensor(float(len(e_err))),
                (f_err**2).sum(),
                e_err.new_tensor(float(f_err.numel())),
            ]
            if stress:
                mask = targets["has_stress"].view(-1, 1, 1)
                s_err = torch.where(mask, pred[keys.STRESS] - targets[keys.STRESS], 0.0)
                parts += [(s_err.double() ** 2).sum(), 9.0 * mask.sum().double()]
            else:
                parts += [e_err.new_zeros(()), e_err.new_zeros(())]
            sums += torch.stack(parts)
        e_abs, e_sq, n_e, f_sq, n_f, s_sq, n_s = self.dist.sum(sums).tolist()
        metrics = {
            "energy_mae_mev_per_atom": 1000 * e_abs / n_e,
            "energy_rmse_mev_per_atom": 1000 * math.sqrt(e_sq / n_e),
            "force_rmse_ev_per_a": math.sqrt(f_sq / n_f),
        }
        stress_mse = s_sq / n_s if stress and n_s > 0 else None
        if stress_mse is not None:
            metrics["stress_rmse_ev_per_a3"] = math.sqrt(stress_mse)
        metrics["loss"] = loss.of_mean_squares(e_sq / n_e, f_sq / n_f, stress_mse)
        return metrics

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
