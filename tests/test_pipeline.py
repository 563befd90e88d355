"""Stages over a run directory: file inputs, resumable labelling, provenance."""

import json

import ase.io
import numpy as np
import pytest
import yaml
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list
from rich.console import Console

from mlff_distiller import keys
from mlff_distiller.config import ConfigError, load_config
from mlff_distiller.data.dataset import load_dataset
from mlff_distiller.data.store import LabelStore
from mlff_distiller.graph import from_atoms
from mlff_distiller.pipeline import (
    data_report,
    generate,
    label,
    prepare_run_dir,
    read_structures,
)
from mlff_distiller.structures.filters import max_atom_forces


def _config(tmp_path, *overrides):
    frames = [molecule("CH4"), molecule("H2O"), molecule("NH3"), molecule("CH3OH")]
    ase.io.write(tmp_path / "input.extxyz", frames)
    return load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            f"structures.files=[{tmp_path / 'input.extxyz'}]",
            "structures.ase_molecules=[C2H6]",
            "structures.rattle.frames=2",
            "structures.md.frames=0",
            "teacher.name=emt",
            "teacher.shard_size=4",
            "data.val_fraction=0.2",
            "data.test_fraction=0.2",
            *overrides,
        ],
    )


def test_a_cell_smaller_than_the_cutoff_is_handled_by_images(tmp_path):
    copper = bulk("Cu", "fcc", a=3.6)  # faces 2.1 Å apart, cutoff 4 Å: images within the cutoff
    ase.io.write(tmp_path / "cu.extxyz", [copper, bulk("Cu", "fcc", a=3.7)])
    config = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            f"structures.files=[{tmp_path / 'cu.extxyz'}]",
            "structures.ase_molecules=[CH4, H2O]",
            "structures.md.frames=0",
            "teacher.name=emt",
            "model.cutoff=4.0",
            "data.val_fraction=0.2",
            "data.test_fraction=0.2",
        ],
    )
    prepare_run_dir(config)
    console = Console(quiet=True)
    generate(config, console)
    label(config, console)
    dataset = load_dataset(tmp_path / "run" / "data" / "dataset.h5")
    graph = from_atoms(
        dataset.atoms(dataset.arrays[keys.SYSTEM_ID].tolist().index("cu.extxyz:0")), 4.0
    )
    assert graph.edge_index.shape[1] == len(neighbor_list("i", copper, 4.0)) == 18  # 12 + 6 images


def test_files_become_systems_and_labels_resume(tmp_path):
    config = _config(tmp_path)
    prepare_run_dir(config)
    console = Console(quiet=True)
    generate(config, console)
    frames = read_structures(config)
    assert len(frames) == 5 * 3  # 5 systems x (initial + 2 rattled)
    ids = {a.info[keys.SYSTEM_ID] for a in frames}
    assert ids == {"input.extxyz:0", "input.extxyz:1", "input.extxyz:2", "input.extxyz:3", "C2H6"}

    label(config, console)
    store = LabelStore(tmp_path / "run" / "data")
    shards = store.shard_paths()
    assert len(shards) == 4  # 15 structures in shards of 4
    reference = load_dataset(tmp_path / "run" / "data" / "dataset.h5")

    # A run killed during labelling: the last shard and the packed set never got written.
    shards[-1].unlink()
    (tmp_path / "run" / "data" / "dataset.h5").unlink()
    assert len(store.labelled_indices()) == 12
    label(config, console)
    again = load_dataset(tmp_path / "run" / "data" / "dataset.h5")
    assert len(store.shard_paths()) == 4
    np.testing.assert_allclose(
        again.arrays[keys.TEACHER_ENERGY], reference.arrays[keys.TEACHER_ENERGY]
    )
    np.testing.assert_array_equal(again.arrays["split"], reference.arrays["split"])
    assert again.teacher_name == "emt"
    assert again.teacher_version.startswith("ase-")


