"""The data directory: atomic writes, sha256 manifests, and the errors users see.

Every prepared data set is a folder ``<root>/<name>/`` holding tensor files and a
``manifest.json`` with the sha256 of each file. The manifest is written last, so a folder
without one was never finished; a file whose hash differs from the manifest is reported as
corrupted before anything is parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

DATA_ENV = "BRIMS_DATA"
MANIFEST = "manifest.json"


class DataError(RuntimeError):
    """Base class of the data errors the command-line tool reports without a traceback."""


class DataMissingError(DataError):
    """The data set has not been fetched (the message says what to run)."""


class DataCorruptError(DataError):
    """A file does not match its recorded checksum or format."""


def data_root(override: str | os.PathLike[str] | None = None) -> Path:
    """Where data sets live: ``override``, else ``$BRIMS_DATA``, else ``~/.cache/brims/data``."""
    if override is not None:
        return Path(override).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "brims" / "data"


def fetch_hint(name: str, root: str | os.PathLike[str] | None = None, source: str | None = None) -> str:
    """The ``brims fetch`` command that prepares ``name`` under ``root`` (None: the default data
    root), with ``--source`` where the data set needs one."""
    command = f"brims fetch {name}" + (f" --source {source}" if source else "")
    return command + (f" --data-dir {shlex.quote(str(root))}" if root is not None else "")


def sha256_of(path: Path, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through a temporary file in the same folder and rename it into place.

    A crash at any moment leaves either the old file or the new one, never half of one. The
    file gets the permissions a plain ``open`` would give it (``mkstemp`` makes it owner-only).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fchmod(handle.fileno(), 0o666 & ~_umask())
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write` of UTF-8 text."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _umask() -> int:
    """The process's file-creation mask (Python has no way to read it without setting it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_manifest(folder: Path, files: list[str], meta: dict | None = None) -> None:
    """Record the sha256 of ``files`` (names inside ``folder``); marks the folder complete."""
    manifest = {"files": {name: sha256_of(folder / name) for name in files}, **(meta or {})}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))


def verified_file(folder: Path, name: str, hint: str) -> Path:
    """``folder/name`` after checking it against the folder's manifest.

    Raises:
        DataMissingError: the folder or its manifest is missing (with ``hint``).
        DataCorruptError: the file is missing, truncated or altered.
    """
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise DataMissingError(f"no prepared data in {folder}; run: {hint}")
    try:
        manifest = json.loads(manifest_path.read_text())
        expected = manifest["files"][name]
    except (ValueError, KeyError, TypeError) as error:
        raise DataCorruptError(f"{manifest_path} is unreadable or lacks {name!r} ({error}); rerun: {hint}")
    path = folder / name
    if not path.is_file():
        raise DataCorruptError(f"{path} is missing although the manifest lists it; rerun: {hint}")
    actual = sha256_of(path)
    if actual != expected:
        raise DataCorruptError(
            f"{path} is corrupted or truncated: sha256 {actual[:16]}..., expected {expected[:16]}...; "
            f"rerun: {hint}"
        )
    return path
