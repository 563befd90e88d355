"""The device-resident data path against the old per-structure batching, padding, budgets."""

import h5py
import numpy as np
import pytest
import torch

from mlff_distiller import keys
from mlff_distiller.data.batching import (
    GraphSet,
    capacity,
    copy_into_padded_batch,
    pad_batch,
    plan_batches,
    plan_steps,
    split_batch,
)
from mlff_distiller.data.dataset import load_dataset
from mlff_distiller.data.store import write_arrays
from mlff_distiller.graph import batch_graphs, from_atoms, pad_graph, padding_length
from mlff_distiller.models import predict
from mlff_distiller.testing import tiny_painn
from mlff_distiller.training.losses import DistillationLoss
from mlff_distiller.training.step import cells_for_stress

CUTOFF = 4.0


def _old_batch(data, indices):
    """What training did before: one graph per structure, concatenated per batch."""
    graph = batch_graphs([from_atoms(data.atoms(k), CUTOFF) for k in indices])
    a = data.arrays
    forces = [a[keys.TEACHER_FORCES][a["ptr"][k] : a["ptr"][k + 1]] for k in indices]
    targets = {
        keys.ENERGY: torch.tensor(a[keys.TEACHER_ENERGY][indices], dtype=torch.float32),
        keys.FORCES: torch.tensor(np.concatenate(forces), dtype=torch.float32),
        keys.STRESS: torch.tensor(a[keys.TEACHER_STRESS][indices], dtype=torch.float32),
        "has_stress": torch.tensor(a["has_stress"][indices]),
        "n_atoms": torch.diff(graph.ptr),
    }
    return graph, targets


def _old_loss(pred, targets):
    """The old loss: plain means of squared errors."""
    e = torch.mean(((pred[keys.ENERGY] - targets[keys.ENERGY]) / targets["n_atoms"]) ** 2)
    f = torch.mean((pred[keys.FORCES] - targets[keys.FORCES]) ** 2)
    mask = targets["has_stress"]
    s = torch.mean((pred[keys.STRESS][mask] - targets[keys.STRESS][mask]) ** 2)
    return e, f, s


def _assert_graphs_equal(got, expected):
    for name, a, b in zip(expected._fields, got, expected, strict=True):
        assert a.dtype == b.dtype, name
        assert torch.equal(a, b), name


