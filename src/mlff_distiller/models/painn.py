"""PaiNN, the student: polarizable atom interaction neural network (Schütt et al., ICML 2021).

Each atom carries scalar features ``s`` (N, F) and vector features ``v`` (N, 3, F). Vector
features are only ever mixed across the feature axis (bias-free linear maps on the last
dimension), scaled by invariants, or built from unit edge vectors, so they rotate with the
structure while the scalars, and hence the energy, stay invariant.

The module returns per-atom energies; forces and stress are derived in one place,
:func:`mlff_distiller.models.predict.predict`. ``forward`` has no data-dependent Python
control flow, so it can be scripted with TorchScript and captured in a CUDA graph.
"""

import torch
from torch import nn

from mlff_distiller.graph import AtomicGraph, edge_vectors
from mlff_distiller.models.components import BesselBasis, CosineCutoff
from mlff_distiller.models.edge_ops import edge_message


class PaiNNInteraction(nn.Module):
    """One PaiNN message block followed by one update block.

    Parameters
    ----------
    n_features
        Number of feature channels ``F``.
    n_rbf
        Number of radial basis functions.
    first
        Whether this is the first block: vector features are still exactly zero there, so
        the ``v_j`` term of the message is skipped (a static choice, not a data-dependent one).
    lean_messages
        In training mode, compute the message with :func:`~.edge_ops.edge_message`, whose
        backward passes keep no (E, F)-wide tensor (see :meth:`lean_message`).
    """

    def __init__(
        self, n_features: int, n_rbf: int, first: bool, lean_messages: bool = False
    ) -> None:
        super().__init__()
        F = int(n_features)
        self.lean_messages = bool(lean_messages)
        self.n_features = F
        self.first = bool(first)
        # Under the square root of ||V v|| so that its gradient is finite when v = 0.
        self.norm_epsilon = 1e-8
        # Message: phi(s_j) is evaluated per atom and gathered per edge afterwards, which is
        # cheaper than gathering s_j first (N << E).
        self.phi = nn.Sequential(nn.Linear(F, F), nn.SiLU(), nn.Linear(F, 3 * F))
        # The filter W(rbf) * cutoff with W affine equals a bias-free map of the basis
        # [rbf * cutoff, cutoff] (see PaiNN.forward): one fewer (E, 3F) product per block
        # and its backward, and exactly zero at and beyond the cutoff.
        self.filter = nn.Linear(int(n_rbf) + 1, 3 * F, bias=False)
        # Update: U and V fused into one bias-free map over the feature axis.
        self.uv = nn.Linear(F, 2 * F, bias=False)
        self.update_mlp = nn.Sequential(nn.Linear(2 * F, F), nn.SiLU(), nn.Linear(F, 3 * F))

    def forward(
        self,
        s: torch.Tensor,
        v: torch.Tensor,
        radial: torch.Tensor,
        direction: torch.Tensor,
        i: torch.Tensor,
        j: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply message and update.

        Parameters
        ----------
        s
            Scalar features, (N, F).
        v
            Vector features, (N, 3, F), in the Cartesian frame of the positions.
        radial
            Enveloped radial basis ``[rbf(r_ij) * cutoff(r_ij), cutoff(r_ij)]``,
            (E, n_rbf + 1); zero for edges at or beyond the cutoff.
        direction
            Unit vectors ``r_ij / |r_ij|``, (E, 3).
        i, j
            Centre and neighbour atom of every edge, (E,) each.

        Returns
        -------
        tuple[torch.Tensor, torch.Tensor]
            Updated ``s`` (N, F) and ``v`` (N, 3, F).
        """
        F = self.n_features
        # ---- message
        if self.lean_messages and self.training and not torch.jit.is_scripting():
            # Training: the same message, with backward passes that keep only per-atom and
            # thin per-edge tensors. Inference and TorchScript use the plain ops below.
            ds, dv = self.lean_message(s, v, radial, direction, i, j)
            s = s + ds
            v = v + dv
        else:
            x = self.phi(s).index_select(0, j) * self.filter(radial)
            ds_edge, dv_gate, dv_radial = torch.split(x, F, dim=-1)
            dv_edge = direction.unsqueeze(-1) * dv_radial.unsqueeze(1)
            if not self.first:
                dv_edge = dv_edge + v.index_select(0, j) * dv_gate.unsqueeze(1)
            # Out-of-place index_add: one copy of s instead of zeros + aggregation + sum.
            s = torch.index_add(s, 0, i, ds_edge)
            v = torch.index_add(v, 0, i, dv_edge)

        # ---- update
        u_v, v_v = torch.split(self.uv(v), F, dim=-1)
        v_norm = torch.sqrt(torch.sum(v_v * v_v, dim=1) + self.norm_epsilon)
        a = self.update_mlp(torch.cat([s, v_norm], dim=-1))
        a_vv, a_sv, a_ss = torch.split(a, F, dim=-1)
        v = v + a_vv.unsqueeze(1) * u_v
        s = s + a_sv * torch.sum(u_v * v_v, dim=1) + a_ss
        return s, v

    @torch.jit.unused
    def lean_message(
        self,
        s: torch.Tensor,
        v: torch.Tensor,
        radial: torch.Tensor,
        direction: torch.Tensor,
        i: torch.Tensor,
        j: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed messages ``(ds, dv)`` as one :func:`~.edge_ops.edge_message`.

        With ``phi(s)`` split into ``phi_s, phi_g, phi_r`` and the filter weight into
        ``W_s, W_g, W_r`` (as the plain message splits its product), the message is a sum
        over channels, each a per-atom feature with a per-edge scale and a weight block:
        ``ds`` is channel (``phi_s``, 1, ``W_s``); ``dv`` along axis ``a`` is channel
        (``phi_r``, ``direction[:, a]``, ``W_r``) plus, after the first block, channel
        (``v[:, a] * phi_g``, 1, ``W_g``). Equal to the plain message to round-off; its
        first and second derivatives keep only per-atom tensors, ``radial`` and the scales.

        Parameters
        ----------
        s, v, radial, direction, i, j
            As in :meth:`forward`.

        Returns
        -------
        tuple[torch.Tensor, torch.Tensor]
            ``ds`` (N, F) and ``dv`` (N, 3, F), to be added to ``s`` and ``v``.
        """
        F = self.n_features
        p_s, p_g, p_r = torch.split(self.phi(s), F, dim=-1)
        w_s, w_g, w_r = self.filter.weight.view(3, F, -1).unbind(0)
        features = [p_s.unsqueeze(1), p_r.unsqueeze(1).expand(-1, 3, -1)]
        scale = [radial.new_ones((radial.shape[0], 1)), direction]
        weight = [w_s, w_r, w_r, w_r]
        if not self.first:
            features.append(v * p_g.unsqueeze(1))
            scale.append(radial.new_ones((radial.shape[0], 3)))
            weight += [w_g, w_g, w_g]
        out = edge_message(
            torch.cat(features, dim=1), torch.cat(scale, dim=1), radial, torch.stack(weight), j, i
        )
        dv = out[:, 1:4]
        if not self.first:
            dv = dv + out[:, 4:7]
        return out[:, 0], dv


class PaiNN(nn.Module):
    """The PaiNN student potential: per-atom energies from an :class:`AtomicGraph`.

    Parameters
    ----------
    n_features
        Number of scalar and vector feature channels ``F``.
    n_blocks
        Number of message + update blocks.
    n_rbf
        Number of radial Bessel functions.
    cutoff
        Cutoff radius in Å; edges at or beyond it contribute exactly zero.
    max_z
        Largest supported atomic number.
    lean_messages
        In training mode, compute messages with :mod:`~.edge_ops`: the same results to
        round-off, with about 1 KB instead of 42 KB kept per edge (seed student) for the
        forces and their training gradients. In eval mode and under TorchScript the plain
        ops run either way. An execution choice, not part of :attr:`hyperparameters`.

    Attributes
    ----------
    hyperparameters : dict
        The constructor arguments, so that a saved artefact can rebuild the model.
    reference_energies : torch.Tensor
        Buffer (max_z + 1,), eV: per-element energy added to every atom (set by the trainer).
    scale, shift : torch.Tensor
        Scalar buffers: the network output is ``scale * readout + shift`` (eV) per atom.

    Notes
    -----
    The per-atom energy is ``scale * readout(s_i) + shift + reference_energies[Z_i]`` in eV.
    """

    reference_energies: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(
        self,
        n_features: int = 128,
        n_blocks: int = 3,
        n_rbf: int = 20,
        cutoff: float = 5.0,
        max_z: int = 118,
        lean_messages: bool = False,
    ) -> None:
        super().__init__()
        self.hyperparameters = {
            "n_features": int(n_features),
            "n_blocks": int(n_blocks),
            "n_rbf": int(n_rbf),
            "cutoff": float(cutoff),
            "max_z": int(max_z),
        }
        F = int(n_features)
        self.n_features = F
        self.n_blocks = int(n_blocks)
        self.cutoff = float(cutoff)
        self.embedding = nn.Embedding(int(max_z) + 1, F)
        self.radial_basis = BesselBasis(n_rbf, cutoff)
        self.cutoff_fn = CosineCutoff(cutoff)
        self.interactions = nn.ModuleList(
            [
                PaiNNInteraction(F, int(n_rbf), first=k == 0, lean_messages=lean_messages)
                for k in range(self.n_blocks)
            ]
        )
        self.readout = nn.Sequential(nn.Linear(F, F // 2), nn.SiLU(), nn.Linear(F // 2, 1))
        self.register_buffer("reference_energies", torch.zeros(int(max_z) + 1))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("shift", torch.tensor(0.0))

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        """Per-atom energies.

        Parameters
        ----------
        graph
            One or several structures with their neighbour lists (any cutoff at least as
            large as the model's).

        Returns
        -------
        torch.Tensor
            Energy of every atom, shape (N,), in eV.
        """
        i, j = graph.edge_index[0], graph.edge_index[1]
        r_ij = edge_vectors(graph)
        r = torch.linalg.vector_norm(r_ij, dim=-1)
        direction = r_ij / r.unsqueeze(-1)
        envelope = self.cutoff_fn(r).unsqueeze(-1)
        radial = torch.cat([self.radial_basis(r) * envelope, envelope], dim=-1)

        s = self.embedding(graph.numbers)
        v = s.new_zeros((s.shape[0], 3, self.n_features))
        for interaction in self.interactions:
            s, v = interaction(s, v, radial, direction, i, j)

        energy = self.readout(s).squeeze(-1)
        return self.scale * energy + self.shift + self.reference_energies[graph.numbers]
