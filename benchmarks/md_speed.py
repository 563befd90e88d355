"""MD speed of the student beside its teachers, size-resolved, in one process.

What is timed (see ``../shared/design/BENCHMARKING.md``):

- **single**: one structure through ASE's velocity Verlet (0.5 fs, positions change every
  step, so no calculator cache is ever hit), for each system of ``benchmarks/systems.py``
  (peptides of 33 to 1,003 atoms, a periodic water box of 3,000 atoms) and each engine:
  ``student-fast`` (the default calculator: skin neighbour list, CUDA-graph replay on a GPU),
  ``student-compiled`` (the same with ``compile=True``: on a GPU the model compiled before
  capture, on the CPU energy and forces compiled as one function), ``student-eager`` (the
  pre-engine path: neighbour list rebuilt and eager PyTorch at every step), and the teachers
  ``sevennet`` (SevenNet-0's own ASE calculator) and ``chgnet`` where installed.
  Engines are measured alternately, in ``--rounds`` blocks of about ``--block-seconds``
  each, continuing their own trajectories; the median block rate is reported with every raw
  block.
- **batched**: R replicas of one molecule advanced together, through the student engine with a
  velocity-Verlet loop on the device (``engine-verlet``; with ``batch-compiled`` in
  ``--engines`` also ``engine-verlet-compiled``, the student compiled before capture) and
  through TorchSim's NVT Langevin integrator with the student's ``ModelInterface``
  (``torchsim-nvt``, with ``torchsim`` in ``--engines``) where torch-sim is installed;
  atom-steps/s. The batched student is the first of ``--students``.

``--students`` names trained students (run directories or ``student.pt`` files), so that the
MD is real MD: bonded, at 300 K, with neighbour-list rebuilds as often as the chemistry makes
them. A bare number instead gives a random student of that width (3 blocks, 20 radial
functions, 5 Å) whose output is scaled down (``scale = 0.01``): its atoms fly nearly
ballistically, which rebuilds the list more often than bonded MD (a pessimistic case for the
skin). Rebuild counts and times are reported either way.

Usage::

    python benchmarks/md_speed.py --device cuda --out benchmarks/results/md_speed-h100.json
    python benchmarks/md_speed.py --device cpu --systems ala3 ala10 --students runs/quickstart
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ase
import numpy as np
import torch
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

sys.path.insert(0, str(Path(__file__).parent))
import systems
from provenance import environment

from mlff_distiller.atomic import write_json
from mlff_distiller.deploy.artefact import load_student
from mlff_distiller.deploy.calculator import StudentCalculator
from mlff_distiller.deploy.engine import StudentEngine
from mlff_distiller.models import PaiNN

TIMESTEP_FS = 0.5
ELEMENTS = [1, 6, 7, 8]


def student(spec: str) -> PaiNN:
    """A trained student (run directory or file), or a random one of width ``spec``."""
    if not spec.isdigit():
        return load_student(spec)[0]
    torch.manual_seed(0)
    model = PaiNN(n_features=int(spec), n_blocks=3, n_rbf=20, cutoff=5.0)
    model.scale.fill_(0.01)
    return model.eval()


def make_calculator(
    engine: str, spec: str | None, device: str
) -> ase.calculators.calculator.Calculator:
    """An ASE calculator for one engine name (see the module docstring)."""
    meta = {"elements": ELEMENTS}
    if engine == "student-fast":
        return StudentCalculator(student(spec), meta, device=device)
    if engine == "student-compiled":
        return StudentCalculator(student(spec), meta, device=device, compile=True)
    if engine == "student-eager":
        return StudentCalculator(student(spec), meta, device=device, skin=0.0, cuda_graph=False)
    if engine == "sevennet":
        from mlff_distiller.teachers.sevenn import sevennet0_teacher

        return sevennet0_teacher(device).calculator()
    if engine == "chgnet":
        from mlff_distiller.teachers.chgnet import chgnet_teacher

        return chgnet_teacher(device).calculator()
    raise ValueError(f"unknown engine {engine!r}")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Trajectory:
    """One engine's MD of one system, advanced block by block."""

    def __init__(self, atoms: ase.Atoms, engine: str, spec: str | None, device: str) -> None:
        self.engine = engine
        self.atoms = atoms.copy()
        self.device = device
        start = time.perf_counter()
        self.atoms.calc = make_calculator(engine, spec, device)
        self.setup_seconds = time.perf_counter() - start
        MaxwellBoltzmannDistribution(self.atoms, temperature_K=300, rng=np.random.default_rng(0))
        self.md = VelocityVerlet(self.atoms, timestep=TIMESTEP_FS * ase.units.fs)
        self.blocks: list[dict[str, float]] = []
        self.peak_memory = 0
        # First steps: capture or compilation, caches; timed separately.
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        self.md.run(3)
        sync(device)
        self.first_steps_seconds = time.perf_counter() - start
        start = time.perf_counter()
        self.md.run(2)
        sync(device)
        self.rate_guess = 2 / (time.perf_counter() - start)

    def block(self, seconds: float) -> None:
        steps = max(3, int(self.rate_guess * seconds))
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        sync(self.device)
        start = time.perf_counter()
        self.md.run(steps)
        sync(self.device)
        elapsed = time.perf_counter() - start
        if self.device.startswith("cuda"):
            self.peak_memory = max(self.peak_memory, torch.cuda.max_memory_allocated())
        self.rate_guess = steps / elapsed
        self.blocks.append({"steps": steps, "seconds": elapsed, "steps_per_s": steps / elapsed})

    def summary(self) -> dict[str, Any]:
        rate = statistics.median(b["steps_per_s"] for b in self.blocks)
        out: dict[str, Any] = {
            "engine": self.engine,
            "steps_per_s": rate,
            "ns_per_day": rate * TIMESTEP_FS * 86400 / 1e6,
            "atom_steps_per_s": rate * len(self.atoms),
            "setup_seconds": self.setup_seconds,
            "first_steps_seconds": self.first_steps_seconds,
            "blocks": self.blocks,
            "finite": bool(np.isfinite(self.atoms.get_potential_energy())),
        }
        if self.device.startswith("cuda"):
            out["peak_memory_mib"] = self.peak_memory / 2**20
        calc = self.atoms.calc
        if isinstance(calc, StudentCalculator):
            engine = calc.engine
            out.update(
                captures=engine.captures,
                capture_seconds=engine.capture_seconds,
                neighbour_builds=engine.neighbours.builds,
                neighbour_build_seconds=engine.neighbours.build_seconds,
                graph_rebuild_seconds=engine.rebuild_seconds,
                neighbour_calls=engine.neighbours.calls,
                skin=engine.neighbours.skin,
            )
        return out


