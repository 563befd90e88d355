"""Typed configuration of a distillation run, read from YAML with ``a.b=c`` overrides.

Every field has a docstring (shown by ``mlff-distill config --help``-style tooling and kept in
the resolved ``RUN/config.yaml``); defaults are the seed configuration. An unknown or misspelt
key is an error that names it, never silently dropped.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A configuration file or override that cannot be used; the message names the key."""


class _Section(BaseModel):
    # NaN and infinity pass ``gt``/``ge`` bounds (inf > 0) but no setting means them.
    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, frozen=True, allow_inf_nan=False
    )


class RattleConfig(_Section):
    """Random Gaussian displacements of the starting geometry."""

    frames: int = Field(4, ge=0)
    """Rattled frames per system (0 disables the sampler)."""
    stdev: float = Field(0.05, gt=0)
    """Standard deviation of the displacement of each Cartesian component, Å."""


class MDConfig(_Section):
    """Short Langevin MD driven by the teacher, at one or more temperatures."""

    temperatures_K: list[float] = Field(default_factory=lambda: [300.0, 600.0])
    """Temperatures of the Langevin thermostat, K; one trajectory per temperature."""
    frames: int = Field(6, ge=0)
    """Frames kept per trajectory (0 disables the sampler)."""
    interval: int = Field(10, ge=1)
    """MD steps between kept frames."""
    timestep_fs: float = Field(0.5, gt=0)
    """Integration time step, fs."""
    friction_per_fs: float = Field(0.01, gt=0)
    """Langevin friction coefficient, 1/fs."""


class StructuresConfig(_Section):
    """Where the unlabelled structures come from and how they are perturbed."""

    smiles: list[str] = Field(default_factory=list)
    """Molecules as SMILES; embedded in 3D by RDKit with explicit hydrogens."""
    ase_molecules: list[str] = Field(default_factory=list)
    """Names from ASE's molecule collection (``ase.build.molecule``), e.g. ``C6H6``."""
    files: list[Path] = Field(default_factory=list)
    """Any ASE-readable files; each frame becomes its own system (``file:index``)."""
    include_initial: bool = True
    """Keep the starting geometry of every system as a frame."""
    rattle: RattleConfig = Field(default_factory=RattleConfig)
    """Rattling sampler."""
    md: MDConfig = Field(default_factory=MDConfig)
    """Teacher-driven MD sampler."""
    min_distance: float = Field(0.6, gt=0)
    """Frames with two atoms closer than this (Å) are dropped before labelling."""


class TeacherConfig(_Section):
    """The pretrained potential whose labels the student learns."""

    name: str = "7net-0"
    """Registry name of the teacher: ``7net-0`` (SevenNet-0), ``chgnet`` or ``emt`` (toy)."""
    device: str = "cpu"
    """Torch device the teacher runs on."""
    shard_size: int = Field(64, ge=1)
    """Structures per labelled shard; a stopped run loses at most one shard of work."""


class DataConfig(_Section):
    """Packing and splitting of the labelled structures."""

    val_fraction: float = Field(0.1, ge=0, lt=1)
    """Fraction of systems (not frames) held out for validation (early stopping, LR)."""
    test_fraction: float = Field(0.15, gt=0, lt=1)
    """Fraction of systems (not frames) held out for the final test; never trained on."""
    split_seed: int = 0
    """Seed of the assignment of systems to train/val/test."""

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError("val_fraction + test_fraction must leave at least 10% to train on")
        return self


class ModelConfig(_Section):
    """The PaiNN student (defaults: the seed configuration)."""

    n_features: int = Field(128, ge=1)
    """Width of the scalar and vector features."""
    n_blocks: int = Field(3, ge=1)
    """Number of message + update blocks."""
    n_rbf: int = Field(20, ge=1)
    """Number of Bessel radial basis functions."""
    cutoff: float = Field(5.0, gt=0)
    """Neighbour cutoff radius, Å; the cosine envelope takes energies smoothly to zero there."""


