"""Physical properties of the PaiNN student, evaluated in float64 through ``predict``."""

import ase
import numpy as np
import pytest
import torch
from torch.testing import assert_close

from mlff_distiller.graph import batch_graphs, from_atoms
from mlff_distiller.keys import ENERGY, FORCES, STRESS
from mlff_distiller.models import PaiNN, predict
from mlff_distiller.testing import (
    FLOAT32_VS_FLOAT64,
    SYMMETRY,
    example_structures,
    tiny_painn,
)

F64 = torch.float64
NAMES = ["ethanol", "si", "cu"]


@pytest.fixture(scope="module")
def model() -> PaiNN:
    return tiny_painn(seed=0, dtype=F64)


@pytest.fixture(scope="module")
def structures() -> dict[str, ase.Atoms]:
    return example_structures(seed=0)


def evaluate(model, atoms: ase.Atoms, dtype=F64) -> dict[str, torch.Tensor]:
    graph = from_atoms(atoms, model.cutoff, dtype=dtype)
    return predict(model, graph, forces=True, stress=bool(atoms.pbc.any()))


def random_orthogonal(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.diag(r))


def test_forward_returns_per_atom_energies(model, structures):
    graph = from_atoms(structures["ethanol"], model.cutoff, dtype=F64)
    energies = model(graph)
    assert energies.shape == (len(structures["ethanol"]),)
    assert energies.dtype == F64
    assert torch.isfinite(energies).all()


