import pytest

from mlff_distiller.config import Config, ConfigError, load_config


def test_defaults_are_the_seed_configuration():
    config = load_config(None)
    assert (config.model.n_features, config.model.n_blocks) == (128, 3)
    assert (config.model.n_rbf, config.model.cutoff) == (20, 5.0)
    assert config.teacher.name == "7net-0"


def test_every_field_has_a_docstring():
    def walk(model):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            ann = field.annotation
            if isinstance(ann, type) and hasattr(ann, "model_fields"):
                walk(ann)

    walk(Config)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("run_dir: runs/x\ntraining:\n  epochs: 3\n")
    config = load_config(path, ["training.lr=0.01", "structures.smiles=[CCO, CC]"])
    assert config.training.epochs == 3
    assert config.training.lr == pytest.approx(0.01)
    assert config.structures.smiles == ["CCO", "CC"]
    assert str(config.run_dir) == "runs/x"


def test_unknown_key_is_one_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  epohcs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "unknown key 'training.epohcs'" in message
    assert "did you mean 'training.epochs'" in message


def test_unknown_override_and_bad_value():
    with pytest.raises(ConfigError, match="unknown key 'modle'"):
        load_config(None, ["modle.n_features=3"])
    with pytest.raises(ConfigError, match=r"'training\.epochs'"):
        load_config(None, ["training.epochs=many"])
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        load_config(None, ["training.epochs"])


def test_resolved_config_round_trips(tmp_path):
    config = load_config(None, ["training.epochs=7"])
    path = tmp_path / "resolved.yaml"
    path.write_text(config.to_yaml())
    assert load_config(path) == config


def test_missing_file():
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("does/not/exist.yaml")
