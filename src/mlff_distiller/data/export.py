"""The labelled set as extxyz, so that other trainers (graph-pes, MACE, nequip) use the same data.

Every frame keeps the project's key names (``keys.py``), which those trainers take as options
(e.g. MACE's ``--energy_key teacher_energy --forces_key teacher_forces``):

=====================  ========  ===========  =========================================
key                    where     unit         meaning
=====================  ========  ===========  =========================================
``teacher_energy``     info      eV           total energy
``teacher_forces``     arrays    eV/Å         (N, 3) forces
``teacher_stress``     info      eV/Å³        3x3, ASE sign; fully periodic frames only
``system_id``          info                   the molecule or crystal (splits follow it)
``split``              info                   ``train``, ``val`` or ``test``
``sampler``            info                   how the frame was made
``teacher_name``       info                   the teacher (and ``teacher_version``)
=====================  ========  ===========  =========================================

Bare ``energy``/``forces`` keys are avoided on purpose: ASE moves them into a calculator that
a copy silently drops. The file reads back with :func:`ase.io.read`, and as a labelled file
of a run (``structures.labelled_files`` with its default keys).
"""

from __future__ import annotations

from pathlib import Path

import ase
import ase.io
import numpy as np

from mlff_distiller import keys
from mlff_distiller.atomic import atomic_path
from mlff_distiller.data.dataset import SPLITS, PackedDataset

#: What ``--split`` accepts: one split, or every structure.
EXPORT_SPLITS = (*SPLITS, "all")


def exported_frames(dataset: PackedDataset, split: str = "all") -> list[ase.Atoms]:
    """The structures of ``split`` (or all) as frames with the keys of the module docstring.

    Raises
    ------
    ValueError
        If ``split`` is not one of :data:`EXPORT_SPLITS`.
    """
    if split not in EXPORT_SPLITS:
        raise ValueError(f"split {split!r} is none of {', '.join(EXPORT_SPLITS)}: choose one")
    codes = dataset.arrays["split"]
    indices = (
        np.arange(len(dataset)) if split == "all" else np.flatnonzero(codes == SPLITS.index(split))
    )
    frames = []
    for k in indices:
        atoms = dataset.atoms(int(k))
        sampler = str(dataset.arrays[keys.SAMPLER][k])
        if sampler:  # ASE writes an empty value bare, which breaks the keys after it
            atoms.info[keys.SAMPLER] = sampler
        atoms.info["split"] = SPLITS[int(codes[k])]
        atoms.info[keys.TEACHER_NAME] = dataset.teacher_name
        atoms.info[keys.TEACHER_VERSION] = dataset.teacher_version
        frames.append(atoms)
    return frames


def export_extxyz(dataset: PackedDataset, path: str | Path, split: str = "all") -> int:
    """Write the structures of ``split`` to an extxyz file, atomically.

    Parameters
    ----------
    dataset
        The packed dataset.
    path
        The file to write (replaced if it exists).
    split
        ``train``, ``val``, ``test`` or ``all``.

    Returns
    -------
    int
        The number of frames written.

    Raises
    ------
    ValueError
        If ``split`` is unknown or holds no structure.
    """
    frames = exported_frames(dataset, split)
    if not frames:
        raise ValueError(f"the {split} split holds no structure: choose another --split")
    with atomic_path(path) as tmp:
        ase.io.write(tmp, frames, format="extxyz")
    return len(frames)
