"""Do the trainer's step paths learn alike? Validation errors after equal epochs, same data.

The trainer has three ways to run a step (``training.static_shapes``, ``cuda_graph``,
``compile``): eager on unpadded batches, captured in a CUDA graph on padded batches, and
compiled and captured. They compute the same loss and gradients up to float32 round-off,
which training then amplifies as any two runs of the same step on a GPU do (atomic sums do
not add in a fixed order). This script trains the student of ``--config`` on one packed
dataset with each path, and the eager path twice (the run-to-run noise), from the same seed
for ``--epochs`` epochs with a fixed schedule, through the project's own ``mlff-distill
train`` (one process, started as :mod:`multi_gpu` starts it), and reports every run's
validation errors per epoch (from ``logs/metrics.csv``), the final ones side by side and
the seconds per epoch.

The dataset is that of an existing run directory (``--data RUN``: its ``data/dataset.h5``),
copied into a fresh run directory per path. See ``../shared/design/BENCHMARKING.md``.

Usage (on a GPU machine, after ``mlff-distill generate`` and ``label`` of the config)::

    python benchmarks/train_paths.py --config configs/quickstart.yaml --data runs/quickstart \\
        --epochs 30 --out benchmarks/results/train_paths-h100.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).parent))
from multi_gpu import epochs_csv, launch
from provenance import environment

from mlff_distiller.atomic import write_json

PATHS = {
    "eager": ["training.static_shapes=false"],
    "eager_repeat": ["training.static_shapes=false"],
    "captured": ["training.static_shapes=true", "training.compile=false"],
    "compiled": ["training.static_shapes=true", "training.compile=true"],
}
"""Each path's overrides (``cuda_graph`` is on by default with static shapes on CUDA)."""


def train(args: argparse.Namespace, name: str, overrides: list[str]) -> list[dict[str, float]]:
    """Train one path in ``--work/NAME`` and return its per-epoch rows."""
    run_dir = args.work / name
    shutil.rmtree(run_dir, ignore_errors=True)
    (run_dir / "data").mkdir(parents=True)
    shutil.copy(args.data / "data" / "dataset.h5", run_dir / "data" / "dataset.h5")
    settings = [
        f"training.device={args.device}",
        f"training.epochs={args.epochs}",
        f"training.batch_size={args.batch_size}",
        "training.max_minutes=null",
        "training.early_stopping_patience=null",
        *overrides,
    ]
    launch(1, "train", args.config, run_dir, settings, args.work / f"{name}.log")
    return epochs_csv(run_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="run dir with data/dataset.h5")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/train_paths"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "environment": environment(args.device),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "runs": {},
    }
    for name in args.paths:
        history = train(args, name, PATHS[name])
        last = history[-1]
        result["runs"][name] = {
            "overrides": PATHS[name],
            "final": {k: v for k, v in last.items() if k.startswith("val_")},
            "median_epoch_seconds": sorted(row["seconds"] for row in history)[len(history) // 2],
            "history": history,
        }
        print(json.dumps({name: result["runs"][name]["final"]}), flush=True)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
