"""Speed of the teacher's data work: labelling and teacher MD, one by one vs batched.

What is timed (see ``../shared/design/BENCHMARKING.md``):

- **labelling**: frames/s of ``teacher.label`` on distinct rattled frames of small organic
  molecules (the quickstart's SMILES, embedded by RDKit; nothing is ever cached: each frame
  has its own positions). ``one-by-one`` is the teacher's ASE calculator, one frame per call
  (``teacher.batch_atoms = None``, the path of every teacher before batching); ``batched-N``
  labels in batches of at most N atoms (SevenNet-0: one call of the network in ``sevenn``'s
  batch mode per batch). The paths alternate in ``--rounds`` rounds; medians are reported
  with every raw round, and the labels of both paths are compared.
- **teacher MD**: Langevin MD as ``generate`` runs it. ``one-by-one`` is ASE's Langevin on the
  teacher's calculator, one trajectory; ``batched-R`` advances R trajectories (molecules of
  the set at 300 and 600 K) together on the teacher's TorchSim model
  (:class:`mlff_distiller.structures.samplers.BatchedLangevin`). Reported as trajectory-
  steps/s (one step of one molecule), MD frames/s at the quickstart's interval, and
  atom-steps/s.

- **N workers** (``--workers 1 2 …``): the project's own ``mlff-distill generate`` then
  ``label`` of ``--workers-config`` (with ``--workers-overrides``) in a fresh run directory,
  launched by ``torchrun`` with N processes (gloo on CPUs, one GPU each with NCCL), as
  :mod:`multi_gpu` runs them: wall time of each command (process start, imports, reading,
  packing included), frames/s of the whole, speed-up over the first N, and the datasets
  compared with the first N's.

Speed-ups are ratios of medians measured in the same process. On a GPU, peak memory
(``torch.cuda.max_memory_allocated``) is reported per configuration.

Usage::

    python benchmarks/data_speed.py --device cuda --out benchmarks/results/data_speed-h100.json
    python benchmarks/data_speed.py --device cpu --molecules 8 --md-replicas 1 4 --rounds 1 \\
        --out /tmp/data_speed-cpu.json
    python benchmarks/data_speed.py --device cpu --workers 1 2 --workers-config \
        configs/quickstart.yaml --out benchmarks/results/data_speed-cpu.json
    python benchmarks/data_speed.py --summarize benchmarks/results/data_speed-*.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import ase
import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from multi_gpu import compare_datasets, data_stage, read_dataset
from provenance import environment

from mlff_distiller.atomic import write_json
from mlff_distiller.structures.samplers import BatchedLangevin, langevin_md, rattle
from mlff_distiller.structures.sources import from_smiles
from mlff_distiller.teachers import get_teacher

QUICKSTART = Path(__file__).parents[1] / "configs" / "quickstart.yaml"
TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.01
#: MD steps between kept frames in the quickstart (frames/s = steps/s / interval).
MD_INTERVAL = 10


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else None


def molecules(n: int) -> list[ase.Atoms]:
    """The first ``n`` SMILES of the quickstart (cycled), embedded in 3D."""
    smiles = yaml.safe_load(QUICKSTART.read_text())["structures"]["smiles"]
    return [
        from_smiles(smiles[k % len(smiles)], system_id=f"m{k}", seed=k // len(smiles))
        for k in range(n)
    ]


def labelling(args: argparse.Namespace, teacher: Any, systems: list[ase.Atoms]) -> dict:
    """frames/s of one-by-one and batched labelling, rounds alternating."""
    frames = [
        frame
        for k, atoms in enumerate(systems)
        for frame in rattle(atoms, args.frames_per_molecule, 0.05, seed=k)
    ]
    single_frames = frames[: args.single_frames]
    # Warm-up of every path (first calls build caches and kernels), on frames not timed.
    warm = rattle(systems[0], 2, 0.05, seed=10_000)
    teacher.batch_atoms = None
    teacher.label(warm)
    for budget in args.batch_atoms:
        teacher.batch_atoms = budget
        teacher.label(warm)
    runs: dict[str, dict[str, Any]] = {
        "one-by-one": {"frames": len(single_frames), "seconds": []},
        **{f"batched-{b}": {"frames": len(frames), "seconds": []} for b in args.batch_atoms},
    }
    labels: dict[str, list] = {}
    for _ in range(args.rounds):
        for name, budget in [("one-by-one", None)] + [
            (f"batched-{b}", b) for b in args.batch_atoms
        ]:
            teacher.batch_atoms = budget
            work = single_frames if budget is None else frames
            reset_memory(args.device)
            sync(args.device)
            start = time.perf_counter()
            labels[name] = teacher.label(work)
            sync(args.device)
            runs[name]["seconds"].append(time.perf_counter() - start)
            memory = peak_memory_mib(args.device)
            if memory is not None:
                runs[name]["peak_memory_mib"] = max(runs[name].get("peak_memory_mib", 0), memory)
    for run in runs.values():
        run["frames_per_s"] = run["frames"] / statistics.median(run["seconds"])
    single = runs["one-by-one"]["frames_per_s"]
    for name, run in runs.items():
        run["speedup_vs_one_by_one"] = run["frames_per_s"] / single
        if name != "one-by-one":
            # The labels of the frames both paths labelled: same to float32 tolerance.
            pairs = list(zip(labels[name], labels["one-by-one"], strict=False))
            run["max_energy_difference_ev"] = max(abs(a.energy - b.energy) for a, b in pairs)
            run["max_force_difference_ev_per_a"] = max(
                float(np.abs(a.forces - b.forces).max()) for a, b in pairs
            )
        print(
            f"  label {name:16s} {run['frames_per_s']:9.1f} frames/s "
            f"({run['speedup_vs_one_by_one']:.1f}x)",
            flush=True,
        )
    n_atoms = [len(f) for f in frames]
    return {
        "n_frames": len(frames),
        "atoms_per_frame": {"mean": float(np.mean(n_atoms)), "max": int(max(n_atoms))},
        "runs": runs,
    }


def teacher_md(args: argparse.Namespace, teacher: Any, systems: list[ase.Atoms]) -> dict:
    """Trajectory-steps/s of ASE's Langevin (one trajectory) and of batched MD."""
    steps = args.md_steps
    rows: dict[str, dict[str, Any]] = {}
    # One by one: ASE's Langevin on the calculator, as generate ran it before batching.
    calculator = teacher.calculator()
    langevin_md(systems[0], calculator, 300.0, n_frames=1, interval=2, seed=0)  # warm-up
    chosen = [systems[r % len(systems)] for r in range(args.rounds)]
    seconds = []
    for r, atoms in enumerate(chosen):
        start = time.perf_counter()
        langevin_md(atoms, calculator, 300.0, n_frames=1, interval=steps, seed=r)
        seconds.append(time.perf_counter() - start)
    rows["one-by-one"] = {"replicas": 1, "atoms": [len(a) for a in chosen], "seconds": seconds}
    # Batched: R trajectories (molecules at 300 and 600 K) on the teacher's TorchSim model.
    teacher.batch_atoms = max(args.batch_atoms)
    model = teacher.torchsim_model()
    if model is None:
        print("  teacher MD: no TorchSim model (torch-sim missing?); batched MD skipped")
    for replicas in args.md_replicas if model is not None else []:
        chosen = [systems[k % len(systems)] for k in range(replicas)]
        temperatures = [300.0 if k % 2 == 0 else 600.0 for k in range(replicas)]
        reset_memory(args.device)
        start = time.perf_counter()
        md = BatchedLangevin(chosen, model, temperatures, range(replicas), TIMESTEP_FS)
        md.run(2)
        sync(args.device)
        first = time.perf_counter() - start
        seconds = []
        for _ in range(args.rounds):
            sync(args.device)
            start = time.perf_counter()
            md.run(steps)
            sync(args.device)
            seconds.append(time.perf_counter() - start)
        rows[f"batched-{replicas}"] = {
            "replicas": replicas,
            "atoms": [sum(len(a) for a in chosen)],
            "seconds": seconds,
            "setup_and_first_steps_seconds": first,
            "finite": bool(torch.isfinite(md.energy).all()),
            "peak_memory_mib": peak_memory_mib(args.device),
        }
    for row in rows.values():
        rate = steps / statistics.median(row["seconds"])  # MD steps of the batch per second
        row["trajectory_steps_per_s"] = rate * row["replicas"]
        row["md_frames_per_s"] = row["trajectory_steps_per_s"] / MD_INTERVAL
        row["atom_steps_per_s"] = rate * float(np.mean(row["atoms"]))
    single = rows["one-by-one"]["trajectory_steps_per_s"]
    for name, row in rows.items():
        row["speedup_vs_one_by_one"] = row["trajectory_steps_per_s"] / single
        print(
            f"  MD    {name:16s} {row['trajectory_steps_per_s']:9.1f} trajectory-steps/s "
            f"({row['speedup_vs_one_by_one']:.1f}x)",
            flush=True,
        )
    return {"steps_per_round": steps, "timestep_fs": TIMESTEP_FS, "runs": rows}


