"""The stages of a distillation run, chained over one run directory; done stages are skipped.

``generate`` -> ``label`` -> ``data-report`` -> ``train`` -> ``evaluate`` -> ``validate-md``
-> ``report``.
Each stage reads what the previous one wrote in the run directory and writes its own output
atomically, so a stopped run (Ctrl-C, a kill, a crash) continues where it stopped when run
again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import ase
import ase.io
import numpy as np
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
from mlff_distiller.data.dataset import PackedDataset, load_dataset, pack_arrays, split_by_system
from mlff_distiller.data.store import LabelStore
from mlff_distiller.structures.validate import (
    StructureInputError,
    SystemSource,
    collect_systems,
    read_frames,
)
from mlff_distiller.teachers.base import Teacher

if TYPE_CHECKING:
    from mlff_distiller.training.distributed import Distributed

STAGES = ("generate", "label", "data-report", "train", "evaluate", "validate-md", "report")


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
        # A key the stored config lacks was added to mlff-distill since: that run had its default.
        defaults = _flatten(Config().model_dump(mode="json"))
        changed = sorted(
            k
            for k, v in _flatten(yaml.safe_load(new)).items()
            if k != "run_dir" and old.get(k, defaults.get(k, object())) != v
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
    """Every system of the config that the element whitelist keeps, each source checked.

    Sources are checked by :mod:`..structures.validate`; ``data.elements`` is the whitelist.

    Raises
    ------
    StructureInputError
        Listing every SMILES, name, crystal, file or frame that cannot be used.
    ConfigError
        If the config gives no system at all, or the whitelist (``data.elements``) drops all.
    """
    return _config_systems(config)[0]


def _config_systems(config: Config) -> tuple[list[SystemSource], dict[str, list[str]]]:
    """The systems the whitelist keeps, and those it drops (``system_id`` -> elements)."""
    from mlff_distiller.structures.filters import disallowed_elements

    cfg = config.structures
    systems = collect_systems(
        cfg.smiles,
        cfg.ase_molecules,
        cfg.files,
        cfg.min_distance,
        smiles_files=cfg.smiles_files,
        conformers=cfg.conformers,
        embedding_seed=cfg.embedding_seed,
        crystals=cfg.crystals,
        labelled_files=cfg.labelled_files,
        allow_missing_hydrogens=cfg.allow_missing_hydrogens,
    )
    dropped: dict[str, list[str]] = {}
    allowed = config.data.elements
    if allowed is not None:
        kept = []
        for system in systems:
            outside = disallowed_elements(system.placeholder().numbers, allowed)
            if outside:
                dropped[system.system_id] = outside
            else:
                kept.append(system)
        if systems and not kept:
            raise ConfigError(
                f"data.elements ({', '.join(allowed)}) drops every one of the {len(systems)} "
                "systems: add the elements they have, or set data.elements=null"
            )
        systems = kept
    if not systems:
        raise ConfigError(
            "structures: no systems (give smiles, smiles_files, ase_molecules, crystals, "
            "files or labelled_files)"
        )
    return systems, dropped


def _system_file(config: Config, k: int) -> Path:
    return Path(config.run_dir) / "structures" / f"system-{k:04d}.extxyz"


def system_paths(config: Config) -> list[Path]:
    """One extxyz file per system, in config order."""
    return [_system_file(config, k) for k in range(len(collect_config_systems(config)))]


def check_inputs(config: Config, systems: Sequence[SystemSource], teacher: Teacher | None) -> None:
    """What labelling and splitting need from the systems, checked before any work.

    Parameters
    ----------
    config, systems
        The run and its systems.
    teacher
        The teacher that labels every system but the labelled (imported) ones; None when
        there is none to label.

    Raises
    ------
    UnsupportedElementError
        If a system the teacher labels has an element it cannot label.
    ValueError
        If the systems cannot be split with ``data.val_fraction`` and ``data.test_fraction``.
    """
    from mlff_distiller.teachers.base import check_elements

    if teacher is not None:
        check_elements(teacher, [system.placeholder() for system in systems if not system.labelled])
    cfg = config.data
    split_by_system(
        [system.system_id for system in systems],
        cfg.val_fraction,
        cfg.test_fraction,
        cfg.split_seed,
    )


def _load_teacher(config: Config, dist: Distributed) -> Teacher:
    """The teacher of ``config``; with several processes, ``cuda`` is this process's GPU."""
    from mlff_distiller.teachers import get_teacher

    cfg = config.teacher
    return get_teacher(
        cfg.name, str(dist.device(cfg.device)), cfg.batch_atoms, cfg.weights, cfg.model
    )


