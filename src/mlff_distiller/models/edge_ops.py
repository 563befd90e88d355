r"""Message passing that keeps no per-edge feature tensors for the backward passes.

A PaiNN message is, for every edge, a feature-wide product of a gathered atom feature and
a filter of the edge, summed onto the centre atom. Plain autograd keeps those (E, F)-wide
products and filters for the backward pass, and training, which differentiates the forces
(themselves a gradient) once more, keeps more of them for the second derivative: about
42 KB per edge for the seed student, most of the memory of a training step.

Here the message is one partial derivative of a multilinear form of five arguments,

.. math::

    \Phi(Y, P, S, R, W) = \sum_{e, c, f} Y_{d_e c f} \, P_{s_e c f} \, S_{e c}
                          \sum_k R_{e k} W_{c f k},

over edges ``e`` from atom ``s_e`` (``src``) to atom ``d_e`` (``dst``), channels ``c``,
features ``f`` and radial coefficients ``k``: per-atom features ``Y`` and ``P`` (N, C, F),
a per-edge scale of each channel ``S`` (E, C), per-edge radial coefficients ``R`` (E, K)
and weights ``W`` (C, F, K). The message is ``∂Φ/∂Y``. Because ``Φ`` is linear in each
argument, the derivative of any partial ``∂Φ/∂A`` with respect to another argument ``B``,
contracted with an incoming gradient ``G``, is ``∂Φ/∂B`` with ``A`` replaced by ``G``. So
the five partials are closed under differentiation: gradients of every order are partials
of ``Φ`` again, each computed by the one autograd function below, which saves only its
inputs. Those are per-atom tensors and thin per-edge tensors (``C + K`` numbers per edge,
against ``C * F`` for a product); the (E, C, F) products are formed inside, a chunk of edges
at a time, reduced at once and freed.
"""

import torch
from torch.autograd import Function

Y, P, S, R, W = range(5)
"""Positions of the arguments of the form (see the module docstring)."""

CHUNK_ELEMENTS = {"cpu": 2**18, "cuda": 2**23}
"""Elements of the per-edge (chunk, C, F) tensors formed at once, by device type (others:
as CUDA). Longer edge lists are processed in chunks, so the transient memory stays at a few
such tensors for any batch size. On a CPU, chunks that stay in cache are the fastest
(measured: then as fast as plain autograd); on a GPU, larger chunks (32 MiB in float32)
amortise the kernel launches."""


def edge_message(
    features: torch.Tensor,
    scale: torch.Tensor,
    radial: torch.Tensor,
    weight: torch.Tensor,
    src: torch.Tensor,
    dst: torch.Tensor,
) -> torch.Tensor:
    """Filtered features of the neighbours ``src``, summed onto the atoms ``dst``.

    ``out[n, c, f] = sum over edges e with dst[e] = n of
    features[src[e], c, f] * scale[e, c] * sum_k radial[e, k] * weight[c, f, k]``

    Differentiable to any order; the backward passes keep no (E, C, F) tensor.

    Parameters
    ----------
    features
        (N, C, F) per-atom features, one set per channel.
    scale
        (E, C) per-edge factor of each channel (e.g. a component of the unit edge vector).
    radial
        (E, K) per-edge radial coefficients (e.g. an enveloped radial basis).
    weight
        (C, F, K): the filter of channel ``c`` is ``radial @ weight[c].T``, (E, F).
    src, dst
        (E,) edge ends, both indices into the same ``N`` atoms.

    Returns
    -------
    torch.Tensor
        (N, C, F).
    """
    n_atoms = features.shape[0]
    (out,) = _EdgeForm.apply((Y,), src, dst, n_atoms, None, features, scale, radial, weight)
    return out