def test_new_sources_filters_and_the_data_report(tmp_path):
    from ase.calculators.emt import EMT

    (tmp_path / "mols.smi").write_text("smiles name\nCCO ethanol\nCN\n")
    water = molecule("H2O")
    water.rattle(0.02, seed=1)
    water.calc = EMT()
    water.info.update(REF_energy=water.get_potential_energy(), mol="water")
    water.arrays["REF_forces"] = water.get_forces()
    water.calc = None
    ase.io.write(tmp_path / "dft.extxyz", [water, water.copy()])  # the copy: a near-duplicate
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        f"structures.smiles_files=[{tmp_path / 'mols.smi'}]",
        "structures.conformers=2",
        "structures.ase_molecules=[CH4, NH3, CH3SH]",
        "structures.crystals=[{name: Cu, cubic: true}]",
        f"structures.labelled_files=[{{path: {tmp_path / 'dft.extxyz'}, "
        "energy_key: REF_energy, forces_key: REF_forces, system_key: mol}]",
        "structures.rattle.frames=2",
        "structures.md.frames=0",
        "teacher.name=emt",
        "data.elements=[H, C, N, O, Cu]",  # drops CH3SH, whose S EMT could not label
        "data.val_fraction=0.15",
        "data.test_fraction=0.15",
    ]
    config = load_config(None, overrides)
    prepare_run_dir(config)
    console = Console(quiet=True)
    generate(config, console)
    frames = read_structures(config)
    ids = [a.info[keys.SYSTEM_ID] for a in frames]
    assert sorted(set(ids)) == sorted(["ethanol", "CN", "CH4", "NH3", "Cu-ase-cubic", "water"])
    assert ids.count("ethanol") in (3, 6)  # 1 or 2 distinct conformers, each with 2 rattles
    assert ids.count("water") == 2

    label(config, console)
    run = tmp_path / "run"
    filters = json.loads((run / "data" / "filters.json").read_text())
    assert filters["elements"]["dropped"] == {"CH3SH": ["S"]}
    assert filters["near_duplicates"]["by_system"] == {"water": 1}
    assert filters["frames_labelled"] == len(frames) - 1
    dataset = load_dataset(run / "data" / "dataset.h5")
    imported = dataset.arrays[keys.SAMPLER] == "imported"
    assert imported.sum() == 1
    assert dataset.arrays[keys.TEACHER_ENERGY][imported][0] == water.info["REF_energy"]

    # A stricter force limit: the same shards are packed again without the strongest frames.
    largest = max_atom_forces(dataset.arrays[keys.TEACHER_FORCES], dataset.arrays["ptr"])
    limit = float(np.median(largest))
    stricter = load_config(None, [*overrides, f"data.max_force={limit}"])
    prepare_run_dir(stricter, accept_changes=True)
    label(stricter, console)
    filters = json.loads((run / "data" / "filters.json").read_text())
    dropped = filters["max_force"]["dropped"]
    assert len(dropped) == filters["max_force"]["frames_dropped"] == (largest > limit).sum() > 0
    assert all(d["max_force_eV_per_A"] > limit for d in dropped)
    packed = load_dataset(run / "data" / "dataset.h5")
    assert len(packed) == filters["frames_kept"] == len(dataset) - len(dropped)
    assert max_atom_forces(packed.arrays[keys.TEACHER_FORCES], packed.arrays["ptr"]).max() <= limit

    report = data_report(stricter, console)
    assert (run / "report" / "data_report.json").is_file()
    assert set(report["sources"]) <= {
        "smiles_file " + str(tmp_path / "mols.smi"),
        "ase_molecules",
        "crystals",
        "labelled_file " + str(tmp_path / "dft.extxyz"),
    }
    assert report["filters"]["max_force"]["frames_dropped"] == len(dropped)


