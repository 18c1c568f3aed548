"""Run a suite: every (experiment, model, seed) as its own ``brims train`` process, a few at a time.

Run folders live under ``<runs>/<suite>/<experiment>/<model>/seed<k>`` (checkpoints and all); a
finished run (its ``metrics.json`` written after the test) is skipped, a started one resumes from
its last checkpoint, so the command picks up where an interruption left it. Each finished run's
small artefacts (resolved config, metrics, training log, figures and animations; no checkpoints) are copied to
``<results>/<suite>/<experiment>/<model>/seed<k>``; only finished runs are copied, so a run that did
not finish is never reported. With ``keep_results`` a run already in ``<results>`` with the same
config counts as finished too (a suite continued on another machine).
"""

from __future__ import annotations

import fcntl
import fnmatch
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from brims_experiments.config_files import ConfigError
from brims_experiments.data.store import atomic_write_text
from brims_experiments.reproduce.suites import Experiment, Suite
from brims_experiments.run_folder import CONFIG_FILE, METRICS_FILE, TRAIN_TIME_FILE

log = logging.getLogger(__name__)

SUITE_RECORD = "suite.json"
KEPT_FILES = (CONFIG_FILE, METRICS_FILE, TRAIN_TIME_FILE, "logs/metrics.csv")


@dataclass(frozen=True)
class PlannedRun:
    experiment: Experiment
    model: str
    seed: int
    run_dir: Path
    result_dir: Path

    @property
    def name(self) -> str:
        return f"{self.experiment.name}/{self.model}/seed{self.seed}"

    @property
    def overrides(self) -> list[str]:
        return self.experiment.overrides_for(self.model, self.seed)

    def command(self) -> str:
        """The ``brims train`` command of this run, as a user would type it in a shell."""
        return shlex.join(["brims", "train", self.experiment.preset, "--run-dir", str(self.run_dir), "--set", *self.overrides])

    def config(self) -> Any:
        from brims_experiments.train.commands import load_any_config, resolve_config

        return load_any_config(resolve_config(self.experiment.preset), self.overrides)


def plan(suite: Suite, runs_root: Path, results_root: Path) -> list[PlannedRun]:
    """Every run of the suite, experiment by experiment, seeds outermost within one: the first seed
    of every model comes before the second seed of any, so an early stop still compares models."""
    runs = []
    for experiment in suite.experiments:
        for seed in experiment.seeds:
            for model in experiment.models:
                where = Path(suite.name) / experiment.name / model / f"seed{seed}"
                runs.append(PlannedRun(experiment, model, seed, runs_root / where, results_root / where))
    return runs


def _same_config(folder: Path, run: PlannedRun) -> bool:
    from brims_experiments.train.commands import load_any_config

    return load_any_config(folder / CONFIG_FILE) == run.config()


def status(run: PlannedRun, keep_results: bool) -> str:
    """``finished`` (in the run folder, or in results with ``keep_results``), ``started`` or ``new``."""
    if (run.run_dir / CONFIG_FILE).is_file():
        if not _same_config(run.run_dir, run):
            raise ConfigError(f"{run.run_dir} holds a run of another config than suite entry {run.name} (the suite "
                              "changed?): delete that folder to run it again")
        return "finished" if (run.run_dir / METRICS_FILE).is_file() else "started"
    if keep_results and (run.result_dir / METRICS_FILE).is_file() and _same_config(run.result_dir, run):
        return "finished"
    return "new"


def collect(run: PlannedRun) -> None:
    """Copy a finished run's small artefacts into its results folder, replacing what was there."""
    staging = run.result_dir.with_name(run.result_dir.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for name in KEPT_FILES:
        source = run.run_dir / name
        if source.is_file():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, staging / name)
    for figure in sorted([*run.run_dir.glob("*.png"), *run.run_dir.glob("*.gif")]):
        shutil.copy2(figure, staging / figure.name)
    metrics = json.loads((staging / METRICS_FILE).read_text())
    metrics["checkpoint"] = Path(metrics.get("checkpoint", "")).name  # not this machine's path
    atomic_write_text(staging / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    # The earlier copy is set aside, not deleted, until the new one is in place: a kill at any point
    # leaves a complete results folder (or, between the renames, the earlier one beside it).
    replaced = run.result_dir.with_name(run.result_dir.name + ".replaced")
    if replaced.exists() and not run.result_dir.exists():  # a kill between the renames: restore it first
        replaced.rename(run.result_dir)
    shutil.rmtree(replaced, ignore_errors=True)
    if run.result_dir.exists():
        run.result_dir.rename(replaced)
    staging.rename(run.result_dir)
    shutil.rmtree(replaced, ignore_errors=True)


def machine() -> dict[str, Any]:
    import lightning
    import torch

    import brims

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cores": cores, "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "lightning": lightning.__version__, "brims": brims.__version__}


