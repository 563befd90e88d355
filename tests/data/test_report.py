"""The data report: counts, hydrogen fractions, histograms, plots and warnings."""

import json

import numpy as np
from ase.build import bulk, molecule

from mlff_distiller import keys
from mlff_distiller.data.dataset import PackedDataset
from mlff_distiller.data.report import data_report, write_data_report
from mlff_distiller.data.store import frames_to_arrays
from mlff_distiller.teachers.base import Labels


def _dataset(frames, splits):
    """A packed dataset of ``frames`` (each tagged with its system) in the given splits."""
    rng = np.random.default_rng(0)
    labels = [Labels(float(-len(a)), rng.normal(size=(len(a), 3))) for a in frames]
    arrays = frames_to_arrays(frames, labels, list(range(len(frames))))
    arrays["split"] = np.asarray(splits, dtype=np.int8)
    return PackedDataset(arrays, "emt", "test")


def _system(atoms, system_id, sampler="initial"):
    atoms.info[keys.SYSTEM_ID] = system_id
    atoms.info[keys.SAMPLER] = sampler
    return atoms


def test_counts_sources_and_histograms(packed_dataset):
    sources = {f"sys{k}": "smiles" if k < 5 else "crystals" for k in range(9)}
    report = data_report(packed_dataset, sources, {"frames_generated": 18, "frames_kept": 18})
    arrays = packed_dataset.arrays
    assert report["structures"] == 18
    assert report["systems"] == 9
    assert report["atoms"] == len(arrays["numbers"])
    assert sum(s["structures"] for s in report["splits"].values()) == 18
    assert report["elements"]["H"]["atoms"] == int((arrays["numbers"] == 1).sum())
    assert sum(e["atoms"] for e in report["elements"].values()) == report["atoms"]
    smiles = np.isin(arrays[keys.SYSTEM_ID], [f"sys{k}" for k in range(5)])
    atoms_of_smiles = np.repeat(smiles, packed_dataset.n_atoms())
    expected = (arrays["numbers"][atoms_of_smiles] == 1).mean()
    assert report["sources"]["smiles"]["hydrogen_fraction"] == expected
    assert set(report["sources"]) == {"smiles", "crystals"}
    histograms = report["histograms"]
    assert sum(histograms["atoms_per_structure"]["counts"]) == 18
    assert sum(histograms["force_magnitude_eV_per_A"]["counts"]) == report["atoms"]
    assert report["warnings"] == [] or all(isinstance(w, str) for w in report["warnings"])


def test_warnings_name_what_deserves_a_look():
    stripped = molecule("CH3CH2OH")
    stripped = stripped[stripped.numbers != 1]
    frames = [
        _system(molecule("CH4"), "methane"),
        _system(molecule("H2O"), "water"),
        _system(molecule("CO2"), "co2"),
        _system(stripped, "x.pdb:0"),
        _system(bulk("Cu", "fcc", a=3.6), "copper"),
    ]
    sources = {"methane": "smiles", "water": "smiles", "co2": "ase_molecules"}
    sources["x.pdb:0"] = "file x.pdb"
    filters = {"frames_generated": 10, "frames_kept": 5}
    report = data_report(_dataset(frames, [0, 0, 0, 1, 2]), sources, filters)
    warnings = report["warnings"]
    assert len(warnings) == 4, warnings
    assert warnings[0].startswith("1 molecule(s) lack hydrogens, judged from their geometry")
    assert "x.pdb:0 (C 0 has" in warnings[0]
    assert warnings[1].startswith("2 molecule(s) hold carbon and no hydrogen: co2, x.pdb:0")
    assert warnings[2].startswith("the test split has element(s) Cu that no training structure")
    assert "the filters dropped 5 of 10 generated frames" in warnings[3]
    assert report["sources"]["unknown"]["systems"] == 1  # copper: not in the map


def test_report_files(tmp_path, packed_dataset):
    report = write_data_report(packed_dataset, {}, None, tmp_path / "report")
    stored = json.loads((tmp_path / "report" / "data_report.json").read_text())
    assert stored == json.loads(json.dumps(report))
    for name in ("histograms.png", "elements.png"):
        data = (tmp_path / "report" / "data" / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
