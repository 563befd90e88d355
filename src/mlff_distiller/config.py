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
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)


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
    ladder: bool = False
    """Run the temperatures as a ladder, in the order listed: each trajectory starts from
    the last frame of the previous temperature's (velocities drawn afresh) instead of from
    the starting structure."""


class StrainConfig(_Section):
    """Random symmetric strains of crystals, the atoms moving with the cell.

    Only fully periodic systems are strained; molecules get no strained frames.
    """

    frames: int = Field(0, ge=0)
    """Strained frames per crystal (0 disables the sampler)."""
    max_strain: float = Field(0.02, gt=0, lt=0.5)
    """Largest absolute value of each strain component, drawn uniformly (0.02: 2 %)."""


class RattleRelaxConfig(_Section):
    """Rattle-relax chains in the style of augment-atoms (Gardner et al. 2025).

    Each link rattles, runs a few teacher-driven FIRE steps, keeps the frame and hands it
    to the next link.
    """

    chains: int = Field(0, ge=0)
    """Chains per starting structure (0 disables the sampler)."""
    length: int = Field(4, ge=1)
    """Links per chain: each link rattles the previous frame, relaxes it and keeps it."""
    stdev: float = Field(0.1, gt=0)
    """Standard deviation of each Cartesian displacement of a rattle, Å."""
    steps: int = Field(5, ge=1)
    """Most FIRE steps on the teacher after each rattle."""
    fmax: float = Field(0.05, gt=0)
    """A relaxation stops early once every force is below this, eV/Å."""


class NormalModesConfig(_Section):
    """Normal-mode sampling (as ANI-1's, with classical Boltzmann amplitudes).

    The modes are those of the teacher's finite-difference Hessian at the structure
    relaxed on the teacher.
    """

    frames: int = Field(0, ge=0)
    """Frames per starting structure (0 disables the sampler). The Hessian costs 6 N
    teacher evaluations of an N-atom structure."""
    temperature_K: float = Field(300.0, gt=0)
    """Temperature of the Boltzmann distribution of the mode amplitudes, K."""
    delta: float = Field(0.01, gt=0)
    """Finite-difference displacement of the Hessian, Å."""
    relax_steps: int = Field(200, ge=0)
    """Most BFGS steps relaxing the structure on the teacher before the Hessian (0: use it
    as it is). Modes of a structure that is not a minimum include imaginary ones, which are
    skipped with a warning."""
    relax_fmax: float = Field(0.005, gt=0)
    """The relaxation stops once every force is below this, eV/Å."""


class SmilesFileConfig(_Section):
    """A file of molecules as SMILES, so that thousands need not be listed in the YAML.

    ``.smi``: one molecule a line, the SMILES then (after a space or tab) an optional name;
    blank lines and lines starting with ``#`` are skipped, and so is a first line whose first
    word is ``smiles``. ``.csv``: a header row, the SMILES in the column ``column``. A config
    may give just the path (``smiles_files: [mols.smi]``).
    """

    path: Path
    """The file (``.smi`` or ``.csv``)."""
    column: str = "smiles"
    """``.csv`` only: the column holding the SMILES."""
    name_column: str | None = None
    """``.csv`` only: a column of names, each the ``system_id`` of its molecule (None: the
    SMILES is the ``system_id``, as for ``.smi`` lines without a name)."""

    @model_validator(mode="before")
    @classmethod
    def _a_path_alone(cls, data: Any) -> Any:
        return {"path": data} if isinstance(data, str | Path) else data