def test_resident_batches_equal_the_old_batching(packed_dataset):
    data = packed_dataset.subset("train")
    assert data.neighbour_cutoff == CUTOFF
    assert "edges" in data.arrays
    graphs = GraphSet.from_dataset(data, CUTOFF)
    model = tiny_painn(dtype=torch.float32)
    loss = DistillationLoss(1.0, 1.0, 1.0)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(3)).tolist()
    new = graphs.batches(4, shuffle=True, generator=torch.Generator().manual_seed(3))
    n_batches = 0
    for start, (graph, targets) in zip(range(0, len(order), 4), new, strict=True):
        old_graph, old_targets = _old_batch(data, order[start : start + 4])
        _assert_graphs_equal(graph, old_graph)
        for name, value in old_targets.items():
            assert torch.equal(targets[name], value), name
        periodic = bool(targets["has_stress"].any())
        if periodic:
            graph = cells_for_stress(graph)
        pred = predict(model, graph, stress=periodic, check_cells=False)
        value, terms = loss(pred, targets, graph.batch)
        e, f, s = _old_loss(pred, old_targets)
        torch.testing.assert_close(terms["energy"], e)
        torch.testing.assert_close(terms["forces"], f)
        if periodic:
            torch.testing.assert_close(terms["stress"], s)
        n_batches += 1
    assert n_batches == -(-len(data) // 4)


def test_padded_batch_has_empty_slots_and_zero_targets(packed_dataset):
    """pad_batch: graph.pad_graph's layout, zero targets and weights beyond the real rows."""
    data = packed_dataset.subset("train")
    graphs = GraphSet.from_dataset(data, CUTOFF)
    cap = capacity(graphs.n_atoms, graphs.n_edges, max_structures=5)
    graph, targets = graphs.gather([4, 0, 2])
    length = padding_length(CUTOFF)
    padded, padded_targets = pad_batch(graph, targets, cap, length)
    _assert_graphs_equal(padded, pad_graph(graph, cap.atoms, cap.edges, length, cap.structures))
    n, b = graph.positions.shape[0], graph.n_structures
    assert padded.n_structures == cap.structures + 1
    # The two unused slots are empty structures; the last structure owns the padding.
    assert torch.equal(padded.ptr[: b + 1], graph.ptr)
    assert torch.equal(padded.ptr[b + 1 :], torch.tensor([n, n, cap.atoms]))
    assert torch.equal(padded.batch[n:], torch.full((cap.atoms - n,), cap.structures))
    assert not padded.cell[b : cap.structures].any()
    for name, value in targets.items():
        rows = cap.atoms if name == keys.FORCES else cap.structures
        assert padded_targets[name].shape == (rows, *value.shape[1:]), name
        assert torch.equal(padded_targets[name][: value.shape[0]], value), name
        assert not padded_targets[name][value.shape[0] :].any(), name
    # Another batch into the same buffers equals its own padded batch.
    storage = padded.positions.data_ptr()
    other = graphs.gather([1, 3])
    copy_into_padded_batch((padded, padded_targets), *other, length)
    assert padded.positions.data_ptr() == storage
    expected, expected_targets = pad_batch(*other, cap, length)
    _assert_graphs_equal(padded, expected)
    for name, value in expected_targets.items():
        assert torch.equal(padded_targets[name], value), name
    with pytest.raises(ValueError, match="does not fit"):
        pad_batch(*graphs.gather(list(range(6))), cap, length)


def test_dataset_without_neighbour_lists_still_loads(packed_dataset, tmp_path):
    """A dataset.h5 packed before neighbour lists were stored gives the same batches."""
    path = tmp_path / "old.h5"
    arrays = {k: v for k, v in packed_dataset.arrays.items() if k not in ("edges", "cell_shifts")}
    arrays.pop("edge_ptr")
    write_arrays(path, arrays, {keys.TEACHER_NAME: "toy", keys.TEACHER_VERSION: "1"})
    with h5py.File(path, "r") as f:
        assert "edges" not in f
        assert "neighbour_cutoff" not in f.attrs
    old = load_dataset(path)
    assert old.neighbour_cutoff is None
    new_graphs = GraphSet.from_dataset(packed_dataset.subset("train"), CUTOFF)
    old_graphs = GraphSet.from_dataset(old.subset("train"), CUTOFF)
    for (g_new, t_new), (g_old, t_old) in zip(
        new_graphs.batches(5), old_graphs.batches(5), strict=True
    ):
        _assert_graphs_equal(g_old, g_new)
        assert torch.equal(t_old[keys.FORCES], t_new[keys.FORCES])


def test_budgets_make_batches_of_bounded_cost():
    rng = np.random.default_rng(1)
    n_atoms = np.where(rng.random(200) < 0.2, 800, 90)
    n_edges = n_atoms * rng.integers(18, 27, size=200)
    order = rng.permutation(200)
    batches = plan_batches(order, n_atoms, n_edges, 64, max_edges=40_000)
    assert np.array_equal(np.concatenate(batches), order)  # every structure once, in order
    for batch in batches:
        assert len(batch) <= 64
        assert n_edges[batch].sum() <= 40_000 or len(batch) == 1
    # No budget: fixed structure counts, the last batch smaller.
    plain = plan_batches(order, n_atoms, n_edges, 64)
    assert [len(b) for b in plain] == [64, 64, 64, 8]
    # Shares of a batch among processes are balanced and fit the padded capacities.
    cap = capacity(n_atoms, n_edges, 64, max_edges=40_000, world_size=4)
    for batch in batches:
        shares = split_batch(batch, n_edges, 4)
        assert sorted(np.concatenate(shares).tolist()) == sorted(batch.tolist())
        loads = [n_edges[s].sum() for s in shares]
        assert max(loads) <= n_edges[batch].sum() / 4 + n_edges.max()
        for share in shares:
            assert n_atoms[share].sum() < cap.atoms
            assert n_edges[share].sum() <= cap.edges


def test_shares_weigh_to_the_global_means():
    n_atoms = np.array([3, 5, 7, 2, 9])
    n_edges = n_atoms * 4
    has_stress = np.array([True, False, True, False, False])
    batches = [np.array([0, 1, 2, 3]), np.array([4])]

    def totals(plan):
        """Sum of the weights over energies, force components and stress components."""
        e, f, s = plan.weights
        return np.array([e.sum(), 3 * (f * n_atoms[plan.index]).sum(), 9 * s.sum()])

    one = plan_steps(batches, n_atoms, n_edges, has_stress)
    two = [plan_steps(batches, n_atoms, n_edges, has_stress, rank, 2) for rank in range(2)]
    for k, batch in enumerate(batches):
        expected = [1.0, 1.0, float(has_stress[batch].any())]
        np.testing.assert_allclose(totals(one[k]), expected)
        np.testing.assert_allclose(totals(two[0][k]) + totals(two[1][k]), expected)
    # The lone structure of the last batch: a weightless stand-in on the second process.
    assert two[1][1].index.tolist() == [4]
    assert not two[1][1].weights.any()
