"""Forces and stress from ``predict`` against finite differences and the ASE sign convention."""

import ase
import ase.build
import numpy as np
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from mlff_distiller.graph import AtomicGraph, batch_graphs, edge_vectors, from_atoms
from mlff_distiller.keys import ENERGY, FORCES, STRESS
from mlff_distiller.models import predict
from mlff_distiller.models.predict import functional_predict, sum_per_structure
from mlff_distiller.testing import (
    FINITE_DIFFERENCE,
    FINITE_DIFFERENCE_STEP,
    SYMMETRY,
    example_structures,
    tiny_painn,
)

F64 = torch.float64
H = FINITE_DIFFERENCE_STEP


@pytest.fixture(scope="module")
def model():
    return tiny_painn(seed=0, dtype=F64)


@pytest.fixture(scope="module")
def structures() -> dict[str, ase.Atoms]:
    return example_structures(seed=0)


def total_energy(model, graph: AtomicGraph) -> float:
    with torch.no_grad():
        return predict(model, graph, forces=False)[ENERGY].sum().item()


def strained(graph: AtomicGraph, strain: torch.Tensor) -> AtomicGraph:
    """Apply ``x -> x (1 + strain)`` to positions and cell, as ASE's numerical stress does."""
    deformation = torch.eye(3, dtype=F64) + strain
    return graph._replace(positions=graph.positions @ deformation, cell=graph.cell @ deformation)


# Not "cu": a lone atom in a periodic cell feels no force by translation invariance.
@pytest.mark.parametrize("name", ["ethanol", "si"])
def test_forces_are_minus_the_finite_difference_gradient(model, structures, name):
    graph = from_atoms(structures[name], model.cutoff, dtype=F64)
    forces = predict(model, graph)[FORCES]
    expected = torch.zeros_like(forces)
    for atom in range(forces.shape[0]):
        for axis in range(3):
            step = torch.zeros_like(graph.positions)
            step[atom, axis] = H
            plus = total_energy(model, graph._replace(positions=graph.positions + step))
            minus = total_energy(model, graph._replace(positions=graph.positions - step))
            expected[atom, axis] = -(plus - minus) / (2 * H)
    assert forces.abs().max() > 1e-3, "forces are trivially zero: the test would prove nothing"
    assert_close(forces, expected, **FINITE_DIFFERENCE)


@pytest.mark.parametrize("name", ["si", "cu"])
def test_stress_is_the_finite_difference_strain_derivative_over_volume(model, structures, name):
    graph = from_atoms(structures[name], model.cutoff, dtype=F64)
    stress = predict(model, graph, stress=True)[STRESS][0]
    volume = abs(np.linalg.det(structures[name].cell[:]))
    expected = torch.zeros(3, 3, dtype=F64)
    for a in range(3):
        for b in range(3):
            step = torch.zeros(3, 3, dtype=F64)
            # Symmetric strain: stress is the derivative with respect to a symmetric tensor.
            step[a, b] += H / 2
            step[b, a] += H / 2
            plus = total_energy(model, strained(graph, step))
            minus = total_energy(model, strained(graph, -step))
            expected[a, b] = (plus - minus) / (2 * H) / volume
    assert stress.abs().max() > 1e-4, "stress is trivially zero: the test would prove nothing"
    assert_close(stress, stress.T, rtol=0, atol=1e-14)
    assert_close(stress, expected, **FINITE_DIFFERENCE)


class HarmonicPairs(nn.Module):
    """Springs of rest length ``r0`` (Å) and stiffness 1 eV/Å² between all listed neighbours."""

    def __init__(self, r0: float) -> None:
        super().__init__()
        self.r0 = r0

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        r = torch.linalg.vector_norm(edge_vectors(graph), dim=-1)
        # Each pair is listed twice (i->j and j->i): half a spring energy per directed edge.
        pair = 0.25 * (r - self.r0) ** 2
        return pair.new_zeros(graph.positions.shape[0]).index_add(0, graph.edge_index[0], pair)


@pytest.mark.parametrize(("r0", "sign"), [(3.0, -1.0), (2.2, 1.0)])
def test_stress_sign_follows_ase(r0, sign):
    # fcc Cu: 12 nearest neighbours at 2.55 Å. Springs longer than that are compressed, and
    # ASE's convention gives a compressed cell negative stress (positive pressure).
    cu = ase.build.bulk("Cu", "fcc", a=3.61)
    graph = from_atoms(cu, cutoff=3.0, dtype=F64)
    stress = predict(HarmonicPairs(r0), graph, stress=True)[STRESS][0]
    assert_close(stress, torch.diag(torch.diag(stress)), rtol=0, atol=1e-12)
    assert (sign * torch.diag(stress) > 0).all()


