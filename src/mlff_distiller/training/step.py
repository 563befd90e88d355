"""One optimisation step with no host synchronisation, and the moving average of the weights.

A step predicts energies and forces (and stress) keeping the autograd graph, takes the loss,
backpropagates (under DistributedDataParallel the gradients are summed over processes
meanwhile), clips the gradient norm, steps AdamW and updates the moving average. Nothing in
it reads a value back to the host: no ``.item()``, no ``bool(tensor)``, no shape that
depends on data (gradient clipping is torch's foreach norm and a clamped scale, never a
branch on the norm). The host therefore runs ahead of a GPU.

:class:`StaticTrainStep` runs the same step on batches padded to fixed capacities, and on
CUDA captures it once in a CUDA graph and replays it: one launch per step instead of the
thousand-odd small kernels of forward, double backward, clipping, AdamW and EMA.
"""

from __future__ import annotations

import copy
import time
import warnings
from typing import Any

import torch

from mlff_distiller.data.batching import Capacity, Targets, copy_into_padded_batch, pad_batch
from mlff_distiller.graph import AtomicGraph
from mlff_distiller.keys import ENERGY, FORCES, STRESS
from mlff_distiller.models.predict import (
    _MIN_VOLUME,
    cell_volume,
    functional_predict,
    predict,
    sum_per_structure,
)
from mlff_distiller.training.losses import DistillationLoss

WARMUP_STEPS = 3
"""Eager steps run (and then undone) before a capture: lazy initialisation (optimiser state,
cuBLAS workspaces, autograd threads, kernel loading) must not happen under capture."""


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
    compile
        Compute predictions and loss with :func:`torch.compile`: forces (and stress) by
        :func:`~mlff_distiller.models.predict.functional_predict`, so that the loss is a
        function whose parameter gradients need only a first-order backward, which
        AOTAutograd compiles too (it cannot compile the double backward of
        ``create_graph``); inductor fuses the per-edge work of forward and backward and
        recomputes cheap intermediates in the backward instead of keeping them. The same
        loss and gradients to round-off. The first step, and every step with new shapes,
        compiles (a minute or more): use it with :class:`StaticTrainStep`. One process only
        (not under DistributedDataParallel).
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
        compile: bool = False,
    ) -> None:
        if compile and world_size > 1:
            raise ValueError(
                "a compiled training step runs in one process: use compile=False under "
                "DistributedDataParallel"
            )
        self.model = model
        self.module = getattr(model, "module", model)
        self.optimizer = optimizer
        self.ema = ema
        self.loss = loss
        self.grad_clip = float(grad_clip)
        self.stress = bool(stress)
        self.world_size = int(world_size)
        self.parameters = [p for p in self.module.parameters() if p.requires_grad]
        self.compile = bool(compile)
        self._compiled_loss: Any = None

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of the next steps.

        A capturable optimiser (:func:`set_capturable`) holds it in a device tensor, which
        is filled in place (a captured step reads it there); otherwise it is a float.
        """
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def __call__(self, graph: AtomicGraph, targets: Targets) -> torch.Tensor:
        """One step on ``graph``; returns this process's loss as a detached 0-d tensor."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        if self.stress:
            graph = cells_for_stress(graph)
        loss = self._compiled(graph, targets) if self.compile else None
        if loss is None:
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

    def _compiled(self, graph: AtomicGraph, targets: Targets) -> torch.Tensor | None:
        """The compiled loss; None, with a warning and ``compile`` off, if it cannot compile."""
        first = self._compiled_loss is None
        if first:
            # Static shapes: torch 2.11's dynamo fails on this function with symbolic sizes;
            # a batch of new shapes compiles again (with StaticTrainStep: rarely).
            self._compiled_loss = torch.compile(self.functional_loss, fullgraph=True, dynamic=False)
        try:
            return self._compiled_loss(graph, targets)
        except torch.cuda.OutOfMemoryError:
            raise  # not the compiler's failure: the batch does not fit
        except Exception as exc:  # any compiler failure: train eagerly, same results
            if not first:
                raise
            text = str(exc).strip()
            warnings.warn(
                f"training.compile: torch {torch.__version__} could not compile the step "
                f"({type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}); "
                "training uncompiled instead (same results, slower)",
                RuntimeWarning,
                stacklevel=3,
            )
            self.compile = False
            return None

    def functional_loss(self, graph: AtomicGraph, targets: Targets) -> torch.Tensor:
        """The loss of ``graph`` with forces and stress by ``torch.func`` (what is compiled).

        Equal to the loss of the eager path; its parameter gradients need only a first-order
        backward. ``graph`` already has the cells of :func:`cells_for_stress` when the loss
        has a stress term.
        """
        atomic, forces, stress = functional_predict(self.module, graph, self.stress)
        pred = {
            ENERGY: sum_per_structure(atomic, graph.batch, graph.n_structures),
            FORCES: forces,
        }
        if stress is not None:
            pred[STRESS] = stress
        return self.loss(pred, targets, graph.batch)[0]


