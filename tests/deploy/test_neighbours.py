import ase
import ase.build
import numpy as np
import pytest
import torch
import vesin

from mlff_distiller.deploy.neighbours import SkinNeighbourList

CUTOFF = 3.0


def _exact_pairs(atoms: ase.Atoms, cutoff: float) -> set[tuple[int, int, int, int, int]]:
    """Every (i, j, shift) within the cutoff, from a fresh vesin list without skin."""
    cell = atoms.cell[:] if atoms.pbc.any() else np.zeros((3, 3))
    nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
    i, j, s = nl.compute(atoms.positions, cell, atoms.pbc, quantities="ijS")
    return {(a, b, *map(int, c)) for a, b, c in zip(i.tolist(), j.tolist(), s, strict=True)}


def _within_cutoff(edges, shifts, positions, cell, cutoff):
    i, j = edges
    vectors = positions[j] - positions[i] + shifts @ cell
    keep = np.linalg.norm(vectors, axis=1) < cutoff
    return {
        (a, b, *map(int, c))
        for a, b, c in zip(i[keep].tolist(), j[keep].tolist(), shifts[keep], strict=True)
    }


def _walk(atoms: ase.Atoms, steps: int, step_size: float, seed: int):
    """Random walk of every atom: pairs keep crossing the cutoff in both directions."""
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        atoms.positions += rng.normal(scale=step_size, size=atoms.positions.shape)
        yield atoms


def _check_walk(atoms: ase.Atoms, skin: float, steps: int = 150, step_size: float = 0.03):
    nl = SkinNeighbourList(CUTOFF, skin)
    cell_rows = atoms.cell[:] if atoms.pbc.any() else np.zeros((3, 3))
    cell = torch.tensor(cell_rows).unsqueeze(0)
    pbc = torch.tensor(atoms.pbc).unsqueeze(0)
    ptr = torch.tensor([0, len(atoms)])
    for frame in _walk(atoms, steps, step_size, seed=1):
        edges, shifts, _ = nl(torch.tensor(frame.positions), cell, pbc, ptr)
        got = _within_cutoff(edges.numpy(), shifts.numpy(), frame.positions, cell_rows, CUTOFF)
        assert got == _exact_pairs(frame, CUTOFF)
    return nl


def _cluster(n: int, density: float, seed: int) -> ase.Atoms:
    rng = np.random.default_rng(seed)
    side = (n / density) ** (1 / 3)
    return ase.Atoms("C" * n, positions=rng.uniform(0, side, (n, 3)))


def test_molecule_never_misses_a_pair_and_reuses_the_list():
    nl = _check_walk(_cluster(40, 0.05, seed=0), skin=0.5)
    assert 1 < nl.builds < nl.calls  # rebuilt as atoms moved, but not at every step


@pytest.mark.parametrize(
    "atoms",
    [
        pytest.param(ase.build.bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2), id="cu-cubic"),
        # A primitive cell far smaller than twice the cutoff: many images of each atom.
        pytest.param(ase.build.bulk("Si", "diamond", a=5.43), id="si-small-cell"),
        pytest.param(
            ase.Atoms(
                "C4",
                positions=[[0, 0, 0], [1, 1, 0], [2, 0, 1], [0.5, 2, 2]],
                cell=[[2.5, 0, 0], [1.2, 2.2, 0], [0.3, 0.4, 2.0]],
                pbc=True,
            ),
            id="triclinic-tiny",
        ),
        pytest.param(
            ase.Atoms(
                "C6",
                positions=np.random.default_rng(2).uniform(0, 4, (6, 3)),
                cell=[4, 4, 10],
                pbc=[True, True, False],
            ),
            id="slab",
        ),
    ],
)
def test_periodic_cells_never_miss_a_pair(atoms):
    # Atoms drift out of the cell and are never wrapped: the shifts must follow them.
    nl = _check_walk(atoms.copy(), skin=0.4, steps=120, step_size=0.04)
    assert nl.builds < nl.calls


def test_zero_skin_rebuilds_every_call():
    nl = _check_walk(_cluster(10, 0.05, seed=3), skin=0.0, steps=5)
    assert nl.builds == nl.calls == 5


def test_cell_change_and_new_batch_rebuild():
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
    nl = SkinNeighbourList(CUTOFF, 1.0)
    x = torch.tensor(atoms.positions)
    cell = torch.tensor(atoms.cell[:]).unsqueeze(0)
    pbc = torch.ones(1, 3, dtype=torch.bool)
    ptr = torch.tensor([0, 4])
    assert nl(x, cell, pbc, ptr)[2]
    assert not nl(x + 0.01, cell, pbc, ptr)[2]
    assert nl(x, cell * 1.001, pbc, ptr)[2]  # a strained cell changes the images
    assert nl(x, cell * 1.001, pbc, torch.tensor([0, 4]))[2] is False
    assert nl(x[:3], cell * 1.001, pbc, torch.tensor([0, 3]))[2]


def test_batch_of_molecules_and_cells_equals_each_alone():
    rng = np.random.default_rng(5)
    mols = [_cluster(n, 0.05, seed=s) for s, n in enumerate([7, 12, 5])]
    cu = ase.build.bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    cu.rattle(0.05, seed=1)
    structures = [mols[0], cu, mols[1], mols[2]]
    # Molecules sitting on top of each other must still never pair across structures.
    for m in mols:
        m.positions += rng.normal(scale=0.01, size=m.positions.shape)
    ptr = np.cumsum([0] + [len(a) for a in structures])
    positions = torch.tensor(np.concatenate([a.positions for a in structures]))
    cells = torch.tensor(
        np.stack([a.cell[:] if a.pbc.any() else np.zeros((3, 3)) for a in structures])
    )
    pbc = torch.tensor(np.stack([a.pbc for a in structures]))
    edges, shifts, _ = SkinNeighbourList(CUTOFF, 0.0)(positions, cells, pbc, torch.tensor(ptr))
    for b, atoms in enumerate(structures):
        start, stop = ptr[b], ptr[b + 1]
        mine = (edges[0] >= start) & (edges[0] < stop)
        assert ((edges[1][mine] >= start) & (edges[1][mine] < stop)).all()
        got = _within_cutoff(
            (edges[:, mine] - start).numpy(),
            shifts[mine].numpy(),
            atoms.positions,
            cells[b].numpy(),
            CUTOFF,
        )
        assert got == _exact_pairs(atoms, CUTOFF)
