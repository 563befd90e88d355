"""The static-shape training step: padded buffers, and on CUDA one captured graph, vs eager."""

import math

import numpy as np
import pytest
import torch

from mlff_distiller.data.batching import Capacity, GraphSet, capacity, plan_batches
from mlff_distiller.graph import padding_length
from mlff_distiller.testing import tiny_painn
from mlff_distiller.training.losses import DistillationLoss, LossScales
from mlff_distiller.training.step import (
    WARMUP_STEPS,
    ExponentialMovingAverage,
    StaticTrainStep,
    TrainStep,
    _TrainingState,
    set_capturable,
)

CUTOFF = 4.0
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
CAPTURE_EXACT = {"rtol": 1e-9, "atol": 1e-12}
"""Float64 agreement of a captured step with the same step run eagerly (same arithmetic)."""
CAPTURE_FLOAT32 = {"rtol": 1e-4, "atol": 1e-5}
"""Float32 agreement of captured and eager loss curves over hundreds of steps at a small LR
(order-of-summation noise of scatter-adds, amplified by training: ~2e-6 measured on a CPU)."""


def _graph_set(packed_dataset, dtype, device="cpu"):
    data = packed_dataset.subset("train")
    return GraphSet.from_dataset(data, CUTOFF, dtype=dtype, device=device), data


def _batches(graphs, n_steps, batch_size=3, seed=0):
    """Shuffled batches of ``batch_size`` (the last of each epoch smaller), ``n_steps`` of them."""
    rng = np.random.default_rng(seed)
    batches = []
    while len(batches) < n_steps:
        order = rng.permutation(len(graphs))
        batches += plan_batches(order, graphs.n_atoms, graphs.n_edges, batch_size)
    return batches[:n_steps]


def _lr(k, n_steps, peak):
    """Warm-up then cosine decay: a learning rate that changes at every step."""
    return peak * min(1.0, (k + 1) / 10) * 0.5 * (1.0 + math.cos(math.pi * k / n_steps))


def _train(graphs, data, batches, dtype, wrap=None, peak_lr=3e-4, compile=False):
    """Train a tiny PaiNN (molecules and cells: energy, forces, stress) on ``batches``.

    ``wrap`` turns the eager :class:`TrainStep` into the step under test. Returns the loss
    of every step, the final weights and moving average, and the step. The default peak LR
    keeps training out of the chaotic regime where round-off differences grow (at 3e-3
    float32 losses of two summation orders part by 1e-2 within 200 steps).
    """
    device = graphs.device
    model = tiny_painn(dtype=dtype).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=1e-3)
    loss = DistillationLoss(1.0, 1.0, 1.0, LossScales.from_dataset(data), huber_delta=2.0)
    ema = ExponentialMovingAverage(model, 0.9)
    step = TrainStep(model, optimizer, ema, loss, grad_clip=5.0, stress=True, compile=compile)
    if wrap is not None:
        step = wrap(step)
    losses = []
    for k, batch in enumerate(batches):
        step.set_lr(_lr(k, len(batches), peak_lr))
        losses.append(step(*graphs.gather(batch)))
    weights = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    averaged = torch.cat([p.reshape(-1) for p in ema.module.parameters()])
    return torch.stack(losses).cpu(), weights.cpu(), averaged.cpu(), step


def _static(graphs, cuda_graph, initial=None):
    """A wrapper that makes the step a StaticTrainStep with the training set's capacity."""
    cap = initial or capacity(graphs.n_atoms, graphs.n_edges, max_structures=3)
    return lambda step: StaticTrainStep(step, cap, padding_length(CUTOFF), cuda_graph)


def _eager_capturable(graphs):
    """The static step run eagerly with a capturable AdamW: the captured step's arithmetic."""

    def wrap(step):
        set_capturable(step.optimizer, True)
        cap = capacity(graphs.n_atoms, graphs.n_edges, max_structures=3)
        return StaticTrainStep(step, cap, padding_length(CUTOFF))

    return wrap