class CrystalConfig(_Section):
    """A crystal from ASE's bulk builder (``ase.build.bulk``), repeated into a supercell."""

    name: str
    """Chemical symbol or formula of the primitive cell, e.g. ``Cu``, ``Si``, ``NaCl``."""
    crystalstructure: str | None = None
    """``sc``, ``fcc``, ``bcc``, ``hcp``, ``diamond``, ``zincblende``, ``rocksalt``,
    ``cesiumchloride``, ``fluorite`` or ``wurtzite`` (None: ASE's reference structure of the
    element; a compound needs one)."""
    a: float | None = Field(None, gt=0)
    """Lattice constant, Å (None: ASE's reference value for the element; a compound needs
    one)."""
    c: float | None = Field(None, gt=0)
    """Second lattice constant of ``hcp`` and ``wurtzite``, Å (None: the ideal c/a)."""
    cubic: bool = False
    """Build the conventional cubic cell (4 atoms for fcc) instead of the primitive one."""
    supercell: list[int] = Field(default_factory=lambda: [1, 1, 1], min_length=3, max_length=3)
    """Repetitions of the cell along its three vectors."""
    system_id: str | None = None
    """Name of the system (None: made from the fields above, e.g. ``Cu-fcc-a3.61-2x2x2``)."""

    @field_validator("supercell")
    @classmethod
    def _positive_repetitions(cls, value: list[int]) -> list[int]:
        if min(value) < 1:
            raise ValueError("every repetition must be at least 1, e.g. [2, 2, 2]")
        return value


class LabelledFileConfig(_Section):
    """Structures with labels the user already has, reused as they are (no sampling, no teacher).

    The labels may come from DFT or an earlier teacher run. Each frame's energy, forces and
    (fully periodic frames only) stress are read under the keys below and stored as
    ``teacher_*`` labels, so a file written by ``mlff-distill export-data`` is read back with
    the defaults. The bare keys ``energy``, ``forces`` and ``stress`` are read from the
    results ASE attaches to a frame. Units must be eV, eV/Å and eV/Å³ (ASE's stress sign),
    and labels mixed with the teacher's in one run must come from the same level of theory.
    """

    path: Path
    """An ASE-readable file with per-frame labels (extxyz)."""
    energy_key: str = "teacher_energy"
    """Info key of the total energy, eV (e.g. ``energy``, ``REF_energy``)."""
    forces_key: str = "teacher_forces"
    """Per-atom array key of the forces, eV/Å (e.g. ``forces``, ``REF_forces``)."""
    stress_key: str | None = "teacher_stress"
    """Info key of the stress, eV/Å³, 3x3 or Voigt 6 (e.g. ``stress``, ``REF_stress``); read
    for fully periodic frames that have it (None: never read)."""
    system_key: str | None = "system_id"
    """Info key naming each frame's system: frames with the same value are one system,
    split together. Frames without it (or with None) are each a system ``{file}:{index}``."""


