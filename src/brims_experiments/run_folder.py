"""A run folder, what supervised and RL runs share: ``config.yaml`` (what ``brims train <run
folder>`` resumes, and what a resume may change), ``metrics.json``, ``train_time.json`` (every
session's wall time, kept current at each checkpoint), the loggers, and where ``brims test``
writes. The lock on the folder is :mod:`brims_experiments.run_lock`; checkpoints are
:mod:`brims_experiments.checkpoints`."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from brims_experiments.checkpoints import FORMAT_KEY
from brims_experiments.compile_cache import CACHE_ENV
from brims_experiments.config_files import ConfigError, declared_task, require
from brims_experiments.data.store import atomic_write_text

CONFIG_FILE = "config.yaml"


METRICS_FILE = "metrics.json"


TRAIN_TIME_FILE = "train_time.json"


def check_run_dir(run_dir: Path, config: Any, load: Callable[[Path], Any]) -> Any | None:
    """The config of the run ``run_dir`` holds (read with ``load``), None if it holds none; a
    :class:`ConfigError` if that run is of another task or has another config than ``config``.
    Only reads: run it before anything is built or announced."""
    saved = run_dir / CONFIG_FILE
    if not saved.is_file():
        return None
    if config is not None:
        held_task = declared_task(saved)  # None for an unreadable file: ``load`` says what is wrong with it
        if held_task is not None and held_task != config.task:
            raise ConfigError(f"{run_dir} holds a run of task {held_task}, not {config.task}: "
                              "choose another --run-dir")
    existing = load(saved)
    if config is not None and config != existing:
        changed = differing_fields(config.as_dict(), existing.as_dict())
        raise ConfigError(f"{run_dir} holds a run with a different config (differs in {', '.join(changed)}); "
                          f"resume it with `brims train {run_dir}` or choose another --run-dir")
    return existing


def prepare_run_dir(run_dir: Path, config: Any, load: Callable[[Path], Any]) -> Any:
    """Create the folder with ``config`` or, for an existing one, check ``config`` matches it
    (:func:`check_run_dir`).

    ``config=None`` resumes with the folder's own config (read with ``load``).
    """
    existing = check_run_dir(run_dir, config, load)
    if existing is not None:
        return existing
    if config is None:
        raise ConfigError(f"{run_dir} holds no run ({CONFIG_FILE} missing); give a config to start one")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, config.to_yaml())
    return config


def read_json(path: Path, what: str) -> Any:
    """The JSON document at ``path``; a :class:`ConfigError` that names the file (and ``what`` it holds)
    if it is not one."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} ({what}) is corrupted: {error}; delete it and run `brims test` on the "
                          "run folder to write it again") from None


