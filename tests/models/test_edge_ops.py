"""The memory-lean edge message: values, derivatives of every order, chunking, saved memory."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.testing import assert_close

from mlff_distiller.models import edge_ops
from mlff_distiller.models.edge_ops import edge_message
from mlff_distiller.testing import SYMMETRY

F64 = torch.float64
N_ATOMS, N_EDGES, N_CHANNELS, N_FEATURES, N_COEFFICIENTS = 5, 40, 2, 8, 3


def random_arguments(seed: int = 0, n_edges: int = N_EDGES, n_features: int = N_FEATURES):
    """Features (N, C, F), scale (E, C), radial (E, K), weight (C, F, K), src, dst (E,)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [
        (N_ATOMS, N_CHANNELS, n_features),
        (n_edges, N_CHANNELS),
        (n_edges, N_COEFFICIENTS),
        (N_CHANNELS, n_features, N_COEFFICIENTS),
    ]
    tensors = [torch.randn(s, generator=g, dtype=F64).requires_grad_(True) for s in shapes]
    src = torch.randint(0, N_ATOMS, (n_edges,), generator=g)
    dst = torch.randint(0, N_ATOMS, (n_edges,), generator=g)
    return tensors, src, dst


def plain_message(features, scale, radial, weight, src, dst):
    """The message by plain autograd ops: the definition, per edge."""
    filters = torch.einsum("ek,cfk->ecf", radial, weight) * scale.unsqueeze(-1)
    return torch.zeros_like(features).index_add(0, dst, features[src] * filters)


def gradient_norm(message):
    """A scalar that needs the second derivative of ``message`` (like a force loss)."""

    def function(*tensors):
        out = message(*tensors)
        grads = torch.autograd.grad((out**2).sum(), tensors, create_graph=True)
        return sum((g**2).sum() for g in grads)

    return function


def test_message_matches_its_definition():
    tensors, src, dst = random_arguments()
    assert_close(edge_message(*tensors, src, dst), plain_message(*tensors, src, dst), **SYMMETRY)


def test_first_and_second_derivatives_match_finite_differences():
    tensors, src, dst = random_arguments(n_edges=8, n_features=3)

    def message(*t):
        return edge_message(*t, src, dst)

    assert gradcheck(message, tensors)
    assert gradgradcheck(message, tensors)


def test_training_gradients_equal_plain_autograd(monkeypatch):
    tensors, src, dst = random_arguments(seed=1)

    def lean(*t):
        return gradient_norm(lambda *u: edge_message(*u, src, dst))(*t)

    def plain(*t):
        return gradient_norm(lambda *u: plain_message(*u, src, dst))(*t)

    expected = torch.autograd.grad(plain(*tensors), tensors)
    assert_close(torch.autograd.grad(lean(*tensors), tensors), expected, **SYMMETRY)
    # Chunks of 3 edges (with a remainder) change nothing.
    monkeypatch.setitem(edge_ops.CHUNK_ELEMENTS, "cpu", 3 * N_CHANNELS * N_FEATURES)
    assert_close(torch.autograd.grad(lean(*tensors), tensors), expected, **SYMMETRY)


def test_third_derivatives_equal_plain_autograd():
    tensors, src, dst = random_arguments(seed=2)

    def third(message):
        norm = gradient_norm(lambda *t: message(*t, src, dst))(*tensors)
        weight_grad = torch.autograd.grad(norm, tensors, create_graph=True)[3]
        return torch.autograd.grad(weight_grad.sum(), tensors)

    assert_close(third(edge_message), third(plain_message), **SYMMETRY)


@pytest.mark.parametrize("message", [edge_message, plain_message])
def test_only_plain_autograd_keeps_per_edge_feature_tensors(message):
    tensors, src, dst = random_arguments()
    saved = []

    def pack(tensor):
        saved.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = gradient_norm(lambda *t: message(*t, src, dst))(*tensors)
    loss.backward()
    per_edge_features = N_EDGES * N_CHANNELS * N_FEATURES
    kept = max(saved) >= per_edge_features
    assert kept == (message is plain_message)


def test_no_edges_give_zero_message_and_zero_gradients():
    tensors, _, _ = random_arguments()
    features, _, _, weight = tensors
    scale = torch.zeros((0, N_CHANNELS), dtype=F64, requires_grad=True)
    radial = torch.zeros((0, N_COEFFICIENTS), dtype=F64, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    out = edge_message(features, scale, radial, weight, empty, empty)
    assert_close(out, torch.zeros_like(features), rtol=0, atol=0)
    grads = torch.autograd.grad(out.sum(), (features, weight))
    assert all(not g.any() for g in grads)
