"""The data report: what the labelled set holds, checked before any training.

:func:`write_data_report` writes ``RUN/report/data_report.json`` and two plots under
``RUN/report/data/`` (``histograms.png``: atoms per structure, teacher energy per atom and
force magnitudes; ``elements.png``: structures per element and split). The JSON holds:

==========================  ==================================================================
key                         content
==========================  ==================================================================
``structures``, ...         counts of structures, systems and atoms, per split too
``elements``                per element: atoms, structures and systems; atoms per split
``sources``                 per input (``smiles``, ``file x.pdb``...): systems, structures,
                            atoms and the fraction of atoms that are hydrogen
``samplers``                structures per sampler (``initial``, ``rattle-0.05``, ``md-300K``)
``histograms``              ``edges`` and ``counts`` of each histogram (units in the name)
``filters``                 what the filters dropped (``data/filters.json``), when known
``warnings``                what deserves a look before training, in words
==========================  ==================================================================
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt
import numpy as np
from ase.data import chemical_symbols

from mlff_distiller import keys
from mlff_distiller.atomic import atomic_path, write_json
from mlff_distiller.data.dataset import SPLITS, PackedDataset
from mlff_distiller.structures.filters import max_atom_forces

_HYDROGEN, _CARBON = 1, 6
#: Systems named in one warning (the rest are counted).
_MAX_NAMED = 5
#: Fraction of the generated frames the filters may drop before it is a warning.
_DROPPED_WARNING_FRACTION = 0.1
#: Sources built with their hydrogens by construction: no geometric check needed.
_BUILT_WITH_HYDROGENS = ("smiles", "smiles_file", "ase_molecules", "crystals")


def data_report(
    dataset: PackedDataset, sources: Mapping[str, str], filters: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The content of ``data_report.json`` (module docstring).

    Parameters
    ----------
    dataset
        The packed dataset (with its ``split``).
    sources
        ``system_id`` -> the input it came from (:attr:`SystemSource.source`); systems not in
        it count as ``unknown``.
    filters
        The content of ``data/filters.json``, or None when there is none.
    """
    arrays = dataset.arrays
    n_atoms = dataset.n_atoms()
    numbers = arrays["numbers"]
    structure_of_atom = np.repeat(np.arange(len(dataset)), n_atoms)
    split = arrays["split"]
    system_ids = arrays[keys.SYSTEM_ID]
    report: dict[str, Any] = {
        "teacher": dataset.teacher_name,
        "teacher_version": dataset.teacher_version,
        "structures": len(dataset),
        "systems": len(set(system_ids.tolist())),
        "atoms": int(n_atoms.sum()),
        "splits": {
            name: {
                "structures": int((split == code).sum()),
                "systems": len(set(system_ids[split == code].tolist())),
                "atoms": int(n_atoms[split == code].sum()),
            }
            for code, name in enumerate(SPLITS)
        },
        "elements": _element_counts(numbers, structure_of_atom, split, system_ids),
        "sources": _source_counts(numbers, structure_of_atom, system_ids, sources),
        "samplers": dict(sorted(Counter(arrays[keys.SAMPLER].tolist()).items())),
        "histograms": _histograms(dataset),
        "filters": None if filters is None else dict(filters),
    }
    report["warnings"] = data_warnings(dataset, sources, filters)
    return report


def _element_counts(
    numbers: np.ndarray, structure_of_atom: np.ndarray, split: np.ndarray, system_ids: np.ndarray
) -> dict[str, dict[str, Any]]:
    counts = {}
    for z in np.unique(numbers):
        mine = numbers == z
        structures = np.unique(structure_of_atom[mine])
        counts[chemical_symbols[z]] = {
            "atoms": int(mine.sum()),
            "structures": len(structures),
            "systems": len(set(system_ids[structures].tolist())),
            "atoms_by_split": {
                name: int((mine & (split[structure_of_atom] == code)).sum())
                for code, name in enumerate(SPLITS)
            },
        }
    return counts


def _source_counts(
    numbers: np.ndarray,
    structure_of_atom: np.ndarray,
    system_ids: np.ndarray,
    sources: Mapping[str, str],
) -> dict[str, dict[str, Any]]:
    source_of_structure = np.array([sources.get(s, "unknown") for s in system_ids.tolist()])
    counts = {}
    for source in sorted(set(source_of_structure.tolist())):
        structures = source_of_structure == source
        atoms = structures[structure_of_atom]
        counts[source] = {
            "systems": len(set(system_ids[structures].tolist())),
            "structures": int(structures.sum()),
            "atoms": int(atoms.sum()),
            "hydrogen_fraction": float((numbers[atoms] == _HYDROGEN).mean()),
        }
    return counts


def _histograms(dataset: PackedDataset) -> dict[str, dict[str, list[float]]]:
    arrays = dataset.arrays
    n_atoms = dataset.n_atoms()
    forces = np.linalg.norm(arrays[keys.TEACHER_FORCES], axis=1)
    values = {
        "atoms_per_structure": n_atoms.astype(float),
        "energy_per_atom_eV": arrays[keys.TEACHER_ENERGY] / np.maximum(n_atoms, 1),
        "force_magnitude_eV_per_A": forces,
        "max_force_per_structure_eV_per_A": max_atom_forces(
            arrays[keys.TEACHER_FORCES], arrays["ptr"]
        ),
    }
    out = {}
    for name, data in values.items():
        if name == "atoms_per_structure":
            low, high = int(data.min()), int(data.max())
            step = max(1, int(np.ceil((high - low + 1) / 50)))
            edges = np.arange(low, high + step + 1, step) - 0.5
        else:
            edges = np.histogram_bin_edges(data, bins=40)
        counts, edges = np.histogram(data, bins=edges)
        out[name] = {"edges": edges.tolist(), "counts": counts.tolist()}
    return out


