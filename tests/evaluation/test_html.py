"""The HTML report and the model card of a tiny EMT run, rendered in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from rich.console import Console

from mlff_distiller import pipeline
from mlff_distiller.atomic import CorruptFileError
from mlff_distiller.config import load_config
from mlff_distiller.evaluation.html import SECTIONS, write_report

CHROMIUM = shutil.which("chromium")
HOSTILE_NAME = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A run of seconds (EMT, 5 molecules, 2 epochs), evaluated and reported, and its config."""
    run_dir = tmp_path_factory.mktemp("html") / "run"
    config = load_config(
        None,
        [
            f"run_dir={run_dir}",
            "threads=1",
            "structures.ase_molecules=[CH4, H2O, NH3, C2H6, CH3OH]",
            "structures.rattle.frames=1",
            "structures.md.temperatures_K=[300]",
            "structures.md.frames=1",
            "structures.md.interval=5",
            "teacher.name=emt",
            "data.val_fraction=0.1",
            "data.test_fraction=0.2",
            "model.n_features=8",
            "model.n_blocks=1",
            "model.n_rbf=4",
            "model.cutoff=3.0",
            "training.epochs=2",
            "training.batch_size=4",
        ],
    )
    threads = torch.get_num_threads()
    pipeline.prepare_run_dir(config)
    # No validate-md (the report must render without it) and no data report: seconds.
    pipeline.run(config, Console(quiet=True), ("generate", "label", "train", "evaluate", "report"))
    torch.set_num_threads(threads)
    return config, run_dir


def _copy(tiny_run, destination: Path):
    config, run_dir = tiny_run
    shutil.copytree(run_dir, destination)
    return config.model_copy(update={"run_dir": destination}), destination