BATCH_ONLY = ("batch-compiled", "torchsim")
"""Names in ``--engines`` that add rows of batched MD only."""


def single(args: argparse.Namespace, results: list, save: Callable[[], None]) -> None:
    """Every student engine and every teacher on each system, alternately in one loop."""
    for name in args.systems:
        atoms = systems.load(name)
        runs: list[tuple[str | None, Trajectory]] = []
        skipped: dict[str, str] = {}
        for engine in args.engines:
            if engine in BATCH_ONLY:
                continue
            teacher = engine in ("sevennet", "chgnet")
            for spec in [None] if teacher else args.students:
                try:
                    runs.append((spec, Trajectory(atoms, engine, spec, args.device)))
                except Exception as exc:  # a teacher that cannot run here is reported, not fatal
                    print(f"  skip {engine}: {type(exc).__name__}: {exc}", flush=True)
                    skipped[engine] = f"{type(exc).__name__}: {exc}"
        for _ in range(args.rounds):
            for _, run in runs:  # alternately, so that drifts of the machine hit all alike
                run.block(args.block_seconds)
        teachers = {run.engine: run.summary() for spec, run in runs if spec is None}
        for spec in args.students:
            mine = [run.summary() for s, run in runs if s == spec]
            rates = {r["engine"]: r["steps_per_s"] for r in mine}
            teacher_rates = {e: r["steps_per_s"] for e, r in teachers.items()}
            row = {
                "system": name,
                "n_atoms": len(atoms),
                "periodic": bool(atoms.pbc.all()),
                "student": spec,
                "student_hyperparameters": student(spec).hyperparameters,
                "engines": mine + list(teachers.values()),
                "skipped": skipped,
                "ratios": {
                    f"{a}/{b}": rates[a] / rate_b
                    for a in rates
                    for b, rate_b in {**rates, **teacher_rates}.items()
                    if a != b and not b.startswith("student-fast")
                },
            }
            print(json.dumps({k: v for k, v in row.items() if k != "engines"}), flush=True)
            for r in row["engines"]:
                print(f"  {r['engine']:17s} {r['steps_per_s']:10.1f} steps/s", flush=True)
            results.append(row)
            save()