class StructuresConfig(_Section):
    """Where the unlabelled structures come from and how they are perturbed."""

    smiles: list[str] = Field(default_factory=list)
    """Molecules as SMILES; embedded in 3D by RDKit with explicit hydrogens."""
    ase_molecules: list[str] = Field(default_factory=list)
    """Names from ASE's molecule collection (``ase.build.molecule``), e.g. ``C6H6``."""
    smiles_files: list[SmilesFileConfig] = Field(default_factory=list)
    """Files of SMILES (``.smi`` or ``.csv``), each molecule embedded like ``smiles``."""
    conformers: int = Field(1, ge=1)
    """Conformers embedded per SMILES (RDKit ETKDG, then MMFF): each is sampled (rattle,
    MD) as a starting structure, and all keep the molecule's ``system_id`` (one split).
    Conformers that relax to the same geometry are kept once, so a rigid molecule may get
    fewer."""
    embedding_seed: int = 0
    """Seed of the ETKDG embedding: the k-th SMILES (``smiles`` first, then
    ``smiles_files``) is embedded with seed ``embedding_seed + k``."""
    crystals: list[CrystalConfig] = Field(default_factory=list)
    """Crystals and supercells from ASE's bulk builder (periodic, sampled like molecules)."""
    files: list[Path] = Field(default_factory=list)
    """Any ASE-readable files (SDF and MOL files through RDKit); each frame becomes its own
    system (``file:index``). Molecules (non-periodic frames, and every frame of a PDB file)
    must carry their hydrogens (see ``allow_missing_hydrogens``)."""
    labelled_files: list[LabelledFileConfig] = Field(default_factory=list)
    """Files of structures already labelled, reused as they are (no sampling, no teacher)."""
    allow_missing_hydrogens: bool = False
    """Accept molecules from ``files`` and ``labelled_files`` that lack hydrogens: a carbon,
    nitrogen, oxygen or sulfur whose neighbours leave its valence unsatisfied (judged from
    the geometry), or an SDF record whose bond orders imply hydrogens it does not have.
    False refuses them, naming the file, frame and atoms; set True only for species that
    truly have dangling bonds (radicals, carbenes, bare atoms)."""
    include_initial: bool = True
    """Keep the starting geometry of every system as a frame."""
    rattle: RattleConfig = Field(default_factory=RattleConfig)
    """Rattling sampler."""
    md: MDConfig = Field(default_factory=MDConfig)
    """Teacher-driven MD sampler."""
    strain: StrainConfig = Field(default_factory=StrainConfig)
    """Cell-strain sampler (crystals only; off by default)."""
    rattle_relax: RattleRelaxConfig = Field(default_factory=RattleRelaxConfig)
    """Rattle-relax sampler (off by default)."""
    normal_modes: NormalModesConfig = Field(default_factory=NormalModesConfig)
    """Normal-mode sampler (off by default)."""
    min_distance: float = Field(0.6, gt=0)
    """Frames with two atoms closer than this (Å) are dropped before labelling."""


class TeacherConfig(_Section):
    """The pretrained potential whose labels the student learns."""

    name: str = "7net-0"
    """Registry name of the teacher: ``7net-0`` (SevenNet-0), ``chgnet``, ``orb`` or
    ``mace`` (weights from ``weights``), or ``emt`` (toy)."""
    weights: Path | None = None
    """Local weights file of an ``orb`` or ``mace`` teacher (nothing is downloaded): for
    ``orb`` the ``.ckpt`` state dict of the architecture named by ``model``, for ``mace`` a
    ``.model`` file saved with ``torch.save`` of a whole MACE model. Must be unset for the
    teachers whose weights ship with their package (``7net-0``, ``chgnet``, ``emt``). A
    relative path is relative to the working directory. The file is checked when the teacher
    is loaded, so that a run's config still loads where the file is absent (e.g. to evaluate
    on another machine)."""
    model: str | None = None
    """Architecture of the ``orb`` weights file: a name of orb-models'
    ``ORB_PRETRAINED_MODELS``, e.g. ``orb-v3-conservative-inf-omat`` (conservative models,
    whose forces are energy gradients, make the better teachers). Unused by other teachers."""
    device: str = "cpu"
    """Torch device the teacher runs on (with ``torchrun`` or ``--workers``, ``cuda`` means
    each process's own GPU)."""
    shard_size: int = Field(64, ge=1)
    """Structures per labelled shard; a stopped run loses at most one shard of work."""
    batch_atoms: int | None = Field(2048, ge=1)
    """Most atoms per teacher call, for teachers that batch (``7net-0`` labelling and
    teacher MD, ``chgnet`` labelling): many structures (MD trajectories) go through the
    model at once, with the same labels (frames) as one at a time. Larger is faster until
    memory runs out (SevenNet-0 needs about 1.4 MB per atom: 3 GB at 2048 atoms); a larger
    structure goes alone. ``null``: one structure at a time through the teacher's ASE
    calculator (MD with ASE's Langevin)."""

    @model_validator(mode="after")
    def _weights_file_where_needed(self) -> TeacherConfig:
        from mlff_distiller.teachers.registry import WEIGHTS_FILE_TEACHERS

        if self.name in WEIGHTS_FILE_TEACHERS:
            if self.weights is None:
                raise ValueError(
                    f"teacher {self.name!r} needs teacher.weights, a local weights file "
                    "(nothing is downloaded); see the README, section 'Teachers'"
                )
            if self.name == "orb" and self.model is None:
                raise ValueError(
                    "teacher 'orb' needs teacher.model, the Orb architecture of the weights "
                    "file (e.g. orb-v3-conservative-inf-omat)"
                )
        elif self.weights is not None:
            raise ValueError(
                f"teacher {self.name!r} uses the weights bundled with its package; remove "
                "teacher.weights"
            )
        return self


