"""Normalised loss terms, Huber, and the learning-rate schedule."""

import itertools
import math

import numpy as np
import pytest
import torch

from mlff_distiller import keys
from mlff_distiller.config import TrainingConfig
from mlff_distiller.data.batching import GraphSet
from mlff_distiller.models.components import fit_reference_energies
from mlff_distiller.models.predict import sum_per_structure
from mlff_distiller.training.losses import DistillationLoss, LossScales
from mlff_distiller.training.schedule import LearningRate, planned_epochs

CUTOFF = 4.0


def test_each_term_is_one_for_a_student_of_reference_energies_alone(packed_dataset):
    """The meaning of the normalisation: 1 for the trivial student, 0 for a perfect one."""
    data = packed_dataset.subset("train")
    scales = LossScales.from_dataset(data)
    graphs = GraphSet.from_dataset(data, CUTOFF, dtype=torch.float64)
    graph, targets = graphs.gather(np.arange(len(data)))  # one batch: plain means
    ptr = data.arrays["ptr"]
    numbers = [data.arrays["numbers"][ptr[k] : ptr[k + 1]] for k in range(len(data))]
    refs = fit_reference_energies(numbers, data.arrays[keys.TEACHER_ENERGY])
    trivial = {
        keys.ENERGY: sum_per_structure(refs[graph.numbers], graph.batch, graph.n_structures),
        keys.FORCES: torch.zeros_like(targets[keys.FORCES]),
        keys.STRESS: torch.zeros_like(targets[keys.STRESS]),
    }
    _, terms = DistillationLoss(1.0, 1.0, 1.0, scales)(trivial, targets, graph.batch)
    for name in ("energy", "forces", "stress"):
        assert float(terms[name]) == pytest.approx(1.0, rel=1e-9), name
    perfect = {keys.ENERGY: targets[keys.ENERGY], keys.FORCES: targets[keys.FORCES]}
    value, _ = DistillationLoss(1.0, 1.0, 1.0, scales)(perfect, targets, graph.batch)
    assert float(value) == 0.0


def test_huber_is_the_squared_error_for_small_residuals_and_linear_beyond():
    targets = {
        keys.ENERGY: torch.zeros(1, dtype=torch.float64),
        keys.FORCES: torch.zeros((1, 3), dtype=torch.float64),
        "n_atoms": torch.ones(1, dtype=torch.long),
        "energy_weight": torch.ones(1, dtype=torch.float64),
        "force_weight": torch.zeros(1, dtype=torch.float64),
    }
    batch = torch.zeros(1, dtype=torch.long)
    loss = DistillationLoss(1.0, 0.0, scales=LossScales(energy=4.0), huber_delta=0.5)
    for error in (0.3, 3.0):  # normalised residual r = error / 2
        pred = {
            keys.ENERGY: torch.tensor([error], dtype=torch.float64),
            keys.FORCES: targets[keys.FORCES],
        }
        r = error / 2
        expected = r * r if r < 0.5 else 2 * 0.5 * r - 0.25
        assert float(loss(pred, targets, batch)[0]) == pytest.approx(expected)


def test_cosine_schedule_warms_up_then_reaches_min_lr_at_the_end():
    config = TrainingConfig(lr=1e-3, min_lr=1e-5, warmup_epochs=2.0)
    schedule = LearningRate(config)
    assert schedule.at(1.0, 10) == pytest.approx(0.5e-3)
    assert schedule.at(2.0, 10) == pytest.approx(1e-3)
    assert schedule.at(6.0, 10) == pytest.approx(1e-5 + (1e-3 - 1e-5) / 2)
    assert schedule.at(10.0, 10) == pytest.approx(1e-5)
    rates = [schedule.at(p, 10) for p in np.linspace(2.0, 10.0, 50)]
    assert all(a >= b for a, b in itertools.pairwise(rates))
    # The warm-up is at most half of a short run.
    assert schedule.at(1.0, 2) == pytest.approx(1e-3)


def test_plateau_schedule_lowers_the_rate_after_patience():
    schedule = LearningRate(TrainingConfig(lr_schedule="plateau", lr_patience=1, lr_factor=0.5))
    for improved in (True, False, False):
        schedule.end_epoch(improved)
    assert schedule.at(5.0, 10) == pytest.approx(0.5e-3)
    restored = LearningRate(TrainingConfig(lr_schedule="plateau"))
    restored.load_state_dict(schedule.state_dict())
    assert restored.at(5.0, 10) == schedule.at(5.0, 10)


def test_time_budget_plans_the_epochs_that_fit():
    assert planned_epochs(100, None, [7.0, 5.0]) == 100
    assert planned_epochs(100, 1.0, []) == 100
    assert planned_epochs(100, 1.0, [7.0, 5.0]) == 10  # 60 s at 6 s per epoch
    assert planned_epochs(5, 1.0, [7.0, 5.0]) == 5
    assert planned_epochs(100, 0.01, [7.0]) == 1
    assert math.isclose(LearningRate(TrainingConfig()).at(100.0, 100), TrainingConfig().min_lr)