_Item = TypeVar("_Item")


def _share(
    items: list[_Item], dist: Distributed, console: Console, stage: str, what: str
) -> list[_Item]:
    """The share of the work ``items`` of this process: every ``world_size``-th from its rank.

    Every process listed the work still to do before any one of them starts on it (a
    barrier), so all of them share out the same list.
    """
    if dist.world_size == 1:
        return items
    dist.barrier()
    what = what if len(items) != 1 else what.removesuffix("s")
    console.print(
        f"{stage}: {len(items)} {what} shared out over {dist.world_size} processes "
        "(progress shown for process 0)"
    )
    return items[dist.rank :: dist.world_size]


def _throughput(n: int, what: str, seconds: float, dist: Distributed) -> str:
    """``"N what in S s (R what/s, P processes)"``: the shared work of a stage.

    Timed by its slowest process, the teacher's loading included, the process start and the
    imports not.
    """
    by = f", {dist.world_size} processes" if dist.world_size > 1 else ""
    return f"{n} {what} in {seconds:.1f} s ({n / max(seconds, 1e-9):.1f} {what}/s{by})"


def generate(config: Config, console: Console, dist: Distributed | None = None) -> None:
    """Build every system and its perturbed frames; one file per system, written atomically.

    Every source is checked first (:func:`collect_config_systems`, :func:`check_inputs`), so
    a bad input stops the run before the first system is generated. Each starting structure
    (a molecule's conformers) is sampled; a labelled system's frames are written as they are.
    With several processes (``dist``, all of them calling this), each generates its share of
    the systems to do; a system's frames depend on its index alone, never on the process.
    """
    from mlff_distiller.structures.filters import min_distance_filter
    from mlff_distiller.training.distributed import Distributed

    dist = dist or Distributed()
    cfg = config.structures
    systems, dropped = _config_systems(config)
    paths = [_system_file(config, k) for k in range(len(systems))]
    todo = [k for k, p in enumerate(paths) if not p.is_file()]
    if not todo:
        console.print(f"generate: done ({len(paths)} systems)")
        return
    if dropped:
        console.print(
            f"generate: {len(dropped)} systems dropped by data.elements "
            f"({', '.join(config.data.elements or [])}), e.g. {next(iter(dropped))}"
        )
    sampled = [k for k in todo if not systems[k].labelled]
    teacher = None
    if sampled:
        teacher = _load_teacher(config, dist)
    check_inputs(config, systems, teacher)
    budget = _md_group_atoms(config, teacher)
    began, n_todo = time.perf_counter(), len(todo)
    todo = _share(todo, dist, console, "generate", "systems")
    with Progress(console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("generating structures", total=len(todo))
        n_done = 0

        def finish(starts: dict[int, list[ase.Atoms]]) -> None:
            """Sample a group of systems (teacher MD together) and write one file each."""
            nonlocal n_done
            md_starts = {j: starts[j] for j in starts if not systems[j].labelled}
            md_frames = _md_frames(config, teacher, md_starts)
            for j, structures in starts.items():
                system = systems[j]
                kept, rejected = [], []
                for c, initial in enumerate(structures):
                    if system.labelled:
                        frames = [initial]
                    else:
                        md = md_frames.get((j, c), [])
                        frames = _sampled_frames(config, initial, md, j, c, teacher)
                    ok, bad = min_distance_filter(frames, cfg.min_distance)
                    kept += ok
                    rejected += bad
                if not kept:
                    raise StructureInputError(
                        f"every frame of {system.origin} has atoms closer than "
                        f"structures.min_distance ({cfg.min_distance:g} Å): keep the starting "
                        "structure (structures.include_initial=true) or rattle less"
                    )
                with atomic_path(paths[j]) as tmp:
                    ase.io.write(tmp, kept, format="extxyz")
                progress.advance(task)
                n_done += 1
                if not console.is_terminal:
                    console.print(
                        f"generate: {n_done}/{len(todo)} {system.system_id}: {len(kept)} frames"
                        + (f" ({len(rejected)} rejected: atoms too close)" if rejected else "")
                    )

        # Systems go in groups whose teacher MD (all trajectories) fits one batch of the
        # teacher (one system at a time when it does not batch); files follow each group.
        group: dict[int, list[ase.Atoms]] = {}
        group_atoms = 0
        for k in todo:
            structures = list(systems[k].starting_structures())
            md_atoms = 0
            if not systems[k].labelled:
                md_atoms = sum(len(a) for a in structures) * len(cfg.md.temperatures_K)
            if group and (budget == 0 or group_atoms + md_atoms > budget):
                finish(group)
                group, group_atoms = {}, 0
            group[k] = structures
            group_atoms += md_atoms
        if group:
            finish(group)
    seconds = dist.slowest(time.perf_counter() - began)  # every system file is written
    console.print(f"generate: {_throughput(n_todo, 'systems', seconds, dist)}")
    console.print(f"generate: done ({len(paths)} systems)")


def _seed(k: int, conformer: int, base: int, *more: int) -> int:
    """Seed of a sampler of system ``k``: ``base`` for its first conformer.

    Seeds depend on the system ``k`` and the conformer, never on the order of work: the
    first conformer keeps the seeds runs had before conformers existed.
    """
    if conformer == 0:
        return base
    return int(np.random.SeedSequence((k, conformer, *more)).generate_state(1)[0])


def _md_group_atoms(config: Config, teacher: Teacher | None) -> int:
    """Atoms of teacher MD (all trajectories) that one group of systems fills.

    The teacher's batch budget when it runs teacher MD in batches; 0 (one system at a time)
    otherwise.
    """
    from mlff_distiller.teachers.base import TorchSimTeacher

    md = config.structures.md
    if not isinstance(teacher, TorchSimTeacher) or md.frames == 0 or not md.temperatures_K:
        return 0
    if teacher.torchsim_model() is None:
        return 0
    return teacher.batch_atoms or 0


def _md_frames(
    config: Config, teacher: Teacher | None, starts: dict[int, list[ase.Atoms]]
) -> dict[tuple[int, int], list[ase.Atoms]]:
    """Teacher-MD frames of starting structure ``c`` of system ``k``, keyed ``(k, c)``.

    All temperatures of all structures run together where the teacher batches
    (:func:`~mlff_distiller.structures.samplers.teacher_md`); frames do not depend on the
    grouping, each trajectory having its own seed.
    """
    from mlff_distiller.structures.samplers import teacher_md

    cfg = config.structures.md
    if teacher is None or cfg.frames == 0 or not cfg.temperatures_K:
        return {}
    jobs = [(k, c) for k, structures in starts.items() for c in range(len(structures))]
    temperatures = range(len(cfg.temperatures_K))
    frames = teacher_md(
        [starts[k][c] for k, c in jobs],
        teacher,
        cfg.temperatures_K,
        [[_seed(k, c, 1000 * k + t, t) for t in temperatures] for k, c in jobs],
        n_frames=cfg.frames,
        interval=cfg.interval,
        timestep_fs=cfg.timestep_fs,
        friction=cfg.friction_per_fs,
        ladder=cfg.ladder,
    )
    return dict(zip(jobs, frames, strict=True))


def _sampled_frames(
    config: Config,
    initial: ase.Atoms,
    md_frames: list[ase.Atoms],
    k: int,
    conformer: int,
    teacher: Teacher | None,
) -> list[ase.Atoms]:
    """The starting structure (if kept) and its frames from every sampler that is on.

    Rattled and strained frames, the teacher-MD ``md_frames``, then rattle-relax and
    normal-mode frames (these two run on ``teacher``).
    """
    from ase.optimize import BFGS

    from mlff_distiller.structures import samplers

    # Tags of the samplers added after rattle and MD, far from MD's temperature indices
    # (``_seed`` of a later conformer draws from (k, conformer, tag)).
    strain_tag, chains_tag, modes_tag = 1_000_001, 1_000_002, 1_000_003

    def seed(tag: int) -> int:
        """The seed of one sampler of system ``k`` and this conformer."""
        base = int(np.random.SeedSequence((k, tag)).generate_state(1)[0])
        return _seed(k, conformer, base, tag)

    cfg = config.structures
    frames = [initial] if cfg.include_initial else []
    if cfg.rattle.frames > 0:
        frames += samplers.rattle(
            initial, cfg.rattle.frames, cfg.rattle.stdev, seed=_seed(k, conformer, k)
        )
    if cfg.strain.frames > 0:
        strain = cfg.strain
        frames += samplers.strain(initial, strain.frames, strain.max_strain, seed(strain_tag))
    frames += md_frames
    chains, modes = cfg.rattle_relax, cfg.normal_modes
    if chains.chains == 0 and modes.frames == 0:
        return frames
    assert teacher is not None, "rattle-relax and normal modes run on the teacher"
    if chains.chains > 0:
        frames += samplers.rattle_relax(
            initial,
            teacher.calculator(),
            chains.chains,
            chains.length,
            chains.stdev,
            fmax=chains.fmax,
            steps=chains.steps,
            seed=seed(chains_tag),
        )
    if modes.frames > 0:
        minimum = initial
        if modes.relax_steps > 0:
            calculator = teacher.calculator()
            minimum = samplers.relax(initial, calculator, modes.relax_fmax, modes.relax_steps, BFGS)
        frames += samplers.normal_modes(
            minimum,
            teacher,
            modes.temperature_K,
            modes.frames,
            seed=seed(modes_tag),
            delta=modes.delta,
        )
    return frames


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


#: ``teacher_version`` of a shard that holds imported labels only (no teacher was loaded).
IMPORTED_VERSION = "imported labels"


def label(config: Config, console: Console, dist: Distributed | None = None) -> None:
    """Label every generated frame with the teacher (shards), then pack the dataset.

    Near-duplicate frames are dropped before labelling, frames beyond ``data.max_force``
    after it; ``data/filters.json`` counts what every filter dropped and why. Imported
    frames keep their labels. With several processes (``dist``, all of them calling this),
    each labels its share of the shards to write; process 0 alone packs the dataset, and
    every process returns once it is packed.
    """
    from mlff_distiller.structures.filters import near_duplicates
    from mlff_distiller.training.distributed import Distributed

    dist = dist or Distributed()
    run_dir = Path(config.run_dir)
    dataset_path = run_dir / "data" / "dataset.h5"
    structures = read_structures(config)
    tolerance = config.data.duplicate_tolerance
    duplicates = near_duplicates(structures, tolerance) if tolerance is not None else []
    candidates = sorted(set(range(len(structures))) - set(duplicates))
    store = LabelStore(run_dir / "data")
    done = store.labelled_indices(config.teacher.name)
    todo = [k for k in candidates if k not in done]
    if not todo and dataset_path.is_file():
        # A damaged dataset, one without neighbour lists (or with another cutoff), from
        # another teacher or other filters is packed again from the shards.
        packed = _packed_dataset(dataset_path)
        if packed is None:
            console.print(f"label: {dataset_path} is unreadable; packing it again")
        elif (
            packed.neighbour_cutoff == config.model.cutoff
            and packed.teacher_name == config.teacher.name
            and _filters_done(config, len(structures), len(packed))
        ):
            console.print(f"label: done ({len(packed)} structures)")
            return
    # Shards are cut from the whole list, so they do not depend on the number of processes.
    began = time.perf_counter()
    shards = _share(_chunks(todo, config.teacher.shard_size), dist, console, "label", "shards")
    if shards:
        from mlff_distiller.structures.imported import imported_labels

        # Every process names the teacher in its shards when one frame to do needs it.
        needs_teacher = any(imported_labels(structures[k]) is None for k in todo)
        n_done = len(candidates) - len(todo) if dist.world_size == 1 else 0
        _label_frames(config, console, structures, shards, n_done, store, dist, needs_teacher)
    seconds = dist.slowest(time.perf_counter() - began)  # every shard is written
    if todo:
        console.print(f"label: {_throughput(len(todo), 'frames', seconds, dist)}")
    if dist.is_main:
        dataset, filters = _pack_filtered(config, store, structures, duplicates)
        counts = {s: len(dataset.subset(s).systems()) for s in ("train", "val", "test")}
        console.print(f"filters: {_filters_line(filters)} (data/filters.json)")
        console.print(
            f"label: done ({len(dataset)} structures; systems train {counts['train']}, "
            f"val {counts['val']}, test {counts['test']})"
        )
    dist.barrier()  # the dataset is packed (the other processes may train on it next)


def _label_frames(
    config: Config,
    console: Console,
    structures: Sequence[ase.Atoms],
    shards: Sequence[Sequence[int]],
    n_done: int,
    store: LabelStore,
    dist: Distributed,
    needs_teacher: bool,
) -> None:
    """Label the frames of ``shards`` (indices into ``structures``), one shard file each.

    Imported frames keep their labels; the teacher (loaded if ``needs_teacher``) labels the
    others.
    """
    from mlff_distiller.structures.imported import imported_labels
    from mlff_distiller.teachers.base import check_elements

    todo = [k for chunk in shards for k in chunk]
    imported = {k: imported_labels(structures[k]) for k in todo}
    teacher = None
    if needs_teacher:
        teacher = _load_teacher(config, dist)
        check_elements(teacher, [structures[k] for k in todo if imported[k] is None])
    name = config.teacher.name if teacher is None else teacher.name
    version = IMPORTED_VERSION if teacher is None else teacher.version
    with Progress(console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task(f"labelling with {name}", total=n_done + len(todo))
        progress.update(task, completed=n_done)
        for chunk in shards:
            frames = [structures[k] for k in chunk]
            labels = [imported[k] for k in chunk]
            unlabelled = [i for i, found in enumerate(labels) if found is None]
            if unlabelled:
                assert teacher is not None
                for i, found in zip(
                    unlabelled, teacher.label([frames[i] for i in unlabelled]), strict=True
                ):
                    labels[i] = found
            path = store.write_shard(frames, labels, chunk, name, version)
            progress.advance(task, len(chunk))
            if not console.is_terminal:
                console.print(f"label: {path.name} ({len(chunk)} structures)")


def _filter_settings(config: Config) -> dict[str, Any]:
    cfg = config.data
    return {
        "elements": cfg.elements,
        "duplicate_tolerance_A": cfg.duplicate_tolerance,
        "max_force_eV_per_A": cfg.max_force,
    }


def _filters_done(config: Config, n_generated: int, n_packed: int) -> bool:
    """Whether ``data/filters.json`` says the packed dataset has the filters of ``config``."""
    path = Path(config.run_dir) / "data" / "filters.json"
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(stored, dict)
        and stored.get("settings") == _filter_settings(config)
        and stored.get("frames_generated") == n_generated
        and stored.get("frames_kept") == n_packed
    )


#: Dropped frames listed one by one in ``filters.json`` (the rest are counted).
_MAX_LISTED_DROPS = 100


def _pack_filtered(
    config: Config, store: LabelStore, structures: Sequence[ase.Atoms], duplicates: Sequence[int]
) -> tuple[PackedDataset, dict[str, Any]]:
    """Pack the labelled frames that pass the filters; write ``data/filters.json``.

    Shards may hold frames a filter now drops (labelled before the filter was set): only
    frames that are neither near-duplicates nor beyond ``data.max_force`` are packed.
    """
    from mlff_distiller import keys
    from mlff_distiller.atomic import write_json
    from mlff_distiller.data.store import reorder
    from mlff_distiller.structures.filters import max_atom_forces

    cfg = config.data
    run_dir = Path(config.run_dir)
    arrays, attrs = store.read_all()
    wanted = np.isin(arrays["index"], np.asarray(duplicates, dtype=np.int64), invert=True)
    wanted &= arrays["index"] < len(structures)
    largest = max_atom_forces(arrays[keys.TEACHER_FORCES], arrays["ptr"])
    too_strong = wanted & (largest > cfg.max_force) if cfg.max_force is not None else wanted & False
    kept = wanted & ~too_strong
    if wanted.any() and not kept.any():
        raise ValueError(
            f"every labelled frame has a teacher force above data.max_force "
            f"({cfg.max_force:g} eV/Å; the smallest maximum is {largest[wanted].min():.3g}): "
            "raise data.max_force, or check the structures and the teacher"
        )
    dataset = pack_arrays(
        reorder(arrays, np.flatnonzero(kept)),
        attrs,
        run_dir / "data" / "dataset.h5",
        cfg.val_fraction,
        cfg.test_fraction,
        cfg.split_seed,
        cutoff=config.model.cutoff,
    )
    _, dropped_elements = _config_systems(config)
    by_system: dict[str, int] = {}
    for k in duplicates:
        system = str(structures[k].info.get(keys.SYSTEM_ID))
        by_system[system] = by_system.get(system, 0) + 1
    strong = np.flatnonzero(too_strong)
    filters = {
        "settings": _filter_settings(config),
        "frames_generated": len(structures),
        "frames_labelled": int(wanted.sum()),
        "frames_kept": len(dataset),
        "elements": {
            "reason": "a system has an element outside data.elements (dropped before generation)",
            "systems_dropped": len(dropped_elements),
            "dropped": dropped_elements,
        },
        "near_duplicates": {
            "reason": "sorted interatomic distances within data.duplicate_tolerance of an "
            "earlier frame of the same system (dropped before labelling)",
            "frames_dropped": len(duplicates),
            "by_system": by_system,
        },
        "max_force": {
            "reason": "a teacher force above data.max_force (dropped after labelling)",
            "frames_dropped": len(strong),
            "dropped": [
                {
                    "index": int(arrays["index"][i]),
                    "system_id": str(arrays[keys.SYSTEM_ID][i]),
                    "sampler": str(arrays[keys.SAMPLER][i]),
                    "max_force_eV_per_A": float(largest[i]),
                }
                for i in strong[:_MAX_LISTED_DROPS]
            ],
        },
    }
    write_json(run_dir / "data" / "filters.json", filters)
    return dataset, filters


def _filters_line(filters: dict[str, Any]) -> str:
    """What the filters dropped, in one line."""
    settings = filters["settings"]
    parts = []
    if filters["elements"]["systems_dropped"]:
        parts.append(
            f"{filters['elements']['systems_dropped']} systems with elements outside "
            f"{', '.join(settings['elements'])}"
        )
    if filters["near_duplicates"]["frames_dropped"]:
        parts.append(f"{filters['near_duplicates']['frames_dropped']} near-duplicate frames")
    if filters["max_force"]["frames_dropped"]:
        parts.append(
            f"{filters['max_force']['frames_dropped']} frames with a force above "
            f"{settings['max_force_eV_per_A']:g} eV/Å"
        )
    return "dropped " + ", ".join(parts) if parts else "nothing dropped"


# --- data report ------------------------------------------------------------------------


def data_report(config: Config, console: Console) -> dict[str, Any]:
    """Report what the labelled set holds (:mod:`..data.report`) and print its warnings.

    Writes ``report/data_report.json`` and plots under ``report/data/``; skipped while the
    report is newer than ``data/dataset.h5``.
    """
    from mlff_distiller.data.report import write_data_report

    run_dir = Path(config.run_dir)
    dataset_path = run_dir / "data" / "dataset.h5"
    path = run_dir / "report" / "data_report.json"
    report = None
    if (
        path.is_file()
        and dataset_path.is_file()
        and path.stat().st_mtime >= dataset_path.stat().st_mtime
    ):
        report = _stored_json(path, "warnings")
    if report is None:
        dataset = load_dataset(dataset_path)
        sources = {system.system_id: system.source for system in collect_config_systems(config)}
        filters = _stored_json(run_dir / "data" / "filters.json", "settings")
        report = write_data_report(dataset, sources, filters, run_dir / "report")
    elements = ", ".join(f"{symbol} {c['atoms']}" for symbol, c in report["elements"].items())
    console.print(
        f"data-report: {report['structures']} structures of {report['systems']} systems; "
        f"atoms by element: {elements}"
    )
    for warning in report["warnings"]:
        console.print(f"data-report: [yellow]warning[/]: {warning}", highlight=False)
    console.print(f"data-report: {path}, plots in {path.parent / 'data'}")
    return report


def _stored_json(path: Path, required: str) -> dict[str, Any] | None:
    """A JSON object written by an earlier stage, or None when absent or damaged."""
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) and required in stored else None


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