class TrainingConfig(_Section):
    """Optimisation of the student against the teacher's labels."""

    epochs: int = Field(100, ge=1)
    """Maximum number of epochs."""
    batch_size: int = Field(16, ge=1)
    """Structures per optimisation step (at most, with a budget below), over all processes
    together: with ``torchrun`` each process takes a share of every batch."""
    batch_atoms: int | None = Field(None, ge=1)
    """Atom budget of a step: a batch takes structures (in shuffled order) until the next
    would exceed it, so that structures of mixed sizes give steps of equal cost; a structure
    larger than the budget is a batch alone (None: no atom budget)."""
    batch_edges: int | None = Field(None, ge=1)
    """Edge (neighbour pair) budget of a step, like ``batch_atoms``; edges set the cost of a
    step more than atoms do (None: no edge budget)."""
    lr: float = Field(1e-3, gt=0)
    """Peak AdamW learning rate, reached at the end of the warm-up."""
    lr_schedule: Literal["cosine", "plateau"] = "cosine"
    """``cosine``: after the warm-up the LR decays along a cosine to ``min_lr`` exactly at
    the end of the budget (``epochs`` or ``max_minutes``, whichever ends first).
    ``plateau``: the LR is multiplied by ``lr_factor`` after ``lr_patience`` epochs without
    validation improvement, and training stops below ``min_lr``."""
    warmup_epochs: float = Field(1.0, ge=0)
    """Epochs (fractions allowed) over which the LR rises linearly from 0 to ``lr``; at most
    half of the run."""
    weight_decay: float = Field(0.0, ge=0)
    """AdamW decoupled weight decay."""
    normalise_loss: bool = True
    """Divide each loss term by its scale on the training set: the mean square of the
    residual energy per atom (after the fitted per-element reference energies), of the force
    components and of the stress components. Each term is then about 1 for a student that
    knows only the reference energies and 0 for a perfect one, so the weights below compare
    fractions of unexplained variance, independent of units and chemistry. False: raw mean
    squared errors in (eV/atom)², (eV/Å)² and (eV/Å³)²."""
    energy_weight: float = Field(1.0, ge=0)
    """Weight of the energy-per-atom term (normalised, see ``normalise_loss``). Raise it
    towards ``force_weight`` when energies matter more than forces: it lowers the energy
    error at some cost in force error."""
    force_weight: float = Field(20.0, ge=0)
    """Weight of the force-component term (normalised, see ``normalise_loss``): 20 times the
    energy's by default, as a structure has 3N force labels and one energy. On small organic
    molecules (energy scale ~0.1 eV/atom, force scale ~1.7 eV/Å) this equals raw weights
    of about 10 for the energy and 1 for the forces."""
    stress_weight: float = Field(1.0, ge=0)
    """Weight of the stress-component term (normalised); used only for structures with a
    teacher stress (periodic cells), and only when the training set has some."""
    huber_delta: float | None = Field(None, gt=0)
    """Huber loss instead of squared errors: residuals beyond ``huber_delta`` (in units of
    each term's scale, i.e. of normalised residuals) count linearly, not quadratically,
    which tames outlier frames (None: squared errors)."""
    ema_decay: float = Field(0.99, ge=0, lt=1)
    """Decay of the exponential moving average of the weights that is validated and exported."""
    grad_clip: float = Field(10.0, gt=0)
    """Maximum gradient norm per step."""
    lr_patience: int = Field(5, ge=0)
    """``plateau`` schedule: epochs without validation improvement before the LR is lowered."""
    lr_factor: float = Field(0.5, gt=0, lt=1)
    """``plateau`` schedule: factor by which the LR is multiplied."""
    min_lr: float = Field(1e-5, ge=0)
    """``cosine``: the LR at the end of the budget. ``plateau``: training stops below it."""
    early_stopping_patience: int | None = Field(20, ge=1)
    """Stop after this many epochs without a lower validation loss (None: never)."""
    max_minutes: float | None = Field(None, gt=0)
    """Wall-clock budget: training stops after the last whole epoch that fits, judged from
    the mean epoch time so far, and the cosine schedule ends there (None: no limit)."""
    device: str = "cpu"
    """Torch device for training and evaluation of the student (with ``torchrun``, ``cuda``
    means each process's own GPU)."""
    resident: bool | None = None
    """Keep the whole training set on the device; False: in pinned host memory, batches
    copied asynchronously (None: on the device when it takes at most a quarter of the free
    GPU memory; a CPU device always holds it)."""
    static_shapes: bool = False
    """Pad every batch to fixed atom, edge and structure capacities (padding contributes
    exactly zero), so that every step has the same shapes, as a captured CUDA graph needs.
    Eager steps gain nothing from it and do the padding's work, so it is off by default."""
    seed: int = 0
    """Seed of initialisation and batch order."""


class EvaluationConfig(_Section):
    """Held-out evaluation of the student against the teacher."""

    batch_size: int = Field(32, ge=1)
    """Structures per evaluation batch."""


class Config(_Section):
    """A whole distillation run: one run directory, every stage's settings."""

    run_dir: Path = Path("runs/default")
    """Directory that holds everything the run produces (relative to the working directory)."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch (None: torch's default)."""
    structures: StructuresConfig = Field(default_factory=StructuresConfig)
    """Structure generation."""
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    """Teacher labelling."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Dataset packing and splits."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Student architecture."""
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    """Training."""
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    """Evaluation."""

    def to_yaml(self) -> str:
        """The resolved config (every default filled in) as YAML."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_known_keys(ann, prefix + name + "."))
    return keys


def _explain(error: ValidationError, origin: str) -> ConfigError:
    lines = []
    known = _known_keys(Config)
    for err in error.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(key, known, n=1)
            fix = f" (did you mean '{hint[0]}'?)" if hint else ""
            lines.append(f"unknown key '{key}'{fix}")
        else:
            lines.append(f"'{key}': {err['msg']} (got {_shorten(repr(err.get('input')))})")
    return ConfigError(f"{origin}: " + "; ".join(lines))


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def apply_override(data: dict[str, Any], override: str) -> None:
    """Set ``a.b=c`` in a nested dict; ``c`` is parsed as YAML (numbers, lists, null...)."""
    if "=" not in override:
        raise ConfigError(f"override '{override}' is not of the form key.path=value")
    path, raw = override.split("=", 1)
    keys = path.strip().split(".")
    if not all(key.strip() for key in keys):
        raise ConfigError(
            f"override '{override}': the key path '{path}' has an empty part "
            "(write it as key.path=value, e.g. training.epochs=5)"
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc)
        raise ConfigError(
            f"override '{override}': the value is not valid YAML ({problem}); quote it or "
            'close its brackets, e.g. structures.smiles="[CCO, CCN]"'
        ) from None
    node = data
    for depth, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:  # absent, or an empty section in the YAML file
            child = node[key] = {}
        if not isinstance(child, dict):
            section = ".".join(keys[: depth + 1])
            raise ConfigError(f"override '{override}': '{section}' is a value, not a section")
        node = child
    node[keys[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or none: all defaults) and apply ``a.b=c`` overrides.

    Raises
    ------
    ConfigError
        If the file is missing or not a mapping, or any key is unknown or has a bad value;
        the message names the file and the key.
    """
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a text file (a config is YAML text)") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot be read ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        data = loaded or {}
    for override in overrides:
        apply_override(data, override)
    if overrides:
        origin += " with overrides " + " ".join(overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, origin) from None