def _assert_same_training(got, expected, tolerance):
    for a, b in zip(got[:3], expected[:3], strict=True):
        torch.testing.assert_close(a, b, **tolerance)


def test_static_step_follows_the_eager_step(packed_dataset):
    """Padded buffers, refilled in place for 50 steps, give the eager step's losses and weights."""
    graphs, data = _graph_set(packed_dataset, torch.float64)
    batches = _batches(graphs, 50)
    assert len({len(b) for b in batches}) > 1  # batches of several sizes share the buffers
    eager = _train(graphs, data, batches, torch.float64)
    static = _train(graphs, data, batches, torch.float64, _static(graphs, cuda_graph=False))
    _assert_same_training(static, eager, CAPTURE_EXACT)
    assert static[3].captures == 0
    assert static[3].capacity == capacity(graphs.n_atoms, graphs.n_edges, max_structures=3)


COMPILED_FLOAT64 = {"rtol": 1e-8, "atol": 1e-10}
"""Float64 agreement of the compiled step with the eager one (inductor sums in its own order)."""


def test_compiled_static_step_follows_the_eager_step(packed_dataset):
    """The compiled step (forces by torch.func, first-order backward) trains as the eager one.

    Float64, 20 steps of molecules and cells with energy, forces, stress and a Huber loss.
    """
    graphs, data = _graph_set(packed_dataset, torch.float64)
    batches = _batches(graphs, 20)
    eager = _train(graphs, data, batches, torch.float64)
    compiled = _train(
        graphs, data, batches, torch.float64, _static(graphs, cuda_graph=False), compile=True
    )
    assert compiled[3].step.compile  # compiled, not fallen back
    _assert_same_training(compiled, eager, COMPILED_FLOAT64)


def test_a_step_that_cannot_compile_warns_and_trains_eagerly(packed_dataset, monkeypatch):
    """A torch whose compiler fails on the step: one warning, then the eager step's results."""

    def failing_compile(function, **options):
        def compiled(*args):
            raise RuntimeError("isIntList() INTERNAL ASSERT FAILED (a compiler bug)")

        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    graphs, data = _graph_set(packed_dataset, torch.float64)
    batches = _batches(graphs, 5)
    eager = _train(graphs, data, batches, torch.float64)
    with pytest.warns(RuntimeWarning, match="could not compile the step.*INTERNAL ASSERT"):
        fallen_back = _train(graphs, data, batches, torch.float64, compile=True)
    assert not fallen_back[3].compile
    _assert_same_training(fallen_back, eager, CAPTURE_EXACT)


def test_compiled_step_refuses_several_processes():
    model = tiny_painn()
    optimizer = torch.optim.AdamW(model.parameters())
    ema = ExponentialMovingAverage(model, 0.9)
    with pytest.raises(ValueError, match="compiled training step runs in one process"):
        TrainStep(
            model, optimizer, ema, DistillationLoss(1.0, 1.0), 1.0, world_size=2, compile=True
        )


class _WarmedUpAt:
    """An eager step that, before call ``at``, warms up and undoes it as a capture does."""

    def __init__(self, step, at, warm_up_batch):
        self.step, self.at, self.warm_up_batch, self.calls = step, at, warm_up_batch, 0

    def set_lr(self, lr):
        self.step.set_lr(lr)

    def __call__(self, graph, targets):
        if self.calls == self.at:
            saved = _TrainingState(self.step)
            for _ in range(WARMUP_STEPS):
                self.step(*self.warm_up_batch)
            saved.restore()
        self.calls += 1
        return self.step(graph, targets)


@pytest.mark.parametrize("steps_before", [0, 2])
def test_warm_up_before_a_capture_is_undone(packed_dataset, steps_before):
    """Warm-up steps after the copy of the training state leave no trace once restored."""
    graphs, data = _graph_set(packed_dataset, torch.float64)
    batches = _batches(graphs, steps_before + 4)
    expected = _train(graphs, data, batches, torch.float64)
    warm_up_batch = graphs.gather(batches[-1])
    got = _train(
        graphs,
        data,
        batches,
        torch.float64,
        lambda step: _WarmedUpAt(step, steps_before, warm_up_batch),
    )
    _assert_same_training(got, expected, CAPTURE_EXACT)