def block_rates(steps: Callable[[int], None], rounds: int, device: str, k: int = 20) -> list[float]:
    """Steps/s of ``rounds`` timed blocks of ``k`` steps each (device synchronised)."""
    rates = []
    for _ in range(rounds):
        sync(device)
        start = time.perf_counter()
        steps(k)
        sync(device)
        rates.append(k / (time.perf_counter() - start))
    return rates


def engine_verlet(
    atoms: ase.Atoms, replicas: int, args: argparse.Namespace, compile: bool = False
) -> dict[str, Any]:
    """Velocity Verlet of ``replicas`` copies, all on the device, through the student engine.

    ``compile``: the engine compiles the student (``torch.compile``) before capturing it.
    """
    device = args.device
    engine = StudentEngine(student(args.students[0]), device, skin=args.batch_skin, compile=compile)
    n = len(atoms)
    rng = np.random.default_rng(1)
    positions = torch.tensor(np.tile(atoms.positions, (replicas, 1)), device=device)
    masses = torch.tensor(np.tile(atoms.get_masses(), replicas), device=device).unsqueeze(-1)
    kt = 300 * ase.units.kB
    velocities = torch.tensor(rng.normal(size=(n * replicas, 3)), device=device) * torch.sqrt(
        kt / masses
    )
    numbers = torch.tensor(np.tile(atoms.numbers, replicas), device=device)
    cell = torch.zeros(replicas, 3, 3, dtype=torch.float64, device=device)
    pbc = torch.zeros(replicas, 3, dtype=torch.bool, device=device)
    ptr = torch.arange(replicas + 1, device=device) * n
    dt = TIMESTEP_FS * ase.units.fs

    def forces() -> torch.Tensor:
        return engine.compute(positions, numbers, cell, pbc, ptr)["forces"].double()

    def steps(k: int) -> None:
        nonlocal positions, velocities
        f = forces()
        for _ in range(k):
            velocities = velocities + 0.5 * dt * f / masses
            positions = positions + dt * velocities
            f = forces()
            velocities = velocities + 0.5 * dt * f / masses

    torch.cuda.reset_peak_memory_stats() if device.startswith("cuda") else None
    start = time.perf_counter()
    steps(3)
    sync(device)
    first = time.perf_counter() - start
    rates = block_rates(steps, args.rounds, device)
    rate = statistics.median(rates)
    out = {
        "engine": "engine-verlet-compiled" if compile else "engine-verlet",
        "replicas": replicas,
        "n_atoms_total": n * replicas,
        "steps_per_s": rate,
        "atom_steps_per_s": rate * n * replicas,
        "first_steps_seconds": first,
        "capture_seconds": engine.capture_seconds,
        "skin": engine.neighbours.skin,
        "neighbour_builds": engine.neighbours.builds,
        "neighbour_calls": engine.neighbours.calls,
        "raw_steps_per_s": rates,
        "finite": bool(torch.isfinite(positions).all()),
    }
    if device.startswith("cuda"):
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def breakdown(args: argparse.Namespace) -> dict[str, float]:
    """Where the time of one MD step of the fast calculator goes, in ms (``--batch-system``).

    ``replay``: the CUDA graph alone; ``engine``: plus neighbour-list check and copies from
    host arrays; ``calculator``: plus ASE's calculator machinery; ``md_step``: a whole
    velocity-Verlet step.
    """
    atoms = systems.load(args.batch_system)
    calc = make_calculator("student-fast", args.students[0], args.device)
    atoms.calc = calc
    engine = calc.engine
    n = len(atoms)
    inputs = (
        torch.from_numpy(atoms.positions),
        torch.from_numpy(atoms.numbers.astype(np.int64)),
        torch.zeros(1, 3, 3, dtype=torch.float64),
        torch.zeros(1, 3, dtype=torch.bool),
        torch.tensor([0, n]),
    )

    def timed(fn, repeats: int = 300) -> float:
        for _ in range(20):
            fn()
        sync(args.device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync(args.device)
        return (time.perf_counter() - start) / repeats * 1e3

    def move() -> None:
        atoms.positions[0, 0] += 1e-7
        atoms.get_forces()

    out = {
        "engine": timed(lambda: engine.compute(*inputs, to_host=True)),
        "calculator": timed(move),
    }
    md = VelocityVerlet(atoms, timestep=TIMESTEP_FS * ase.units.fs)
    out["md_step"] = timed(lambda: md.run(1))
    if engine._captured is not None:
        out["replay"] = timed(engine._captured.graph.replay)
    print(json.dumps({"breakdown_ms": out}), flush=True)
    return out


def batched(args: argparse.Namespace, results: list, save: Callable[[], None]) -> None:
    atoms = systems.load(args.batch_system)
    width = student(args.students[0]).hyperparameters["n_features"]
    compiles = [False, True] if "batch-compiled" in args.engines else [False]
    runs = [engine_verlet]
    if _has_torchsim() and "torchsim" in args.engines:
        runs.append(torchsim_nvt)
    for replicas in args.replicas:
        for run in runs:
            for compile in compiles:
                row = run(atoms, replicas, args, compile=compile)
                row.update(system=args.batch_system, student=args.students[0], student_width=width)
                shown = {k: v for k, v in row.items() if k != "raw_steps_per_s"}
                print(json.dumps(shown), flush=True)
                results.append(row)
                save()


def _has_torchsim() -> bool:
    """Whether a torch-sim with the step-wise integrator API (0.4 and later) is installed."""
    try:
        import torch_sim
    except ImportError:
        return False
    return hasattr(torch_sim, "nvt_langevin_step")


def torchsim_nvt(
    atoms: ase.Atoms, replicas: int, args: argparse.Namespace, compile: bool = False
) -> dict[str, Any]:
    """TorchSim NVT Langevin of ``replicas`` copies with the student's ModelInterface.

    ``compile``: the model's engine compiles the student before capturing it.
    """
    import torch_sim as ts

    from mlff_distiller.deploy.torchsim import StudentModel

    device = args.device
    model = StudentModel(
        student(args.students[0]),
        {"elements": ELEMENTS},
        device=device,
        skin=args.batch_skin,
        compile=compile,
    )
    kt = 300.0 * ts.units.MetalUnits.temperature
    dt = TIMESTEP_FS * 1e-3 * ts.units.MetalUnits.time
    state = ts.io.atoms_to_state([atoms] * replicas, model.device, model.dtype)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    state = ts.nvt_langevin_init(state, model, kT=kt)
    for _ in range(3):
        state = ts.nvt_langevin_step(state, model, dt=dt, kT=kt)
    sync(device)
    first = time.perf_counter() - start

    def steps(k: int) -> None:
        nonlocal state
        for _ in range(k):
            state = ts.nvt_langevin_step(state, model, dt=dt, kT=kt)

    rates = block_rates(steps, args.rounds, device)
    rate = statistics.median(rates)
    out = {
        "engine": "torchsim-nvt-compiled" if compile else "torchsim-nvt",
        "system": args.batch_system,
        "replicas": replicas,
        "n_atoms_total": len(atoms) * replicas,
        "steps_per_s": rate,
        "atom_steps_per_s": rate * len(atoms) * replicas,
        "first_steps_seconds": first,
        "capture_seconds": model.engine.capture_seconds,
        "skin": model.engine.neighbours.skin,
        "neighbour_builds": model.engine.neighbours.builds,
        "neighbour_calls": model.engine.neighbours.calls,
        "raw_steps_per_s": rates,
        "finite": bool(torch.isfinite(state.positions).all()),
    }
    if device.startswith("cuda"):
        out["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _rate(steps_per_s: float) -> str:
    """Three significant figures, without exponents."""
    digits = max(0, 2 - int(np.floor(np.log10(max(steps_per_s, 1e-9)))))
    return f"{steps_per_s:.{digits}f}"


def summarize(paths: list[Path]) -> str:
    """Markdown tables (steps/s, ratios, atom-steps/s) from result files of this script.

    Rows of several files are merged by hardware, system and student, so that a run of the
    compiled engine alone adds its column to the main run's rows. Ratios are taken only
    between engines measured in the same file (the same process, alternately).
    """
    engines = ["student-fast", "student-compiled", "student-eager", "sevennet", "chgnet"]
    rows: dict[tuple, dict[str, Any]] = {}
    batched_rows = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        env = result["environment"]
        hardware = env.get("gpu") or f"CPU ({env['torch_threads']} threads)"
        for row in result["single"]:
            key = (hardware, row["n_atoms"], row["system"], Path(row["student"]).stem)
            merged = rows.setdefault(key, {"width": row["student_hyperparameters"]["n_features"]})
            for run in row["engines"]:
                merged.setdefault(run["engine"], run["steps_per_s"])
            for name, ratio in row["ratios"].items():
                merged.setdefault(name, ratio)
        batched_rows += [(hardware, r) for r in result["batched"]]
    lines = [
        "| hardware | system (atoms) | student width | "
        + " | ".join(engines)
        + " | fastest student / SevenNet-0 (same run) |",
        "|" + "---|" * (len(engines) + 4),
    ]
    for (hardware, n_atoms, system, _), merged in sorted(rows.items()):
        cells = [_rate(merged[e]) if e in merged else "" for e in engines]
        ratios = [merged[f"{e}/sevennet"] for e in engines[:3] if f"{e}/sevennet" in merged]
        best = f"{max(ratios):.0f}×" if ratios else ""
        lines.append(
            f"| {hardware} | {system} ({n_atoms}) | {merged['width']} | "
            + " | ".join(cells)
            + f" | {best} |"
        )
    if batched_rows:
        lines += [
            "",
            "| hardware | engine | student width | skin (Å) | replicas × atoms | steps/s "
            "| atom-steps/s | peak GPU memory |",
            "|---|---|---|---|---|---|---|---|",
        ]
        order = ["engine-verlet", "engine-verlet-compiled", "torchsim-nvt", "torchsim-nvt-compiled"]
        batched_rows.sort(
            key=lambda hr: (
                hr[0],
                hr[1].get("student_width", 0),
                hr[1]["replicas"],
                -(hr[1].get("skin") or 0),
                order.index(hr[1]["engine"]) if hr[1]["engine"] in order else len(order),
            )
        )
        for hardware, r in batched_rows:
            memory = f"{r['peak_memory_mib'] / 1024:.1f} GiB" if "peak_memory_mib" in r else ""
            skin = f"{r['skin']:g}" if r.get("skin") is not None else ""
            lines.append(
                f"| {hardware} | {r['engine']} | {r.get('student_width', '')} | {skin} | "
                f"{r['replicas']} × {r['n_atoms_total'] // r['replicas']} | "
                f"{_rate(r['steps_per_s'])} | {r['atom_steps_per_s'] / 1e6:.3f} M | {memory} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--systems", nargs="*", default=systems.ORDER)
    parser.add_argument(
        "--students",
        nargs="+",
        default=["128"],
        help="run directories / student.pt files, or widths of random students",
    )
    parser.add_argument(
        "--engines",
        nargs="+",
        default=[
            "student-fast",
            "student-compiled",
            "student-eager",
            "sevennet",
            "chgnet",
            "batch-compiled",
            "torchsim",
        ],
        help="engines of single-system MD; batch-compiled and torchsim add batched rows",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block-seconds", type=float, default=2.0)
    parser.add_argument("--replicas", nargs="*", type=int, default=[1, 8, 64, 512])
    parser.add_argument("--batch-system", default="ala10")
    parser.add_argument(
        "--batch-skin", type=float, default=None, help="skin of batched runs (default: auto)"
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
        "environment": {**environment(args.device), "timestep_fs": TIMESTEP_FS},
        "args": {**vars(args), "out": str(args.out)},
        "single": [],
        "batched": [],
    }

    def save() -> None:
        """Rewrite the JSON after every measurement: a run cut short keeps what it measured."""
        write_json(args.out, result)

    single(args, result["single"], save)
    if args.device.startswith("cuda"):
        result["breakdown_ms"] = breakdown(args)
        save()
    batched(args, result["batched"], save)
    result["complete"] = True
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