@pytest.mark.slow
def test_generate_runs_teacher_md_in_batches(tmp_path, monkeypatch, sevennet0):
    """With SevenNet-0, teacher MD of all systems runs as one batch: ASE's Langevin frames."""
    import mlff_distiller.teachers
    from mlff_distiller.pipeline import collect_config_systems
    from mlff_distiller.structures import samplers

    # The session's SevenNet-0 (the model the registry would load again).
    monkeypatch.setattr(mlff_distiller.teachers, "get_teacher", lambda *args: sevennet0)
    calls = []

    def batched(structures, *args, **kwargs):
        calls.append(len(structures))
        return batched_langevin_md(structures, *args, **kwargs)

    batched_langevin_md = samplers.batched_langevin_md
    monkeypatch.setattr(samplers, "batched_langevin_md", batched)
    config = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}",
            "structures.ase_molecules=[H2O, CH4, NH3, CH3OH]",
            "structures.include_initial=false",
            "structures.rattle.frames=0",
            "structures.md.frames=1",
            "structures.md.interval=2",
            "structures.md.temperatures_K=[300, 600]",
            "data.val_fraction=0.25",
            "data.test_fraction=0.25",
        ],
    )
    prepare_run_dir(config)
    generate(config, Console(quiet=True))
    assert calls == [8]  # 4 systems x 2 temperatures, together
    frames = read_structures(config)
    assert len(frames) == 8
    for k, system in enumerate(collect_config_systems(config)):
        (initial,) = system.starting_structures()
        for t, temperature in enumerate([300.0, 600.0]):
            (expected,) = samplers.langevin_md(
                initial, sevennet0.calculator(), temperature, 1, 2, seed=1000 * k + t
            )
            frame = frames[2 * k + t]
            assert frame.info["sampler"] == f"md-{temperature:g}K"
            np.testing.assert_allclose(frame.positions, expected.positions, atol=1e-5)


def test_a_stored_config_without_newer_keys_is_the_same_config(tmp_path):
    config = load_config(None, [f"run_dir={tmp_path / 'run'}"])
    prepare_run_dir(config)
    (tmp_path / "run" / "structures" / "system-0000.extxyz").parent.mkdir(exist_ok=True)
    (tmp_path / "run" / "structures" / "system-0000.extxyz").write_text("")  # an output
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    del stored["validate_md"]  # written before the section existed: its defaults applied
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(stored))
    prepare_run_dir(config)
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(stored))
    changed = load_config(None, [f"run_dir={tmp_path / 'run'}", "validate_md.seed=1"])
    with pytest.raises(ConfigError, match=r"other settings \(validate_md\.seed\)"):
        prepare_run_dir(changed)


def test_generate_with_every_sampler_on(tmp_path):
    """Strain, rattle-relax chains, normal modes and an MD ladder, all on EMT, to labels."""
    import warnings
    from collections import Counter

    overrides = [
        f"run_dir={tmp_path / 'run'}",
        # Not CH4: EMT's tetrahedral methane is a saddle (5 imaginary modes, a warning).
        "structures.ase_molecules=[H2O, NH3]",
        "structures.crystals=[{name: Cu, cubic: true}, {name: Al, cubic: true}]",
        "structures.rattle.frames=1",
        "structures.strain.frames=2",
        "structures.md.frames=1",
        "structures.md.interval=2",
        "structures.md.temperatures_K=[300, 600]",
        "structures.md.ladder=true",
        "structures.rattle_relax.chains=1",
        "structures.rattle_relax.length=2",
        "structures.rattle_relax.steps=3",
        "structures.normal_modes.frames=2",
        "structures.normal_modes.temperature_K=100",
        "teacher.name=emt",
        "data.val_fraction=0.25",
        "data.test_fraction=0.25",
    ]
    config = load_config(None, overrides)
    prepare_run_dir(config)
    console = Console(quiet=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no imaginary modes: every structure is a minimum
        generate(config, console)
    frames = read_structures(config)
    by_system = {
        system: Counter(a.info[keys.SAMPLER] for a in frames if a.info[keys.SYSTEM_ID] == system)
        for system in ("H2O", "Cu-ase-cubic")
    }
    molecule_samplers = {
        "initial": 1,
        "rattle-0.05": 1,
        "md-300K": 1,
        "md-600K": 1,
        "rattle-relax-0.1": 2,
        "normal-modes-100K": 2,
    }
    assert by_system["H2O"] == molecule_samplers  # molecules are not strained
    assert by_system["Cu-ase-cubic"] == {**molecule_samplers, "strain-0.02": 2}

    # The same config generates the same frames (seeds per system, conformer and sampler).
    again = load_config(None, [*overrides, f"run_dir={tmp_path / 'again'}"])
    prepare_run_dir(again)
    generate(again, console)
    for a, b in zip(frames, read_structures(again), strict=True):
        np.testing.assert_array_equal(a.positions, b.positions)
        np.testing.assert_array_equal(a.cell.array, b.cell.array)

    label(config, console)
    dataset = load_dataset(tmp_path / "run" / "data" / "dataset.h5")
    assert len(dataset) == len(frames)
    assert "normal-modes-100K" in set(dataset.arrays[keys.SAMPLER].tolist())