def test_captured_step_needs_cuda():
    model = tiny_painn()
    step = TrainStep(
        model,
        torch.optim.AdamW(model.parameters()),
        ExponentialMovingAverage(model, 0.9),
        DistillationLoss(1.0, 1.0),
        grad_clip=1.0,
    )
    with pytest.raises(ValueError, match="needs a CUDA device"):
        StaticTrainStep(step, Capacity(1, 10, 10), 9.0, cuda_graph=True)


@CUDA
@pytest.mark.filterwarnings("ignore:.*capturable=True")
def test_captured_step_is_the_eager_step_on_cuda(packed_dataset):
    """Float64: one captured graph, replayed 200 times, is the eager step to round-off."""
    graphs, data = _graph_set(packed_dataset, torch.float64, "cuda")
    batches = _batches(graphs, 200)
    eager = _train(graphs, data, batches, torch.float64, _eager_capturable(graphs))
    captured = _train(graphs, data, batches, torch.float64, _static(graphs, cuda_graph=True))
    _assert_same_training(captured, eager, CAPTURE_EXACT)
    assert captured[3].captures == 1


@CUDA
def test_captured_loss_curve_equals_the_eager_one_on_cuda(packed_dataset):
    """Float32, 300 steps: the captured step against the trainer's plain eager step."""
    graphs, data = _graph_set(packed_dataset, torch.float32, "cuda")
    batches = _batches(graphs, 300)
    eager = _train(graphs, data, batches, torch.float32)
    captured = _train(graphs, data, batches, torch.float32, _static(graphs, cuda_graph=True))
    difference = (captured[0] - eager[0]).abs().max()
    torch.testing.assert_close(
        captured[0], eager[0], **CAPTURE_FLOAT32, msg=f"max |loss difference| {difference}"
    )
    torch.testing.assert_close(captured[2], eager[2], rtol=1e-3, atol=1e-4)


@CUDA
def test_compiled_captured_loss_curve_equals_the_eager_one_on_cuda(packed_dataset):
    """Float32, 300 steps: the compiled step, captured, against the plain eager step."""
    graphs, data = _graph_set(packed_dataset, torch.float32, "cuda")
    batches = _batches(graphs, 300)
    eager = _train(graphs, data, batches, torch.float32)
    wrap = _static(graphs, cuda_graph=True)
    compiled = _train(graphs, data, batches, torch.float32, wrap, compile=True)
    assert compiled[3].step.compile
    assert compiled[3].captures == 1
    difference = (compiled[0] - eager[0]).abs().max()
    torch.testing.assert_close(
        compiled[0], eager[0], **CAPTURE_FLOAT32, msg=f"max |loss difference| {difference}"
    )
    torch.testing.assert_close(compiled[2], eager[2], rtol=1e-3, atol=1e-4)


@CUDA
@pytest.mark.filterwarnings("ignore:.*capturable=True")
def test_captured_step_recaptures_only_when_a_batch_outgrows_it(packed_dataset):
    """A capacity that a batch outgrows grows and is captured again; smaller batches fit."""
    graphs, data = _graph_set(packed_dataset, torch.float64, "cuda")
    small, large = np.array([0]), np.array([0, 1, 2])  # large holds small in every dimension
    batches = [small, small, small, large, small, large, small, small, large, small] * 3
    initial = Capacity.of(graphs.gather(small)[0])
    eager = _train(graphs, data, batches, torch.float64, _eager_capturable(graphs))
    captured = _train(graphs, data, batches, torch.float64, _static(graphs, True, initial))
    _assert_same_training(captured, eager, CAPTURE_EXACT)
    assert captured[3].captures == 2
    assert captured[3].capacity == Capacity.of(graphs.gather(large)[0])
