"""The run's report for people: ``report/index.html`` and ``report/model_card.md``.

Both are rendered from the files of the run directory alone; no model runs, so rendering
takes about a second and the ``report`` stage redoes it every time:

============================  ===========================================  ==================
file                          gives                                        without it
============================  ===========================================  ==================
``report/metrics.json``       held-out errors, student, versions, machine  an error: evaluate
``report/*.png``              parity, error histograms, learning curves    a note
``data/dataset.h5``           the data: counts, elements, sizes, samplers  a note
``report/data_report.json``   data sources and warnings, plots in          a note
                              ``report/data/``
``logs/metrics.csv``          epochs and training time                     a note
``report/md.json``            MD verdicts, on-policy errors, MD plots      "not run"
``report/benchmark.json``     speed (``benchmarks/md_speed.py --out``)     "not measured"
============================  ===========================================  ==================

The HTML page is one self-contained file: plots are embedded as base64 PNG, the style is
inline, and there is no script and no external URL, so the page can be mailed or archived
alone. All text that comes from the run (system names, SMILES, reasons) is escaped. The
optional files are read defensively: a missing or malformed entry shows as "—", never as a
failure to render.
"""

from __future__ import annotations

import base64
import csv
import datetime
import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from ase.data import chemical_symbols

import mlff_distiller
from mlff_distiller import keys
from mlff_distiller.atomic import CorruptFileError, write_text
from mlff_distiller.config import Config

#: Report files, relative to the run directory.
HTML_PATH = Path("report") / "index.html"
MODEL_CARD_PATH = Path("report") / "model_card.md"
MD_PATH = Path("report") / "md.json"
DATA_REPORT_PATH = Path("report") / "data_report.json"
BENCHMARK_PATH = Path("report") / "benchmark.json"

#: Ids of the sections of ``index.html``, in page order, with their headings.
SECTIONS = {
    "provenance": "Provenance",
    "metrics": "Accuracy against the teacher",
    "verdicts": "Molecular dynamics verdicts",
    "speed": "Speed",
    "parity": "Parity plots",
    "errors": "Error distributions",
    "per-element": "Force errors per element",
    "per-system": "Errors per test system",
    "md": "Molecular dynamics traces and distributions",
    "learning-curves": "Learning curves",
    "data": "Training data",
}

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_DASH = "—"


@dataclass(frozen=True)
class ReportFiles:
    """What :func:`write_report` wrote, and the optional inputs it could not use."""

    html: Path
    """``report/index.html``."""
    model_card: Path
    """``report/model_card.md``."""
    problems: tuple[str, ...]
    """One message per optional input that was present but unusable (``md.json``...)."""


def write_report(config: Config, run_dir: Path | None = None) -> ReportFiles:
    """Render ``report/index.html`` and ``report/model_card.md`` of a run (atomic writes).

    Parameters
    ----------
    config
        The run's resolved config (its samplers give the data's temperatures).
    run_dir
        The run directory (default: ``config.run_dir``).

    Raises
    ------
    FileNotFoundError
        If the run has no ``report/metrics.json`` (the student was not evaluated yet).
    CorruptFileError
        If ``report/metrics.json`` is damaged.
    """
    run_dir = Path(config.run_dir if run_dir is None else run_dir)
    context = collect(config, run_dir)
    files = ReportFiles(
        run_dir / HTML_PATH,
        run_dir / MODEL_CARD_PATH,
        tuple(
            view["problem"]
            for view in (context["data_report"], context["md"], context["speed"])
            if view is not None and view["problem"]
        ),
    )
    write_text(files.model_card, render_model_card(context))
    write_text(files.html, render_html(context))
    return files


def render_html(context: dict[str, Any]) -> str:
    """The self-contained HTML page of a :func:`collect` context."""
    template = _templates(autoescape=True).get_template("report.html.j2")
    return template.render(**context, sections=SECTIONS)


def render_model_card(context: dict[str, Any]) -> str:
    """The Markdown model card of a :func:`collect` context."""
    # Markdown is not escaped as HTML: run text goes through the ``code`` and ``text`` filters.
    env = _templates(autoescape=False)
    env.filters["code"] = markdown_code
    env.filters["text"] = markdown_text
    return env.get_template("model_card.md.j2").render(**context)


