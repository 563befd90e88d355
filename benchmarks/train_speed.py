"""Training speed of the student: this project's training step beside a plain eager PaiNN.

Workloads (synthetic, shaped like the seed distillation; see ``../shared/design/BENCHMARKING.md``):

- **uniform**: ``--structures`` clusters of ``--atoms`` atoms (H, C, N, O) whose density gives
  about ``--neighbours`` neighbours per atom within the cutoff (default: 4,416 of 90 atoms,
  ~22 neighbours within 5 Å);
- **mixed**: the same with ``--large-fraction`` (20 %) of the structures ``--large-atoms``
  (800) atoms at the same density.

Labels are random (speed does not depend on them). The student is the seed configuration
(128 features, 3 blocks, 20 radial functions, 5 Å), float32. For every workload and batch
size (``--batch-sizes``, default 8 16 64 256) two implementations are timed alternately in
this process, ``--repeats`` blocks of ``--steps`` steps each after ``--warmup`` steps:

- ``mlff_distiller``: the trainer's path: the whole set on the device
  (:class:`~mlff_distiller.data.batching.GraphSet`, neighbour lists computed once), batches
  gathered there by index, :class:`~mlff_distiller.training.step.TrainStep` (normalised
  loss, backward, clipping, AdamW, EMA). With ``--static`` also
  :class:`~mlff_distiller.training.step.StaticTrainStep` on batches padded to fixed
  capacities: on CUDA the whole step captured once in a CUDA graph and replayed (rows with
  ``"captured": true``; the capture, in the warm-up, is not timed), on a CPU run eagerly.
  With ``--compile`` also that static step with predictions and loss compiled by
  ``torch.compile`` (``TrainStep(compile=True)``; compiled and captured in the warm-up). On
  the mixed workload also with an edge budget (``batch_size`` times the mean edges per
  structure), which makes steps of equal cost.
- ``plain_eager``: a textbook PaiNN (separate message and update modules, messages built per
  edge), per-structure tensors on the device concatenated per batch in Python, forces by
  autograd, the same loss terms, AdamW.

With ``--static`` (or ``--compile``) the JSON also holds ``loss_curves``: the eager step
(twice, for the run-to-run noise), the static one (captured on CUDA) and with ``--compile``
the compiled static one, trained from the same initial weights on the same
``--curve-steps`` batches of ``--curve-batch-size`` (uniform workload) under a warm-up LR,
with each curve's largest relative difference from the first eager one.

Reported per configuration: median ms/step with every block, structures/s, s/epoch (the
training set at that throughput: an extrapolation, stated as such), peak GPU memory (none on
a CPU) and the ratio plain/ours from the same blocks. The peak memory of a configuration is
what its step allocates over its first ``--warmup`` steps (``max_memory_allocated`` after
``reset_peak_memory_stats``, less what was allocated before it was built: model, optimiser,
CUDA-graph pool and activations) plus its own training data on the device (the resident
:class:`~mlff_distiller.data.batching.GraphSet`, or the plain reference's per-structure
tensors; ``data_on_device_gib``), so that other configurations' memory is not counted. A
configuration that runs out of GPU memory is recorded as such. GPU times are read after
``torch.cuda.synchronize()``.

Usage::

    python benchmarks/train_speed.py --device cuda --static \
        --out benchmarks/results/train_speed-h100.json
    python benchmarks/train_speed.py --device cpu --structures 64 --batch-sizes 8 16 \\
        --steps 3 --repeats 3 --out benchmarks/results/train_speed-cpu.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import vesin
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from provenance import environment

from mlff_distiller import keys
from mlff_distiller.atomic import write_json
from mlff_distiller.data.batching import Capacity, GraphSet, plan_batches, plan_steps
from mlff_distiller.data.dataset import PackedDataset
from mlff_distiller.graph import padding_length
from mlff_distiller.models import PaiNN
from mlff_distiller.training.losses import DistillationLoss, LossScales
from mlff_distiller.training.step import ExponentialMovingAverage, StaticTrainStep, TrainStep

ELEMENTS = np.array([1, 6, 7, 8])
LR = 1e-4
"""AdamW learning rate of every timed step (and the peak of the loss-curve comparison)."""


# --- workloads --------------------------------------------------------------------------


def cluster_radius(n_atoms: int, neighbours: float, cutoff: float, seed: int = 0) -> float:
    """Radius (Å) of a uniform ball of ``n_atoms`` with ``neighbours`` mean neighbours."""
    rng = np.random.default_rng(seed)
    low, high = 1.0, 50.0
    for _ in range(30):  # bisection on the measured mean neighbour count
        radius = 0.5 * (low + high)
        points = random_ball(rng, n_atoms, radius)
        i, _ = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(
            points=points, box=np.zeros((3, 3)), periodic=False, quantities="ij"
        )
        if len(i) / n_atoms > neighbours:
            low = radius
        else:
            high = radius
    return 0.5 * (low + high)


def random_ball(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    """``n`` points uniform in a ball of ``radius`` Å, (n, 3)."""
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return direction * radius * rng.random((n, 1)) ** (1 / 3)


def workload(
    n_structures: int,
    n_atoms: int,
    large_fraction: float,
    large_atoms: int,
    neighbours: float,
    cutoff: float,
    seed: int = 0,
) -> PackedDataset:
    """Random clusters at the density of ``neighbours`` neighbours per ``n_atoms`` cluster."""
    rng = np.random.default_rng(seed)
    radius = cluster_radius(n_atoms, neighbours, cutoff)
    sizes = np.where(rng.random(n_structures) < large_fraction, large_atoms, n_atoms)
    positions = [random_ball(rng, int(n), radius * (n / n_atoms) ** (1 / 3)) for n in sizes]
    total = int(sizes.sum())
    arrays = {
        "index": np.arange(n_structures),
        "ptr": np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        "numbers": rng.choice(ELEMENTS, size=total),
        "positions": np.concatenate(positions),
        "cell": np.zeros((n_structures, 3, 3)),
        "pbc": np.zeros((n_structures, 3), dtype=bool),
        keys.TEACHER_ENERGY: -3.0 * sizes + rng.normal(size=n_structures),
        keys.TEACHER_FORCES: rng.normal(size=(total, 3)),
        keys.TEACHER_STRESS: np.zeros((n_structures, 3, 3)),
        "has_stress": np.zeros(n_structures, dtype=bool),
        keys.SYSTEM_ID: np.array([f"c{k}" for k in range(n_structures)], dtype=object),
        keys.SAMPLER: np.array(["random"] * n_structures, dtype=object),
    }
    return PackedDataset(arrays, "random", "0")


# --- the plain eager reference ------------------------------------------------------------


class PlainPaiNN(nn.Module):
    """PaiNN as a textbook writes it: message per edge, update per atom, no fusing."""

    def __init__(self, n_features: int, n_blocks: int, n_rbf: int, cutoff: float) -> None:
        super().__init__()
        F = n_features
        self.F, self.n_rbf, self.cutoff = F, n_rbf, cutoff
        self.embedding = nn.Embedding(119, F)
        self.phi = nn.ModuleList(
            nn.Sequential(nn.Linear(F, F), nn.SiLU(), nn.Linear(F, 3 * F)) for _ in range(n_blocks)
        )
        self.w = nn.ModuleList(nn.Linear(n_rbf, 3 * F) for _ in range(n_blocks))
        self.u = nn.ModuleList(nn.Linear(F, F, bias=False) for _ in range(n_blocks))
        self.v = nn.ModuleList(nn.Linear(F, F, bias=False) for _ in range(n_blocks))
        self.update = nn.ModuleList(
            nn.Sequential(nn.Linear(2 * F, F), nn.SiLU(), nn.Linear(F, 3 * F))
            for _ in range(n_blocks)
        )
        self.readout = nn.Sequential(nn.Linear(F, F // 2), nn.SiLU(), nn.Linear(F // 2, 1))

    def forward(self, positions, numbers, edge_index, batch, n_structures):
        i, j = edge_index
        r_ij = positions[j] - positions[i]
        r = torch.linalg.norm(r_ij, dim=-1, keepdim=True)
        n = torch.arange(1, self.n_rbf + 1, device=r.device, dtype=r.dtype)
        rbf = torch.sin(n * math.pi * r / self.cutoff) / r
        fcut = 0.5 * (torch.cos(math.pi * r / self.cutoff) + 1.0) * (r < self.cutoff)
        s = self.embedding(numbers)
        v = torch.zeros(s.shape[0], 3, self.F, device=s.device, dtype=s.dtype)
        blocks = zip(self.phi, self.w, self.u, self.v, self.update, strict=True)
        for phi, w, u, vv, update in blocks:
            x = phi(s)[j] * w(rbf) * fcut
            ds, dv_v, dv_r = torch.split(x, self.F, dim=-1)
            dv = v[j] * dv_v.unsqueeze(1) + dv_r.unsqueeze(1) * (r_ij / r).unsqueeze(-1)
            s = s + torch.zeros_like(s).index_add(0, i, ds)
            v = v + torch.zeros_like(v).index_add(0, i, dv)
            uv, vv_ = u(v), vv(v)
            a = update(torch.cat([s, torch.sqrt(torch.sum(vv_**2, dim=1) + 1e-8)], dim=-1))
            a_vv, a_sv, a_ss = torch.split(a, self.F, dim=-1)
            v = v + a_vv.unsqueeze(1) * uv
            s = s + a_sv * torch.sum(uv * vv_, dim=1) + a_ss
        atomic = self.readout(s).squeeze(-1)
        return torch.zeros(n_structures, device=s.device, dtype=s.dtype).index_add(0, batch, atomic)


def plain_structures(dataset: PackedDataset, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Per-structure tensors on the device: what a plain PyTorch training script keeps."""
    a = dataset.arrays
    ptr, eptr = a["ptr"], a["edge_ptr"]

    def floats(x: np.ndarray) -> torch.Tensor:
        return torch.tensor(x, dtype=torch.float32, device=device)

    return [
        {
            "positions": floats(a["positions"][ptr[k] : ptr[k + 1]]),
            "numbers": torch.tensor(a["numbers"][ptr[k] : ptr[k + 1]], device=device),
            "edges": torch.tensor(a["edges"][eptr[k] : eptr[k + 1]].T, device=device).long(),
            "energy": floats(a[keys.TEACHER_ENERGY][k]),
            "forces": floats(a[keys.TEACHER_FORCES][ptr[k] : ptr[k + 1]]),
        }
        for k in range(len(dataset))
    ]