def workers(args: argparse.Namespace) -> dict:
    """``generate`` + ``label`` of ``--workers-config`` with each number of processes."""
    args.workers_dir.mkdir(parents=True, exist_ok=True)
    log = args.workers_dir / "log.txt"
    overrides = [f"teacher.device={args.device}", *args.workers_overrides]
    rows = []
    for processes in args.workers:
        run_dir = args.workers_dir / f"workers-{processes}"
        row = data_stage(args.workers_config, overrides, run_dir, processes, log)
        if rows:
            first = rows[0]
            row["speedup_vs_first"] = row["frames_per_s"] / first["frames_per_s"]
            first_dir = args.workers_dir / f"workers-{first['processes']}"
            row["dataset_vs_first"] = compare_datasets(
                read_dataset(first_dir), read_dataset(run_dir)
            )
        rows.append(row)
        brief = {k: v for k, v in row.items() if k != "dataset_vs_first"}
        print(json.dumps(brief), flush=True)
    return {"config": str(args.workers_config), "overrides": overrides, "runs": rows}


def summarize(paths: list[Path]) -> str:
    """Markdown tables of result files of this script."""
    lines = [
        "| hardware | teacher | labelling | frames/s | × one-by-one | peak GPU memory |",
        "|---|---|---|---|---|---|",
    ]
    md_lines = [
        "| hardware | teacher | teacher MD | trajectory-steps/s | MD frames/s (every "
        f"{MD_INTERVAL} steps) | × one-by-one | peak GPU memory |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        result = json.loads(Path(path).read_text())
        env = result["environment"]
        hardware = env.get("gpu") or f"CPU ({env['torch_threads']} threads)"
        teacher = result["teacher"]
        for name, run in result["labelling"]["runs"].items():
            memory = run.get("peak_memory_mib")
            lines.append(
                f"| {hardware} | {teacher} | {name} | {run['frames_per_s']:.1f} | "
                f"{run['speedup_vs_one_by_one']:.1f} | "
                + (f"{memory / 1024:.1f} GiB |" if memory else " |")
            )
        for name, row in result.get("teacher_md", {}).get("runs", {}).items():
            memory = row.get("peak_memory_mib")
            md_lines.append(
                f"| {hardware} | {teacher} | {name} | {row['trajectory_steps_per_s']:.1f} | "
                f"{row['md_frames_per_s']:.1f} | {row['speedup_vs_one_by_one']:.1f} | "
                + (f"{memory / 1024:.1f} GiB |" if memory else " |")
            )
    worker_lines = [
        "| hardware | config | processes | generate s | label s | frames | frames/s | × first |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for path in paths:
        result = json.loads(Path(path).read_text())
        env = result["environment"]
        hardware = env.get("gpu") or f"CPU ({env['cpu_count']} cores)"
        for row in result.get("workers", {}).get("runs", []):
            worker_lines.append(
                f"| {hardware} | {Path(result['workers']['config']).name} | "
                f"{row['processes']} | {row['seconds']['generate']:.0f} | "
                f"{row['seconds']['label']:.0f} | {row['frames']} | {row['frames_per_s']:.1f} | "
                f"{row.get('speedup_vs_first', 1.0):.2f} |"
            )
    tables = [*lines, "", *md_lines]
    if len(worker_lines) > 2:
        tables += ["", *worker_lines]
    return "\n".join(tables)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--teacher", default="7net-0")
    parser.add_argument("--molecules", type=int, default=256, help="molecules of the set")
    parser.add_argument("--frames-per-molecule", type=int, default=8)
    parser.add_argument(
        "--single-frames", type=int, default=64, help="frames labelled one by one per round"
    )
    parser.add_argument("--batch-atoms", nargs="+", type=int, default=[512, 2048, 8192, 32768])
    parser.add_argument("--md-replicas", nargs="*", type=int, default=[1, 16, 128, 512])
    parser.add_argument("--md-steps", type=int, default=20, help="MD steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--workers", nargs="*", type=int, default=[], help="process counts of the N-workers rows"
    )
    parser.add_argument(
        "--workers-config", type=Path, default=QUICKSTART, help="config of the N-workers rows"
    )
    parser.add_argument(
        "--workers-overrides", nargs="*", default=[], help="key.path=value for those runs"
    )
    parser.add_argument(
        "--workers-dir", type=Path, default=Path("/tmp/data_speed"), help="their run dirs"
    )
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument(
        "--summarize", nargs="+", type=Path, help="print Markdown tables of result files; no run"
    )
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    if args.out is None:
        parser.error("--out is required to run the benchmark")

    result: dict[str, Any] = {
        "environment": environment(args.device),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "teacher": args.teacher,
    }

    def save() -> None:
        """Rewrite the JSON after every measurement: a run cut short keeps what it measured."""
        write_json(args.out, result)

    start = time.perf_counter()
    teacher = get_teacher(args.teacher, args.device)
    result["teacher_version"] = teacher.version
    result["teacher_load_seconds"] = time.perf_counter() - start
    systems = molecules(args.molecules)
    print(f"{args.teacher} on {args.device}: {len(systems)} molecules", flush=True)
    result["labelling"] = labelling(args, teacher, systems)
    save()
    if args.md_replicas:
        result["teacher_md"] = teacher_md(args, teacher, systems)
        save()
    if args.workers:
        del teacher  # the workers load their own
        result["workers"] = workers(args)
        save()
    result["complete"] = True
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