class DataConfig(_Section):
    """Packing and splitting of the labelled structures."""

    val_fraction: float = Field(0.1, ge=0, lt=1)
    """Fraction of systems (not frames) held out for validation (early stopping, LR)."""
    test_fraction: float = Field(0.15, gt=0, lt=1)
    """Fraction of systems (not frames) held out for the final test; never trained on."""
    split_seed: int = 0
    """Seed of the assignment of systems to train/val/test."""
    elements: list[str] | None = None
    """Element whitelist (symbols): systems with any other element are dropped before
    generation, and counted in ``data/filters.json`` (None: keep every system)."""
    duplicate_tolerance: float | None = Field(0.001, gt=0)
    """Near-duplicate removal before labelling, Å: a frame whose sorted interatomic distances
    (pairs within 6 Å, periodic images included) all lie within this of those of an earlier
    frame of the same system is dropped (None: keep all). Small on purpose: it removes
    repeats (conformers that relaxed alike, a frame listed twice), not thermal neighbours,
    whose forces differ by ~0.1 eV/Å per 0.001 Å on a stiff bond."""
    max_force: float | None = Field(30.0, gt=0)
    """Largest teacher force on any atom of a kept frame, eV/Å: frames beyond it (atoms too
    close, an exploding trajectory, a teacher out of its domain) are dropped after labelling
    (None: keep all)."""

    @field_validator("elements")
    @classmethod
    def _known_symbols(cls, value: list[str] | None) -> list[str] | None:
        from ase.data import atomic_numbers

        unknown = [symbol for symbol in value or () if symbol not in atomic_numbers]
        if unknown:
            raise ValueError(f"{unknown} are no element symbols (write e.g. H, C, N, O, Cl)")
        return value

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
    lean_messages: bool = False
    """Train with memory-lean messages (``mlff_distiller.models.edge_ops``): the same model
    and results to round-off, but the forces and their gradients keep about 1 KB per edge
    instead of 42 KB (seed student), so batches several times larger fit in memory. On an
    H100 it is slower (seed student, 16 ninety-atom structures: 40.6 ms per eager step
    against 24.4 ms for a plain eager PaiNN; peak memory 0.90 against 2.34 GiB,
    ``benchmarks/train_speed.py``), so it is off by default: turn it on when a batch does
    not fit. Inference always runs the plain ops. Not stored with the model."""


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
    cuda_graph: bool | None = None
    """Capture the whole training step (forward, forces, backward, clipping, AdamW, EMA)
    once in a CUDA graph and replay it for every batch: one launch instead of about a
    thousand small kernels, which is what a small batch is bound by. Needs
    ``static_shapes`` and a CUDA ``device``; the loss curve equals the eager one to float32
    round-off. None: on when both hold. With several processes (``torchrun``) the step runs
    eagerly whatever this says: DistributedDataParallel's gradient all-reduce is not
    captured."""
    compile: bool | None = None
    """Compile energies, forces and loss of the step with ``torch.compile`` (forces by
    ``torch.func``, so that the parameter gradients need only a first-order backward, which
    is compiled too): inductor fuses the per-edge work of forward and backward into a few
    kernels. On an H100 with the seed student, with ``cuda_graph``, 2.4 to 3.5 times faster
    than the uncompiled captured step (batches of 8 to 256) and with a lower peak memory
    (``benchmarks/train_speed.py``). The first step compiles (about 25 s on that GPU, more
    on a CPU), and so does a step whose padded capacities grow; the same loss to float32
    round-off. Needs ``static_shapes``; not with ``model.lean_messages``. None: on when the
    step is captured in a CUDA graph (``cuda_graph``). With several processes the step runs
    uncompiled whatever this says. A torch that cannot compile the step warns and trains
    uncompiled."""
    seed: int = 0
    """Seed of initialisation and batch order."""

    @model_validator(mode="after")
    def _cuda_graph_has_what_it_needs(self) -> TrainingConfig:
        if self.compile and not self.static_shapes:
            raise ValueError(
                "training.compile=true needs training.static_shapes=true (every new batch "
                "shape would compile again): set it, or leave compile unset"
            )
        if self.cuda_graph and not self.static_shapes:
            raise ValueError(
                "training.cuda_graph=true needs training.static_shapes=true (a CUDA graph "
                "replays fixed shapes): set it, or leave cuda_graph unset"
            )
        if self.cuda_graph and not self.device.startswith("cuda"):
            raise ValueError(
                f"training.cuda_graph=true needs a CUDA device, not {self.device!r}: set "
                "training.device=cuda, or leave cuda_graph unset"
            )
        return self