def _png(path: Path, colour: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot(np.linspace(0, 1, 20), np.sin(np.linspace(0, 6, 20)), color=colour)
    fig.savefig(path, dpi=60)
    plt.close(fig)
    return path.relative_to(path.parents[1]).as_posix()  # relative to report/


def _write_md_json(report: Path) -> dict:
    """An md.json of the validate-md schema: one system passes, one (hostile name) fails."""

    def nve(drift):
        return {
            "steps": 2000,
            "time_ps": 1.0,
            "drift_mev_per_atom_per_ps": drift,
            "fluctuation_mev_per_atom": 0.4,
        }

    def nvt(stable, step=None, failure=None):
        return {
            "steps": 4000 if stable else step,
            "stable": stable,
            "first_failure_step": step,
            "failure": failure,
            "mean_temperature_K": 301.5 if stable else None,
        }

    md = {
        "passed": False,
        "settings": {"n_systems": 2, "nve_steps": 2000},
        "thresholds": {
            "max_drift_mev_per_atom_per_ps": 1.0,
            "min_distance_A": 0.6,
            "max_on_policy_force_rmse_ev_per_a": 0.5,
        },
        "systems": [
            {
                "system": "CH3OH",
                "formula": "CH4O",
                "n_atoms": 6,
                "passed": True,
                "reasons": [],
                "nve": {"timestep_fs": 0.5, "student": nve(0.12), "teacher": nve(0.03)},
                "nvt": [{"temperature_K": 300.0, "student": nvt(True), "teacher": nvt(True)}],
                "structure": {"bond_length_w1_A": 0.004, "angle_w1_deg": 1.2, "rdf_l1": None},
                "on_policy": {
                    "n_frames": 20,
                    "force_rmse_ev_per_a": 0.21,
                    "energy_mae_mev_per_atom": 3.1,
                },
                "plots": {
                    "energy": _png(report / "md" / "CH3OH-energy.png", "tab:green"),
                    "distributions": _png(report / "md" / "CH3OH-distributions.png", "tab:red"),
                },
            },
            {
                "system": HOSTILE_NAME,
                "formula": "H2O",
                "n_atoms": 3,
                "passed": False,
                "reasons": ["bond O-H broken at step 812 (NVT 300 K)", "drift 4.2 > 1.0"],
                "nve": {"timestep_fs": 0.5, "student": nve(4.2), "teacher": nve(0.02)},
                "nvt": [
                    {
                        "temperature_K": 300.0,
                        "student": nvt(False, 812, "bond O-H broken"),
                        "teacher": nvt(True),
                    }
                ],
                "structure": {"bond_length_w1_A": 0.3, "angle_w1_deg": "n/a"},
                "on_policy": {"n_frames": 5, "force_rmse_ev_per_a": 1.7},
                "plots": {
                    "energy": _png(report / "md" / "water-energy.png", "tab:purple"),
                    "distributions": "../../../../etc/passwd",  # leaves report/: never read
                },
            },
        ],
        "summary": {
            "student_drift_mev_per_atom_per_ps_median": 2.16,
            "teacher_drift_mev_per_atom_per_ps_median": 0.025,
            "on_policy_force_rmse_ev_per_a": 0.96,
            "heldout_force_rmse_ev_per_a": 0.5,
            "n_passed": 1,
            "n_systems": 2,
        },
        "environment": {"torch": "2.13.0+cpu", "device": "cpu"},
        "seconds": 42.0,
    }
    (report / "md.json").write_text(json.dumps(md))
    return md


def _write_benchmark(report: Path) -> None:
    """A benchmark.json in the layout of benchmarks/md_speed.py."""
    bench = {
        "environment": {"device": "cpu", "timestep_fs": 0.5, "cpu_count": 2},
        "single": [
            {
                "system": "ala3",
                "n_atoms": 33,
                "engines": [
                    {"engine": "student-fast", "steps_per_s": 58.7, "ns_per_day": 2.54},
                    {"engine": "sevennet", "steps_per_s": 5.74, "ns_per_day": 0.248},
                ],
                "ratios": {"student-fast/sevennet": 10.23},
            }
        ],
        "batched": [],
    }
    (report / "benchmark.json").write_text(json.dumps(bench))


def _write_data_report(report: Path) -> None:
    """A data_report.json of the data-report stage, with one warning and one plot."""
    data = {
        "structures": 15,
        "sources": {
            "ase_molecules": {
                "systems": 5,
                "structures": 15,
                "atoms": 78,
                "hydrogen_fraction": 0.6,
            }
        },
        "warnings": ["O has only 2 structures <in training>"],
    }
    (report / "data_report.json").write_text(json.dumps(data))
    _png(report / "data" / "histograms.png", "tab:orange")
    (report / "data" / "elements.png").unlink(missing_ok=True)


def _section(html: str, section_id: str) -> str:
    match = re.search(rf'<section id="{section_id}">(.*?)</section>', html, re.S)
    assert match, f"no section {section_id}"
    return match.group(1)


def _assert_self_contained(html: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html.lower()
    assert "<link" not in html.lower()
    assert "@import" not in html
    assert "url(" not in html


def test_report_without_md_validation(tiny_run):
    _, run_dir = tiny_run
    html = (run_dir / "report" / "index.html").read_text()
    _assert_self_contained(html)
    for section_id, heading in SECTIONS.items():
        assert f"<h2>{heading}</h2>" in _section(html, section_id)
    for section_id in ("parity", "errors", "learning-curves"):  # the plots, embedded
        assert _section(html, section_id).count('src="data:image/png;base64,') == 1
    assert "MD validation not run" in _section(html, "verdicts")
    assert "Speed not measured" in _section(html, "speed")
    assert "emt" in _section(html, "provenance")
    assert "H, C, N, O (4)" in _section(html, "provenance")  # elements by atomic number
    card = (run_dir / "report" / "model_card.md").read_text()
    assert "MD validation not run" in card
    assert "teacher Langevin MD at 300 K" in card
    assert "atoms per structure | 3 to 8" in card
    assert "trained on isolated molecules only" in card
    assert "load_calculator(" in card
    assert "Speed\n\nNot measured" in card


def test_report_with_md_verdicts_and_speed(tiny_run, tmp_path):
    config, run_dir = _copy(tiny_run, tmp_path / "run")
    report = run_dir / "report"
    _write_md_json(report)
    _write_benchmark(report)
    _write_data_report(report)
    console = Console(record=True, width=200)
    pipeline.report(config, console)
    assert "report: " in console.export_text()
    html = (report / "index.html").read_text()
    _assert_self_contained(html)
    assert HOSTILE_NAME not in html
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    # the 3 MD plots inside report/; the path out of report/ is not followed
    assert _section(html, "md").count('src="data:image/png;base64,') == 3
    verdicts = _section(html, "verdicts")
    assert verdicts.count('class="pass"') == 1
    assert verdicts.count('class="fail"') == 2  # overall and the failing system
    assert "bond O-H broken at step 812 (NVT 300 K)" in verdicts
    assert "unstable at step 812: bond O-H broken" in verdicts
    assert "stable for 4,000 steps, mean 302 K" in verdicts
    assert "max drift mev per atom per ps" in verdicts
    data = _section(html, "data")
    assert "O has only 2 structures &lt;in training&gt;" in data
    assert "60%" in data
    assert data.count('src="data:image/png;base64,') == 1
    metrics = _section(html, "metrics")
    assert "on-policy" in metrics
    assert "0.9600" in metrics
    speed = _section(html, "speed")
    assert "student-fast" in speed
    assert "10.23" in speed
    card = (report / "model_card.md").read_text()
    assert "Overall: **FAIL** (1 of 2 systems passed)" in card
    assert "| `CH3OH` | 6 | PASS | 0.12 / 0.03 | 0.2100 | — |" in card
    assert "bond O-H broken at step 812 (NVT 300 K); drift 4.2 \\> 1.0" in card
    assert f"`{HOSTILE_NAME}`" in card
    assert "MD validation failed for" in card
    assert "student-fast/sevennet ×10.23" in card
    assert "Warnings of the data report: O has only 2 structures \\<in training\\>." in card


def test_a_damaged_md_json_is_named_and_the_report_still_renders(tiny_run, tmp_path):
    config, run_dir = _copy(tiny_run, tmp_path / "run")
    (run_dir / "report" / "md.json").write_text('{"passed": tr')
    console = Console(record=True, width=300)
    pipeline.report(config, console)
    output = console.export_text()
    assert f"{run_dir / 'report' / 'md.json'} cannot be read" in output
    assert "mlff-distill validate-md" in output
    html = (run_dir / "report" / "index.html").read_text()
    assert "cannot be read" in _section(html, "verdicts")


def test_a_run_not_evaluated_is_refused_with_the_fix(tiny_run, tmp_path):
    config, run_dir = _copy(tiny_run, tmp_path / "run")
    (run_dir / "report" / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="mlff-distill evaluate"):
        write_report(config)
    (run_dir / "report" / "metrics.json").write_text("[1, 2")
    with pytest.raises(CorruptFileError, match=r"metrics\.json is not an evaluation's"):
        write_report(config)


def _chromium(url: str, screenshot: Path, profile: Path) -> str:
    """The DOM of ``url`` after loading, and its screenshot (1280 x 4000) in ``screenshot``."""
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--dump-dom",
            f"--screenshot={screenshot}",
            "--window-size=1280,4000",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout


@pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium; CI has it)"
)
def test_the_report_renders_in_chromium(tiny_run, tmp_path):
    config, run_dir = _copy(tiny_run, tmp_path / "run")
    _write_md_json(run_dir / "report")
    write_report(config)
    url = (run_dir / "report" / "index.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    dom = _chromium(url, shot, tmp_path / "profile")
    for section_id, heading in SECTIONS.items():
        assert f'<section id="{section_id}">' in dom
        assert f"<h2>{heading}</h2>" in dom
    places = [dom.index(f'<section id="{section_id}">') for section_id in SECTIONS]
    assert places == sorted(places)
    image = matplotlib.image.imread(shot)[..., :3]  # (height, width, RGB) in [0, 1]
    assert image.shape == (4000, 1280, 3)
    pixels = np.round(image * 255).astype(int).reshape(-1, 3)

    def share(rgb: tuple[int, int, int], tolerance: int = 12) -> float:
        return float(np.mean(np.all(np.abs(pixels - rgb) <= tolerance, axis=1)))

    assert share((255, 255, 255)) < 0.9  # not a blank page
    assert share((0x1D, 0x24, 0x33)) > 0.01  # the dark title band
    assert share((0xC0, 0x39, 0x2B)) > 0  # the red FAIL badge of the MD verdict
    assert share((0x1F, 0x77, 0xB4)) > 1e-3  # matplotlib's blue: the embedded plots are drawn