def data_warnings(
    dataset: PackedDataset, sources: Mapping[str, str], filters: Mapping[str, Any] | None
) -> list[str]:
    """What deserves a look before training, one sentence each.

    Molecules (non-periodic) from files that lack hydrogens (:mod:`..structures.hydrogens`)
    or hold carbon and no hydrogen at all; validation or test elements absent from training;
    filters that dropped more than a tenth of the frames.
    """
    from mlff_distiller.structures.hydrogens import missing_hydrogen_problems

    arrays = dataset.arrays
    ptr = arrays["ptr"]
    warnings = []
    lacking, bare_carbon = [], []
    seen: set[str] = set()
    for k, system in enumerate(arrays[keys.SYSTEM_ID].tolist()):
        if system in seen or arrays["pbc"][k].any():
            continue
        seen.add(system)
        numbers = arrays["numbers"][ptr[k] : ptr[k + 1]]
        if (numbers == _CARBON).any() and not (numbers == _HYDROGEN).any():
            bare_carbon.append(system)
        if not sources.get(system, "unknown").startswith(_BUILT_WITH_HYDROGENS):
            found = missing_hydrogen_problems(dataset.atoms(k))
            if found:
                lacking.append(f"{system} ({found[0]})")
    if lacking:
        warnings.append(
            f"{len(lacking)} molecule(s) lack hydrogens, judged from their geometry: "
            f"{_named(lacking)}; the student learns their chemistry as it is in the file"
        )
    if bare_carbon:
        warnings.append(
            f"{len(bare_carbon)} molecule(s) hold carbon and no hydrogen: {_named(bare_carbon)}"
            "; right for species such as CO2, CF4 or CF3CN, a molecule that lost its "
            "hydrogens otherwise"
        )
    warnings += _split_element_warnings(dataset)
    if filters is not None and filters.get("frames_generated"):
        dropped = filters["frames_generated"] - filters["frames_kept"]
        if dropped > _DROPPED_WARNING_FRACTION * filters["frames_generated"]:
            warnings.append(
                f"the filters dropped {dropped} of {filters['frames_generated']} generated "
                "frames (data/filters.json says why): check the sampling settings"
            )
    return warnings


def _split_element_warnings(dataset: PackedDataset) -> list[str]:
    arrays = dataset.arrays
    split_of_atom = np.repeat(arrays["split"], dataset.n_atoms())
    train = set(np.unique(arrays["numbers"][split_of_atom == 0]).tolist())
    warnings = []
    for code, name in list(enumerate(SPLITS))[1:]:
        missing = sorted(set(np.unique(arrays["numbers"][split_of_atom == code]).tolist()) - train)
        if missing:
            symbols = ", ".join(chemical_symbols[z] for z in missing)
            warnings.append(
                f"the {name} split has element(s) {symbols} that no training structure has: "
                "the student cannot learn them; add training systems with them, or change "
                "data.split_seed"
            )
    return warnings


def _named(items: list[str]) -> str:
    more = len(items) - _MAX_NAMED
    return ", ".join(items[:_MAX_NAMED]) + (f" and {more} more" if more > 0 else "")


def plot_data_report(report: Mapping[str, Any], directory: Path) -> list[Path]:
    """Draw ``histograms.png`` and ``elements.png`` of a report into ``directory``.

    Returns
    -------
    list[Path]
        The files written (atomically).
    """
    directory = Path(directory)
    histograms = report["histograms"]
    panels = (
        ("atoms_per_structure", "atoms per structure", False),
        ("energy_per_atom_eV", "teacher energy per atom (eV)", False),
        ("force_magnitude_eV_per_A", "teacher |F| per atom (eV/Å)", True),
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, (name, label, log) in zip(axes, panels, strict=True):
        edges = np.asarray(histograms[name]["edges"])
        ax.stairs(histograms[name]["counts"], edges, fill=True, alpha=0.7)
        ax.set_xlabel(label)
        ax.set_ylabel("count")
        if log:
            ax.set_yscale("log")
    fig.suptitle(
        f"{report['structures']} structures, {report['systems']} systems "
        f"(teacher {report['teacher']})"
    )
    fig.tight_layout()
    histograms_path = directory / "histograms.png"
    _save(fig, histograms_path)

    elements = report["elements"]
    symbols = list(elements)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(symbols) + 2), 3.6))
    width = 0.8 / len(SPLITS)
    for s, name in enumerate(SPLITS):
        counts = [elements[symbol]["atoms_by_split"][name] for symbol in symbols]
        ax.bar(np.arange(len(symbols)) + (s - 1) * width, counts, width, label=name)
    ax.set_xticks(np.arange(len(symbols)), symbols)
    ax.set_yscale("log")
    ax.set_ylabel("atoms")
    ax.legend()
    fig.tight_layout()
    elements_path = directory / "elements.png"
    _save(fig, elements_path)
    return [histograms_path, elements_path]


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_data_report(
    dataset: PackedDataset,
    sources: Mapping[str, str],
    filters: Mapping[str, Any] | None,
    report_dir: Path,
) -> dict[str, Any]:
    """Write the plots under ``report_dir/data/``, then ``report_dir/data_report.json``.

    The JSON is written last: it marks the report done, so a stopped run draws again.

    Returns
    -------
    dict
        The report (:func:`data_report`).
    """
    report = data_report(dataset, sources, filters)
    plot_data_report(report, Path(report_dir) / "data")
    write_json(Path(report_dir) / "data_report.json", report)
    return report
