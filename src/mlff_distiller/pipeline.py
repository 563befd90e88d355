"""The stages of a distillation run, chained over one run directory; done stages are skipped.

``generate`` -> ``label`` -> ``train`` -> ``evaluate``. Each stage reads what the previous one
wrote in the run directory and writes its own output atomically, so a stopped run (Ctrl-C, a
kill, a crash) continues where it stopped when run again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ase
import ase.io
import yaml
from rich.console import Console
from rich.progress import Progress

from mlff_distiller import keys
from mlff_distiller.atomic import atomic_path, write_text
from mlff_distiller.config import Config, ConfigError
from mlff_distiller.data.dataset import load_dataset, pack
from mlff_distiller.data.store import LabelStore

STAGES = ("generate", "label", "train", "evaluate")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def prepare_run_dir(config: Config, accept_changes: bool = False) -> Path:
    """Create the run directory and write the resolved config into it.

    Raises
    ------
    ConfigError
        If the run directory holds a different config (the stages already done would not
        match the new one), unless ``accept_changes``.
    """
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / "config.yaml"
    new = config.to_yaml()
    if path.is_file() and not accept_changes:
        old = _flatten(yaml.safe_load(path.read_text()))
        changed = sorted(
            k for k, v in _flatten(yaml.safe_load(new)).items() if old.get(k, object()) != v
        )
        if changed:
            raise ConfigError(
                f"{path} was written by an earlier run with other settings ({', '.join(changed)})"
                ": use another run_dir, or pass --accept-changes to continue this run with the "
                "new settings (stages already done are not redone)"
            )
    write_text(path, new)
    return run_dir


# --- generate ---------------------------------------------------------------------------


def _system_builders(config: Config) -> list[tuple[str, Callable[[], ase.Atoms]]]:
    from mlff_distiller.structures.sources import from_ase_molecule, from_smiles

    cfg = config.structures
    builders: list[tuple[str, Callable[[], ase.Atoms]]] = []
    for k, smiles in enumerate(cfg.smiles):
        builders.append((smiles, lambda s=smiles, k=k: from_smiles(s, seed=k)))
    for name in cfg.ase_molecules:
        builders.append((name, lambda n=name: from_ase_molecule(n)))
    for path in cfg.files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"structures.files: {path} does not exist")
        for k, atoms in enumerate(ase.io.read(path, index=":")):
            atoms.info[keys.SYSTEM_ID] = f"{Path(path).name}:{k}"
            atoms.info[keys.SAMPLER] = "initial"
            builders.append((atoms.info[keys.SYSTEM_ID], lambda a=atoms: a))
    if not builders:
        raise ConfigError("structures: no systems (give smiles, ase_molecules or files)")
    return builders


def _system_file(config: Config, k: int) -> Path:
    return Path(config.run_dir) / "structures" / f"system-{k:04d}.extxyz"


def system_paths(config: Config) -> list[Path]:
    """One extxyz file per system, in config order."""
    return [_system_file(config, k) for k in range(len(_system_builders(config)))]


def generate(config: Config, console: Console) -> None:
    """Build every system and its perturbed frames; one file per system, written atomically."""
    from mlff_distiller.structures.filters import min_distance_filter
    from mlff_distiller.structures.samplers import langevin_md, rattle

    cfg = config.structures
    builders = _system_builders(config)
    paths = [_system_file(config, k) for k in range(len(builders))]
    todo = [k for k, p in enumerate(paths) if not p.is_file()]
    if not todo:
        console.print(f"generate: done ({len(paths)} systems)")
        return
    calculator = None
    if cfg.md.frames > 0 and cfg.md.temperatures_K:
        from mlff_distiller.teachers import get_teacher

        calculator = get_teacher(config.teacher.name, config.teacher.device).calculator()
    with Progress(console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("generating structures", total=len(todo))
        for n_done, k in enumerate(todo):
            system_id, build = builders[k]
            initial = build()
            frames = [initial] if cfg.include_initial else []
            if cfg.rattle.frames > 0:
                frames += rattle(initial, cfg.rattle.frames, cfg.rattle.stdev, seed=k)
            if calculator is not None:
                for t, temperature in enumerate(cfg.md.temperatures_K):
                    frames += langevin_md(
                        initial,
                        calculator,
                        temperature_K=temperature,
                        n_frames=cfg.md.frames,
                        interval=cfg.md.interval,
                        timestep_fs=cfg.md.timestep_fs,
                        friction=cfg.md.friction_per_fs,
                        seed=1000 * k + t,
                    )
            kept, rejected = min_distance_filter(frames, cfg.min_distance)
            with atomic_path(paths[k]) as tmp:
                ase.io.write(tmp, kept, format="extxyz")
            progress.advance(task)
            if not console.is_terminal:
                console.print(
                    f"generate: {n_done + 1}/{len(todo)} {system_id}: {len(kept)} frames"
                    + (f" ({len(rejected)} rejected: atoms too close)" if rejected else "")
                )
    console.print(f"generate: done ({len(paths)} systems)")


def read_structures(config: Config) -> list[ase.Atoms]:
    """All generated frames, systems in config order."""
    frames: list[ase.Atoms] = []
    for path in system_paths(config):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (run the generate stage first)")
        frames.extend(ase.io.read(path, index=":", format="extxyz"))
    return frames


# --- label ------------------------------------------------------------------------------


def _chunks(items: Sequence[int], size: int) -> list[list[int]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def label(config: Config, console: Console) -> None:
    """Label every generated frame with the teacher (shards), then pack the dataset."""
    run_dir = Path(config.run_dir)
    dataset_path = run_dir / "data" / "dataset.h5"
    structures = read_structures(config)
    store = LabelStore(run_dir / "data")
    done = store.labelled_indices(config.teacher.name)
    todo = [k for k in range(len(structures)) if k not in done]
    if not todo and dataset_path.is_file():
        n_packed = len(load_dataset(dataset_path))
        if n_packed == len(structures):
            console.print(f"label: done ({n_packed} structures)")
            return
    if todo:
        from mlff_distiller.teachers import get_teacher
        from mlff_distiller.teachers.base import check_elements

        teacher = get_teacher(config.teacher.name, config.teacher.device)
        check_elements(teacher, [structures[k] for k in todo])
        with Progress(console=console, disable=not console.is_terminal) as progress:
            task = progress.add_task(f"labelling with {teacher.name}", total=len(structures))
            progress.update(task, completed=len(done))
            for chunk in _chunks(todo, config.teacher.shard_size):
                frames = [structures[k] for k in chunk]
                labels = teacher.label(frames)
                path = store.write_shard(frames, labels, chunk, teacher.name, teacher.version)
                progress.advance(task, len(chunk))
                if not console.is_terminal:
                    console.print(f"label: {path.name} ({len(chunk)} structures)")
    cfg = config.data
    dataset = pack(store, dataset_path, cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
    counts = {s: len(dataset.subset(s).systems()) for s in ("train", "val", "test")}
    console.print(
        f"label: done ({len(dataset)} structures; systems train {counts['train']}, "
        f"val {counts['val']}, test {counts['test']})"
    )


# --- train and evaluate -----------------------------------------------------------------


def train(config: Config, console: Console) -> None:
    """Train the student (resumes from the last checkpoint) and write ``model/student.pt``."""
    from mlff_distiller.training.trainer import Trainer

    trainer = Trainer(config, Path(config.run_dir), console)
    if trainer.is_done():
        console.print(f"train: done ({trainer.student_path})")
        return
    trainer.run()


def evaluate(config: Config, console: Console) -> dict[str, Any]:
    """Score the student on the held-out test systems and print the metrics table."""
    from mlff_distiller.evaluation.report import evaluate as run_evaluation
    from mlff_distiller.evaluation.report import print_metrics

    run_dir = Path(config.run_dir)
    path = run_dir / "report" / "metrics.json"
    student = run_dir / "model" / "student.pt"
    if path.is_file() and student.is_file() and path.stat().st_mtime >= student.stat().st_mtime:
        metrics = json.loads(path.read_text())
    else:
        metrics = run_evaluation(config, Path(config.run_dir))
    print_metrics(metrics, console)
    console.print(f"report: {path}, plots in {path.parent}")
    return metrics


STAGE_FUNCTIONS: dict[str, Callable[[Config, Console], Any]] = {
    "generate": generate,
    "label": label,
    "train": train,
    "evaluate": evaluate,
}


def run(config: Config, console: Console, stages: Sequence[str] = STAGES) -> None:
    """Run ``stages`` in order over the run directory of ``config``, skipping what is done."""
    for stage in stages:
        STAGE_FUNCTIONS[stage](config, console)