def _take_ctrl_c() -> None:
    """Run in a run's process before it starts: SIGINT stops it cleanly (it saves and exits), also where
    this runner was started with SIGINT ignored, as a shell starts a script's background jobs: the
    runner stops its runs with SIGINT, and an ignored SIGINT would leave it waiting on them forever."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _stop_as_on_ctrl_c(signum: int, frame: Any) -> None:
    """SIGTERM (``kill``, a scheduler's stop) ends the runner as Ctrl-C does: it stops its runs, each
    keeping its last checkpoint, and records the session as interrupted. Without this the runner
    died at once and left its runs training on their own, their results never collected."""
    raise KeyboardInterrupt(f"signal {signum}")


def _launch(run: PlannedRun, state: str) -> subprocess.Popen:
    """Start the run's ``brims train`` process, its output appended to ``<run folder>.log``."""
    command = [sys.executable, "-m", "brims_experiments.cli", "train"]
    command += [str(run.run_dir)] if state == "started" else [run.experiment.preset, "--run-dir", str(run.run_dir),
                                                              "--set", *run.overrides]
    command.append("--no-progress")
    run.run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(run.run_dir.with_name(run.run_dir.name + ".log"), "a") as output:
        output.write(f"\n$ {shlex.join(command)}\n")
        output.flush()
        # Its own process group: Ctrl-C reaches it once, from us, so that it saves and stops cleanly.
        # preexec_fn is safe here: the runner starts its runs from its only thread.
        return subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=_take_ctrl_c)  # noqa: PLW1509


def select(runs: list[PlannedRun], patterns: list[str]) -> list[PlannedRun]:
    """The runs whose name (``experiment/model/seed<k>``) matches one of the shell-style ``patterns``
    (all of them for none); a :class:`ConfigError` for a pattern that matches no run."""
    if not patterns:
        return runs
    unmatched = [pattern for pattern in patterns if not any(fnmatch.fnmatchcase(run.name, pattern) for run in runs)]
    if unmatched:
        raise ConfigError(f"--only {', '.join(unmatched)} matches no run of the suite; its runs are named like "
                          f"{runs[0].name} (experiment/model/seed<k>; * and ? match any text)")
    return [run for run in runs if any(fnmatch.fnmatchcase(run.name, pattern) for pattern in patterns)]


def execute(suite: Suite, runs: list[PlannedRun], keep_results: bool, jobs: int, say=print,
            record: Callable[[dict[str, Any]], None] = lambda session: None,
            minutes: float | None = None) -> dict[str, Any]:
    """Run what is not finished, ``jobs`` at a time; collect every finished run. Returns this
    session's record (its wall time, machine and each run's outcome), also handed to ``record`` at
    the start and after every run, so that a session killed midway is still on record (its
    ``ended`` stays false; an interrupted one says ``interrupted``).

    With ``minutes``, a run starts only if its estimate (the suite's ``minutes``) ends within that
    many minutes of this call: what would not finish in a working session is left for the next one
    (outcome ``left for later``) rather than started and lost."""
    start = time.perf_counter()

    def fits(run: PlannedRun) -> bool:
        elapsed = (time.perf_counter() - start) / 60
        return minutes is None or elapsed + run.experiment.minutes[run.model] <= minutes
    session: dict[str, Any] = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "wall_seconds": 0.0, "jobs": jobs, "machine": machine(), "ended": False, "runs": {}}
    states = {run.name: status(run, keep_results) for run in runs}
    waiting = [run for run in runs if states[run.name] != "finished"]
    for run in runs:
        if states[run.name] == "finished" and (run.run_dir / METRICS_FILE).is_file():
            collect(run)  # a run finished earlier whose results folder may be stale
    outcome = session["runs"]
    outcome.update({run.name: "finished before" for run in runs if states[run.name] == "finished"})

    def update(ended: bool | str = False) -> None:
        session["wall_seconds"], session["ended"] = round(time.perf_counter() - start, 1), ended
        record(session)

    update()
    say(f"suite {suite.name}: {len(runs)} runs, {len(runs) - len(waiting)} finished before, {len(waiting)} to run, "
        f"{jobs} at a time")
    running: dict[str, tuple[PlannedRun, subprocess.Popen, float]] = {}
    done = len(runs) - len(waiting)
    on_terminate = signal.signal(signal.SIGTERM, _stop_as_on_ctrl_c)
    try:
        while running or any(fits(run) for run in waiting):
            while len(running) < jobs and (run := next((r for r in waiting if fits(r)), None)) is not None:
                waiting.remove(run)
                running[run.name] = (run, _launch(run, states[run.name]), time.perf_counter())
                say(f"  started  {run.name} ({states[run.name]}; log {run.run_dir.name}.log)")
            time.sleep(1.0)
            for name, (run, process, began) in list(running.items()):
                if process.poll() is None:
                    continue
                del running[name]
                done += 1
                seconds = time.perf_counter() - began
                if process.returncode == 0 and (run.run_dir / METRICS_FILE).is_file():
                    collect(run)
                    outcome[name] = "finished"
                    say(f"  [{done}/{len(runs)}] finished {name} in {seconds / 60:.1f} min")
                else:
                    outcome[name] = f"failed (exit {process.returncode})"
                    say(f"  [{done}/{len(runs)}] FAILED {name} (exit {process.returncode}): see "
                        f"{run.run_dir.with_name(run.run_dir.name + '.log')}")
                update()
    except BaseException as error:  # Ctrl-C, or a failure here: stop the runs rather than leave them unsupervised
        for run, process, _ in running.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)  # each keeps its last checkpoint
        for run, process, _ in running.values():
            process.wait()
        if isinstance(error, KeyboardInterrupt):
            update("interrupted")
        raise
    finally:
        signal.signal(signal.SIGTERM, on_terminate)
    for run in waiting:
        outcome[run.name] = "left for later"
        say(f"  left for later: {run.name} (~{run.experiment.minutes[run.model]:.0f} min, more than the "
            f"{minutes:g}-min limit had left)")
    update(True)
    return session


