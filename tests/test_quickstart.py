"""The shipped quickstart config is valid and covers the chemistry the issue promises."""

from pathlib import Path

from rdkit import Chem

from mlff_distiller.config import load_config

QUICKSTART = Path(__file__).parents[1] / "configs" / "quickstart.yaml"


def test_quickstart_is_valid_and_covers_organic_chemistry():
    config = load_config(QUICKSTART)
    assert config.teacher.name == "7net-0"
    elements = set()
    for smiles in config.structures.smiles:
        mol = Chem.MolFromSmiles(smiles)
        assert mol is not None, smiles
        elements |= {atom.GetSymbol() for atom in Chem.AddHs(mol).GetAtoms()}
    assert {"H", "C", "N", "O"} <= elements
    assert {"F", "S", "Cl", "P"} & elements
    assert len(set(config.structures.smiles)) == len(config.structures.smiles), "duplicates"
    assert config.structures.md.frames > 0
    assert len(config.structures.md.temperatures_K) >= 2
    assert config.structures.rattle.frames > 0
