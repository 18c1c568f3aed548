"""The ``brims`` command line.

``brims demo`` trains a small BRIMs (or, with ``--core lstm``, the LSTM baseline) on the RIMs
copying task for a fixed wall-clock budget, printing progress, then evaluates on fresh
sequences at the training gap and at a longer one.

This module is the program's user interface: it is the only place that prints, and the only
place that changes torch's process-wide settings (threads, denormal flushing).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence

import torch

from brims import __version__
from brims_experiments.compile_cache import keep_compiled_code
from brims_experiments.export import add_export_command
from brims_experiments.reproduce.commands import add_commands as add_reproduce_commands
from brims_experiments.tasks.copying import (
    CopyingMetrics,
    CopyingTaskConfig,
    copying_loss,
    copying_metrics,
    make_copying_batch,
)
from brims_experiments.tasks.cores import CoreConfig
from brims_experiments.tasks.sequence_model import SequenceModel
from brims_experiments.train.commands import add_commands as add_experiment_commands

logger = logging.getLogger(__name__)

DEMO_BRIMS = {"hidden_sizes": (64, 64), "num_modules": (4, 2), "top_k": (2, 1)}
DEMO_EMBEDDING = 32  # the one-hot tokens' projection
# Small enough that learning shows within the one-minute budget on 2 CPU cores.
COPY_LENGTH, CLASSES, GAP, LEARNING_RATE = 3, 4, 5, 3e-3


# ---- argument types: bad values become argparse errors (exit 2, with usage) ------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _format_sizes(sizes: Sequence[int]) -> str:
    return "/".join(str(size) for size in sizes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="brims",
        description="Bidirectional Recurrent Independent Mechanisms (BRIMs) and RIMs for PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"brims {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more from the library (-v: info, -vv: debug)"
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error instead of its one-line message"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="train a small BRIMs on the copying task for a minute and evaluate it",
        description=(
            "Train a small BRIMs (or the LSTM baseline) on the RIMs copying task: a few symbols, a gap "
            "of blanks, a delimiter, then the model reproduces the symbols (RIMs uses 10 symbols from "
            "8 classes: --copy-length 10 --classes 8; the one-minute default is smaller). "
            "Training data is generated on the fly; after the time budget the model is evaluated on "
            "fresh sequences at the training gap and at a longer gap."
        ),
    )
    add = demo.add_argument
    add("--core", choices=("brims", "lstm"), default="brims", help="recurrent core to train (default: %(default)s)")
    add("--seconds", type=_positive_float, default=60.0, help="wall-clock training budget (default: %(default)g)")
    add("--gap", type=_non_negative_int, default=GAP, help="blanks before the delimiter (default: %(default)s)")
    add("--copy-length", type=_positive_int, default=COPY_LENGTH, help="symbols to copy (default: %(default)s)")
    add("--classes", type=_positive_int, default=CLASSES, help="symbol classes (default: %(default)s)")
    add(
        "--eval-gap",
        type=_non_negative_int,
        default=None,
        help="longer gap to test generalisation at (default: 4 x --gap, as RIMs' 50 -> 200)",
    )
    add("--batch", type=_positive_int, default=64, help="training sequences per step (default: %(default)s)")
    add(
        "--eval-batch", type=_positive_int, default=500, help="fresh sequences per evaluated gap (default: %(default)s)"
    )
    add("--lr", type=_positive_float, default=LEARNING_RATE, help="Adam learning rate (default: %(default)g)")
    add(
        "--seed", type=int, default=0, help="seed of the weights and training data; evaluation uses seed+1 (default: 0)"
    )
    add("--threads", type=_positive_int, default=None, help="CPU threads for torch (default: torch's default)")
    add("--log-every", type=_positive_float, default=5.0, help="seconds between progress lines (default: %(default)g)")
    add(
        "--hidden-sizes",
        type=_positive_int,
        nargs="+",
        default=None,
        help=f"hidden size per layer, LSTM too (default: {_format_sizes(DEMO_BRIMS['hidden_sizes'])})",
    )
    add(
        "--num-modules",
        type=_positive_int,
        nargs="+",
        default=None,
        help=f"BRIMs modules per layer (default: {_format_sizes(DEMO_BRIMS['num_modules'])})",
    )
    add(
        "--top-k",
        type=_positive_int,
        nargs="+",
        default=None,
        help=f"BRIMs active modules per layer (default: {_format_sizes(DEMO_BRIMS['top_k'])})",
    )
    demo.set_defaults(handler=run_demo, command_parser=demo)
    add_experiment_commands(commands)
    add_export_command(commands)
    add_reproduce_commands(commands)
    return parser


# ---- demo --------------------------------------------------------------------------------------


def _build_demo_model(args: argparse.Namespace, parser: argparse.ArgumentParser, vocab_size: int) -> SequenceModel:
    """The harness's model for generated tasks: one-hot tokens → linear → core → readout at every step."""
    if args.core == "lstm":
        for flag, value in (("--num-modules", args.num_modules), ("--top-k", args.top_k)):
            if value is not None:
                parser.error(f"{flag} applies to --core brims only")
    sizes = {
        "hidden_sizes": tuple(args.hidden_sizes or DEMO_BRIMS["hidden_sizes"]),
        "num_modules": tuple(args.num_modules or DEMO_BRIMS["num_modules"]),
        "top_k": tuple(args.top_k or DEMO_BRIMS["top_k"]),
    }
    try:
        core = CoreConfig(kind=args.core, brims=sizes)
        return SequenceModel(core, vocab_size, DEMO_EMBEDDING, vocab_size, every_step=True)
    except ValueError as error:  # e.g. a hidden size not divisible by its module count
        parser.error(str(error).replace("model.core.brims: ", "").replace("model.core.brims.", "").replace("_", "-"))  # exits with status 2
        raise


