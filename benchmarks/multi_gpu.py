"""Scaling over the GPUs of one host: sharded generate + label, and DDP training, 1 vs N GPUs.

What is measured (see ``../shared/design/BENCHMARKING.md``), every stage through the project's
own command line, launched by ``torchrun`` (``python -m torch.distributed.run``) with NCCL:

- **data**: ``mlff-distill generate`` then ``label`` of ``--config`` (the organics recipe by
  default: 834 molecules × 13 frames, SevenNet-0 MD and labels, batched on each GPU) in a
  fresh run directory, with 1 and with N processes (one GPU each). Wall time of each command
  (process start, imports, reading and packing included) and the time of the shared work as
  the stage prints it (``label: N frames in S s``: the slowest process, from the sharing-out
  to its last file), frames/s of each, and the datasets compared: the
  same frames, systems and split, and the largest difference of positions and labels
  (frames of batched teacher MD depend on the batch only through float32 round-off, which
  MD then amplifies; labels of equal frames are equal to round-off). With ``--repeat-one`` the
  1-process data stage runs twice, to show the differences of two identical runs.
- **training**: ``mlff-distill train`` of the seed student on the 1-process dataset for
  ``--epochs`` epochs at the global batch ``--batch-size`` (each of N processes takes 1/N of
  every batch), with 1 and with N processes. Per epoch: seconds (from ``logs/metrics.csv``);
  structures/s of the median epoch after the first; scaling efficiency
  ``t(1) / (N · t(N))``; validation errors after the same epochs. The 1-process run uses the
  same eager step as the N-process one (``training.cuda_graph=false``: DDP's all-reduce is
  not captured), so that the ratio measures the scaling, not the capture; a captured
  1-process run is timed too, for reference.

Usage (on a machine with N GPUs)::

    python benchmarks/multi_gpu.py --gpus 2 --out benchmarks/results/multi_gpu-h100x2.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from provenance import environment

from mlff_distiller.atomic import write_json

ROOT = Path(__file__).resolve().parents[1]


def launch(
    processes: int, verb: str, config: Path, run_dir: Path, overrides: list[str], log: Path
) -> tuple[float, str]:
    """Run ``mlff-distill VERB`` under torchrun with ``processes`` processes.

    Returns the wall time in s and the command's output (also appended to ``log``).
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        "mlff_distiller",
        verb,
        str(config),
        f"run_dir={run_dir}",
        *overrides,
    ]
    env = {**os.environ, "NCCL_NVLS_ENABLE": "0"}  # NVLink multicast off (machine notes)
    start = time.perf_counter()
    done = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    )
    seconds = time.perf_counter() - start
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n{done.stdout}")
    if done.returncode != 0:
        raise SystemExit(f"{verb} with {processes} processes failed: see {log}")
    return seconds, done.stdout


def work_seconds(output: str, verb: str) -> float | None:
    """The stage's own time of its shared work, as it prints it (``VERB: N what in S s``)."""
    found = re.search(rf"^{verb}: \d+ \w+ in ([0-9.]+) s", output, flags=re.MULTILINE)
    return float(found.group(1)) if found else None


def read_dataset(run_dir: Path) -> dict[str, np.ndarray]:
    """Every array of the packed dataset ``data/dataset.h5``."""
    with h5py.File(run_dir / "data" / "dataset.h5", "r") as f:
        return {name: f[name][()] for name in f if isinstance(f[name], h5py.Dataset)}


def compare_datasets(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, Any]:
    """Same keys and shapes; equal integer/string arrays; largest float differences."""
    out: dict[str, Any] = {"same_keys": sorted(a) == sorted(b)}
    differences = {}
    equal = {}
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if x.shape != y.shape:
            equal[key] = False
            continue
        if np.issubdtype(x.dtype, np.floating):
            same_nan = np.array_equal(np.isnan(x), np.isnan(y))
            finite = ~np.isnan(x) & ~np.isnan(y)
            gap = np.abs(x - y)[finite]
            differences[key] = float(gap.max()) if gap.size else 0.0
            if not same_nan:
                equal[f"{key} (NaN pattern)"] = False
        else:
            equal[key] = bool(np.array_equal(x, y))
    out["equal_exactly"] = equal
    out["max_abs_difference"] = differences
    out["identical"] = out["same_keys"] and all(equal.values()) and not any(differences.values())
    return out


def epochs_csv(run_dir: Path) -> list[dict[str, float]]:
    with (run_dir / "logs" / "metrics.csv").open() as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def n_frames(run_dir: Path) -> int:
    with h5py.File(run_dir / "data" / "dataset.h5", "r") as f:
        return int(f["index"].shape[0])


