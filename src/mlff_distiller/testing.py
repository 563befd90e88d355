"""Tiny models, small structures and named tolerances for tests of students and integrations.

Shipped with the package (not hidden in ``tests/``) so that downstream code, e.g. a deploy
adapter or an outside model, can run the same physics checks.
"""

import ase
import ase.build
import numpy as np
import torch

from mlff_distiller.models.painn import PaiNN

SYMMETRY = {"rtol": 1e-10, "atol": 1e-10}
"""Float64 agreement for quantities equal up to round-off (invariances, batching, TorchScript)."""

FINITE_DIFFERENCE = {"rtol": 1e-6, "atol": 1e-8}
"""Float64 agreement of an autograd derivative with its central finite difference."""

FINITE_DIFFERENCE_STEP = 1e-5
"""Step of central finite differences in float64 (Å for positions, dimensionless for strain)."""

FLOAT32_VS_FLOAT64 = {"rtol": 1e-5, "atol": 1e-5}
"""Agreement of a float32 evaluation with the float64 one (eV, eV/Å, eV/Å³)."""


def tiny_painn(seed: int = 0, dtype: torch.dtype = torch.float64) -> PaiNN:
    """A small PaiNN with random weights and nonzero reference energies, scale and shift.

    The same ``seed`` gives the same weights for every ``dtype`` (they are drawn in float32
    and cast), so float32 and float64 models can be compared. The global RNG is untouched.

    Parameters
    ----------
    seed
        Seed of the weights.
    dtype
        Floating-point dtype of parameters and buffers.

    Returns
    -------
    PaiNN
        16 features, 2 blocks, 8 radial functions, 4 Å cutoff.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = PaiNN(n_features=16, n_blocks=2, n_rbf=8, cutoff=4.0)
        model.reference_energies.uniform_(-5.0, -1.0)
        model.scale.fill_(1.7)
        model.shift.fill_(-0.3)
    return model.to(dtype)


def example_structures(seed: int = 0) -> dict[str, ase.Atoms]:
    """Small structures without symmetry, so that forces and stress are generic.

    Parameters
    ----------
    seed
        Seed of the rattle and of the cell distortion.

    Returns
    -------
    dict[str, ase.Atoms]
        ``"ethanol"`` (molecule, no cell), ``"si"`` (diamond primitive cell, 2 atoms, cell and
        positions distorted), ``"cu"`` (fcc primitive cell, 1 atom, cell distorted).
    """
    rng = np.random.default_rng(seed)
    ethanol = ase.build.molecule("CH3CH2OH")
    ethanol.rattle(0.05, seed=seed)

    si = ase.build.bulk("Si", "diamond", a=5.43)
    si.set_cell(si.cell[:] @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))), scale_atoms=True)
    si.rattle(0.05, seed=seed + 1)

    cu = ase.build.bulk("Cu", "fcc", a=3.61)
    cu.set_cell(cu.cell[:] @ (np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))), scale_atoms=True)
    return {"ethanol": ethanol, "si": si, "cu": cu}


def finite_difference_set(h_force: float, h_strain: float) -> list[ase.Atoms]:
    """Structures to check a teacher's forces and stress against its energies.

    Parameters
    ----------
    h_force
        Displacement (Å) of atom 0 of the water molecule along z, both ways.
    h_strain
        Symmetric xy strain of the copper cell (atoms scaled with it), both ways.

    Returns
    -------
    list[ase.Atoms]
        ``[water, copper, methane, water +h, water -h, copper +strain, copper -strain]``:
        rattled water (no cell), rattled cubic fcc copper (4 atoms), methane, then the
        displaced and sheared copies. ``-(E[3] - E[4]) / (2 h_force)`` is the z force on
        atom 0 of water; ``(E[5] - E[6]) / (2 h_strain) / V`` is copper's xy stress.
    """
    water = ase.build.molecule("H2O")
    water.rattle(0.05, seed=1)
    copper = ase.build.bulk("Cu", "fcc", a=3.61, cubic=True)
    copper.rattle(0.05, seed=2)
    displaced = [water.copy(), water.copy()]
    displaced[0].positions[0, 2] += h_force
    displaced[1].positions[0, 2] -= h_force
    sheared = []
    for sign in (1.0, -1.0):
        strain = np.eye(3)
        strain[0, 1] += sign * h_strain / 2
        strain[1, 0] += sign * h_strain / 2
        copy = copper.copy()
        copy.set_cell(copper.cell.array @ strain, scale_atoms=True)
        sheared.append(copy)
    return [water, copper, ase.build.molecule("CH4"), *displaced, *sheared]
