"""The exported student: one self-contained file that runs without this package.

``mlff-distill export RUN`` writes ``RUN/model/student.torchscript.pt``: the weights, the
code of the model and of the force and stress derivation (the very functions of
:mod:`mlff_distiller.models.predict`, compiled), and ``metadata.json`` (cutoff, elements,
units, dtype, teacher, versions, inputs). It loads with plain :func:`torch.jit.load`, e.g. in
an MD engine or a process where ``mlff_distiller`` is not installed.

Calling it with only torch and vesin (one structure; stack several as in
:func:`mlff_distiller.graph.batch_graphs`)::

    import json
    import numpy as np
    import torch
    import vesin

    extra = {"metadata.json": ""}
    model = torch.jit.load("student.torchscript.pt", _extra_files=extra)
    meta = json.loads(extra["metadata.json"])

    # positions (N, 3) Å, numbers (N,), cell (3, 3) Å as rows (zeros for a molecule), pbc (3,)
    i, j, S = vesin.NeighborList(cutoff=meta["cutoff"], full_list=True).compute(
        points=positions, box=cell, periodic=pbc, quantities="ijS"
    )
    out = model(
        torch.tensor(positions),                           # (N, 3)
        torch.tensor(numbers, dtype=torch.long),           # (N,)
        torch.tensor(cell).unsqueeze(0),                   # (B, 3, 3)
        torch.tensor(pbc).unsqueeze(0),                    # (B, 3)
        torch.tensor(np.stack([i, j]), dtype=torch.long),  # (2, E)
        torch.tensor(S, dtype=torch.float64),              # (E, 3)
        torch.zeros(len(numbers), dtype=torch.long),       # (N,) structure of each atom
        True,                                              # compute_stress
    )
    out["energy"], out["forces"], out["stress"]            # (B,) eV, (N, 3) eV/Å, (B, 3, 3) eV/Å³

Floating-point inputs are cast to the student's dtype (``meta["dtype"]``) and outputs come
in it. Stress follows ASE's sign and is NaN for a structure whose cell has zero volume. The
call sets grad mode itself (so ``torch.no_grad()`` around it is fine) but cannot run under
``torch.inference_mode()``. A structure with an element the student never saw is an error.

``mlff-distill export RUN --format aoti`` writes ``RUN/model/student.aoti.pt2`` instead:
the same computation compiled ahead of time for the CPU by AOTInductor (faster, especially
for small structures; about a minute to build; needs the torch version that built it). It
is loaded with ``torch._inductor.aoti_load_package(path)`` and its metadata with
``.get_metadata()["metadata.json"]``; it takes the first seven arguments above in exactly
the student's dtype, always returns stress, and does not check elements.
"""

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import ase.data
import torch
from ase.build import bulk
from torch import nn

import mlff_distiller
from mlff_distiller.atomic import atomic_path
from mlff_distiller.deploy.artefact import UNITS, load_student, student_path
from mlff_distiller.graph import AtomicGraph, batch_graphs, from_atoms
from mlff_distiller.keys import TEACHER_NAME, TEACHER_VERSION
from mlff_distiller.models import PaiNN
from mlff_distiller.models.predict import (
    derivatives,
    strain,
    sum_per_structure,
    zero_displacement,
)


class FormatSpec(NamedTuple):
    """An export format: the tag in its ``metadata.json`` and the end of its file name."""

    tag: str
    suffix: str


FORMATS = {
    "torchscript": FormatSpec("mlff-distiller-torchscript/1", ".torchscript.pt"),
    "aoti": FormatSpec("mlff-distiller-aoti/1", ".aoti.pt2"),
}
METADATA_FILE = "metadata.json"

INPUTS = {
    "positions": "(N, 3) float, Å: Cartesian positions of all atoms of all structures",
    "numbers": "(N,) int64: atomic numbers",
    "cell": "(B, 3, 3) float, Å: cell vectors as rows; zeros for a molecule",
    "pbc": "(B, 3) bool: periodicity along each cell vector",
    "edge_index": "(2, E) int64: [i, j], atom i sees neighbour j; full list (both directions), "
    "atom indices over the whole batch",
    "cell_shifts": "(E, 3) float: integer image of j, r_ij = x[j] - x[i] + shift @ cell",
    "batch": "(N,) int64: index of the structure of each atom",
    "compute_stress": "bool: also return stress",
}
OUTPUTS = {
    "energy": "(B,) eV: total energy of each structure",
    "forces": "(N, 3) eV/Å",
    "stress": "(B, 3, 3) eV/Å³, ASE sign (NaN for a cell of zero volume); only if asked",
}