class _EdgeForm(Function):
    """Partial derivatives of the form with respect to the arguments ``targets``.

    The inputs are the five arguments; the partial with respect to an argument does not
    depend on that argument, which may then be None. Several partials of one set of
    arguments are computed in one pass over the edges, sharing the gathered features and
    the filters.
    """

    @staticmethod
    def forward(ctx, targets, src, dst, n_atoms, *args):
        ctx.targets, ctx.n_atoms = targets, n_atoms
        ctx.save_for_backward(src, dst, *args)
        return tuple(_partials(targets, args, src, dst, n_atoms))

    @staticmethod
    def backward(ctx, *grads_out):
        src, dst, *args = ctx.saved_tensors
        needed = ctx.needs_input_grad[4:]
        grads: list[torch.Tensor | None] = [None] * 5
        for target, grad in zip(ctx.targets, grads_out, strict=True):
            if grad is None:
                continue
            # The gradient of dPhi/dA (contracted with grad) with respect to B is dPhi/dB
            # with A replaced by grad: one call gives it for every B at once.
            substituted = list(args)
            substituted[target] = grad
            wanted = tuple(b for b in range(5) if b != target and needed[b])
            if not wanted:
                continue
            partials = _EdgeForm.apply(wanted, src, dst, ctx.n_atoms, *substituted)
            for b, partial in zip(wanted, partials, strict=True):
                grads[b] = partial if grads[b] is None else grads[b] + partial
        return None, None, None, None, *grads


def _partials(
    targets: tuple[int, ...],
    args: tuple[torch.Tensor | None, ...],
    src: torch.Tensor,
    dst: torch.Tensor,
    n_atoms: int,
) -> list[torch.Tensor]:
    """``dPhi/dargs[t]`` for each ``t`` in ``targets``, summed chunk by chunk over edges."""
    y, p, s, r, w = (None if a is None else a.contiguous() for a in args)
    atoms = p if y is None else y
    n_edges, n_channels, n_features = src.shape[0], atoms.shape[1], atoms.shape[2]
    n_coefficients = (r if w is None else w).shape[-1]
    width = n_channels * n_features
    out = {}
    for target in targets:
        if target in (Y, P):
            out[target] = atoms.new_zeros((n_atoms, n_channels, n_features))
        elif target == S:
            out[target] = atoms.new_empty((n_edges, n_channels))
        elif target == R:
            out[target] = atoms.new_empty((n_edges, n_coefficients))
        else:
            out[target] = atoms.new_zeros((width, n_coefficients))
    wants = set(targets)
    elements = CHUNK_ELEMENTS.get(atoms.device.type, CHUNK_ELEMENTS["cuda"])
    chunk = max(1, elements // width)
    for start in range(0, n_edges, chunk):
        # Every (chunk, C, F) tensor below is a transient; only the outputs outlive the loop.
        part = slice(start, start + chunk)
        scale = s[part].unsqueeze(-1) if wants - {S} else None
        filter_ = _filter(r[part], w) if wants & {Y, P, S} else None
        y_dst = y.index_select(0, dst[part]) if wants - {Y} else None
        p_src = p.index_select(0, src[part]) if wants - {P} else None
        product = y_dst * p_src if wants & {S, R, W} else None
        if S in wants:
            out[S][part] = (product * filter_).sum(-1)
        if wants & {Y, P}:
            filter_.mul_(scale)
            if Y in wants:
                out[Y].index_add_(0, dst[part], p_src.mul_(filter_))
            if P in wants:
                out[P].index_add_(0, src[part], y_dst.mul_(filter_))
        if wants & {R, W}:
            product = product.mul_(scale).view(-1, width)
            if R in wants:
                torch.mm(product, w.view(width, n_coefficients), out=out[R][part])
            if W in wants:
                out[W].addmm_(product.T, r[part])
    if W in wants:
        out[W] = out[W].view(n_channels, n_features, n_coefficients)
    return [out[target] for target in targets]


def _filter(radial: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``radial[e] @ weight[c].T``: (E, K), (C, F, K) -> (E, C, F)."""
    n_channels, n_features, n_coefficients = weight.shape
    out = torch.mm(radial, weight.view(-1, n_coefficients).T)
    return out.view(-1, n_channels, n_features)
