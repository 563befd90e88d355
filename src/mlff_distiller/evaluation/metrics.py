"""Student-versus-teacher errors, reduced exactly in float64."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ase.data import chemical_symbols
from ase.units import GPa

from mlff_distiller import keys
from mlff_distiller.data.batching import GraphSet
from mlff_distiller.models import predict


def predict_set(
    model: torch.nn.Module, graphs: GraphSet, batch_size: int, stress: bool = False
) -> dict[str, np.ndarray]:
    """Student predictions for every structure of ``graphs``, in order, as float64 arrays.

    Returns ``energy`` (n,) eV, ``forces`` (A, 3) eV/Å and, with ``stress``, ``stress``
    (n, 3, 3) eV/Å³ (NaN for structures without a periodic cell).
    """
    out: dict[str, list[np.ndarray]] = {keys.ENERGY: [], keys.FORCES: [], keys.STRESS: []}
    for graph, targets in graphs.batches(batch_size):
        periodic = bool(targets["has_stress"].all()) and stress
        pred = predict(model, graph, forces=True, stress=periodic)
        out[keys.ENERGY].append(pred[keys.ENERGY].detach().double().cpu().numpy())
        out[keys.FORCES].append(pred[keys.FORCES].detach().double().cpu().numpy())
        if stress:
            s = pred[keys.STRESS] if periodic else torch.full((graph.n_structures, 3, 3), torch.nan)
            out[keys.STRESS].append(s.detach().double().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items() if v}


def error_metrics(
    pred: dict[str, np.ndarray],
    arrays: dict[str, np.ndarray],
) -> dict[str, Any]:
    """Errors of predictions against the teacher labels of shard-layout ``arrays``.

    Parameters
    ----------
    pred
        Output of :func:`predict_set` for the same structures, in the same order.
    arrays
        Shard-layout arrays (:mod:`mlff_distiller.data.store`) holding the teacher labels.

    Returns
    -------
    dict
        ``energy_mae_mev_per_atom``, ``energy_rmse_mev_per_atom``, ``force_mae_ev_per_a``
        and ``force_rmse_ev_per_a`` (over all Cartesian components), ``force_cosine`` (mean
        over atoms of the cosine between student and teacher force vectors),
        ``force_rmse_per_element_ev_per_a`` and, where stresses were predicted and labelled,
        ``stress_mae_gpa``.
    """
    n_atoms = np.diff(arrays["ptr"]).astype(np.float64)
    e_err = (pred[keys.ENERGY] - arrays[keys.TEACHER_ENERGY].astype(np.float64)) / n_atoms
    f_ref = arrays[keys.TEACHER_FORCES].astype(np.float64)
    f_err = pred[keys.FORCES] - f_ref
    norms = np.linalg.norm(pred[keys.FORCES], axis=1) * np.linalg.norm(f_ref, axis=1)
    cosine = np.sum(pred[keys.FORCES] * f_ref, axis=1) / np.maximum(norms, 1e-12)
    per_element = {}
    for z in np.unique(arrays["numbers"]):
        sel = arrays["numbers"] == z
        per_element[chemical_symbols[z]] = float(np.sqrt(np.mean(f_err[sel] ** 2)))
    metrics: dict[str, Any] = {
        "energy_mae_mev_per_atom": float(np.mean(np.abs(e_err)) * 1000),
        "energy_rmse_mev_per_atom": float(np.sqrt(np.mean(e_err**2)) * 1000),
        "force_mae_ev_per_a": float(np.mean(np.abs(f_err))),
        "force_rmse_ev_per_a": float(np.sqrt(np.mean(f_err**2))),
        "force_cosine": float(np.mean(cosine)),
        "force_rmse_per_element_ev_per_a": per_element,
    }
    if keys.STRESS in pred:
        mask = arrays["has_stress"] & np.isfinite(pred[keys.STRESS]).all(axis=(1, 2))
        if mask.any():
            s_err = pred[keys.STRESS][mask] - arrays[keys.TEACHER_STRESS][mask]
            metrics["stress_mae_gpa"] = float(np.mean(np.abs(s_err)) / GPa)
    return metrics


def per_system_errors(
    pred: dict[str, np.ndarray], arrays: dict[str, np.ndarray]
) -> dict[str, dict[str, float]]:
    """Energy MAE (meV/atom) and force RMSE (eV/Å) of every system, to find the hard ones."""
    n_atoms = np.diff(arrays["ptr"])
    e_err = np.abs(pred[keys.ENERGY] - arrays[keys.TEACHER_ENERGY]) / n_atoms
    f_sq = np.sum((pred[keys.FORCES] - arrays[keys.TEACHER_FORCES]) ** 2, axis=1)
    atom_system = np.repeat(arrays[keys.SYSTEM_ID], n_atoms)
    out = {}
    for system in sorted(set(arrays[keys.SYSTEM_ID].tolist())):
        frames = arrays[keys.SYSTEM_ID] == system
        atoms = atom_system == system
        out[system] = {
            "energy_mae_mev_per_atom": float(np.mean(e_err[frames]) * 1000),
            "force_rmse_ev_per_a": float(np.sqrt(np.mean(f_sq[atoms]) / 3)),
        }
    return out
