"""Helpers for tests that drive the ``brims`` command: in-process calls that leave no global state
behind, and real training processes killed with SIGKILL mid-run (for the resume tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from brims_experiments.checkpoints import read_checkpoint
from brims_experiments.cli import main


@contextlib.contextmanager
def isolated_process_state():
    """``brims train`` sets torch threads, Lightning's seed variables and torch.compile's cache folder:
    keep them out of other tests."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS", "TORCHINDUCTOR_CACHE_DIR"):
            patch.delenv(name, raising=False)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def brims(*argv: str) -> int:
    """``brims ARGV...`` in this process; its exit code."""
    with isolated_process_state():
        return main(list(argv))


def cli_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "brims_experiments.cli", *argv]


def start_cli(*argv: str, **popen) -> subprocess.Popen:
    """``brims ARGV...`` as a process that takes Ctrl-C as from a terminal, also where these tests run
    with SIGINT ignored (a shell's background job; a child inherits it, and Python then never raises
    KeyboardInterrupt)."""
    def take_ctrl_c() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    # preexec_fn is safe here: the tests start these processes from their only thread.
    return subprocess.Popen(cli_command(*argv), preexec_fn=take_ctrl_c, **popen)  # noqa: PLW1509


def kill_training(argv: list[str], run_dir: Path, min_step: int, timeout: float = 120) -> int:
    """Start ``brims ARGV...`` as a process, SIGKILL it once ``last.ckpt`` in ``run_dir`` holds
    ``min_step`` steps or more, and return the step of the checkpoint it left."""
    last = run_dir / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(cli_command(*argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            # Checkpoints are written atomically: reading one while training runs is safe.
            if last.is_file() and read_checkpoint(last)["global_step"] >= min_step:
                break
            time.sleep(0.01)
        assert process.poll() is None, f"training finished before it could be killed:\n{process.stderr.read()!r}"
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
    return read_checkpoint(last)["global_step"]
