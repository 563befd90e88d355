"""MD validation: energy drift, stability, distributions, acceptance, the stage and its verb.

ASE's EMT stands in for both potentials where a test needs a sane pair (EMT against itself
must agree exactly); a tiny PaiNN with perturbed weights is the broken student.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.cluster import Icosahedron
from rich.console import Console
from typer.testing import CliRunner

from mlff_distiller import pipeline
from mlff_distiller.cli import app
from mlff_distiller.config import ValidateMDConfig, load_config
from mlff_distiller.deploy.calculator import StudentCalculator
from mlff_distiller.evaluation.md import (
    RDF_BIN_WIDTH,
    StabilityMonitor,
    bond_angles,
    bond_lengths,
    bonds,
    energy_drift,
    radial_distribution,
    run_md,
    starting_momenta,
    validate_system,
)
from mlff_distiller.testing import tiny_painn


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: the tiny students are slower with more on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


#: Short runs: enough steps for every code path, seconds in all.
QUICK = ValidateMDConfig(
    nve_student_steps=60,
    nve_teacher_steps=40,
    temperatures_K=[300.0],
    nvt_student_steps=80,
    nvt_teacher_steps=40,
    sample_interval=5,
    on_policy_frames=4,
    temperature_window_fs=10.0,
)


def test_nve_drift_is_zero_at_a_small_step_and_grows_with_the_step():
    cluster = Icosahedron("Cu", 2)  # 13 atoms
    momenta = starting_momenta(cluster, 300.0, seed=0)
    drifts, fluctuations = [], []
    for timestep in (1.0, 5.0, 10.0):  # the same 300 fs each time
        settings = ValidateMDConfig(timestep_fs=timestep)
        run = run_md(cluster, EMT(), momenta, round(300 / timestep), settings, 300.0)
        assert run.stable, run.failure
        drift, fluctuation = energy_drift(run)
        drifts.append(abs(drift))
        fluctuations.append(fluctuation)
    assert drifts[0] < 0.05  # meV/atom/ps: velocity Verlet at 1 fs conserves energy
    assert drifts == sorted(drifts)
    assert drifts[-1] > 20 * drifts[0]
    assert fluctuations == sorted(fluctuations)


def test_energy_drift_is_the_slope_of_a_line_fit():
    settings = ValidateMDConfig(timestep_fs=0.5, nve_student_steps=2000)
    cluster = Icosahedron("Cu", 2)
    run = run_md(cluster, EMT(), starting_momenta(cluster, 300.0, 0), 2, settings, 300.0)
    run.time_fs = np.arange(2001) * 0.5
    run.total_energy = -3.0 + 0.002 * run.time_fs / 1000.0  # +2 meV/atom per ps
    drift, fluctuation = energy_drift(run)
    assert drift == pytest.approx(2.0)
    assert fluctuation == pytest.approx(np.std(run.total_energy) * 1000.0)
    run.total_energy[5:] = np.nan  # an exploded run: the finite part is fitted
    assert energy_drift(run)[0] == pytest.approx(2.0)


def test_topology_check_names_broken_and_new_bonds_and_close_contacts():
    water = molecule("H2O")
    lone = Atoms("H", positions=[[5.0, 5.0, 5.0]])
    start = water + lone
    monitor = StabilityMonitor(start, ValidateMDConfig(), 300.0)
    assert bonds(start, 1.2).tolist() == [[0, 1], [0, 2]]
    assert monitor.check(start) is None

    stretched = start.copy()
    stretched.positions[1] = stretched.positions[0] + [0.0, 1.9, 0.0]
    assert monitor.check(stretched) == (
        "bond O0-H1 broke (1.90 Å, beyond 1.5 x 0.97 Å, the sum of covalent radii)"
    )

    joined = start.copy()
    joined.positions[3] = joined.positions[0] + [0.0, 0.0, 0.9]
    assert monitor.check(joined) == "new bond O0-H3 formed (0.90 Å)"
    near = start.copy()  # within 1.2 but not 1.0 x the covalent radii: no bond yet
    near.positions[3] = near.positions[0] + [0.0, 0.0, 1.1]
    assert monitor.check(near) is None

    crushed = start.copy()
    crushed.positions[3] = crushed.positions[0] + [0.0, 0.0, 0.5]
    assert monitor.check(crushed) == "atoms O0 and H3 0.50 Å apart, closer than 0.6 Å"

    loose = StabilityMonitor(start, ValidateMDConfig(require_topology=False), 300.0)
    assert loose.check(stretched) is None
    assert loose.check(joined) is None


def test_a_dissociating_molecule_fails_at_the_step_its_bond_breaks():
    water = molecule("H2O")
    repulsive = LennardJones(sigma=1.0, epsilon=0.3, rc=6.0)  # pushes O and H apart
    run = run_md(water, repulsive, np.zeros((3, 3)), 200, QUICK, 300.0, thermostat=True)
    assert not run.stable
    assert run.steps < 200
    assert f"step {run.steps}: bond O0-H" in run.failure
    assert "broke" in run.failure
    assert len(run.total_energy) == run.steps + 1
    # Frames (every 5 steps from step 0) are kept only of stable steps: none of the failing one.
    assert len(run.frames) == (run.steps - 1) // QUICK.sample_interval + 1


def test_a_runaway_temperature_is_unstable():
    cluster = Icosahedron("Cu", 2)
    hot = starting_momenta(cluster, 3000.0, seed=1)  # a 300 K thermostat, started at 3000 K
    settings = ValidateMDConfig(
        temperature_window_fs=5.0, friction_per_fs=1e-4, require_topology=False
    )
    run = run_md(cluster, EMT(), hot, 100, settings, 300.0, thermostat=True)
    assert not run.stable
    assert run.failure.startswith("step 9: mean temperature ")
    assert run.failure.endswith(" K over the last 5 fs, above 2 x 300 K")
    assert run.steps == 10 - 1  # judged once the first window (10 steps) is full


def test_structure_distributions_by_hand():
    methane = molecule("CH4")
    frames = methane.positions[None]
    pairs = bonds(methane, 1.2)
    np.testing.assert_allclose(
        bond_lengths(frames, pairs, methane), methane.get_distance(0, 1), rtol=1e-12
    )
    np.testing.assert_allclose(bond_angles(frames, pairs, methane), 109.47, atol=0.01)
    assert len(bond_angles(frames, pairs, methane)) == 6

    copper = bulk("Cu", "fcc", a=3.61, cubic=True)
    g = radial_distribution(copper.positions[None], copper)
    r = (np.arange(len(g)) + 0.5) * RDF_BIN_WIDTH
    density = len(copper) / copper.get_volume()
    first_shell = (r > 2.0) & (r < 3.0)
    neighbours = np.sum(4 * np.pi * r**2 * density * g * RDF_BIN_WIDTH * first_shell)
    assert neighbours == pytest.approx(12, rel=0.05)  # g(r) is normalised per shell volume
    assert r[np.argmax(g)] == pytest.approx(3.61 / math.sqrt(2), abs=RDF_BIN_WIDTH)


def test_the_teacher_against_itself_passes_with_identical_figures():
    cluster = Icosahedron("Cu", 2)
    entry, runs = validate_system(cluster, EMT(), EMT(), QUICK, system="Cu13", seed=[0, 0])
    assert entry["passed"], entry["reasons"]
    assert entry["reasons"] == []
    assert entry["notes"] == []
    nve = entry["nve"]
    assert nve["student"]["steps"] == 60
    assert nve["teacher"]["steps"] == 40
    assert nve["student"]["time_ps"] == pytest.approx(0.03)
    # Same start, same velocities, same noise: the teacher's run is the start of the student's.
    np.testing.assert_array_equal(
        runs.nvt_student[0].frames[: len(runs.nvt_teacher[0].frames)], runs.nvt_teacher[0].frames
    )
    assert entry["structure"]["bond_length_w1_A"] == 0.0  # the same stretch of the same run
    assert entry["structure"]["angle_w1_deg"] == 0.0
    assert entry["structure"]["rdf_l1"] is None  # a cluster, not a periodic cell
    assert entry["on_policy"] == {
        "n_frames": 4,
        "force_rmse_ev_per_a": 0.0,
        "energy_mae_mev_per_atom": 0.0,
    }


def _broken_student() -> StudentCalculator:
    """A tiny PaiNN whose weights were perturbed by 50% noise: forces unrelated to EMT's."""
    model = tiny_painn(seed=3, dtype=torch.float64)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(
                1 + 0.5 * torch.randn(parameter.shape, generator=noise, dtype=parameter.dtype)
            )
    return StudentCalculator(model, {"elements": [29]})


