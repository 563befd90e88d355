"""Hardware, versions and code identity recorded with every benchmark result."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

PACKAGES = [
    "torch", "mlff-distiller", "numpy", "ase", "vesin", "vesin-torch", "sevenn", "chgnet",
    "torch-sim-atomistic",
]  # fmt: skip
"""Distributions whose versions are recorded (``None`` when not installed)."""


def environment(device: torch.device | str) -> dict[str, Any]:
    """Date, commit, source digest, machine, threads, package versions and GPU of a run."""
    device = torch.device(device)

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    # A copy of the tree (the GPU machine's) may carry a stale .git: a digest of the code
    # that ran identifies it whatever git says.
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted([*root.glob("src/mlff_distiller/**/*.py"), *root.glob("benchmarks/*.py")]):
        digest.update(path.read_bytes())
    env: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git_commit": commit or None,
        "source_digest": digest.hexdigest()[:16],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "versions": {name: version(name) for name in PACKAGES},
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env
