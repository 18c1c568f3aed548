"""The ``brims reproduce`` and ``brims report`` commands."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from brims_experiments.suites import suite_names


def add_commands(commands: Any) -> None:
    names = ", ".join(suite_names())
    reproduce = commands.add_parser(
        "reproduce", help="run a named suite of experiments (models x seeds) and write its report",
        description=f"Run a suite ({names}): every experiment's models with every seed, each as its own `brims "
        "train` run, a few at a time; skip finished runs and resume started ones; copy each finished run's "
        "config, metrics, log and figures (no checkpoints) to <results>/<suite>/; then write the report "
        "(tables with 95% intervals over seeds, the claims they test, curves). The suites are described in "
        "src/brims_experiments/suites/.")
    reproduce.add_argument("suite", choices=suite_names(), metavar="SUITE", help=f"one of {names}")
    reproduce.add_argument("--dry-run", action="store_true",
                           help="list the runs, their state and commands, and the estimated time; run nothing")
    reproduce.add_argument("--jobs", type=int, help="runs at a time, one thread each (default: the suite's, "
                           "2 for the CPU suites)")
    reproduce.add_argument("--runs", default="runs", help="folder of the run folders (default: runs)")
    reproduce.add_argument("--results", default="runs/results", help="folder the results and report go to (default: "
                           "runs/results; the project's committed results are in results/, written with --results "
                           "results)")
    reproduce.add_argument("--keep-results", action="store_true",
                           help="count runs already in --results with the same config as finished (to continue a "
                           "suite on another machine); without it every run not finished under --runs is run")
    reproduce.add_argument("--only", action="append", default=[], metavar="PATTERN",
                           help="run only the runs whose name (experiment/model/seed<k>, as --dry-run lists them) "
                           "matches this shell-style pattern, e.g. 'balls/rims/*' or '*/seed0'; repeatable. The report "
                           "still covers every finished run")
    reproduce.add_argument("--minutes", type=float, metavar="M",
                           help="start a run only if its estimate (--dry-run shows it) ends within M minutes, so "
                           "that nothing is left half-trained when a working session ends; the rest is listed as "
                           "left for later")
    reproduce.add_argument("--readme", help="also rewrite this README's generated block of the suite")
    reproduce.set_defaults(handler=run_reproduce, command_parser=reproduce)

    report = commands.add_parser(
        "report", help="rebuild a suite's report (and README block) from its results alone",
        description="Rebuild <results>/<suite>/README.md and its figures from the committed results, and with "
        "--readme the suite's generated block in that README (the tests check that block against results/).")
    report.add_argument("suite", choices=suite_names(), metavar="SUITE", help=f"one of {names}")
    report.add_argument("--results", default="results", help="folder of the results (default: results, the "
                        "committed ones)")
    report.add_argument("--readme", help="rewrite this README's generated block of the suite")
    report.set_defaults(handler=run_report, command_parser=report)


def _check_readme(readme: str | None, name: str, parser: argparse.ArgumentParser) -> None:
    """Refuse a --readme that is no file or has no generated block of suite ``name``, before any work."""
    from brims_experiments.reproduce.report import readme_section

    if readme and not (Path(readme).is_file() and readme_section(Path(readme).read_text(), name) is not None):
        parser.error(f"--readme {readme}: no such file, or no generated block for suite {name} in it")


def _report(suite: Any, results: Path, readme: str | None) -> None:
    """Write the suite's report, and its README block when ``readme`` (checked by :func:`_check_readme`)."""
    from brims_experiments.reproduce.report import update_readme, write_report

    print(f"report: {write_report(suite, results)}")
    if readme:
        update_readme(Path(readme), suite, results)
        print(f"updated the suite's block in {readme}")


def run_reproduce(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from brims_experiments.reproduce.runner import (
        estimate_minutes,
        execute,
        fetches_needed,
        plan,
        record_session,
        select,
        status,
    )
    from brims_experiments.reproduce.suites import load_suite

    suite = load_suite(args.suite)
    jobs = args.jobs if args.jobs is not None else suite.jobs
    if jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.minutes is not None and not args.minutes > 0:
        parser.error(f"--minutes must be > 0, got {args.minutes:g}")
    results = Path(args.results) / suite.name
    runs = select(plan(suite, Path(args.runs), Path(args.results)), args.only)
    if args.dry_run:
        states = {run.name: status(run, args.keep_results) for run in runs}
        print(f"suite {suite.name}: {suite.title}")
        for run in runs:
            print(f"  {states[run.name]:>8}  {run.name}  (~{run.experiment.minutes[run.model]:.0f} min)")
            print(f"            {run.command()}")
        print(f"estimated wall time for what is not finished, {jobs} at a time: "
              f"{estimate_minutes(runs, states, jobs):.0f} min (from the suite's per-run estimates"
              + (", on one GPU)" if suite.machine == "gpu" else ", on 2 CPU cores)"))
        fetches = fetches_needed(runs, states)
        if fetches:
            print(f"needs: {', '.join(fetches)} (data sets not yet prepared; fetch them before the suite, or its "
                  "runs that read them fail)")
        return 0
    _check_readme(args.readme, suite.name, parser)
    args.run_folder = None
    try:
        session = execute(suite, runs, args.keep_results, jobs, record=lambda record: record_session(results, record),
                          minutes=args.minutes)
    except KeyboardInterrupt:
        if args.debug:
            raise
        again = ["brims", "reproduce", suite.name, "--runs", args.runs, "--results", args.results]
        again += ["--keep-results"] if args.keep_results else []
        again += ["--jobs", str(args.jobs)] if args.jobs is not None else []
        again += [item for pattern in args.only for item in ("--only", pattern)]
        print(f"suite {suite.name}: interrupted; the runs keep their last checkpoints, and `{shlex.join(again)}` "
              "resumes them", file=sys.stderr)
        return 130
    _report(suite, results, args.readme)
    from brims_experiments.reproduce.report import readme_block

    print()
    print(readme_block(suite, results))
    failed = [name for name, outcome in session["runs"].items() if outcome.startswith("failed")]
    later = [name for name, outcome in session["runs"].items() if outcome == "left for later"]
    print(f"suite {suite.name}: {session['wall_seconds'] / 60:.1f} min"
          + (f"; {len(failed)} failed: {', '.join(failed)}" if failed else "")
          + (f"; {len(later)} left for later (did not fit --minutes)" if later else ""))
    return 1 if failed else 0


def run_report(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from brims_experiments.reproduce.suites import load_suite

    suite = load_suite(args.suite)
    results = Path(args.results) / suite.name
    if not results.is_dir():
        parser.error(f"{results} does not exist: run `brims reproduce {suite.name}` first")
    _check_readme(args.readme, suite.name, parser)
    _report(suite, results, args.readme)
    return 0
