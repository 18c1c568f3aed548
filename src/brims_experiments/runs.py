"""What supervised and RL runs share: config files, run folders, checkpoints and figures.

- **Config files**: typed sections (frozen dataclasses validated on construction) built from
  nested YAML values and ``section.field=value`` overrides, with errors that name the field.
- **Run folders**: ``config.yaml`` (what ``brims train <run folder>`` resumes), ``metrics.json``,
  ``train_time.json`` (every session's wall time, kept current at each checkpoint).
- **Checkpoints**: written atomically, read without unpickling code.
- **Figures**: saved atomically as PNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import re
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from brims_experiments.compile_cache import CACHE_ENV
from brims_experiments.data.store import atomic_write, atomic_write_text

# ---- config files ----------------------------------------------------------------------------------


class ConfigError(ValueError):
    """A config value is invalid; the message names the field."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def int_at_least(name: str, value: Any, minimum: int, meaning: str = "") -> None:
    require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
            f"{name} must be an integer >= {minimum}{meaning}, got {value!r}")


def positive_int(name: str, value: Any) -> None:
    int_at_least(name, value, 1)


def tuple_fields(config: Any, *names: str) -> None:
    """YAML gives lists; the frozen configs hold tuples (hashable, compared by value)."""
    for name in names:
        if isinstance(getattr(config, name), list):
            object.__setattr__(config, name, tuple(getattr(config, name)))


_SECTIONS: dict[tuple[type, str], Any] = {}