def validate_md(config: Config, console: Console) -> dict[str, Any]:
    """Run the student beside the teacher in MD on test systems; print the verdicts.

    Done when ``report/md.json`` is newer than the student and holds the current
    ``validate_md`` settings; a damaged one, or one of other settings, is made again.
    """
    from mlff_distiller.evaluation.md import failure_lines, verdict_table
    from mlff_distiller.evaluation.md import validate_md as run_validation

    run_dir = Path(config.run_dir)
    path = run_dir / "report" / "md.json"
    student = run_dir / "model" / "student.pt"
    if not student.is_file():
        raise FileNotFoundError(
            f"{student}: no trained student to validate (run `mlff-distill train` first)"
        )
    result = None
    if path.is_file() and path.stat().st_mtime >= student.stat().st_mtime:
        result = _stored_md(path)
        if result is None:
            console.print(f"validate-md: {path} is unreadable; running again")
        elif result["settings"] != config.validate_md.model_dump(mode="json"):
            console.print(f"validate-md: {path} was made with other settings; running again")
            result = None
    if result is None:
        result = run_validation(config, run_dir, console)
    console.print(verdict_table(result))
    for line in failure_lines(result):
        console.print(f"validate-md: {line}", markup=False, highlight=False)
    verdict = "passed" if result["passed"] else "FAILED"
    console.print(f"validate-md: {verdict}; {path}, plots in {path.parent / 'md'}")
    return result