def data_stage(
    config: Path, overrides: list[str], run_dir: Path, processes: int, log: Path
) -> dict[str, Any]:
    """``generate`` then ``label`` of ``config`` in a fresh ``run_dir`` with ``processes``."""
    shutil.rmtree(run_dir, ignore_errors=True)
    seconds, work = {}, {}
    for verb in ("generate", "label"):
        seconds[verb], output = launch(processes, verb, config, run_dir, overrides, log)
        work[verb] = work_seconds(output, verb)
    frames = n_frames(run_dir)
    total = sum(seconds.values())
    return {
        "processes": processes,
        "seconds": seconds,
        "work_seconds": work,
        "frames": frames,
        "frames_per_s": frames / total,
        "label_frames_per_s": frames / seconds["label"],
        "label_work_frames_per_s": frames / work["label"] if work["label"] else None,
        "generate_work_frames_per_s": frames / work["generate"] if work["generate"] else None,
    }


def train_stage(
    args: argparse.Namespace, processes: int, log: Path, captured: bool = False
) -> dict[str, Any]:
    source = args.work / "data-1"
    name = f"train-{processes}" + ("-captured" if captured else "")
    run_dir = args.work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    for part in ("structures", "data"):
        shutil.copytree(source / part, run_dir / part)
    shutil.copy(source / "config.yaml", run_dir / "config.yaml")
    overrides = [
        f"training.epochs={args.epochs}",
        f"training.batch_size={args.batch_size}",
        "training.max_minutes=null",
        "training.early_stopping_patience=null",
        f"training.cuda_graph={'true' if captured else 'false'}",
    ]
    overrides += args.data_overrides + args.train_overrides
    # The copied config.yaml is the data run's: training settings differ on purpose.
    wall, _ = launch(
        processes, "train", args.config, run_dir, [*overrides, "--accept-changes"], log
    )
    history = epochs_csv(run_dir)
    seconds = [row["seconds"] for row in history]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    with h5py.File(run_dir / "data" / "dataset.h5", "r") as f:
        split = f["split"][()] if "split" in f else None
    n_train = int(np.sum(split == 0)) if split is not None else None
    last = history[-1]
    return {
        "processes": processes,
        "captured": captured,
        "wall_seconds": wall,
        "epoch_seconds": seconds,
        "median_epoch_seconds": steady,
        "train_structures": n_train,
        "structures_per_s": n_train / steady if n_train else None,
        "val_energy_mae_mev_per_atom": last.get("val_energy_mae_mev_per_atom"),
        "val_force_rmse_ev_per_a": last.get("val_force_rmse_ev_per_a"),
        "history": history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gpus", type=int, default=2, help="N: processes (GPUs) to compare with 1")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "organics.yaml")
    parser.add_argument("--work", type=Path, default=Path("/tmp/multi_gpu"), help="run dirs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=256, help="global batch (structures)")
    parser.add_argument(
        "--data-overrides", nargs="*", default=[], help="key.path=value for generate/label"
    )
    parser.add_argument(
        "--train-overrides", nargs="*", default=[], help="key.path=value for train only"
    )
    parser.add_argument(
        "--repeat-one", action="store_true", help="run the 1-process data stage twice, compare"
    )
    parser.add_argument("--skip", nargs="*", default=[], choices=["data", "train", "captured"])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "log.txt"
    result: dict[str, Any] = {
        "environment": environment("cuda" if torch.cuda.is_available() else "cpu"),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "data": [],
        "training": [],
    }

    def save() -> None:
        write_json(args.out, result)

    if "data" not in args.skip:
        for processes in (1, args.gpus):
            run_dir = args.work / f"data-{processes}"
            row = data_stage(args.config, args.data_overrides, run_dir, processes, log)
            result["data"].append(row)
            print(json.dumps(result["data"][-1]), flush=True)
            save()
        one, many = result["data"]
        result["data_scaling_efficiency"] = many["frames_per_s"] / (args.gpus * one["frames_per_s"])
        for key in ("label_frames_per_s", "label_work_frames_per_s", "generate_work_frames_per_s"):
            if one[key] and many[key]:
                name = key.removesuffix("_frames_per_s") + "_scaling_efficiency"
                result[name] = many[key] / (args.gpus * one[key])
        result["datasets"] = compare_datasets(
            read_dataset(args.work / "data-1"), read_dataset(args.work / f"data-{args.gpus}")
        )
        if args.repeat_one:
            # Two runs of one process: what differs without any sharding (GPU round-off).
            again = args.work / "data-1-again"
            result["data"].append(data_stage(args.config, args.data_overrides, again, 1, log))
            result["datasets_one_vs_one"] = compare_datasets(
                read_dataset(args.work / "data-1"), read_dataset(args.work / "data-1-again")
            )
        print(json.dumps({k: v for k, v in result.items() if "efficiency" in k or "datasets" in k}))
        save()
    if "train" not in args.skip:
        for processes in (1, args.gpus):
            row = train_stage(args, processes, log)
            result["training"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
            save()
        one, many = result["training"]
        result["training_scaling_efficiency"] = one["median_epoch_seconds"] / (
            args.gpus * many["median_epoch_seconds"]
        )
        save()
        if "captured" not in args.skip:
            row = train_stage(args, 1, log, captured=True)
            result["training"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
    result["complete"] = True
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