def record_session(results: Path, session: dict[str, Any]) -> None:
    """Write this invocation into ``<results>/<suite>/suite.json`` (the suite's sessions, machines,
    wall times), replacing its earlier record (the same start) in place or appending it; an
    unreadable record is refused with a ConfigError that names it."""
    path = results / SUITE_RECORD
    results.mkdir(parents=True, exist_ok=True)
    # Two `brims reproduce` of one suite (say, one per core) record into the same file: each reads,
    # changes and writes it holding this lock, so that neither drops the other's record.
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            sessions = json.loads(path.read_text())["sessions"] if path.is_file() else []
        except (ValueError, KeyError, TypeError) as error:
            raise ConfigError(f"{path} is not a suite record ({error}): mend it, or move it away to start a new "
                              "record") from None
        starts = [s.get("started_at") for s in sessions]
        if session["started_at"] in starts:  # this session's earlier record: replace it where it stands
            sessions[starts.index(session["started_at"])] = session
        else:
            sessions.append(session)
        atomic_write_text(path, json.dumps({"sessions": sessions}, indent=2) + "\n")


def data_of(config: Any) -> tuple[str, str | None] | None:
    """The fetched data set a run's config reads and its ``data.data_dir`` (None: the default data
    root); None for the generated tasks (adding, copying, bouncing balls) and RL, which fetch nothing."""
    from brims_experiments.experiments import experiment

    return experiment(config.task).fetched_data(config)


def fetches_needed(runs: list[PlannedRun], states: dict[str, str]) -> list[str]:
    """The ``brims fetch`` commands the runs that are not finished need first, one per data set they
    read that is not prepared under its data root (``data.data_dir``, else ``$BRIMS_DATA`` or
    ``~/.cache/brims/data``): prepared means its folder has the manifest that ``brims fetch`` writes last."""
    from brims_experiments.data import images
    from brims_experiments.data.store import MANIFEST, data_root, fetch_hint

    commands = []
    for run in runs:
        found = data_of(run.config()) if states[run.name] != "finished" else None
        if found is None or (data_root(found[1]) / found[0] / MANIFEST).is_file():
            continue
        name, data_dir = found
        command = images.fetch_hint(name, data_dir) if name in images.IMAGE_DATASETS else fetch_hint(name, data_dir)
        if command not in commands:
            commands.append(command)
    return commands


def estimate_minutes(runs: list[PlannedRun], states: dict[str, str], jobs: int) -> float:
    """Wall minutes to run what is not finished, ``jobs`` at a time (the suite's per-run estimates)."""
    pending = [run.experiment.minutes[run.model] for run in runs if states[run.name] != "finished"]
    lanes = [0.0] * jobs
    for minutes in pending:  # in the order execute starts them, each on the lane that frees first
        lanes[lanes.index(min(lanes))] += minutes
    return max(lanes)
