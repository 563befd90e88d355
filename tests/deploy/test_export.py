"""The exported student: a file that runs without the package and matches ``predict``."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.testing import assert_close
from typer.testing import CliRunner

import mlff_distiller
from mlff_distiller.cli import app
from mlff_distiller.deploy.artefact import save_student
from mlff_distiller.deploy.export import export_student, load_exported
from mlff_distiller.graph import batch_graphs, from_atoms
from mlff_distiller.keys import ENERGY, FORCES, STRESS
from mlff_distiller.models import predict
from mlff_distiller.testing import SYMMETRY, example_structures, tiny_painn

ELEMENTS = [1, 6, 8, 14, 29]
NAMES = ("ethanol", "si", "cu")
PERIODIC = ("si", "cu")

# Runs in a fresh interpreter where `import mlff_distiller` fails: only torch, numpy, vesin.
STANDALONE = textwrap.dedent(
    """
    import json
    import sys

    sys.modules["mlff_distiller"] = None
    try:
        import mlff_distiller  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("mlff_distiller is importable: the test would prove nothing")

    import numpy as np
    import torch
    import vesin

    spec = json.loads(open(sys.argv[1]).read())
    results = {}
    for path in spec["files"]:
        if path.endswith(".pt2"):
            import torch._inductor

            model = torch._inductor.aoti_load_package(path)
            meta = json.loads(model.get_metadata()["metadata.json"])
        else:
            extra = {"metadata.json": ""}
            model = torch.jit.load(path, _extra_files=extra)
            meta = json.loads(extra["metadata.json"])
        dtype = getattr(torch, meta["dtype"])
        for name, s in spec["structures"].items():
            positions, cell, pbc = np.array(s["positions"]), np.array(s["cell"]), s["pbc"]
            i, j, shifts = vesin.NeighborList(cutoff=meta["cutoff"], full_list=True).compute(
                points=positions, box=cell, periodic=pbc, quantities="ijS"
            )
            inputs = (
                torch.tensor(positions, dtype=dtype),
                torch.tensor(s["numbers"], dtype=torch.long),
                torch.tensor(cell, dtype=dtype).unsqueeze(0),
                torch.tensor(pbc).unsqueeze(0),
                torch.tensor(np.stack([i, j]), dtype=torch.long).reshape(2, -1),
                torch.tensor(shifts, dtype=dtype).reshape(-1, 3),
                torch.zeros(len(s["numbers"]), dtype=torch.long),
            )
            with torch.no_grad():  # the file enables grad itself for the forces
                if path.endswith(".pt2"):
                    out = model(*inputs)
                else:
                    out = model(*inputs, name in spec["periodic"])
            results[path + ":" + name] = dict(out)
    torch.save(results, spec["output"])
    """
)


def student_run(tmp_path, dtype=torch.float64):
    save_student(
        tmp_path / "model" / "student.pt",
        tiny_painn(seed=0, dtype=dtype),
        {"elements": ELEMENTS, "teacher_name": "toy", "teacher_version": "0.1"},
    )
    return tmp_path


@pytest.fixture(scope="module")
def structures():
    return example_structures(seed=0)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The TorchScript export of a float64 and of a float32 student."""
    return {
        dtype: export_student(student_run(tmp_path_factory.mktemp(str(dtype)), dtype))
        for dtype in (torch.float64, torch.float32)
    }


def reference(structures, name, dtype):
    graph = from_atoms(structures[name], 4.0, dtype)
    return predict(tiny_painn(seed=0, dtype=dtype), graph, stress=name in PERIODIC)


