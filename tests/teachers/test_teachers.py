"""Teachers: golden values, stress convention, element checks, fresh labels, errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.stress import voigt_6_to_full_3x3_stress

from mlff_distiller.teachers import (
    LabellingError,
    Labels,
    Teacher,
    UnsupportedElementError,
    available_teachers,
    get_teacher,
)
from mlff_distiller.teachers.ase import ASECalculatorTeacher

# Golden values of REFERENCE.md (float32 models).
GOLDEN_TOL_EV = 1e-3
GOLDEN_BENZENE = {"7net-0": -76.1519, "chgnet": -75.3757, "emt": 4.2360}
GOLDEN_SI64 = {"7net-0": -343.5173, "chgnet": -338.0852}
#: Po, At, Rn, Fr, Ra: absent from MPtrj, the training set of SevenNet-0 and CHGNet.
MPTRJ_MISSING = {84, 85, 86, 87, 88}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def emt():
    return get_teacher("emt")


@pytest.fixture(scope="module")
def sevennet():
    pytest.importorskip("sevenn")
    return get_teacher("7net-0")


@pytest.fixture(scope="module")
def chgnet():
    pytest.importorskip("chgnet")
    return get_teacher("chgnet")


@pytest.fixture
def benzene():
    atoms = molecule("C6H6")
    atoms.center(vacuum=8.0)
    return atoms


@pytest.fixture
def si64():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=0)
    return atoms


def finite_difference_stress(
    calc: Calculator, atoms: Atoms, components, h: float = 1e-4
) -> dict[tuple[int, int], float]:
    """(1/V) dE/dε_ij by central differences of a symmetric strain, atoms scaled with the cell."""
    cell = atoms.get_cell().array
    result = {}
    for i, j in components:
        energies = []
        for sign in (1.0, -1.0):
            strain = np.eye(3)
            strain[i, j] += sign * h / 2
            strain[j, i] += sign * h / 2
            strained = atoms.copy()
            strained.set_cell(cell @ strain, scale_atoms=True)
            strained.calc = calc
            energies.append(strained.get_potential_energy())
        result[(i, j)] = (energies[0] - energies[1]) / (2 * h) / atoms.get_volume()
    return result


class ConstantCalculator(Calculator):
    """Returns a fixed energy and zero forces; NaN energy for atoms far from the origin."""

    implemented_properties = ("energy", "forces")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        far = np.abs(self.atoms.positions).max() > 100.0
        self.results = {
            "energy": float("nan") if far else 1.0,
            "forces": np.zeros((len(self.atoms), 3)),
        }


class FailingCalculator(Calculator):
    implemented_properties = ("energy", "forces")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        raise RuntimeError("model exploded")


# --------------------------------------------------------------------------- registry


def test_registry_lists_the_teachers():
    assert {"emt", "7net-0", "chgnet"} <= set(available_teachers())
    assert available_teachers() == sorted(available_teachers())


def test_unknown_teacher_names_the_available_ones():
    with pytest.raises(ValueError, match="unknown teacher 'orb-v9'") as info:
        get_teacher("orb-v9")
    for name in available_teachers():
        assert name in str(info.value)


def test_importing_the_package_does_not_import_heavy_teachers():
    code = (
        "import sys, mlff_distiller, mlff_distiller.teachers; "
        "print(sorted(m for m in ('sevenn', 'chgnet', 'torch') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


# --------------------------------------------------------------------------- EMT


def test_emt_benzene_golden(emt, benzene):
    (labels,) = emt.label([benzene])
    assert isinstance(labels, Labels)
    assert labels.energy == pytest.approx(GOLDEN_BENZENE["emt"], abs=GOLDEN_TOL_EV)
    assert labels.forces.shape == (12, 3)
    assert labels.forces.dtype == np.float64
    assert labels.stress is None  # not periodic
    assert benzene.calc is None  # labelled on a copy


def test_emt_is_a_teacher(emt):
    assert isinstance(emt, Teacher)
    assert emt.name == "emt"
    assert emt.version.startswith("ase-")
    assert emt.elements == frozenset({1, 6, 7, 8, 13, 28, 29, 46, 47, 78, 79})
    assert isinstance(emt.calculator(), EMT)


def test_emt_stress_matches_finite_difference_on_bulk_cu(emt):
    atoms = bulk("Cu", "fcc", a=3.55, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=1)
    atoms.set_cell(atoms.cell @ np.array([[1.0, 0.02, 0.0], [0.0, 0.99, 0.01], [0, 0, 1.01]]))
    (labels,) = emt.label([atoms])
    assert labels.stress.shape == (3, 3)
    np.testing.assert_allclose(labels.stress, labels.stress.T, atol=1e-12)
    components = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    fd = finite_difference_stress(EMT(), atoms, components, h=1e-5)
    for (i, j), value in fd.items():
        assert labels.stress[i, j] == pytest.approx(value, abs=1e-6), (i, j)


def test_compressed_cell_has_negative_stress(emt):
    (labels,) = emt.label([bulk("Cu", "fcc", a=3.40, cubic=True)])
    assert (np.diag(labels.stress) < 0).all()  # ASE sign: pressure = -trace/3 > 0


def test_labels_are_fresh_after_positions_change(emt, benzene):
    first = emt.label([benzene])[0]
    benzene.positions[0] += (0.1, 0.0, 0.0)
    second = emt.label([benzene])[0]
    assert first.energy != second.energy
    assert not np.allclose(first.forces, second.forces)
    # Same structure object list labelled together: one label each, no reuse.
    moved = benzene.copy()
    moved.positions[3] += (0.0, 0.1, 0.0)
    both = emt.label([benzene, moved])
    assert both[0].energy == pytest.approx(second.energy)
    assert both[1].energy != both[0].energy


def test_unsupported_element_names_structure_element_and_fix(emt, benzene):
    thiophene = molecule("C4H4S")
    thiophene.info["system_id"] = "thiophene"
    with pytest.raises(UnsupportedElementError) as info:
        emt.label([benzene, thiophene])
    message = str(info.value)
    assert "'thiophene'" in message
    assert "structure 1" in message
    assert "contains S" in message
    assert "Choose a teacher that supports" in message
    assert "remove" in message


def test_unsupported_element_without_system_id_names_index_and_formula(emt, benzene):
    h2s = molecule("SH2")
    with pytest.raises(UnsupportedElementError, match=r"structure 2 \(H2S\) contains S"):
        emt.label([benzene, benzene, h2s])


def test_unsupported_element_is_a_value_error():
    assert issubclass(UnsupportedElementError, ValueError)


def test_non_finite_energy_names_the_structure():
    teacher = ASECalculatorTeacher(ConstantCalculator(), "const", "test-0", elements=[1, 8])
    good = molecule("H2O")
    bad = molecule("H2O")
    bad.positions += 1000.0
    bad.info["system_id"] = "far-water"
    assert teacher.label([good])[0].energy == 1.0
    with pytest.raises(LabellingError, match=r"non-finite energy.*structure 1.*'far-water'"):
        teacher.label([good, bad])


def test_calculator_failure_names_the_structure():
    teacher = ASECalculatorTeacher(FailingCalculator(), "broken", "test-0", elements=[1, 8])
    water = molecule("H2O")
    water.info["system_id"] = "water"
    with pytest.raises(LabellingError, match=r"'broken' failed on structure 0.*'water'.*exploded"):
        teacher.label([water])


# --------------------------------------------------------------------------- SevenNet-0


def test_sevennet0_checkpoint_is_bundled():
    pytest.importorskip("sevenn")
    from mlff_distiller.teachers.sevenn import sevennet0_checkpoint_path

    path = sevennet0_checkpoint_path()
    assert path.is_file(), path
    assert path.stat().st_size > 1_000_000


@pytest.mark.slow
def test_sevennet_metadata(sevennet):
    assert isinstance(sevennet, Teacher)
    assert sevennet.name == "7net-0"
    assert sevennet.version.startswith("sevenn-0.13.0/SevenNet-0")
    assert sevennet.cutoff == 5.0
    assert len(sevennet.elements) == 89
    assert sevennet.elements == frozenset(range(1, 95)) - MPTRJ_MISSING


@pytest.mark.slow
def test_sevennet_benzene_golden(sevennet, benzene):
    (labels,) = sevennet.label([benzene])
    assert labels.energy == pytest.approx(GOLDEN_BENZENE["7net-0"], abs=GOLDEN_TOL_EV)
    assert labels.forces.shape == (12, 3)
    assert labels.stress is None
    np.testing.assert_allclose(labels.forces.sum(axis=0), 0.0, atol=1e-3)


@pytest.mark.slow
def test_sevennet_si64_golden_with_stress(sevennet, si64):
    (labels,) = sevennet.label([si64])
    assert labels.energy == pytest.approx(GOLDEN_SI64["7net-0"], abs=GOLDEN_TOL_EV)
    assert labels.forces.shape == (64, 3)
    assert labels.stress.shape == (3, 3)
    assert np.isfinite(labels.stress).all()
    np.testing.assert_allclose(labels.stress, labels.stress.T, atol=1e-6)


@pytest.mark.slow
def test_sevennet_stress_matches_finite_difference(sevennet, si64):
    (labels,) = sevennet.label([si64])
    fd = finite_difference_stress(sevennet.calculator(), si64, [(0, 0), (0, 2)], h=1e-3)
    for (i, j), value in fd.items():
        # float32 model: the difference quotient carries ~1e-4 eV/Å³ of noise.
        assert labels.stress[i, j] == pytest.approx(value, abs=5e-4), (i, j)


@pytest.mark.slow
def test_sevennet_rejects_polonium(sevennet):
    atoms = Atoms("Po2", positions=[(0, 0, 0), (0, 0, 3.0)])
    atoms.info["system_id"] = "Po-dimer"
    with pytest.raises(UnsupportedElementError, match=r"'Po-dimer'.*contains Po"):
        sevennet.label([atoms])


@pytest.mark.slow
def test_sevennet_labels_are_fresh(sevennet, benzene):
    first = sevennet.label([benzene])[0].energy
    benzene.positions[0] += (0.05, 0.0, 0.0)
    assert sevennet.label([benzene])[0].energy != first


# --------------------------------------------------------------------------- CHGNet


@pytest.mark.slow
def test_chgnet_metadata(chgnet, sevennet):
    assert isinstance(chgnet, Teacher)
    assert chgnet.name == "chgnet"
    assert chgnet.version == "chgnet-0.4.2/CHGNet-0.3.0"
    assert chgnet.cutoff == 6.0
    assert chgnet.elements == sevennet.elements  # both trained on MPtrj


@pytest.mark.slow
def test_chgnet_benzene_golden(chgnet, benzene):
    (labels,) = chgnet.label([benzene])
    assert labels.energy == pytest.approx(GOLDEN_BENZENE["chgnet"], abs=GOLDEN_TOL_EV)
    assert labels.forces.shape == (12, 3)
    assert labels.stress is None


@pytest.mark.slow
def test_chgnet_molecule_without_cell_is_not_periodic(chgnet, benzene):
    bare = molecule("C6H6")  # no cell at all
    tight = molecule("C6H6")
    tight.center(vacuum=1.0)  # a cell smaller than the cutoff, but pbc=False
    energies = [labels.energy for labels in chgnet.label([benzene, bare, tight])]
    assert energies[1] == pytest.approx(energies[0], abs=1e-5)
    assert energies[2] == pytest.approx(energies[0], abs=1e-5)


@pytest.mark.slow
def test_chgnet_si64_golden_with_stress(chgnet, si64):
    (labels,) = chgnet.label([si64])
    assert labels.energy == pytest.approx(GOLDEN_SI64["chgnet"], abs=GOLDEN_TOL_EV)
    assert labels.stress.shape == (3, 3)
    assert np.isfinite(labels.stress).all()
    np.testing.assert_allclose(labels.stress, labels.stress.T, atol=1e-6)


@pytest.mark.slow
def test_chgnet_stress_matches_finite_difference(chgnet, si64):
    (labels,) = chgnet.label([si64])
    components = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    fd = finite_difference_stress(chgnet.calculator(), si64, components, h=1e-3)
    for (i, j), value in fd.items():
        assert labels.stress[i, j] == pytest.approx(value, abs=5e-5), (i, j)
    # The calculator's own Voigt output agrees with the 3x3 labels.
    si64.calc = chgnet.calculator()
    np.testing.assert_allclose(
        voigt_6_to_full_3x3_stress(si64.get_stress()), labels.stress, atol=1e-6
    )


@pytest.mark.slow
def test_chgnet_labels_are_fresh(chgnet, benzene):
    first = chgnet.label([benzene])[0].energy
    benzene.positions[0] += (0.05, 0.0, 0.0)
    assert chgnet.label([benzene])[0].energy != first