def _templates(autoescape: bool) -> jinja2.Environment:
    """The package's templates (``evaluation/templates``); a missing variable is an error."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("mlff_distiller.evaluation", "templates"),
        autoescape=autoescape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def markdown_code(text: Any, table: bool = False) -> str:
    """``text`` as a Markdown code span, whatever backticks or brackets it holds (SMILES).

    With ``table``, ``|`` is escaped so that the span stays in its table cell.
    """
    text = " ".join(str(text).split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    if table:
        text = text.replace("|", "\\|")
    return f"{fence}{pad}{text}{pad}{fence}"


def markdown_text(text: Any) -> str:
    """``text`` as plain Markdown prose: characters that would format (``*_[]<>|`` ...) escaped."""
    return re.sub(r"([\\`*_\[\]<>|#])", r"\\\1", " ".join(str(text).split()))


# --- gathering the run's files ----------------------------------------------------------


def collect(config: Config, run_dir: Path) -> dict[str, Any]:
    """Everything the report and the model card show, read from the run directory.

    Returns
    -------
    dict
        Plain data for the templates: ``metrics`` (``report/metrics.json`` as written),
        ``data``, ``training``, ``md``, ``speed`` (each ``None`` when its file is absent)
        and prepared rows and embedded plots.
    """
    run_dir = Path(run_dir)
    report = run_dir / "report"
    metrics = read_metrics(report / "metrics.json")
    data = data_summary(run_dir / "data" / "dataset.h5")
    md = md_view(run_dir / MD_PATH)
    speed = speed_view(run_dir / BENCHMARK_PATH)
    return {
        "title": f"Student of {metrics.get('teacher', 'its teacher')}",
        "run_dir": str(run_dir),
        "rendered": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "version": mlff_distiller.__version__,
        "metrics": metrics,
        "headline": {
            "force": fmt(metrics.get("force_rmse_ev_per_a"), ".3f"),
            "energy": fmt(metrics.get("energy_mae_mev_per_atom"), ".1f"),
        },
        "metric_rows": metric_rows(metrics, md),
        "element_rows": element_rows(metrics, data),
        "system_rows": system_rows(metrics, data),
        "data": data,
        "data_report": data_report_view(run_dir / DATA_REPORT_PATH),
        "samplers": sampler_settings(config),
        "training": training_summary(run_dir / "logs" / "metrics.csv", config),
        "student_rows": student_rows(metrics),
        "environment_rows": _pairs(metrics.get("environment")),
        "md": md,
        "speed": speed,
        "limits": known_limits(metrics, data, config, md),
        "plots": {
            name: embed_png(report / f"{name}.png")
            for name in ("parity", "errors", "learning_curves")
        },
    }


def read_metrics(path: Path) -> dict[str, Any]:
    """``report/metrics.json``, checked to be an evaluation's.

    Raises
    ------
    FileNotFoundError
        If it does not exist: the student has not been evaluated.
    CorruptFileError
        If it is not the JSON object an evaluation writes.
    """
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no evaluation to report (run `mlff-distill evaluate {path.parent.parent}`"
            " first)"
        )
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        metrics = None
    if not isinstance(metrics, dict) or "force_rmse_ev_per_a" not in metrics:
        raise CorruptFileError(
            f"{path} is not an evaluation's metrics file (truncated or corrupted): delete it "
            f"and run `mlff-distill evaluate {path.parent.parent}` again"
        )
    return metrics


def embed_png(path: Path) -> str | None:
    """A PNG file as a ``data:`` URI, or ``None`` when absent or not a whole PNG."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(_PNG_MAGIC):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def data_summary(path: Path) -> dict[str, Any] | None:
    """What the student was trained and tested on, from ``data/dataset.h5``.

    Returns
    -------
    dict or None
        Counts of structures and systems (overall and per split), elements, atoms per
        structure (min, median, max), periodic and molecular structures, frames per sampler,
        the systems of each split, and test atoms per element and frames per test system;
        ``None`` when the dataset is missing or unreadable.
    """
    from mlff_distiller.data.dataset import SPLITS, load_dataset

    try:
        dataset = load_dataset(path)
    except (OSError, CorruptFileError, KeyError):
        return None
    arrays = dataset.arrays
    n_atoms = dataset.n_atoms()
    periodic = np.asarray(arrays["pbc"]).all(axis=1)
    splits = {}
    for name in SPLITS:
        sub = dataset.subset(name)
        splits[name] = {"structures": len(sub), "systems": sub.systems()}
    test = dataset.subset("test")
    test_numbers = Counter(test.arrays["numbers"].tolist())
    samplers = Counter(arrays[keys.SAMPLER].tolist()) if keys.SAMPLER in arrays else Counter()
    return {
        "n_structures": len(dataset),
        "n_systems": len(dataset.systems()),
        "splits": splits,
        "elements": [chemical_symbols[z] for z in sorted(set(arrays["numbers"].tolist()))],
        "atoms_min": int(n_atoms.min()),
        "atoms_median": float(np.median(n_atoms)),
        "atoms_max": int(n_atoms.max()),
        "n_periodic": int(periodic.sum()),
        "n_molecular": int((~periodic).sum()),
        "samplers": sorted(samplers.items()),
        "test_atoms_per_element": {chemical_symbols[z]: n for z, n in test_numbers.items()},
        "test_frames_per_system": dict(Counter(test.arrays[keys.SYSTEM_ID].tolist())),
    }


