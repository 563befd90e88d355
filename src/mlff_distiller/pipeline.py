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

from mlff_distiller.atomic import (
    CorruptFileError,
    atomic_path,
    remove_stale_temporaries,
    write_text,
)
from mlff_distiller.config import Config, ConfigError
from mlff_distiller.data.dataset import PackedDataset, load_dataset, pack, split_by_system
from mlff_distiller.data.store import LabelStore
from mlff_distiller.structures.validate import (
    StructureInputError,
    SystemSource,
    collect_systems,
    read_frames,
)
from mlff_distiller.teachers.base import Teacher

STAGES = ("generate", "label", "train", "evaluate")


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


#: Folders of a run directory; a file in the place of one is refused before any work.
RUN_FOLDERS = ("structures", "data", "checkpoints", "model", "logs", "report")
#: Folders whose files are stage outputs: while they are empty, a new config starts afresh.
_OUTPUT_FOLDERS = ("structures", "data", "checkpoints", "model")


class RunDirError(ValueError):
    """A run directory that cannot be used as it is; the message names the path and the fix."""


def prepare_run_dir(config: Config, accept_changes: bool = False) -> Path:
    """Create the run directory, clear what killed runs left, write the resolved config.

    Temporary files of processes that no longer run are removed (a killed write never
    became a file). The stored config is compared with ``config`` only once a stage has
    written something, and ``run_dir`` itself may differ (a run directory that was moved).

    Raises
    ------
    RunDirError
        If the run directory, or one of its folders, is a file.
    ConfigError
        If the run directory holds outputs made with a different config (the stages already
        done would not match the new one), unless ``accept_changes``; or its ``config.yaml``
        is not a config.
    """
    run_dir = Path(config.run_dir)
    for path in (run_dir, *(run_dir / name for name in RUN_FOLDERS)):
        if path.exists() and not path.is_dir():
            raise RunDirError(
                f"{path} is a file, but the run directory needs a folder there: move it away, "
                "or choose another run_dir"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    path = run_dir / "config.yaml"
    new = config.to_yaml()
    if path.is_file() and not accept_changes and _has_outputs(run_dir):
        old = _stored_config(path)
        changed = sorted(
            k
            for k, v in _flatten(yaml.safe_load(new)).items()
            if k != "run_dir" and old.get(k, object()) != v
        )
        if changed:
            raise ConfigError(
                f"{path} was written by an earlier run with other settings ({', '.join(changed)})"
                ": use another run_dir, or pass --accept-changes to continue this run with the "
                "new settings (stages already done are not redone)"
            )
    write_text(path, new)
    return run_dir


def _has_outputs(run_dir: Path) -> bool:
    return any(p.is_file() for name in _OUTPUT_FOLDERS for p in (run_dir / name).rglob("*"))


def _stored_config(path: Path) -> dict[str, Any]:
    """The flattened config that a run directory holds."""
    try:
        stored = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        stored = None
    if not isinstance(stored, dict):
        raise ConfigError(
            f"{path} is not a config written by mlff-distill (corrupted?): restore it, or "
            "use another run_dir"
        )
    return _flatten(stored)


# --- generate ---------------------------------------------------------------------------


def collect_config_systems(config: Config) -> list[SystemSource]:
    """Every system of the config, each source checked (:mod:`..structures.validate`).

    Raises
    ------
    StructureInputError
        Listing every SMILES, name, file or frame that cannot be used.
    ConfigError
        If the config gives no system at all.
    """
    cfg = config.structures
    systems = collect_systems(cfg.smiles, cfg.ase_molecules, cfg.files, cfg.min_distance)
    if not systems:
        raise ConfigError("structures: no systems (give smiles, ase_molecules or files)")
    return systems


def _system_file(config: Config, k: int) -> Path:
    return Path(config.run_dir) / "structures" / f"system-{k:04d}.extxyz"


def system_paths(config: Config) -> list[Path]:
    """One extxyz file per system, in config order."""
    return [_system_file(config, k) for k in range(len(collect_config_systems(config)))]


def check_inputs(config: Config, systems: Sequence[SystemSource], teacher: Teacher) -> None:
    """What labelling and splitting need from the systems, checked before any work.

    Raises
    ------
    UnsupportedElementError
        If a system has an element the teacher cannot label.
    ValueError
        If the systems cannot be split with ``data.val_fraction`` and ``data.test_fraction``.
    """
    from mlff_distiller.teachers.base import check_elements

    check_elements(teacher, [system.placeholder() for system in systems])
    cfg = config.data
    split_by_system(
        [system.system_id for system in systems],
        cfg.val_fraction,
        cfg.test_fraction,
        cfg.split_seed,
    )


def generate(config: Config, console: Console) -> None:
    """Build every system and its perturbed frames; one file per system, written atomically.

    Every source is checked first (:func:`collect_config_systems`, :func:`check_inputs`), so
    a bad input stops the run before the first system is generated.
    """
    from mlff_distiller.structures.filters import min_distance_filter
    from mlff_distiller.structures.samplers import langevin_md, rattle
    from mlff_distiller.teachers import get_teacher

    cfg = config.structures
    systems = collect_config_systems(config)
    paths = [_system_file(config, k) for k in range(len(systems))]
    todo = [k for k, p in enumerate(paths) if not p.is_file()]
    if not todo:
        console.print(f"generate: done ({len(paths)} systems)")
        return
    teacher = get_teacher(config.teacher.name, config.teacher.device)
    check_inputs(config, systems, teacher)
    calculator = None
    if cfg.md.frames > 0 and cfg.md.temperatures_K:
        calculator = teacher.calculator()
    with Progress(console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("generating structures", total=len(todo))
        for n_done, k in enumerate(todo):
            system = systems[k]
            initial = system.build()
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
            if not kept:
                raise StructureInputError(
                    f"every frame of {system.origin} has atoms closer than "
                    f"structures.min_distance ({cfg.min_distance:g} Å): keep the starting "
                    "structure (structures.include_initial=true) or rattle less"
                )
            with atomic_path(paths[k]) as tmp:
                ase.io.write(tmp, kept, format="extxyz")
            progress.advance(task)
            if not console.is_terminal:
                console.print(
                    f"generate: {n_done + 1}/{len(todo)} {system.system_id}: {len(kept)} frames"
                    + (f" ({len(rejected)} rejected: atoms too close)" if rejected else "")
                )
    console.print(f"generate: done ({len(paths)} systems)")


def read_structures(config: Config) -> list[ase.Atoms]:
    """All generated frames, systems in config order."""
    frames: list[ase.Atoms] = []
    for path in system_paths(config):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (run the generate stage first)")
        fix = "delete it and run the same command again to generate it anew"
        frames.extend(read_frames(path, fix=fix, format="extxyz"))
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
        # A damaged dataset, one without neighbour lists (or with another cutoff) or from
        # another teacher is packed again from the shards.
        packed = _packed_dataset(dataset_path)
        if packed is None:
            console.print(f"label: {dataset_path} is unreadable; packing it again")
        elif (
            len(packed) == len(structures)
            and packed.neighbour_cutoff == config.model.cutoff
            and packed.teacher_name == config.teacher.name
        ):
            console.print(f"label: done ({len(packed)} structures)")
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
    dataset = pack(
        store,
        dataset_path,
        cfg.val_fraction,
        cfg.test_fraction,
        cfg.split_seed,
        cutoff=config.model.cutoff,
    )
    counts = {s: len(dataset.subset(s).systems()) for s in ("train", "val", "test")}
    console.print(
        f"label: done ({len(dataset)} structures; systems train {counts['train']}, "
        f"val {counts['val']}, test {counts['test']})"
    )


# --- train and evaluate -----------------------------------------------------------------


def _packed_dataset(path: Path) -> PackedDataset | None:
    """The packed dataset, or ``None`` when it is damaged (it is packed again)."""
    try:
        return load_dataset(path)
    except (CorruptFileError, KeyError):
        return None


#: Entries every training checkpoint holds, by file name (the trainer checks the rest).
_CHECKPOINT_KEYS = {"last.ckpt": ("epoch", "history", "model"), "best.ckpt": ("epoch", "model")}


def check_checkpoint(path: Path) -> None:
    """Refuse a damaged training checkpoint (``last.ckpt`` or ``best.ckpt``).

    Raises
    ------
    CorruptFileError
        Naming the checkpoint that is truncated, corrupted or of another kind, and the fix.
    """
    import torch

    from mlff_distiller.deploy.artefact import load_error_reason

    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch fails in many ways on a damaged file
        problem = f"it cannot be loaded: {load_error_reason(exc)}"
    else:
        required = _CHECKPOINT_KEYS[path.name]
        if isinstance(state, dict) and all(key in state for key in required):
            return
        problem = f"it lacks some of {', '.join(required)}"
    raise CorruptFileError(
        f"{path} is not a training checkpoint of this project, truncated or corrupted "
        f"({problem}): delete {path.parent} and run the same command again to train from "
        "the start"
    )


def train(config: Config, console: Console) -> None:
    """Train the student (resumes from the last checkpoint) and write ``model/student.pt``."""
    from mlff_distiller.training.trainer import Trainer

    # Before the trainer loads them: a damaged checkpoint is named, not a torch traceback.
    for name in _CHECKPOINT_KEYS:
        path = Path(config.run_dir) / "checkpoints" / name
        if path.is_file():
            check_checkpoint(path)
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
    metrics = None
    if path.is_file() and student.is_file() and path.stat().st_mtime >= student.stat().st_mtime:
        metrics = _stored_metrics(path)
        if metrics is None:
            console.print(f"report: {path} is unreadable; evaluating again")
    if metrics is None:
        metrics = run_evaluation(config, Path(config.run_dir))
    print_metrics(metrics, console)
    console.print(f"report: {path}, plots in {path.parent}")
    return metrics


def _stored_metrics(path: Path) -> dict[str, Any] | None:
    """The metrics of an earlier evaluation, or ``None`` when damaged (evaluated again)."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    return metrics if isinstance(metrics, dict) and "force_mae_ev_per_a" in metrics else None


STAGE_FUNCTIONS: dict[str, Callable[[Config, Console], Any]] = {
    "generate": generate,
    "label": label,
    "train": train,
    "evaluate": evaluate,
}


def run(config: Config, console: Console, stages: Sequence[str] = STAGES) -> None:
    """Run ``stages`` in order over the run directory of ``config``, skipping what is done.

    Under ``torchrun`` (several processes) only ``train`` runs, and only rank 0 prints.

    Raises
    ------
    ConfigError
        If several processes are asked to run another stage than ``train``.
    """
    from mlff_distiller.training.distributed import Distributed

    if Distributed.from_env().world_size > 1:
        others = [stage for stage in stages if stage != "train"]
        if others:
            raise ConfigError(
                f"several processes (torchrun) run only the train stage, not {', '.join(others)}"
                ": run `mlff-distill label` before and `mlff-distill evaluate` after in one "
                "process, and `torchrun ... -m mlff_distiller train RUN` between them"
            )
        if not Distributed.from_env().is_main:
            console = Console(quiet=True)
    for stage in stages:
        STAGE_FUNCTIONS[stage](config, console)