class ExportedPotential(nn.Module):
    """A student behind plain tensors: energies, forces and stress in one call.

    Parameters
    ----------
    model
        The student; its dtype is the dtype of every computation.
    elements
        Atomic numbers the student was trained on; others are refused. None accepts all.

    Attributes
    ----------
    cutoff : float
        Neighbour cutoff in Å: neighbour lists must hold every pair closer than this.
    known_elements : torch.Tensor
        Buffer (max_z + 1,), bool: which atomic numbers are accepted.
    """

    known_elements: torch.Tensor

    def __init__(self, model: PaiNN, elements: list[int] | None = None) -> None:
        super().__init__()
        self.model = model.eval()
        self.cutoff = float(model.cutoff)
        max_z = int(model.hyperparameters["max_z"])
        known = torch.zeros(max_z + 1, dtype=torch.bool)
        known[list(range(max_z + 1)) if elements is None else list(elements)] = True
        self.register_buffer("known_elements", known)

    def forward(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        edge_index: torch.Tensor,
        cell_shifts: torch.Tensor,
        batch: torch.Tensor,
        compute_stress: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Energies, forces and, if asked, stress (shapes and units in :data:`INPUTS`).

        The TorchScript entry point: it refuses unknown elements and enables grad mode
        around :meth:`evaluate`, whatever the caller's mode.

        Returns
        -------
        dict[str, torch.Tensor]
            ``energy`` (B,) in eV, ``forces`` (N, 3) in eV/Å and, with ``compute_stress``,
            ``stress`` (B, 3, 3) in eV/Å³; detached, in the student's dtype.
        """
        n_known = self.known_elements.shape[0]
        in_range = (numbers >= 0) & (numbers < n_known)
        known = self.known_elements.index_select(0, numbers.clamp(0, n_known - 1))
        unknown = ~(in_range & known)
        if bool(unknown.any()):
            unseen: list[int] = torch.unique(numbers[unknown]).tolist()
            raise ValueError(
                f"atomic number(s) {unseen} in the structure: the student was never trained "
                "on them (metadata.json lists its elements)"
            )
        # TorchScript has no torch.enable_grad(): set the mode by hand and restore it, so
        # that a caller's torch.no_grad() does not silently remove the forces.
        grad_enabled = torch.is_grad_enabled()
        torch.set_grad_enabled(True)
        out = self.evaluate(
            positions, numbers, cell, pbc, edge_index, cell_shifts, batch, compute_stress
        )
        torch.set_grad_enabled(grad_enabled)
        return out

    def evaluate(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        cell: torch.Tensor,
        pbc: torch.Tensor,
        edge_index: torch.Tensor,
        cell_shifts: torch.Tensor,
        batch: torch.Tensor,
        compute_stress: bool,
    ) -> dict[str, torch.Tensor]:
        """:meth:`forward` without the element check, under the caller's grad mode.

        No data-dependent control flow, so that it can also be traced for AOTInductor.
        """
        dtype = self.model.scale.dtype
        n_structures = cell.shape[0]
        # Atoms of a structure are contiguous, so ptr[b] is the first atom with batch >= b.
        ptr = torch.searchsorted(batch, torch.arange(n_structures + 1, device=batch.device))
        cell = cell.to(dtype)
        positions = positions.to(dtype).detach().requires_grad_(True)
        # Always strained, stress or not: the model then sees the same requires_grad flags on
        # every call, so TorchScript's profiling executor cannot specialise on a pattern
        # that a later call breaks (see mlff_distiller.models.predict._per_atom_energies).
        displacement = zero_displacement(n_structures, positions)
        strained_positions, strained_cell = strain(positions, cell, batch, displacement)
        graph = AtomicGraph(
            strained_positions,
            numbers,
            strained_cell,
            pbc,
            edge_index,
            cell_shifts.to(dtype),
            batch,
            ptr,
        )
        energy = sum_per_structure(self.model(graph), batch, n_structures)
        forces, stress = derivatives(
            energy, positions, displacement if compute_stress else None, cell, True, False
        )
        out = {"energy": energy.detach()}
        if forces is not None:
            out["forces"] = forces
        if stress is not None:
            out["stress"] = stress
        return out


def export_metadata(model: PaiNN, metadata: dict[str, Any], format: str) -> dict[str, Any]:
    """The ``metadata.json`` of an exported student (plain JSON data).

    Parameters
    ----------
    model
        The student.
    metadata
        Its metadata from :func:`~mlff_distiller.deploy.artefact.load_student`; kept whole
        under ``student_metadata``.
    format
        A key of :data:`FORMATS`.
    """
    elements = metadata.get("elements")
    dtype = next(model.parameters()).dtype
    inputs, outputs = dict(INPUTS), dict(OUTPUTS)
    if format == "aoti":
        del inputs["compute_stress"]
        outputs["stress"] = outputs["stress"].replace("; only if asked", "")
    return {
        "format": FORMATS[format].tag,
        "architecture": type(model).__name__,
        "hyperparameters": dict(model.hyperparameters),
        "cutoff": float(model.cutoff),
        "elements": None
        if elements is None
        else {
            "numbers": [int(z) for z in elements],
            "symbols": [ase.data.chemical_symbols[int(z)] for z in elements],
        },
        "units": UNITS,
        "dtype": str(dtype).removeprefix("torch."),
        "device": "cpu" if format == "aoti" else "any (torch.jit.load's map_location)",
        "teacher": {
            "name": metadata.get(TEACHER_NAME),
            "version": metadata.get(TEACHER_VERSION),
        },
        "mlff_distiller_version": mlff_distiller.__version__,
        "torch_version": torch.__version__,
        "inputs": inputs,
        "outputs": outputs,
        "student_metadata": metadata,
    }


def script_student(model: PaiNN, metadata: dict[str, Any]) -> torch.jit.ScriptModule:
    """Compile the student and its force and stress derivation with TorchScript."""
    with _torchscript_is_deprecated():
        return torch.jit.script(ExportedPotential(model, metadata.get("elements")))


def save_torchscript(path: str | Path, model: PaiNN, metadata: dict[str, Any]) -> None:
    """Write the TorchScript file of ``model`` with its ``metadata.json`` atomically."""
    scripted = script_student(model, metadata)
    extra = {METADATA_FILE: json.dumps(export_metadata(model, metadata, "torchscript"), indent=2)}
    with atomic_path(path) as tmp, _torchscript_is_deprecated():
        torch.jit.save(scripted, str(tmp), _extra_files=extra)


@contextmanager
def _torchscript_is_deprecated() -> Iterator[None]:
    """Silence torch 2.13's deprecation of TorchScript.

    It is still the one format that keeps autograd (the forces) in a file that loads without
    Python classes and runs on any device; AOTInductor packages are built for one device.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"`torch\.jit\.\w+` is deprecated", DeprecationWarning)
        yield