def sampler_settings(config: Config) -> list[str]:
    """How the structures were made, from the config, as sentences."""
    cfg = config.structures
    lines = []
    if cfg.include_initial:
        lines.append("the starting geometry of every system")
    if cfg.rattle.frames > 0:
        lines.append(
            f"{cfg.rattle.frames} rattled frames per system (Gaussian, σ = {cfg.rattle.stdev:g} Å)"
        )
    if cfg.md.frames > 0 and cfg.md.temperatures_K:
        temps = ", ".join(f"{t:g}" for t in cfg.md.temperatures_K)
        lines.append(
            f"{cfg.md.frames} frames per system and temperature of teacher Langevin MD at "
            f"{temps} K (every {cfg.md.interval} steps of {cfg.md.timestep_fs:g} fs)"
        )
    return lines


def training_summary(path: Path, config: Config) -> dict[str, Any]:
    """Training settings from the config and its course from ``logs/metrics.csv``."""
    cfg = config.training
    summary: dict[str, Any] = {
        "settings": [
            ("epochs (maximum)", str(cfg.epochs)),
            ("time budget", _DASH if cfg.max_minutes is None else f"{cfg.max_minutes:g} min"),
            ("batch size", str(cfg.batch_size)),
            ("learning rate", f"{cfg.lr:g} ({cfg.lr_schedule})"),
            ("loss weights E : F", f"{cfg.energy_weight:g} : {cfg.force_weight:g}"),
            ("EMA decay", f"{cfg.ema_decay:g}"),
            ("device", cfg.device),
        ],
        "epochs": None,
        "minutes": None,
    }
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
        seconds = [float(row["seconds"]) for row in rows]
    except (OSError, KeyError, ValueError, TypeError, csv.Error):
        return summary
    if rows:
        summary["epochs"] = len(rows)
        summary["minutes"] = sum(seconds) / 60
    return summary


