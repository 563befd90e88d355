import numpy as np
import pytest
import torch

from mlff_distiller.deploy.engine import StudentEngine
from mlff_distiller.graph import batch_graphs, from_atoms
from mlff_distiller.models import predict
from mlff_distiller.testing import FLOAT32_VS_FLOAT64, SYMMETRY, example_structures, tiny_painn

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _inputs(structures):
    positions = torch.tensor(np.concatenate([a.positions for a in structures]))
    numbers = torch.tensor(np.concatenate([a.numbers for a in structures]))
    cells = torch.tensor(
        np.stack([a.cell[:] if a.pbc.any() else np.zeros((3, 3)) for a in structures])
    )
    pbc = torch.tensor(np.stack([a.pbc for a in structures]))
    ptr = torch.tensor(np.cumsum([0] + [len(a) for a in structures]))
    return positions, numbers, cells, pbc, ptr


def _trajectory(structures, steps, seed=0):
    """Frames of a random walk (the same atoms moving), as MD would give them."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(steps):
        for atoms in structures:
            atoms.positions += rng.normal(scale=0.04, size=atoms.positions.shape)
        frames.append([a.copy() for a in structures])
    return frames


def _reference(model, structures, stress):
    graph = batch_graphs([from_atoms(a, model.cutoff, model.scale.dtype) for a in structures])
    return predict(model, graph, stress=stress)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("names", [["ethanol"], ["si", "cu"], ["ethanol", "si", "ethanol"]])
def test_engine_follows_a_trajectory_exactly(device, names):
    """Skin reuse (and, on CUDA, graph replay) gives the eager results at every step."""
    dtype = torch.float64 if device == "cpu" else torch.float32
    tolerance = SYMMETRY if dtype == torch.float64 else FLOAT32_VS_FLOAT64
    model = tiny_painn(dtype=dtype)
    structures = [example_structures(seed=k)[n] for k, n in enumerate(names)]
    if len(structures[0]) < 3:
        structures = [a * (2, 2, 1) for a in structures]
    periodic = all(a.pbc.all() for a in structures)
    engine = StudentEngine(model, device, skin=0.3)
    for step, frame in enumerate(_trajectory(structures, steps=25)):
        to_host = step % 2 == 1  # both result paths, alternately
        out = engine.compute(*_inputs(frame), stress=periodic, to_host=to_host)
        expected = _reference(model, frame, periodic)
        assert set(out) == set(expected)
        for key in expected:
            assert out[key].device.type == ("cpu" if to_host else device)
            torch.testing.assert_close(
                out[key].cpu().to(expected[key].dtype), expected[key], **tolerance
            )
    assert 1 <= engine.neighbours.builds < 25
    if device == "cuda":
        assert 1 <= engine.captures <= engine.neighbours.builds


def test_engine_leaves_the_callers_model_alone():
    model = tiny_painn()
    StudentEngine(model, "cpu")
    assert all(p.requires_grad for p in model.parameters())


def test_changed_atomic_numbers_are_seen():
    model = tiny_painn()
    atoms = example_structures()["ethanol"]
    engine = StudentEngine(model, "cpu")
    positions, numbers, cell, pbc, ptr = _inputs([atoms])
    first = engine.compute(positions, numbers, cell, pbc, ptr)["energy"]
    numbers = numbers.clone()
    numbers[0] = 7
    second = engine.compute(positions, numbers, cell, pbc, ptr)["energy"]
    atoms.numbers = numbers.numpy()
    torch.testing.assert_close(second, _reference(model, [atoms], False)["energy"], **SYMMETRY)
    assert not torch.equal(first, second)


@pytest.mark.parametrize("device", DEVICES)
def test_asking_for_stress_later_uses_the_current_positions(device):
    model = tiny_painn(dtype=torch.float64 if device == "cpu" else torch.float32)
    atoms = example_structures()["si"] * (2, 2, 2)
    engine = StudentEngine(model, device, skin=1.0)
    engine.compute(*_inputs([atoms]))
    atoms.positions[0] += 0.05  # inside the skin: no rebuild, but a new capture (stress)
    out = engine.compute(*_inputs([atoms]), stress=True)
    expected = _reference(model, [atoms], True)
    tolerance = SYMMETRY if device == "cpu" else FLOAT32_VS_FLOAT64
    torch.testing.assert_close(out["stress"].cpu(), expected["stress"], **tolerance)
    torch.testing.assert_close(out["forces"].cpu(), expected["forces"], **tolerance)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_capture_grows_when_edges_outgrow_it():
    model = tiny_painn(dtype=torch.float32)
    atoms = example_structures()["ethanol"]
    engine = StudentEngine(model, "cuda", skin=0.0, headroom=1.0)
    engine.compute(*_inputs([atoms]))
    atoms.positions *= 0.8  # denser: more edges than the capture holds
    out = engine.compute(*_inputs([atoms]))
    assert engine.captures == 2
    torch.testing.assert_close(
        out["forces"].cpu(), _reference(model, [atoms], False)["forces"], **FLOAT32_VS_FLOAT64
    )


class _Untraceable(torch.nn.Module):
    """A student whose forward breaks ``torch.compile(fullgraph=True)`` (a host branch)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.cutoff = model.cutoff

    def forward(self, graph):
        if float(graph.positions.sum()) > -1e30:  # data-dependent Python control flow
            return self.model(graph)
        return -self.model(graph)


