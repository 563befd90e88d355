"""Batched labelling: the same labels as one structure at a time; the contract of label()."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT

from mlff_distiller.config import TeacherConfig
from mlff_distiller.teachers import LabellingError, Labels, UnsupportedElementError, get_teacher
from mlff_distiller.teachers.base import DEFAULT_BATCH_ATOMS, TorchSimTeacher
from mlff_distiller.teachers.batched import BatchedTeacher, split_labels, stack_structures

#: Batched vs one-by-one labels of a float32 model: energies of ~100 eV agree to a few float32
#: ulps; forces and stresses to round-off of their sums.
ENERGY_ATOL_EV = 1e-4
FORCE_ATOL = 1e-4
STRESS_ATOL = 1e-6


def mixed_structures() -> list[Atoms]:
    """Molecules (with and without a box) and small crystals, rattled: one mixed batch."""
    ethanol = molecule("CH3CH2OH")
    water = molecule("H2O")
    water.center(vacuum=5.0)  # a box, but not periodic
    methane = molecule("CH4")
    si = bulk("Si", "diamond", a=5.43, cubic=True)
    cu = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    structures = [ethanol, si, water, cu, methane]
    for k, atoms in enumerate(structures):
        atoms.rattle(0.05, seed=k)
        atoms.info["system_id"] = f"s{k}"
    return structures


def assert_same_labels(batched: list[Labels], single: list[Labels], structures: list[Atoms]):
    assert len(batched) == len(single) == len(structures)
    for atoms, b, s in zip(structures, batched, single, strict=True):
        assert b.energy == pytest.approx(s.energy, abs=ENERGY_ATOL_EV)
        assert b.forces.shape == (len(atoms), 3)
        assert b.forces.dtype == np.float64
        np.testing.assert_allclose(b.forces, s.forces, atol=FORCE_ATOL)
        if atoms.pbc.all():
            assert b.stress.shape == (3, 3)
            np.testing.assert_allclose(b.stress, s.stress, atol=STRESS_ATOL)
        else:
            assert b.stress is None
            assert s.stress is None


# --------------------------------------------------------------------------- the contract


class LoopTeacher(BatchedTeacher):
    """A batched teacher whose one "model call" labels each structure with its calculator.

    The real labelling path of ``BatchedTeacher.label`` (budget, checks, fallback) on toy
    calculators that run in milliseconds; ``info["breaks_batches"]`` makes a batch call fail.
    """

    def __init__(self, calc: Calculator, batch_atoms: int | None) -> None:
        super().__init__(calc, "loop", "test-0", [1, 6, 8, 29], batch_atoms=batch_atoms)
        self.batches: list[list[str]] = []

    def _predict_batch(self, structures):
        self.batches.append([atoms.info["system_id"] for atoms in structures])
        if any(atoms.info.get("breaks_batches") for atoms in structures):
            raise RuntimeError("out of memory")
        out = []
        for atoms in structures:
            work = atoms.copy()
            work.calc = self.calculator()
            out.append(Labels(work.get_potential_energy(), work.get_forces()))
        return out


class NaNFarAway(Calculator):
    """Energy 1 eV and zero forces; NaN energy for a structure far from the origin."""

    implemented_properties = ("energy", "forces")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        far = np.abs(self.atoms.positions).max() > 100.0
        self.results = {
            "energy": float("nan") if far else 1.0,
            "forces": np.zeros((len(self.atoms), 3)),
        }


class FailsOnMethane(Calculator):
    implemented_properties = ("energy", "forces")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if self.atoms.get_chemical_formula() == "CH4":
            raise RuntimeError("model exploded")
        self.results = {"energy": 0.0, "forces": np.zeros((len(self.atoms), 3))}


def molecules(*names: str) -> list[Atoms]:
    structures = []
    for k, name in enumerate(names):
        atoms = molecule(name)
        atoms.rattle(0.02, seed=k)
        atoms.info["system_id"] = f"{name}-{k}"
        structures.append(atoms)
    return structures


def test_default_budget_is_the_config_default():
    assert TeacherConfig().batch_atoms == DEFAULT_BATCH_ATOMS


def test_batches_are_consecutive_and_within_the_atom_budget():
    structures = molecules("H2O", "CH4", "H2O", "C6H6", "H2O")  # 3, 5, 3, 12, 3 atoms
    teacher = LoopTeacher(EMT(), batch_atoms=10)
    labels = teacher.label(structures)
    # C6H6 (12 atoms) is over budget: it goes alone.
    assert teacher.batches == [["H2O-0", "CH4-1"], ["H2O-2"], ["C6H6-3"], ["H2O-4"]]
    teacher.batch_atoms = None
    assert_same_labels(labels, teacher.label(structures), structures)
    assert len(teacher.batches) == 4  # one by one: no batch call


def test_a_batch_that_fails_although_its_structures_do_not_says_to_lower_the_budget():
    structures = molecules("H2O", "CH4", "C2H6")
    structures[1].info["breaks_batches"] = True  # e.g. the device runs out of memory
    teacher = LoopTeacher(EMT(), batch_atoms=100)
    with pytest.raises(
        LabellingError,
        match=r"structures 0 to 2 \(16 atoms\).*out of memory.*"
        r"lower teacher.batch_atoms \(now 100\)",
    ):
        teacher.label(structures)
    assert len(teacher.batches) == 1


def test_a_failed_batch_names_the_structure_that_fails_alone():
    structures = molecules("H2O", "CH4", "C2H6")
    structures[1].info["breaks_batches"] = True
    teacher = LoopTeacher(FailsOnMethane(), batch_atoms=100)
    with pytest.raises(LabellingError, match=r"'loop' failed on structure 1 .*'CH4-1'.*exploded"):
        teacher.label(structures)


def test_non_finite_batched_label_names_the_structure():
    structures = molecules("H2O", "CH4", "H2O")
    structures[2].positions += 1000.0
    teacher = LoopTeacher(NaNFarAway(), batch_atoms=100)
    with pytest.raises(LabellingError, match=r"non-finite energy.*structure 2 .*'H2O-2'"):
        teacher.label(structures)
    assert len(teacher.batches) == 1  # found in the batch's labels


def test_elements_are_checked_before_any_batch():
    structures = [*molecules("H2O"), molecule("SH2")]
    teacher = LoopTeacher(EMT(), batch_atoms=100)
    with pytest.raises(UnsupportedElementError, match=r"structure 1 \(H2S\) contains S"):
        teacher.label(structures)
    assert teacher.batches == []


def test_batch_atoms_must_be_positive():
    with pytest.raises(ValueError, match="batch_atoms must be at least 1"):
        LoopTeacher(EMT(), batch_atoms=0)


def test_stack_and_split_round_trip():
    structures = mixed_structures()
    positions, numbers, cell, pbc, ptr = stack_structures(structures)
    assert positions.dtype == torch.float64
    assert numbers.dtype == torch.int64
    assert ptr.tolist() == np.cumsum([0] + [len(a) for a in structures]).tolist()
    assert pbc.shape == (5, 3)
    assert cell.shape == (5, 3, 3)
    energy = torch.arange(5, dtype=torch.float32)
    stress = torch.randn(5, 3, 3)
    labels = split_labels(structures, energy, positions * 2, stress)
    for b, (atoms, lab) in enumerate(zip(structures, labels, strict=True)):
        assert lab.energy == b
        np.testing.assert_allclose(lab.forces, atoms.positions * 2)
        assert (lab.stress is None) == (not atoms.pbc.all())


# --------------------------------------------------------------------------- SevenNet-0


@pytest.mark.slow
def test_sevennet_batched_labels_equal_one_by_one(sevennet0):
    structures = mixed_structures()
    assert isinstance(sevennet0, TorchSimTeacher)
    assert sevennet0.batch_atoms == DEFAULT_BATCH_ATOMS  # all five in one batch
    batched = sevennet0.label(structures)
    single = [sevennet0._label_one(atoms, k) for k, atoms in enumerate(structures)]
    assert_same_labels(batched, single, structures)
    # In batches of a few atoms each (Si8 and the Cu pair alone): the same again.
    sevennet0.batch_atoms = 10
    try:
        assert_same_labels(sevennet0.label(structures), single, structures)
    finally:
        sevennet0.batch_atoms = DEFAULT_BATCH_ATOMS


@pytest.mark.slow
def test_sevennet_torchsim_model_equals_labels(sevennet0):
    ts = pytest.importorskip("torch_sim")
    model = sevennet0.torchsim_model()
    assert model.dtype == torch.float64
    structures = mixed_structures()
    labels = sevennet0.label(structures)
    for group in ([0, 2, 4], [1, 3]):  # a TorchSim state shares one pbc
        members = [structures[k] for k in group]
        out = model(ts.io.atoms_to_state(members, model.device, model.dtype))
        start = 0
        for b, k in enumerate(group):
            n = len(structures[k])
            # Other batch mates: float32 sums in another order.
            assert float(out["energy"][b]) == pytest.approx(labels[k].energy, abs=ENERGY_ATOL_EV)
            forces = out["forces"][start : start + n]
            np.testing.assert_allclose(forces, labels[k].forces, atol=FORCE_ATOL)
            if structures[k].pbc.all():
                np.testing.assert_allclose(out["stress"][b], labels[k].stress, atol=STRESS_ATOL)
            else:
                assert torch.isnan(out["stress"][b]).all()
            start += n


@pytest.mark.slow
def test_sevennet_torchsim_model_rejects_unsupported_elements(sevennet0):
    ts = pytest.importorskip("torch_sim")
    model = sevennet0.torchsim_model()
    polonium = Atoms("Po2", positions=[(0, 0, 0), (0, 0, 3.0)])
    with pytest.raises(ValueError, match=r"holds Po, which teacher '7net-0' does not support"):
        model(ts.io.atoms_to_state([polonium], model.device, model.dtype))


@pytest.mark.slow
def test_one_by_one_teacher_offers_no_torchsim_model(sevennet0):
    sevennet0.batch_atoms = None
    try:
        assert sevennet0.torchsim_model() is None
    finally:
        sevennet0.batch_atoms = DEFAULT_BATCH_ATOMS


# --------------------------------------------------------------------------- CHGNet


@pytest.mark.slow
def test_chgnet_batched_labels_equal_one_by_one():
    pytest.importorskip("chgnet")
    teacher = get_teacher("chgnet", batch_atoms=DEFAULT_BATCH_ATOMS)
    structures = mixed_structures()
    batched = teacher.label(structures)
    teacher.batch_atoms = None
    assert_same_labels(batched, teacher.label(structures), structures)