def set_capturable(optimizer: torch.optim.Optimizer, capturable: bool) -> None:
    """Switch an Adam/AdamW optimiser in or out of the mode a CUDA graph can capture.

    Capturable: ``capturable=True``, the learning rate a float32 tensor on the parameters'
    device (set by :meth:`TrainStep.set_lr` without a host sync; torch's foreach AdamW
    accepts a tensor LR only in this mode), and the step counts on that device. Otherwise:
    a float LR and step counts on the host, torch's default. Call it after
    ``load_state_dict`` too, which restores the mode the state was saved in. Idempotent.

    Parameters
    ----------
    optimizer
        A :class:`torch.optim.Adam` or :class:`torch.optim.AdamW` (any optimiser with a
        ``capturable`` option and ``step`` state).
    capturable
        The mode to switch to.
    """
    for group in optimizer.param_groups:
        device = group["params"][0].device
        lr = group["lr"]
        if capturable:
            if not (isinstance(lr, torch.Tensor) and lr.device == device):
                group["lr"] = torch.tensor(float(lr), dtype=torch.float32, device=device)
        elif isinstance(lr, torch.Tensor):
            group["lr"] = float(lr)  # reads a device LR back once, when switching
        group["capturable"] = capturable
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if "step" in state:
                place = parameter.device if capturable else torch.device("cpu")
                state["step"] = state["step"].to(device=place, dtype=torch.float32)