def differing_fields(ours: dict[str, Any], theirs: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted names of the leaves where two config dicts differ."""
    changed = []
    for key, value in ours.items():
        other = theirs.get(key)
        if isinstance(value, dict) and isinstance(other, dict):
            changed += differing_fields(value, other, f"{prefix}{key}.")
        elif value != other:
            changed.append(f"{prefix}{key}")
    return changed


# Fields a resume may change: they do not change what the run computes, or (the budget) only let it
# go on for longer.
RESUMABLE_FIELDS = ("train.threads", "train.accelerator", "train.devices", "train.device", "train.logger")


BUDGET_FIELDS = ("train.epochs", "train.max_steps", "ppo.total_steps")


def amend_run_config(run_dir: Path, overrides: list[str], load: Callable[..., Any]) -> list[str]:
    """Apply ``overrides`` to a run folder's config for its resume, and say what changed.

    Only :data:`RESUMABLE_FIELDS` and a larger budget (:data:`BUDGET_FIELDS`; ``train.max_steps``
    0 means no limit) are accepted: anything else would make the run something it was not, and is
    refused with the advice to start a new run.
    """
    saved = run_dir / CONFIG_FILE
    existing = load(saved)
    amended = load(saved, overrides)
    before, after = existing.as_dict(), amended.as_dict()
    changed = differing_fields(after, before)
    refused = [name for name in changed if name not in RESUMABLE_FIELDS + BUDGET_FIELDS]
    if refused:
        raise ConfigError(f"resuming {run_dir} may change only {', '.join(RESUMABLE_FIELDS)} and enlarge its budget "
                          f"({', '.join(BUDGET_FIELDS)}); {', '.join(refused)} would change the run itself: start a "
                          f"new run (--run-dir) instead")

    def value(values: dict[str, Any], name: str) -> Any:
        for part in name.split("."):
            values = values[part]
        return values

    schedule = before.get("train", {}).get("lr_schedule", "constant")
    lines = []
    for name in changed:
        old, new = value(before, name), value(after, name)
        limit = (lambda steps: steps or math.inf) if name == "train.max_steps" else (lambda amount: amount)
        if name in BUDGET_FIELDS and limit(new) < limit(old):
            raise ConfigError(f"{name}={new} would shrink the budget of {run_dir} ({old}); a resume only extends it")
        if name in BUDGET_FIELDS and schedule != "constant":
            raise ConfigError(f"{name}={new} would extend {run_dir}, whose train.lr_schedule={schedule} was fixed by "
                              f"its budget ({old}): the longer run would decay differently from its first step; "
                              "start a new run (--run-dir) with the longer budget instead")
        lines.append(f"{name}: {old} -> {new}")
    if changed:
        atomic_write_text(saved, amended.to_yaml())
    return lines


def check_checkpoint_config(checkpoint: dict[str, Any], config: Any, path: Path) -> None:
    """Refuse a ``config.yaml`` changed by hand since ``path`` was saved: training would go on with the
    checkpoint's values while the file says others. Fields a resume may change are allowed
    (:data:`RESUMABLE_FIELDS`, and the budget through ``--set``)."""
    saved = checkpoint[FORMAT_KEY]["config"]
    allowed = RESUMABLE_FIELDS + BUDGET_FIELDS
    changed = [name for name in differing_fields(config.as_dict(), saved) if name not in allowed]
    if changed:
        raise ConfigError(f"{path.parent.parent / 'config.yaml'} differs from its checkpoint {path.name} in "
                          f"{', '.join(changed)}: a run cannot change what it computes midway; restore the file "
                          f"(`brims config` of the checkpoint's values is in {path}) or start a new run with --run-dir")


LOGGERS = ("csv", "tensorboard")  # the CSV log is always written (the figures read it)


def check_logger(name: str) -> None:
    require(name in LOGGERS, f"train.logger must be one of {', '.join(LOGGERS)}, got {name!r}")


def tensorboard_logger(run_dir: Path, from_step: int) -> Any:
    """Lightning's TensorBoard logger writing to ``logs/tensorboard`` of the run folder. A resumed
    session purges the events a killed one wrote after ``from_step``, as the CSV log does."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError("train.logger=tensorboard needs the tensorboard package: pip install 'brims[train]'")
    from lightning.pytorch.loggers import TensorBoardLogger

    purge = {"purge_step": from_step} if from_step else {}
    return TensorBoardLogger(run_dir / "logs", name="", version="tensorboard", default_hp_metric=False, **purge)


def results_folder(path: Path, out: str | Path | None) -> Path:
    """Where ``brims test`` of ``path`` writes ``metrics.json`` and figures: ``out`` if given, else the
    run folder that ``path`` is (or whose ``checkpoints/`` holds it); a checkpoint elsewhere needs ``out``."""
    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        return out
    if path.is_dir():
        return path
    if path.parent.name == "checkpoints" and (path.parent.parent / CONFIG_FILE).is_file():
        return path.parent.parent
    raise ConfigError(f"{path} is not in the checkpoints/ folder of a run folder: give --out FOLDER for its "
                      f"{METRICS_FILE} and figures")


def say_if_compiling(config: Any) -> None:
    """A compiled core's first training step compiles for minutes, silently: say so before it starts."""
    core = config.model.core
    if core.compile and core.is_modular_kind:
        cache = os.environ.get(CACHE_ENV, "torch's cache")
        print(f"compiling the {core.kind} time step on the first batches: about 2 minutes on a 2-core CPU the "
              f"first time, seconds once cached (in {cache})", flush=True)


def run_dir_for(args: argparse.Namespace, config_path: Path, kind: str) -> Path:
    """``--run-dir``, or ``runs/<config name>-<model kind>``."""
    return Path(args.run_dir) if args.run_dir else Path("runs") / f"{config_path.stem}-{kind}"


class TrainingSession:
    """One training session's wall time in ``train_time.json``, kept current at every checkpoint.

    :meth:`record` writes the session's entry (its seconds so far and ``span``, e.g.
    ``from_step``/``to_step``), replacing the one it wrote before. A session killed mid-run thus
    keeps its time up to its last checkpoint save, with ``"ended": false``; the next session
    resumes from ``last.ckpt`` and counts the steps it redoes again (they cost time twice).
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / TRAIN_TIME_FILE
        self.started = time.perf_counter()
        self.started_at = datetime.now(timezone.utc).isoformat(timespec="microseconds")

    def earlier_sessions(self) -> list[dict[str, Any]]:
        """The sessions ``train_time.json`` holds; a :class:`ConfigError` naming the file if it is corrupted."""
        if not self.path.is_file():
            return []
        try:
            return list(json.loads(self.path.read_text())["sessions"])
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
            raise ConfigError(f"{self.path} is corrupted (it records each training session's wall time): delete it "
                              "to go on without the earlier sessions' times") from None

    def elapsed(self) -> float:
        """Seconds since the session started."""
        return time.perf_counter() - self.started

    def record(self, ended: bool = False, **span: int) -> None:
        sessions = self.earlier_sessions()
        sessions = [s for s in sessions if s.get("started_at") != self.started_at]
        seconds = round(self.elapsed(), 1)
        sessions.append({"started_at": self.started_at, "seconds": seconds, **span, "ended": ended,
                         "threads": torch.get_num_threads()})
        total = round(sum(s["seconds"] for s in sessions), 1)
        atomic_write_text(self.path, json.dumps({"seconds": total, "sessions": sessions}, indent=2))


# ---- the CSV log (logs/metrics.csv) -----------------------------------------------------------------

LOG_FILE = Path("logs") / "metrics.csv"
STEPS_COLUMN = "steps"  # steps trained when the row was logged: 1 after the first step, as everywhere else


def read_log_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV log, each ``{"steps": int, "epoch"?: float, <metric>: float}`` with the
    empty cells left out. A log written before brims 0.3 has a ``step`` column counted from 0
    (Lightning's): it is read as ``steps = step + 1``."""
    import csv

    rows = []
    with open(path, newline="") as handle:
        for raw in csv.DictReader(handle):
            row: dict[str, Any] = {key: float(value) for key, value in raw.items() if value not in (None, "")}
            if STEPS_COLUMN in row:
                row[STEPS_COLUMN] = int(row[STEPS_COLUMN])
            else:
                row[STEPS_COLUMN] = int(row.pop("step", -1)) + 1
            rows.append(row)
    return rows
