"""Rerun committed suite runs with the code as it is now and compare them with results/, exactly.

    python scripts/rerun_check.py cpu adding/lstm/seed0 adding/brims/seed0 --jobs 2

Each named run of the suite is trained again from scratch (its ``brims train`` command, in a
scratch folder under ``runs/rerun-check/``) and its ``metrics.json`` and ``logs/metrics.csv`` are
compared with the committed ones value for value (the log row by row). Wall times (``test_seconds``, ``train``) and
the checkpoint's path differ between any two runs and are left out; everything else must be
equal, bit for bit. Exit status 1 if anything differs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from brims_experiments.reproduce.runner import PlannedRun, plan
from brims_experiments.reproduce.suites import load_suite
from brims_experiments.run_folder import LOG_FILE, read_log_rows

NOT_COMPARED = ("test_seconds", "train", "checkpoint", "written_to")


def differences(ours: object, theirs: object, where: str = "") -> list[str]:
    """Dotted paths at which two JSON values differ (floats compared exactly)."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        found = []
        for key in sorted(set(ours) | set(theirs)):
            if not where and key in NOT_COMPARED:
                continue
            found += differences(ours.get(key), theirs.get(key), f"{where}{key}.")
        return found
    return [] if ours == theirs else [f"{where.rstrip('.')}: {ours!r} != {theirs!r}"]


def rerun(run: PlannedRun, scratch: Path) -> tuple[str, list[str]]:
    folder = scratch / run.name
    shutil.rmtree(folder, ignore_errors=True)
    command = [sys.executable, "-m", "brims_experiments.cli", "train", run.experiment.preset, "--run-dir", str(folder),
               "--no-progress", "--set", *run.overrides]
    log = scratch / f"{run.name.replace('/', '-')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        status = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, check=False).returncode
    if status:
        return run.name, [f"`{shlex.join(command)}` failed with status {status}; see {log}"]
    found = differences(json.loads((folder / "metrics.json").read_text()),
                        json.loads((run.result_dir / "metrics.json").read_text()))
    # Read as rows (steps counted from 1; a log of brims 0.2 counts Lightning's step from 0).
    ours, theirs = (read_log_rows(f / LOG_FILE) for f in (folder, run.result_dir))
    if ours != theirs:
        found.append(f"logs/metrics.csv differs ({sum(a != b for a, b in zip(ours, theirs))} of {len(theirs)} rows, "
                     f"{len(ours)} rows against {len(theirs)})")
    return run.name, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("suite", help="a suite with committed results, e.g. cpu")
    parser.add_argument("runs", nargs="+", help="runs as experiment/model/seedN, e.g. adding/lstm/seed0")
    parser.add_argument("--results", default="results", help="the committed results (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default: %(default)s)")
    args = parser.parse_args()
    scratch = Path("runs") / "rerun-check"
    planned = {run.name: run for run in plan(load_suite(args.suite), scratch, Path(args.results))}
    unknown = [name for name in args.runs if name not in planned]
    if unknown:
        parser.error(f"not runs of suite {args.suite}: {', '.join(unknown)}")
    with ThreadPoolExecutor(args.jobs) as pool:
        outcomes = list(pool.map(lambda name: rerun(planned[name], scratch), args.runs))
    for name, found in outcomes:
        print(f"{name}: {'identical' if not found else 'DIFFERS'}")
        for line in found:
            print(f"    {line}")
    return 1 if any(found for _, found in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