def test_a_broken_student_fails_acceptance_with_a_named_reason():
    cluster = Icosahedron("Cu", 2)
    entry, _ = validate_system(cluster, _broken_student(), EMT(), QUICK, system="Cu13")
    assert not entry["passed"]
    assert any(r.startswith("on-policy force RMSE") for r in entry["reasons"]), entry["reasons"]
    assert entry["on_policy"]["force_rmse_ev_per_a"] > QUICK.max_on_policy_force_rmse_ev_per_a
    assert all(r for r in entry["reasons"])
    assert entry["notes"] == []  # the teacher did nothing wrong


# --- the stage and its verb ---------------------------------------------------------------

STAGE_OVERRIDES = [
    "threads=1",
    "structures.ase_molecules=[CH4, H2O, NH3, C2H6, CH3OH]",
    "structures.rattle.frames=1",
    "structures.md.frames=0",
    "teacher.name=emt",
    "data.val_fraction=0.1",
    "data.test_fraction=0.2",
    "model.n_features=8",
    "model.n_blocks=1",
    "model.n_rbf=4",
    "model.cutoff=3.0",
    "training.epochs=2",
    "training.batch_size=4",
    "validate_md.nve_student_steps=30",
    "validate_md.nve_teacher_steps=20",
    "validate_md.temperatures_K=[300, 600]",
    "validate_md.nvt_student_steps=30",
    "validate_md.nvt_teacher_steps=20",
    "validate_md.on_policy_frames=3",
    "validate_md.temperature_window_fs=5",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A run of seconds (EMT, 5 molecules, 2 epochs) trained and evaluated, not validated."""
    run_dir = tmp_path_factory.mktemp("md") / "run"
    config = load_config(None, [f"run_dir={run_dir}", *STAGE_OVERRIDES])
    threads = torch.get_num_threads()
    pipeline.prepare_run_dir(config)
    stages = pipeline.STAGES[: pipeline.STAGES.index("evaluate") + 1]
    pipeline.run(config, Console(quiet=True), stages)
    torch.set_num_threads(threads)
    return run_dir


@pytest.fixture
def run_copy(trained_run, tmp_path):
    return shutil.copytree(trained_run, tmp_path / "run")


def _check_schema(md: dict, settings: dict) -> None:
    """``md.json`` as the report reads it (extra keys allowed)."""
    assert isinstance(md["passed"], bool)
    assert md["settings"] == settings
    thresholds = md["thresholds"]
    for key in (
        "max_drift_mev_per_atom_per_ps",
        "min_distance_A",
        "max_on_policy_force_rmse_ev_per_a",
    ):
        assert isinstance(thresholds[key], float)
    optional_float = (float, type(None))
    for system in md["systems"]:
        assert isinstance(system["system"], str)
        assert isinstance(system["formula"], str)
        assert isinstance(system["n_atoms"], int)
        assert isinstance(system["passed"], bool)
        assert all(isinstance(r, str) for r in system["reasons"])
        assert system["passed"] == (not system["reasons"])
        assert isinstance(system["nve"]["timestep_fs"], float)
        for side in ("student", "teacher"):
            nve = system["nve"][side]
            assert isinstance(nve["steps"], int)
            assert isinstance(nve["time_ps"], float)
            assert isinstance(nve["drift_mev_per_atom_per_ps"], optional_float)
            assert isinstance(nve["fluctuation_mev_per_atom"], optional_float)
        assert [r["temperature_K"] for r in system["nvt"]] == settings["temperatures_K"]
        for run in system["nvt"]:
            for side in ("student", "teacher"):
                nvt = run[side]
                assert isinstance(nvt["steps"], int)
                assert isinstance(nvt["stable"], bool)
                assert nvt["stable"] == (nvt["first_failure_step"] is None)
                assert nvt["stable"] == (nvt["failure"] is None)
                assert isinstance(nvt["mean_temperature_K"], optional_float)
        for key in ("bond_length_w1_A", "angle_w1_deg", "rdf_l1"):
            assert isinstance(system["structure"][key], optional_float)
        on_policy = system["on_policy"]
        assert isinstance(on_policy["n_frames"], int)
        assert isinstance(on_policy["force_rmse_ev_per_a"], optional_float)
        assert isinstance(on_policy["energy_mae_mev_per_atom"], optional_float)
        assert set(system["plots"]) == {"energy", "distributions"}
        for name in system["plots"].values():
            assert name.startswith("md/")
            assert name.endswith(".png")
    summary = md["summary"]
    assert summary["n_systems"] == len(md["systems"])
    assert summary["n_passed"] == sum(s["passed"] for s in md["systems"])
    assert md["passed"] == (summary["n_passed"] == summary["n_systems"] > 0)
    for key in (
        "student_drift_mev_per_atom_per_ps_median",
        "teacher_drift_mev_per_atom_per_ps_median",
        "on_policy_force_rmse_ev_per_a",
        "heldout_force_rmse_ev_per_a",
    ):
        assert isinstance(summary[key], optional_float)
    assert set(md["environment"]) >= {"mlff_distiller", "torch", "ase", "device"}
    assert isinstance(md["seconds"], float)
    json.dumps(md, allow_nan=False)  # strict JSON: a browser parses it


def test_the_stage_writes_md_json_and_plots_then_skips(run_copy):
    config = load_config(run_copy / "config.yaml").model_copy(update={"run_dir": run_copy})
    result = pipeline.validate_md(config, Console(quiet=True))
    path = run_copy / "report" / "md.json"
    md = json.loads(path.read_text())
    assert md == json.loads(json.dumps(result))
    _check_schema(md, config.validate_md.model_dump(mode="json"))
    metrics = json.loads((run_copy / "report" / "metrics.json").read_text())
    assert [s["system"] for s in md["systems"]] == metrics["test_systems"]
    assert md["summary"]["heldout_force_rmse_ev_per_a"] == metrics["force_rmse_ev_per_a"]
    for system in md["systems"]:
        for name in system["plots"].values():
            assert (run_copy / "report" / name).read_bytes().startswith(b"\x89PNG")

    stamp = path.stat().st_mtime_ns
    console = Console(record=True, width=200)
    again = pipeline.validate_md(config, console)
    assert path.stat().st_mtime_ns == stamp  # done: not run again
    assert again == md
    assert "MD validation" in console.export_text()

    other = config.model_copy(
        update={"validate_md": config.validate_md.model_copy(update={"nvt_student_steps": 40})}
    )
    pipeline.validate_md(other, Console(quiet=True))  # other settings: run again
    assert json.loads(path.read_text())["settings"]["nvt_student_steps"] == 40


def test_the_cli_verb_runs_the_stage(run_copy):
    runner = CliRunner()
    result = runner.invoke(app, ["validate-md", str(run_copy)])
    assert result.exit_code == 0, result.output
    md = json.loads((run_copy / "report" / "md.json").read_text())
    assert "MD validation: student vs teacher (emt)" in result.output
    assert ("validate-md: passed" if md["passed"] else "validate-md: FAILED") in result.output
    for system in md["systems"]:  # a failed system is named with its reasons
        if not system["passed"]:
            expected = f"validate-md: {system['system']} failed: {system['reasons'][0]}"
            assert expected in " ".join(result.output.split())

    (run_copy / "report" / "md.json").write_text('{"passed": tru')  # damaged: made again
    result = runner.invoke(app, ["validate-md", str(run_copy)])
    assert result.exit_code == 0, result.output
    assert "md.json is unreadable; running again" in result.output
    assert json.loads((run_copy / "report" / "md.json").read_text())["systems"]


def test_the_stage_needs_a_trained_student_and_test_systems_by_name(run_copy):
    runner = CliRunner()
    result = runner.invoke(
        app, ["validate-md", str(run_copy), "validate_md.systems=[XYZ]", "--accept-changes"]
    )
    assert result.exit_code == 2
    assert "validate_md.systems: ['XYZ'] are not test systems of this run" in result.output
    (run_copy / "model" / "student.pt").unlink()
    result = runner.invoke(app, ["validate-md", str(run_copy)])
    assert result.exit_code == 2
    assert "no trained student to validate (run `mlff-distill train` first)" in result.output


def _same(a, b, path="md"):
    """Equal JSON-like values, floats to a relative 1e-6."""
    if isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-9), path
    elif isinstance(a, dict):
        assert set(a) == set(b), path
        for key in a:
            _same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for k, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{path}[{k}]")
    else:
        assert a == b, path


def test_runs_in_two_processes_equal_runs_in_one(run_copy):
    """With two threads the MD runs go to two worker processes: the same md.json."""
    from mlff_distiller.evaluation.md import validate_md

    config = load_config(run_copy / "config.yaml").model_copy(update={"run_dir": run_copy})
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        serial = validate_md(config, run_copy, Console(quiet=True))
        torch.set_num_threads(2)
        parallel = validate_md(config, run_copy, Console(quiet=True))
    finally:
        torch.set_num_threads(threads)
    assert serial["environment"]["processes"] == 1
    assert parallel["environment"]["processes"] == 2
    _same(serial["systems"], parallel["systems"])
    _same(serial["summary"], parallel["summary"])