def _stored_md(path: Path) -> dict[str, Any] | None:
    """An earlier ``md.json``, or ``None`` when damaged (validated again)."""
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    from mlff_distiller.evaluation.md import failure_lines, verdict_table

    try:  # everything the stored verdicts are printed from is there
        verdict_table(result)
        failure_lines(result)
    except (KeyError, TypeError, AttributeError):
        return None
    return result if isinstance(result, dict) and "settings" in result else None


def report(config: Config, console: Console) -> None:
    """Render ``report/index.html`` and ``report/model_card.md`` (every time: it is cheap).

    They show what the run directory holds now: the MD verdicts and speed figures appear once
    ``validate-md`` (``report/md.json``) or a benchmark (``report/benchmark.json``) has run.
    """
    from mlff_distiller.evaluation.html import write_report

    files = write_report(config)
    for problem in files.problems:
        console.print(f"report: {problem}", markup=False, highlight=False)
    console.print(f"report: {files.html}, model card {files.model_card}")


STAGE_FUNCTIONS: dict[str, Callable[[Config, Console], Any]] = {
    "generate": generate,
    "label": label,
    "data-report": data_report,
    "train": train,
    "evaluate": evaluate,
    "validate-md": validate_md,
    "report": report,
}


def run(config: Config, console: Console, stages: Sequence[str] = STAGES) -> None:
    """Run ``stages`` in order over the run directory of ``config``, skipping what is done.

    Under ``torchrun`` (several processes, :mod:`..training.distributed`; every process
    calls this) ``generate`` and ``label`` share their work out, ``train`` is data-parallel
    over all processes, and the other stages run in process 0 alone; only process 0 prints.
    Process 0 has prepared the run directory (:func:`prepare_run_dir`) before the others go
    on. Without ``threads`` in the config, the processes of a machine share its cores.
    """
    import torch

    from mlff_distiller.training.distributed import Distributed

    dist = Distributed.from_env()
    if dist.world_size == 1:
        for stage in stages:
            STAGE_FUNCTIONS[stage](config, console)
        return
    if not dist.is_main:
        console = Console(quiet=True)
    if config.threads is None:
        torch.set_num_threads(dist.cpu_threads())
    devices = []
    if any(stage in _SHARED_STAGES for stage in stages):
        devices.append(dist.device(config.teacher.device))
    if "train" in stages:
        devices.append(dist.device(config.training.device))
    if not devices:  # stages of process 0 alone
        for stage in stages if dist.is_main else ():
            STAGE_FUNCTIONS[stage](config, console)
        return
    dist.start(*devices)
    try:
        dist.barrier()  # process 0 has prepared the run directory
        for stage in stages:
            if stage in _SHARED_STAGES:
                _SHARED_STAGES[stage](config, console, dist)
            elif stage == "train" or dist.is_main:
                STAGE_FUNCTIONS[stage](config, console)
    finally:
        dist.stop()


#: Stages whose work the processes share out under torchrun; they take the process group.
_SHARED_STAGES: dict[str, Callable[[Config, Console, Distributed], None]] = {
    "generate": generate,
    "label": label,
}