def test_stress_of_a_molecule_is_a_clear_error(model, structures):
    graph = from_atoms(structures["ethanol"], model.cutoff, dtype=F64)
    with pytest.raises(ValueError, match="zero volume"):
        predict(model, graph, stress=True)


def test_energy_only_keeps_the_graph_for_training(model, structures):
    graph = from_atoms(structures["si"], model.cutoff, dtype=F64)
    out = predict(model, graph, forces=False)
    assert set(out) == {ENERGY}
    assert out[ENERGY].shape == (1,)
    assert out[ENERGY].requires_grad


def test_forces_work_under_no_grad_and_are_detached(model, structures):
    graph = from_atoms(structures["ethanol"], model.cutoff, dtype=F64)
    reference = predict(model, graph)
    with torch.no_grad():
        out = predict(model, graph)
    assert_close(out[FORCES], reference[FORCES], rtol=0, atol=0)
    assert not any(value.requires_grad for value in out.values())


def test_create_graph_lets_a_force_loss_reach_the_parameters(structures):
    model = tiny_painn(seed=0, dtype=F64)
    graph = from_atoms(structures["si"], model.cutoff, dtype=F64)
    weight = model.interactions[0].filter.weight

    def loss_value() -> torch.Tensor:
        out = predict(model, graph, stress=True, create_graph=True)
        return out[FORCES].pow(2).sum() + out[STRESS].pow(2).sum() * 1e2

    loss = loss_value()
    loss.backward()
    assert weight.grad is not None
    assert model.interactions[1].phi[0].weight.grad.abs().max() > 0
    # The gradient of the force loss is the true one (double backward), not just nonzero.
    analytic = weight.grad[0, 0].item()
    with torch.no_grad():
        weight[0, 0] += H
    plus = loss_value().item()
    with torch.no_grad():
        weight[0, 0] -= 2 * H
    minus = loss_value().item()
    assert analytic != 0.0
    assert_close(
        torch.tensor(analytic), torch.tensor((plus - minus) / (2 * H)), **FINITE_DIFFERENCE
    )


@pytest.mark.parametrize(
    ("names", "stress"), [(["ethanol", "si", "ethanol"], False), (["si", "cu"], True)]
)
def test_functional_predict_equals_predict(names, stress):
    """The torch.func derivation (compiled paths), run eagerly, is predict's."""
    model = tiny_painn().eval()  # as the engine holds it
    structures = [example_structures(seed=k)[n] for k, n in enumerate(names)]
    graph = batch_graphs([from_atoms(a, model.cutoff, torch.float64) for a in structures])
    atomic, forces, stress_tensor = functional_predict(model, graph, stress)
    expected = predict(model, graph, stress=stress)
    torch.testing.assert_close(atomic.sum(), expected["energy"].sum(), **SYMMETRY)
    torch.testing.assert_close(forces, expected["forces"], **SYMMETRY)
    if stress:
        torch.testing.assert_close(stress_tensor, expected["stress"], **SYMMETRY)
    else:
        assert stress_tensor is None


@pytest.mark.parametrize("stress", [False, True])
def test_functional_predict_gives_the_training_gradients_of_predict(stress):
    """A loss on torch.func's forces and stress, backpropagated once, has the parameter
    gradients of the same loss on predict's (create_graph=True, a double backward)."""
    model = tiny_painn()
    names = ["si", "cu"] if stress else ["ethanol", "si"]
    structures = [example_structures(seed=k)[n] for k, n in enumerate(names)]
    graph = batch_graphs([from_atoms(a, model.cutoff, torch.float64) for a in structures])
    weights = torch.linspace(0.5, 1.5, graph.positions.numel(), dtype=torch.float64).view(-1, 3)

    def loss(energy, forces, stress_tensor):
        value = (energy**2).sum() + (weights * forces**2).sum()
        return value + (stress_tensor**2).sum() if stress else value

    expected = predict(model, graph, stress=stress, create_graph=True)
    expected_grads = torch.autograd.grad(
        loss(expected[ENERGY], expected[FORCES], expected.get(STRESS)), list(model.parameters())
    )
    atomic, forces, stress_tensor = functional_predict(model, graph, stress)
    energy = sum_per_structure(atomic, graph.batch, graph.n_structures)
    grads = torch.autograd.grad(loss(energy, forces, stress_tensor), list(model.parameters()))
    for got, want in zip(grads, expected_grads, strict=True):
        assert_close(got, want, **SYMMETRY)