def test_hyperparameters_rebuild_the_same_model(model, structures):
    rebuilt = PaiNN(**model.hyperparameters).to(F64)
    rebuilt.load_state_dict(model.state_dict())
    graph = from_atoms(structures["si"], model.cutoff, dtype=F64)
    assert_close(rebuilt(graph), model(graph), rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("seed", [1, 2])
def test_rotation_invariance_and_equivariance(model, structures, name, seed):
    atoms = structures[name]
    rotation = random_orthogonal(seed)  # may include a reflection: PaiNN is O(3)-invariant
    rotated = atoms.copy()
    rotated.positions = atoms.positions @ rotation.T
    if atoms.pbc.any():
        rotated.set_cell(atoms.cell[:] @ rotation.T, scale_atoms=False)
    ref, out = evaluate(model, atoms), evaluate(model, rotated)
    R = torch.tensor(rotation)
    assert_close(out[ENERGY], ref[ENERGY], **SYMMETRY)
    assert_close(out[FORCES], ref[FORCES] @ R.T, **SYMMETRY)
    if atoms.pbc.any():
        assert_close(out[STRESS], R @ ref[STRESS] @ R.T, **SYMMETRY)


@pytest.mark.parametrize("name", NAMES)
def test_translation_invariance(model, structures, name):
    atoms = structures[name]
    moved = atoms.copy()
    moved.positions += np.array([3.1, -7.4, 12.9])
    ref, out = evaluate(model, atoms), evaluate(model, moved)
    for key in ref:
        assert_close(out[key], ref[key], **SYMMETRY)


@pytest.mark.parametrize("name", ["ethanol", "si"])
def test_permutation_invariance_and_equivariance(model, structures, name):
    atoms = structures[name]
    perm = np.random.default_rng(3).permutation(len(atoms))
    ref, out = evaluate(model, atoms), evaluate(model, atoms[perm])
    assert_close(out[ENERGY], ref[ENERGY], **SYMMETRY)
    assert_close(out[FORCES], ref[FORCES][torch.from_numpy(perm)], **SYMMETRY)


def test_edges_beyond_cutoff_contribute_exactly_nothing(model, structures):
    atoms = structures["ethanol"]
    tight = predict(model, from_atoms(atoms, model.cutoff, dtype=F64))
    wide_graph = from_atoms(atoms, model.cutoff + 3.0, dtype=F64)
    assert wide_graph.edge_index.shape[1] > from_atoms(atoms, model.cutoff).edge_index.shape[1]
    wide = predict(model, wide_graph)
    assert_close(wide[ENERGY], tight[ENERGY], **SYMMETRY)
    assert_close(wide[FORCES], tight[FORCES], **SYMMETRY)


def test_dimer_is_smooth_across_the_cutoff(model):
    rc = model.cutoff

    def energy_and_force(distance: float) -> tuple[float, float]:
        dimer = ase.Atoms("CO", positions=[[0.0, 0.0, 0.0], [distance, 0.0, 0.0]])
        # A neighbour list wider than the model's cutoff, so the edge exists on both sides.
        out = predict(model, from_atoms(dimer, rc + 1.0, dtype=F64))
        return out[ENERGY].item(), out[FORCES][1, 0].item()

    isolated, _ = energy_and_force(rc + 5.0)  # no edge at all
    # At and beyond the cutoff the pair contributes exactly nothing.
    for distance in (rc, rc + 1e-9, rc + 0.3):
        energy, force = energy_and_force(distance)
        assert energy == isolated
        assert force == 0.0
    # Inside, the cosine envelope makes the energy vanish as (rc - r)^2 and the force as
    # (rc - r): continuous energy and force, with the force going to zero at rc.
    gaps = [1e-2, 1e-3]
    (e1, f1), (e2, f2) = (energy_and_force(rc - gap) for gap in gaps)
    assert abs(e1 - isolated) > 0
    assert abs(f1) > 0
    assert 70 < (e1 - isolated) / (e2 - isolated) < 130
    assert 7 < f1 / f2 < 13

    # And no jump anywhere on a scan through the cutoff: halving the grid step halves the
    # largest change between neighbouring points, which a discontinuity would not allow.
    def largest_steps(n_points: int) -> np.ndarray:
        scan = np.linspace(rc - 0.2, rc + 0.2, n_points)
        values = np.array([energy_and_force(distance) for distance in scan])
        return np.abs(np.diff(values, axis=0)).max(axis=0)

    assert np.all(largest_steps(21) / largest_steps(41) > 1.8)


@pytest.mark.parametrize("name", ["si", "cu"])
def test_supercell_gives_same_energy_per_atom_forces_and_stress(model, structures, name):
    atoms = structures[name]
    supercell = atoms.repeat((2, 2, 2))
    ref, out = evaluate(model, atoms), evaluate(model, supercell)
    assert_close(out[ENERGY] / len(supercell), ref[ENERGY] / len(atoms), **SYMMETRY)
    # ase.Atoms.repeat appends whole copies of the cell one after another.
    assert_close(out[FORCES], ref[FORCES].repeat(8, 1), **SYMMETRY)
    assert_close(out[STRESS], ref[STRESS], **SYMMETRY)


def test_batch_equals_single(model, structures):
    graphs = [from_atoms(structures[name], model.cutoff, dtype=F64) for name in NAMES]
    batched = predict(model, batch_graphs(graphs))
    singles = [predict(model, graph) for graph in graphs]
    assert_close(batched[ENERGY], torch.cat([s[ENERGY] for s in singles]), **SYMMETRY)
    assert_close(batched[FORCES], torch.cat([s[FORCES] for s in singles]), **SYMMETRY)

    periodic = graphs[1:]
    batched = predict(model, batch_graphs(periodic), stress=True)
    singles = [predict(model, graph, stress=True) for graph in periodic]
    assert_close(batched[STRESS], torch.cat([s[STRESS] for s in singles]), **SYMMETRY)


@pytest.mark.parametrize("name", NAMES)
def test_float32_agrees_with_float64(structures, name):
    atoms = structures[name]
    out64 = evaluate(tiny_painn(seed=0, dtype=F64), atoms, dtype=F64)
    out32 = evaluate(tiny_painn(seed=0, dtype=torch.float32), atoms, dtype=torch.float32)
    for key, value in out64.items():
        assert out32[key].dtype == torch.float32
        assert_close(out32[key].double(), value, **FLOAT32_VS_FLOAT64)


# torch 2.13 deprecates TorchScript, but it is still the deployable format for now.
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_torchscript_gives_the_same_predictions(model, structures):
    scripted = torch.jit.script(model)
    # A call without gradients first, then ones with: the order that once made TorchScript's
    # profiling executor return wrong forces (see mlff_distiller.models.predict).
    graph = batch_graphs([from_atoms(structures[name], model.cutoff, dtype=F64) for name in NAMES])
    assert_close(scripted(graph), model(graph), **SYMMETRY)
    periodic = from_atoms(structures["si"], model.cutoff, dtype=F64)
    ref, out = predict(model, periodic, stress=True), predict(scripted, periodic, stress=True)
    for key in ref:
        assert_close(out[key], ref[key], **SYMMETRY)


def test_lean_messages_give_the_plain_results_and_training_gradients(structures):
    graph = batch_graphs([from_atoms(structures[name], 4.0, dtype=F64) for name in NAMES[1:]])
    results = []
    for lean in (True, False):
        model = tiny_painn(seed=3)
        for interaction in model.interactions:
            interaction.lean_messages = lean
        out = predict(model, graph, stress=True, create_graph=True)
        assert uses_edge_ops(out[ENERGY]) == lean
        # A force and stress loss backpropagated into the weights: the double backward.
        loss = (out[FORCES] ** 2).sum() + (out[STRESS] ** 2).sum() + out[ENERGY].sum()
        loss.backward()
        grads = [p.grad for p in model.parameters()]
        results.append(({k: v.detach() for k, v in out.items()}, grads))
    (lean_out, lean_grads), (plain_out, plain_grads) = results
    assert_close(lean_out, plain_out, **SYMMETRY)
    assert_close(lean_grads, plain_grads, **SYMMETRY)


def uses_edge_ops(tensor: torch.Tensor) -> bool:
    """Whether the autograd graph of ``tensor`` goes through the lean edge message."""
    stack, seen = [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if type(node).__name__ == "_EdgeFormBackward":
            return True
        stack.extend(next_node for next_node, _ in node.next_functions)
    return False
