"""CHGNet 0.3.0 (``chgnet==0.4.2``, weights bundled in the wheel) as a teacher.

Two things differ from a plain ``CHGNetCalculator``:

- CHGNet treats every structure as periodic (it ignores ``pbc``) and fails on a zero cell.
  Non-periodic directions are therefore given vacuum wider than the atom-graph cutoff on a
  copy before the call, so molecules without a cell work and never see their images; the
  stress of a structure that is not fully periodic is dropped.
- Its prints ("CHGNet will run on cpu", the parameter count) and a per-call torch warning
  are silenced.

Stress: ``CHGNetCalculator`` multiplies the model's GPa stress by ``stress_weight =
ase.units.GPa`` (1/160.2), giving eV/Å³ with ASE's sign, which the tests check against a
finite difference of the energy under strain.

Batched labelling (:class:`CHGNetTeacher`) goes through CHGNet's own batch API
(``CHGNet.predict_graph`` on a list of graphs, one model call per batch) on the same boxed
structures and with the same unit conversions as the calculator, so its labels equal the
calculator's to float32 tolerance (tested). CHGNet has no TorchSim model here, so its MD runs
through ASE.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable

import numpy as np
from ase import Atoms
from ase.calculators.calculator import all_changes
from chgnet.model import CHGNet
from chgnet.model.dynamics import CHGNetCalculator

from mlff_distiller.teachers.base import DEFAULT_BATCH_ATOMS, Labels
from mlff_distiller.teachers.batched import BatchedTeacher

NAME = "chgnet"

#: Po, At, Rn, Fr, Ra: inside CHGNet's 94-element embedding but absent from its training
#: set (MPtrj); their embeddings are untrained, so they are not offered.
_UNTRAINED_ELEMENTS = frozenset({84, 85, 86, 87, 88})

#: Vacuum (Å) added beyond the atom-graph cutoff along non-periodic directions.
_VACUUM_MARGIN = 1.0


class BoxedCHGNetCalculator(CHGNetCalculator):
    """``CHGNetCalculator`` that respects ``pbc`` by padding non-periodic directions.

    Parameters
    ----------
    model
        A loaded CHGNet model.
    device
        Torch device name (``"cpu"``, ``"cuda"``, ...).
    """

    def __init__(self, model: CHGNet, device: str = "cpu") -> None:
        with contextlib.redirect_stdout(io.StringIO()):
            super().__init__(model, use_device=device)
        self.vacuum = float(model.graph_converter.atom_graph_cutoff) + _VACUUM_MARGIN

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
        task: str = "efsm",
    ) -> None:
        """Compute energy (eV), forces (eV/Å), magmoms and, if fully periodic, stress."""
        if atoms is None:
            atoms = self.atoms
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="Converting a tensor with requires_grad=True to a scalar"
            )
            if atoms.pbc.all():
                super().calculate(atoms, properties, system_changes, task=task)
                return
            super().calculate(self._boxed(atoms), properties, system_changes, task=task)
        # Remember the caller's structure (not the padded copy), so the cache check of the
        # next call compares like with like.
        self.atoms = atoms.copy()
        self.results.pop("stress", None)

    def _boxed(self, atoms: Atoms) -> Atoms:
        """A copy with at least ``self.vacuum`` Å of vacuum along each non-periodic axis."""
        boxed = atoms.copy()
        boxed.calc = None
        axes = tuple(int(i) for i in np.flatnonzero(~boxed.pbc))
        if not boxed.pbc.any():
            boxed.set_cell(np.zeros((3, 3)))
        boxed.center(vacuum=self.vacuum, axis=axes)
        boxed.pbc = True
        return boxed


class CHGNetTeacher(BatchedTeacher):
    """CHGNet labelling in batches through ``CHGNet.predict_graph``.

    Parameters
    ----------
    model
        A loaded CHGNet model.
    device
        Torch device name.
    name, version, elements, cutoff
        As for :class:`~mlff_distiller.teachers.ase.ASECalculatorTeacher`.
    batch_atoms
        Most atoms per model call (``None``: one structure at a time through the calculator).
    """

    def __init__(
        self,
        model: CHGNet,
        device: str,
        name: str,
        version: str,
        elements: Iterable[int],
        cutoff: float,
        batch_atoms: int | None = DEFAULT_BATCH_ATOMS,
    ) -> None:
        calc = BoxedCHGNetCalculator(model, device=device)
        super().__init__(calc, name, version, elements, cutoff, batch_atoms)
        self._model = model
        self._boxed = calc._boxed
        self._stress_weight = float(calc.stress_weight)

    def _predict_batch(self, structures: list[Atoms]) -> list[Labels]:
        from pymatgen.io.ase import AseAtomsAdaptor

        boxed = [atoms if atoms.pbc.all() else self._boxed(atoms) for atoms in structures]
        graphs = [self._model.graph_converter(AseAtomsAdaptor.get_structure(a)) for a in boxed]
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message="Converting a tensor with requires_grad=True to a scalar"
            )
            predictions = self._model.predict_graph(graphs, task="efs", batch_size=len(graphs))
        if isinstance(predictions, dict):  # a batch of one
            predictions = [predictions]
        labels = []
        for atoms, prediction in zip(structures, predictions, strict=True):
            # Energy per atom (an intensive model), as the calculator converts it.
            factor = len(atoms) if self._model.is_intensive else 1
            stress = None
            if atoms.pbc.all():
                stress = np.asarray(prediction["s"], dtype=np.float64) * self._stress_weight
            labels.append(
                Labels(
                    energy=float(prediction["e"]) * factor,
                    forces=np.asarray(prediction["f"], dtype=np.float64),
                    stress=stress,
                )
            )
        return labels


def chgnet_teacher(
    device: str = "cpu", batch_atoms: int | None = DEFAULT_BATCH_ATOMS
) -> CHGNetTeacher:
    """CHGNet (the package's default pretrained model, 0.3.0) on ``device``."""
    import chgnet

    with contextlib.redirect_stdout(io.StringIO()):
        model = CHGNet.load(verbose=False, use_device=device)
    n_elements = int(model.composition_model.max_num_elements)
    return CHGNetTeacher(
        model,
        device,
        name=NAME,
        version=f"chgnet-{chgnet.__version__}/CHGNet-{model.version}",
        elements=set(range(1, n_elements + 1)) - _UNTRAINED_ELEMENTS,
        cutoff=float(model.graph_converter.atom_graph_cutoff),
        batch_atoms=batch_atoms,
    )
