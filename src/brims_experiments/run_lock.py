"""One process at a time in a run folder: an exclusive lock held for the run's whole life.

Two ``brims train`` on the same folder (or a resume started while the first still trains) would
otherwise both run to the end, interleave ``progress.log`` and count the training time twice. The
lock is an advisory ``flock`` on ``<run folder>/.lock``: the operating system releases it when the
holder exits, however it exits (``kill -9`` included), so a stale lock never blocks a resume.
The file keeps the holder's pid, for the message that names it. Within one process the lock
is re-entrant (a command that amends a run's config holds it, and the training it then starts
takes it again).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from brims_experiments.config_files import ConfigError

LOCK_FILE = ".lock"


class RunFolderBusy(ConfigError):
    """Another process holds the run folder."""


def make_run_folder(run_dir: Path) -> None:
    """Create ``run_dir`` (and its parents), or say in one line why it cannot be one."""
    for parent in (run_dir, *run_dir.parents):
        if parent.exists() and not parent.is_dir():
            where = "is a file" if parent == run_dir else f"lies below the file {parent}"
            raise ConfigError(f"run folder {run_dir} {where}: choose another --run-dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create run folder {run_dir}: {error.strerror}") from None


class RunFolderLock:
    """``with RunFolderLock(run_dir):`` holds ``run_dir`` for this process, or raises :class:`RunFolderBusy`
    naming the pid of the process that holds it. Creates the folder if needed."""

    _held: ClassVar[dict[Path, int]] = {}  # run folder -> how many times this process holds it

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._handle: int | None = None
        self._key: Path | None = None

    def __enter__(self) -> None:
        make_run_folder(self.run_dir)
        self._key = self.run_dir.resolve()
        if self._key in self._held:
            self._held[self._key] += 1
            return
        path = self.run_dir / LOCK_FILE
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise ConfigError(f"cannot write in run folder {self.run_dir}: {error.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(handle, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(handle)
            raise RunFolderBusy(f"{self.run_dir} is in use by another brims process (pid {holder}): wait for it to "
                                f"end, or stop it, before starting another in the same run folder") from None
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()}\n".encode(), 0)
        self._handle = handle
        self._held[self._key] = 1

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        assert self._key is not None
        self._held[self._key] -= 1
        if self._held[self._key]:
            return
        del self._held[self._key]
        if self._handle is not None:
            os.ftruncate(self._handle, 0)
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            os.close(self._handle)
            self._handle = None
