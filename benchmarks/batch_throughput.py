"""Training samples per second of each model of a suite's experiments at several batch sizes, one thread.

For every experiment of the suite (its preset, shared overrides and each model's overrides, exactly
as ``brims reproduce`` runs them, compiled where the preset compiles) and every batch size, one
training step is what a run does: the task's loss of one batch from its own training data
(``Task.step``), backward, gradient clipping and an Adam step. Each (experiment, model) is measured
in its own process, as a run is (so that one model's compiled graphs never count against
another's recompile limit), with one model fed every batch size; the warm-up steps compile. Its
repeats are interleaved across batch sizes (repeat r of every batch before repeat r+1 of any), so
that load drift on a shared machine hits each alike; the result is the median over repeats of
samples per second, and its ratio to the same model at the first batch size (docs/design.md,
section 4: ratios in one run, never absolute times across runs). A language-modelling batch is that
many streams of ``data.bptt`` words.

    python benchmarks/batch_throughput.py --suite cpu --batches 64 128 256
    python benchmarks/batch_throughput.py --suite cpu --experiments smnist --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="cpu", help="the suite whose experiments and models are measured (default: cpu)")
    parser.add_argument("--experiments", nargs="*", help="only these experiments of the suite (default: all)")
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 128, 256], help="batch sizes (default: 64 128 256)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps per model and batch (default: 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, as the suites run)")
    parser.add_argument("--json", type=Path, help="also write the table's numbers here")
    parser.add_argument("--eager", action="store_true", help="model.core.compile=false for every model (no compile "
                        "time; the suites' presets compile)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: [preset, *overrides] as JSON
    return parser.parse_args()


def measure(preset: str, overrides: list[str], batches: list[int], warmup: int, repeats: int) -> dict[int, float]:
    """Samples per second of one model (``preset`` with ``overrides``) at each batch size."""
    from brims_experiments.experiments import experiment
    from brims_experiments.train.commands import load_any_config, resolve_config

    config = load_any_config(resolve_config(preset), overrides)
    task = experiment(config.task)(config)
    torch.manual_seed(config.train.seed)
    model = task.build_model().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    clip = config.train.grad_clip or float("inf")
    data = {}
    for batch in batches:
        sized = experiment(config.task)(load_any_config(resolve_config(preset), [*overrides, f"data.batch_size={batch}"]))
        module = sized.datamodule()
        module.setup("fit")
        data[batch] = next(iter(module.train_dataloader()))
    times: dict[int, list[float]] = {batch: [] for batch in batches}
    for repeat in range(warmup + repeats):
        for batch in batches:
            started = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss, _ = task.step(model, data[batch])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            if repeat >= warmup:
                times[batch].append(time.perf_counter() - started)
    return {batch: batch / statistics.median(times[batch]) for batch in batches}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.one:  # a child: one (experiment, model), its numbers as JSON on the last line
        preset, *overrides = json.loads(args.one)
        print(json.dumps(measure(preset, overrides, args.batches, args.warmup, args.repeats)))
        return
    from brims_experiments.reproduce.runner import plan
    from brims_experiments.reproduce.suites import load_suite

    suite = load_suite(args.suite)
    chosen = [e for e in suite.experiments if not args.experiments or e.name in args.experiments]
    if not chosen:
        raise SystemExit(f"no experiment of suite {args.suite} is named {args.experiments}")
    runs = [run for run in plan(suite, Path("runs"), Path("results")) if run.seed == suite.seeds[0] and run.experiment in chosen]
    numbers: dict[str, dict[str, dict[int, float]]] = {}
    rows = []
    for run in runs:
        started = time.perf_counter()
        command = [sys.executable, __file__, "--one", json.dumps([run.experiment.preset, *run.overrides, *(["model.core.compile=false"] if args.eager else [])]),
                   "--threads", str(args.threads), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
                   "--batches", *map(str, args.batches)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"{run.experiment.name}/{run.model} failed:\n{done.stderr[-3000:]}")
        measured = {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
        numbers.setdefault(run.experiment.name, {})[run.model] = {b: round(v, 2) for b, v in measured.items()}
        base = measured[args.batches[0]]
        rows += [f"| {run.experiment.name} | {run.model} | {b} | {v:,.1f} | {v / base:.2f} |" for b, v in measured.items()]
        print(f"{run.experiment.name}/{run.model}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    print(f"training samples per second, {'eager' if args.eager else 'as the presets run (compiled)'}, "
          f"{args.threads} thread(s), median of {args.repeats} steps interleaved over the batches")
    print(f"| experiment | model | batch | samples/s | vs batch {args.batches[0]} |\n|---|---|---:|---:|---:|")
    print("\n".join(rows))
    if args.json:
        from brims_experiments.data.store import atomic_write_text

        atomic_write_text(args.json, json.dumps({"suite": args.suite, "eager": args.eager, "threads": args.threads,
                                                 "repeats": args.repeats, "samples_per_second": numbers}, indent=2) + "\n")


if __name__ == "__main__":
    main()
