import pytest
import torch

from mlff_distiller.graph import (
    batch_graphs,
    copy_into_padded,
    from_atoms,
    pad_graph,
    padding_length,
)
from mlff_distiller.models import predict
from mlff_distiller.testing import SYMMETRY, example_structures, tiny_painn

F64 = torch.float64


@pytest.fixture(scope="module")
def model():
    return tiny_painn(dtype=F64)


def _graph(names, cutoff, seed=0):
    structures = example_structures(seed)
    return batch_graphs([from_atoms(structures[n], cutoff, F64) for n in names])


@pytest.mark.parametrize("empty_slots", [0, 2])
@pytest.mark.parametrize("names", [["ethanol"], ["si", "cu"], ["ethanol", "si", "cu"]])
def test_padding_changes_nothing(model, names, empty_slots):
    graph = _graph(names, model.cutoff)
    periodic = "ethanol" not in names
    expected = predict(model, graph, stress=periodic)
    n, e, b = graph.positions.shape[0], graph.edge_index.shape[1], graph.n_structures
    slots = b + empty_slots
    padded = pad_graph(graph, n + 7, e + 50, padding_length(model.cutoff), slots)
    assert padded.n_structures == slots + 1
    got = predict(model, padded, stress=True, check_cells=False)
    torch.testing.assert_close(got["energy"][:b], expected["energy"], **SYMMETRY)
    assert torch.equal(got["energy"][b:slots], torch.zeros(empty_slots, dtype=F64))
    torch.testing.assert_close(got["forces"][:n], expected["forces"], **SYMMETRY)
    # Padding atoms feel nothing and exert nothing.
    assert torch.equal(got["forces"][n:], torch.zeros_like(got["forces"][n:]))
    if periodic:
        torch.testing.assert_close(got["stress"][:b], expected["stress"], **SYMMETRY)
    else:
        assert torch.isnan(got["stress"][0]).all()  # a molecule has no stress


def test_copy_into_padded_reuses_the_buffers_for_another_graph(model):
    big = _graph(["ethanol", "si"], model.cutoff)
    padded = pad_graph(big, big.positions.shape[0] + 1, big.edge_index.shape[1] + 10, 9.0)
    storage = padded.positions.data_ptr()
    small = _graph(["cu", "si"], model.cutoff, seed=3)  # fewer atoms and edges, same B
    copy_into_padded(padded, small, 9.0)
    assert padded.positions.data_ptr() == storage
    n = small.positions.shape[0]
    got = predict(model, padded, stress=True, check_cells=False)
    expected = predict(model, small, stress=True)
    torch.testing.assert_close(got["energy"][:2], expected["energy"], **SYMMETRY)
    torch.testing.assert_close(got["forces"][:n], expected["forces"], **SYMMETRY)
    torch.testing.assert_close(got["stress"][:2], expected["stress"], **SYMMETRY)


def test_graph_that_does_not_fit_is_refused(model):
    graph = _graph(["ethanol"], model.cutoff)
    padded = pad_graph(graph, graph.positions.shape[0] + 1, graph.edge_index.shape[1], 9.0)
    bigger = _graph(["ethanol"], model.cutoff + 1.0)
    with pytest.raises(ValueError, match="does not fit"):
        copy_into_padded(padded, bigger, 9.0)