def student_rows(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """The student's architecture, size and best epoch."""
    student = metrics.get("student")
    if not isinstance(student, dict):
        return []
    rows = []
    for key, label in (
        ("architecture", "architecture"),
        ("n_features", "features"),
        ("n_blocks", "message-passing blocks"),
        ("n_rbf", "radial basis functions"),
        ("cutoff", "cutoff (Å)"),
        ("parameters", "parameters"),
        ("best_epoch", "best epoch (exported)"),
    ):
        if key in student:
            value = student[key]
            rows.append((label, f"{value:,}" if isinstance(value, int) else str(value)))
    return rows


def metric_rows(metrics: dict[str, Any], md: dict[str, Any] | None) -> list[dict[str, str]]:
    """The headline metrics: held-out (``metrics.json``) and, when run, on-policy (MD)."""
    rows = [
        ("energy MAE", metrics.get("energy_mae_mev_per_atom"), ".2f", "meV/atom"),
        ("energy RMSE", metrics.get("energy_rmse_mev_per_atom"), ".2f", "meV/atom"),
        ("force MAE", metrics.get("force_mae_ev_per_a"), ".4f", "eV/Å"),
        ("force RMSE", metrics.get("force_rmse_ev_per_a"), ".4f", "eV/Å"),
        ("force cosine", metrics.get("force_cosine"), ".4f", ""),
    ]
    if "stress_mae_gpa" in metrics:
        rows.append(("stress MAE", metrics["stress_mae_gpa"], ".3f", "GPa"))
    out = [
        {"name": n, "where": "held-out test systems", "value": fmt(v, f), "unit": u}
        for n, v, f, u in rows
    ]
    if md is not None and md["on_policy_force"] != _DASH:
        out.append(
            {
                "name": "force RMSE",
                "where": "on-policy (frames of the student's own MD)",
                "value": md["on_policy_force"],
                "unit": "eV/Å",
            }
        )
    return out


def element_rows(metrics: dict[str, Any], data: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Force RMSE per element with the number of test atoms; bars scaled to the worst."""
    per = metrics.get("force_rmse_per_element_ev_per_a")
    if not isinstance(per, dict):
        return []
    counts = data["test_atoms_per_element"] if data else {}
    values = {k: _number(v) for k, v in per.items()}
    worst = max((v for v in values.values() if v is not None), default=0.0)
    return [
        {
            "element": symbol,
            "atoms": counts.get(symbol, _DASH),
            "rmse": fmt(value, ".4f"),
            "bar": _bar(value, worst),
        }
        for symbol, value in values.items()
    ]


def system_rows(metrics: dict[str, Any], data: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Energy MAE and force RMSE of every test system, worst force first; bars scaled."""
    per = metrics.get("per_system")
    if not isinstance(per, dict):
        return []
    frames = data["test_frames_per_system"] if data else {}
    rows = []
    for system, errors in per.items():
        errors = errors if isinstance(errors, dict) else {}
        rows.append(
            (
                system,
                _number(errors.get("energy_mae_mev_per_atom")),
                _number(errors.get("force_rmse_ev_per_a")),
            )
        )
    rows.sort(key=lambda row: -(row[2] if row[2] is not None else -math.inf))
    worst_f = max((r[2] for r in rows if r[2] is not None), default=0.0)
    worst_e = max((r[1] for r in rows if r[1] is not None), default=0.0)
    return [
        {
            "system": system,
            "frames": frames.get(system, _DASH),
            "energy": fmt(energy, ".2f"),
            "energy_bar": _bar(energy, worst_e),
            "force": fmt(force, ".4f"),
            "force_bar": _bar(force, worst_f),
        }
        for system, energy, force in rows
    ]


def data_report_view(path: Path) -> dict[str, Any] | None:
    """``report/data_report.json`` (the ``data-report`` stage) and its plots, for display.

    Returns ``None`` when the file is absent; every entry is optional.
    """
    if not path.is_file():
        return None
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        report = None
    if not isinstance(report, dict):
        return {
            "problem": f"{path} is unreadable: run `mlff-distill data-report "
            f"{path.parent.parent}` again",
            "warnings": [],
            "sources": [],
            "plots": [],
        }
    sources = []
    for name, entry in _mapping(report.get("sources")).items():
        entry = _mapping(entry)
        sources.append(
            {
                "source": str(name),
                "systems": fmt(entry.get("systems"), "d"),
                "structures": fmt(entry.get("structures"), "d"),
                "atoms": fmt(entry.get("atoms"), "d"),
                "hydrogen": fmt(entry.get("hydrogen_fraction"), ".0%"),
            }
        )
    plots = []
    for name, caption in (("histograms", "data histograms"), ("elements", "elements")):
        uri = embed_png(path.parent / "data" / f"{name}.png")
        if uri is not None:
            plots.append((caption, uri))
    return {
        "problem": None,
        "warnings": [str(w) for w in _sequence(report.get("warnings"))],
        "sources": sources,
        "plots": plots,
    }


# --- MD validation (report/md.json of the validate-md stage) -----------------------------


def md_view(path: Path) -> dict[str, Any] | None:
    """``report/md.json`` prepared for display; ``None`` when MD validation has not run.

    Every entry is optional: what is missing or malformed shows as "—". A file that is not
    a JSON object gives a view with only ``problem`` set.
    """
    if not path.is_file():
        return None
    try:
        md = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        md = None
        problem = f"{path} cannot be read ({type(exc).__name__})"
    else:
        problem = f"{path} is not an MD validation result (not a JSON object)"
    if not isinstance(md, dict):
        return {
            "problem": f"{problem}: run `mlff-distill validate-md {path.parent.parent}` again",
            "passed": None,
            "systems": [],
            "summary": [],
            "thresholds": [],
            "settings": [],
            "environment": [],
            "on_policy_force": _DASH,
            "n_passed": _DASH,
            "n_systems": _DASH,
        }
    report_dir = path.parent
    summary = _mapping(md.get("summary"))
    systems = [
        _md_system(s, report_dir) for s in _sequence(md.get("systems")) if isinstance(s, dict)
    ]
    n_passed = _number(summary.get("n_passed"))
    n_systems = _number(summary.get("n_systems"))
    return {
        "problem": None,
        "passed": md.get("passed") if isinstance(md.get("passed"), bool) else None,
        "n_passed": fmt(n_passed, "d") if n_passed is not None else _DASH,
        "n_systems": fmt(n_systems, "d") if n_systems is not None else str(len(systems)),
        "on_policy_force": fmt(summary.get("on_policy_force_rmse_ev_per_a"), ".4f"),
        "summary": [
            (
                "NVE energy drift, student (median over systems)",
                fmt(summary.get("student_drift_mev_per_atom_per_ps_median"), ".3g"),
                "meV/atom/ps",
            ),
            (
                "NVE energy drift, teacher (median over systems)",
                fmt(summary.get("teacher_drift_mev_per_atom_per_ps_median"), ".3g"),
                "meV/atom/ps",
            ),
            (
                "force RMSE against the teacher, on-policy",
                fmt(summary.get("on_policy_force_rmse_ev_per_a"), ".4f"),
                "eV/Å",
            ),
            (
                "force RMSE against the teacher, held-out",
                fmt(summary.get("heldout_force_rmse_ev_per_a"), ".4f"),
                "eV/Å",
            ),
            (
                "energy MAE against the teacher, on-policy",
                fmt(summary.get("on_policy_energy_mae_mev_per_atom"), ".2f"),
                "meV/atom",
            ),
            (
                "energy MAE against the teacher, held-out",
                fmt(summary.get("heldout_energy_mae_mev_per_atom"), ".2f"),
                "meV/atom",
            ),
            (
                "NVT runs stable, student",
                _fraction(summary.get("student_stable_runs"), summary.get("nvt_runs")),
                "",
            ),
            (
                "NVT runs stable, teacher",
                _fraction(summary.get("teacher_stable_runs"), summary.get("nvt_runs")),
                "",
            ),
        ],
        "thresholds": _pairs(md.get("thresholds")),
        "settings": _pairs(md.get("settings")),
        "environment": _pairs(md.get("environment")),
        "seconds": fmt(md.get("seconds"), ".0f"),
        "systems": systems,
    }


def _md_system(entry: dict[str, Any], report_dir: Path) -> dict[str, Any]:
    nve = _mapping(entry.get("nve"))
    structure = _mapping(entry.get("structure"))
    on_policy = _mapping(entry.get("on_policy"))
    plots = _mapping(entry.get("plots"))
    nvt = []
    for run in _sequence(entry.get("nvt")):
        run = _mapping(run)
        nvt.append(
            {
                "temperature": fmt(run.get("temperature_K"), "g"),
                "student": _run_text(run.get("student")),
                "teacher": _run_text(run.get("teacher")),
                "student_stable": _mapping(run.get("student")).get("stable"),
            }
        )
    figures = []
    for key, caption in (("energy", "NVE total energy"), ("distributions", "distributions")):
        uri = _md_plot(plots.get(key), report_dir)
        if uri is not None:
            figures.append((caption, uri))
    student, teacher = _mapping(nve.get("student")), _mapping(nve.get("teacher"))
    passed = entry.get("passed")
    return {
        "name": str(entry.get("system", _DASH)),
        "formula": str(entry.get("formula", "")),
        "n_atoms": fmt(entry.get("n_atoms"), "d"),
        "passed": passed if isinstance(passed, bool) else None,
        "reasons": [str(r) for r in _sequence(entry.get("reasons"))],
        "notes": [str(r) for r in _sequence(entry.get("notes"))],
        "nve_student": _run_text(student),
        "nve_teacher": _run_text(teacher),
        "timestep": fmt(nve.get("timestep_fs"), "g"),
        "drift_student": fmt(student.get("drift_mev_per_atom_per_ps"), ".3g"),
        "drift_teacher": fmt(teacher.get("drift_mev_per_atom_per_ps"), ".3g"),
        "fluct_student": fmt(student.get("fluctuation_mev_per_atom"), ".3g"),
        "fluct_teacher": fmt(teacher.get("fluctuation_mev_per_atom"), ".3g"),
        "nvt": nvt,
        "bond_w1": fmt(structure.get("bond_length_w1_A"), ".3g"),
        "angle_w1": fmt(structure.get("angle_w1_deg"), ".3g"),
        "rdf_l1": fmt(structure.get("rdf_l1"), ".3g"),
        "on_policy_force": fmt(on_policy.get("force_rmse_ev_per_a"), ".4f"),
        "heldout_force": fmt(on_policy.get("heldout_force_rmse_ev_per_a"), ".4f"),
        "on_policy_energy": fmt(on_policy.get("energy_mae_mev_per_atom"), ".2f"),
        "on_policy_frames": fmt(on_policy.get("n_frames"), "d"),
        "figures": figures,
    }


def _run_text(run: Any) -> str:
    """One MD run of md.json (``steps``, ``stable``, ``failure``...) in words."""
    run = _mapping(run)
    if not run:
        return _DASH
    steps = fmt(run.get("steps"), "d")
    if run.get("stable") is False:
        failure = str(run.get("failure") or "").strip()
        step = _number(run.get("first_failure_step"))
        if step is not None and f"step {round(step)}" not in failure:
            return f"unstable at step {round(step):,d}" + (f": {failure}" if failure else "")
        return f"unstable: {failure}" if failure else "unstable"
    mean = _number(run.get("mean_temperature_K"))
    text = f"stable for {steps} steps" if run.get("stable") is True else f"{steps} steps"
    return text + (f", mean {mean:.0f} K" if mean is not None else "")


def _md_plot(relative: Any, report_dir: Path) -> str | None:
    """A plot md.json names, embedded; only files inside ``report/`` are read."""
    if not isinstance(relative, str) or not relative:
        return None
    root = report_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        return None  # a path that leaves the report folder is not the run's plot
    return embed_png(path)


# --- speed (report/benchmark.json: benchmarks/md_speed.py output) ------------------------


def speed_view(path: Path) -> dict[str, Any] | None:
    """MD speed rows of a ``benchmarks/md_speed.py`` JSON; ``None`` when not measured."""
    if not path.is_file():
        return None
    try:
        bench = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        bench = None
    if not isinstance(bench, dict):
        return {"problem": f"{path} is not a JSON object", "rows": [], "ratios": []}
    rows, ratios = [], []
    for entry in _sequence(bench.get("single")):
        entry = _mapping(entry)
        for engine in _sequence(entry.get("engines")):
            engine = _mapping(engine)
            rows.append(
                {
                    "system": str(entry.get("system", _DASH)),
                    "n_atoms": fmt(entry.get("n_atoms"), "d"),
                    "mode": "single",
                    "engine": str(engine.get("engine", _DASH)),
                    "steps_per_s": fmt(engine.get("steps_per_s"), ".1f"),
                    "ns_per_day": fmt(engine.get("ns_per_day"), ".3g"),
                    "atom_steps_per_s": fmt(engine.get("atom_steps_per_s"), ".3g"),
                }
            )
        for name, value in _mapping(entry.get("ratios")).items():
            ratios.append((str(entry.get("system", _DASH)), str(name), fmt(value, ".2f")))
    for entry in _sequence(bench.get("batched")):
        entry = _mapping(entry)
        rows.append(
            {
                "system": str(entry.get("system", _DASH)),
                "n_atoms": fmt(entry.get("n_atoms_total"), "d"),
                "mode": f"batched ×{fmt(entry.get('replicas'), 'd')}",
                "engine": str(entry.get("engine", _DASH)),
                "steps_per_s": fmt(entry.get("steps_per_s"), ".1f"),
                "ns_per_day": _DASH,
                "atom_steps_per_s": fmt(entry.get("atom_steps_per_s"), ".3g"),
            }
        )
    environment = _mapping(bench.get("environment"))
    return {
        "problem": None if rows else f"{path} holds no md_speed results",
        "rows": rows,
        "ratios": ratios,
        "environment": _pairs(environment),
        "timestep_fs": fmt(environment.get("timestep_fs"), "g"),
    }


# --- the model card's limits --------------------------------------------------------------


def known_limits(
    metrics: dict[str, Any],
    data: dict[str, Any] | None,
    config: Config,
    md: dict[str, Any] | None,
) -> list[str]:
    """Where the student should not be trusted: Markdown sentences for the model card.

    Text from the run (system names) is in code spans (:func:`markdown_code`).
    """
    teacher = markdown_code(metrics.get("teacher", "?"))
    limits = [
        f"It reproduces {teacher}, not experiment or a reference electronic-structure method: "
        f"its errors come on top of {teacher}'s own."
    ]
    if data is not None:
        limits.append(
            f"Elements: only {', '.join(data['elements'])}. The ASE calculator and the TorchSim "
            "model refuse a structure with any other element."
        )
        limits.append(
            f"Sizes: trained on structures of {data['atoms_min']} to {data['atoms_max']} "
            "atoms; larger systems, and chemistry unlike the training systems (other bonding "
            "patterns, charged or open-shell species, reactions), are extrapolation."
        )
        if data["n_periodic"] == 0:
            limits.append(
                "Periodic vs molecular: trained on isolated molecules only. Crystals, liquids, "
                "surfaces and anything in a periodic cell, and stress or pressure, are outside "
                "its domain."
            )
        elif data["n_molecular"] == 0:
            limits.append(
                "Periodic vs molecular: trained on periodic cells only; isolated molecules "
                "(no cell) are outside its domain."
            )
        else:
            limits.append(
                f"Periodic vs molecular: trained on both ({data['n_periodic']} periodic and "
                f"{data['n_molecular']} molecular structures)."
            )
    cfg = config.structures
    if cfg.md.frames > 0 and cfg.md.temperatures_K:
        limits.append(
            f"Temperatures: the data were sampled by teacher MD up to "
            f"{max(cfg.md.temperatures_K):g} K; hotter or far-from-equilibrium geometries are "
            "extrapolation."
        )
    else:
        limits.append(
            "Temperatures: no MD frames in the data (rattled geometries only); check MD "
            "stability at your temperature before production runs."
        )
    worst = _worst_systems(metrics)
    if worst:
        limits.append(
            "Hardest held-out systems (force RMSE, eV/Å): "
            + ", ".join(f"{markdown_code(name)} ({value:.3f})" for name, value in worst)
            + "."
        )
    if md is None:
        limits.append(
            "MD stability has not been validated: run `mlff-distill validate-md` before "
            "trusting long simulations."
        )
    elif md["passed"] is False:
        failed = [markdown_code(s["name"]) for s in md["systems"] if s["passed"] is False]
        limits.append(
            "MD validation failed for "
            + (", ".join(failed) if failed else "some systems")
            + ": see the verdicts."
        )
    return limits


def _worst_systems(metrics: dict[str, Any], n: int = 3) -> list[tuple[str, float]]:
    per = metrics.get("per_system")
    if not isinstance(per, dict):
        return []
    values = [
        (str(name), _number(_mapping(errors).get("force_rmse_ev_per_a")))
        for name, errors in per.items()
    ]
    known = [(name, value) for name, value in values if value is not None]
    return sorted(known, key=lambda item: -item[1])[:n]


# --- formatting -------------------------------------------------------------------------


def fmt(value: Any, spec: str) -> str:
    """``value`` formatted with ``spec``; "—" for anything that is not a finite number."""
    number = _number(value)
    if number is None:
        return _DASH
    if spec == "d":
        return f"{round(number):,d}"
    return format(number, spec)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _fraction(part: Any, whole: Any) -> str:
    """``"part of whole"``; "—" unless both are numbers."""
    if _number(part) is None or _number(whole) is None:
        return _DASH
    return f"{fmt(part, 'd')} of {fmt(whole, 'd')}"


def _bar(value: float | None, worst: float) -> float:
    """Width of a bar in percent of the widest."""
    if value is None or worst <= 0:
        return 0.0
    return round(100.0 * max(value, 0.0) / worst, 1)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _sequence(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _pairs(mapping: Any) -> list[tuple[str, str]]:
    """A flat mapping as (name, text) rows; nested values as compact JSON."""
    rows = []
    for key, value in _mapping(mapping).items():
        if isinstance(value, float):
            text = format(value, "g")
        elif isinstance(value, (dict, list)):
            text = json.dumps(value, separators=(", ", ": "))
        else:
            text = str(value)
        rows.append((str(key).replace("_", " "), text))
    return rows