def run_standalone(tmp_path, files, structures):
    spec = {
        "files": [str(f) for f in files],
        "structures": {
            name: {
                "positions": atoms.get_positions().tolist(),
                "numbers": atoms.numbers.tolist(),
                "cell": atoms.cell[:].tolist(),
                "pbc": atoms.pbc.tolist(),
            }
            for name, atoms in structures.items()
        },
        "periodic": list(PERIODIC),
        "output": str(tmp_path / "results.pt"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "standalone.py").write_text(STANDALONE)
    done = subprocess.run(
        [sys.executable, str(tmp_path / "standalone.py"), str(tmp_path / "spec.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return torch.load(tmp_path / "results.pt", weights_only=True)


def test_exported_file_runs_without_the_package_and_matches_predict(tmp_path, exported, structures):
    results = run_standalone(tmp_path, exported.values(), structures)
    for dtype, path in exported.items():
        # Float32: the same operations in the same order, so float32 round-off only.
        tolerance = SYMMETRY if dtype == torch.float64 else {}
        for name in NAMES:
            out, expected = results[f"{path}:{name}"], reference(structures, name, dtype)
            assert set(out) == set(expected)
            for key, value in expected.items():
                assert out[key].dtype == dtype
                assert_close(out[key], value, **tolerance)


def test_batch_gives_the_same_as_single_structures(exported, structures):
    model, meta = load_exported(exported[torch.float64])
    graphs = [from_atoms(structures[name], meta["cutoff"], torch.float64) for name in NAMES]
    batch = batch_graphs(graphs)
    together = model(*batch[:7], True)
    assert together[ENERGY].shape == (3,)
    assert together[STRESS].shape == (3, 3, 3)
    assert torch.isnan(together[STRESS][0]).all(), "a molecule has no stress"
    forces = torch.split(together[FORCES], [g.positions.shape[0] for g in graphs])
    for k, (name, graph) in enumerate(zip(NAMES, graphs, strict=True)):
        alone = model(*graph[:7], name in PERIODIC)
        assert_close(together[ENERGY][k], alone[ENERGY][0], **SYMMETRY)
        assert_close(forces[k], alone[FORCES], **SYMMETRY)
        if name in PERIODIC:
            assert_close(together[STRESS][k], alone[STRESS][0], **SYMMETRY)
        else:
            assert STRESS not in alone


def test_grad_mode_is_restored_and_results_detached(exported, structures):
    model, meta = load_exported(exported[torch.float32])
    graph = from_atoms(structures["si"], meta["cutoff"])
    with torch.no_grad():
        out = model(*graph[:7], True)
        assert not torch.is_grad_enabled()
    assert torch.is_grad_enabled()
    assert out[FORCES].abs().max() > 0
    assert not any(value.requires_grad for value in out.values())


def test_an_element_the_student_never_saw_is_refused(exported):
    model, meta = load_exported(exported[torch.float32])
    nitrogen = from_atoms(example_structures()["ethanol"], meta["cutoff"])
    nitrogen = nitrogen._replace(numbers=torch.full_like(nitrogen.numbers, 7))
    with pytest.raises(torch.jit.Error, match=r"atomic number\(s\) \[7\].*never trained"):
        model(*nitrogen[:7], False)


def test_metadata_describes_the_file(exported):
    model, meta = load_exported(exported[torch.float32])
    assert meta["format"] == "mlff-distiller-torchscript/1"
    assert meta["cutoff"] == pytest.approx(4.0) == model.cutoff
    assert meta["elements"] == {"numbers": ELEMENTS, "symbols": ["H", "C", "O", "Si", "Cu"]}
    assert meta["units"]["energy"] == "eV"
    assert meta["units"]["stress"].startswith("eV/Å³")
    assert meta["dtype"] == "float32"
    assert meta["teacher"] == {"name": "toy", "version": "0.1"}
    assert meta["mlff_distiller_version"] == mlff_distiller.__version__
    assert meta["torch_version"] == torch.__version__
    assert list(meta["inputs"]) == [
        "positions",
        "numbers",
        "cell",
        "pbc",
        "edge_index",
        "cell_shifts",
        "batch",
        "compute_stress",
    ]
    assert meta["hyperparameters"]["n_features"] == 16


def test_load_exported_refuses_a_student_file(tmp_path):
    run = student_run(tmp_path)
    with pytest.raises(ValueError, match="not a TorchScript file"):
        load_exported(run / "model" / "student.pt")


runner = CliRunner()


def test_cli_export_writes_beside_the_student(tmp_path):
    run = student_run(tmp_path, torch.float32)
    result = runner.invoke(app, ["export", str(run)])
    assert result.exit_code == 0, result.output
    path = run / "model" / "student.torchscript.pt"
    assert path.is_file()
    assert "student.torchscript.pt" in result.output
    assert "kB" in result.output
    model, _ = load_exported(path)
    structures = example_structures()
    graph = from_atoms(structures["si"], model.cutoff)
    expected = reference(structures, "si", torch.float32)
    assert_close(model(*graph[:7], True)[STRESS], expected[STRESS])


def test_cli_export_to_a_chosen_path(tmp_path):
    run = student_run(tmp_path, torch.float32)
    output = tmp_path / "elsewhere" / "potential.pt"
    result = runner.invoke(app, ["export", str(run), "--format", "torchscript", "-o", str(output)])
    assert result.exit_code == 0, result.output
    assert load_exported(output)[1]["teacher"]["name"] == "toy"
    assert not list(output.parent.glob(".*")), "a temporary file was left behind"


def test_cli_export_without_a_student_is_a_clear_error(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path)])
    assert result.exit_code == 2
    assert "no trained student" in result.output
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
def test_aoti_package_runs_without_the_package_and_matches_predict(tmp_path, structures):
    path = export_student(student_run(tmp_path / "run"), format="aoti")
    assert path == tmp_path / "run" / "model" / "student.aoti.pt2"
    model, meta = load_exported(path)
    assert meta["format"] == "mlff-distiller-aoti/1"
    assert "compute_stress" not in meta["inputs"]

    results = run_standalone(tmp_path, [path], structures)
    for name in NAMES:
        out, expected = results[f"{path}:{name}"], reference(structures, name, torch.float64)
        for key, value in expected.items():
            assert_close(out[key], value, **SYMMETRY)
        assert np.isnan(out[STRESS].numpy()).all() == (name not in PERIODIC)

    # Sizes other than the traced ones: a batch of three structures.
    graph = batch_graphs([from_atoms(structures[n], 4.0, torch.float64) for n in NAMES])
    out = model(*graph[:7])
    expected = predict(tiny_painn(seed=0), graph, stress=True, check_cells=False)
    for key, value in expected.items():
        assert_close(out[key], value, **SYMMETRY, equal_nan=True)