class StaticTrainStep:
    """A :class:`TrainStep` on batches padded to fixed capacities; on CUDA, a replayed graph.

    Each batch is copied into buffers of fixed capacities (:func:`copy_into_padded_batch`,
    the layout of :func:`mlff_distiller.graph.pad_graph`, whose padding changes neither the
    loss nor the gradients) and the step runs on them, so every step has the same shapes.

    With ``cuda_graph`` the whole step (forward, forces by autograd with ``create_graph``,
    backward through them, gradient clipping, AdamW, EMA update) is captured once in a
    :class:`torch.cuda.CUDAGraph` and replayed for every batch, following the whole-network
    recipe of PyTorch's CUDA Graphs notes:

    - the optimiser is switched to capturable mode (:func:`set_capturable`): its learning
      rate is a device tensor that :meth:`set_lr` fills before each replay;
    - :data:`WARMUP_STEPS` eager steps on the first batch, on a side stream, initialise
      everything lazy; the weights, moving average and optimiser state are then put back
      as they were (optimiser state that the warm-up created is zeroed, which is Adam's
      initial state), so the captured run follows the eager one step for step;
    - the gradients are set to None before capture, so backward allocates them in the
      graph's memory pool, where every replay writes them.

    A batch that outgrows a capacity grows it (never shrinks it) and, with ``cuda_graph``,
    is captured again; batches that fit never cause a capture. Without ``cuda_graph`` (CPU,
    or DistributedDataParallel, whose gradient all-reduce is not captured here) the step
    runs eagerly on the padded buffers.

    Parameters
    ----------
    step
        The eager step; with ``cuda_graph`` its model must be on a CUDA device and not
        wrapped in DistributedDataParallel.
    capacity
        Initial capacities, e.g. :func:`mlff_distiller.data.batching.capacity` of the
        training set, which hold every batch of the run.
    padding_length
        Length (Å) of the padding edges, beyond the cutoff
        (:func:`mlff_distiller.graph.padding_length`).
    cuda_graph
        Capture and replay the step.

    Attributes
    ----------
    capacity : Capacity
        The current capacities.
    captures : int
        CUDA graphs captured so far.
    capture_seconds : float
        Wall time of warm-ups and captures, s.
    """

    def __init__(
        self,
        step: TrainStep,
        capacity: Capacity,
        padding_length: float,
        cuda_graph: bool = False,
    ) -> None:
        device = step.parameters[0].device
        if cuda_graph and device.type != "cuda":
            raise ValueError(f"a captured training step needs a CUDA device, not {device}")
        if cuda_graph and step.world_size > 1:
            raise ValueError(
                "a captured training step does not support DistributedDataParallel: "
                "use cuda_graph=False with several processes"
            )
        self.step = step
        self.capacity = capacity
        self.padding_length = float(padding_length)
        self.cuda_graph = bool(cuda_graph)
        self.device = device
        self.captures = 0
        self.capture_seconds = 0.0
        self._batch: tuple[AtomicGraph, Targets] | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._loss: torch.Tensor | None = None
        if self.cuda_graph:
            set_capturable(step.optimizer, True)

    def set_lr(self, lr: float) -> None:
        """Set the learning rate of the next steps (:meth:`TrainStep.set_lr`)."""
        self.step.set_lr(lr)

    def __call__(self, graph: AtomicGraph, targets: Targets) -> torch.Tensor:
        """One step on an unpadded batch; returns its loss as a detached 0-d tensor."""
        need = Capacity.of(graph)
        if self._batch is not None and self.capacity.holds(need):
            copy_into_padded_batch(self._batch, graph, targets, self.padding_length)
        else:
            self.capacity = self.capacity.union(need)
            self._graph = self._loss = None  # releases the old graph's memory pool
            self._batch = pad_batch(graph, targets, self.capacity, self.padding_length)
            if self.cuda_graph:
                self._capture()
        if self._graph is None:
            return self.step(*self._batch)
        assert self._loss is not None
        self._graph.replay()
        return self._loss.clone()

    def _capture(self) -> None:
        """Warm up on the loaded batch, undo the warm-up, capture the step."""
        assert self._batch is not None
        start = time.perf_counter()
        graph, targets = self._batch
        step = self.step
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            saved = _TrainingState(step)
            with warnings.catch_warnings():
                # AdamW warns that a capturable optimiser runs uncaptured: here on purpose.
                warnings.filterwarnings("ignore", message=".*capturable=True.*")
                for _ in range(WARMUP_STEPS):
                    step(graph, targets)
            saved.restore()
            step.optimizer.zero_grad(set_to_none=True)
            self._graph = torch.cuda.CUDAGraph()
            # The warm-up's stream: handles and workspaces it created are the capture's.
            with torch.cuda.graph(self._graph, stream=side):
                self._loss = step(graph, targets)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.captures += 1
        self.capture_seconds += time.perf_counter() - start


class _TrainingState:
    """A copy of what a step changes (weights, moving average, optimiser state), to undo it.

    Optimiser state that does not exist yet when the copy is made is zeroed on
    :meth:`restore` (Adam's initial state: zero moments, zero step count).
    """

    def __init__(self, step: TrainStep) -> None:
        self.step = step
        tensors = [*step.parameters, *step.ema.module.parameters()]
        self.fresh = []
        for parameter in step.parameters:
            state = step.optimizer.state.get(parameter)
            if state:
                tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
            else:
                self.fresh.append(parameter)
        self.saved = [(tensor, tensor.detach().clone()) for tensor in tensors]

    @torch.no_grad()
    def restore(self) -> None:
        """Put every saved tensor back in place (same storage) and zero new optimiser state."""
        for tensor, value in self.saved:
            tensor.copy_(value)
        for parameter in self.fresh:
            for value in self.step.optimizer.state.get(parameter, {}).values():
                if isinstance(value, torch.Tensor):
                    value.zero_()