def save_aoti(path: str | Path, model: PaiNN, metadata: dict[str, Any]) -> None:
    """Compile ``model`` for the CPU with AOTInductor and write the ``.pt2`` package atomically.

    The package always returns stress (NaN for cells of zero volume) and does not check
    elements: its graph has no data-dependent branches. Compiling takes about a minute and
    needs a C++ compiler.

    Raises
    ------
    RuntimeError
        If torch.export or the compilation fails.
    """
    from torch._inductor import aoti_compile_and_package
    from torch.export import Dim
    from torch.fx.experimental.proxy_tensor import make_fx

    potential = ExportedPotential(model, metadata.get("elements"))
    sample = _sample_inputs(model)

    def evaluate_with_stress(*inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return potential.evaluate(*inputs, compute_stress=True)

    # torch.export cannot trace torch.autograd.grad (it bakes the example's gradients into
    # constants). make_fx runs the autograd engine on symbolic tensors and records the
    # backward as ordinary operations: a plain graph, which exports.
    with torch.enable_grad():
        traced = make_fx(
            evaluate_with_stress, tracing_mode="symbolic", _allow_non_fake_inputs=True
        )(*sample)
    atoms, edges, structures = Dim("atoms", min=1), Dim("edges", min=0), Dim("structures", min=1)
    dynamic = (
        {0: atoms},
        {0: atoms},
        {0: structures},
        {0: structures},
        {1: edges},
        {0: edges},
        {0: atoms},
    )
    program = torch.export.export(traced, sample, dynamic_shapes=dynamic)
    text = json.dumps(export_metadata(model, metadata, "aoti"), indent=2)
    with atomic_path(path) as tmp, tmp.open("w+b") as file:
        aoti_compile_and_package(
            program,
            package_path=file,
            inductor_configs={"aot_inductor.metadata": {METADATA_FILE: text}},
        )


def _sample_inputs(model: PaiNN) -> tuple[torch.Tensor, ...]:
    """Inputs of two periodic structures for tracing: 24 atoms, hundreds of edges, B = 2.

    Every size that must stay dynamic differs from the others and from 0, 1 and 3, since
    tracing specialises 0 and 1 and ties equal sizes together.
    """
    dtype = next(model.parameters()).dtype
    crystals = [bulk("Si", "diamond", a=5.43) * (2, 1, 1), bulk("Cu", "fcc", a=3.61) * (2, 2, 2)]
    graph = batch_graphs([from_atoms(atoms, model.cutoff, dtype) for atoms in crystals])
    return tuple(graph)[:7]


def default_output(run: str | Path, format: str = "torchscript") -> Path:
    """Where the export of a run directory (or of a ``student.pt`` file) goes by default."""
    source = student_path(run)
    return source.with_name(source.name.removesuffix(".pt") + FORMATS[format].suffix)


def export_student(
    run: str | Path, output: str | Path | None = None, format: str = "torchscript"
) -> Path:
    """Export the student of a run directory (or a ``student.pt`` file).

    Parameters
    ----------
    run
        A run directory or a student file.
    output
        Where to write; by default beside the student (``model/student.torchscript.pt``,
        ``model/student.aoti.pt2``).
    format
        ``"torchscript"`` (portable, any device) or ``"aoti"`` (compiled for this CPU).

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    FileNotFoundError
        If the run has no trained student.
    ValueError
        If ``format`` is unknown or the student file is not one.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    model, metadata = load_student(run, device="cpu")
    path = Path(output) if output is not None else default_output(run, format)
    if format == "aoti":
        save_aoti(path, model, metadata)
    else:
        save_torchscript(path, model, metadata)
    return path


def load_exported(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[Callable[..., dict[str, torch.Tensor]], dict[str, Any]]:
    """Load an exported student and its metadata (needs only torch; this is a convenience).

    Parameters
    ----------
    path
        A ``.torchscript.pt`` file, or an ``.aoti.pt2`` package (CPU only).
    device
        Where the TorchScript module runs.

    Returns
    -------
    tuple
        The callable (a TorchScript module or an AOTInductor model) and the content of its
        ``metadata.json``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If ``path`` is not an exported student, or an AOTInductor package is asked for
        another device than the CPU.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".pt2":
        from torch._inductor import aoti_load_package

        if torch.device(device).type != "cpu":
            raise ValueError(f"{path}: compiled for the CPU; export TorchScript for {device}")
        try:
            module = aoti_load_package(str(path))
        except RuntimeError as exc:
            raise ValueError(f"{path}: not an AOTInductor package ({exc})") from None
        text = module.get_metadata().get(METADATA_FILE, "{}")
    else:
        extra = {METADATA_FILE: ""}
        try:
            with _torchscript_is_deprecated():
                module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except RuntimeError as exc:
            raise ValueError(f"{path}: not a TorchScript file ({exc})") from None
        text = extra[METADATA_FILE] or "{}"
    metadata = json.loads(text)
    tags = [spec.tag for spec in FORMATS.values()]
    if metadata.get("format") not in tags:
        raise ValueError(f"{path}: not an exported mlff-distiller student ({' or '.join(tags)})")
    return module, metadata
