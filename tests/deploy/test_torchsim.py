"""The student as a TorchSim model: TorchSim's own checks, the ASE calculator, short MD runs.

Runs with the TorchSim that installs (0.3.0 on Python 3.11, 0.4+ on 3.12): where the two
APIs differ, ``NEW_API`` picks the call.
"""

import warnings

import numpy as np
import pytest
import torch
import torch_sim as ts
from ase.build import molecule
from ase.stress import full_3x3_to_voigt_6_stress
from torch_sim.models.interface import ModelInterface, validate_model_outputs
from torch_sim.units import MetalUnits

from mlff_distiller.deploy.artefact import save_student
from mlff_distiller.deploy.calculator import StudentCalculator
from mlff_distiller.deploy.torchsim import StudentModel, load_torchsim_model
from mlff_distiller.graph import batch_graphs, from_atoms
from mlff_distiller.models import predict
from mlff_distiller.testing import SYMMETRY, example_structures, tiny_painn

NEW_API = hasattr(ts, "Integrator")
"""torch-sim >= 0.4: init/step functions and enums instead of integrator factories."""

CPU = torch.device("cpu")
ALL_ELEMENTS = list(range(1, 95))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    save_student(path / "model" / "student.pt", tiny_painn(), {"elements": ALL_ELEMENTS})
    return path


@pytest.fixture
def model(run_dir):
    return StudentModel.from_file(run_dir)  # float64, as saved


@pytest.fixture(scope="module")
def calculator():
    return StudentCalculator(tiny_painn(), {"elements": ALL_ELEMENTS})


def _boxed_ethanol():
    atoms = example_structures()["ethanol"]
    atoms.set_cell([12.0, 12.0, 12.0])  # wider than the molecule plus the 4 Å cutoff
    atoms.center()
    atoms.pbc = True
    return atoms


def _assert_matches_calculator(out, atoms_list, calculator, offset=0, stress=True):
    n = offset
    for k, atoms in enumerate(atoms_list):
        atoms = atoms.copy()
        atoms.calc = calculator
        assert float(out["energy"][k]) == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(
            out["forces"][n : n + len(atoms)].numpy(), atoms.get_forces(), atol=1e-10
        )
        if stress:
            np.testing.assert_allclose(
                full_3x3_to_voigt_6_stress(out["stress"][k].numpy()),
                atoms.get_stress(),
                atol=1e-10,
            )
        n += len(atoms)


def test_loads_a_run_directory_with_the_interface_torchsim_expects(run_dir):
    model = load_torchsim_model(run_dir)
    assert isinstance(model, ModelInterface)
    assert model.device == CPU
    assert model.dtype == torch.float64  # the student file's own dtype
    assert model.compute_stress
    assert model.compute_forces
    model = load_torchsim_model(run_dir, dtype=torch.float32)
    assert model.dtype == torch.float32
    assert model.memory_scales_with == "n_atoms_x_density"
    model.compute_stress = False
    state = ts.io.atoms_to_state([example_structures()["si"]], CPU, torch.float32)
    out = model(state)
    assert set(out) == {"energy", "forces"}
    assert out["energy"].dtype == torch.float32
    assert out["energy"].shape == (1,)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_torchsim_validate_model_outputs(run_dir, dtype):
    validate_model_outputs(StudentModel.from_file(run_dir, dtype=dtype), CPU, dtype)


def test_torchsim_consistency_helpers():
    """torch_sim.testing (0.4+): model against calculator on TorchSim's own structures."""
    testing = pytest.importorskip(
        "torch_sim.testing", reason="torch-sim < 0.4 ships no torch_sim.testing"
    )
    model = StudentModel(tiny_painn(), {"elements": ALL_ELEMENTS})
    calculator = StudentCalculator(tiny_painn(), {"elements": ALL_ELEMENTS})
    for make in testing.SIMSTATE_BULK_GENERATORS.values():
        testing.assert_model_calculator_consistency(model, calculator, make(CPU, torch.float64))
    # Molecules have no stress (NaN from the model, none from the calculator).
    model.compute_stress = False
    for make in testing.SIMSTATE_MOLECULE_GENERATORS.values():
        testing.assert_model_calculator_consistency(model, calculator, make(CPU, torch.float64))