def plain_step_factory(
    structures: list[dict[str, torch.Tensor]], cutoff: float, device: torch.device
) -> Callable:
    """A naive training step: per-structure tensors concatenated per batch in Python."""
    torch.manual_seed(0)
    model = PlainPaiNN(128, 3, 20, cutoff).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)

    def step(index: np.ndarray) -> None:
        batch = [structures[k] for k in index]
        sizes = [len(b["numbers"]) for b in batch]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        positions = torch.cat([b["positions"] for b in batch]).requires_grad_(True)
        numbers = torch.cat([b["numbers"] for b in batch])
        edges = torch.cat([b["edges"] + int(o) for b, o in zip(batch, offsets, strict=True)], dim=1)
        owner = torch.cat([torch.full((n,), m, device=device) for m, n in enumerate(sizes)])
        n_atoms = torch.tensor(sizes, device=device)
        energy = model(positions, numbers, edges, owner, len(batch))
        forces = -torch.autograd.grad(energy.sum(), positions, create_graph=True)[0]
        target_e = torch.stack([b["energy"] for b in batch])
        target_f = torch.cat([b["forces"] for b in batch])
        loss = torch.mean(((energy - target_e) / n_atoms) ** 2)
        loss = loss + torch.mean((forces - target_f) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


# --- this project's step ------------------------------------------------------------------


def ours_step_factory(
    graphs: GraphSet,
    scales: LossScales,
    cutoff: float,
    plans: list,
    static: bool,
    lean: bool = False,
    compile: bool = False,
) -> tuple[Callable, TrainStep | StaticTrainStep]:
    """The trainer's step on batches gathered from the device-resident set.

    ``static``: a :class:`StaticTrainStep` whose capacities hold every planned batch,
    captured in a CUDA graph on CUDA. ``compile``: predictions and loss compiled by
    ``torch.compile`` (``TrainStep(compile=True)``). Returns a function of a plan, and the
    step.
    """
    torch.manual_seed(0)
    model = PaiNN(128, 3, 20, cutoff, lean_messages=lean).to(graphs.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    loss = DistillationLoss(1.0, 1.0, scales=scales)
    step: TrainStep | StaticTrainStep = TrainStep(
        model, optimizer, ExponentialMovingAverage(model, 0.99), loss, 10.0, compile=compile
    )
    if static:
        cap = Capacity(
            max(len(p.index) for p in plans),
            max(p.n_atoms for p in plans) + 1,
            max(p.n_edges for p in plans),
        )
        cuda_graph = graphs.device.type == "cuda"
        step = StaticTrainStep(step, cap, padding_length(cutoff), cuda_graph=cuda_graph)

    def run(plan) -> torch.Tensor:
        return step(*graphs.gather(plan.index, plan.weights))

    return run, step


def loss_curves(
    graphs: GraphSet,
    scales: LossScales,
    cutoff: float,
    plans: list,
    steps: int,
    compile: bool = False,
) -> dict[str, Any]:
    """The eager step (twice), the static one (captured on CUDA) and, with ``compile``, the
    static compiled one, trained side by side.

    All start from the same weights and take the same ``steps`` batches (cycling) with the
    LR rising linearly over the first 50 steps to :data:`LR`. The second eager run measures
    the run-to-run noise of the GPU's non-deterministic sums (``eager_repeat``).
    """
    curves = {}
    kinds = [("eager", False, False), ("eager_repeat", False, False), ("static", True, False)]
    if compile:
        kinds.append(("static_compiled", True, True))
    for name, static, compiled in kinds:
        run, step = ours_step_factory(graphs, scales, cutoff, plans, static, compile=compiled)
        losses = []
        for k in range(steps):
            step.set_lr(LR * min(1.0, (k + 1) / 50))
            losses.append(run(plans[k % len(plans)]))
        curves[name] = torch.stack(losses).double().cpu()
    eager = curves["eager"]
    out: dict[str, Any] = {
        "steps": steps,
        "structures_per_step": len(plans[0].index),
        "captured": graphs.device.type == "cuda",
    }
    for name, curve in curves.items():
        if name == "eager":
            continue
        relative = (curve - eager).abs() / eager.abs()
        beyond = torch.nonzero(relative > 0.01).flatten()
        out[f"{name}_vs_eager"] = {
            "max_rel_difference": float(relative.max()),
            "max_rel_difference_first_100": float(relative[:100].max()),
            "first_step_beyond_1_percent": int(beyond[0]) if len(beyond) else None,
        }
    out["curves"] = {name: curve.tolist() for name, curve in curves.items()}
    return out


# --- timing -------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    """Wait for the device, so that a host clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_block(run: Callable, items: list, start: int, steps: int, device: torch.device) -> float:
    """Seconds per step over ``steps`` items from ``start`` (cycling)."""
    sync(device)
    t0 = time.perf_counter()
    for k in range(steps):
        run(items[(start + k) % len(items)])
    sync(device)
    return (time.perf_counter() - t0) / steps


def attempt(
    runners: dict[str, tuple[Callable, list, Any]],
    key: str,
    start: int,
    steps: int,
    device: torch.device,
    rows: list[dict[str, Any]],
    context: dict[str, Any],
) -> float | None:
    """One timed block; a configuration out of GPU memory is dropped and recorded in rows."""
    run, items, _ = runners[key]
    try:
        return time_block(run, items, start, steps, device)
    except torch.cuda.OutOfMemoryError:
        implementation, batching = key.split("/")
        rows.append(
            {**context, "implementation": implementation, "batching": batching, "error": "OOM"}
        )
        print(json.dumps(rows[-1]), flush=True)
        del runners[key]
        torch.cuda.empty_cache()
        return None


def measure(args: argparse.Namespace, name: str, dataset: PackedDataset, device: torch.device):
    """Every batch size of one workload: ours (and variants) and the plain reference."""
    n_atoms = np.diff(dataset.arrays["ptr"])
    n_edges = np.diff(dataset.arrays["edge_ptr"])
    has_stress = np.zeros(len(dataset), dtype=bool)
    order = np.random.default_rng(1).permutation(len(dataset))
    graphs = GraphSet.from_dataset(dataset, args.cutoff, device=device, resident=True)
    scales = LossScales.from_dataset(dataset)
    structures = plain_structures(dataset, device)
    graphs_bytes = graphs.nbytes() if graphs.storage.type == "cuda" else 0
    plain_bytes = sum(t.numel() * t.element_size() for s in structures for t in s.values())
    rows = []
    for batch_size in args.batch_sizes:
        # Compiled steps of earlier batch sizes are done with: forget them, so that
        # dynamo's limit of recompilations per function is never reached.
        torch._dynamo.reset()
        plain_batches = plan_batches(order, n_atoms, n_edges, batch_size)
        count = plan_steps(plain_batches, n_atoms, n_edges, has_stress)
        # name -> (batches, static shapes, lean messages, compiled)
        variants: dict[str, tuple[list, bool, bool, bool]] = {"count": (count, False, False, False)}
        if args.static:
            variants["count+static"] = (count, True, False, False)
        if args.compile:
            variants["count+static+compiled"] = (count, True, False, True)
        if args.lean:
            variants["count+lean"] = (count, False, True, False)
            if args.static:
                variants["count+static+lean"] = (count, True, True, False)
        if name == "mixed":
            budget = int(batch_size * n_edges.mean())
            edge_batches = plan_batches(order, n_atoms, n_edges, 4 * batch_size, max_edges=budget)
            edge_plans = plan_steps(edge_batches, n_atoms, n_edges, has_stress)
            variants["edge-budget"] = (edge_plans, False, False, False)
            if args.static:
                variants["edge-budget+static"] = (edge_plans, True, False, False)
            if args.compile:
                variants["edge-budget+static+compiled"] = (edge_plans, True, False, True)
        # key -> (a function that builds: (function of a batch, the step or None), batches)
        builders: dict[str, tuple[Callable, list]] = {}
        for variant, (plans, static, lean, compiled) in variants.items():
            options = (plans, static, lean, compiled)
            builders[f"mlff_distiller/{variant}"] = (
                lambda o=options: ours_step_factory(graphs, scales, args.cutoff, *o),
                plans,
            )
        builders["plain_eager/count"] = (
            lambda: (plain_step_factory(structures, args.cutoff, device), None),
            plain_batches,
        )
        # key -> (function of a batch, the batches, the step object or None)
        runners: dict[str, tuple[Callable, list, Any]] = {}
        peak: dict[str, float | None] = {key: None for key in builders}
        for key, (build, items) in builders.items():  # build, warm up, peak memory
            # What this step allocates (model, optimiser, capture pool, activations) over
            # what is already there, plus its own training data on the device: other
            # steps' memory, still held for the timing, is not counted.
            baseline = 0
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                baseline = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            context = {"workload": name, "batch_size": batch_size}
            try:
                run, step = build()
            except torch.cuda.OutOfMemoryError:
                continue
            runners[key] = (run, items, step)
            if attempt(runners, key, 0, args.warmup, device, rows, context) is None:
                continue
            if device.type == "cuda":
                data = plain_bytes if key.startswith("plain") else graphs_bytes
                step_bytes = torch.cuda.max_memory_allocated(device) - baseline
                peak[key] = (step_bytes + data) / 2**30
        times: dict[str, list[float]] = {key: [] for key in runners}
        for repeat in range(args.repeats):  # alternate the implementations
            for key in list(runners):
                start = args.warmup + repeat * args.steps
                context = {"workload": name, "batch_size": batch_size}
                seconds = attempt(runners, key, start, args.steps, device, rows, context)
                if seconds is not None:
                    times[key].append(seconds)
        for key, (_, items, step) in runners.items():
            implementation, batching = key.split("/")
            seconds = statistics.median(times[key])
            per_step = len(dataset) / len(items)  # mean structures per step of this batching
            row = {
                "workload": name,
                "batch_size": batch_size,
                "implementation": implementation,
                "batching": batching,
                "ms_per_step": 1000 * seconds,
                "ms_per_step_blocks": [1000 * t for t in times[key]],
                "structures_per_step": per_step,
                "structures_per_s": per_step / seconds,
                "s_per_epoch_extrapolated": len(dataset) / (per_step / seconds),
                "peak_memory_gib": peak[key],
                "data_on_device_gib": (
                    (plain_bytes if implementation == "plain_eager" else graphs_bytes) / 2**30
                    if device.type == "cuda"
                    else None
                ),
            }
            if isinstance(step, StaticTrainStep):
                row["captured"] = step.cuda_graph
                row["capture_seconds"] = step.capture_seconds
            same_batches = batching.startswith("count")
            if (
                implementation == "mlff_distiller"
                and same_batches
                and "plain_eager/count" in runners
            ):
                row["plain_over_ours"] = statistics.median(times["plain_eager/count"]) / seconds
            rows.append(row)
            brief = {k: v for k, v in row.items() if k != "ms_per_step_blocks"}
            print(json.dumps(brief), flush=True)
        runners.clear()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--structures", type=int, default=4416)
    parser.add_argument("--atoms", type=int, default=90)
    parser.add_argument("--neighbours", type=float, default=22.0)
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--large-fraction", type=float, default=0.2)
    parser.add_argument("--large-atoms", type=int, default=800)
    parser.add_argument("--workloads", nargs="+", default=["uniform", "mixed"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 64, 256])
    parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per config")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--static",
        action="store_true",
        help="also time padded batches (captured in a CUDA graph on CUDA) and compare loss curves",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time the compiled step (TrainStep(compile=True)) on padded batches "
        "(captured on CUDA), and add it to the loss curves",
    )
    parser.add_argument(
        "--lean",
        action="store_true",
        help="also time the memory-lean messages (model.lean_messages=true), eagerly and, "
        "with --static, on padded batches (captured on CUDA)",
    )
    parser.add_argument("--curve-steps", type=int, default=300, help="steps of the loss curves")
    parser.add_argument("--curve-batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    result: dict[str, Any] = {
        "benchmark": "train_speed",
        "environment": environment(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "student": {"n_features": 128, "n_blocks": 3, "n_rbf": 20, "cutoff": args.cutoff},
        "workloads": {},
        "results": [],
    }
    for name in args.workloads:
        fraction = args.large_fraction if name == "mixed" else 0.0
        dataset = workload(
            args.structures, args.atoms, fraction, args.large_atoms, args.neighbours, args.cutoff
        ).with_neighbours(args.cutoff)
        sizes = np.diff(dataset.arrays["edge_ptr"])
        n_atoms = np.diff(dataset.arrays["ptr"])
        result["workloads"][name] = {
            "structures": len(dataset),
            "atoms_mean": float(n_atoms.mean()),
            "large_structures": int((n_atoms > args.atoms).sum()),
            "neighbours_per_atom": float(sizes.sum() / n_atoms.sum()),
        }
        print(json.dumps({name: result["workloads"][name]}), flush=True)
        result["results"] += measure(args, name, dataset, device)
        if (args.static or args.compile) and name == "uniform" and args.curve_steps > 0:
            n_atoms, n_edges = np.diff(dataset.arrays["ptr"]), np.diff(dataset.arrays["edge_ptr"])
            order = np.random.default_rng(2).permutation(len(dataset))
            batches = plan_batches(order, n_atoms, n_edges, args.curve_batch_size)
            plans = plan_steps(batches, n_atoms, n_edges, np.zeros(len(dataset), dtype=bool))
            graphs = GraphSet.from_dataset(dataset, args.cutoff, device=device, resident=True)
            scales = LossScales.from_dataset(dataset)
            torch._dynamo.reset()
            curves = loss_curves(
                graphs, scales, args.cutoff, plans, args.curve_steps, compile=args.compile
            )
            result["loss_curves"] = curves
            brief = {k: v for k, v in curves.items() if k != "curves"}
            print(json.dumps({"loss_curves": brief}), flush=True)
    if args.out is not None:
        write_json(args.out, result)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
