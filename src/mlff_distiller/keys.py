"""Every label and array name the project reads or writes, with its shape and unit.

Labels produced by a teacher are namespaced under ``teacher_*`` so that they can never be
confused with a reference calculation (``energy``/``forces`` in an extxyz file) or with a
student prediction. ``N`` is the number of atoms of one structure, ``B`` the number of
structures in a batch.

========================  ===============  =========  ==========================================
key                       shape            unit       meaning
========================  ===============  =========  ==========================================
``teacher_energy``        ()               eV         total potential energy from the teacher
``teacher_forces``        (N, 3)           eV/Å       forces from the teacher
``teacher_stress``        (3, 3)           eV/Å³      stress, ASE sign (periodic cells only)
``teacher_name``          str                         registry name of the teacher
``teacher_version``       str                         package and model version of the teacher
``system_id``             str                         the molecule or crystal a frame came from
``sampler``               str                         how the frame was made (e.g. ``md-300K``)
========================  ===============  =========  ==========================================

Student predictions use the bare names ``energy`` (B,), ``forces`` (N, 3) and ``stress``
(B, 3, 3) in the dictionaries returned by :func:`mlff_distiller.models.predict.predict`.
"""

TEACHER_ENERGY = "teacher_energy"
TEACHER_FORCES = "teacher_forces"
TEACHER_STRESS = "teacher_stress"
TEACHER_NAME = "teacher_name"
TEACHER_VERSION = "teacher_version"
SYSTEM_ID = "system_id"
SAMPLER = "sampler"

ENERGY = "energy"
FORCES = "forces"
STRESS = "stress"
