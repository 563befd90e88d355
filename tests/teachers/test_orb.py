"""Orb teacher from a local weights file: random weights of a real Orb architecture.

Nothing can be downloaded here, so the network of ``orb-v3-conservative-inf-omat`` is built
with seeded random weights and saved to a temporary file, which the registry loads exactly as
it loads published weights. The physics checks (forces and stress are energy derivatives,
batched labels equal one-by-one labels) hold for any weights.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from mlff_distiller.config import TeacherConfig
from mlff_distiller.teachers import get_teacher
from mlff_distiller.testing import finite_difference_set

pytest.importorskip("orb_models")

ARCHITECTURE = "orb-v3-conservative-inf-omat"
#: Float32 model: relative tolerance of a batched label against the one-by-one label.
BATCH_RTOL = 1e-4


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A state-dict file of ``ARCHITECTURE`` with seeded random weights."""
    from orb_models.forcefield.pretrained import orb_v3_conservative_architecture

    torch.manual_seed(0)
    model = orb_v3_conservative_architecture()
    path = tmp_path_factory.mktemp("orb") / "orb-random.ckpt"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def orb(weights):
    return get_teacher("orb", "cpu", batch_atoms=256, weights=weights, model=ARCHITECTURE)


#: Finite-difference steps: Å for a force, strain for a stress component.
H_FORCE, H_STRAIN = 1e-2, 1e-3


@pytest.fixture(scope="module")
def structures():
    """Water, copper, methane, then water displaced and copper sheared both ways."""
    return finite_difference_set(H_FORCE, H_STRAIN)


@pytest.fixture(scope="module")
def batched(orb, structures):
    """Labels of ``structures`` from one batched model call."""
    return orb.label(structures)


def test_metadata_names_architecture_and_weights_hash(orb, weights):
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert orb.name == "orb"
    assert orb.version.startswith("orb-models-0.5.5/orb-v3-conservative-inf-omat/sha256:")
    assert orb.version.endswith(sha[:12])
    assert orb.cutoff == 6.0
    assert {1, 8, 29, 94} <= orb.elements


def test_labels_molecule_and_cell(batched):
    water, copper = batched[:2]
    assert np.isfinite(water.energy)
    assert np.isfinite(copper.energy)
    assert water.forces.shape == (3, 3)
    assert copper.forces.shape == (4, 3)
    assert water.stress is None
    assert copper.stress.shape == (3, 3)
    np.testing.assert_allclose(copper.stress, copper.stress.T, atol=1e-6)
    assert np.abs(water.forces).max() > 0  # random weights still give a non-trivial surface


def test_forces_are_minus_energy_gradient(batched):
    water, up, down = batched[0], batched[3], batched[4]
    fd = -(up.energy - down.energy) / (2 * H_FORCE)
    assert water.forces[0, 2] == pytest.approx(fd, rel=2e-2, abs=2e-3)


def test_stress_is_energy_derivative_under_strain(batched, structures):
    copper, up, down = batched[1], batched[5], batched[6]
    fd = (up.energy - down.energy) / (2 * H_STRAIN) / structures[1].get_volume()
    assert copper.stress[0, 1] == pytest.approx(fd, rel=2e-2, abs=1e-4)


def test_batched_labels_equal_one_by_one(orb, batched, structures):
    orb.batch_atoms = None  # Orb's own ASE calculator, one structure at a time
    try:
        single = orb.label(structures[:2])
    finally:
        orb.batch_atoms = 256
    for b, s in zip(batched, single, strict=False):
        assert b.energy == pytest.approx(s.energy, rel=BATCH_RTOL, abs=1e-4)
        np.testing.assert_allclose(b.forces, s.forces, rtol=BATCH_RTOL, atol=1e-4)
    np.testing.assert_allclose(batched[1].stress, single[1].stress, rtol=BATCH_RTOL, atol=1e-5)


def test_loading_leaves_torch_default_dtype_alone(orb):
    assert torch.get_default_dtype() == torch.float32


def test_missing_weights_file_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope.ckpt"
    with pytest.raises(FileNotFoundError, match=r"weights file of teacher 'orb' not found.*nope"):
        get_teacher("orb", weights=missing, model=ARCHITECTURE)
    with pytest.raises(ValueError, match=r"needs teacher\.weights"):
        get_teacher("orb", model=ARCHITECTURE)
    # A config naming an absent file still loads (a run evaluated on another machine); the
    # file is checked when the teacher is built.
    assert TeacherConfig(name="orb", weights=missing, model=ARCHITECTURE).weights == missing


def test_unknown_or_mismatched_architecture_is_a_clear_error(weights):
    with pytest.raises(ValueError, match=r"unknown Orb architecture.*orb-v3-direct-20-omat"):
        get_teacher("orb", weights=weights, model="orb-v9")
    with pytest.raises(ValueError, match="does not hold weights of Orb architecture"):
        get_teacher("orb", weights=weights, model="orb-v3-direct-20-omat")
    with pytest.raises(ValueError, match=r"needs teacher\.model"):
        TeacherConfig(name="orb", weights=weights)


def test_bundled_teachers_refuse_a_weights_file(weights):
    with pytest.raises(ValueError, match="bundled with its package"):
        get_teacher("7net-0", weights=weights)
    with pytest.raises(ValueError, match="bundled with its package"):
        TeacherConfig(name="emt", weights=weights)
