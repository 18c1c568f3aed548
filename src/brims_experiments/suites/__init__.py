"""The suites ``brims reproduce`` runs (YAML, one per suite; see brims_experiments.reproduce.suites).

Only the standard library here: the ``brims`` command lists the suites before it knows whether the
experiments' packages are installed.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def suite_names() -> list[str]:
    return sorted(Path(p.name).stem for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))


def suite_text(name: str) -> str:
    return resources.files(__name__).joinpath(f"{name}.yaml").read_text()