class EvaluationConfig(_Section):
    """Held-out evaluation of the student against the teacher."""

    batch_size: int = Field(32, ge=1)
    """Structures per evaluation batch."""


class ValidateMDConfig(_Section):
    """MD of the student beside its teacher on held-out systems (``report/md.json``).

    The defaults fit the quickstart budget: with SevenNet-0 on a CPU (about 0.05 s a step
    for a 10-atom molecule, the student about 0.005 s) the stage takes about 2.5 minutes of
    one core for 3 small molecules, most of it in the teacher's 1,440 steps. On CPUs the
    runs go to one single-threaded process per torch thread (``threads``): small molecules
    gain little from a second thread, much from a second process. Longer runs
    give steadier drift, temperature and distribution figures: raise the step counts where
    the teacher is fast (a GPU).
    """

    systems: list[str] = Field(default_factory=list)
    """Test systems to run, by ``system_id`` (as in ``report/metrics.json``); empty: pick
    ``n_systems`` of them at random (``seed``)."""
    n_systems: int | None = Field(3, ge=1)
    """How many test systems to run when ``systems`` is empty (None: every test system)."""
    timestep_fs: float = Field(0.5, gt=0)
    """Time step of every run, fs (0.5 fs resolves X-H vibrations)."""
    nve_temperature_K: float = Field(300.0, gt=0)
    """Temperature of the Maxwell-Boltzmann velocities that start the NVE runs, K."""
    nve_student_steps: int = Field(800, ge=2)
    """Velocity-Verlet steps of the student's NVE run (800: 0.4 ps at 0.5 fs)."""
    nve_teacher_steps: int = Field(160, ge=2)
    """Velocity-Verlet steps of the teacher's NVE run from the same start (160: 80 fs)."""
    temperatures_K: list[float] = Field(default_factory=lambda: [300.0, 600.0], min_length=1)
    """Temperatures of the Langevin (NVT) runs, K: one student and one teacher run each."""
    nvt_student_steps: int = Field(800, ge=2)
    """Langevin steps of the student at each temperature (800: 0.4 ps at 0.5 fs)."""
    nvt_teacher_steps: int = Field(160, ge=2)
    """Langevin steps of the teacher at each temperature, from the same start and
    velocities (shorter: the teacher is the slow one)."""
    friction_per_fs: float = Field(0.01, gt=0)
    """Langevin friction, 1/fs (0.01: the thermostat relaxes in about 100 fs)."""
    sample_interval: int = Field(5, ge=1)
    """NVT steps between frames kept for the structure distributions and on-policy errors."""
    on_policy_frames: int = Field(20, ge=1)
    """Frames of the student's own NVT trajectories (spread evenly over them) labelled by the
    teacher for the on-policy errors."""
    require_topology: bool = True
    """A run is unstable when its bonded topology changes (the three factors below). False:
    only close contacts and temperature count, as for metals and liquids, whose neighbours
    change without any bond breaking."""
    bond_factor: float = Field(1.2, gt=0)
    """Two atoms of the start are bonded when closer than this times the sum of their
    covalent radii (ASE's ``natural_cutoffs``): the topology (1.2 holds every bond of an
    equilibrium organic molecule, C-H included, and no 1-3 pair)."""
    bond_break_factor: float = Field(1.5, gt=0)
    """A bond of the start is broken when it stretches beyond this times the sum of the
    covalent radii (above ``bond_factor``, so that a bond vibrating near its threshold does
    not flicker)."""
    bond_form_factor: float = Field(1.0, gt=0)
    """A new bond forms when two atoms not bonded at the start come closer than this times
    the sum of their covalent radii (at most ``bond_factor``: a 1-3 pair of heavy atoms,
    Cl-C-Cl, comes within 1.2 times its radii at 600 K without any reaction)."""
    min_distance_A: float = Field(0.6, gt=0)
    """A run is unstable when two atoms come closer than this, Å."""
    temperature_factor: float = Field(2.0, gt=1)
    """An NVT run at target T is unstable when the mean kinetic temperature over the last
    ``temperature_window_fs`` rises above T x factor (once a window is full), or the mean
    since the end of the first window (equilibration) falls below T / factor. A thermostat
    that cannot hold the temperature means the student feeds it energy."""
    temperature_window_fs: float = Field(100.0, gt=0)
    """Window of the running mean temperature, and length of the equilibration, fs."""
    max_drift_mev_per_atom_per_ps: float = Field(5.0, gt=0)
    """Acceptance: largest |drift| of the student's NVE total energy, meV/atom/ps (loose:
    over a run of 0.4 ps the fitted slope carries the energy's oscillation)."""
    max_on_policy_force_rmse_ev_per_a: float = Field(0.5, gt=0)
    """Acceptance: largest force RMSE of the student against the teacher on frames of the
    student's own NVT trajectories, eV/Å."""
    seed: int = 0
    """Seed of the system choice, the starting velocities and the Langevin noise."""
    device: str | None = None
    """Torch device of the student (None: ``training.device``); the teacher runs on
    ``teacher.device``."""

    @field_validator("temperatures_K")
    @classmethod
    def _positive_temperatures(cls, value: list[float]) -> list[float]:
        if min(value) <= 0:
            raise ValueError("every temperature must be above 0 K, e.g. [300, 600]")
        return value

    @model_validator(mode="after")
    def _ordered_bond_factors(self) -> ValidateMDConfig:
        if not self.bond_form_factor <= self.bond_factor < self.bond_break_factor:
            raise ValueError(
                "the bond factors must be ordered bond_form_factor <= bond_factor < "
                f"bond_break_factor (got {self.bond_form_factor:g}, {self.bond_factor:g}, "
                f"{self.bond_break_factor:g}; the defaults are 1.0, 1.2, 1.5)"
            )
        return self


class Config(_Section):
    """A whole distillation run: one run directory, every stage's settings."""

    run_dir: Path = Path("runs/default")
    """Directory that holds everything the run produces (relative to the working directory)."""
    threads: int | None = Field(None, ge=1)
    """CPU threads for torch, in each process (None: torch's default; with several processes,
    ``torchrun`` or ``--workers``, the cores of a machine shared out among its processes)."""
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
    validate_md: ValidateMDConfig = Field(default_factory=ValidateMDConfig)
    """Molecular-dynamics validation of the student beside the teacher."""

    @model_validator(mode="after")
    def _compile_not_lean(self) -> Config:
        if self.training.compile and self.model.lean_messages:
            raise ValueError(
                "training.compile=true and model.lean_messages=true exclude each other (the "
                "lean messages are custom autograd functions torch.compile does not trace): "
                "set one of them to false"
            )
        return self

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
        elif not key:  # a check across sections: its message names the keys
            lines.append(err["msg"].removeprefix("Value error, "))
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