def test_compiled_cpu_path_falls_back_to_eager_with_a_warning():
    """If the compiler fails (e.g. an older torch), compile=True warns and runs eagerly."""
    model = tiny_painn(dtype=torch.float64)
    frame = [example_structures()["ethanol"]]
    engine = StudentEngine(_Untraceable(model), "cpu", skin=0.0, compile=True)
    with pytest.warns(RuntimeWarning, match="running the student eagerly"):
        out = engine.compute(*_inputs(frame))
    assert engine.compile is False
    expected = _reference(model, frame, False)
    for key in expected:
        torch.testing.assert_close(out[key], expected[key], **SYMMETRY)
    # Later calls run eagerly without warning again.
    out = engine.compute(*_inputs(frame))
    torch.testing.assert_close(out["forces"], expected["forces"], **SYMMETRY)


@pytest.mark.slow
def test_compiled_cpu_path_follows_a_trajectory_without_recompiling():
    """compile=True on the CPU (functional_predict through inductor) equals eager predict.

    The list is exact at every step (no skin), so the number of edges changes from frame to
    frame: after the first call nothing may be compiled again, not even for another student
    of the same shape (its weights are inputs of the compiled code, not constants in it).
    """
    model = tiny_painn(dtype=torch.float64)
    atoms = example_structures()["si"] * (2, 2, 2)
    engine = StudentEngine(model, "cpu", skin=0.0, compile=True)
    frames = _trajectory([atoms], steps=6)
    for step, frame in enumerate(frames):
        with torch.compiler.set_stance("fail_on_recompile" if step else "default"):
            out = engine.compute(*_inputs(frame), stress=True, to_host=step % 2 == 1)
        expected = _reference(model, frame, True)
        assert set(out) == set(expected)
        for key in expected:
            torch.testing.assert_close(out[key], expected[key], **SYMMETRY)
    n_edges = {from_atoms(frame[0], model.cutoff).edge_index.shape[1] for frame in frames}
    assert len(n_edges) > 1
    assert engine.captures == 1
    assert engine.neighbours.builds == len(frames)

    # Another student of the same shape reuses the compiled code with its own weights.
    other = tiny_painn(seed=1, dtype=torch.float64)
    other.scale.fill_(0.5)
    other.shift.fill_(2.0)
    with torch.compiler.set_stance("fail_on_recompile"):
        out = StudentEngine(other, "cpu", compile=True).compute(*_inputs(frames[-1]), stress=True)
    expected = _reference(other, frames[-1], True)
    for key in expected:
        torch.testing.assert_close(out[key], expected[key], **SYMMETRY)