def _describe_model(model: SequenceModel) -> str:
    parameters = sum(p.numel() for p in model.parameters())
    core = model.core.config
    if core.kind == "lstm":
        return f"LSTM, hidden {_format_sizes(core.hidden_sizes)}, {parameters:,} parameters"
    return (
        f"BRIMs, hidden {_format_sizes(core.hidden_sizes)}, modules {_format_sizes(core.option('num_modules'))}, "
        f"active {_format_sizes(core.option('top_k'))}, {parameters:,} parameters"
    )


@torch.no_grad()
def _predict(model: SequenceModel, inputs: torch.Tensor, **options: bool):
    """``model`` on time-first one-hot ``inputs (T, B, V)`` in eval mode; logits ``(T, B, V)``
    (and the diagnostics when asked). The training mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        result = model(inputs.transpose(0, 1), **options)  # the model reads (B, T, V)
    finally:
        model.train(was_training)
    if isinstance(result, tuple):
        return result[0].transpose(0, 1), result[1]
    return result.transpose(0, 1)


def _module_activity(model: SequenceModel, task: CopyingTaskConfig, seed: int) -> list[str]:
    """One line per layer: the share of steps each module was active, on a fresh batch."""
    batch = make_copying_batch(task, 100, torch.Generator().manual_seed(seed))
    _, diagnostics = _predict(model, batch.inputs, return_diagnostics=True)
    lines = []
    for layer, active in enumerate(diagnostics.active):  # (T, B, n)
        shares = active.float().mean((0, 1))  # (n,)
        lines.append(f"  layer {layer + 1}: " + "  ".join(f"{share:5.1%}" for share in shares.tolist()))
    return lines


def run_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    # Process-wide choices belong to the program, not the library. Flushing denormals first:
    # recurrent states that decay towards zero otherwise hit very slow denormal arithmetic on CPU.
    torch.set_flush_denormal(True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    from brims_experiments.train.config import TrainConfig  # imports Lightning: only when the demo runs

    grad_clip = TrainConfig.grad_clip  # the experiments' default
    task = CopyingTaskConfig(gap=args.gap, copy_length=args.copy_length, num_classes=args.classes)
    eval_gap = 4 * args.gap if args.eval_gap is None else args.eval_gap
    model = _build_demo_model(args, parser, task.vocab_size)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    data = torch.Generator().manual_seed(args.seed)

    print(
        f"copying task: {task.copy_length} symbols from {task.num_classes} classes, gap {task.gap} "
        f"({task.sequence_length} steps)"
    )
    print(
        f"not remembering the symbols gives train loss {task.chance_loss:.3f}, symbol CE ln {task.num_classes} = "
        f"{task.chance_cross_entropy:.3f}, symbol acc {1 / task.num_classes:.1%}"
    )
    print(f"model: {_describe_model(model)}")
    print(
        f"training for {args.seconds:g} s: batch {args.batch}, Adam lr {args.lr:g}, gradient clip {grad_clip:g}, "
        f"seed {args.seed}, torch threads {torch.get_num_threads()}"
    )
    print(f"{'step':>6} {'elapsed':>8} {'train loss':>11} {'symbol CE':>10} {'symbol acc':>11}", flush=True)

    model.train()
    step = 0
    window: list[CopyingMetrics] = []
    start = time.perf_counter()
    last_report = start
    try:
        while time.perf_counter() - start < args.seconds:
            batch = make_copying_batch(task, args.batch, data)
            logits = model(batch.inputs.transpose(0, 1)).transpose(0, 1)  # (B, T, V) -> (T, B, V)
            loss = copying_loss(logits, batch.targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            step += 1
            window.append(copying_metrics(logits.detach(), batch.targets, task.copy_length))
            now = time.perf_counter()
            if now - last_report >= args.log_every or now - start >= args.seconds:
                n = len(window)
                print(
                    f"{step:>6} {now - start:>7.1f}s {sum(m.loss for m in window) / n:>11.3f} "
                    f"{sum(m.copy_cross_entropy for m in window) / n:>10.3f} "
                    f"{sum(m.symbol_accuracy for m in window) / n:>11.1%}",
                    flush=True,
                )
                window, last_report = [], now
    except KeyboardInterrupt:
        print(f"interrupted after {step} steps; evaluating the model as it is")
    elapsed = time.perf_counter() - start
    print(f"trained {step} steps in {elapsed:.1f} s ({step / max(elapsed, 1e-9):.1f} steps/s)")

    evaluation = torch.Generator().manual_seed(args.seed + 1)
    gaps = sorted({task.gap, eval_gap})
    print(f"\nevaluation on {args.eval_batch} fresh sequences per gap (seed {args.seed + 1}):")
    print(f"{'gap':>5} {'steps':>6} {'symbol CE':>10} {'symbol acc':>11} {'sequence acc':>13}")
    for gap in gaps:
        config = task.with_gap(gap)
        batch = make_copying_batch(config, args.eval_batch, evaluation)
        metrics = copying_metrics(_predict(model, batch.inputs), batch.targets, config.copy_length)
        label = f"{gap}{'*' if gap == task.gap else ''}"
        print(
            f"{label:>5} {config.sequence_length:>6} {metrics.copy_cross_entropy:>10.3f} "
            f"{metrics.symbol_accuracy:>11.1%} {metrics.sequence_accuracy:>13.1%}"
        )
    print("(* training gap; symbol CE/acc: over the symbols to reproduce; sequence acc: all of them right)")
    if model.core.is_modular:
        print("module activity at the training gap (share of steps each module is active):")
        for line in _module_activity(model, task, args.seed + 2):
            print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``brims`` command; returns the exit status."""
    keep_compiled_code()  # before anything imports torch._dynamo, which fixes the cache folder
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("lightning").propagate = False  # Lightning prints its own messages once
    try:
        return args.handler(args, args.command_parser)
    except KeyboardInterrupt:
        if args.debug:
            raise
        run = getattr(args, "run_folder", None)  # set by the commands that train
        hint = f"; {run} keeps its last checkpoint: resume with `brims train {run}`" if run else ""
        print(f"interrupted{hint}", file=sys.stderr)
        return 130
    except ModuleNotFoundError as error:
        extra, what = EXTRA_OF.get((error.name or "").split(".")[0], (None, None))
        if args.debug or extra is None:
            raise
        print(f"error: `brims {args.command}` needs {what} packages ({error.name} is not installed): "
              f"pip install 'brims[{extra}]'", file=sys.stderr)
        return 2
    except Exception as error:
        # Errors a user can cause (bad config or flag, missing or corrupted data, a foreign
        # checkpoint, a device this machine lacks) name the problem and the fix: the message, not
        # a traceback. Anything else is a bug and keeps its traceback.
        if args.debug or not is_user_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2


# What the extras install (the library itself needs torch only), by the module a missing one leaves out:
# the extra's name and what its packages are for.
EXTRA_OF = {
    **dict.fromkeys(("yaml", "lightning", "matplotlib", "numpy", "rdata", "PIL", "tqdm"), ("train", "the experiments'")),
    **dict.fromkeys(("gymnasium", "minigrid", "ale_py"), ("rl", "reinforcement learning")),
}


def is_user_error(error: Exception) -> bool:
    """Ours (raised in brims or brims_experiments), a plain ValueError, or Lightning's refusal of a setting."""
    if type(error).__module__.startswith(("brims.", "brims_experiments.")) or type(error) is ValueError:
        return True
    return type(error).__name__ == "MisconfigurationException"


if __name__ == "__main__":
    raise SystemExit(main())
