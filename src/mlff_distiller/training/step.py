"""One optimisation step with no host synchronisation, and the moving average of the weights.

A step predicts energies and forces (and stress) keeping the autograd graph, takes the loss,
backpropagates (under DistributedDataParallel the gradients are summed over processes
meanwhile), clips the gradient norm, steps AdamW and updates the moving average. Nothing in
it reads a value back to the host: no ``.item()``, no ``bool(tensor)``, no shape that
depends on data. The host therefore runs ahead of a GPU, and a step on a padded batch
(static shapes) is the computation a captured CUDA graph would replay.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from mlff_distiller.graph import AtomicGraph
from mlff_distiller.models.predict import _MIN_VOLUME, cell_volume, predict
from mlff_distiller.training.losses import DistillationLoss


def cells_for_stress(graph: AtomicGraph) -> AtomicGraph:
    """``graph`` with every cell of zero volume replaced by the unit cube.

    Stress is the strain derivative divided by the volume, NaN for a molecule (and for an
    empty slot of a padded batch); a NaN there would reach the gradients even with a zero
    loss weight. The replacement is exact for energies and forces: a structure whose cell
    has zero volume is not periodic, so all its cell shifts are zero and its cell never
    enters an edge vector. Its stress, now finite, is left out of the loss by its weight.
    """
    volume = cell_volume(graph.cell)
    unit = torch.eye(3, dtype=graph.cell.dtype, device=graph.cell.device)
    cell = torch.where((volume > _MIN_VOLUME).view(-1, 1, 1), graph.cell, unit)
    return graph._replace(cell=cell)


class ExponentialMovingAverage:
    """A copy of the model whose weights follow the trained ones with ``decay`` per step.

    Parameters
    ----------
    model
        The trained model (not a DDP wrapper); the copy starts from its weights.
    decay
        ``ema = decay * ema + (1 - decay) * weights`` after every step.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay = float(decay)
        self._ema = list(self.module.parameters())

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the average towards the weights of ``model`` (one fused update)."""
        # The private foreach kernel is what torch.optim.swa_utils uses for its EMA too.
        torch._foreach_lerp_(self._ema, list(model.parameters()), 1.0 - self.decay)

    def state_dict(self) -> dict[str, Any]:
        """The averaged model's state."""
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.module.load_state_dict(state)


class TrainStep:
    """Loss, backward, clipping, AdamW and EMA for one batch.

    Parameters
    ----------
    model
        The student, or its DistributedDataParallel wrapper.
    optimizer
        Optimiser of the student's parameters.
    ema
        Moving average updated after the optimiser step.
    loss
        The loss.
    grad_clip
        Largest gradient norm.
    stress
        Whether the loss has a stress term (derives stress by the strain trick).
    world_size
        Number of processes: each process's loss is its share of the global mean, and
        DDP averages gradients, so the loss is scaled by it before backward.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        ema: ExponentialMovingAverage,
        loss: DistillationLoss,
        grad_clip: float,
        stress: bool = False,
        world_size: int = 1,
    ) -> None:
        self.model = model
        self.module = getattr(model, "module", model)
        self.optimizer = optimizer
        self.ema = ema
        self.loss = loss
        self.grad_clip = float(grad_clip)
        self.stress = bool(stress)
        self.world_size = int(world_size)
        self.parameters = [p for p in self.module.parameters() if p.requires_grad]

    def __call__(self, graph: AtomicGraph, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """One step on ``graph``; returns this process's loss as a detached 0-d tensor."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.stress:
            graph = cells_for_stress(graph)
        pred = predict(
            self.model,
            graph,
            forces=True,
            stress=self.stress,
            create_graph=True,
            check_cells=False,
        )
        loss, _ = self.loss(pred, targets, graph.batch)
        (loss * self.world_size).backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, self.grad_clip)
        self.optimizer.step()
        self.ema.update(self.module)
        return loss.detach()
