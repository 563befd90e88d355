"""MACE teacher from a local model file: a small MACE with random weights.

mace-torch pins ``e3nn==0.4.4`` and sevenn 0.13 needs ``e3nn>=0.5``, so the two cannot share an
environment: these tests run where the ``[mace]`` extra is installed (``make test`` runs them in
its own ``.venv-mace``) and skip elsewhere.
Nothing can be downloaded here, so a small MACE (float64, random weights) is built, saved whole
with ``torch.save`` as published ``.model`` files are, and loaded through the registry.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from ase.build import molecule

from mlff_distiller.teachers import get_teacher
from mlff_distiller.testing import finite_difference_set

pytest.importorskip(
    "mace", reason="mace-torch is not installed (the [mace] extra, which excludes sevenn)"
)

#: Elements of the small model: H, C, O, Cu.
ELEMENTS = [1, 6, 8, 29]
#: Float64 model: relative tolerance of a batched label against the one-by-one label.
BATCH_RTOL = 1e-8


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A whole small float64 MACE with seeded random weights, saved with ``torch.save``."""
    from e3nn import o3
    from mace import modules
    from mace.tools import torch_tools

    torch.manual_seed(0)
    interaction = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    with torch_tools.default_dtype("float64"):
        model = modules.MACE(
            r_max=4.5,
            num_bessel=6,
            num_polynomial_cutoff=5,
            max_ell=2,
            interaction_cls=interaction,
            interaction_cls_first=interaction,
            num_interactions=2,
            num_elements=len(ELEMENTS),
            hidden_irreps=o3.Irreps("8x0e + 8x1o"),
            MLP_irreps=o3.Irreps("8x0e"),
            gate=torch.nn.functional.silu,
            atomic_energies=np.array([-13.6, -1030.0, -2040.0, -45000.0]),
            avg_num_neighbors=8.0,
            atomic_numbers=ELEMENTS,
            correlation=2,
        )
    path = tmp_path_factory.mktemp("mace") / "mace-random.model"
    torch.save(model, path)
    return path


@pytest.fixture(scope="module")
def mace(weights):
    return get_teacher("mace", "cpu", batch_atoms=256, weights=weights)


#: Finite-difference steps: Å for a force, strain for a stress component.
H_FORCE, H_STRAIN = 1e-4, 1e-5


@pytest.fixture(scope="module")
def structures():
    """Water, copper, methane, then water displaced and copper sheared both ways."""
    return finite_difference_set(H_FORCE, H_STRAIN)


@pytest.fixture(scope="module")
def batched(mace, structures):
    """Labels of ``structures`` from one batched model call."""
    return mace.label(structures)


def test_metadata_names_model_and_weights_hash(mace, weights):
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert mace.name == "mace"
    assert mace.version.startswith("mace-torch-")
    assert mace.version.endswith(f"/MACE/sha256:{sha[:12]}")
    assert mace.cutoff == 4.5
    assert mace.elements == frozenset(ELEMENTS)


def test_labels_molecule_and_cell(batched):
    water, copper = batched[:2]
    assert np.isfinite(water.energy)
    assert np.isfinite(copper.energy)
    assert water.forces.shape == (3, 3)
    assert copper.forces.shape == (4, 3)
    assert water.stress is None
    assert copper.stress.shape == (3, 3)
    np.testing.assert_allclose(copper.stress, copper.stress.T, atol=1e-10)
    assert np.abs(water.forces).max() > 0  # random weights still give a non-trivial surface


def test_forces_are_minus_energy_gradient(batched):
    water, up, down = batched[0], batched[3], batched[4]
    fd = -(up.energy - down.energy) / (2 * H_FORCE)
    assert water.forces[0, 2] == pytest.approx(fd, rel=1e-5, abs=1e-7)


def test_stress_is_energy_derivative_under_strain(batched, structures):
    copper, up, down = batched[1], batched[5], batched[6]
    fd = (up.energy - down.energy) / (2 * H_STRAIN) / structures[1].get_volume()
    assert copper.stress[0, 1] == pytest.approx(fd, rel=1e-4, abs=1e-8)


def test_batched_labels_equal_one_by_one(mace, batched, structures):
    mace.batch_atoms = None  # MACE's own ASE calculator, one structure at a time
    try:
        single = mace.label(structures)
    finally:
        mace.batch_atoms = 256
    for b, s in zip(batched, single, strict=True):
        assert b.energy == pytest.approx(s.energy, rel=BATCH_RTOL)
        np.testing.assert_allclose(b.forces, s.forces, rtol=BATCH_RTOL, atol=1e-10)
    np.testing.assert_allclose(batched[1].stress, single[1].stress, rtol=BATCH_RTOL, atol=1e-12)


def test_unsupported_element_is_refused(mace):
    from mlff_distiller.teachers import UnsupportedElementError

    with pytest.raises(UnsupportedElementError, match="contains N"):
        mace.label([molecule("NH3")])


def test_missing_or_wrong_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"weights file of teacher 'mace' not found"):
        get_teacher("mace", weights=tmp_path / "nope.model")
    state_dict = tmp_path / "state.pt"
    torch.save({"w": torch.zeros(2)}, state_dict)
    with pytest.raises(ValueError, match=r"not a MACE model.*not a state dict"):
        get_teacher("mace", weights=state_dict)
