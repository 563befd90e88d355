"""Radial basis, cutoff envelope and per-element reference energies."""

import math

import numpy as np
import torch
from torch.testing import assert_close

from mlff_distiller.models.components import BesselBasis, CosineCutoff, fit_reference_energies

F64 = torch.float64


def test_bessel_basis_matches_its_formula_and_vanishes_at_the_cutoff():
    basis = BesselBasis(n_rbf=5, cutoff=4.0).to(F64)
    r = torch.tensor([0.5, 1.3, 3.9, 4.0], dtype=F64)
    values = basis(r)
    assert values.shape == (4, 5)
    n = torch.arange(1, 6, dtype=F64)
    expected = math.sqrt(2 / 4.0) * torch.sin(n * math.pi * r[:, None] / 4.0) / r[:, None]
    assert_close(values, expected)
    assert_close(values[-1], torch.zeros(5, dtype=F64), rtol=0, atol=1e-15)


def test_cosine_cutoff_is_smooth_at_the_cutoff_and_zero_beyond():
    cutoff = CosineCutoff(3.0)
    r = torch.tensor([0.0, 1.5, 3.0 - 1e-6, 3.0, 3.5], dtype=F64, requires_grad=True)
    values = cutoff(r)
    (slope,) = torch.autograd.grad(values.sum(), r)
    assert_close(values[:2], torch.tensor([1.0, 0.5], dtype=F64))
    assert abs(values[2].item()) < 1e-11
    assert values[3].item() == 0.0
    assert values[4].item() == 0.0
    assert abs(slope[2].item()) < 1e-5
    assert slope[3].item() == 0.0
    assert slope[4].item() == 0.0


def test_reference_energies_recover_known_values():
    rng = np.random.default_rng(0)
    truth = np.zeros(119)
    truth[[1, 6, 8, 29]] = [-13.6, -1030.0, -2040.0, -45000.0]
    numbers_list = [rng.choice([1, 6, 8, 29], size=rng.integers(1, 12)) for _ in range(40)]
    energies = np.array([truth[numbers].sum() for numbers in numbers_list])
    reference = fit_reference_energies(numbers_list, energies)
    assert reference.shape == (119,)
    assert reference.dtype == F64
    assert_close(reference, torch.from_numpy(truth), rtol=1e-9, atol=1e-8)


def test_reference_energies_handle_collinear_compositions():
    # Every structure is (H2O)_n: only 2 e_H + e_O is determined; it must still be reproduced.
    numbers_list = [np.array([1, 1, 8] * n) for n in (1, 2, 3, 5)]
    energies = np.array([-14.2 * n for n in (1, 2, 3, 5)])
    reference = fit_reference_energies(numbers_list, energies).numpy()
    assert np.all(np.isfinite(reference))
    assert abs(2 * reference[1] + reference[8] - (-14.2)) < 1e-9
    assert np.count_nonzero(reference) == 2