def register_sections(sections: dict[tuple[type, str], Any]) -> None:
    """Declare which config dataclass builds the field ``name`` of ``cls``, by ``(cls, name)``: a
    dataclass, or a function of the parent's values that returns one (or None for plain values)."""
    _SECTIONS.update(sections)


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def build_config(cls: type, values: Any, path: str = "") -> Any:
    """The config dataclass ``cls`` from nested plain values, its registered sections built in turn."""
    if not isinstance(values, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        explain = getattr(cls, "explain_unknown", None)  # a section whose layout changed says how
        reason = explain(unknown[0]) if explain else None
        raise ConfigError(reason or f"unknown field {path + '.' if path else ''}{unknown[0]}; known: {sorted(known)}")
    kwargs = {}
    for name, value in values.items():
        section = _SECTIONS.get((cls, name))
        if section is not None and not isinstance(section, type):
            section = section(values)  # a section whose type depends on its parent's values (data on task)
        kwargs[name] = build_config(section, value, f"{path}.{name}" if path else name) if section else value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{path or 'config'}: {error}") from None


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


class _YAMLLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading scientific notation without a dot (``1e-3``, ``3e4``) as a
    number the way YAML 1.2 and people do; YAML 1.1 reads it as text."""


def _scientific(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int | float:
    text = loader.construct_scalar(node)
    number = float(text)
    mantissa, _, exponent = text.lower().partition("e")
    return int(number) if "." not in mantissa and int(exponent) >= 0 else number  # 1e3 counts, 1e-3 is a rate


_YAMLLoader.add_implicit_resolver(
    "!scientific", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)
_YAMLLoader.add_constructor("!scientific", _scientific)


def load_yaml(text: str) -> Any:
    """Plain values of a YAML document (safe: no objects), numbers in scientific notation included."""
    return yaml.load(text, Loader=_YAMLLoader)


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["train.epochs=3", "model.core.kind=lstm"]`` → nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {assignment!r} must look like section.field=value")
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = load_yaml(text)
    return nested


def config_layers(path: str | Path | None, overrides: list[str] | None, base: dict[str, Any] | None,
                  sections: str) -> list[dict[str, Any]]:
    """``[base, the YAML file at path, overrides]`` as dicts, the ones given, in that order."""
    layers: list[dict[str, Any]] = [base or {}]
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = load_yaml(path.read_text())
        except yaml.YAMLError as error:
            where = getattr(error, "problem_mark", None)
            at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
            raise ConfigError(f"{path} is not valid YAML{at}: {getattr(error, 'problem', None) or error}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not a text file") from None
        if loaded is None:
            raise ConfigError(f"{path} is empty: a config holds at least the sections it sets ({sections})")
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of sections ({sections})")
        layers.append(loaded)
    if overrides:
        layers.append(parse_overrides(overrides))
    return layers


# ---- run folders -----------------------------------------------------------------------------------

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
TRAIN_TIME_FILE = "train_time.json"


def prepare_run_dir(run_dir: Path, config: Any, load: Callable[[Path], Any]) -> Any:
    """Create the folder with ``config`` or, for an existing one, check ``config`` matches it.

    ``config=None`` resumes with the folder's own config (read with ``load``).
    """
    saved = run_dir / CONFIG_FILE
    if saved.is_file():
        existing = load(saved)
        if config is not None and config != existing:
            changed = differing_fields(config.as_dict(), existing.as_dict())
            raise ConfigError(f"{run_dir} holds a run with a different config (differs in {', '.join(changed)}); "
                              f"resume it with `brims train {run_dir}` or choose another --run-dir")
        return existing
    if config is None:
        raise ConfigError(f"{run_dir} holds no run ({CONFIG_FILE} missing); give a config to start one")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, config.to_yaml())
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


def parse_device(name: str, what: str) -> torch.device:
    """``name`` as ``cpu``, ``cuda`` or ``cuda:<index>``; else a :class:`ConfigError` that names ``what``
    (the flag or field it came from). Whether this machine has it is :func:`check_device`'s question."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{what} must be cpu or cuda[:index], got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{what} must be cpu or cuda[:index], got {name!r}")
    return device


def check_device(name: str, what: str) -> torch.device:
    """``name`` as a device this machine has (``cpu``, ``cuda``, ``cuda:<index>``); else a
    :class:`ConfigError` that names ``what``."""
    device = parse_device(name, what)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{what}={name}, but no CUDA device is available on this machine; use cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"{what}={name}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


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

    lines = []
    for name in changed:
        old, new = value(before, name), value(after, name)
        limit = (lambda steps: steps or math.inf) if name == "train.max_steps" else (lambda amount: amount)
        if name in BUDGET_FIELDS and limit(new) < limit(old):
            raise ConfigError(f"{name}={new} would shrink the budget of {run_dir} ({old}); a resume only extends it")
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
    if core.compile and core.kind != "lstm":
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


# ---- checkpoints: atomic writes (kill -9 at any moment leaves the previous one intact), safe reads ---

FORMAT_KEY = "brims"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupted, or not one of ours."""


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A brims checkpoint as a dict, loaded safely; :class:`CheckpointError` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 -- any file may be given: whatever torch raises on it is "not ours"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is corrupted or not a safe checkpoint: {first_line}") from None
    header = checkpoint.get(FORMAT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(header, dict) or "config" not in header:
        raise CheckpointError(f"{path} is not a brims training checkpoint (no {FORMAT_KEY!r} header)")
    if header.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {header.get('format')!r}; this brims reads {FORMAT_VERSION}")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Atomic saves, safe loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        atomic_write(Path(path), lambda handle: handle.write(buffer.getbuffer()))

    def load_checkpoint(self, path: str | Path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return read_checkpoint(path, map_location if map_location is not None else "cpu")


# ---- figures ---------------------------------------------------------------------------------------


MODEL_NAMES = {"brims": "BRIMs", "rims": "RIMs", "brims-no-top-down": "BRIMs without top-down", "lstm": "LSTM"}


def title_of(metrics: dict[str, Any], with_model: bool = True) -> str:
    """A figure title in words from a run's ``metrics.json``: the model and what it learned (the
    experiment's ``data_words``)."""
    from brims_experiments.experiments import experiment_of_metrics

    data = experiment_of_metrics(metrics).data_words(metrics)
    model = MODEL_NAMES.get(str(metrics.get("model")), str(metrics.get("model")))
    return f"{model} on {data}" if with_model else data


def save_figure(figure: Any, path: Path) -> None:
    """Write a matplotlib figure to ``path`` as PNG, atomically, and close it."""
    import matplotlib.pyplot as plt  # the figure's own library, loaded only by those who plot

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write(path, lambda handle: handle.write(buffer.getvalue()))