def test_matches_the_ase_calculator_on_batches_of_mixed_structures(model, calculator):
    structures = example_structures()
    periodic = [_boxed_ethanol(), structures["si"], structures["cu"]]
    out = model(ts.io.atoms_to_state(periodic, CPU, torch.float64))
    assert out["energy"].shape == (3,)
    assert out["stress"].shape == (3, 3, 3)
    _assert_matches_calculator(out, periodic, calculator)
    # ... and the audited reference path, without the engine.
    graph = batch_graphs([from_atoms(a, 4.0, torch.float64) for a in periodic])
    expected = predict(tiny_painn(), graph, stress=True)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(out[key], expected[key], **SYMMETRY)
    # The boxed molecule is the free molecule: the box is wider than molecule plus cutoff.
    free = structures["ethanol"].copy()
    free.calc = calculator
    assert float(out["energy"][0]) == pytest.approx(free.get_potential_energy(), abs=1e-10)

    water = molecule("H2O")
    water.rattle(0.05, seed=3)
    molecules = [structures["ethanol"], water, _boxed_ethanol()]
    molecules[2].pbc = False  # a box TorchSim carries for a molecule is ignored
    out = model(ts.io.atoms_to_state(molecules, CPU, torch.float64))
    _assert_matches_calculator(out, molecules, calculator, stress=False)
    assert out["stress"].shape == (3, 3, 3)
    assert out["stress"].isnan().all()
    torch.testing.assert_close(out["energy"][2], out["energy"][0], **SYMMETRY)


def test_dict_states_of_torchsim_0_3(model):
    state = ts.io.atoms_to_state([example_structures()["si"]] * 2, CPU, torch.float64)
    fields = {
        "positions": state.positions,
        "cell": state.cell,
        "pbc": state.pbc,
        "atomic_numbers": state.atomic_numbers,
        "system_idx": state.system_idx,
    }
    from_dict, from_state = model(fields), model(state)
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(from_dict[key], from_state[key], **SYMMETRY)


def test_refuses_elements_the_student_never_saw():
    model = StudentModel(tiny_painn(), {"elements": [1, 6, 8]})
    model(ts.io.atoms_to_state([example_structures()["ethanol"]], CPU, torch.float64))
    with pytest.raises(ValueError, match="Si"):
        model(ts.io.atoms_to_state([example_structures()["si"]], CPU, torch.float64))


def test_batched_nvt_langevin_of_replicas_stays_finite(model):
    ethanol = example_structures()["ethanol"]
    state = ts.io.atoms_to_state([ethanol] * 4, CPU, torch.float64)
    final = ts.integrate(
        system=state,
        model=model,
        integrator=ts.Integrator.nvt_langevin if NEW_API else ts.nvt_langevin,
        n_steps=10,
        temperature=300.0,
        timestep=0.0005,  # ps
    )
    assert final.n_systems == 4
    assert torch.isfinite(final.positions).all()
    assert torch.isfinite(final.energy).all()
    moved = (final.positions - state.positions).norm(dim=1)
    assert 0 < moved.max() < 1.0
    assert len(set(final.energy.tolist())) == 4  # independent thermostat noise per replica


def test_nve_conserves_energy(model):
    state = ts.io.atoms_to_state([example_structures()["ethanol"]] * 2, CPU, torch.float64)
    dt = 0.00025 * MetalUnits.time  # 0.25 fs
    kT = 300.0 * MetalUnits.temperature
    if NEW_API:
        state = ts.nve_init(state, model, kT=kT)

        def step(s):
            return ts.nve_step(s, model, dt=dt)
    else:
        init, step = ts.nve(
            model=model,
            dt=torch.tensor(dt, dtype=torch.float64),
            kT=torch.tensor(kT, dtype=torch.float64),
        )
        state = init(state)

    def total_and_potential(s):
        kinetic = torch.zeros(2, dtype=torch.float64).index_add(
            0, s.system_idx, 0.5 * (s.momenta**2).sum(dim=1) / s.masses
        )
        return s.energy + kinetic, s.energy.clone()

    start, potential0 = total_and_potential(state)
    totals, potentials = [], []
    for _ in range(30):
        state = step(state)
        total, potential = total_and_potential(state)
        totals.append(total)
        potentials.append(potential)
    drift = (torch.stack(totals) - start).abs().max()
    swing = (torch.stack(potentials) - potential0).abs().max()
    assert drift < 1e-4
    assert swing > 100 * drift  # the dynamics did move energy between kinetic and potential


def test_cell_relaxation_lowers_the_energy(model):
    """TorchSim's cell filter follows our stress: with the sign flipped the energy rises."""
    structures = example_structures()
    state = ts.io.atoms_to_state([structures["si"], structures["cu"]], CPU, torch.float64)
    before = model(state)["energy"]
    if NEW_API:
        options = {
            "optimizer": ts.Optimizer.fire,
            "init_kwargs": {"cell_filter": ts.CellFilter.unit},
        }
    else:
        options = {"optimizer": ts.unit_cell_fire}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*max(imum number of)? steps")
        final = ts.optimize(
            system=state,
            model=model,
            max_steps=10,
            convergence_fn=lambda s, _: torch.zeros(s.n_systems, dtype=torch.bool),
            **options,
        )
    assert not torch.allclose(final.cell, state.cell)
    assert (model(final)["energy"] < before - 1e-3).all()
